"""Fitting linear probes for every layer × task in one compiled call.

Features are ``[layer, n, d]`` and labels ``[task, n]``. A probe is fitted for every
``(layer, task)`` pair by ONE nested ``vmap`` over a single-probe core (:func:`_over_grid`): the
outer axis maps the layer's features, the inner axis maps the task's labels while the layer's
features stay shared. Vmapping ``x @ w`` over tasks with a shared ``x`` becomes one matmul
``x @ [w_1 … w_T]``, so every pass over a layer's features serves all its tasks at once.

Probes are memory-bound: reading the features dominates. The logistic solver is therefore built
to make few passes over them:

* **Objective** — exactly scikit-learn's ``LogisticRegression(C)``: mean cross-entropy plus
  ``‖W‖² / (2·C·n)``, intercept not penalised; a task with two classes uses one logit (the
  sigmoid model, as scikit-learn does), more classes use the multinomial model.
* **Whitened coordinates** — with ``M = X̃ᵀX̃ / (4n) + λ·I = L Lᵀ`` (Böhning's bound on the
  logistic Hessian; ``X̃`` has a column of ones) the solver works on ``v = Lᵀθ``, where the
  Hessian is close to the identity. ``M`` costs one pass and is shared by all tasks of a layer;
  ``L`` and ``L⁻¹`` are formed once, so moving between coordinates is a small matmul. Plain
  L-BFGS on ``θ`` needs hundreds of iterations here; on ``v`` it needs a few tens.
* **optax L-BFGS** — the optimiser is an optax ``GradientTransformation``,
  ``chain(scale_by_lbfgs(memory), scale(-1), <margin line search>)``, stepped inside
  ``lax.while_loop`` until the max-abs gradient (in ``θ``) is below ``tol``. (L-BFGS on ``v``
  with ``H₀ = γI`` is L-BFGS on ``θ`` with ``H₀ = γM⁻¹``.)
* **Margin line search** — the last link of the chain is an optax line search
  (:func:`_scale_by_margin_linesearch`) whose state carries the logits ``z = X̃θ``. One pass
  gives ``X̃P`` for the direction ``P``; the search along ``z + α·X̃P`` is then exact (a few 1-D
  Newton steps) and reads no features; one more pass gives the gradient at the new point,
  which the loop reads back from the state (``optax.tree_utils.tree_get``). Each iteration
  costs two passes: ``data passes = 3 + 2·iterations`` (``M``, the starting margins and
  gradient). optax's own searches cost more passes here: each trial point costs a
  value-and-gradient (two passes), and under ``vmap`` the zoom search runs both branches of
  its ``lax.cond`` (four passes per trial); with them the fit was 2-10x slower.
* **Scale-free working copy** — every fit first forms, once per layer, the standardised copy
  ``x_s = (x - μ)/σ`` of the features (max-abs scaling first, then the mean, then the
  variance of the centred data, all in float32, so offsets of 10⁴ or magnitudes of 10³⁰ lose
  nothing) and solves in those coordinates. Without ``standardize`` the penalty stays on the
  raw weights (``‖w‖² = Σⱼ (w_sⱼ/σⱼ)²``), so the objective is unchanged; the fitted weights are
  mapped back so probes apply to raw features. This costs one extra copy of one layer's
  features and about four extra passes; without it, a feature offset of 3000 loses every
  significant digit of ``xᵀx`` in float32 and the fit returned NaN.

Ridge regression (continuous targets) is solved in closed form from the same Gram matrix.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax.sharding import Mesh

from jaxinterp._checks import (
    check_array,
    check_finite,
    check_int,
    is_traced,
    poison,
    value_check,
)
from jaxinterp.sharding import shard_batched

Array = jax.Array


class LinearProbe(NamedTuple):
    """Fitted linear probes for a grid of layers × tasks (a pytree of arrays).

    Scores are ``features @ weight + bias``; classes a task never saw have score ``-inf``.

    Attributes:
      weight: ``[layer, task, d, classes]`` (``classes == 1`` for regression).
      bias: ``[layer, task, classes]``.
      classes: ``[layer, task, classes]`` bool, the classes present in the task's training labels.
    """

    weight: Array
    bias: Array
    classes: Array


class FitInfo(NamedTuple):
    """Diagnostics of a logistic fit, each ``[layer, task]``.

    Attributes:
      loss: final training objective (mean cross-entropy + L2 term).
      grad_norm: final max-abs gradient of the objective.
      iterations: L-BFGS iterations taken.
      converged: ``grad_norm <= tol``.
    """

    loss: Array
    grad_norm: Array
    iterations: Array
    converged: Array


# --------------------------------------------------------------------------------------------
# Shared pieces: feature statistics, products with (standardised, augmented) features.


class _Feat(NamedTuple):
    """One layer's features ``x: [n, d]`` with standardisation ``mu, sigma: [d]``."""

    x: Array
    mu: Array
    sigma: Array


def _standardized(x: Array, per_column: bool = True) -> tuple[Array, Array, Array]:
    """Standardised copy of one layer's features, safe for any finite float32 scale.

    Returns ``(x_s [n, d] in x's dtype, mu [d], sigma [d])`` with ``x = mu + sigma · x_s``.
    Each column is first divided by its max-abs value (so squares cannot overflow), then the
    mean is taken and refined once (the second pass removes the rounding of the first), then
    the variance of the centred data. Constant columns (``max == min``) become zeros with
    ``sigma = 1``. With ``per_column=False`` every column is divided by the same scale (the
    layer's largest sd), which keeps a raw-weight penalty uniform and well conditioned.
    """
    xf = x.astype(jnp.float32)
    top, bottom = jnp.max(xf, axis=0), jnp.min(xf, axis=0)
    const = top == bottom
    s = jnp.maximum(jnp.abs(top), jnp.abs(bottom))
    s = jnp.where(s > 0, s, 1.0)
    xs = xf / s
    mu = jnp.mean(xs, axis=0)
    mu = mu + jnp.mean(xs - mu, axis=0)
    sd = jnp.sqrt(jnp.mean(jnp.square(xs - mu), axis=0))
    sd = jnp.where(const | (sd <= 0), 1.0, sd)
    sigma = sd * s  # raw units
    if not per_column:  # one scale per layer (the largest sd): the raw penalty stays uniform
        top = jnp.max(jnp.where(const, 0.0, sigma))
        sigma = jnp.full_like(sigma, jnp.where(top > 0, top, 1.0))
    scale = s / sigma  # multiplies (xs - mu)
    xc = jnp.where(const, 0.0, (xs - mu) * scale).astype(x.dtype)
    return xc, mu * s, jnp.where(const, 1.0, sigma)


def _feat(x: Array) -> _Feat:
    """Features used as they are (no centring): ``mu = 0``, ``sigma = 1``."""
    d = x.shape[-1]
    return _Feat(x, jnp.zeros((d,), jnp.float32), jnp.ones((d,), jnp.float32))


def _feature_penalty(sigma: Array, standardize: bool) -> Array:
    """Penalty weights ``[d + 1]`` in standardised coordinates (last entry: intercept, 0).

    ``standardize``: the penalty is on the standardised weights (1 each). Otherwise it stays on
    the raw weights ``w = w_s / σ``: weight ``1/σ²``, capped at 1e30 (a column of scale
    < 1e-15 then gets weight ~0, as its raw-penalty optimum has).
    """
    if standardize:
        w = jnp.ones_like(sigma)
    else:
        w = jnp.minimum(jnp.square(1.0 / sigma), 1e30)
    return jnp.concatenate([w, jnp.zeros((1,), w.dtype)])


def _forward(f: _Feat, theta: Array) -> Array:
    """``x̃ @ theta`` for ``theta: [d + 1, k]`` (last row = intercept) -> ``[n, k]``."""
    w = theta[:-1] / f.sigma[:, None]
    z = jnp.dot(f.x, w.astype(f.x.dtype), preferred_element_type=jnp.float32)
    return z + (theta[-1] - f.mu @ w)


def _backward(f: _Feat, r: Array) -> Array:
    """``x̃ᵀ @ r`` for ``r: [n, k]`` -> ``[d + 1, k]``."""
    xr = jnp.dot(r.T.astype(f.x.dtype), f.x, preferred_element_type=jnp.float32).T
    s = r.sum(0)
    return jnp.concatenate([(xr - f.mu[:, None] * s) / f.sigma[:, None], s[None]], axis=0)


def _gram(f: _Feat) -> Array:
    """``x̃ᵀx̃ / n``: ``[d + 1, d + 1]`` (standardised features, ones column last)."""
    n = f.x.shape[0]
    g = jnp.dot(f.x.T, f.x, preferred_element_type=jnp.float32) / n
    m = jnp.mean(f.x, axis=0, dtype=jnp.float32)
    g = (g - jnp.outer(f.mu, m) - jnp.outer(m, f.mu) + jnp.outer(f.mu, f.mu)) / jnp.outer(
        f.sigma, f.sigma
    )
    mc = (m - f.mu) / f.sigma
    top = jnp.concatenate([g, mc[:, None]], axis=1)
    return jnp.concatenate([top, jnp.concatenate([mc, jnp.ones((1,))])[None]], axis=0)


def _penalty_mask(d: int) -> Array:
    return jnp.concatenate([jnp.ones((d,)), jnp.zeros((1,))])


def _unstandardize(mu: Array, sigma: Array, theta: Array) -> tuple[Array, Array]:
    """Maps augmented weights on standardised features back to raw ``(w [d, k], b [k])``."""
    w = theta[:-1] / sigma[:, None]
    return w, theta[-1] - mu @ w


def _over_grid(core, mesh: Mesh | None = None, per_probe: bool = False):
    """THE batching of probes: ``core(layer_item, task_item[, probe_item])`` over layer × task.

    The inner vmap keeps the layer's features shared across tasks (one matmul per pass for
    all tasks); the outer vmap maps layers, split over ``mesh`` when one is given. With
    ``per_probe``, a third argument carries ``[layer, task, ...]`` leaves (e.g. weights).
    """
    if per_probe:
        inner = jax.vmap(core, in_axes=(None, 0, 0))
        grid = jax.vmap(inner, in_axes=(0, None, 0))
    else:
        grid = jax.vmap(jax.vmap(core, in_axes=(None, 0)), in_axes=(0, None))
    if mesh is None:
        return grid
    return shard_batched(grid, mesh, batch_argnums=(0, 2) if per_probe else 0)


# --------------------------------------------------------------------------------------------
# Logistic regression: single-probe core.

_NEG = -jnp.inf


class _Task(NamedTuple):
    onehot: Array  # [n, k] labels
    present: Array  # [k] bool, classes seen
    free: Array  # [k] bool, columns with free parameters (one is pinned for binary tasks)


def _task(y: Array, num_classes: int, present: Array | None = None) -> _Task:
    onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    if present is None:
        present = onehot.sum(0) > 0
    first = jnp.argmax(present)
    binary = present.sum() == 2
    pinned = binary & (jnp.arange(num_classes) == first)
    return _Task(onehot, present, present & ~pinned)


def _ce(t: _Task, z: Array) -> Array:
    """Mean cross-entropy of logits ``z: [n, k]``; absent classes masked."""
    z = jnp.where(t.present, z, _NEG)
    lse = jax.nn.logsumexp(z, axis=-1)
    return jnp.mean(lse - jnp.sum(jnp.where(t.onehot > 0, z, 0.0), -1))


def _probs(t: _Task, z: Array) -> Array:
    return jax.nn.softmax(jnp.where(t.present, z, _NEG), axis=-1)


def _grad(f: _Feat, t: _Task, theta: Array, z: Array, lam: Array, pen: Array) -> Array:
    r = (_probs(t, z) - t.onehot) / z.shape[0]
    return (_backward(f, r) + lam * pen[:, None] * theta) * t.free


def _objective(t: _Task, theta: Array, z: Array, lam: Array, pen: Array) -> Array:
    return _ce(t, z) + 0.5 * lam * jnp.sum(pen[:, None] * theta**2)


def _line_search(t, theta, p, z, dz, lam, pen, steps: int):
    """Exact-ish line search on cached margins: 1-D Newton from ``α = 1``, best value kept."""
    wp = jnp.sum(pen[:, None] * theta * p)
    pp = jnp.sum(pen[:, None] * p * p)

    def phi(a):
        za = z + a * dz
        q = _probs(t, za)
        val = _ce(t, za) + 0.5 * lam * jnp.sum(pen[:, None] * (theta + a * p) ** 2)
        qd = jnp.sum(q * dz, -1)
        d1 = jnp.mean(qd - jnp.sum(t.onehot * dz, -1)) + lam * (wp + a * pp)
        d2 = jnp.mean(jnp.sum(q * dz * dz, -1) - qd**2) + lam * pp
        return val, d1, d2

    def body(carry, _):
        a, best_a, best_v = carry
        v, d1, d2 = phi(a)
        better = v < best_v
        best_a, best_v = jnp.where(better, a, best_a), jnp.where(better, v, best_v)
        a_new = a - d1 / jnp.maximum(d2, 1e-30)
        a_new = jnp.clip(jnp.where(jnp.isfinite(a_new), a_new, 0.5 * a), 1e-3 * a, 1e3)
        return (a_new, best_a, best_v), None

    v0 = _objective(t, theta, z, lam, pen)
    init = (jnp.float32(1.0), jnp.float32(0.0), v0)
    (a, best_a, best_v), _ = jax.lax.scan(body, init, None, steps)
    # Near the optimum f32 objective values stop resolving decreases while derivatives still
    # do: keep the final Newton iterate unless its value is clearly worse than the start.
    v, _, _ = phi(a)
    ok = v <= v0 + 1e-6 * (1.0 + jnp.abs(v0))
    return jnp.where(ok, a, best_a), jnp.where(ok, v, best_v)


def _whitening(gram: Array, lam: Array, pen: Array, scale: float) -> tuple[Array, Array]:
    """``(L, L⁻¹)`` for ``M = L Lᵀ = scale·gram + λ·diag(pen)``: ``v = Lᵀθ`` whitens the problem.

    The explicit triangular inverse costs one BLAS-3 solve per layer; afterwards mapping
    between coordinates is a matmul, much faster on CPU than a triangular solve per iteration.
    """
    m = scale * gram + jnp.diag(lam * pen)
    m = m + 1e-7 * jnp.mean(jnp.diag(m)) * jnp.eye(m.shape[0])
    chol = jnp.linalg.cholesky(m)
    return chol, jax.scipy.linalg.solve_triangular(chol, jnp.eye(m.shape[0]), lower=True)


class _MarginSearchState(NamedTuple):
    """State of :func:`_scale_by_margin_linesearch` (one probe)."""

    theta: Array  # [d + 1, k] current parameters in feature coordinates
    z: Array  # [n, k] cached margins x̃ @ theta
    value: Array  # [] objective at theta
    grad: Array  # [d + 1, k] gradient in whitened coordinates
    learning_rate: Array  # [] last step length (0 = no decrease found)


def _scale_by_margin_linesearch(
    f: _Feat, t: _Task, linv: Array, lam: Array, pen: Array, steps: int
) -> optax.GradientTransformationExtraArgs:
    """An optax line search on cached margins for the whitened logistic objective.

    Parameters are whitened weights ``v = Lᵀθ``. The state carries ``θ`` and its margins
    ``z = x̃θ``; ``update`` maps the direction to ``P = L⁻ᵀu`` (one pass gives ``x̃P``), picks
    the step by 1-D Newton on ``z + α·x̃P`` (no pass), and stores the value and the whitened
    gradient ``L⁻¹∇θ`` at the new point (one pass) for the next direction, read back with
    ``optax.tree_utils.tree_get(state, "grad")``.
    """

    def init(v):
        theta = _unwhiten(linv, t, v)
        z = _forward(f, theta)
        g = linv @ _grad(f, t, theta, z, lam, pen)
        value = _objective(t, theta, z, lam, pen)
        return _MarginSearchState(theta, z, value, g, jnp.float32(1.0))

    def update(updates, state, params=None, **extra):
        del params, extra
        p = _unwhiten(linv, t, updates)
        dz = _forward(f, p)  # pass 1
        a, value = _line_search(t, state.theta, p, state.z, dz, lam, pen, steps)
        theta, z = state.theta + a * p, state.z + a * dz
        g = linv @ _grad(f, t, theta, z, lam, pen)  # pass 2
        new = _MarginSearchState(theta, z, value, g, a)
        return jax.tree.map(lambda u: a * u, updates), new

    return optax.GradientTransformationExtraArgs(init, update)


def _unwhiten(linv: Array, t: _Task, v: Array) -> Array:
    """``θ = L⁻ᵀ v`` on the free columns: ``[d + 1, k]``."""
    return (linv.T @ v) * t.free


def _fit_logistic_one(
    layer: tuple[Array, Array],
    y: Array,
    *,
    num_classes: int,
    max_iter: int,
    tol: float,
    memory: int,
    standardize: bool,
    ls_steps: int,
):
    """Fits ONE logistic probe: features ``x: [n, d]``, labels ``y: [n]``, ``C`` scalar."""
    x, inv_c = layer
    xc, mu, sigma = _standardized(
        x, standardize
    )  # shared by all tasks of the layer (vmap keeps it so)
    f = _feat(xc)
    n, d = x.shape
    k = num_classes
    lam = inv_c / n
    pen = _feature_penalty(sigma, standardize)
    chol, linv = _whitening(_gram(f), lam, pen, 0.25)  # shared by all tasks of the layer
    t = _task(y, k)

    opt = optax.chain(
        optax.scale_by_lbfgs(memory_size=memory),
        optax.scale(-1.0),
        _scale_by_margin_linesearch(f, t, linv, lam, pen, ls_steps),
    )
    v0 = jnp.zeros((d + 1, k), jnp.float32)
    state0 = opt.init(v0)  # margins, value and gradient at v0 (two passes)
    value0, grad0 = otu.tree_get(state0, "value"), otu.tree_get(state0, "grad")

    def gnorm(g):
        return jnp.max(jnp.abs(chol @ g))  # whitened gradient -> gradient in θ

    def cond(c):
        v, value, g, state, it, stalled = c
        return (it < max_iter) & (gnorm(g) > tol) & ~stalled

    def body(c):
        v, value, g, state, it, stalled = c
        u, state = opt.update(g, state, v, value=value, grad=g)
        v = optax.apply_updates(v, u)
        value, g = otu.tree_get(state, "value"), otu.tree_get(state, "grad")
        lr = otu.tree_get(state, "learning_rate")
        return v, value, g, state, it + 1, lr <= 0.0

    init = (v0, value0, grad0, state0, jnp.int32(0), jnp.bool_(False))
    _, value, g, state, it, _ = jax.lax.while_loop(cond, body, init)
    w, b = _unstandardize(mu, sigma, otu.tree_get(state, "theta"))
    gn = gnorm(g)
    info = FitInfo(value, gn, it, gn <= tol)
    return LinearProbe(w, b, t.present), info


# --------------------------------------------------------------------------------------------
# Input checks (shapes at trace time, values when concrete; see jaxinterp._checks).


def _is_concrete(x) -> bool:
    return not is_traced(x)


def _check_features(features, name: str = "features") -> Array:
    """``[layer, n, d]`` float, non-empty; NaN/inf raise when concrete. Returns the array."""
    x = check_array(features, name, ndim=3, kind="floating")
    if min(x.shape) < 1:
        raise ValueError(f"{name}: expected [layer, n, d] with every size >= 1, got {x.shape}")
    if _is_concrete(x) and not bool(jnp.all(jnp.isfinite(x))):
        bad = np.argwhere(~np.isfinite(np.asarray(x, np.float32)).all(axis=(1, 2)))
        raise ValueError(
            f"{name}: expected finite values, got NaN or inf (layers {bad.ravel().tolist()})"
        )
    return x


def _check_labels(labels, n: int, name: str, integer: bool) -> Array:
    """``[task, n]`` labels (int or bool; any number for ``integer=False``). Returns the array."""
    y = check_array(labels, name, ndim=2)
    if integer:
        if y.dtype == jnp.bool_:
            y = y.astype(jnp.int32)
        if not jnp.issubdtype(y.dtype, jnp.integer):
            raise TypeError(f"{name}: expected integer class labels, got dtype {y.dtype}")
    elif not jnp.issubdtype(y.dtype, jnp.number) or jnp.issubdtype(y.dtype, jnp.complexfloating):
        raise TypeError(f"{name}: expected real numbers, got dtype {y.dtype}")
    if y.shape[0] < 1:
        raise ValueError(f"{name}: expected [task, n] with at least one task, got {y.shape}")
    if y.shape[1] != n:
        raise ValueError(f"{name}: expected length n={n} (features' second axis), got {y.shape[1]}")
    return y


def _resolve_classes(labels: Array, num_classes: int | None) -> tuple[int, Array | None]:
    """``(k, task_ok)``: classes per task and, for traced labels, a ``[task]`` validity mask.

    Concrete labels are checked now (range, >= 2 classes per task) and ``task_ok`` is None.
    Traced labels register the same checks with :func:`value_check`.
    """
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes", lo=2)
    if is_traced(labels):
        if num_classes is None:
            raise ValueError("num_classes: required when labels are traced (e.g. under jit)")
        k = num_classes
        in_range = jnp.all((labels >= 0) & (labels < k), axis=1)
        two = jnp.min(labels, axis=1) != jnp.max(labels, axis=1)
        value_check(
            jnp.all(in_range),
            f"labels: expected class ids in [0, {k}), got min {{}} and max {{}}",
            jnp.min(labels),
            jnp.max(labels),
        )
        value_check(
            jnp.all(two),
            "labels: expected >= 2 classes in every task, got {} task(s) with one class",
            jnp.sum(~two),
        )
        return k, in_range & two
    lab = np.asarray(labels)
    k = int(lab.max()) + 1 if num_classes is None else num_classes
    if lab.min() < 0 or lab.max() >= k:
        raise ValueError(
            f"labels: expected class ids in [0, {k}) (num_classes={k}), got min {lab.min()} "
            f"and max {lab.max()}"
        )
    for i, row in enumerate(lab):
        if np.unique(row).size < 2:
            raise ValueError(
                f"labels: task {i} has one class only ({int(row[0])}); a probe needs >= 2"
            )
    return max(k, 2), None


def _inv_c(C, num_layers: int, name: str = "C") -> tuple[Array, Array | None]:
    """``(1/C [layer], ok)``; concrete C is checked now (``ok`` None), traced C registered."""
    try:
        c = jnp.asarray(C, jnp.float32)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a positive number or [layer] array, got {C!r}") from None
    if c.ndim > 1 or (c.ndim == 1 and c.shape[0] not in (1, num_layers)):
        raise ValueError(
            f"{name}: expected a scalar or shape [{num_layers}] (one per layer), got {c.shape}"
        )
    c = jnp.broadcast_to(c, (num_layers,))
    if _is_concrete(c):
        if not bool(jnp.all(c > 0)):  # also refuses NaN
            raise ValueError(f"{name}: expected > 0 (use jnp.inf for no penalty), got {C}")
        return 1.0 / c, None
    ok = c > 0
    value_check(jnp.all(ok), f"{name}: expected > 0, got min {{}}", jnp.min(c))
    return 1.0 / c, ok


def _check_solver(max_iter, tol, memory) -> float:
    check_int(max_iter, "max_iter", lo=0)
    check_int(memory, "memory", lo=1)
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
        raise TypeError(f"tol: expected a positive float, got {type(tol).__name__} {tol!r}")
    if not tol > 0:  # refuses NaN too
        raise ValueError(f"tol: expected a positive float, got {tol}")
    return float(tol)


def fit_logistic(
    features: Array,
    labels: Array,
    *,
    num_classes: int | None = None,
    C: float | Array = 1.0,
    max_iter: int = 100,
    tol: float = 1e-4,
    memory: int = 10,
    standardize: bool = False,
    mesh: Mesh | None = None,
) -> tuple[LinearProbe, FitInfo]:
    """Fits logistic probes for every layer × task, all in one compiled call.

    Minimises, per probe, ``mean cross-entropy + ‖W‖² / (2·C·n)`` (intercept unpenalised) —
    the objective of scikit-learn's ``LogisticRegression(C=C)``: a task with two classes uses the
    sigmoid (one logit), more classes the multinomial model. Solved by optax's L-BFGS
    (``optax.scale_by_lbfgs``) in coordinates whitened by the layer's feature covariance, with
    an exact line search on cached logits; each iteration reads the features twice for all
    tasks. The solve runs on a standardised copy of the features, so any feature offset or
    scale that float32 can hold (e.g. mean 3000 and sd 1, or magnitudes of 1e19) is fitted as
    well as unit-scale data; the returned probe applies to the raw features.

    Args:
      features: ``[layer, n, d]`` float (f32 or bf16; bf16 halves the bytes read).
      labels: ``[task, n]`` int (or bool) class ids in ``[0, num_classes)``.
      num_classes: classes per task (default ``labels.max() + 1``; required under ``jit``).
      C: inverse regularisation strength, scalar or ``[layer]``; ``jnp.inf`` for none.
      max_iter: iteration cap.
      tol: stop when the max-abs gradient of the objective is below ``tol``, taken with
        respect to the intercept and the weights of the centred features divided by one scale
        per layer (their largest standard deviation; with ``standardize``, each feature's
        own), so the criterion does not depend on the features' units.
      memory: L-BFGS history length.
      standardize: fit on ``(x - mean) / std`` of each layer's features (like a
        ``StandardScaler`` pipeline: the penalty is on the standardised weights); the returned
        probe applies to the raw features.
      mesh: split the layer axis over this device mesh.

    Returns:
      ``(probe, info)``: a :class:`LinearProbe` with ``weight [layer, task, d, num_classes]``
      and a :class:`FitInfo` of ``[layer, task]`` diagnostics. Passes over the features per
      layer: about ``8 + 2 · max(info.iterations)`` (5 of them form the standardised copy).
      Called eagerly, probes that did not reach ``tol`` also raise a ``RuntimeWarning``
      (``info.converged`` is not the only signal).
      Under ``jit``, invalid values (NaN/inf features, labels outside ``[0, num_classes)``, a
      task with one class, ``C <= 0``) cannot raise: the affected probes' weights, biases and
      diagnostics come out as NaN (``iterations`` -1, ``converged`` False). The checks are
      registered with checkify, but :func:`jaxinterp.checked` cannot wrap this function
      (checkify does not support its vmapped ``while_loop``): check the inputs eagerly or
      test the outputs for NaN.

    Raises:
      ValueError: bad shapes, mismatched lengths, NaN/inf features, labels out of range, a
        task with one class, bad ``C``, ``max_iter``, ``tol`` or ``memory``.
      TypeError: non-float features or non-integer labels.

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (2, 100, 5))       # 2 layers
    >>> y = jnp.stack([(x[0, :, 0] > 0), (x[0, :, 1] > 0)]).astype(int)  # 2 tasks
    >>> probe, info = fit_logistic(x, y)
    >>> probe.weight.shape
    (2, 2, 5, 2)
    >>> bool(info.converged.all())
    True
    """
    features = _check_features(features)
    labels = _check_labels(labels, features.shape[1], "labels", integer=True)
    tol = _check_solver(max_iter, tol, memory)
    k, task_ok = _resolve_classes(labels, num_classes)
    inv_c, c_ok = _inv_c(C, features.shape[0])
    probe, info = _fit_logistic_jit(
        (features, inv_c),
        labels,
        num_classes=k,
        max_iter=max_iter,
        tol=tol,
        memory=memory,
        standardize=bool(standardize),
        mesh=mesh,
    )
    if is_traced((features, labels, inv_c)):
        layers, tasks = features.shape[0], labels.shape[0]
        ok = jnp.all(jnp.isfinite(features), axis=(1, 2))[:, None]
        check_finite(features, "features")
        ok = ok & (jnp.ones((tasks,), bool) if task_ok is None else task_ok)[None, :]
        ok = ok & (jnp.ones((layers,), bool) if c_ok is None else c_ok)[:, None]
        probe = probe._replace(weight=poison(probe.weight, ok), bias=poison(probe.bias, ok))
        info = FitInfo(
            poison(info.loss, ok),
            poison(info.grad_norm, ok),
            poison(info.iterations, ok),
            info.converged & ok,
        )
        return probe, info
    _warn_unconverged("fit_logistic", info)
    return probe, info


def _warn_unconverged(fn: str, info: FitInfo) -> None:
    conv = np.asarray(info.converged)
    if not conv.all():
        bad = np.argwhere(~conv)[:8].tolist()
        warnings.warn(
            f"{fn}: {int((~conv).sum())} of {conv.size} probes did not reach tol "
            f"(max grad norm {float(np.nanmax(np.asarray(info.grad_norm))):.3g}; "
            f"[layer, task] {bad}); raise max_iter or check the features",
            RuntimeWarning,
            stacklevel=3,
        )


@partial(
    jax.jit,
    static_argnames=(
        "num_classes",
        "max_iter",
        "tol",
        "memory",
        "standardize",
        "mesh",
        "ls_steps",
    ),
)
def _fit_logistic_jit(layer, labels, *, mesh, ls_steps=2, **settings):
    core = partial(_fit_logistic_one, ls_steps=ls_steps, **settings)
    return _over_grid(core, mesh)(layer, labels)


# --------------------------------------------------------------------------------------------
# Ridge regression: closed form from the Gram matrix, shared by all tasks of a layer.


def _fit_ridge_layer(layer: tuple[Array, Array], targets: Array, *, standardize: bool):
    """Ridge for ALL tasks of one layer: ``x: [n, d]``, ``targets: [task, n]``."""
    x, alpha = layer
    xc, mu, sigma = _standardized(x, standardize)
    f = _feat(xc)
    n, d = x.shape
    pen = _feature_penalty(sigma, standardize)
    # centred targets: the intercept is their mean plus a small correction from the solve
    y = targets.T.astype(jnp.float32)  # [n, task]
    ym = jnp.mean(y, axis=0)
    ym = ym + jnp.mean(y - ym, axis=0)
    m = n * _gram(f) + jnp.diag(alpha * pen)
    m = m + 1e-7 * jnp.mean(jnp.diag(m)) * jnp.eye(d + 1)
    rhs = _backward(f, y - ym)  # [d + 1, task]
    theta = jax.scipy.linalg.solve(m, rhs, assume_a="pos")
    theta = theta.at[-1].add(ym)
    w, b = _unstandardize(mu, sigma, theta)
    return w.T[:, :, None], b[:, None]


def fit_ridge(
    features: Array,
    targets: Array,
    *,
    alpha: float | Array = 1.0,
    standardize: bool = False,
    mesh: Mesh | None = None,
) -> LinearProbe:
    """Fits ridge-regression probes for every layer × task (closed form, one pass per layer).

    Minimises ``‖y - Xw - b‖² + alpha·‖w‖²`` per probe (intercept unpenalised), the objective
    of scikit-learn's ``Ridge(alpha)``; ``alpha=0`` is ordinary least squares. All tasks of a
    layer share one Gram matrix and one solve, formed from a standardised copy of the features
    (and centred targets), so large offsets or magnitudes lose no precision.

    Args:
      features: ``[layer, n, d]`` float.
      targets: ``[task, n]`` real targets.
      alpha: L2 strength ``>= 0``, scalar or ``[layer]``.
      standardize: fit on standardised features (penalty on standardised weights; the probe
        applies to raw features).
      mesh: split the layer axis over this device mesh.

    Returns:
      A :class:`LinearProbe` with ``weight [layer, task, d, 1]``, ``bias [layer, task, 1]``.
      Under ``jit``, NaN/inf features or targets or a negative ``alpha`` cannot raise: the
      affected probes come out as NaN; see :func:`jaxinterp.checked` to raise instead.

    Raises:
      ValueError: bad shapes, mismatched lengths, NaN/inf values, negative ``alpha``.
      TypeError: non-float features or non-numeric targets.

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1, 50, 3))
    >>> y = (x[0] @ jnp.array([1.0, -2.0, 0.5]) + 3.0)[None]
    >>> probe = fit_ridge(x, y, alpha=0.0)
    >>> [round(float(v), 3) for v in probe.weight[0, 0, :, 0]], round(float(probe.bias[0, 0, 0]), 3)
    ([1.0, -2.0, 0.5], 3.0)
    """
    features = _check_features(features)
    targets = _check_labels(targets, features.shape[1], "targets", integer=False)
    if _is_concrete(targets) and not bool(jnp.all(jnp.isfinite(targets))):
        bad = np.argwhere(~np.isfinite(np.asarray(targets, np.float32)).all(axis=1)).ravel()
        raise ValueError(f"targets: expected finite values, got NaN or inf (tasks {bad.tolist()})")
    try:
        a = jnp.asarray(alpha, jnp.float32)
    except (TypeError, ValueError):
        raise TypeError(f"alpha: expected a number or [layer] array, got {alpha!r}") from None
    layers = features.shape[0]
    if a.ndim > 1 or (a.ndim == 1 and a.shape[0] not in (1, layers)):
        raise ValueError(f"alpha: expected a scalar or shape [{layers}], got {a.shape}")
    a = jnp.broadcast_to(a, (layers,))
    if _is_concrete(a) and not bool(jnp.all(a >= 0)):  # refuses NaN too
        raise ValueError(f"alpha: expected >= 0, got {alpha}")
    probe = _fit_ridge_jit(features, a, targets, standardize=bool(standardize), mesh=mesh)
    if is_traced((features, targets, a)):
        check_finite(features, "features")
        check_finite(targets, "targets")
        value_check(jnp.all(a >= 0), "alpha: expected >= 0, got min {}", jnp.min(a))
        ok = (jnp.all(jnp.isfinite(features), axis=(1, 2)) & (a >= 0))[:, None]
        ok = ok & jnp.all(jnp.isfinite(targets.astype(jnp.float32)), axis=1)[None, :]
        probe = probe._replace(weight=poison(probe.weight, ok), bias=poison(probe.bias, ok))
    return probe


@partial(jax.jit, static_argnames=("standardize", "mesh"))
def _fit_ridge_jit(features, alpha, targets, *, standardize, mesh):
    core = jax.vmap(partial(_fit_ridge_layer, standardize=standardize), in_axes=(0, None))
    if mesh is not None:
        core = shard_batched(core, mesh, batch_argnums=0)
    w, b = core((features, alpha), targets)
    return LinearProbe(w, b, jnp.ones(b.shape, bool))


# --------------------------------------------------------------------------------------------
# Applying probes.


def _check_probe(probe, name: str = "probe") -> LinearProbe:
    if not isinstance(probe, LinearProbe):
        raise TypeError(
            f"{name}: expected a LinearProbe from fit_logistic/fit_ridge, got a "
            f"{type(probe).__name__}"
        )
    w = probe.weight
    if getattr(w, "ndim", None) != 4:
        raise ValueError(
            f"{name}: expected weight [layer, task, d, classes], got shape "
            f"{getattr(w, 'shape', None)}"
        )
    lt = tuple(w.shape[:2])
    if tuple(probe.bias.shape) != lt + (w.shape[3],) or tuple(probe.classes.shape) != tuple(
        probe.bias.shape
    ):
        raise ValueError(
            f"{name}: expected bias and classes of shape {lt + (w.shape[3],)}, got "
            f"{tuple(probe.bias.shape)} and {tuple(probe.classes.shape)}"
        )
    return probe


def _is_ridge(probe: LinearProbe) -> bool:
    return probe.weight.shape[-1] == 1


def decision(probe: LinearProbe, features: Array) -> Array:
    """Probe scores ``[layer, task, n, classes]`` (logits; ``-inf`` for unseen classes).

    Args:
      probe: fitted probes ``[layer, task, ...]``.
      features: ``[layer, n, d]`` float.

    Returns:
      ``[layer, task, n, classes]`` float32 scores (``classes == 1`` for ridge probes: the
      predicted values). Under ``jit``, rows of NaN/inf features give NaN scores; see
      :func:`jaxinterp.checked` to raise instead.

    Raises:
      ValueError: ``features`` of the wrong shape or with NaN/inf values.
      TypeError: ``probe`` is not a :class:`LinearProbe`, or non-float ``features``.

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1, 40, 3))
    >>> probe, _ = fit_logistic(x, (x[0, :, :1].T > 0).astype(int))
    >>> decision(probe, x).shape
    (1, 1, 40, 2)
    """
    probe = _check_probe(probe)
    layers, d = probe.weight.shape[0], probe.weight.shape[2]
    x = check_array(features, "features", ndim=3, kind="floating")
    if x.shape[0] != layers or x.shape[2] != d:
        raise ValueError(f"features: expected [layer={layers}, n, d={d}], got shape {x.shape}")
    check_finite(x, "features")
    z = jnp.einsum(
        "lnd,ltdk->ltnk",
        x,
        probe.weight.astype(x.dtype),
        preferred_element_type=jnp.float32,
    )
    z = z + probe.bias[:, :, None, :]
    return jnp.where(probe.classes[:, :, None, :], z, _NEG)


def predict(probe: LinearProbe, features: Array) -> Array:
    """Predicted class ids ``[layer, task, n]`` int32 (or values, for a ridge probe).

    Under ``jit``, rows of NaN/inf features predict class -1 (a ridge probe: NaN); see
    :func:`jaxinterp.checked` to raise instead.

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1, 40, 3))
    >>> y = (x[0, :, :1].T > 0).astype(int)
    >>> probe, _ = fit_logistic(x, y)
    >>> pred = predict(probe, x)
    >>> pred.shape, bool((pred == decision(probe, x).argmax(-1)).all())
    ((1, 1, 40), True)
    """
    z = decision(probe, features)
    if _is_ridge(probe):
        return z[..., 0]
    pred = jnp.argmax(z, axis=-1).astype(jnp.int32)
    return poison(pred, ~jnp.any(jnp.isnan(z), axis=-1))


def predict_proba(probe: LinearProbe, features: Array) -> Array:
    """Class probabilities ``[layer, task, n, classes]`` of logistic probes.

    Unseen classes get probability 0. Under ``jit``, rows of NaN/inf features give NaN; see
    :func:`jaxinterp.checked`.

    Raises:
      ValueError: ``probe`` is a ridge (regression) probe, or bad ``features``.

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (1, 40, 3))
    >>> probe, _ = fit_logistic(x, (x[0, :, :1].T > 0).astype(int))
    >>> p = predict_proba(probe, x)
    >>> p.shape, bool(jnp.allclose(p.sum(-1), 1.0))
    ((1, 1, 40, 2), True)
    """
    probe = _check_probe(probe)
    if _is_ridge(probe):
        raise ValueError(
            "probe: expected a logistic probe (from fit_logistic, >= 2 classes), got a ridge "
            "probe (1 output); use predict for its values"
        )
    return jax.nn.softmax(decision(probe, features), axis=-1)
