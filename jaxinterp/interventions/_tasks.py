"""Clean/corrupted input pairs for patching experiments on the reference offset task."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxinterp._checks import check_int, check_key
from jaxinterp.interventions._metrics import logit_diff
from jaxinterp.models import TransformerConfig, offset_batch


class PatchTask(NamedTuple):
    """Clean/corrupted pairs for the offset task; all ``[batch]`` except the token arrays.

    Attributes:
      clean, corrupted: ``[batch, seq]`` tokens; they differ only at ``position - offset``.
      answer: the clean answer at ``position`` (the clean token at ``position - offset``).
      wrong: the corrupted answer (the replacement token).
      position: the read-out position of each sequence.
    """

    clean: jax.Array
    corrupted: jax.Array
    answer: jax.Array
    wrong: jax.Array
    position: jax.Array

    def metric(self, logits: jax.Array) -> jax.Array:
        """Logit difference clean answer − corrupted answer at the read-out positions.

        Args:
          logits: ``[batch, seq, vocab]``.

        Returns:
          The mean over the batch (a scalar).

        >>> from jaxinterp.models import TransformerConfig
        >>> t = offset_patching_task(jax.random.key(0), 2, TransformerConfig(), position=5)
        >>> float(t.metric(jnp.zeros((2, 16, 16))))
        0.0
        """
        return logit_diff(logits, self.answer, self.wrong, self.position)

    def per_example_metric(self, logits: jax.Array) -> jax.Array:
        """The logit difference of each pair, ``[batch]``: per-example effects in sweeps.

        Passed to :func:`~jaxinterp.interventions.patch_sweep` or
        :func:`~jaxinterp.interventions.attribution_patch` instead of :meth:`metric`, it fills
        ``PatchResult.per_example`` ``[site, batch]`` and ``normalized_se`` ``[site]``; the
        other fields are those :meth:`metric` gives.

        Args:
          logits: ``[batch, seq, vocab]``.

        Returns:
          ``[batch]``.

        >>> from jaxinterp.models import TransformerConfig
        >>> t = offset_patching_task(jax.random.key(0), 2, TransformerConfig(), position=5)
        >>> t.per_example_metric(jnp.zeros((2, 16, 16))).shape
        (2,)
        """
        return logit_diff(logits, self.answer, self.wrong, self.position, reduce="none")


def offset_patching_task(
    key: jax.Array,
    batch: int,
    cfg: TransformerConfig,
    offset: int = 3,
    position: int | None = None,
) -> PatchTask:
    """Builds clean/corrupted pairs for the offset-``offset`` copy task.

    Args:
      key: PRNG key.
      batch: number of pairs.
      cfg: the transformer configuration (``seq_len``, ``vocab``).
      offset: the task's offset.
      position: a fixed read-out position for every pair, an int in ``[offset, seq_len)`` (the
        corrupted token ``position - offset`` must exist); default a random one per pair in
        that range.

    Returns:
      A :class:`PatchTask`.

    Raises:
      TypeError: ``key`` is not a PRNG key, ``cfg`` is not a TransformerConfig, or an int
        argument is not an int.
      ValueError: ``batch < 1``, ``offset`` outside ``[0, seq_len)``, ``position`` outside
        ``[offset, seq_len)`` (never wrapped), or ``cfg.vocab < 2``.

    >>> from jaxinterp.models import TransformerConfig
    >>> t = offset_patching_task(jax.random.key(0), 4, TransformerConfig(), position=5)
    >>> bool((t.clean[:, 2] == t.answer).all() and (t.corrupted[:, 2] == t.wrong).all())
    True
    """
    key = check_key(key, "key")
    batch = check_int(batch, "batch", lo=1)
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg: expected a TransformerConfig, got {type(cfg).__name__}")
    if cfg.vocab < 2:
        raise ValueError(f"cfg: expected vocab >= 2 to corrupt a token, got vocab={cfg.vocab}")
    offset = check_int(offset, "offset", lo=0, hi=cfg.seq_len - 1)
    if position is not None:
        position = check_int(position, "position", lo=offset, hi=cfg.seq_len - 1)
    k0, k1, k2 = jax.random.split(key, 3)
    tokens = offset_batch(k0, batch, cfg.seq_len, cfg.vocab, offset).tokens
    if position is None:
        pos = jax.random.randint(k1, (batch,), offset, cfg.seq_len)
    else:
        pos = jnp.full((batch,), position, jnp.int32)
    src = pos - offset
    old = jnp.take_along_axis(tokens, src[:, None], 1)[:, 0]
    new = (old + jax.random.randint(k2, (batch,), 1, cfg.vocab)) % cfg.vocab
    corrupted = tokens.at[jnp.arange(batch), src].set(new)
    return PatchTask(tokens, corrupted, old, new, pos)
