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
results. Within a target, all randomness is drawn before the loop by one
``jax.random.bits(key, (k + steps * w,), uint32)`` call (``k`` the words of one key, 2 for the
default threefry keys): the first ``k`` words are the init key, then ``w`` words per step for the
transforms (built-in transforms take them as words, see :mod:`._transforms`; a transform of
your own gets them as a key, ``w = k``). With no random transform the key itself is the init
key. For a concrete key the split and these words are computed on the host before the program
(bit for bit the same, see :mod:`._draws`): the program then holds no threefry hash but the
parameterization's own ``init`` draw, which shortens its compilation.

Non-finite values: from the first step whose loss or gradient is NaN/inf no step is applied;
``nonfinite_step`` records that step, and the results hold the parameters of the step before it
(the last ones whose loss and gradient were finite; the initial ones if it is step 0). Called
outside ``jit`` (results concrete), ``maximize`` raises ``FloatingPointError`` naming targets
and step; under ``jit`` the check is registered with checkify (see :func:`jaxinterp.checked`).

**Compiled once per configuration.** The program is cached across calls, keyed on structure:
the model (a linen module compares by its attributes; an nnx module by its graph), ``method``,
the *structure* of the objective and regularizers (which built-in objectives, paths, positions
and how they are combined: unit indices, direction vectors and weights are traced arguments, so
other targets or weights reuse the program), the parameterization and transforms (equal when
built with equal arguments), the optimizer (the default, or an optax optimizer whose
hyperparameters are equal), ``steps``, ``chunk_size``, ``mesh``, ``redirect_relu``, and the
shapes and dtypes of keys, targets, ``init`` and variables (variables, and an nnx module's state,
are traced, so new weights of the same shapes reuse it too). The objective factory is
evaluated outside the compiled program with ``jax.vmap(factory)(targets)``, so two factories
giving the same structure share the program.
An objective or regularizer containing your own function (``Objective(fn, ...)``), your own
transform or parameterization functions, or a custom optimizer are compared by identity: pass
the same objects again to reuse the program. The cache is JAX's own ``jit`` cache of one
module-level function (it lives as long as the process; JAX's persistent compilation cache, when
configured, also serves new processes). On CPU the program is compiled with LLVM's -O1 pipeline
and XLA's elemental loop emitters (see ``_CPU_COMPILER_OPTIONS``), convolutions get input
gradients that XLA:CPU runs as fast library calls, and a channel objective on
``relu(conv + bias)`` computes only the channel it reads (see :mod:`._fastgrad`; same values);
called inside the caller's own ``jit``, it is part of that program and compiled with the
caller's options.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.extend.core import jaxprs_in_params
from jax.sharding import Mesh

from jaxinterp._checks import check_array, check_int, check_key, is_traced, value_check
from jaxinterp._keys import ById, static
from jaxinterp.actmax._cache import OptKey, unwrap
from jaxinterp.actmax._draws import host_draws
from jaxinterp.actmax._fastgrad import fast_input_grads
from jaxinterp.actmax._objectives import (
    INPUT,
    OUTPUT,
    SPECIAL_PATHS,
    Objective,
    path_key,
    resolve,
)
from jaxinterp.actmax._param import Param
from jaxinterp.actmax._relu import redirected_relu
from jaxinterp.actmax._transforms import Transform, compose, draws_words
from jaxinterp.capture import apply_with_hook, capture, is_nnx, run_sites
from jaxinterp.sharding import chunked, shard_batched

ObjectiveFactory = Callable[[Any], Objective]

_DEFAULT_OPTIMIZER = optax.adam(0.05)


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
        none (the parameters are then those of the step before, the last finite ones).
    """

    inputs: jax.Array
    params: Any
    traces: jax.Array
    values: jax.Array
    nonfinite_step: jax.Array


@dataclasses.dataclass(frozen=True)
class _Calls:
    """``maximize``'s ``method`` with its ``methods=`` (submodule methods hooked besides
    ``__call__``), carried as one hashable ``method`` through the compile cache."""

    method: Any
    methods: tuple[str, ...]


def _split_calls(method: Any) -> tuple[Any, tuple[str, ...] | None]:
    if isinstance(method, _Calls):
        return method.method, method.methods
    return method, None


def _check_methods(methods: Any) -> tuple[str, ...] | None:
    if methods is None:
        return None
    if isinstance(methods, str) or not all(isinstance(m, str) and m for m in methods):
        raise TypeError(
            f"methods: expected a sequence of method names such as ('encode',), got {methods!r}"
        )
    return tuple(methods)


# Inputs a soft prompt's placeholder call fills in when the model's method requires them and
# the caller did not give them: what Hugging Face's own wrappers pass for None (all tokens
# attended, positions 0..seq-1). Any other required input is reported by name.
_FILLED = {
    "attention_mask": lambda b, t: jnp.ones((b, t), jnp.int32),
    "position_ids": lambda b, t: jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t)),
}


def _required_inputs(model: Any, method: Any, args: tuple, kwargs: dict, x: Any) -> dict:
    """``kwargs`` plus the required ``attention_mask`` / ``position_ids`` the model's method
    takes and nobody gave (a soft prompt calls it with placeholder ids only)."""
    if method is not None and not isinstance(method, str):
        return kwargs  # a function (model, *args) fills in the inputs itself
    fn = getattr(model, method or "__call__", None)
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return kwargs
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    positional = {p.name for p in named[: len(args)] if p.kind == p.POSITIONAL_OR_KEYWORD}
    missing = [
        p.name
        for p in named
        if p.default is p.empty and p.name not in kwargs and p.name not in positional
    ]
    if not missing:
        return kwargs
    other = [n for n in missing if n not in _FILLED]
    if other:
        raise TypeError(
            f"model_kwargs: the model's {method or '__call__'} requires {other}, which the soft "
            "prompt's call (placeholder ids, the prompt at the embedding site) does not give; "
            f"pass them as soft_prompt(..., model_kwargs={{{other[0]!r}: ...}})"
        )
    b, t = x.shape[:2]
    return {**kwargs, **{n: _FILLED[n](b, t) for n in missing}}


def forward_fn(
    model: Any,
    variables: Any,
    paths: Sequence[str],
    method: str | Callable[..., Any] | None = None,
    replace: tuple[str, Any] | None = None,
) -> Callable[..., tuple[Any, dict]]:
    """``f(*args, **kw) -> (output, acts)`` capturing only the activations ``paths`` read.

    ``replace=(site, x)`` replaces the output of the module at ``site`` by ``x`` (a soft
    prompt in place of the embedding module's output); ``x`` must have that output's shape.
    ``method`` may carry ``methods=`` (:class:`_Calls`).
    """
    method, methods = _split_calls(method)
    real = list(dict.fromkeys(path_key(p) for p in paths if path_key(p) not in SPECIAL_PATHS))
    if replace is not None:
        site, value = replace

        def swap(old):
            if not hasattr(old, "shape") or tuple(old.shape) != tuple(value.shape):
                raise ValueError(
                    f"site: soft_prompt replaces the output of {site!r}, which is "
                    f"{getattr(old, 'shape', type(old).__name__)}; the prompt is "
                    f"{tuple(value.shape)} = [batch, seq_len, d_model]. Name the token "
                    "embedding module (its output is [batch, seq, d_model])"
                )
            return value.astype(old.dtype)

        def f_replace(*args, **kwargs):
            return run_sites(
                model,
                variables,
                *args,
                edits={site: swap},
                sites=real,
                method=method,
                methods=methods,
                **kwargs,
            )

        return f_replace
    if real:
        return capture(model, variables, select=real, method=method, methods=methods)

    def f(*args, **kwargs):
        out = apply_with_hook(
            model, variables, lambda p, m, nxt, a, k: nxt(*a, **k), *args, method=method, **kwargs
        )
        return out, {}

    return f


def feed_forward(
    model: Any, variables: Any, paths: Sequence[str], method: Any, param: Param, x: jax.Array
) -> tuple[Any, dict]:
    """Runs the model on input ``x`` as ``param`` feeds it (arguments, or a replaced module)."""
    args, kwargs = param.feed(x)
    replace = None
    if param.site is not None:
        replace = (param.site, x)
        kwargs = _required_inputs(model, _split_calls(method)[0], args, kwargs, x)
    return forward_fn(model, variables, paths, method, replace)(*args, **kwargs)


def _as_keys(key: Any, n: int | None) -> tuple[jax.Array, int]:
    """Typed ``[n]`` keys, or one typed key (to be split into ``n`` by the program), and n."""
    if isinstance(key, (bool, int, float, np.integer, np.floating)):
        check_key(key, "key")  # raises with the policy's message
    dtype = getattr(key, "dtype", None)
    if dtype is None or not (
        jnp.issubdtype(dtype, jax.dtypes.prng_key)
        or (dtype == jnp.uint32 and jnp.shape(key)[-1:] == (2,))
    ):
        raise TypeError(
            "key: expected a jax.random.key (or [target] keys), got "
            + (f"dtype {dtype} shape {tuple(jnp.shape(key))}" if dtype else type(key).__name__)
        )
    if not jnp.issubdtype(dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:  # split inside the compiled program (an eager split compiles its own)
        return key, 1 if n is None else n
    if key.ndim != 1:
        raise ValueError(f"key: expected one key or [target] keys, got key shape {key.shape}")
    if n is not None and key.shape[0] != n:
        raise ValueError(f"key: expected {n} keys (one per target), got {key.shape[0]}")
    return key, key.shape[0]


def _num_targets(targets: Any) -> int | None:
    if targets is None:
        return None
    leaves = jax.tree.leaves(targets)
    if not leaves:
        raise ValueError("targets: expected a pytree of arrays with a leading [target] axis")
    for x in leaves:
        if not hasattr(x, "shape") and not isinstance(x, (list, tuple, int, float, np.number)):
            raise TypeError(f"targets: expected arrays, got a {type(x).__name__}")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if None in sizes or len(sizes) != 1:
        shapes = [jnp.shape(x) for x in leaves]
        raise ValueError(f"targets: every leaf needs the same leading [target] axis; got {shapes}")
    n = sizes.pop()
    if n == 0:
        raise ValueError("targets: expected at least one target, got a [target] axis of size 0")
    return n


@dataclasses.dataclass(frozen=True)
class _Config:
    """Everything static about one ``maximize`` program (see the module docstring)."""

    model: Any  # a linen module, or ("nnx", graphdef)
    method: Any  # a method name, a function (model, *args) (by identity) or None
    param: Any
    transform: Any
    optimizer: OptKey
    steps: int
    chunk_size: int | None
    mesh: Any
    impl: str
    factory: Any  # None: the objective is a traced pytree; else the user's factory (by id)
    fixed: bool
    penalty: Any  # None: no penalty or a traced pytree; else a user Objective (by id)
    has_penalty: bool
    fit_shape: tuple[int, ...] | None
    redirect: int
    split: int  # 0: keys given per target; n: one key, split into n inside the program
    host_draws: bool  # the per-target key data and random words come drawn (see _draws)
    fast_conv: bool  # CPU: convolutions with fast input gradients (see _fastgrad)


# ----------------------------------------------------------------------------- maximize


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
    method: str | Callable[..., Any] | None = None,
    redirect_relu: int = 0,
    methods: Sequence[str] | None = None,
) -> ActMaxResult:
    """Maximizes an objective of a model's activations over its input, for many targets.

    For each target ``t`` (a slice of ``targets`` along its leading axis) this runs ``steps``
    optimizer steps on ``sum(regularizers) - objective(t)`` as a function of the parameters of
    ``param``, all targets vmapped in one compiled call. The compiled program is cached and
    reused by later calls with the same configuration (see the module docstring for what
    counts as the same).

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
      chunk_size: targets vmapped at a time (memory budget). ``None``: all at once, except on
        CPU for a model with at most 16 MB of variables whose targets' largest activations
        together pass 8 MB: there the targets go a few at a time (the largest divisor of their
        number with at most 1 MB of that activation per chunk), so each step's activations
        stay in cache (the bigger convnet of ``benchmarks/bench_lucent.py``: ~30% less time
        per step). The choice depends on shapes only; the results are those of one chunk.
      mesh: split the targets over this device mesh (results are the same).
      method: the model method to run: a name, or a function ``(model, *args)`` (linen and
        nnx alike), e.g. ``lambda m, ids: m(ids, mask, positions)`` to fill in other inputs.
        A function is part of the compile-cache key by identity.
      redirect_relu: for the first ``redirect_relu`` steps, ReLUs pass gradient also where
        they are inactive, if it pushes their input up (Lucid's redirected ReLU), so a unit
        that starts inactive still gets a gradient. Applies to the model's ``jax.nn.relu``
        calls (flax ``nn.relu``) traced in its forward pass. 0 (default) = plain gradients.
      methods: submodule methods hooked besides ``__call__`` (as in
        :func:`jaxinterp.capture.capture`), so objectives and a soft prompt's ``site`` can
        name ``"path.method"``: e.g. ``methods=("encode",)`` and
        ``soft_prompt(..., site="embedder.encode")`` for Google's ``gemma`` models, whose
        embedder is called through ``encode``.

    Returns:
      An :class:`ActMaxResult` with ``inputs [target, batch, ...]``, ``traces [target, steps]``
      and ``values [target]``.

    Raises:
      ValueError, TypeError, KeyError: inconsistent ``targets``, ``key``, ``init`` or
        arguments; an out-of-range unit or position (checked against the activation shapes
        before anything is compiled; a traced unit under jit gives NaN instead, see
        :func:`jaxinterp.checked`).
      FloatingPointError: (outside ``jit``) the loss or gradient became NaN/inf. Under jit
        the check is registered with checkify instead (see ``nonfinite_step``).

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
    steps = check_int(steps, "steps", lo=1)
    redirect_relu = check_int(redirect_relu, "redirect_relu", lo=0)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size", lo=1)
    if method is not None and not isinstance(method, str) and not callable(method):
        raise TypeError(
            f"method: expected a method name, a function (model, *args) or None, got "
            f"{type(method).__name__}"
        )
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a jax.sharding.Mesh or None, got {type(mesh).__name__}")
    methods = _check_methods(methods)
    if methods:
        method = _Calls(method, methods)
    fixed = isinstance(objective, Objective)
    if not fixed and not callable(objective):
        raise TypeError(f"objective: expected an Objective or a factory, got {type(objective)}")
    if not fixed and targets is None:
        raise ValueError("targets: an objective factory needs targets with a [target] axis")
    if fixed and targets is not None:
        raise ValueError("targets: given, but objective is one fixed Objective; pass a factory")
    if isinstance(regularizers, Objective):
        regularizers = (regularizers,)
    for r in regularizers:
        if not isinstance(r, Objective):
            raise TypeError(f"regularizers: expected Objectives, got {type(r).__name__}")
    if optimizer is None:
        optimizer = _DEFAULT_OPTIMIZER
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(
            f"optimizer: expected an optax.GradientTransformation, got {type(optimizer).__name__}"
        )
    if isinstance(transforms, (list, tuple)):
        transform = compose(*transforms) if transforms else compose()
    elif callable(transforms):
        transform = transforms
    else:
        raise TypeError(f"transforms: expected a transform or a list of them, got {transforms!r}")

    keys, n = _as_keys(key, _num_targets(targets))
    impl = str(jax.random.key_impl(keys))
    x_shape = jax.eval_shape(param.apply, jax.eval_shape(param.init, jax.random.key(0))).shape
    if init is not None:
        init = check_array(init, "init", kind="number").astype(jnp.float32)
        if init.shape != (n, *x_shape):
            raise ValueError(
                f"init: expected inputs [target, batch, ...] = {(n, *x_shape)}, got {init.shape}"
            )
        if not is_traced(init) and not bool(jnp.isfinite(init).all()):
            raise ValueError("init: expected finite values, got NaN/inf entries")

    # the model, as a cache key and a traced argument
    if is_nnx(model):
        if variables is not None:
            raise TypeError("variables: an nnx module carries its own state; pass variables=None")
        graphdef, variables = nnx.split(model)
        model_key: Any = ("nnx", graphdef)
    else:
        model_key = static(model)

    seen = jax.eval_shape(transform, jax.random.key(0), jax.ShapeDtypeStruct(x_shape, "f4"))
    fit_shape = None if seen.shape == x_shape else tuple(seen.shape)

    # the objective: a traced pytree (cached by structure) or, with user functions, the factory
    if fixed:
        obj, factory = objective, None
    else:
        try:
            obj = jax.vmap(objective)(targets)
        except TypeError:
            # a factory returning a plain function fails inside vmap with JAX's own words
            one = objective(jax.tree.map(lambda t: t[0], targets))
            if not isinstance(one, Objective):
                raise TypeError(
                    f"objective: the factory returned {type(one).__name__}, not an Objective; "
                    "build it from actmax objectives (neuron, channel, direction, ...), or wrap "
                    "a function of the activations: Objective(fn, paths)"
                ) from None
            raise
        if not isinstance(obj, Objective):
            raise TypeError(f"objective: the factory returned {type(obj).__name__}, not Objective")
        factory = None if obj.structural else ById(objective)
    penalty = sum(regularizers) if regularizers else None
    penalty_static = None if penalty is None or penalty.structural else penalty
    # one shape evaluation of the model checks the objectives and, when the transforms resize
    # the input, that the model takes the new shape
    ran = (factory is None or penalty is not None) and _check_objectives(
        model, variables, model_key, param, method, seen, x_shape,
        obj if factory is None else None, penalty, fit_shape is not None,
    )  # fmt: skip
    if fit_shape is not None and not ran:
        _check_model_takes(model, param, seen, x_shape, method, model_key, variables)

    if chunk_size is None and mesh is None:
        chunk_size = _auto_chunk(model_key, variables, method, param, seen, n)

    # split and the transforms' words on the host when the key is concrete (see _draws)
    per_step = _step_words(transform, 2)  # host draws are threefry: 2-word keys
    drawn = host_draws(keys, n, 2 + steps * per_step if per_step else 0)
    cfg = _Config(
        model=model_key,
        method=method,
        param=static(param),
        transform=static(transform),
        optimizer=OptKey(optimizer),
        steps=steps,
        chunk_size=chunk_size,
        mesh=mesh,
        impl=impl,
        factory=factory,
        fixed=fixed,
        penalty=penalty_static,
        has_penalty=penalty is not None,
        fit_shape=fit_shape,
        redirect=redirect_relu,
        split=n if keys.ndim == 0 and drawn is None else 0,
        host_draws=drawn is not None,
        fast_conv=jax.default_backend() == "cpu",
    )
    traced_obj = obj if factory is None else None
    items = (drawn if drawn is not None else jax.random.key_data(keys),
             targets if factory is not None else traced_obj, init)  # fmt: skip
    if fixed:
        items = (items[0], None, init)
    shared = (traced_obj if fixed else None, penalty if penalty_static is None else None)
    res = _run(items, variables, shared, cfg=cfg)
    _raise_if_nonfinite(res.nonfinite_step)
    return res


def _model_of(cfg_model: Any, variables: Any) -> tuple[Any, Any]:
    if isinstance(cfg_model, tuple) and len(cfg_model) == 2 and cfg_model[0] == "nnx":
        return nnx.merge(cfg_model[1], variables), None
    model = unwrap(cfg_model)
    return model, variables


def _run_impl(items: Any, variables: Any, shared: Any, *, cfg: _Config) -> ActMaxResult:
    fixed_obj, traced_penalty = shared
    if cfg.split:
        key = jax.random.wrap_key_data(items[0], impl=cfg.impl)
        items = (jax.random.key_data(jax.random.split(key, cfg.split)), *items[1:])

    def single(item, variables):
        model, variables = _model_of(cfg.model, variables)
        kd, target, x0 = item
        if cfg.fixed:
            obj = fixed_obj
        elif cfg.factory is not None:
            obj = unwrap(cfg.factory)(target)
            if not isinstance(obj, Objective):
                raise TypeError(f"objective: the factory returned {type(obj).__name__}")
        else:
            obj = target
        penalty = cfg.penalty if cfg.penalty is not None else traced_penalty
        return _ascent(cfg, model, variables, obj, penalty, kd, x0)

    def run(items, variables):
        return chunked(lambda item: single(item, variables), cfg.chunk_size)(items)

    if cfg.mesh is not None:
        run = shard_batched(run, cfg.mesh, batch_argnums=0)
    return run(items, variables)


# On CPU the ascent program is many small fused loops around a few library calls
# (convolutions, matrix products); its compile time is nearly all LLVM code generation for those
# loops. XLA's older elemental emitters (``xla_cpu_use_fusion_emitters: false``) and LLVM's -O1
# pipeline generate them in about half the CPU time of the defaults (README example: ~0.7 s
# instead of ~1.4 s of compile CPU time), with run times within measurement noise, since the
# heavy work is in the library calls. XLA splits the generated code into modules compiled in
# parallel; with one or two cores to run on that only adds per-module work (one module: ~0.1 s
# less compile CPU time on one core, and less wall time on two busy cores), so there it is one.
_CPU_COMPILER_OPTIONS = {
    "xla_backend_optimization_level": 1,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
if (_CORES or 1) <= 2:
    _CPU_COMPILER_OPTIONS["xla_cpu_parallel_codegen_split_count"] = 1
_run_jit = jax.jit(_run_impl, static_argnames=("cfg",))
_run_jit_cpu = jax.jit(_run_impl, static_argnames=("cfg",), compiler_options=_CPU_COMPILER_OPTIONS)


def _run(items: Any, variables: Any, shared: Any, *, cfg: _Config) -> ActMaxResult:
    if is_traced((items, variables, shared)):  # inside the caller's jit: no own options
        return _run_jit(items, variables, shared, cfg=cfg)
    cpu = jax.default_backend() == "cpu" and (
        cfg.mesh is None or all(d.platform == "cpu" for d in cfg.mesh.devices.flat)
    )
    return (_run_jit_cpu if cpu else _run_jit)(items, variables, shared, cfg=cfg)


def _step_words(transform: Any, key_words: int) -> int:
    """Random 32-bit words one step draws: a built-in transform's own count (0 when it draws
    nothing), or a key's worth (``key_words``) for a transform of your own."""
    return transform.words if draws_words(transform) else key_words


def _ascent(cfg, model, variables, obj, penalty, kd, x0) -> ActMaxResult:
    """The single-target core: ``steps`` optimizer steps in one ``lax.scan``."""
    param = unwrap(cfg.param)
    transform = unwrap(cfg.transform)
    optimizer = cfg.optimizer.opt
    paths = obj.paths + (penalty.paths if penalty is not None else ())
    fit = (lambda x: x) if cfg.fit_shape is None else (lambda x: _center_fit(x, cfg.fit_shape))

    def evaluate(params, draw, redirect=False):
        x = param.apply(params)
        if draw is None:
            seen = fit(x)
        elif words_api:
            seen = transform.with_words(draw, x)
        else:
            seen = transform(jax.random.wrap_key_data(draw, impl=cfg.impl), x)
        if redirect:
            with redirected_relu():
                out, acts = feed_forward(model, variables, paths, cfg.method, param, seen)
        else:
            out, acts = feed_forward(model, variables, paths, cfg.method, param, seen)
        acts = {**acts, INPUT: x, OUTPUT: out}
        value = obj(acts)
        loss = -value if penalty is None else penalty(acts) - value
        return loss, value

    # The randomness of all steps is drawn before the loop, in one call, so the compiled loop
    # holds no random-number generator: built-in transforms take their words directly; a
    # transform of your own gets a key made of ``key_words`` words per step.
    if cfg.host_draws:  # drawn before the program, the same words (see _draws)
        kd, words = kd
    key = jax.random.wrap_key_data(kd, impl=cfg.impl)
    key_words = kd.shape[-1]
    words_api = draws_words(transform)
    per_step = _step_words(transform, key_words)
    if per_step:
        if not cfg.host_draws:
            words = jax.random.bits(key, (key_words + cfg.steps * per_step,), jnp.uint32)
        init_key = jax.random.wrap_key_data(words[:key_words], impl=cfg.impl)
        draws = words[key_words:].reshape(cfg.steps, per_step)
    else:
        init_key, draws = key, jnp.zeros((cfg.steps, 0), jnp.uint32)
    params = param.init(init_key) if x0 is None else param.invert(x0)
    opt_state = optimizer.init(params)

    def step(carry, inp, redirect):
        params, state, good, bad = carry
        i, k = inp
        loss_fn = functools.partial(evaluate, redirect=redirect)
        if cfg.fast_conv:
            loss_fn = fast_input_grads(loss_fn)
        (loss, value), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, k)
        updates, new_state = optimizer.update(grads, state, params)
        new_params = optax.apply_updates(params, updates)
        finite = jnp.isfinite(loss)
        for g in jax.tree.leaves(grads):
            finite = finite & jnp.all(jnp.isfinite(g))
        ok = (bad < 0) & finite
        keep = lambda new, old: jnp.where(ok, new, old)
        good = jax.tree.map(keep, params, good)  # the last parameters with a finite step
        params = jax.tree.map(keep, new_params, params)
        state = jax.tree.map(keep, new_state, state)
        bad = jnp.where((bad < 0) & ~finite, i, bad)
        return (params, state, good, bad), value

    carry = (params, opt_state, params, jnp.int32(-1))
    xs = (jnp.arange(cfg.steps), draws)
    r = min(cfg.redirect, cfg.steps)
    traces = []
    if r:
        head = jax.tree.map(lambda a: a[:r], xs)
        carry, tr = jax.lax.scan(functools.partial(step, redirect=True), carry, head)
        traces.append(tr)
    if r < cfg.steps:
        tail = jax.tree.map(lambda a: a[r:], xs)
        carry, tr = jax.lax.scan(functools.partial(step, redirect=False), carry, tail)
        traces.append(tr)
    params, _, good, bad = carry
    trace = traces[0] if len(traces) == 1 else jnp.concatenate(traces)
    params = jax.tree.map(lambda g, p: jnp.where(bad >= 0, g, p), good, params)
    _, final = evaluate(params, None)
    return ActMaxResult(param.apply(params), params, trace, final, bad)


# ---------------------------------------------------------------------------------- checks


# Automatic chunking on CPU. One vmapped step over all targets streams every activation
# through memory: the bigger convnet of benchmarks/bench_lucent.py (128 targets, a [32, 32, 64]
# activation each, 32 MB in all, this machine's whole L3) ran 0.165 s per step; 1-8 targets at a
# time (a loop over chunks, each chunk's whole ascent) about 0.12 s, the same for any chunk size
# in 1-8, 16 slightly slower, 64 much. Weights are read once per chunk, so only small models
# are chunked (a decoder's matrices would be re-read per chunk), and only when the targets'
# activations together are larger than ~8 MB (the README job, 64 x 5 KB, is not: chunking it
# only costs compile time). The choice depends on shapes alone, not on the machine.
_CHUNK_BYTES = 1 << 20  # largest activation per chunk (about one core's L2)
_CHUNK_MIN_TOTAL = 8 << 20  # below this (all targets' largest activations) vmap them all
_CHUNK_MAX_PARAMS = 16 << 20  # model variables above this: never chunked automatically


def _auto_chunk(model_key, variables, method, param, seen, n: int) -> int | None:
    """The chunk size for ``chunk_size=None``: None (all targets at once) unless on CPU, with
    model variables under 16 MB and the targets' largest activations over 8 MB together; then
    the largest divisor of ``n`` (no remainder program) whose chunk holds at most 1 MB of the
    largest activation."""
    if n < 2 or jax.default_backend() != "cpu":
        return None
    # arrays (numbers or PRNG keys) by shape and dtype; anything else (a Python scalar in the
    # variables) by value, passed to the forward as it is
    spec, total = [], 0
    for v in jax.tree.leaves(variables):
        if hasattr(v, "shape") and hasattr(v, "dtype"):
            spec.append((tuple(v.shape), v.dtype))
            total += int(np.prod(v.shape)) * v.dtype.itemsize
        else:
            spec.append(static(v))
    if total > _CHUNK_MAX_PARAMS:
        return None
    peak = _peak_bytes(model_key, jax.tree.structure(variables), tuple(spec), static(method),
                       static(param), tuple(seen.shape))  # fmt: skip
    if peak == 0 or n * peak <= _CHUNK_MIN_TOTAL:
        return None
    most = max(1, _CHUNK_BYTES // peak)
    size = max(d for d in range(1, min(n, most) + 1) if n % d == 0)
    return None if size == n else size


@functools.lru_cache(maxsize=64)
def _peak_bytes(model_key, treedef, spec, method, param, seen_shape) -> int:
    """Bytes of the largest value in one target's forward pass (a shape-only trace); 0 when
    that trace fails (chunking is only a speed choice; the real run reports the error)."""
    arrays = [jax.ShapeDtypeStruct(*a) for a in spec if isinstance(a, tuple)]

    def forward(x, arrays):
        it = iter(arrays)
        leaves = [next(it) if isinstance(a, tuple) else unwrap(a) for a in spec]
        m, v = _model_of(model_key, jax.tree.unflatten(treedef, leaves))
        return feed_forward(m, v, (), unwrap(method), unwrap(param), x)

    try:
        jaxpr = jax.make_jaxpr(forward)(jax.ShapeDtypeStruct(seen_shape, jnp.float32), arrays)
    except Exception:  # noqa: BLE001 - see the docstring
        return 0
    peak = 0

    def walk(j):
        nonlocal peak
        for e in j.eqns:
            for v in e.outvars:
                aval = getattr(v, "aval", None)
                if hasattr(aval, "shape") and hasattr(aval, "dtype"):
                    peak = max(peak, int(np.prod(aval.shape)) * aval.dtype.itemsize)
            for sub in jaxprs_in_params(e.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    return peak


def _act_shapes(model, variables, model_key, param, method, seen, x_shape, paths):
    """``{path: shape}`` of one target's activations (and input/output), by shape evaluation."""

    def forward(x, variables):
        m, v = _model_of(model_key, variables)
        return feed_forward(m, v, paths, method, param, x)

    out, acts = jax.eval_shape(forward, seen, variables)
    acts = {**acts, INPUT: jax.ShapeDtypeStruct(tuple(x_shape), jnp.float32), OUTPUT: out}
    return {p: tuple(resolve(acts, p).shape) for p in paths}


def _check_objectives(
    model, variables, model_key, param, method, seen, x_shape, obj, penalty, resized
) -> bool:
    """Static and (for concrete unit indices) value checks of the objective and regularizers
    against the activation shapes, before anything is compiled. Returns whether it ran the
    model (on the transformed shape ``seen``; a failure there is reported as the transforms'
    when they ``resized`` the input)."""
    objs = [o for o in (obj, penalty) if o is not None and o.structural]
    if not objs:
        return False
    paths = tuple(dict.fromkeys(p for o in objs for p in o.paths))
    try:
        shapes = _act_shapes(model, variables, model_key, param, method, seen, x_shape, paths)
    except KeyError as err:
        raise KeyError(f"objective: reads paths {list(paths)}; {err.args[0]}") from None
    except Exception as err:
        if resized:
            raise _resize_error(err, x_shape, seen) from None
        raise
    for p in paths:
        if p != INPUT and (not shapes[p] or shapes[p][0] != x_shape[0]):
            # e.g. a module inside nn.scan / nnx.scan: recorded [layer, batch, ...], and a
            # per-example objective would read the layer axis as the batch
            hint = f"; name one layer, e.g. {p + '[0]'!r}" if shapes[p] else ""
            raise ValueError(
                f"objective: {p!r} has shape {shapes[p]}, not [batch={x_shape[0]}, ...] with "
                "the batch of inputs in front; a module inside a scan (nn.scan, nnx.scan) is "
                f"recorded [layer, batch, ...]{hint}"
            )
    for o in objs:
        o.check(shapes)
    return True


def _check_model_takes(model, param, seen, x_shape, method, model_key, state) -> None:
    """Fails early, and clearly, when transforms resize inputs to a shape the model rejects."""

    def forward(x, state):
        m, v = _model_of(model_key, state)
        return feed_forward(m, v, (), method, param, x)[0]

    try:
        jax.eval_shape(forward, seen, state)
    except Exception as err:  # any failure here is the shape change, reported as such
        raise _resize_error(err, x_shape, seen) from None


def _resize_error(err: Exception, x_shape, seen) -> ValueError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ValueError(
        f"transforms: they turn inputs of shape {x_shape} into {seen.shape}, and the model "
        f"fails on that shape ({type(err).__name__}: {first}). Crop-based transforms such "
        "as jitter(d) shrink the image by d: pad(d) first, as standard_transforms() does."
    )


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


_NONFINITE_MSG = (
    "objective: the loss or gradient became NaN/inf (first at step {} of target {}). Check the "
    "objective and the input range, or lower the learning rate. The results hold the parameters "
    "of the step before (the last finite ones); call maximize under jax.jit to get them without "
    "this error (see ActMaxResult.nonfinite_step)."
)


def _raise_if_nonfinite(bad: jax.Array) -> None:
    if is_traced(bad):
        first = jnp.argmax(bad >= 0)
        value_check((bad < 0).all(), _NONFINITE_MSG, bad[first], first)
        return
    bad = np.asarray(jax.device_get(bad))
    hit = [i for i, s in enumerate(bad.tolist()) if s >= 0]
    if hit:
        raise FloatingPointError(
            f"objective: the loss or gradient became NaN/inf for targets {hit[:10]}"
            f"{' ...' if len(hit) > 10 else ''} (first at step {int(bad[hit[0]])} of target "
            f"{hit[0]}). Check the objective and the input range, or lower the learning rate. "
            "The results hold the parameters of the step before (the last finite ones); call "
            "maximize under jax.jit to get them without this error (see "
            "ActMaxResult.nonfinite_step)."
        )
