"""Fitting logistic probes from a stream of chunks, with memory independent of ``n``.

Same objective and solver as :func:`~jaxinterp.probes.fit_logistic` (optax's L-BFGS direction,
``optax.scale_by_lbfgs``, in coordinates whitened by the feature covariance), but the data
arrive as an iterable of ``(features [layer, m, d], labels [task, m])`` chunks that can be
re-read, e.g. from disk or a model run batch by batch. Nothing of size ``n`` is kept:

* one pass accumulates the Gram matrix ``x̃ᵀx̃`` per layer (the whitening ``v = Lᵀθ``), the
  number of examples and the classes present;
* each iteration makes two passes: one sums the objective along the L-BFGS direction at a grid
  of step sizes (the line search; the best step is kept), one sums the gradient at the new point.

The chunk computations are the single-probe pieces of the in-memory solver, vmapped over the
same layer × task grid (:func:`~jaxinterp.probes._fit._over_grid`); the Python loop only streams
chunks and carries ``[layer, task, d + 1, classes]`` state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp._checks import check_int, is_traced
from jaxinterp.probes._fit import (
    FitInfo,
    LinearProbe,
    _backward,
    _ce,
    _check_features,
    _check_labels,
    _check_solver,
    _Feat,
    _forward,
    _inv_c,
    _over_grid,
    _penalty_mask,
    _probs,
    _task,
    _warn_unconverged,
    _whitening,
)

Array = jax.Array
_ALPHAS = (0.0, 0.05, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0, 1.2, 1.5, 2.0, 3.0)


def _feat(x: Array) -> _Feat:
    d = x.shape[-1]
    return _Feat(x, jnp.zeros((d,), jnp.float32), jnp.ones((d,), jnp.float32))


@partial(jax.jit, static_argnames="num_classes")
def _stats_chunk(x, y, *, num_classes):
    """Per chunk: ``x̃ᵀx̃ [layer, d+1, d+1]`` and class counts ``[task, classes]``."""

    def gram(x):
        xt = jnp.concatenate([x.astype(jnp.float32), jnp.ones((x.shape[0], 1))], axis=1)
        return xt.T @ xt

    counts = jax.nn.one_hot(y, num_classes).sum(1)
    return jax.vmap(gram)(x), counts


@jax.jit
def _grad_chunk(x, y, theta, present):
    """Per chunk and probe: summed cross-entropy ``[]`` and summed ``x̃ᵀ(p - y)``."""

    def core(x, y_present, theta):
        y, present = y_present
        t = _task(y, theta.shape[-1], present)
        f = _feat(x)
        z = _forward(f, theta)
        return _ce(t, z) * x.shape[0], _backward(f, _probs(t, z) - t.onehot)

    return _over_grid(core, per_probe=True)(x, (y, present), theta)


@jax.jit
def _line_chunk(x, y, theta, p, present):
    """Per chunk and probe: summed cross-entropy at ``theta + α p`` for each grid ``α``."""

    def core(x, y_present, tp):
        y, present = y_present
        theta, p = tp
        t = _task(y, theta.shape[-1], present)
        f = _feat(x)
        z, dz = _forward(f, theta), _forward(f, p)
        return jnp.stack([_ce(t, z + a * dz) for a in _ALPHAS]) * x.shape[0]

    return _over_grid(core, per_probe=True)(x, (y, present), (theta, p))


def _line_at(x, y, *, theta, p, present):
    return _line_chunk(x, y, theta, p, present)


def _sum_over(chunks, fn):
    total = None
    for x, y in chunks():
        out = fn(x, y)
        total = out if total is None else jax.tree.map(jnp.add, total, out)
    if total is None:
        raise ValueError(
            "chunks: a call yielded no chunks; chunks() must return a fresh, non-empty iterable "
            "on every call (pass a generator function, not a generator)"
        )
    return total


def fit_logistic_stream(
    chunks: Callable[[], Iterable[tuple[Array, Array]]],
    *,
    num_classes: int,
    C: float | Array = 1.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    memory: int = 10,
) -> tuple[LinearProbe, FitInfo]:
    """Fits logistic probes for every layer × task from re-readable chunks of data.

    Minimises the same objective as :func:`fit_logistic` (scikit-learn's
    ``LogisticRegression(C)``) with memory ``O(layer · d² + chunk)``, independent of ``n``.

    Args:
      chunks: a function returning a fresh iterable of ``(features [layer, m, d],
        labels [task, m])`` chunks each time it is called (it is called once per pass).
      num_classes: classes per task.
      C: inverse regularisation strength, scalar or ``[layer]``.
      max_iter: iteration cap (each iteration is two passes over the chunks).
      tol: stop when every probe's max-abs gradient is below ``tol``.
      memory: L-BFGS history length.

    Returns:
      ``(probe, info)`` as :func:`fit_logistic`.

    Raises:
      ValueError: a chunk with bad shapes, NaN features or labels outside
        ``[0, num_classes)`` (checked as each chunk arrives: the stream runs eagerly, so
        these checks always raise), a task with one class overall, an empty stream.
      TypeError: ``chunks`` is not a function of no arguments returning ``(x, y)`` pairs,
        or it yields traced arrays (the stream cannot run under ``jit``).

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1, 60, 3))
    >>> y = (x[0, :, :1].T > 0).astype(int)
    >>> chunks = lambda: ((x[:, s : s + 20], y[:, s : s + 20]) for s in range(0, 60, 20))
    >>> probe, info = fit_logistic_stream(chunks, num_classes=2)
    >>> probe.weight.shape, bool(info.converged.all())
    ((1, 1, 3, 2), True)
    """
    if not callable(chunks):
        raise TypeError(
            f"chunks: expected a function returning an iterable of (x, y) chunks, got a "
            f"{type(chunks).__name__}"
        )
    num_classes = check_int(num_classes, "num_classes", lo=2)
    tol = _check_solver(max_iter, tol, memory)
    first: list = []
    rows = [0]

    def checked():
        it = chunks()
        try:
            it = iter(it)
        except TypeError:
            raise TypeError(
                f"chunks: expected chunks() to return an iterable, got a {type(it).__name__}"
            ) from None
        for i, item in enumerate(it):
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise TypeError(
                    f"chunks: chunk {i}: expected a (features, labels) pair, got a "
                    f"{type(item).__name__}"
                )
            x, y = item
            if is_traced((x, y)):
                raise TypeError(
                    "chunks: fit_logistic_stream runs eagerly (a Python loop over chunks) and "
                    "got traced arrays; call it outside jit"
                )
            x = _check_features(x, f"chunks: chunk {i} features")
            y = _check_labels(y, x.shape[1], f"chunks: chunk {i} labels", integer=True)
            if not first:
                first.append((x.shape[0], x.shape[2], y.shape[0]))
            if (x.shape[0], x.shape[2], y.shape[0]) != first[0]:
                raise ValueError(
                    f"chunks: chunk {i}: expected features [layer={first[0][0]}, m, "
                    f"d={first[0][1]}] and labels [task={first[0][2]}, m], got "
                    f"{tuple(x.shape)} and {tuple(y.shape)}"
                )
            lo, hi = int(jnp.min(y)), int(jnp.max(y))
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"chunks: chunk {i} labels: expected class ids in [0, {num_classes}) "
                    f"(num_classes={num_classes}), got min {lo} and max {hi}"
                )
            rows[0] += x.shape[1]
            yield x, y

    gram, counts = _sum_over(checked, partial(_stats_chunk, num_classes=num_classes))
    counts = np.asarray(counts)
    for i, c in enumerate(counts):
        if (c > 0).sum() < 2:
            raise ValueError(
                f"chunks: task {i} has one class only over all chunks; a probe needs >= 2"
            )
    n = float(counts[0].sum())
    layers, d1 = gram.shape[0], gram.shape[1]
    tasks, k = counts.shape
    present = jnp.asarray(counts > 0)
    free = jax.vmap(lambda c: _task(jnp.zeros((1,), jnp.int32), k, c).free)(present)
    lam = _inv_c(C, layers)[0] / n  # [layer]
    pen = _penalty_mask(d1 - 1)
    _, linv = jax.vmap(lambda g, lm: _whitening(g / n, lm, pen, 0.25))(gram, lam)

    def objective(theta):
        ce, g = _sum_over(chunks, lambda x, y: _grad_chunk(x, y, theta, present))
        value = ce / n + 0.5 * lam[:, None] * jnp.sum(pen[:, None] * theta**2, axis=(-2, -1))
        reg = lam[:, None, None, None] * pen[:, None] * theta
        return value, (g / n + reg) * free[None, :, None, :]

    shape = (layers, tasks, d1, k)
    opt = optax.scale_by_lbfgs(memory_size=memory)
    grid = lambda fn: jax.vmap(jax.vmap(fn))  # noqa: E731
    # whitened coordinates v = Lᵀθ per probe: θ = L⁻ᵀv, ∇v = L⁻¹∇θ, ∇θ = L∇v
    to_theta = jax.jit(lambda v: jnp.einsum("lji,ltjk->ltik", linv, v))
    to_white = jax.jit(lambda g: jnp.einsum("lij,ltjk->ltik", linv, g))
    direction = jax.jit(grid(lambda g, s, v: opt.update(g, s, v)))
    theta = jnp.zeros(shape, jnp.float32)
    v = jnp.zeros(shape, jnp.float32)
    value, g = objective(theta)
    gv = to_white(g)
    state = grid(opt.init)(v)
    it = jnp.zeros((layers, tasks), jnp.int32)
    stalled = jnp.zeros((layers, tasks), bool)
    alphas = jnp.asarray(_ALPHAS)
    keep = jax.jit(
        lambda active, new, old: jax.tree.map(
            lambda a, b: jnp.where(active.reshape(active.shape + (1,) * (a.ndim - 2)), a, b),
            new,
            old,
        )
    )
    for _ in range(max_iter):
        active = (jnp.max(jnp.abs(g), axis=(-2, -1)) > tol) & ~stalled
        if not bool(jnp.any(active)):
            break
        u, new_state = direction(gv, state, v)
        state = keep(active, new_state, state)
        p = -to_theta(u) * free[None, :, None, :] * active[..., None, None]
        ce = _sum_over(chunks, partial(_line_at, theta=theta, p=p, present=present))
        reg = theta[..., None, :, :] + alphas[:, None, None] * p[..., None, :, :]
        vals = ce / n + 0.5 * lam[:, None, None] * jnp.sum(pen[:, None] * reg**2, axis=(-2, -1))
        a = alphas[jnp.argmin(vals, axis=-1)]
        new_theta = theta + a[..., None, None] * p
        new_value, new_g = objective(new_theta)
        v = keep(active, v - a[..., None, None] * u, v)
        theta, value, g = keep(active, (new_theta, new_value, new_g), (theta, value, g))
        gv = to_white(g)
        it = it + active.astype(jnp.int32)
        stalled = stalled | (active & (a <= 0.0))
    w, b = theta[..., :-1, :], theta[..., -1, :]
    gnorm = jnp.max(jnp.abs(g), axis=(-2, -1))
    probe = LinearProbe(w, b, jnp.broadcast_to(present, (layers, tasks, k)))
    info = FitInfo(value, gnorm, it, gnorm <= tol)
    _warn_unconverged("fit_logistic_stream", info)
    return probe, info
