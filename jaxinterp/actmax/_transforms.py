"""Robustness transforms: random image transforms applied at every ascent step.

A transform is a pure function ``t(key, x) -> x'`` on images ``[batch, h, w, c]`` with an
explicit PRNG key; the same random draw is applied to every image of the batch (one draw per
target and step). Optimizing through random jitter, scaling and rotation removes the
high-frequency patterns that a single fixed view of the input would be maximized by (Mordvintsev
et al., 2015; Olah et al., 2017). :func:`compose` chains transforms, splitting the key.

Randomness: every built-in transform draws a fixed number of 32-bit random words
(``t.words``): :func:`jitter` one (16 bits per axis), :func:`random_scale` and
:func:`random_rotate` one each (the word modulo the number of choices, uniform up to a bias
below ``choices / 2**32``), :func:`pad` none. ``t(key, x)`` draws them with
``jax.random.bits(key, (t.words,), uint32)``; ``t.with_words(words, x)`` takes them given.
:func:`~jaxinterp.actmax.maximize` draws the words of all steps in one call before the ascent,
so the compiled loop holds no random-number generator.

Shapes: :func:`pad` grows the image by ``2 * width``, :func:`jitter` shrinks it by ``d`` (a random
crop); :func:`random_scale` and :func:`random_rotate` keep it. Balance them so the model gets the
size it expects (e.g. ``pad(1)`` then ``jitter(2)`` for a fixed-size dense head).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Transform = Callable[[jax.Array, jax.Array], jax.Array]

# The built-in transforms are frozen dataclasses (hashable, compared by value), so that
# ``maximize`` can reuse a compiled program for equal transforms built anew on each call.


def _check_image(x: jax.Array, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"x: {what} expects images [batch, h, w, c], got shape {x.shape}")


def _nonneg_int(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name}: expected a non-negative int, got {type(v).__name__} {v!r}")
    if v < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {v}")
    return int(v)


def _floats(values, name: str, what: str) -> tuple[float, ...]:
    try:
        arr = np.asarray(values, np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a non-empty list of {what}, got {values!r}") from None
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty list of {what}, got {values!r}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: expected finite {what}, got {values!r}")
    return tuple(float(v) for v in arr)


class _Builtin:
    """A transform that draws ``words`` uint32 random words: ``with_words(words, x)``."""

    words = 0

    def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
        words = jax.random.bits(key, (self.words,), jnp.uint32) if self.words else None
        return self.with_words(words, x)

    def with_words(self, words: jax.Array | None, x: jax.Array) -> jax.Array:
        raise NotImplementedError


def draws_words(t: Transform) -> bool:
    """Whether ``t`` takes its randomness as words (``t.with_words``), not from a key."""
    if isinstance(t, _Compose):
        return all(isinstance(u, _Builtin) for u in t.transforms)
    return isinstance(t, _Builtin)


def _pick(word: jax.Array, n: int) -> jax.Array:
    """An index in ``[0, n)`` from one uint32 word."""
    return (word % jnp.uint32(n)).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class _Pad(_Builtin):
    width: int
    mode: str
    value: float

    def with_words(self, words: jax.Array | None, x: jax.Array) -> jax.Array:
        _check_image(x, "pad")
        w = self.width
        widths = ((0, 0), (w, w), (w, w), (0, 0))
        if self.mode == "constant":
            return jnp.pad(x, widths, constant_values=self.value)
        return jnp.pad(x, widths, mode=self.mode)


_PAD_MODES = ("constant", "edge", "reflect", "symmetric", "wrap")


def pad(width: int, *, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pads ``width`` pixels on each side (``mode`` as in ``jnp.pad``; ``value`` if constant).

    >>> pad(1)(jax.random.key(0), jnp.zeros((1, 2, 2, 1))).shape
    (1, 4, 4, 1)
    """
    width = _nonneg_int(width, "width")
    if mode not in _PAD_MODES:
        raise ValueError(f"mode: expected one of {_PAD_MODES}, got {mode!r}")
    if not np.isfinite(value):
        raise ValueError(f"value: expected a finite number, got {value}")
    return _Pad(width, mode, float(value))


@dataclasses.dataclass(frozen=True)
class _Jitter(_Builtin):
    d: int

    @property
    def words(self) -> int:
        return 1 if self.d else 0

    def with_words(self, words: jax.Array | None, x: jax.Array) -> jax.Array:
        _check_image(x, "jitter")
        b, h, w, c = x.shape
        d = self.d
        if d >= min(h, w):
            raise ValueError(f"d: expected a jitter smaller than the image size {(h, w)}, got {d}")
        if d == 0:
            return x
        # one word of 32 random bits gives both offsets (uniform in [0, d], d + 1 << 2**16)
        bits = words[0]
        oy = jax.lax.rem(bits & 0xFFFF, jnp.uint32(d + 1)).astype(jnp.int32)
        ox = jax.lax.rem(bits >> 16, jnp.uint32(d + 1)).astype(jnp.int32)
        return jax.lax.dynamic_slice(x, (0, oy, ox, 0), (b, h - d, w - d, c))


def jitter(d: int) -> Transform:
    """Random crop of size ``(h - d, w - d)`` at a random offset in ``[0, d]`` per axis
    (uniform up to a bias below ``d / 65536``: 16 random bits per axis).

    >>> jitter(2)(jax.random.key(0), jnp.zeros((1, 6, 6, 1))).shape
    (1, 4, 4, 1)
    """
    d = _nonneg_int(d, "d")
    if d >= 1 << 15:
        raise ValueError(f"d: expected a jitter below 32768 pixels, got {d}")
    return _Jitter(d)


def _affine(x: jax.Array, matrix: jax.Array, fill: float | None) -> jax.Array:
    """Samples ``x: [batch, h, w, c]`` bilinearly at ``centre + matrix @ (dst - centre)``."""
    b, h, w, c = x.shape
    yy, xx = jnp.meshgrid(
        jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij"
    )
    cy, cx = (h - 1) / 2, (w - 1) / 2
    src_y = cy + matrix[0, 0] * (yy - cy) + matrix[0, 1] * (xx - cx)
    src_x = cx + matrix[1, 0] * (yy - cy) + matrix[1, 1] * (xx - cx)
    mode, cval = ("nearest", 0.0) if fill is None else ("constant", fill)

    def one(img):  # [h, w]
        return jax.scipy.ndimage.map_coordinates(img, [src_y, src_x], order=1, mode=mode, cval=cval)

    flat = jnp.moveaxis(x, -1, 1).reshape(b * c, h, w)
    return jnp.moveaxis(jax.vmap(one)(flat).reshape(b, c, h, w), 1, -1)


def _check_fill(fill):
    if fill is not None and not np.isfinite(fill):
        raise ValueError(f"fill: expected None or a finite number, got {fill}")
    return None if fill is None else float(fill)


@dataclasses.dataclass(frozen=True)
class _RandomScale(_Builtin):
    scales: tuple[float, ...]
    fill: float | None
    words = 1

    def with_words(self, words: jax.Array | None, x: jax.Array) -> jax.Array:
        _check_image(x, "random_scale")
        s = jnp.asarray(self.scales, jnp.float32)[_pick(words[0], len(self.scales))]
        return _affine(x, jnp.eye(2) / s, self.fill)


def random_scale(scales: Sequence[float], *, fill: float | None = None) -> Transform:
    """Rescales about the centre by a factor drawn uniformly from ``scales`` (size kept,
    bilinear; outside pixels take the nearest edge value, or ``fill`` if given).

    >>> random_scale([1.0])(jax.random.key(0), jnp.ones((1, 3, 3, 1))).sum()
    Array(9., dtype=float32)
    """
    scales = _floats(scales, "scales", "factors")
    if min(scales) <= 0:
        raise ValueError(f"scales: expected positive factors, got {list(scales)}")
    return _RandomScale(scales, _check_fill(fill))


@dataclasses.dataclass(frozen=True)
class _RandomRotate(_Builtin):
    angles: tuple[float, ...]
    fill: float | None
    words = 1

    def with_words(self, words: jax.Array | None, x: jax.Array) -> jax.Array:
        _check_image(x, "random_rotate")
        angle = jnp.asarray(self.angles, jnp.float32)[_pick(words[0], len(self.angles))]
        theta = angle * (math.pi / 180)
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        return _affine(x, jnp.asarray([[cos, sin], [-sin, cos]]), self.fill)


def random_rotate(angles: Sequence[float], *, fill: float | None = None) -> Transform:
    """Rotates about the centre by an angle (degrees, counter-clockwise as displayed, like
    ``scipy.ndimage.rotate``) drawn uniformly from ``angles`` (bilinear; outside pixels take
    the nearest edge value, or ``fill`` if given).

    >>> random_rotate([0.0])(jax.random.key(0), jnp.ones((1, 3, 3, 1))).sum()
    Array(9., dtype=float32)
    """
    return _RandomRotate(_floats(angles, "angles", "degrees"), _check_fill(fill))


@dataclasses.dataclass(frozen=True)
class _Compose:
    transforms: tuple[Transform, ...]

    def __call__(self, key: jax.Array, x: jax.Array) -> jax.Array:
        if all(isinstance(t, _Builtin) for t in self.transforms):
            words = jax.random.bits(key, (self.words,), jnp.uint32) if self.words else None
            return self.with_words(words, x)
        random = [t for t in self.transforms if not isinstance(t, _Pad)]
        keys = iter(jax.random.split(key, len(random))) if len(random) > 1 else iter([key])
        for tr in self.transforms:
            x = tr(key, x) if isinstance(tr, _Pad) else tr(next(keys), x)
        return x

    @property
    def words(self) -> int:
        return sum(t.words for t in self.transforms)  # only used when all are built in

    def with_words(self, words: jax.Array | None, x: jax.Array) -> jax.Array:
        i = 0
        for tr in self.transforms:
            x = tr.with_words(words[i : i + tr.words] if tr.words else None, x)
            i += tr.words
        return x


def compose(*transforms: Transform) -> Transform:
    """Applies ``transforms`` in order. Built-in transforms only: their random words are drawn
    from the key at once and handed out in order. With a transform of your own, each random
    transform gets its own key split from the given one (a single one gets the key itself;
    :func:`pad` uses none).

    >>> t = compose(pad(2), jitter(1))
    >>> t(jax.random.key(0), jnp.zeros((1, 8, 8, 3))).shape
    (1, 11, 11, 3)
    """
    flat: list[Transform] = []
    for i, t in enumerate(transforms):
        if not callable(t):
            raise TypeError(f"transforms: expected functions t(key, x), item {i} is {t!r}")
        flat.extend(t.transforms if isinstance(t, _Compose) else (t,))
    return flat[0] if len(flat) == 1 else _Compose(tuple(flat))


def standard_transforms() -> tuple[Transform, ...]:
    """Lucid's default transforms for ~224-pixel images: pad 12, jitter 8, scale ±10%,
    rotate ±10°, jitter 4 (the net size change is +12 pixels).

    >>> len(standard_transforms())
    5
    """
    return (
        pad(12, value=0.5),
        jitter(8),
        random_scale([1 + (i - 5) / 50 for i in range(11)]),
        random_rotate([*range(-10, 11), 0, 0, 0, 0, 0]),
        jitter(4),
    )
