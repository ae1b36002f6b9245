"""Input parameterizations: what the optimizer actually updates, and how it becomes an input.

A :class:`Param` is a NamedTuple of pure functions, in the style of an optax transformation:

* ``init(key) -> params``: random starting parameters for ONE target;
* ``apply(params) -> x``: the model input ``[batch, ...]`` (``batch`` images per target);
* ``invert(x) -> params``: parameters whose ``apply`` gives ``x`` (to start from given inputs);
* ``feed(x) -> (args, kwargs)``: how ``x`` (after transforms) is passed to the model.

Images are mapped into the valid input range ``[lo, hi]`` with a sigmoid. The Fourier
parameterization (:func:`fourier`) optimizes the real FFT of the image with each frequency's
coefficient scaled by ``1 / f^decay`` (a 1/f spectrum like natural images), which makes plain
gradient steps favour low frequencies. For 3-channel images, colour decorrelation mixes the
channels with the square root of an empirical colour covariance (ImageNet statistics, as in Lucid),
so the optimizer works in decorrelated colour space.

For sequence models :func:`soft_prompt` optimizes continuous token embeddings ``[batch, seq,
d_model]`` and feeds them as ``model(tokens, embeddings=x)``; :func:`nearest_tokens` reads the
optimized embeddings back out as token ids. :func:`norm_ball` keeps the input inside an L2 ball,
which gives linear units an analytic optimum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def _default_feed(x: jax.Array) -> tuple[tuple, dict]:
    return (x,), {}


class Param(NamedTuple):
    """An input parameterization (see the module docstring)."""

    init: Callable[[jax.Array], Any]
    apply: Callable[[Any], jax.Array]
    invert: Callable[[jax.Array], Any]
    feed: Callable[[jax.Array], tuple[tuple, dict]] = _default_feed


# Square root of the ImageNet RGB colour covariance (Lucid's `color_correlation_svd_sqrt`).
_COLOR_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)


def _color_matrix(channels: int, decorrelate: bool | np.ndarray) -> np.ndarray | None:
    if decorrelate is False:
        return None
    if decorrelate is True:
        if channels != 3:
            return None  # decorrelation only changes 3-channel (RGB) images
        return _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))
    m = np.asarray(decorrelate, np.float32)
    if m.shape != (channels, channels):
        raise ValueError(f"decorrelate: expected a [{channels}, {channels}] matrix, got {m.shape}")
    return m


def _squash(lo: float, hi: float, sigmoid: bool):
    if not hi > lo:
        raise ValueError(f"value_range: expected lo < hi, got ({lo}, {hi})")
    if sigmoid:
        fwd = lambda t: lo + (hi - lo) * jax.nn.sigmoid(t)

        def inv(x):
            p = jnp.clip((x - lo) / (hi - lo), 1e-4, 1 - 1e-4)
            return jnp.log(p) - jnp.log1p(-p)

        return fwd, inv
    return (lambda t: t), (lambda x: x)


def _check_shape(shape: Sequence[int], what: str, ndim: int | None = None) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if any(s < 1 for s in shape) or (ndim is not None and len(shape) != ndim):
        want = f"{ndim} positive sizes" if ndim else "positive sizes"
        raise ValueError(f"{what}: expected {want}, got {shape}")
    return shape


def pixel(
    shape: Sequence[int],
    *,
    batch: int = 1,
    sd: float = 0.01,
    value_range: tuple[float, float] = (0.0, 1.0),
    sigmoid: bool = True,
    decorrelate: bool | np.ndarray = False,
) -> Param:
    """Direct pixel parameterization, mapped into ``value_range`` with a sigmoid.

    Args:
      shape: one input's shape without batch axis, e.g. ``(8, 8, 1)`` or ``(784,)``.
      batch: inputs optimized together per target (the objective's ``[batch]`` axis).
      sd: standard deviation of the initial noise (in the pre-sigmoid space).
      value_range: ``(lo, hi)`` of valid inputs (e.g. the data's range).
      sigmoid: map through ``lo + (hi - lo) * sigmoid(t)``; if False the input is ``t`` itself.
      decorrelate: colour decorrelation over the last axis: True (ImageNet matrix for 3
        channels, nothing otherwise), False, or a ``[c, c]`` matrix.

    Returns:
      A :class:`Param` with ``apply(params) -> [batch, *shape]``.

    >>> p = pixel((8, 8, 1), batch=2)
    >>> x = p.apply(p.init(jax.random.key(0)))
    >>> x.shape, bool((x > 0).all() & (x < 1).all())
    ((2, 8, 8, 1), True)
    """
    shape = _check_shape(shape, "shape")
    fwd, inv = _squash(*value_range, sigmoid)
    m = _color_matrix(shape[-1], decorrelate)
    m_inv = None if m is None else np.linalg.inv(m)

    def init(key):
        return sd * jax.random.normal(key, (batch, *shape), jnp.float32)

    def apply(params):
        t = params if m is None else params @ m.T
        return fwd(t)

    def invert(x):
        t = inv(jnp.asarray(x, jnp.float32))
        return t if m_inv is None else t @ m_inv.T

    return Param(init, apply, invert)


def _freq_scale(h: int, w: int, decay_power: float) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
    return (scale * np.sqrt(h * w)).astype(np.float32)  # [h, w // 2 + 1]


def fourier(
    shape: Sequence[int],
    *,
    batch: int = 1,
    sd: float = 0.01,
    decay_power: float = 1.0,
    value_range: tuple[float, float] = (0.0, 1.0),
    decorrelate: bool | np.ndarray = True,
) -> Param:
    """Fourier parameterization with a ``1/f^decay_power`` spectrum, colour decorrelation and a
    sigmoid into ``value_range``.

    The parameters are the real and imaginary parts of ``rfft2`` coefficients,
    ``[batch, c, h, w // 2 + 1, 2]``; the image is ``irfft2(scale * coeffs) / 4`` per channel.

    Args:
      shape: ``(h, w, c)`` of one image.
      batch: images optimized together per target.
      sd: standard deviation of the initial coefficients.
      decay_power: exponent of the frequency scaling (1 = 1/f).
      value_range: ``(lo, hi)`` of valid inputs.
      decorrelate: as in :func:`pixel` (default True: ImageNet colours for RGB).

    Returns:
      A :class:`Param` with ``apply(params) -> [batch, h, w, c]``.
    """
    h, w, c = _check_shape(shape, "shape", 3)
    scale = jnp.asarray(_freq_scale(h, w, decay_power))
    fwd, inv = _squash(*value_range, True)
    m = _color_matrix(c, decorrelate)
    m_inv = None if m is None else np.linalg.inv(m)

    def init(key):
        return sd * jax.random.normal(key, (batch, c, h, w // 2 + 1, 2), jnp.float32)

    def apply(params):
        coeffs = (params[..., 0] + 1j * params[..., 1]) * scale
        img = jnp.fft.irfft2(coeffs, s=(h, w)).astype(jnp.float32) / 4.0  # [batch, c, h, w]
        t = jnp.moveaxis(img, 1, -1)
        t = t if m is None else t @ m.T
        return fwd(t)

    def invert(x):
        t = inv(jnp.asarray(x, jnp.float32))
        t = t if m_inv is None else t @ m_inv.T
        coeffs = jnp.fft.rfft2(jnp.moveaxis(t, -1, 1) * 4.0) / scale
        return jnp.stack([coeffs.real, coeffs.imag], -1).astype(jnp.float32)

    return Param(init, apply, invert)


def norm_ball(shape: Sequence[int], radius: float, *, batch: int = 1, sd: float = 0.01) -> Param:
    """Inputs inside the L2 ball of ``radius``: ``x = radius * v / max(||v||, radius)``.

    The norm is taken over each example's axes. A unit linear in the input, ``w . x``, is then
    maximized at ``radius * w / ||w||``.

    Args:
      shape: one input's shape without batch axis.
      radius: ball radius (> 0).
      batch: inputs per target.
      sd: standard deviation of the initial ``v``.

    Returns:
      A :class:`Param` with ``apply(params) -> [batch, *shape]``.
    """
    shape = _check_shape(shape, "shape")
    if not radius > 0:
        raise ValueError(f"radius: expected a positive number, got {radius}")
    axes = tuple(range(1, len(shape) + 1))

    def init(key):
        return sd * jax.random.normal(key, (batch, *shape), jnp.float32)

    def apply(v):
        norm = jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))
        return radius * v / jnp.maximum(norm, radius)

    def invert(x):
        return jnp.asarray(x, jnp.float32)

    return Param(init, apply, invert)


def soft_prompt(
    embedding: jax.Array,
    seq_len: int,
    *,
    batch: int = 1,
    sd: float = 0.0,
    argname: str = "embeddings",
) -> Param:
    """Continuous token embeddings (a soft prompt) for a sequence model.

    Initialized at the embeddings of random tokens (plus ``sd`` noise); fed to the model as
    ``model(zeros[batch, seq] int32, **{argname: x})``, as :class:`jaxinterp.models.Transformer`
    accepts. Read the result back with :func:`nearest_tokens`.

    Args:
      embedding: the model's token embedding table ``[vocab, d_model]``.
      seq_len: prompt length.
      batch: prompts per target.
      sd: noise added to the initial embeddings.
      argname: the model's keyword for continuous inputs.

    Returns:
      A :class:`Param` with ``apply(params) -> [batch, seq, d_model]``.
    """
    table = jnp.asarray(embedding)
    if table.ndim != 2:
        raise ValueError(f"embedding: expected [vocab, d_model], got shape {table.shape}")
    if seq_len < 1:
        raise ValueError(f"seq_len: expected a positive integer, got {seq_len}")

    def init(key):
        k1, k2 = jax.random.split(key)
        ids = jax.random.randint(k1, (batch, seq_len), 0, table.shape[0])
        return table[ids] + sd * jax.random.normal(k2, (batch, seq_len, table.shape[1]))

    def feed(x):
        return (jnp.zeros(x.shape[:-1], jnp.int32),), {argname: x}

    return Param(init, lambda v: v, lambda x: jnp.asarray(x, jnp.float32), feed)


def nearest_tokens(embeddings: jax.Array, embedding: jax.Array, *, metric: str = "l2") -> jax.Array:
    """Reads continuous embeddings out as the nearest token ids.

    Args:
      embeddings: ``[..., seq, d_model]`` (e.g. ``maximize(...).inputs``).
      embedding: the token table ``[vocab, d_model]``.
      metric: ``"l2"`` (Euclidean distance) or ``"cosine"``.

    Returns:
      ``[..., seq]`` int32 token ids.
    """
    embeddings, table = jnp.asarray(embeddings), jnp.asarray(embedding)
    if table.ndim != 2 or embeddings.shape[-1] != table.shape[1]:
        raise ValueError(
            f"embedding: expected [vocab, {embeddings.shape[-1]}], got shape {table.shape}"
        )
    if metric == "l2":
        score = 2 * embeddings @ table.T - jnp.sum(table * table, -1)
    elif metric == "cosine":
        unit = table / (jnp.linalg.norm(table, axis=-1, keepdims=True) + 1e-8)
        score = embeddings @ unit.T
    else:
        raise ValueError(f"metric: expected 'l2' or 'cosine', got {metric!r}")
    return jnp.argmax(score, axis=-1).astype(jnp.int32)
