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

from jaxinterp.probes._fit import LinearProbe, decision

Array = jax.Array


def accuracy(labels: Array, pred: Array) -> Array:
    """Fraction of ``pred == labels``; both ``[n]`` int. Returns ``[]``."""
    return jnp.mean((labels == pred).astype(jnp.float32))


def balanced_accuracy(labels: Array, pred: Array, num_classes: int) -> Array:
    """Mean per-class recall over the classes present in ``labels`` (as scikit-learn).

    Args:
      labels: ``[n]`` int true classes.
      pred: ``[n]`` int predicted classes.
      num_classes: static number of classes.

    Returns:
      ``[]`` balanced accuracy.
    """
    onehot = jax.nn.one_hot(labels, num_classes)
    count = onehot.sum(0)
    hits = (onehot * (labels == pred)[:, None]).sum(0)
    present = count > 0
    return jnp.sum(jnp.where(present, hits / jnp.maximum(count, 1), 0.0)) / jnp.sum(present)


def log_loss(labels: Array, logits: Array) -> Array:
    """Mean cross-entropy ``[]`` of ``logits: [n, classes]`` (``-inf`` allowed), ``labels: [n]``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    return -jnp.mean(jnp.maximum(picked, jnp.log(jnp.finfo(jnp.float32).tiny)))


def auroc(labels: Array, scores: Array) -> Array:
    """Area under the ROC curve for binary ``labels: [n]`` (1 = positive) and ``scores: [n]``.

    Mann–Whitney statistic with average ranks for ties; ``nan`` when a class is missing.
    """
    pos = labels.astype(bool)
    s = jnp.sort(scores)
    rank = (jnp.searchsorted(s, scores, "left") + jnp.searchsorted(s, scores, "right") + 1) / 2
    n_pos = pos.sum()
    n_neg = pos.shape[0] - n_pos
    u = jnp.sum(jnp.where(pos, rank, 0.0)) - n_pos * (n_pos + 1) / 2
    return jnp.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), jnp.nan)


def r2(targets: Array, pred: Array) -> Array:
    """Coefficient of determination ``[]`` of ``pred`` vs ``targets``, both ``[n]``."""
    ss_res = jnp.sum((targets - pred) ** 2)
    ss_tot = jnp.sum((targets - targets.mean()) ** 2)
    return 1.0 - ss_res / ss_tot


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
      labels: ``[task, n]`` int.

    Returns:
      ``{"accuracy", "balanced_accuracy", "log_loss", "auroc"}``, each ``[layer, task]``;
      ``auroc`` is ``nan`` for tasks with more than two classes.
    """
    if labels.ndim != 2 or labels.shape != (probe.weight.shape[1], features.shape[1]):
        raise ValueError(
            f"labels: expected [task={probe.weight.shape[1]}, n={features.shape[1]}], "
            f"got shape {labels.shape}"
        )
    z = decision(probe, features)
    per_layer = jax.vmap(_one_probe_metrics, in_axes=(0, 0, 0))
    return jax.vmap(per_layer, in_axes=(0, 0, None))(z, probe.classes, labels)


def evaluate_regression(probe: LinearProbe, features: Array, targets: Array) -> dict[str, Array]:
    """``{"r2", "mse"}``, each ``[layer, task]``, of ridge probes on ``targets: [task, n]``."""
    if targets.ndim != 2 or targets.shape != (probe.weight.shape[1], features.shape[1]):
        raise ValueError(
            f"targets: expected [task={probe.weight.shape[1]}, n={features.shape[1]}], "
            f"got shape {targets.shape}"
        )
    pred = decision(probe, features)[..., 0]
    return {
        "r2": jax.vmap(jax.vmap(r2))(jnp.broadcast_to(targets, pred.shape), pred),
        "mse": jnp.mean((pred - targets[None]) ** 2, axis=-1),
    }


def control_labels(key: Array, types: Array, labels: Array, num_types: int | None = None) -> Array:
    """Control-task labels (Hewitt & Liang 2019): one fixed random label per input type.

    Each type (token id, word id, ...) is mapped to the label of a uniformly drawn example of
    the task, so control labels follow the task's label distribution but depend only on the
    type.

    Args:
      key: PRNG key.
      types: ``[n]`` int type id of each example.
      labels: ``[task, n]`` int task labels.
      num_types: number of distinct type ids (default ``types.max() + 1``; required under jit).

    Returns:
      ``[task, n]`` int control labels; examples of the same type share a label.
    """
    if types.ndim != 1 or labels.ndim != 2 or labels.shape[1] != types.shape[0]:
        raise ValueError(
            f"types, labels: expected [n] and [task, n], got {types.shape} and {labels.shape}"
        )
    if num_types is None:
        if isinstance(types, jax.core.Tracer):
            raise ValueError("num_types: required when types are traced (e.g. under jit)")
        num_types = int(types.max()) + 1

    def one(k, y):
        idx = jax.random.randint(k, (num_types,), 0, y.shape[0])
        return y[idx][types]

    return jax.vmap(one)(jax.random.split(key, labels.shape[0]), labels)


def selectivity(task_accuracy: Array, control_accuracy: Array) -> Array:
    """``task_accuracy − control_accuracy`` (Hewitt & Liang 2019); any matching shapes."""
    return task_accuracy - control_accuracy
