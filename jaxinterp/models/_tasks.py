"""Data for the reference models: scikit-learn's bundled digits and synthetic sequence tasks.

The sequence task has a mechanism known in advance, which makes it ground truth for
attention analysis, probes and patching:

* **offset-k copy** (:func:`offset_batch`): the target at position ``t`` is the token at
  ``t - k``. A single attention head that puts its mass on offset ``k`` solves it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_int, check_key


class Split(NamedTuple):
    """A supervised data split. ``x: [n, ...]``, ``y: [n]`` int labels."""

    x: np.ndarray
    y: np.ndarray


class Digits(NamedTuple):
    """scikit-learn digits as 8×8×1 images in [0, 1], split 75/25 with a fixed seed."""

    train: Split
    test: Split


def load_digits(seed: int = 0) -> Digits:
    """Loads scikit-learn's bundled digits (1797 images, 10 classes).

    Args:
      seed: seed of the stratified train/test split.

    Returns:
      ``Digits(train, test)`` with ``x: [n, 8, 8, 1] float32`` in [0, 1] and ``y: [n] int32``
      (1347 training and 450 test images).

    Raises:
      TypeError, ValueError: ``seed`` is not an int >= 0.

    >>> d = load_digits()
    >>> d.train.x.shape, d.test.y.shape
    ((1347, 8, 8, 1), (450,))
    """
    seed = check_int(seed, "seed", lo=0)
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    data = _load()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return Digits(Split(xtr, ytr), Split(xte, yte))


class SeqBatch(NamedTuple):
    """A batch of a sequence task: ``tokens, targets: [batch, seq] int32``; ``loss_mask``
    ``[batch, seq] bool`` marks the positions whose target is determined by the mechanism."""

    tokens: jax.Array
    targets: jax.Array
    loss_mask: jax.Array


def offset_batch(key: jax.Array, batch: int, seq_len: int, vocab: int, offset: int) -> SeqBatch:
    """Offset-k copy task: ``targets[:, t] = tokens[:, t - offset]`` for ``t >= offset``.

    Args:
      key: PRNG key.
      batch, seq_len, vocab: batch size, sequence length and vocabulary size.
      offset: ``k``, how far back the answer lies.

    Returns:
      A :class:`SeqBatch`.

    Raises:
      TypeError: ``key`` is not a PRNG key, or a size is not an int.
      ValueError: a size is below 1, or ``offset`` is outside ``[0, seq_len - 1]``.

    >>> b = offset_batch(jax.random.key(0), 2, 6, 5, 2)
    >>> bool((b.targets[:, 2:] == b.tokens[:, :-2]).all()), b.loss_mask[0].tolist()
    (True, [False, False, True, True, True, True])
    """
    check_key(key, "key")
    batch = check_int(batch, "batch", lo=1)
    seq_len = check_int(seq_len, "seq_len", lo=1)
    vocab = check_int(vocab, "vocab", lo=1)
    offset = check_int(offset, "offset")
    if not 0 <= offset < seq_len:
        raise ValueError(f"offset: expected 0 <= offset < seq_len={seq_len}, got {offset}")
    tokens = jax.random.randint(key, (batch, seq_len), 0, vocab, dtype=jnp.int32)
    targets = jnp.roll(tokens, offset, axis=1)
    pos = jnp.arange(seq_len)
    mask = jnp.broadcast_to(pos >= offset, (batch, seq_len))
    return SeqBatch(tokens, targets, mask)
