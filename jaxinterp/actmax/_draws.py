"""The ascent's random words, drawn on the host with NumPy: bit for bit what JAX draws.

``maximize`` splits one key into ``[target]`` keys, then draws per target
``jax.random.bits(key, (k + steps * w,), uint32)`` (the init key, then ``w`` words per step for
the transforms; see :mod:`._maximize`). Threefry is integer arithmetic, so these words can be
computed outside the compiled program with the very same results. Doing so takes two of the
program's three threefry hashes out of it: on CPU each is a rolled loop that costs tens of
milliseconds to lower and compile, for a few microseconds of work. The one left is the
parameterization's own ``init(key)`` draw, which goes through the user-visible ``Param``.

This is used only for concrete keys of the default implementation (``threefry2x32`` with
``jax_threefry_partitionable``, JAX's default); traced keys (``maximize`` inside the caller's
``jit``) and other implementations draw inside the program as before, with the same values
(tests/test_actmax_parts.py checks both ways against ``jax.random``).
"""

from __future__ import annotations

import jax
import numpy as np

from jaxinterp._checks import is_traced

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_MAX_WORDS = 1 << 24  # above this many words the program draws them (memory, host time)


def threefry2x32(k1: np.ndarray, k2: np.ndarray, x1: np.ndarray, x2: np.ndarray):
    """The Threefry-2x32 hash (20 rounds) of counters ``(x1, x2)`` under key ``(k1, k2)``,
    elementwise with broadcasting, as JAX's ``threefry2x32_p``.

    >>> a, b = threefry2x32(*(np.zeros(1, np.uint32),) * 4)
    >>> hex(int(a[0])), hex(int(b[0]))  # the Threefry-2x32 known-answer test vector
    ('0x6b200159', '0x99ba4efe')
    """
    u32 = np.uint32
    k1, k2, x1, x2 = (np.asarray(a, u32) for a in (k1, k2, x1, x2))
    ks = (k1, k2, k1 ^ k2 ^ u32(0x1BD11BDA))
    x1, x2 = np.broadcast_arrays(x1 + ks[0], x2 + ks[1])
    x1, x2 = x1.copy(), x2.copy()
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 += x2
            x2 = (x2 << u32(r)) | (x2 >> u32(32 - r))
            x2 ^= x1
        x1 += ks[(i + 1) % 3]
        x2 += ks[(i + 2) % 3] + u32(i + 1)
    return x1, x2


def host_draws(keys: jax.Array, n: int, words: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per target ``t``: the key data of ``split(key, n)[t]`` (or ``keys[t]``) and
    ``jax.random.bits(that key, (words,), uint32)``, computed with NumPy; ``None`` where the
    program must draw them itself (traced keys, another implementation, too many words).

    Args:
      keys: one typed key (split into ``n``) or ``[n]`` typed keys.
      n: the number of targets.
      words: 32-bit words to draw per target (0: only split).

    Returns:
      ``(key_data [n, 2], bits [n, words])``, both uint32, or ``None``.

    >>> kd, bits = host_draws(jax.random.key(0), 3, 4)
    >>> ref = jax.random.split(jax.random.key(0), 3)
    >>> bool((kd == jax.random.key_data(ref)).all())
    True
    >>> bool((bits[1] == jax.random.bits(ref[1], (4,), jax.numpy.uint32)).all())
    True
    """
    if (
        is_traced(keys)
        or str(jax.random.key_impl(keys)) != "threefry2x32"
        or not jax.config.jax_threefry_partitionable
        or n * max(words, 1) > _MAX_WORDS
    ):
        return None
    kd = jax.random.key_data(keys)
    if is_traced(kd):  # a concrete key inside a trace (e.g. a global key under jit)
        return None
    kd = np.asarray(kd, np.uint32)
    if kd.ndim == 1:  # one key: jax.random.split(key, n)
        zero = np.zeros(n, np.uint32)
        kd = np.stack(threefry2x32(kd[0], kd[1], zero, np.arange(n, dtype=np.uint32)), -1)
    if not words:
        return kd, np.zeros((n, 0), np.uint32)
    count = np.arange(words, dtype=np.uint32)[None]
    hi, lo = threefry2x32(kd[:, :1], kd[:, 1:], np.zeros_like(count), count)
    return kd, hi ^ lo
