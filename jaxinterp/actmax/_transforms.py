"""Robustness transforms: random image transforms applied at every ascent step.

A transform is a pure function ``t(key, x) -> x'`` on images ``[batch, h, w, c]`` with an
explicit PRNG key; the same random draw is applied to every image of the batch (one draw per
target and step). Optimizing through random jitter, scaling and rotation removes the
high-frequency patterns that a single fixed view of the input would be maximized by (Mordvintsev
et al., 2015; Olah et al., 2017). :func:`compose` chains transforms, splitting the key.

Shapes: :func:`pad` grows the image by ``2 * width``, :func:`jitter` shrinks it by ``d`` (a random
crop); :func:`random_scale` and :func:`random_rotate` keep it. Balance them so the model gets the
size it expects (e.g. ``pad(1)`` then ``jitter(2)`` for a fixed-size dense head).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Transform = Callable[[jax.Array, jax.Array], jax.Array]


def _check_image(x: jax.Array, what: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{what}: expected images [batch, h, w, c], got shape {x.shape}")


def pad(width: int, *, mode: str = "constant", value: float = 0.5) -> Transform:
    """Pads ``width`` pixels on each side (``mode`` as in ``jnp.pad``; ``value`` if constant)."""
    if width < 0:
        raise ValueError(f"width: expected a non-negative integer, got {width}")

    def t(key: jax.Array, x: jax.Array) -> jax.Array:
        _check_image(x, "pad")
        widths = ((0, 0), (width, width), (width, width), (0, 0))
        if mode == "constant":
            return jnp.pad(x, widths, constant_values=value)
        return jnp.pad(x, widths, mode=mode)

    return t


def jitter(d: int) -> Transform:
    """Random crop of size ``(h - d, w - d)`` at a uniform offset in ``[0, d]``."""
    if d < 0:
        raise ValueError(f"d: expected a non-negative integer, got {d}")

    def t(key: jax.Array, x: jax.Array) -> jax.Array:
        _check_image(x, "jitter")
        b, h, w, c = x.shape
        if d >= min(h, w):
            raise ValueError(f"jitter: d={d} must be smaller than the image size {(h, w)}")
        oy, ox = jax.random.randint(key, (2,), 0, d + 1)
        return jax.lax.dynamic_slice(x, (0, oy, ox, 0), (b, h - d, w - d, c))

    return t


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


def random_scale(scales: Sequence[float], *, fill: float | None = None) -> Transform:
    """Rescales about the centre by a factor drawn uniformly from ``scales`` (size kept,
    bilinear; outside pixels take the nearest edge value, or ``fill`` if given)."""
    scales = jnp.asarray(scales, jnp.float32)
    if scales.ndim != 1 or scales.shape[0] == 0:
        raise ValueError(f"scales: expected a non-empty list of factors, got {scales}")

    def t(key: jax.Array, x: jax.Array) -> jax.Array:
        _check_image(x, "random_scale")
        s = jax.random.choice(key, scales)
        return _affine(x, jnp.eye(2) / s, fill)

    return t


def random_rotate(angles: Sequence[float], *, fill: float | None = None) -> Transform:
    """Rotates about the centre by an angle (degrees, counter-clockwise as displayed, like
    ``scipy.ndimage.rotate``) drawn uniformly from ``angles`` (bilinear; outside pixels take
    the nearest edge value, or ``fill`` if given)."""
    angles = jnp.asarray(angles, jnp.float32)
    if angles.ndim != 1 or angles.shape[0] == 0:
        raise ValueError(f"angles: expected a non-empty list of degrees, got {angles}")

    def t(key: jax.Array, x: jax.Array) -> jax.Array:
        _check_image(x, "random_rotate")
        theta = jax.random.choice(key, angles) * (math.pi / 180)
        cos, sin = jnp.cos(theta), jnp.sin(theta)
        return _affine(x, jnp.asarray([[cos, sin], [-sin, cos]]), fill)

    return t


def compose(*transforms: Transform) -> Transform:
    """Applies ``transforms`` in order, each with its own key split from the given one."""

    def t(key: jax.Array, x: jax.Array) -> jax.Array:
        if not transforms:
            return x
        for k, tr in zip(jax.random.split(key, len(transforms)), transforms):
            x = tr(k, x)
        return x

    return t


def standard_transforms() -> tuple[Transform, ...]:
    """Lucid's default transforms for ~224-pixel images: pad 12, jitter 8, scale ±10%,
    rotate ±10°, jitter 4 (the net size change is +12 pixels)."""
    return (
        pad(12, value=0.5),
        jitter(8),
        random_scale([1 + (i - 5) / 50 for i in range(11)]),
        random_rotate([*range(-10, 11), 0, 0, 0, 0, 0]),
        jitter(4),
    )
