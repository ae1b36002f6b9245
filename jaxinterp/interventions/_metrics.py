"""Metrics for patching: logit difference, normalization to clean/corrupted, rank correlation.

A patching metric maps the model output of a whole batch to one scalar; sweeps call it once
per site. The usual choice is the logit difference between the clean answer and the
corrupted answer at the position that is read out, averaged over the batch; it is linear in
the logits, so it is well suited to attribution patching. Effects are reported normalized:

    normalized = (patched - corrupted) / (clean - corrupted)

so 0 means "patching this site does nothing" and 1 means "fully restores the clean behaviour".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _per_item(name: str, x: Any, batch: int) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer indices, got dtype {x.dtype}")
    if x.ndim == 0:
        return jnp.broadcast_to(x, (batch,))
    if x.shape != (batch,):
        raise ValueError(f"{name}: expected a scalar or shape ({batch},), got {x.shape}")
    return x


def logit_diff(logits: jax.Array, answer: Any, wrong: Any, position: Any = -1) -> jax.Array:
    """Mean over the batch of ``logits[b, position_b, answer_b] - logits[b, position_b, wrong_b]``.

    Args:
      logits: ``[batch, seq, vocab]`` (or ``[batch, vocab]``, then ``position`` is ignored).
      answer: the correct token, an int or ``[batch]`` ints.
      wrong: the competing token (e.g. the corrupted run's answer), an int or ``[batch]``.
      position: the read-out position, an int or ``[batch]`` ints (negative counts from the end).

    Returns:
      A scalar.

    >>> logits = jnp.zeros((2, 3, 4)).at[:, 1, 2].set(5.0)
    >>> float(logit_diff(logits, answer=2, wrong=0, position=1))
    5.0
    """
    logits = jnp.asarray(logits)
    if logits.ndim == 3:
        batch, seq = logits.shape[:2]
        pos = _per_item("position", position, batch) % seq
        logits = jnp.take_along_axis(logits, pos[:, None, None], axis=1)[:, 0]
    elif logits.ndim != 2:
        raise ValueError(
            f"logits: expected [batch, seq, vocab] or [batch, vocab], got {logits.shape}"
        )
    batch = logits.shape[0]
    a = _per_item("answer", answer, batch)
    w = _per_item("wrong", wrong, batch)
    pick = lambda i: jnp.take_along_axis(logits, i[:, None], axis=1)[:, 0]
    return (pick(a) - pick(w)).mean()


def normalize(value: jax.Array, clean: jax.Array, corrupted: jax.Array) -> jax.Array:
    """``(value - corrupted) / (clean - corrupted)``: 0 at the corrupted run, 1 at the clean one.

    Args:
      value: metric values of patched runs, any shape (e.g. ``[site]``).
      clean: the metric on the clean run (scalar).
      corrupted: the metric on the corrupted run (scalar).

    Returns:
      ``value``'s shape.

    >>> float(normalize(2.0, clean=3.0, corrupted=1.0))
    0.5
    """
    return (jnp.asarray(value) - corrupted) / (jnp.asarray(clean) - corrupted)


def _ranks(x: jax.Array) -> jax.Array:
    order = jnp.argsort(x)
    sorted_x = x[order]
    # average rank of tied values: mean position over the run of equal values
    first = jnp.searchsorted(sorted_x, sorted_x, side="left").astype(jnp.float32)
    last = jnp.searchsorted(sorted_x, sorted_x, side="right").astype(jnp.float32) - 1.0
    return jnp.zeros_like(x, jnp.float32).at[order].set((first + last) / 2.0)


def spearman(x: jax.Array, y: jax.Array) -> jax.Array:
    """Spearman rank correlation of two ``[site]`` vectors (ties get their average rank).

    Used to check that attribution patching ranks sites like real patching does.

    Args:
      x: ``[n]`` values.
      y: ``[n]`` values.

    Returns:
      A scalar in ``[-1, 1]``.

    >>> float(spearman(jnp.array([1.0, 2.0, 3.0]), jnp.array([10.0, 30.0, 20.0])))
    0.5
    """
    x, y = jnp.asarray(x).ravel(), jnp.asarray(y).ravel()
    if x.shape != y.shape or x.shape[0] < 2:
        raise ValueError(
            f"x, y: expected two vectors of equal length >= 2, got {x.shape}, {y.shape}"
        )
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return (rx * ry).sum() / jnp.sqrt((rx**2).sum() * (ry**2).sum())
