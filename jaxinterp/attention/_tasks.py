"""Inputs with a known attention mechanism: repeated random token sequences (induction)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp._checks import check_int, check_key


def repeated_tokens(
    key: jax.Array, batch: int, length: int, *, low: int, high: int, bos: int | None = None
) -> jax.Array:
    """Random token sequences repeated once: ``[bos] t_1 .. t_L t_1 .. t_L``.

    In the second copy every token's successor is predictable from the first copy, which only
    an in-context mechanism can use (Olsson et al. 2022): an induction head attends from
    ``t_i`` in the second copy to the token after ``t_i`` in the first one, and the loss on the
    second copy falls far below the first's. :func:`~jaxinterp.attention.induction_score` and
    :func:`~jaxinterp.attention.offset_score` (``offset=length - 1``) read it from the weights.

    Args:
      key: PRNG key (same key, same tokens).
      batch: number of sequences (>= 1).
      length: tokens per copy (>= 2).
      low, high: token ids are drawn uniformly from ``[low, high)`` (``0 <= low < high``);
        pick a range of ordinary tokens (no special or control ids).
      bos: a token id prepended to every sequence (e.g. the beginning-of-text token), or
        ``None``.

    Returns:
      ``[batch, 2 * length (+ 1 with bos)]`` int32 ids.

    Raises:
      TypeError, ValueError: a bad key, or ints out of range (the message names the argument).

    >>> t = repeated_tokens(jax.random.key(0), 2, 3, low=10, high=20, bos=1)
    >>> t.shape, bool((t[:, 1:4] == t[:, 4:]).all()), t[:, 0].tolist()
    ((2, 7), True, [1, 1])
    """
    key = check_key(key, "key")
    batch = check_int(batch, "batch", lo=1)
    length = check_int(length, "length", lo=2)
    low = check_int(low, "low", lo=0)
    high = check_int(high, "high", lo=low + 1)
    half = jax.random.randint(key, (batch, length), low, high, jnp.int32)
    parts = [half, half]
    if bos is not None:
        parts.insert(0, jnp.full((batch, 1), check_int(bos, "bos", lo=0), jnp.int32))
    return jnp.concatenate(parts, axis=1)
