"""``maximize``: batched, compiled gradient ascent on an input for many targets at once.

The single-target core optimizes one target's parameters ``steps`` times inside a
``lax.scan``: parameterize (:mod:`._param`), transform with a fresh key (:mod:`._transforms`),
run the model through :func:`jaxinterp.capture.capture` keeping only the paths the objective
reads, and step an optax optimizer on ``regularizers - objective``. That core is vmapped over
the ``[target]`` axis in ONE place (:func:`jaxinterp.sharding.chunked`, which also bounds memory
to ``chunk_size`` targets at a time) and optionally split over a device mesh
(:func:`jaxinterp.sharding.shard_batched`). The whole call is one ``jit``: hundreds of neurons
are visualized by a handful of large matrix products per step instead of a Python loop.

Keys: target ``i`` uses ``keys[i]`` (pass ``[target]`` keys) or ``jax.random.split(key, n)[i]``
(pass one key); with the same per-target keys a batched call gives exactly the one-at-a-time
results. Within a target the key is split into an init key and one key per step.

Non-finite values: a step whose loss or gradient is NaN/inf is not applied and all later steps
are frozen; ``nonfinite_step`` records where it happened. When ``maximize`` is called outside
``jit`` (its results concrete) it raises ``FloatingPointError`` naming targets and step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxinterp.actmax._objectives import INPUT, OUTPUT, SPECIAL_PATHS, Objective
from jaxinterp.actmax._param import Param
from jaxinterp.actmax._transforms import Transform, compose
from jaxinterp.capture import apply_with_hook, capture
from jaxinterp.sharding import chunked, shard_batched

ObjectiveFactory = Callable[[Any], Objective]


class ActMaxResult(NamedTuple):
    """What :func:`maximize` returns.

    Attributes:
      inputs: ``[target, batch, ...]`` optimized inputs (``param.apply`` of the final
        parameters, no transforms), in the valid input range.
      params: final parameters, leaves ``[target, ...]``.
      traces: ``[target, steps]`` objective value at each step (with that step's transforms,
        before the step is applied; regularizers not included).
      values: ``[target]`` objective of ``inputs`` without transforms (if the transforms change
        the image size, ``inputs`` are first edge-padded or centre-cropped to the size the
        model saw during the ascent).
      nonfinite_step: ``[target]`` int32: first step whose loss or gradient was NaN/inf, -1 if
        none (the parameters are those before that step).
    """

    inputs: jax.Array
    params: Any
    traces: jax.Array
    values: jax.Array
    nonfinite_step: jax.Array


def forward_fn(
    model: Any, variables: Any, paths: Sequence[str], method: str | None = None
) -> Callable[..., tuple[Any, dict]]:
    """``f(*args, **kw) -> (output, acts)`` capturing only the model paths in ``paths``."""
    real = [p for p in paths if p not in SPECIAL_PATHS]
    if real:
        return capture(model, variables, select=real, method=method)

    def f(*args, **kwargs):
        out = apply_with_hook(
            model, variables, lambda p, m, nxt, a, k: nxt(*a, **k), *args, method=method, **kwargs
        )
        return out, {}

    return f


def _as_keys(key: jax.Array, n: int | None) -> tuple[jax.Array, int]:
    key = jnp.asarray(key) if not hasattr(key, "dtype") else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.shape[-1:] != (2,):
            raise TypeError(
                f"key: expected a jax.random.key (or legacy uint32 [2] key), got {key.dtype} "
                f"{key.shape}"
            )
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        n = 1 if n is None else n
        return jax.random.split(key, n), n
    if key.ndim != 1:
        raise ValueError(f"key: expected one key or [target] keys, got key shape {key.shape}")
    if n is not None and key.shape[0] != n:
        raise ValueError(f"key: got {key.shape[0]} keys for {n} targets")
    return key, key.shape[0]


def _num_targets(targets: Any) -> int | None:
    if targets is None:
        return None
    leaves = jax.tree.leaves(targets)
    if not leaves:
        raise ValueError("targets: expected a pytree of arrays with a leading [target] axis")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [jnp.shape(x) for x in leaves]
        raise ValueError(f"targets: every leaf needs the same leading [target] axis; got {shapes}")
    return sizes.pop()


def maximize(
    key: jax.Array,
    model: Any,
    variables: Any,
    objective: Objective | ObjectiveFactory,
    targets: Any = None,
    *,
    param: Param,
    steps: int = 512,
    optimizer: optax.GradientTransformation | None = None,
    transforms: Transform | Sequence[Transform] = (),
    regularizers: Sequence[Objective] = (),
    init: jax.Array | None = None,
    chunk_size: int | None = None,
    mesh: Mesh | None = None,
    method: str | None = None,
) -> ActMaxResult:
    """Maximizes an objective of a model's activations over its input, for many targets.

    For each target ``t`` (a slice of ``targets`` along its leading axis) this runs ``steps``
    optimizer steps on ``sum(regularizers) - objective(t)`` as a function of the parameters of
    ``param``, all targets vmapped in one compiled call.

    Args:
      key: one PRNG key (split into ``[target]`` keys) or ``[target]`` keys.
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None`` for nnx.
      objective: a factory ``target -> Objective`` (e.g. ``lambda t: neuron("act_1", t)``),
        or one :class:`Objective` (then ``targets`` is ``None`` and the target axis has the
        size of ``key``, giving independent restarts).
      targets: pytree whose leaves share a leading ``[target]`` axis (unit indices, direction
        vectors, ...), consumed by the factory.
      param: the input parameterization (:func:`pixel`, :func:`fourier`, :func:`norm_ball`,
        :func:`soft_prompt`); it fixes the input shape ``[batch, ...]`` per target.
      steps: optimizer steps (Lucid's default 512).
      optimizer: an optax optimizer (default ``optax.adam(0.05)``, Lucid's default).
      transforms: robustness transforms applied, in order, at each step.
      regularizers: penalty objectives (e.g. ``1e-3 * total_variation()``), subtracted.
      init: starting inputs ``[target, batch, ...]`` (mapped to parameters with
        ``param.invert``); default: ``param.init`` noise.
      chunk_size: targets vmapped at a time (memory budget); ``None`` = all at once.
      mesh: split the targets over this device mesh (results are the same).
      method: the model method to run.

    Returns:
      An :class:`ActMaxResult` with ``inputs [target, batch, ...]``, ``traces [target, steps]``
      and ``values [target]``.

    Raises:
      ValueError / TypeError: inconsistent ``targets``, ``key``, ``init`` or arguments.
      FloatingPointError: (outside ``jit``) the loss or gradient became NaN/inf.

    Each call traces and compiles once. To run the same setup repeatedly without recompiling,
    wrap it: ``run = jax.jit(lambda k, t: maximize(k, model, variables, f, t, param=p))``
    (model, objective and parameterization closed over; keys and targets traced).

    >>> import jax, jax.numpy as jnp
    >>> from jaxinterp import actmax, models
    >>> m = models.MLP(hidden=(16,))
    >>> v = models.init_vision(m, jax.random.key(0), (8,))
    >>> res = actmax.maximize(jax.random.key(1), m, v, lambda t: actmax.neuron("act_0", t),
    ...                       jnp.arange(4), param=actmax.pixel((8,)), steps=20)
    >>> res.inputs.shape, res.traces.shape
    ((4, 1, 8), (4, 20))
    """
    if not isinstance(param, Param):
        raise TypeError(f"param: expected a Param (e.g. actmax.pixel(...)), got {type(param)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    fixed = isinstance(objective, Objective)
    if not fixed and not callable(objective):
        raise TypeError(f"objective: expected an Objective or a factory, got {type(objective)}")
    if not fixed and targets is None:
        raise ValueError("targets: an objective factory needs targets with a [target] axis")
    if fixed and targets is not None:
        raise ValueError("targets: given, but objective is one fixed Objective; pass a factory")
    for r in regularizers:
        if not isinstance(r, Objective):
            raise TypeError(f"regularizers: expected Objectives, got {type(r).__name__}")
    optimizer = optax.adam(0.05) if optimizer is None else optimizer
    transform = compose(*transforms) if isinstance(transforms, (list, tuple)) else transforms

    keys, n = _as_keys(key, _num_targets(targets))
    impl = jax.random.key_impl(keys)
    if targets is None:
        targets = jnp.zeros((n,), jnp.int32)
    x_shape = jax.eval_shape(param.apply, jax.eval_shape(param.init, jax.random.key(0))).shape
    if init is not None:
        init = jnp.asarray(init, jnp.float32)
        if init.shape != (n, *x_shape):
            raise ValueError(
                f"init: expected inputs [target, batch, ...] = {(n, *x_shape)}, got {init.shape}"
            )

    seen_shape = jax.eval_shape(transform, jax.random.key(0), jax.ShapeDtypeStruct(x_shape, "f4"))
    fit = lambda x: _center_fit(x, seen_shape.shape)
    if seen_shape.shape != x_shape:
        _check_model_takes(model, variables, param, seen_shape, x_shape, method)

    def single(item: tuple, variables: Any):
        kd, target, x0 = item
        obj = objective if fixed else objective(target)
        if not isinstance(obj, Objective):
            raise TypeError(f"objective: the factory returned {type(obj).__name__}")
        penalty = sum(regularizers) if regularizers else None
        paths = obj.paths + (penalty.paths if penalty is not None else ())
        fwd = forward_fn(model, variables, paths, method)

        def evaluate(params, k):
            x = param.apply(params)
            args, kwargs = param.feed(transform(k, x) if k is not None else fit(x))
            out, acts = fwd(*args, **kwargs)
            acts = {**acts, INPUT: x, OUTPUT: out}
            value = obj(acts)
            loss = -value if penalty is None else penalty(acts) - value
            return loss, value

        k_init, k_steps = jax.random.split(jax.random.wrap_key_data(kd, impl=impl))
        params = param.init(k_init) if x0 is None else param.invert(x0)
        opt_state = optimizer.init(params)

        def step(carry, inp):
            params, state, bad = carry
            i, k = inp
            (loss, value), grads = jax.value_and_grad(evaluate, has_aux=True)(params, k)
            updates, new_state = optimizer.update(grads, state, params)
            new_params = optax.apply_updates(params, updates)
            finite = jnp.isfinite(loss)
            for g in jax.tree.leaves(grads):
                finite = finite & jnp.all(jnp.isfinite(g))
            ok = (bad < 0) & finite
            keep = lambda new, old: jnp.where(ok, new, old)
            params = jax.tree.map(keep, new_params, params)
            state = jax.tree.map(keep, new_state, state)
            bad = jnp.where((bad < 0) & ~finite, i, bad)
            return (params, state, bad), value

        xs = (jnp.arange(steps), jax.random.split(k_steps, steps))
        (params, _, bad), trace = jax.lax.scan(step, (params, opt_state, jnp.int32(-1)), xs)
        _, final = evaluate(params, None)
        return ActMaxResult(param.apply(params), params, trace, final, bad)

    def run(items, variables):
        return chunked(lambda item: single(item, variables), chunk_size)(items)

    if mesh is not None:
        run = shard_batched(run, mesh, batch_argnums=0)
    items = (jax.random.key_data(keys), targets, init)
    res = jax.jit(run)(items, variables)
    _raise_if_nonfinite(res.nonfinite_step)
    return res


def _check_model_takes(model, variables, param, seen, x_shape, method) -> None:
    """Fails early, and clearly, when transforms resize inputs to a shape the model rejects."""

    def forward(x):
        args, kwargs = param.feed(x)
        around = lambda path, module, call_next, a, k: call_next(*a, **k)
        return apply_with_hook(model, variables, around, *args, method=method, **kwargs)

    try:
        jax.eval_shape(forward, seen)
    except Exception as err:  # any failure here is the shape change, reported as such
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"transforms: they turn inputs of shape {x_shape} into {seen.shape}, and the model "
            f"fails on that shape ({type(err).__name__}: {first}). Crop-based transforms such "
            "as jitter(d) shrink the image by d: pad(d) first, as standard_transforms() does."
        ) from None


def _center_fit(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Centre-crops or edge-pads images ``[batch, h, w, c]`` to ``shape`` (what the model saw)."""
    if x.shape == tuple(shape):
        return x
    if x.ndim != 4 or len(shape) != 4 or x.shape[0] != shape[0] or x.shape[3] != shape[3]:
        raise ValueError(
            f"transforms: they change the input shape {x.shape} to {tuple(shape)}, which can "
            "only be undone for images [batch, h, w, c]"
        )
    for axis in (1, 2):
        diff = shape[axis] - x.shape[axis]
        if diff > 0:
            widths = [(0, 0)] * 4
            widths[axis] = (diff // 2, diff - diff // 2)
            x = jnp.pad(x, widths, mode="edge")
        elif diff < 0:
            start = (-diff) // 2
            x = jax.lax.slice_in_dim(x, start, start + shape[axis], axis=axis)
    return x


def _raise_if_nonfinite(bad: jax.Array) -> None:
    if isinstance(bad, jax.core.Tracer):
        return
    bad = jax.device_get(bad)
    hit = [i for i, s in enumerate(bad.tolist()) if s >= 0]
    if hit:
        raise FloatingPointError(
            f"maximize: the loss or gradient became NaN/inf for targets {hit[:10]}"
            f"{' ...' if len(hit) > 10 else ''} (first at step {int(bad[hit[0]])} of target "
            f"{hit[0]}). Check the objective and the input range, or lower the learning rate. "
            "The results hold the last finite parameters; call maximize under jax.jit to get "
            "them without this error (see ActMaxResult.nonfinite_step)."
        )
