"""Logit lens and tuned lens: what every layer's residual stream predicts.

The **logit lens** reads each layer's residual stream ``h_l`` through the model's own final
normalisation and unembedding, ``readout(h_l)``, as if the remaining layers were skipped. The
**tuned lens** (Belrose et al. 2023, "Eliciting Latent Predictions from Transformers with the
Tuned Lens") first maps ``h_l`` with an affine *translator* ``h_l A_l + b_l`` trained to
minimise ``KL(p_final || p_lens)``, the divergence from the model's own next-token distribution.

Design:

* The residual streams are captured with :func:`jaxinterp.interventions.capture_sites` at
  ``sites`` (default: the stream entering block 0 and the output of every block, e.g.
  ``embed``, ``blocks_0`` ... ``blocks_{L-1}`` for :class:`jaxinterp.models.Decoder`) and
  stacked on a leading ``layer`` axis; the readout is ``vmap``\\ ped over that axis, so every
  layer and position is read in one compiled call.
* ``readout(variables, h) -> logits`` is the model's tail as a function of its parameters:
  :func:`decoder_readout` builds it for the library's :class:`~jaxinterp.models.Decoder`
  (RMSNorm/LayerNorm, tied or untied unembedding, final soft-capping) and
  :class:`~jaxinterp.models.Transformer`; any other model passes its own.
* Translators are stacked ``A: [layer, d_model, d_model]`` (identity at init),
  ``b: [layer, d_model]`` (zero). :func:`fit_tuned_lens` streams token batches through one
  compiled optax step in which the per-layer losses are a ``vmap`` over layers (their sum is
  differentiated: the layers do not interact, so this is each layer's own gradient). The last
  site, whose readout *is* the model's output, stays the identity unless ``freeze_last=False``.

Shapes: ``tokens [batch, seq]``, residual streams ``[layer, batch, seq, d_model]``, lens
logits ``[layer, batch, seq, vocab]``, per-layer metrics ``[layer]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp._checks import check_array, check_finite, check_ids, check_int, model_vocab
from jaxinterp.interventions import capture_sites

Readout = Callable[[Any, jax.Array], jax.Array]


# ------------------------------------------------------------------------------- readouts


@dataclasses.dataclass(frozen=True)
class _DecoderReadout:
    """The final norm + unembedding of a library Decoder/Transformer (hashable by model)."""

    model: Any

    def __call__(self, variables: Any, h: jax.Array) -> jax.Array:
        import flax.linen as nn

        from jaxinterp.models import Decoder, Transformer

        params = variables["params"]
        if isinstance(self.model, Transformer):
            x = nn.LayerNorm().apply({"params": params["ln_f"]}, h)
            return nn.Dense(self.model.cfg.vocab).apply({"params": params["unembed"]}, x)
        assert isinstance(self.model, Decoder)
        from jaxinterp.models._decoder import _matmul, _norm, _softcap

        cfg = self.model.cfg
        x = _norm(cfg, "ln_f").apply({"params": params["ln_f"]}, h)
        if cfg.tie_embeddings:
            w = params["embed"]["tok"]["embedding"].T
        else:
            w = params["unembed"]["kernel"]
        return _softcap(_matmul(x, w.astype(x.dtype)), cfg.final_softcap)


def decoder_readout(model: Any) -> Readout:
    """The final normalisation and unembedding of a library decoder, as ``f(variables, h)``.

    Args:
      model: a :class:`jaxinterp.models.Decoder` (any family: LayerNorm or RMSNorm, tied or
        untied unembedding, Gemma's final soft-capping) or :class:`jaxinterp.models.Transformer`.

    Returns:
      ``readout(variables, h: [..., d_model]) -> logits [..., vocab]``, the same maths as the
      model's own tail (``ln_f`` then ``unembed``), hashable (equal for equal models), so that
      jitted callers compile once per model.

    Raises:
      TypeError: ``model`` is another kind of model (pass your own ``readout=`` to the lenses).

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> m = Decoder(DecoderConfig(n_layers=1))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> decoder_readout(m)(v, jnp.ones((3, 64))).shape
    (3, 128)
    """
    from jaxinterp.models import Decoder, Transformer

    if not isinstance(model, (Decoder, Transformer)):
        raise TypeError(
            f"model: decoder_readout knows jaxinterp.models.Decoder and Transformer, got "
            f"{type(model).__name__}; pass readout=f(variables, h) -> logits to the lens instead"
        )
    return _DecoderReadout(model)


def default_sites(model: Any) -> tuple[str, ...]:
    """The residual-stream sites of a library decoder: before block 0, then after each block.

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> default_sites(Decoder(DecoderConfig(n_layers=2)))
    ('embed', 'blocks_0', 'blocks_1')
    >>> default_sites(Decoder(DecoderConfig(n_layers=2), scan_layers=True))
    ('embed', 'blocks/out[0]', 'blocks/out[1]')
    """
    from jaxinterp.models import Decoder, Transformer

    if isinstance(model, Decoder):
        n = model.cfg.n_layers
        if model.scan_layers:  # the stacked layout: one scan step per layer
            return ("embed",) + tuple(f"blocks/out[{i}]" for i in range(n))
        return ("embed",) + tuple(f"blocks_{i}" for i in range(n))
    if isinstance(model, Transformer):
        return ("block_0:input",) + tuple(f"block_{i}" for i in range(model.cfg.n_layers))
    raise TypeError(
        f"sites: no default residual-stream sites for a {type(model).__name__}; pass sites= "
        "(e.g. ('embed', 'block_0', 'block_1'))"
    )


def _resolve(model: Any, sites: Sequence[str] | None, readout: Readout | None) -> tuple:
    if sites is None:
        sites = default_sites(model)
    if isinstance(sites, str) or not all(isinstance(s, str) for s in sites) or not sites:
        raise TypeError(f"sites: expected a non-empty sequence of site strings, got {sites!r}")
    if any("*" in s for s in sites):
        raise ValueError(
            f"sites: name each layer's site (no globs: their order matters), got {sites}"
        )
    if readout is None:
        readout = decoder_readout(model)
    elif not callable(readout):
        raise TypeError(
            f"readout: expected f(variables, h) -> logits, got {type(readout).__name__}"
        )
    return tuple(sites), readout


def _check_tokens(tokens: Any, model: Any = None) -> jax.Array:
    """``[batch, seq]`` integer ids, in the model's vocabulary when it declares one.

    An id outside it would be embedded as a clamped row: the model's own logits come out NaN
    (its value check), but the streams read by the lens would look fine.
    """
    tokens = check_array(tokens, "tokens", ndim=2, kind="integer")
    check_ids(tokens, model_vocab(model), "tokens")
    return tokens


def _follow_nan(lens_logits: jax.Array, logits: jax.Array) -> jax.Array:
    """NaN lens rows for the examples whose model logits are NaN (a failed value check)."""
    bad = jnp.isnan(logits).reshape(logits.shape[0], -1).any(-1)
    return jnp.where(bad.reshape((1, -1) + (1,) * (lens_logits.ndim - 2)), jnp.nan, lens_logits)


# ---------------------------------------------------------------------------- logit lens


def _streams(model, variables, tokens, sites) -> tuple[jax.Array, jax.Array]:
    logits, acts = capture_sites(model, variables, list(sites))(tokens)
    return logits, jnp.stack([acts[s] for s in sites])


@partial(jax.jit, static_argnames=("model", "sites"))
def residual_streams(
    model: Any, variables: Any, tokens: jax.Array, sites: tuple[str, ...]
) -> tuple[jax.Array, jax.Array]:
    """``(logits [batch, seq, vocab], streams [layer, batch, seq, d_model])`` at ``sites``.

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> m = Decoder(DecoderConfig(n_layers=2))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> residual_streams(m, v, jnp.ones((1, 4), int), ("embed", "blocks_1"))[1].shape
    (2, 1, 4, 64)
    """
    return _streams(model, variables, tokens, sites)


@partial(jax.jit, static_argnames=("model", "sites", "readout"))
def _logit_lens(model, variables, tokens, sites, readout):
    logits, h = _streams(model, variables, tokens, sites)
    return _follow_nan(jax.vmap(readout, in_axes=(None, 0))(variables, h), logits), logits


def logit_lens(
    model: Any,
    variables: Any,
    tokens: jax.Array,
    *,
    sites: Sequence[str] | None = None,
    readout: Readout | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Every layer's residual stream read through the final norm and unembedding.

    Args:
      model: a linen model; :class:`jaxinterp.models.Decoder` and
        :class:`~jaxinterp.models.Transformer` have default ``sites`` and ``readout``.
      variables: its variables (``{"params": ...}``).
      tokens: ``[batch, seq]`` token ids.
      sites: residual-stream sites in layer order, default ``default_sites``
        (``embed``, ``blocks_0`` ... ``blocks_{L-1}`` for a Decoder).
      readout: ``f(variables, h [..., d_model]) -> logits [..., vocab]``, default
        :func:`decoder_readout`. Must be hashable (a module-level function or a frozen
        dataclass) for the compiled program to be reused.

    Returns:
      ``(lens_logits [layer, batch, seq, vocab], logits [batch, seq, vocab])``: the readout of
      each site and the model's own output. With the default sites, the last layer's lens
      equals ``logits``.

    Raises:
      TypeError: ``tokens`` not integer, ``sites``/``readout`` not given for another model.
      ValueError: ``tokens`` not 2-D, a glob in ``sites``.
      KeyError: (when traced) a site that matches no submodule.

    Runs as one jitted program (also inside your own ``jit``/``vmap``).

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> m = Decoder(DecoderConfig(n_layers=2))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> lens, logits = logit_lens(m, v, jnp.array([[1, 2, 3, 4]]))
    >>> lens.shape
    (3, 1, 4, 128)
    >>> bool(jnp.allclose(lens[-1], logits, atol=1e-5))
    True
    """
    sites, readout = _resolve(model, sites, readout)
    return _logit_lens(model, variables, _check_tokens(tokens, model), sites, readout)


# ---------------------------------------------------------------------------- tuned lens


class TunedLens(NamedTuple):
    """Affine translators, one per layer: ``h ↦ h @ weight[l] + bias[l]``.

    Attributes:
      weight: ``[layer, d_model, d_model]``, the identity at init.
      bias: ``[layer, d_model]``, zero at init.
    """

    weight: jax.Array
    bias: jax.Array


def init_tuned_lens(n_layers: int, d_model: int, dtype: Any = jnp.float32) -> TunedLens:
    """Identity translators (the tuned lens then equals the logit lens).

    Args:
      n_layers: number of sites (``len(sites)``: ``n_layers + 1`` for a Decoder's defaults).
      d_model: residual-stream width.
      dtype: parameter dtype.

    Returns:
      ``TunedLens(weight=[n_layers, d_model, d_model] identities, bias=[n_layers, d_model] 0)``.

    >>> init_tuned_lens(3, 4).weight.shape
    (3, 4, 4)
    """
    check_int(n_layers, "n_layers", lo=1)
    check_int(d_model, "d_model", lo=1)
    eye = jnp.broadcast_to(jnp.eye(d_model, dtype=dtype), (n_layers, d_model, d_model))
    return TunedLens(eye, jnp.zeros((n_layers, d_model), dtype))


def translate(lens: TunedLens, streams: jax.Array) -> jax.Array:
    """Applies each layer's translator: ``[layer, ..., d_model] -> [layer, ..., d_model]``.

    >>> lens = init_tuned_lens(2, 3)
    >>> translate(lens._replace(bias=jnp.ones((2, 3))), jnp.zeros((2, 5, 3)))[1, 0].tolist()
    [1.0, 1.0, 1.0]
    """
    _check_lens(lens, streams.shape[0], streams.shape[-1])

    def one(w, b, h):
        return (h @ w.astype(h.dtype) + b.astype(h.dtype)).astype(h.dtype)

    return jax.vmap(one)(lens.weight, lens.bias, streams)


def _check_lens(lens: Any, n_layers: int, d_model: int) -> None:
    if not isinstance(lens, TunedLens):
        raise TypeError(f"lens: expected a TunedLens, got {type(lens).__name__}")
    want_w, want_b = (n_layers, d_model, d_model), (n_layers, d_model)
    if tuple(lens.weight.shape) != want_w or tuple(lens.bias.shape) != want_b:
        raise ValueError(
            f"lens: expected weight {want_w} and bias {want_b} (one translator per site), got "
            f"{tuple(lens.weight.shape)} and {tuple(lens.bias.shape)}"
        )


@partial(jax.jit, static_argnames=("model", "sites", "readout"))
def _tuned_lens(lens, model, variables, tokens, sites, readout):
    logits, h = _streams(model, variables, tokens, sites)
    lens_logits = jax.vmap(readout, in_axes=(None, 0))(variables, translate(lens, h))
    return _follow_nan(lens_logits, logits), logits


def tuned_lens(
    lens: TunedLens,
    model: Any,
    variables: Any,
    tokens: jax.Array,
    *,
    sites: Sequence[str] | None = None,
    readout: Readout | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Every layer's residual stream through its translator, then the final norm and unembedding.

    Args:
      lens: translators from :func:`init_tuned_lens` / :func:`fit_tuned_lens`, one per site.
      model, variables, tokens, sites, readout: as in :func:`logit_lens`.

    Returns:
      ``(lens_logits [layer, batch, seq, vocab], logits [batch, seq, vocab])``.

    Raises:
      TypeError, ValueError: as :func:`logit_lens`; ``lens`` not a :class:`TunedLens` with one
        ``[d_model, d_model]`` translator per site.

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> m = Decoder(DecoderConfig(n_layers=2))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> toks = jnp.array([[1, 2, 3, 4]])
    >>> tuned, _ = tuned_lens(init_tuned_lens(3, 64), m, v, toks)  # identity = logit lens
    >>> bool(jnp.allclose(tuned, logit_lens(m, v, toks)[0], atol=1e-5))
    True
    """
    sites, readout = _resolve(model, sites, readout)
    return _tuned_lens(lens, model, variables, _check_tokens(tokens, model), sites, readout)


# --------------------------------------------------------------------------------- metrics


class LensMetrics(NamedTuple):
    """Per-layer agreement of a lens with the model's output (means over positions).

    Attributes:
      kl: ``[layer]`` mean ``KL(p_final || p_lens)`` in nats.
      top1: ``[layer]`` fraction of positions where the lens's argmax equals the model's.
    """

    kl: jax.Array
    top1: jax.Array


def _kl(final_logits: jax.Array, lens_logits: jax.Array) -> jax.Array:
    """``KL(softmax(final) || softmax(lens))`` over the last axis (float32)."""
    logp = jax.nn.log_softmax(final_logits.astype(jnp.float32), -1)
    logq = jax.nn.log_softmax(lens_logits.astype(jnp.float32), -1)
    return jnp.sum(jnp.exp(logp) * (logp - logq), -1)


def lens_metrics(
    lens_logits: jax.Array, logits: jax.Array, mask: jax.Array | None = None
) -> LensMetrics:
    """Per-layer KL divergence from the model's output and top-1 agreement.

    Args:
      lens_logits: ``[layer, batch, seq, vocab]`` from :func:`logit_lens` / :func:`tuned_lens`.
      logits: ``[batch, seq, vocab]``, the model's own output.
      mask: optional ``[batch, seq]`` bool, True for positions to average (padding False).

    Returns:
      :class:`LensMetrics` with ``kl [layer]`` (nats) and ``top1 [layer]`` (in ``[0, 1]``).

    Raises:
      ValueError: shapes that do not match, an all-False ``mask`` (when concrete).

    >>> final = jnp.array([[[2.0, 0.0]]])
    >>> m = lens_metrics(jnp.stack([final, -final]), final)
    >>> m.top1.tolist(), round(float(m.kl[0]), 6)
    ([1.0, 0.0], 0.0)
    """
    lens_logits = check_array(lens_logits, "lens_logits", ndim=4, kind="floating")
    logits = check_array(logits, "logits", ndim=3, kind="floating")
    if lens_logits.shape[1:] != logits.shape:
        raise ValueError(
            f"lens_logits: expected [layer, *logits.shape] with logits.shape = {logits.shape}, "
            f"got {lens_logits.shape}"
        )
    check_finite(lens_logits, "lens_logits")  # NaN logits would give top-1 agreement 1
    check_finite(logits, "logits")
    if mask is None:
        mask = jnp.ones(logits.shape[:2], bool)
    mask = check_array(mask, "mask", shape=logits.shape[:2])
    if mask.dtype != jnp.bool_:
        raise TypeError(f"mask: expected a boolean [batch, seq] array, got dtype {mask.dtype}")
    if not isinstance(mask, jax.core.Tracer) and not bool(np.asarray(mask).any()):
        raise ValueError("mask: selects no position (all False)")
    w = mask.astype(jnp.float32) / mask.sum()
    kl = jax.vmap(lambda z: jnp.sum(_kl(logits, z) * w))(lens_logits)
    agree = jnp.argmax(lens_logits, -1) == jnp.argmax(logits, -1)[None]
    return LensMetrics(kl, jnp.sum(agree * w, (1, 2)))


# ------------------------------------------------------------------------------- training


def _lens_loss(lens, h, logits, readout, variables):
    z = jax.vmap(readout, in_axes=(None, 0))(variables, translate(lens, h))
    per_layer = jax.vmap(lambda zl: _kl(logits, zl).mean())(z)
    return per_layer.sum(), per_layer


@partial(jax.jit, static_argnames=("model", "sites", "readout", "optimizer", "steps"))
def _fit_chunk(lens, opt_state, frozen, model, variables, tokens, sites, readout, optimizer, steps):
    logits, h = _streams(model, variables, tokens, sites)
    logits, h = jax.lax.stop_gradient((logits, h))
    grad = jax.grad(_lens_loss, has_aux=True)

    def step(carry, _):
        lens, opt_state = carry
        g, per_layer = grad(lens, h, logits, readout, variables)
        g = jax.tree.map(lambda x: jnp.where(frozen.reshape((-1,) + (1,) * (x.ndim - 1)), 0, x), g)
        updates, opt_state = optimizer.update(g, opt_state, lens)
        return (optax.apply_updates(lens, updates), opt_state), per_layer

    (lens, opt_state), losses = jax.lax.scan(step, (lens, opt_state), None, length=steps)
    return lens, opt_state, losses


class FitResult(NamedTuple):
    """Result of :func:`fit_tuned_lens`.

    Attributes:
      lens: the trained :class:`TunedLens`.
      losses: ``[step, layer]`` training KL of each layer at each step (before its update).
    """

    lens: TunedLens
    losses: np.ndarray


def fit_tuned_lens(
    model: Any,
    variables: Any,
    batches: Iterable[jax.Array],
    *,
    lens: TunedLens | None = None,
    optimizer: optax.GradientTransformation | None = None,
    steps_per_batch: int = 1,
    sites: Sequence[str] | None = None,
    readout: Readout | None = None,
    freeze_last: bool = True,
) -> FitResult:
    """Trains one affine translator per layer to minimise ``KL(p_final || p_lens)``.

    Each batch of the stream is run through the model once (residual streams and logits, no
    gradient into the model), then ``steps_per_batch`` optax steps update every layer's
    translator together: one compiled program (a ``lax.scan`` of steps whose per-layer losses
    are a ``vmap`` over layers), reused for every batch of the same shape.

    Args:
      model, variables: the model (see :func:`logit_lens`).
      batches: an iterable of ``[batch, seq]`` token arrays (streamed: a generator is fine).
      lens: the starting translators, default :func:`init_tuned_lens` (identity).
      optimizer: an optax transformation, default ``optax.adam(1e-3)``; pass the same object
        for every call to reuse the compiled program.
      steps_per_batch: optimiser steps on each batch (>= 1).
      sites, readout: as in :func:`logit_lens`.
      freeze_last: keep the last site's translator fixed (its readout is the model's output,
        where the identity is already optimal).

    Returns:
      :class:`FitResult` ``(lens, losses [step, layer])``.

    Raises:
      TypeError, ValueError: bad ``tokens`` in a batch, ``lens`` of the wrong shape, an empty
        ``batches``, ``steps_per_batch < 1``.

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> m = Decoder(DecoderConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    >>> data = (jax.random.randint(jax.random.key(i), (4, 8), 0, 128) for i in range(3))
    >>> fit = fit_tuned_lens(m, v, data, optimizer=optax.adam(1e-2), steps_per_batch=5)
    >>> fit.losses.shape, bool(fit.losses[-1, 0] < fit.losses[0, 0])
    ((15, 2), True)
    """
    sites, readout = _resolve(model, sites, readout)
    steps = check_int(steps_per_batch, "steps_per_batch", lo=1)
    if optimizer is None:
        optimizer = _default_optimizer()
    opt_state = None
    frozen = jnp.zeros(len(sites), bool).at[-1].set(bool(freeze_last))
    history = []
    for tokens in batches:
        tokens = _check_tokens(tokens, model)
        if lens is None:
            d_model = jax.eval_shape(
                lambda v, t: _streams(model, v, t, sites)[1], variables, tokens
            ).shape[-1]
            lens = init_tuned_lens(len(sites), d_model)
        if opt_state is None:
            _check_lens(lens, len(sites), lens.weight.shape[-1])
            opt_state = optimizer.init(lens)
        lens, opt_state, losses = _fit_chunk(
            lens, opt_state, frozen, model, variables, tokens, sites, readout, optimizer, steps
        )
        history.append(losses)
    if not history:
        raise ValueError("batches: expected at least one [batch, seq] token array, got none")
    return FitResult(lens, np.asarray(jnp.concatenate(history)))


_ADAM: list = []


def _default_optimizer() -> optax.GradientTransformation:
    if not _ADAM:  # one object, so that the compiled step is reused across calls
        _ADAM.append(optax.adam(1e-3))
    return _ADAM[0]
