"""Probe metrics and control tasks.

Every metric is written for ONE probe (``labels: [n]``, scores ``[n, ...]``) and composes with
``jit``/``vmap``; :func:`evaluate` vmaps them over the ``[layer, task]`` grid of a
:class:`~jaxinterp.probes.LinearProbe`.

Control tasks follow Hewitt & Liang (2019, "Designing and Interpreting Probes with Control
Tasks"): every input *type* (e.g. a token id or a word) gets a fixed random label drawn from the
task's label distribution, so a probe can only solve the control task by memorising types.
``selectivity = task accuracy − control accuracy`` measures how much of a probe's accuracy
reflects the representation rather than the probe's own capacity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp._checks import (
    check_array,
    check_finite,
    check_int,
    check_key,
    is_traced,
    poison,
    value_check,
)
from jaxinterp.probes._fit import LinearProbe, _check_probe, _is_ridge, decision

Array = jax.Array


def _vector(x, name: str, kind: str | None = None, n: int | None = None) -> Array:
    arr = check_array(x, name, ndim=1, kind=kind)
    if arr.shape[0] < 1:
        raise ValueError(f"{name}: expected at least one entry, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name}: expected shape [{n}] (as labels), got {arr.shape}")
    return arr


def _class_ids(x, name: str, k: int) -> Array:
    """Checks ``x`` holds ids in ``[0, k)`` (raises now or registers); returns the ok flag."""
    ok = jnp.all((x >= 0) & (x < k))
    value_check(
        ok, f"{name}: expected class ids in [0, {k}), got min {{}} and max {{}}", x.min(), x.max()
    )
    return ok


def accuracy(labels: Array, pred: Array) -> Array:
    """Fraction of ``pred == labels``.

    Args:
      labels: ``[n]`` int (or bool) true classes.
      pred: ``[n]`` predictions of the same kind.

    Returns:
      ``[]`` float32. Under ``jit``, a negative id (e.g. the -1 that :func:`predict` gives for
      NaN features) makes it NaN; see :func:`jaxinterp.checked`.

    >>> float(accuracy(jnp.array([0, 1, 1, 0]), jnp.array([0, 1, 0, 0])))
    0.75
    """
    labels = _vector(labels, "labels")
    pred = _vector(pred, "pred", n=labels.shape[0])
    for name, v in (("labels", labels), ("pred", pred)):
        if jnp.issubdtype(v.dtype, jnp.inexact):
            raise TypeError(f"{name}: expected integer class ids, got dtype {v.dtype}")
    ok_l, ok_p = jnp.all(labels >= 0), jnp.all(pred >= 0)
    value_check(ok_l, "labels: expected class ids >= 0, got min {}", labels.min())
    value_check(ok_p, "pred: expected class ids >= 0, got min {}", pred.min())
    return poison(jnp.mean((labels == pred).astype(jnp.float32)), ok_l & ok_p)


def balanced_accuracy(labels: Array, pred: Array, num_classes: int) -> Array:
    """Mean per-class recall over the classes present in ``labels`` (as scikit-learn).

    Args:
      labels: ``[n]`` int true classes in ``[0, num_classes)``.
      pred: ``[n]`` int predicted classes in ``[0, num_classes)``.
      num_classes: static number of classes.

    Returns:
      ``[]`` balanced accuracy. Under ``jit``, ids outside ``[0, num_classes)`` make it NaN;
      see :func:`jaxinterp.checked`.

    Raises:
      ValueError: ids outside ``[0, num_classes)``, mismatched or empty inputs.

    >>> float(balanced_accuracy(jnp.array([0, 0, 0, 1]), jnp.array([0, 0, 0, 0]), 2))
    0.5
    """
    k = check_int(num_classes, "num_classes", lo=1)
    labels = _vector(labels, "labels", kind="integer")
    pred = _vector(pred, "pred", kind="integer", n=labels.shape[0])
    ok = _class_ids(labels, "labels", k) & _class_ids(pred, "pred", k)
    onehot = jax.nn.one_hot(labels, k)
    count = onehot.sum(0)
    hits = (onehot * (labels == pred)[:, None]).sum(0)
    present = count > 0
    out = jnp.sum(jnp.where(present, hits / jnp.maximum(count, 1), 0.0)) / jnp.sum(present)
    return poison(out, ok)


def log_loss(labels: Array, logits: Array) -> Array:
    """Mean cross-entropy ``[]`` of ``logits: [n, classes]`` (``-inf`` allowed), ``labels: [n]``.

    Under ``jit``, labels outside ``[0, classes)`` or NaN logits give NaN; see
    :func:`jaxinterp.checked`.

    >>> round(float(log_loss(jnp.array([0, 1]), jnp.zeros((2, 2)))), 4)
    0.6931
    """
    labels = _vector(labels, "labels", kind="integer")
    logits = check_array(logits, "logits", ndim=2, kind="floating")
    if logits.shape[0] != labels.shape[0] or logits.shape[1] < 1:
        raise ValueError(
            f"logits: expected [n={labels.shape[0]}, classes >= 1], got {tuple(logits.shape)}"
        )
    ok = _class_ids(labels, "labels", logits.shape[1])
    nan = jnp.isnan(logits)
    value_check(~nan.any(), "logits: expected no NaN, got {} NaN entries", nan.sum())
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, jnp.clip(labels, 0, logits.shape[1] - 1)[:, None], -1)
    out = -jnp.mean(jnp.maximum(picked[:, 0], jnp.log(jnp.finfo(jnp.float32).tiny)))
    return poison(out, ok & ~nan.any())


def auroc(labels: Array, scores: Array) -> Array:
    """Area under the ROC curve for binary ``labels: [n]`` (1 = positive) and ``scores: [n]``.

    Mann–Whitney statistic with average ranks for ties; ``nan`` when a class is missing.
    Labels must be 0/1 (or bool); under ``jit``, other labels or NaN scores give NaN (see
    :func:`jaxinterp.checked`).

    Raises:
      ValueError: labels other than 0/1, NaN scores, mismatched or empty inputs.

    >>> float(auroc(jnp.array([0, 0, 1, 1]), jnp.array([0.1, 0.4, 0.35, 0.8])))
    0.75
    """
    labels = _vector(labels, "labels")
    scores = _vector(scores, "scores", n=labels.shape[0])
    if not jnp.issubdtype(labels.dtype, jnp.integer) and labels.dtype != jnp.bool_:
        raise TypeError(f"labels: expected 0/1 int or bool labels, got dtype {labels.dtype}")
    if labels.dtype == jnp.bool_:
        ok_lab = jnp.bool_(True)
    else:
        ok_lab = jnp.all((labels == 0) | (labels == 1))
        value_check(
            ok_lab,
            "labels: expected binary 0/1 labels, got min {} and max {}",
            labels.min(),
            labels.max(),
        )
    nan = jnp.isnan(scores)
    value_check(~nan.any(), "scores: expected no NaN, got {} NaN entries", nan.sum())
    pos = labels.astype(bool)
    s = jnp.sort(scores)
    rank = (jnp.searchsorted(s, scores, "left") + jnp.searchsorted(s, scores, "right") + 1) / 2
    n_pos = pos.sum()
    n_neg = pos.shape[0] - n_pos
    u = jnp.sum(jnp.where(pos, rank, 0.0)) - n_pos * (n_pos + 1) / 2
    out = jnp.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), jnp.nan)
    return poison(out, ok_lab & ~nan.any())


def r2(targets: Array, pred: Array) -> Array:
    """Coefficient of determination ``[]`` of ``pred`` vs ``targets``, both ``[n]`` float.

    Raises ``ValueError`` for constant ``targets`` (R² is undefined) or NaN/inf values; under
    ``jit`` those give NaN (see :func:`jaxinterp.checked`).

    >>> float(r2(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 2.0, 4.0])))
    0.5
    """
    targets = _vector(targets, "targets", kind="number")
    pred = _vector(pred, "pred", kind="number", n=targets.shape[0])
    check_finite(targets, "targets")
    check_finite(pred, "pred")
    t = targets.astype(jnp.float32)
    ss_res = jnp.sum((t - pred) ** 2)
    ss_tot = jnp.sum((t - t.mean()) ** 2)
    value_check(ss_tot > 0, "targets: expected non-constant values (R² undefined), got {}", ss_tot)
    return poison(1.0 - ss_res / ss_tot, ss_tot > 0)


def _one_probe_metrics(z: Array, present: Array, labels: Array) -> dict[str, Array]:
    k = z.shape[-1]
    pred = jnp.argmax(z, -1)
    order = jnp.argsort(~present)  # present classes first, in class order
    binary = present.sum() == 2
    score = z[:, order[1]] - z[:, order[0]]
    return {
        "accuracy": accuracy(labels, pred),
        "balanced_accuracy": balanced_accuracy(labels, pred, k),
        "log_loss": log_loss(labels, z),
        "auroc": jnp.where(binary, auroc(labels == order[1], score), jnp.nan),
    }


def evaluate(probe: LinearProbe, features: Array, labels: Array) -> dict[str, Array]:
    """Classification metrics of every logistic probe on held-out data.

    Args:
      probe: fitted logistic probes ``[layer, task, ...]``.
      features: ``[layer, n, d]``.
      labels: ``[task, n]`` int in ``[0, classes)``.

    Returns:
      ``{"accuracy", "balanced_accuracy", "log_loss", "auroc"}``, each ``[layer, task]``;
      ``auroc`` is ``nan`` for tasks with more than two classes. Under ``jit``, labels out of
      range or NaN/inf features give NaN metrics; see :func:`jaxinterp.checked`.

    Raises:
      ValueError: a ridge probe, mismatched shapes, labels out of range, NaN/inf features.

    >>> import jax, jax.numpy as jnp
    >>> from jaxinterp.probes import fit_logistic
    >>> x = jax.random.normal(jax.random.key(0), (1, 60, 3))
    >>> y = (x[0, :, :1].T > 0).astype(int)
    >>> probe, _ = fit_logistic(x, y)
    >>> sorted(evaluate(probe, x, y))
    ['accuracy', 'auroc', 'balanced_accuracy', 'log_loss']
    """
    probe = _check_probe(probe)
    if _is_ridge(probe):
        raise ValueError(
            "probe: expected a logistic probe (from fit_logistic), got a ridge probe "
            "(1 output); use evaluate_regression"
        )
    labels = check_array(labels, "labels", ndim=2)
    if labels.dtype == jnp.bool_:
        labels = labels.astype(jnp.int32)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels: expected integer class ids, got dtype {labels.dtype}")
    z = decision(probe, features)
    if labels.shape != (probe.weight.shape[1], z.shape[2]):
        raise ValueError(
            f"labels: expected [task={probe.weight.shape[1]}, n={z.shape[2]}], "
            f"got shape {labels.shape}"
        )
    if z.shape[2] < 1:
        raise ValueError(f"features: expected at least one example, got shape {features.shape}")
    _class_ids(labels, "labels", probe.weight.shape[-1])  # raises now when concrete
    per_layer = jax.vmap(_one_probe_metrics, in_axes=(0, 0, 0))
    out = jax.vmap(per_layer, in_axes=(0, 0, None))(z, probe.classes, labels)
    ok = ~jnp.any(jnp.isnan(z), axis=(2, 3))
    return {k: poison(v, ok) for k, v in out.items()}


def evaluate_regression(probe: LinearProbe, features: Array, targets: Array) -> dict[str, Array]:
    """``{"r2", "mse"}``, each ``[layer, task]``, of ridge probes on ``targets: [task, n]``.

    Under ``jit``, NaN/inf features or targets give NaN; see :func:`jaxinterp.checked`.

    Raises:
      ValueError: a logistic probe, mismatched shapes, NaN/inf values, constant targets.

    >>> import jax, jax.numpy as jnp
    >>> from jaxinterp.probes import fit_ridge
    >>> x = jax.random.normal(jax.random.key(0), (1, 50, 3))
    >>> y = (x[0] @ jnp.array([1.0, -2.0, 0.5]))[None]
    >>> round(float(evaluate_regression(fit_ridge(x, y, alpha=0.0), x, y)["r2"][0, 0]), 4)
    1.0
    """
    probe = _check_probe(probe)
    if not _is_ridge(probe):
        raise ValueError(
            f"probe: expected a ridge probe (from fit_ridge, 1 output), got a logistic probe "
            f"with {probe.weight.shape[-1]} classes; use evaluate"
        )
    targets = check_array(targets, "targets", ndim=2, kind="number")
    pred = decision(probe, features)[..., 0]
    if targets.shape != (probe.weight.shape[1], pred.shape[2]):
        raise ValueError(
            f"targets: expected [task={probe.weight.shape[1]}, n={pred.shape[2]}], "
            f"got shape {targets.shape}"
        )
    check_finite(targets, "targets")  # raise now when concrete (r2 is vmapped below)
    t = targets.astype(jnp.float32)
    spread = jnp.max(t, axis=1) > jnp.min(t, axis=1)
    value_check(
        spread.all(),
        "targets: expected non-constant values per task (R² undefined), got {}",
        jnp.sum(~spread),
    )
    r2s = jax.vmap(jax.vmap(r2))(jnp.broadcast_to(targets, pred.shape), pred)
    return {"r2": r2s, "mse": jnp.mean((pred - targets[None]) ** 2, axis=-1)}


def control_labels(key: Array, types: Array, labels: Array, num_types: int | None = None) -> Array:
    """Control-task labels (Hewitt & Liang 2019): one fixed random label per input type.

    Each type (token id, word id, ...) is mapped to the label of a uniformly drawn example of
    the task, so control labels follow the task's label distribution but depend only on the
    type.

    Args:
      key: PRNG key.
      types: ``[n]`` int type id of each example, in ``[0, num_types)``.
      labels: ``[task, n]`` int task labels.
      num_types: number of distinct type ids (default ``types.max() + 1``; required under jit).

    Returns:
      ``[task, n]`` int control labels; examples of the same type share a label. Under
      ``jit``, examples whose type is outside ``[0, num_types)`` get label -1 (see
      :func:`jaxinterp.checked`).

    Raises:
      ValueError: mismatched shapes, types outside ``[0, num_types)``.
      TypeError: a plain int ``key``, non-integer ``types``.

    >>> import jax, jax.numpy as jnp
    >>> types = jnp.array([0, 1, 0, 2, 1])
    >>> ctrl = control_labels(jax.random.key(0), types, jnp.array([[0, 1, 0, 1, 1]]))
    >>> bool(ctrl[0, 0] == ctrl[0, 2]) and bool(ctrl[0, 1] == ctrl[0, 4])
    True
    """
    key = check_key(key, "key")
    types = _vector(types, "types", kind="integer")
    labels = check_array(labels, "labels", ndim=2, kind="integer")
    if labels.shape[1] != types.shape[0] or labels.shape[0] < 1:
        raise ValueError(
            f"labels: expected [task, n={types.shape[0]}] (n from types), got {labels.shape}"
        )
    if num_types is None:
        if is_traced(types):
            raise ValueError("num_types: required when types are traced (e.g. under jit)")
        num_types = int(types.max()) + 1
    num_types = check_int(num_types, "num_types", lo=1)
    ok = (types >= 0) & (types < num_types)
    value_check(
        ok.all(),
        f"types: expected ids in [0, {num_types}), got min {{}} and max {{}}",
        types.min(),
        types.max(),
    )

    def one(k, y):
        idx = jax.random.randint(k, (num_types,), 0, y.shape[0])
        return y[idx][jnp.clip(types, 0, num_types - 1)]

    out = jax.vmap(one)(jax.random.split(key, labels.shape[0]), labels)
    return poison(out, ok[None, :])


def selectivity(task_accuracy: Array, control_accuracy: Array) -> Array:
    """``task_accuracy − control_accuracy`` (Hewitt & Liang 2019), arrays of the same shape.

    Raises:
      ValueError: the shapes differ (no silent broadcasting).

    >>> selectivity(jnp.array([0.75, 0.5]), jnp.array([0.25, 0.5])).tolist()
    [0.5, 0.0]
    """
    t = check_array(task_accuracy, "task_accuracy", kind="number")
    c = check_array(control_accuracy, "control_accuracy", kind="number")
    if t.shape != c.shape:
        raise ValueError(
            f"control_accuracy: expected the shape of task_accuracy {t.shape}, got {c.shape}"
        )
    return t - c
