"""Input parameterizations: what the optimizer actually updates, and how it becomes an input.

A :class:`Param` is a NamedTuple of pure functions, in the style of an optax transformation:

* ``init(key) -> params``: random starting parameters for ONE target;
* ``apply(params) -> x``: the model input ``[batch, ...]`` (``batch`` images per target);
* ``invert(x) -> params``: parameters whose ``apply`` gives ``x`` (to start from given inputs);
* ``feed(x) -> (args, kwargs)``: how ``x`` (after transforms) is passed to the model;
* ``site``: ``None``, or a module path whose output ``x`` replaces (a soft prompt in place of the
  token embedding module's output; the model then runs on the arguments ``feed`` gives).

Images are mapped into the valid input range ``[lo, hi]`` with a sigmoid. The Fourier
parameterization (:func:`fourier`) optimizes the real FFT of the image with each frequency's
coefficient scaled by ``1 / f^decay`` (a 1/f spectrum like natural images), which makes plain
gradient steps favour low frequencies. For 3-channel images, colour decorrelation mixes the
channels with the square root of an empirical colour covariance (ImageNet statistics, as in Lucid),
so the optimizer works in decorrelated colour space.

For sequence models :func:`soft_prompt` optimizes continuous token embeddings ``[batch, seq,
d_model]`` and puts them in place of the output of the model's token embedding module
(``site=``, any model), or passes them as a keyword argument (``argname=``);
:func:`nearest_tokens` reads the optimized embeddings back out as token ids.
:func:`norm_ball` keeps the input inside an L2 ball, which gives linear units an analytic
optimum.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_finite, check_int, is_traced, poison


def _default_feed(x: jax.Array) -> tuple[tuple, dict]:
    return (x,), {}


class Param(NamedTuple):
    """An input parameterization (see the module docstring).

    The built-in parameterizations hold hashable callables that compare equal when built with
    equal arguments, so :func:`~jaxinterp.actmax.maximize` reuses its compiled program for
    ``pixel((8, 8, 1))`` built anew on every call. A Param of your own functions is reused
    only when the same function objects are passed again.
    """

    init: Callable[[jax.Array], Any]
    apply: Callable[[Any], jax.Array]
    invert: Callable[[jax.Array], Any]
    feed: Callable[[jax.Array], tuple[tuple, dict]] = _default_feed
    site: str | None = None


# Square root of the ImageNet RGB colour covariance (Lucid's `color_correlation_svd_sqrt`).
_COLOR_SQRT = np.asarray(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32
)


@dataclasses.dataclass(frozen=True)
class _Method:
    """``spec.<name>`` as a hashable callable (equal specs give equal callables)."""

    spec: Any
    name: str

    def __call__(self, *args: Any) -> Any:
        return getattr(self.spec, self.name)(*args)


def _param(spec: Any, feed: bool = False, site: str | None = None) -> Param:
    methods = [_Method(spec, n) for n in ("init", "apply", "invert")]
    return Param(*methods, _Method(spec, "feed") if feed else _default_feed, site)


class _Frozen:
    """A NumPy array that hashes and compares by value (a constant of a parameterization)."""

    def __init__(self, a: Any):
        self.a = np.asarray(a)
        self._h = hash((self.a.shape, str(self.a.dtype), hashlib.sha1(self.a.tobytes()).digest()))

    def __hash__(self) -> int:
        return self._h

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Frozen)
            and self._h == other._h
            and self.a.shape == other.a.shape
            and self.a.dtype == other.a.dtype
            and np.array_equal(self.a, other.a)
        )


def _mix(t: jax.Array, m: np.ndarray) -> jax.Array:
    """``t @ m.T`` over the last (colour) axis. For a few channels as sums of channel slices
    times scalars, which XLA fuses with the neighbouring elementwise work (and whose gradient
    is elementwise too); as a matrix product, a ``[pixels, 3] x [3, 3]`` product is a separate
    library call costing as much as a convolution layer, forward and backward."""
    c = m.shape[0]
    if c > 4:
        return t @ m.T
    chans = [t[..., j] for j in range(c)]  # slices and scalar weights: the transpose is
    mixed = [sum(float(m[i, j]) * chans[j] for j in range(c)) for i in range(c)]  # elementwise
    return jnp.stack(mixed, -1)


def _mat(m: _Frozen | None) -> np.ndarray | None:
    return None if m is None else m.a


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


def _range(value_range: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise TypeError(f"value_range: expected (lo, hi) numbers, got {value_range!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"value_range: expected finite lo < hi, got ({lo}, {hi})")
    return lo, hi


def _squash_fwd(t, lo: float, hi: float, sigmoid: bool):
    return lo + (hi - lo) * jax.nn.sigmoid(t) if sigmoid else t


def _squash_inv(x, lo: float, hi: float, sigmoid: bool):
    if not sigmoid:
        return x
    p = jnp.clip((x - lo) / (hi - lo), 1e-4, 1 - 1e-4)
    return jnp.log(p) - jnp.log1p(-p)


def _check_shape(shape: Sequence[int], what: str, ndim: int | None = None) -> tuple[int, ...]:
    try:
        ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in shape)
    except TypeError:
        ok = False
    if not ok:
        raise TypeError(f"{what}: expected a tuple of ints, got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if any(s < 1 for s in shape) or (ndim is not None and len(shape) != ndim) or not shape:
        want = f"{ndim} positive sizes" if ndim else "positive sizes"
        raise ValueError(f"{what}: expected {want}, got {shape}")
    return shape


def _check_pos(v: Any, name: str, *, integer: bool = False, zero_ok: bool = False):
    if integer:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected a positive int, got {type(v).__name__} {v!r}")
    elif isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.number)):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    if not np.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        want = "a non-negative" if zero_ok else "a positive"
        raise ValueError(f"{name}: expected {want} finite number, got {v}")
    return int(v) if integer else float(v)


@dataclasses.dataclass(frozen=True)
class _Pixel:
    shape: tuple[int, ...]
    batch: int
    sd: float
    lo: float
    hi: float
    sigmoid: bool
    m: _Frozen | None

    def init(self, key):
        return self.sd * jax.random.normal(key, (self.batch, *self.shape), jnp.float32)

    def apply(self, params):
        m = _mat(self.m)
        t = params if m is None else _mix(params, m)
        return _squash_fwd(t, self.lo, self.hi, self.sigmoid)

    def invert(self, x):
        m = _mat(self.m)
        t = _squash_inv(jnp.asarray(x, jnp.float32), self.lo, self.hi, self.sigmoid)
        return t if m is None else t @ np.linalg.inv(m).T


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
    batch = _check_pos(batch, "batch", integer=True)
    sd = _check_pos(sd, "sd", zero_ok=True)
    lo, hi = _range(value_range)
    m = _color_matrix(shape[-1], decorrelate)
    spec = _Pixel(shape, batch, sd, lo, hi, bool(sigmoid), None if m is None else _Frozen(m))
    return _param(spec)


def _freq_scale(h: int, w: int, decay_power: float) -> np.ndarray:
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = 1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power
    return (scale * np.sqrt(h * w)).astype(np.float32)  # [h, w // 2 + 1]


@dataclasses.dataclass(frozen=True)
class _Fourier:
    shape: tuple[int, int, int]
    batch: int
    sd: float
    decay_power: float
    lo: float
    hi: float
    m: _Frozen | None

    def init(self, key):
        h, w, c = self.shape
        return self.sd * jax.random.normal(key, (self.batch, c, h, w // 2 + 1, 2), jnp.float32)

    def apply(self, params):
        h, w, _ = self.shape
        m = _mat(self.m)
        scale = _freq_scale(h, w, self.decay_power)
        coeffs = (params[..., 0] + 1j * params[..., 1]) * scale
        img = jnp.fft.irfft2(coeffs, s=(h, w)).astype(jnp.float32) / 4.0  # [batch, c, h, w]
        t = jnp.moveaxis(img, 1, -1)
        t = t if m is None else _mix(t, m)
        return _squash_fwd(t, self.lo, self.hi, True)

    def invert(self, x):
        m = _mat(self.m)
        h, w, _ = self.shape
        t = _squash_inv(jnp.asarray(x, jnp.float32), self.lo, self.hi, True)
        t = t if m is None else t @ np.linalg.inv(m).T
        coeffs = jnp.fft.rfft2(jnp.moveaxis(t, -1, 1) * 4.0) / _freq_scale(h, w, self.decay_power)
        return jnp.stack([coeffs.real, coeffs.imag], -1).astype(jnp.float32)


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

    >>> p = fourier((8, 8, 3))
    >>> p.init(jax.random.key(0)).shape, p.apply(p.init(jax.random.key(0))).shape
    ((1, 3, 8, 5, 2), (1, 8, 8, 3))
    """
    h, w, c = _check_shape(shape, "shape", 3)
    batch = _check_pos(batch, "batch", integer=True)
    sd = _check_pos(sd, "sd", zero_ok=True)
    decay_power = _check_pos(decay_power, "decay_power", zero_ok=True)
    lo, hi = _range(value_range)
    m = _color_matrix(c, decorrelate)
    spec = _Fourier((h, w, c), batch, sd, decay_power, lo, hi, None if m is None else _Frozen(m))
    return _param(spec)


@dataclasses.dataclass(frozen=True)
class _NormBall:
    shape: tuple[int, ...]
    radius: float
    batch: int
    sd: float

    def init(self, key):
        return self.sd * jax.random.normal(key, (self.batch, *self.shape), jnp.float32)

    def apply(self, v):
        axes = tuple(range(1, len(self.shape) + 1))
        norm = jnp.sqrt(jnp.sum(v * v, axis=axes, keepdims=True))
        return self.radius * v / jnp.maximum(norm, self.radius)

    def invert(self, x):
        return jnp.asarray(x, jnp.float32)


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

    >>> p = norm_ball((2,), 1.0)
    >>> p.apply(jnp.array([[3.0, 4.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929]]
    """
    shape = _check_shape(shape, "shape")
    radius = _check_pos(radius, "radius")
    batch = _check_pos(batch, "batch", integer=True)
    return _param(_NormBall(shape, radius, batch, _check_pos(sd, "sd", zero_ok=True)))


@dataclasses.dataclass(frozen=True)
class _SoftPrompt:
    table: _Frozen
    seq_len: int
    batch: int
    sd: float
    argname: str | None
    kwargs: tuple[tuple[str, Any], ...]  # _Frozen arrays, or None / Python scalars as given
    token_id: int = 0

    def init(self, key):
        table = jnp.asarray(self.table.a)
        k1, k2 = jax.random.split(key)
        ids = jax.random.randint(k1, (self.batch, self.seq_len), 0, table.shape[0])
        noise = jax.random.normal(k2, (self.batch, self.seq_len, table.shape[1]))
        return table[ids] + self.sd * noise

    def apply(self, v):
        return v

    def invert(self, x):
        return jnp.asarray(x, jnp.float32)

    def feed(self, x):
        kwargs = {k: jnp.asarray(v.a) if isinstance(v, _Frozen) else v for k, v in self.kwargs}
        if self.argname is not None:
            kwargs[self.argname] = x
        return (jnp.full(x.shape[:-1], self.token_id, jnp.int32),), kwargs


def soft_prompt(
    embedding: jax.Array,
    seq_len: int,
    *,
    batch: int = 1,
    sd: float = 0.0,
    site: str | None = None,
    argname: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    token_id: int = 0,
) -> Param:
    """Continuous token embeddings (a soft prompt) for a sequence model.

    Initialized at the embeddings of random tokens (plus ``sd`` noise). The model is called as
    ``model(full([batch, seq], token_id) int32, **model_kwargs)`` and the prompt ``x: [batch,
    seq, d_model]`` enters it in one of two ways:

    * ``site="transformer/wte"``: the output of the module at that path (the model's token
      embedding module, e.g. ``"embed"`` for :class:`jaxinterp.models.Transformer`,
      ``"transformer/wte"`` for Hugging Face Flax GPT-2) is replaced by ``x``, through
      :func:`jaxinterp.capture.run_sites`. Works on any linen or nnx model with an embedding
      module; everything after it (position embeddings, layers) runs as usual. The module's
      output must be ``[batch, seq, d_model]`` (checked when the program is traced). A
      module used through a method names it as ``"path.method"`` (Google's ``gemma``:
      ``site="embedder.encode"`` with ``maximize(..., methods=("encode",))``). Inputs the
      model's call requires and ``model_kwargs`` does not give are filled in as Hugging Face
      does for ``None``: ``attention_mask`` all ones, ``position_ids`` ``0..seq-1``; any
      other required input raises ``TypeError`` naming it.
    * ``argname="embeddings"``: ``x`` is passed as that keyword, for models that take
      continuous inputs (:class:`jaxinterp.models.Transformer` does). This is the default
      when ``site`` is not given.

    Read the result back with :func:`nearest_tokens`. The table and ``model_kwargs`` are
    constants of the compiled program (compared by value when ``maximize`` looks for a
    compiled program).

    Args:
      embedding: the model's token embedding table ``[vocab, d_model]``.
      seq_len: prompt length.
      batch: prompts per target.
      sd: noise added to the initial embeddings.
      site: path of the module whose output the prompt replaces.
      argname: the model's keyword for continuous inputs (not with ``site``).
      model_kwargs: other keyword inputs of the model (e.g. an ``attention_mask`` and
        ``position_ids`` of shape ``[batch, seq_len]``), as concrete arrays, ``None`` or
        Python scalars (passed as they are).
      token_id: the placeholder id the model is called with (its embedding is replaced).
        Models that derive a padding mask from the ids need a non-padding id (Gemma's
        padding id is 0: pass e.g. ``token_id=2``).

    Returns:
      A :class:`Param` with ``apply(params) -> [batch, seq, d_model]``.

    >>> p = soft_prompt(jnp.eye(4), 3, site="embed")
    >>> p.init(jax.random.key(0)).shape, p.site
    ((1, 3, 4), 'embed')
    """
    if is_traced(embedding):
        raise TypeError("embedding: expected a concrete table, got a traced array")
    table = np.asarray(embedding)
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.floating):
        raise ValueError(
            f"embedding: expected a float [vocab, d_model] table, got shape {table.shape} "
            f"and dtype {table.dtype}"
        )
    if not np.isfinite(table).all():
        raise ValueError("embedding: expected finite values, got NaN/inf entries")
    seq_len = _check_pos(seq_len, "seq_len", integer=True)
    batch = _check_pos(batch, "batch", integer=True)
    if site is not None and (not isinstance(site, str) or not site):
        raise TypeError(f"site: expected a module path string, got {site!r}")
    if site is not None and argname is not None:
        raise ValueError(f"argname: give site or argname, not both; got site={site!r}, "
                         f"argname={argname!r}")  # fmt: skip
    if site is None and argname is None:
        argname = "embeddings"
    if argname is not None and not isinstance(argname, str):
        raise TypeError(f"argname: expected a keyword name, got {argname!r}")
    if model_kwargs is not None and not isinstance(model_kwargs, dict):
        raise TypeError(
            f"model_kwargs: expected a dict {{name: value}}, got {type(model_kwargs).__name__}"
        )
    frozen = []
    for k, v in (model_kwargs or {}).items():
        if not isinstance(k, str) or is_traced(v):
            raise TypeError(f"model_kwargs: expected {{name: concrete array}}, got {k!r}: {v!r}")
        if v is None or isinstance(v, (bool, int, float, str)):
            frozen.append((k, v))  # hashable as they are; passed unchanged (HF's None inputs)
            continue
        a = np.asarray(v)
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(
                f"model_kwargs: {k!r}: expected an array, None or a Python scalar, got "
                f"{type(v).__name__}"
            )
        frozen.append((k, _Frozen(a)))
    token_id = check_int(token_id, "token_id", lo=0, hi=table.shape[0] - 1)
    sd = _check_pos(sd, "sd", zero_ok=True)
    spec = _SoftPrompt(
        _Frozen(table),
        seq_len,
        batch,
        sd,
        argname,
        tuple(sorted(frozen, key=lambda kv: kv[0])),
        token_id,
    )
    return _param(spec, feed=True, site=site)


def nearest_tokens(embeddings: jax.Array, embedding: jax.Array, *, metric: str = "l2") -> jax.Array:
    """Reads continuous embeddings out as the nearest token ids.

    Args:
      embeddings: ``[..., seq, d_model]`` (e.g. ``maximize(...).inputs``).
      embedding: the token table ``[vocab, d_model]``. 2-D ``embeddings`` with more rows than
        the table raise ``ValueError`` (the arguments look swapped).
      metric: ``"l2"`` (Euclidean distance) or ``"cosine"``.

    Returns:
      ``[..., seq]`` int32 token ids. NaN/inf in ``embeddings`` or ``embedding`` raises
      ``ValueError``; under jit the affected ids are -1 (see :func:`jaxinterp.checked`).

    >>> nearest_tokens(jnp.array([[0.9, 0.1], [0.0, 2.0]]), jnp.eye(2)).tolist()
    [0, 1]
    """
    embeddings = check_array(embeddings, "embeddings", kind="floating")
    table = check_array(embedding, "embedding", ndim=2, kind="floating")
    if embeddings.ndim < 1 or embeddings.shape[-1] != table.shape[1]:
        raise ValueError(
            f"embedding: expected [vocab, {embeddings.shape[-1] if embeddings.ndim else '?'}], "
            f"got shape {table.shape}"
        )
    if embeddings.ndim == 2 and embeddings.shape[0] > table.shape[0]:
        # the token table passed first reads out [vocab] ids into the soft prompt
        raise ValueError(
            f"embedding: expected the token table [vocab, d_model], got {table.shape[0]} rows, "
            f"fewer than the {embeddings.shape[0]} embeddings [seq, d_model] to read out: are "
            "the arguments swapped? Call nearest_tokens(embeddings, table); for a sequence "
            "longer than the vocabulary pass embeddings with a batch axis, [1, seq, d_model]"
        )
    check_finite(embeddings, "embeddings")
    check_finite(table, "embedding")
    ok = jnp.isfinite(embeddings).all(-1) & jnp.isfinite(table).all()
    if metric == "l2":
        score = 2 * embeddings @ table.T - jnp.sum(table * table, -1)
    elif metric == "cosine":
        unit = table / (jnp.linalg.norm(table, axis=-1, keepdims=True) + 1e-8)
        score = embeddings @ unit.T
    else:
        raise ValueError(f"metric: expected 'l2' or 'cosine', got {metric!r}")
    return poison(jnp.argmax(score, axis=-1).astype(jnp.int32), ok)
