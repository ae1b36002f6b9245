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
* Standardisation (optional) is folded into the maths, never materialised: ``(x - μ)/σ`` is
  applied through ``μ`` and ``σ`` in each product, and the fitted weights are mapped back so
  probes apply to raw features.

Ridge regression (continuous targets) is solved in closed form from the same Gram matrix.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jax.sharding import Mesh

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


def _feat(x: Array, standardize: bool) -> _Feat:
    d = x.shape[-1]
    if not standardize:
        return _Feat(x, jnp.zeros((d,), jnp.float32), jnp.ones((d,), jnp.float32))
    mu = jnp.mean(x, axis=0, dtype=jnp.float32)
    var = jnp.mean(jnp.square(x.astype(jnp.float32) - mu), axis=0)
    sigma = jnp.where(var > 0, jnp.sqrt(var), 1.0)
    return _Feat(x, mu, sigma)


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


def _unstandardize(f: _Feat, theta: Array) -> tuple[Array, Array]:
    """Maps augmented weights on standardised features back to raw ``(w [d, k], b [k])``."""
    w = theta[:-1] / f.sigma[:, None]
    return w, theta[-1] - f.mu @ w


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
    f = _feat(x, standardize)
    n, d = x.shape
    k = num_classes
    lam = inv_c / n
    pen = _penalty_mask(d)
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
    w, b = _unstandardize(f, otu.tree_get(state, "theta"))
    gn = gnorm(g)
    info = FitInfo(value, gn, it, gn <= tol)
    return LinearProbe(w, b, t.present), info


# --------------------------------------------------------------------------------------------
# Input checks (shapes at trace time, values when concrete).


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_features(features) -> None:
    if not hasattr(features, "shape") or len(features.shape) != 3:
        raise ValueError(
            f"features: expected [layer, n, d], got shape {getattr(features, 'shape', None)}"
        )
    if not jnp.issubdtype(features.dtype, jnp.floating):
        raise TypeError(f"features: expected a float dtype, got {features.dtype}")
    if _is_concrete(features) and not bool(jnp.all(jnp.isfinite(features))):
        bad = np.argwhere(~np.isfinite(np.asarray(features, np.float32)).all(axis=(1, 2)))
        raise ValueError(
            f"features: contain NaN or inf (layers {bad.ravel().tolist()}); clean them first"
        )


def _check_labels(labels, n: int, name: str, integer: bool) -> None:
    if not hasattr(labels, "shape") or len(labels.shape) != 2:
        raise ValueError(f"{name}: expected [task, n], got shape {getattr(labels, 'shape', None)}")
    if labels.shape[1] != n:
        raise ValueError(
            f"{name}: expected length n={n} (features' second axis), got {labels.shape[1]}"
        )
    if integer and not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer class labels, got dtype {labels.dtype}")


def _resolve_classes(labels, num_classes: int | None) -> int:
    if not _is_concrete(labels):
        if num_classes is None:
            raise ValueError("num_classes: required when labels are traced (e.g. under jit)")
        return num_classes
    lab = np.asarray(labels)
    if lab.min() < 0:
        raise ValueError(f"labels: expected non-negative class ids, got min {lab.min()}")
    k = int(lab.max()) + 1 if num_classes is None else num_classes
    if lab.max() >= k:
        raise ValueError(f"labels: class id {lab.max()} >= num_classes={k}")
    for i, row in enumerate(lab):
        if np.unique(row).size < 2:
            raise ValueError(
                f"labels: task {i} has one class only ({int(row[0])}); a probe needs >= 2"
            )
    return max(k, 2)


def _inv_c(C, num_layers: int) -> Array:
    c = jnp.broadcast_to(jnp.asarray(C, jnp.float32), (num_layers,))
    if _is_concrete(c) and bool(jnp.any(c <= 0)):
        raise ValueError(f"C: expected > 0 (use jnp.inf for no penalty), got {C}")
    return 1.0 / c


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
    tasks.

    Args:
      features: ``[layer, n, d]`` float (f32 or bf16; bf16 halves the bytes read).
      labels: ``[task, n]`` int class ids in ``[0, num_classes)``.
      num_classes: classes per task (default ``labels.max() + 1``; required under ``jit``).
      C: inverse regularisation strength, scalar or ``[layer]``; ``jnp.inf`` for none.
      max_iter: iteration cap.
      tol: stop when the max-abs gradient of the objective is below ``tol``.
      memory: L-BFGS history length.
      standardize: fit on ``(x - mean) / std`` of each layer's features (like a
        ``StandardScaler`` pipeline); the returned probe applies to the raw features.
      mesh: split the layer axis over this device mesh.

    Returns:
      ``(probe, info)``: a :class:`LinearProbe` with ``weight [layer, task, d, num_classes]``
      and a :class:`FitInfo` of ``[layer, task]`` diagnostics. Passes over the features per
      layer: ``3 + 2 · max(info.iterations)``.

    Raises:
      ValueError: bad shapes, mismatched lengths, NaN/inf features, a task with one class.
      TypeError: non-float features or non-integer labels.

    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (2, 100, 5))       # 2 layers
    >>> y = jnp.stack([(x[0, :, 0] > 0), (x[0, :, 1] > 0)]).astype(int)  # 2 tasks
    >>> probe, info = fit_logistic(x, y)
    >>> probe.weight.shape
    (2, 2, 5, 2)
    """
    _check_features(features)
    _check_labels(labels, features.shape[1], "labels", integer=True)
    k = _resolve_classes(labels, num_classes)
    inv_c = _inv_c(C, features.shape[0])
    return _fit_logistic_jit(
        (features, inv_c),
        labels,
        num_classes=k,
        max_iter=max_iter,
        tol=tol,
        memory=memory,
        standardize=standardize,
        mesh=mesh,
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
    f = _feat(x, standardize)
    n, d = x.shape
    pen = _penalty_mask(d)
    m = n * _gram(f) + jnp.diag(alpha * pen)
    m = m + 1e-7 * jnp.mean(jnp.diag(m)) * jnp.eye(d + 1)
    rhs = _backward(f, targets.T.astype(jnp.float32))  # [d + 1, task]
    theta = jax.scipy.linalg.solve(m, rhs, assume_a="pos")
    w, b = _unstandardize(f, theta)
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
    layer share one Gram matrix and one solve.

    Args:
      features: ``[layer, n, d]`` float.
      targets: ``[task, n]`` float targets.
      alpha: L2 strength, scalar or ``[layer]``.
      standardize: fit on standardised features (probe applies to raw features).
      mesh: split the layer axis over this device mesh.

    Returns:
      A :class:`LinearProbe` with ``weight [layer, task, d, 1]``, ``bias [layer, task, 1]``.
    """
    _check_features(features)
    _check_labels(targets, features.shape[1], "targets", integer=False)
    if _is_concrete(targets) and not bool(jnp.all(jnp.isfinite(targets))):
        raise ValueError("targets: contain NaN or inf")
    a = jnp.broadcast_to(jnp.asarray(alpha, jnp.float32), (features.shape[0],))
    if _is_concrete(a) and bool(jnp.any(a < 0)):
        raise ValueError(f"alpha: expected >= 0, got {alpha}")
    return _fit_ridge_jit(features, a, targets, standardize=standardize, mesh=mesh)


@partial(jax.jit, static_argnames=("standardize", "mesh"))
def _fit_ridge_jit(features, alpha, targets, *, standardize, mesh):
    core = jax.vmap(partial(_fit_ridge_layer, standardize=standardize), in_axes=(0, None))
    if mesh is not None:
        core = shard_batched(core, mesh, batch_argnums=0)
    w, b = core((features, alpha), targets)
    return LinearProbe(w, b, jnp.ones(b.shape, bool))


# --------------------------------------------------------------------------------------------
# Applying probes.


def decision(probe: LinearProbe, features: Array) -> Array:
    """Probe scores ``[layer, task, n, classes]`` (logits; ``-inf`` for unseen classes).

    Args:
      probe: fitted probes ``[layer, task, ...]``.
      features: ``[layer, n, d]``.
    """
    if features.ndim != 3 or features.shape[0] != probe.weight.shape[0]:
        raise ValueError(
            f"features: expected [layer={probe.weight.shape[0]}, n, "
            f"d={probe.weight.shape[2]}], got shape {features.shape}"
        )
    if features.shape[2] != probe.weight.shape[2]:
        raise ValueError(f"features: expected d={probe.weight.shape[2]}, got {features.shape[2]}")
    z = jnp.einsum(
        "lnd,ltdk->ltnk",
        features,
        probe.weight.astype(features.dtype),
        preferred_element_type=jnp.float32,
    )
    z = z + probe.bias[:, :, None, :]
    return jnp.where(probe.classes[:, :, None, :], z, _NEG)


def predict(probe: LinearProbe, features: Array) -> Array:
    """Predicted class ids ``[layer, task, n]`` (or values, for a ridge probe)."""
    z = decision(probe, features)
    if probe.weight.shape[-1] == 1:
        return z[..., 0]
    return jnp.argmax(z, axis=-1)


def predict_proba(probe: LinearProbe, features: Array) -> Array:
    """Class probabilities ``[layer, task, n, classes]`` of logistic probes."""
    return jax.nn.softmax(decision(probe, features), axis=-1)
