"""Metrics for patching: logit difference, normalization to clean/corrupted, rank correlation.

A patching metric maps the model output of a whole batch to one scalar, or to a ``[batch]``
vector of per-example values (then sweeps also report per-example effects and standard
errors); sweeps call it once per site. The usual choice is the logit difference between the
clean answer and the corrupted answer at the position that is read out, averaged over the
batch; it is linear in the logits, so it is well suited to attribution patching. Effects are
reported normalized:

    normalized = (patched - corrupted) / (clean - corrupted)

so 0 means "patching this site does nothing" and 1 means "fully restores the clean behaviour".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_finite, is_traced, poison, value_check


def _per_item(name: str, x: Any, batch: int, lo: int, hi: int) -> tuple[jax.Array, Any]:
    """``x`` as ``[batch]`` ints, range-checked against ``[lo, hi)``; returns ``(x, ok)``."""
    if isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name}: expected integer indices, got bool")
    traced = is_traced(x)
    try:
        x = x if traced else np.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected integer indices, got {type(x).__name__}") from None
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name}: expected integer indices, got dtype {x.dtype}")
    if x.ndim != 0 and x.shape != (batch,):
        raise ValueError(f"{name}: expected a scalar or shape ({batch},), got {x.shape}")
    msg = f"{name}: expected indices in [{lo}, {hi}), got {{}}"
    if not traced:
        bad = x[(x < lo) | (x >= hi)]
        if bad.size:
            raise ValueError(msg.format(int(bad.ravel()[0])))
        return jnp.broadcast_to(jnp.asarray(x), (batch,)), True
    x = jnp.broadcast_to(x, (batch,))
    in_range = (x >= lo) & (x < hi)
    ok = in_range.all()
    value_check(ok, msg, x[jnp.argmin(in_range)])
    return x, ok


def logit_diff(
    logits: jax.Array, answer: Any, wrong: Any, position: Any = -1, *, reduce: str = "mean"
) -> jax.Array:
    """Mean over the batch of ``logits[b, position_b, answer_b] - logits[b, position_b, wrong_b]``.

    With ``reduce="none"`` the per-example differences ``[batch]``: as a sweep metric they
    give per-example effects and standard errors (see
    :class:`~jaxinterp.interventions.PatchResult`).

    Args:
      logits: ``[batch, seq, vocab]`` (or ``[batch, vocab]``, then ``position`` is ignored).
      answer: the correct token, an int or ``[batch]`` ints in ``[0, vocab)``.
      wrong: the competing token (e.g. the corrupted run's answer), an int or ``[batch]``.
      position: the read-out position, an int or ``[batch]`` ints in ``[-seq, seq)`` (negative
        counts from the end).
      reduce: ``"mean"`` (default) or ``"none"``.

    Returns:
      A scalar, or ``[batch]`` for ``reduce="none"``.

    Raises:
      TypeError: ``logits`` is not floating, an index is not integer.
      ValueError: a bad shape, ``reduce`` not ``"mean"``/``"none"``, or a concrete index out
        of range (never wrapped or clamped).
        Under jit, an out-of-range traced index makes the result NaN; see
        ``jaxinterp.checked``.

    >>> logits = jnp.zeros((2, 3, 4)).at[:, 1, 2].set(5.0)
    >>> float(logit_diff(logits, answer=2, wrong=0, position=1))
    5.0
    >>> logit_diff(logits, answer=jnp.array([2, 0]), wrong=0, position=1, reduce="none").tolist()
    [5.0, 0.0]
    """
    if reduce not in ("mean", "none"):
        raise ValueError(f'reduce: expected "mean" or "none", got {reduce!r}')
    logits = check_array(logits, "logits", ndim=(2, 3), kind="floating")
    ok: Any = True
    if logits.ndim == 3:
        batch, seq = logits.shape[:2]
        pos, ok = _per_item("position", position, batch, -seq, seq)
        pos = jnp.where(pos < 0, pos + seq, pos)  # NumPy's negative positions
        logits = jnp.take_along_axis(logits, pos[:, None, None], axis=1, mode="clip")[:, 0]
    batch, vocab = logits.shape
    a, ok_a = _per_item("answer", answer, batch, 0, vocab)
    w, ok_w = _per_item("wrong", wrong, batch, 0, vocab)
    pick = lambda i: jnp.take_along_axis(logits, i[:, None], axis=1, mode="clip")[:, 0]
    out = pick(a) - pick(w)
    out = out.mean() if reduce == "mean" else out
    for o in (ok, ok_a, ok_w):
        if o is not True:
            out = poison(out, o)
    return out


def normalize(value: jax.Array, clean: jax.Array, corrupted: jax.Array) -> jax.Array:
    """``(value - corrupted) / (clean - corrupted)``: 0 at the corrupted run, 1 at the clean one.

    Args:
      value: metric values of patched runs, any shape (e.g. ``[site]``).
      clean: the metric on the clean run (a scalar, or broadcastable to ``value``).
      corrupted: the metric on the corrupted run (like ``clean``).

    Returns:
      ``value``'s shape (broadcast with ``clean`` and ``corrupted``).

    Raises:
      ValueError: shapes that do not broadcast, non-finite ``clean``/``corrupted``, or
        ``clean == corrupted`` (the normalization is undefined). Under jit, those entries
        come out NaN; see ``jaxinterp.checked``.

    >>> float(normalize(2.0, clean=3.0, corrupted=1.0))
    0.5
    """
    value = check_array(value, "value", kind="number")
    clean = check_array(clean, "clean", kind="number")
    corrupted = check_array(corrupted, "corrupted", kind="number")
    for name, x in (("clean", clean), ("corrupted", corrupted)):
        try:
            np.broadcast_shapes(x.shape, value.shape)
        except ValueError:
            raise ValueError(
                f"{name}: shape {x.shape} does not broadcast to value's shape {value.shape}"
            ) from None
        check_finite(x, name)
    denom = clean - corrupted
    ok = denom != 0
    value_check(
        ok.all(),
        "corrupted: equals clean ({}), so (value - corrupted) / (clean - corrupted) is undefined",
        jnp.broadcast_to(clean, ok.shape).ravel()[jnp.argmin(ok.ravel())],
    )
    out = (value - corrupted) / jnp.where(ok, denom, 1)
    return out if not is_traced(ok) else poison(out, jnp.broadcast_to(ok, out.shape))


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
      x: ``[n]`` finite values (or any shape, flattened; ``y`` must have the same shape).
      y: same shape as ``x``.

    Returns:
      A scalar in ``[-1, 1]``.

    Raises:
      ValueError: shapes differ, fewer than 2 values, NaN/inf values, or a constant input
        (the correlation is undefined). Under jit, NaN/inf or constant inputs give NaN; see
        ``jaxinterp.checked``.

    >>> float(spearman(jnp.array([1.0, 2.0, 3.0]), jnp.array([10.0, 30.0, 20.0])))
    0.5
    """
    x = check_array(x, "x", kind="number")
    y = check_array(y, "y", kind="number")
    if x.shape != y.shape:
        raise ValueError(f"y: expected the shape of x {x.shape}, got {y.shape}")
    x, y = x.ravel(), y.ravel()
    if x.shape[0] < 2:
        raise ValueError(f"x: expected at least 2 values, got shape {x.shape}")
    ok: Any = True
    for name, v in (("x", x), ("y", y)):
        check_finite(v, name)
        varies = v.min() < v.max()
        value_check(
            varies, f"{name}: all values are equal ({{}}); the correlation is undefined", v[0]
        )
        if jnp.issubdtype(v.dtype, jnp.inexact):
            varies = varies & jnp.isfinite(v).all()
        ok = ok & varies if ok is not True else varies
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    out = (rx * ry).sum() / jnp.sqrt((rx**2).sum() * (ry**2).sum())
    return poison(out, ok) if is_traced(ok) else out
