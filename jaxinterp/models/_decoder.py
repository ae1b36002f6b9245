"""Decoder-only language models (GPT-2, Llama family, Gemma 2/3) from Hugging Face checkpoints.

One Flax linen module, :class:`Decoder`, covers three families selected by
:class:`DecoderConfig` ``family``:

* ``"gpt2"``: learned positions, pre-LayerNorm blocks, tanh-GELU MLP, tied unembedding.
* ``"llama"`` (Llama 2/3, Mistral, Qwen2, Qwen3): RoPE (``rope_scaling`` ``linear`` or
  ``llama3``), grouped-query attention, RMSNorm, SwiGLU MLP, optional q/k/v bias (Qwen2),
  optional QK-norm (Qwen3), optional sliding window (Mistral; Qwen2/3 on the layers their
  ``layer_types`` name), tied or untied unembedding.
* ``"gemma"`` (Gemma 2, Gemma 3 text): the ``(1 + w)`` RMSNorm, embeddings scaled by
  ``sqrt(d_model)``, norms before *and after* attention and MLP, GeGLU MLP (tanh GELU),
  attention scaled by ``query_pre_attn_scalar ** -0.5``, local (sliding-window) and global
  layers, tanh soft-capping of attention scores and final logits (Gemma 2), QK-norm and a
  separate RoPE base for local layers (Gemma 3; the global layers use ``rope_theta`` with
  ``rope_scaling``).

The maths follows ``transformers`` (4.57) ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` /
``Qwen3ForCausalLM`` / ``Gemma2ForCausalLM`` / ``Gemma3ForCausalLM``; the tests compare with
reference outputs made by ``scripts/make_decoder_fixtures.py``. Attention is written by hand so
that every intermediate is a submodule output (capturable, patchable); the weights are the output
of the ``probs`` submodule, so use
``jaxinterp.attention.attention_weights(model, v, weights_at="blocks_*/attn/probs")``.

Canonical paths (stable):

=================================  ==========================================================
``embed``                          token (+ position, GPT-2) embedding (times ``sqrt(d_model)``
                                   for Gemma): the residual stream entering block 0,
                                   ``[batch, seq, d_model]``
``blocks_{i}``                     residual stream after block ``i``, ``[batch, seq,
                                   d_model]``; the stream entering block ``i > 0`` is
                                   ``blocks_{i-1}``
``blocks_{i}/ln_1``                normalisation before attention
``blocks_{i}/attn/{q,k,v}``        projections ``[batch, seq, head, d_head]`` (``k``, ``v``
                                   have ``n_kv_heads`` heads; before QK-norm and RoPE)
``blocks_{i}/attn/{q,k}_norm``     QK-norm outputs (Qwen3, Gemma 3 only)
``blocks_{i}/attn/{q,k}_rot``      RoPE families only: ``q``/``k`` after RoPE
``blocks_{i}/attn/probs``          attention probabilities ``[batch, head, q, k]`` (after
                                   soft-capping and the causal / sliding-window mask)
``blocks_{i}/attn/z``              per-head result ``[batch, seq, head, d_head]``
``blocks_{i}/attn``                attention output after the ``o`` projection
``blocks_{i}/post_ln_1``           Gemma only: norm of the attention output, the term added
                                   to the residual stream
``blocks_{i}/ln_2``                normalisation before the MLP
``blocks_{i}/mlp/hidden``          MLP hidden units ``[batch, seq, d_mlp]`` (GELU output, or
                                   ``act(gate) * up`` for SwiGLU / GeGLU)
``blocks_{i}/mlp``                 MLP output
``blocks_{i}/post_ln_2``           Gemma only: norm of the MLP output, added to the stream
``ln_f``                           final normalisation (HF's last ``hidden_states`` entry)
``unembed``                        logits ``[batch, seq, vocab]``; before the final
                                   soft-capping where the config has one (Gemma 2), the model
                                   then returns ``cap * tanh(unembed / cap)``
=================================  ==========================================================

For Gemma, the term that attention adds to the residual stream is ``post_ln_1`` (not
``attn``): an intervention on ``attn`` passes through that norm. Zeroing one head's ``z``
still removes exactly that head's contribution to the ``o`` projection.

``__call__(input_ids, start=0, decode=False, *, attention_mask=None)`` returns logits. With
``decode=True`` and a ``"cache"`` collection from :func:`init_cache` (applied with
``mutable="cache"``), the chunk's keys/values are written at cache slots ``start ..`` and
attention reads the whole cache (used by :func:`generate`); local layers mask keys more than
``sliding_window - 1`` positions back. A chunk that would run past the end of the cache
raises (concrete ``start``) or gives NaN logits (traced): never a clamped write.

Padding. ``attention_mask [batch, seq]`` (1 = real token; ``[batch, cache length]`` with
``decode=True``) masks padded keys out and numbers each row's real tokens ``0, 1, ...``
(``cumsum(mask) - 1``, as transformers' ``generate``), so a left- or right-padded row gives at
its real positions the logits of the same row run alone. Padded query rows get finite values
(uniform attention over nothing real; ignore them). Ids at padded positions are not checked.
Read each row at :func:`last_token_index`; the analyses pass the mask as a keyword input
(``capture(...)(ids, attention_mask=mask)``, ``patch_sweep(..., kwargs={"attention_mask":
mask})``; ``layer_features`` with ``inputs=(ids, mask)`` and ``method=lambda m, i, a: m(i,
attention_mask=a)``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_int, check_key, is_traced, poison, value_check
from jaxinterp.models._decoder_config import DecoderConfig
from jaxinterp.models._safetensors import read_safetensors


class _Id(nn.Module):
    """Identity, so that an intermediate has a path."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class _Softmax(nn.Module):
    """Softmax over keys in float32: the attention probabilities ``[batch, head, q, k]``."""

    @nn.compact
    def __call__(self, scores: jax.Array) -> jax.Array:
        return jax.nn.softmax(scores.astype(jnp.float32), axis=-1)


class RMSNorm(nn.Module):
    """HF RMSNorm computed in float32: Llama's ``w * (x / sqrt(mean(x²) + eps))``, or Gemma's
    ``(1 + w) * ...`` when ``one_plus`` (then ``w`` starts at zero)."""

    eps: float
    one_plus: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.one_plus else nn.initializers.ones
        w = self.param("scale", init, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        if self.one_plus:
            return (y * (1.0 + w.astype(jnp.float32))).astype(x.dtype)
        return w * y.astype(x.dtype)


def _norm(cfg: DecoderConfig, name: str) -> nn.Module:
    if cfg.family == "gpt2":
        return nn.LayerNorm(epsilon=cfg.norm_eps, use_fast_variance=False, name=name)
    return RMSNorm(cfg.norm_eps, one_plus=cfg.family == "gemma", name=name)


def rope_frequencies(cfg: DecoderConfig, local: bool = False) -> np.ndarray:
    """Inverse RoPE frequencies ``[d_head // 2]`` with HF's ``linear``/``llama3`` scaling.

    ``local=True`` gives those of the sliding-window layers: base ``rope_local_theta`` without
    scaling where the config has one (Gemma 3), else the same as the global layers.

    >>> rope_frequencies(DecoderConfig(d_head=4, rope_theta=100.0)).tolist()
    [1.0, 0.10000000149011612]
    """
    d = cfg.d_head
    theta, s = cfg.rope_theta, dict(cfg.rope_scaling)
    if local and cfg.rope_local_theta is not None:
        theta, s = cfg.rope_local_theta, {}
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    kind = s.get("rope_type", s.get("type", "default"))
    if kind == "linear":
        inv = inv / s["factor"]
    elif kind == "llama3":
        factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) & ~(wavelen > old / lo)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def _rope(x: jax.Array, pos: jax.Array, inv: np.ndarray) -> jax.Array:
    """RoPE of ``x [batch, seq, head, d]`` at positions ``pos`` ``[seq]`` or ``[batch|1, seq]``."""
    pos = pos if pos.ndim == 2 else pos[None]
    ang = pos[..., None].astype(jnp.float32) * jnp.asarray(inv)  # [batch|1, seq, d/2]
    emb = jnp.concatenate([ang, ang], -1)
    cos, sin = jnp.cos(emb)[:, :, None, :], jnp.sin(emb)[:, :, None, :]
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def _low_precision(dtype: Any) -> bool:
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _contract(a: jax.Array, b: jax.Array, k: int) -> jax.Array:
    """``a``'s last ``k`` axes against ``b``'s first ``k``, accumulated in f32, cast back."""
    dims = ((tuple(range(a.ndim - k, a.ndim)), tuple(range(k))), ((), ()))
    y = jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)
    return y.astype(jnp.result_type(a, b))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _tensordot_lowp(x: jax.Array, w: jax.Array, k: int) -> jax.Array:
    return _contract(x, w, k)


def _tensordot_lowp_fwd(x, w, k):
    return _contract(x, w, k), (x, w)


def _tensordot_lowp_bwd(k, res, g):
    # The automatic transpose multiplies the f32 cotangent of the f32 accumulator with the bf16
    # weight, and XLA on CPU then converts every weight to f32 (the copies this module avoids
    # in the forward). Here the cotangent is cast to the operand dtype and both products
    # accumulate in f32, like the forward: no weight copies.
    x, w = res
    g = g.astype(x.dtype)
    nx = x.ndim - k  # free axes of x
    gx = jax.lax.dot_general(
        g, w, ((tuple(range(nx, g.ndim)), tuple(range(k, w.ndim))), ((), ())),
        preferred_element_type=jnp.float32,
    )  # fmt: skip
    gw = jax.lax.dot_general(
        x, g, ((tuple(range(nx)), tuple(range(nx))), ((), ())),
        preferred_element_type=jnp.float32,
    )  # fmt: skip
    return gx.astype(x.dtype), gw.astype(w.dtype)


_tensordot_lowp.defvjp(_tensordot_lowp_fwd, _tensordot_lowp_bwd)


def _dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general``; bf16/f16 operands accumulate in f32, the result is cast back.

    With bf16 weights XLA on CPU otherwise converts every weight to f32 up front and keeps the
    copies (temporaries of about twice the parameter bytes); asking for an f32 result lets it
    convert tile by tile. The contractions of the Dense layers (``lhs``'s last axes against
    ``rhs``'s first, no batch axes) get a matching backward pass (cotangent cast to the operand
    dtype, f32 accumulation; no forward-mode derivative for bf16/f16 models). f32 operands take
    the plain path (bit-identical to ``lax.dot_general``).
    """
    out = jnp.result_type(lhs, rhs)
    if preferred_element_type is None and precision is None and _low_precision(out):
        (lc, rc), (lb, rb) = dimension_numbers
        k = len(lc)
        tensordot = tuple(lc) == tuple(range(lhs.ndim - k, lhs.ndim)) and tuple(rc) == tuple(
            range(k)
        )
        if tensordot and not lb and not rb and lhs.dtype == rhs.dtype:
            return _tensordot_lowp(lhs, rhs, k)
        y = jax.lax.dot_general(lhs, rhs, dimension_numbers, preferred_element_type=jnp.float32)
        return y.astype(out)
    return jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision=precision,
        preferred_element_type=preferred_element_type,
    )  # fmt: skip


def _einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """``jnp.einsum`` of two operands, accumulating bf16/f16 in f32 (see :func:`_dot_general`)."""
    out = jnp.result_type(a, b)
    if _low_precision(out):
        return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(out)
    return jnp.einsum(spec, a, b)


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for ``b [d, n]``, accumulating bf16/f16 in f32 (see :func:`_dot_general`)."""
    return _dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())))


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


class _Attention(nn.Module):
    cfg: DecoderConfig
    local: bool = False

    @nn.compact
    def __call__(self, x, pos, decode, keys=None):
        # pos: query positions [seq] or [batch|1, seq]; keys: (write_at, key positions
        # [batch|1, K] or None, key mask [batch|1, K] or None), see Decoder.__call__
        c = self.cfg
        pos = pos if pos.ndim == 2 else pos[None]
        write_at, kpos, key_ok = (pos[0, 0], None, None) if keys is None else keys

        def proj(n, name):
            return nn.DenseGeneral(
                (n, c.d_head), use_bias=c.qkv_bias, dot_general=_dot_general, name=name
            )(x)

        q, k, v = proj(c.n_heads, "q"), proj(c.n_kv_heads, "k"), proj(c.n_kv_heads, "v")
        if c.qk_norm:
            one_plus = c.family == "gemma"
            q = RMSNorm(c.norm_eps, one_plus, name="q_norm")(q)
            k = RMSNorm(c.norm_eps, one_plus, name="k_norm")(k)
        if c.family != "gpt2":
            inv = rope_frequencies(c, self.local)
            q = _Id(name="q_rot")(_rope(q, pos, inv))
            k = _Id(name="k_rot")(_rope(k, pos, inv))
        if decode:
            ck, cv = self.variable("cache", "k_cache"), self.variable("cache", "v_cache")
            # the caller has checked write_at + seq <= cache length (no clamped write)
            k = jax.lax.dynamic_update_slice_in_dim(ck.value, k.astype(ck.value.dtype), write_at, 1)
            v = jax.lax.dynamic_update_slice_in_dim(cv.value, v.astype(cv.value.dtype), write_at, 1)
            ck.value, cv.value = k, v
        rep = c.n_heads // c.n_kv_heads
        kk, vv = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
        scores = _einsum("bqhd,bkhd->bhqk", q, kk)
        if c.family == "gpt2":
            if c.scale_scores:
                scores = scores / jnp.sqrt(jnp.float32(c.d_head)).astype(scores.dtype)
        else:
            scores = scores * (c.query_scale or c.d_head) ** -0.5
        scores = _softcap(scores, c.attn_softcap)
        # causal by index (cache slot), window by position; padded keys never attended to. A
        # query with no key left (a padded row) gets uniform weights: finite, never NaN.
        kidx = jnp.arange(k.shape[1])
        qidx = (write_at if decode else 0) + jnp.arange(x.shape[1])
        mask = (kidx[None, :] <= qidx[:, None])[None]  # [1, q, k]
        if key_ok is not None:
            mask = mask & key_ok[:, None, :]
        if self.local:
            if kpos is None:
                kpos = kidx[None] if decode else pos
            mask = mask & (kpos[:, None, :] > pos[:, :, None] - c.sliding_window)
        scores = jnp.where(mask[:, None], scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        p = _Softmax(name="probs")(scores)
        z = _Id(name="z")(_einsum("bhqk,bkhd->bqhd", p.astype(vv.dtype), vv))
        out = nn.DenseGeneral(
            c.d_model, axis=(-2, -1), use_bias=c.o_bias, dot_general=_dot_general, name="o"
        )(z)
        return out


_ACT_FNS = {
    "silu": nn.silu,
    "gelu_tanh": partial(nn.gelu, approximate=True),
    "gelu": partial(nn.gelu, approximate=False),
}


class _MLP(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        act, dg = _ACT_FNS[c.mlp_act], _dot_general
        if c.family == "gpt2":
            h = act(nn.Dense(c.d_mlp, dot_general=_dot_general, name="fc_in")(x))
        else:
            g = nn.Dense(c.d_mlp, use_bias=c.mlp_bias, dot_general=dg, name="gate")(x)
            h = act(g) * nn.Dense(c.d_mlp, use_bias=c.mlp_bias, dot_general=dg, name="up")(x)
        h = _Id(name="hidden")(h)
        return nn.Dense(c.d_model, use_bias=c.mlp_bias, dot_general=_dot_general, name="fc_out")(h)


class _Block(nn.Module):
    cfg: DecoderConfig
    # Whether this layer attends through the sliding window (not the layer index: blocks of one
    # kind stay identical modules, so patch_sweep can replay a chain of them).
    local: bool = False
    # As the body of the stacked layout's ``nn.scan``: return ``(x, None)`` (carry, no output),
    # the residual stream passing through ``out`` (recorded ``blocks/out``, ``[layer, ...]``).
    scan_step: bool = False

    @nn.compact
    def __call__(self, x, pos, decode, keys=None):
        c = self.cfg
        a = _Attention(c, self.local, name="attn")(_norm(c, "ln_1")(x), pos, decode, keys)
        if c.family == "gemma":
            a = _norm(c, "post_ln_1")(a)
        x = x + a
        m = _MLP(c, name="mlp")(_norm(c, "ln_2")(x))
        if c.family == "gemma":
            m = _norm(c, "post_ln_2")(m)
        if self.scan_step:
            return _Id(name="out")(x + m), None
        return x + m


class _Embed(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, ids, pos, embeddings=None):
        x = nn.Embed(self.cfg.vocab_size, self.cfg.d_model, name="tok")(ids)
        if embeddings is not None:  # the lookup above only creates the table (dead code)
            x = embeddings.astype(x.dtype)
        if self.cfg.family == "gpt2":
            x = x + nn.Embed(self.cfg.max_positions, self.cfg.d_model, name="pos")(pos)
        if self.cfg.family == "gemma":  # HF rounds the scale to the embedding dtype
            x = x * jnp.asarray(self.cfg.d_model**0.5, x.dtype)
        return x


class _Unembed(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x):
        w = self.param(
            "kernel", nn.initializers.normal(0.02), (self.cfg.d_model, self.cfg.vocab_size)
        )
        return _matmul(x, w.astype(x.dtype))


class Decoder(nn.Module):
    """Causal decoder LM: ``input_ids [batch, seq] -> logits [batch, seq, vocab]``.

    Canonical paths are listed in the module docstring; they are the same for every family
    (``embed``, ``blocks_{i}``, ``blocks_{i}/attn/{q,k,v,probs,z}``, ``blocks_{i}/mlp/hidden``,
    ``ln_f``, ``unembed``), Gemma adding ``blocks_{i}/post_ln_{1,2}`` (the terms added to the
    residual stream) and Qwen3 / Gemma 3 ``blocks_{i}/attn/{q,k}_norm``.

    ``start`` (int, may be traced) is the position of the first token (the cache slot with
    ``decode=True``); ``decode=True`` reads and updates the ``"cache"`` collection (see
    :func:`init_cache`, :func:`generate`). Token ids outside ``[0, vocab_size)`` raise
    ``ValueError`` when concrete; under jit, the logits of the affected batch rows are NaN; see
    ``jaxinterp.checked``. ``attention_mask [batch, seq]`` (keyword; 1 = real token) handles
    padded batches: see the module docstring.

    ``embeddings [batch, seq, d_model]`` (keyword), when given, replaces the token-table lookup
    of ``input_ids`` (which then only sets the shape, e.g. zeros): the rows are used as if they
    were table rows, so GPT-2 still adds positions and Gemma still multiplies by
    ``sqrt(d_model)`` (as HF Gemma 2's ``inputs_embeds``; HF Gemma 3 expects them pre-scaled).
    This is the soft-prompt entry point: ``jaxinterp.actmax.soft_prompt(table, seq_len)``.

    ``scan_layers=True`` stacks the blocks in one ``nn.scan`` (weights ``blocks/...`` with a
    leading ``[layer]`` axis): one block is compiled whatever the depth, with the same
    outputs. Sites are then per scan step: ``blocks/attn/z[3]`` for ``blocks_3/attn/z`` and
    ``blocks/out[3]`` for the residual stream ``blocks_3``; see
    :func:`jaxinterp.models.stack_layers` (variables both ways) and
    :func:`jaxinterp.models.stacked_site`. Configs mixing sliding-window and global layers
    raise.

    >>> m = Decoder(DecoderConfig(family="gpt2", n_kv_heads=4, max_positions=8))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    >>> m.apply(v, jnp.array([[1, 2, 3]])).shape
    (1, 3, 128)
    >>> table = v["params"]["embed"]["tok"]["embedding"]
    >>> e = table[jnp.array([[1, 2, 3]])]
    >>> bool(jnp.allclose(m.apply(v, jnp.zeros((1, 3), int), embeddings=e),
    ...                   m.apply(v, jnp.array([[1, 2, 3]]))))
    True
    >>> padded = m.apply(v, jnp.array([[0, 0, 1, 2, 3]]),
    ...                  attention_mask=jnp.array([[0, 0, 1, 1, 1]]))  # left padding
    >>> bool(jnp.allclose(padded[:, 2:], m.apply(v, jnp.array([[1, 2, 3]])), atol=1e-5))
    True
    """

    cfg: DecoderConfig = DecoderConfig()
    scan_layers: bool = False

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        start: Any = 0,
        decode: bool = False,
        *,
        embeddings: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
    ) -> jax.Array:
        c = self.cfg
        ids = check_array(input_ids, "input_ids", ndim=2, kind="integer")
        batch, seq = ids.shape
        if embeddings is not None:
            embeddings = check_array(embeddings, "embeddings", kind="floating")
            if embeddings.shape != (*ids.shape, c.d_model):
                raise ValueError(
                    f"embeddings: expected [batch, seq, d_model] = {(*ids.shape, c.d_model)}, "
                    f"got {embeddings.shape}"
                )
        start_ok = True
        if decode:
            first = "blocks" if self.scan_layers else "blocks_0"
            if first not in self.variables.get("cache", {}):
                raise ValueError(
                    "decode: needs a 'cache' collection from init_cache (mutable) of this "
                    f"layout (scan_layers={self.scan_layers}: key {first!r}), got keys "
                    f"{sorted(self.variables.get('cache', {}))[:3]}"
                )
            length = self.variables["cache"][first]["attn"]["k_cache"].shape[-3]
            if seq > length:
                raise ValueError(f"input_ids: expected at most {length} (cache length), got {seq}")
            # never a clamped write: dynamic_update_slice would move the chunk back silently
            start_ok = (jnp.asarray(start) >= 0) & (jnp.asarray(start) + seq <= length)
            value_check(
                start_ok,
                f"start: expected 0 <= start and start + {seq} tokens <= {length} (cache "
                "length), got start={}",
                jnp.asarray(start),
            )
        if c.family == "gpt2" and seq > c.max_positions:
            raise ValueError(f"input_ids: expected at most {c.max_positions} positions, got {seq}")
        start = jnp.asarray(start, jnp.int32)
        in_vocab = (ids >= 0) & (ids < c.vocab_size)
        if attention_mask is None:
            ok = in_vocab
            pos = (start + jnp.arange(seq, dtype=jnp.int32))[None]
            keys = (start, None, None)
        else:
            real, kpos, mask_ok = _check_mask(attention_mask, (batch, length if decode else seq))
            pos, real_q = kpos, real
            if decode:
                pos = jax.lax.dynamic_slice_in_dim(kpos, start, seq, 1)
                real_q = jax.lax.dynamic_slice_in_dim(real, start, seq, 1)
            keys = (start, kpos, real)
            # ids at padded positions (mask 0) may be anything, e.g. a pad id of -1
            ok = (in_vocab | ~real_q) & mask_ok[:, None]
        value_check(
            ok.all(),
            f"input_ids: expected ids in [0, {c.vocab_size}), got {{}}",
            ids.ravel()[jnp.argmin(ok.ravel())],
        )
        x = _Embed(c, name="embed")(jnp.where(in_vocab, ids, 0), pos, embeddings)
        if self.scan_layers:
            stack = nn.scan(
                _Block,
                variable_axes={"params": 0, "cache": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.n_layers,
            )
            x, _ = stack(c, _stack_local(c), True, name="blocks")(x, pos, decode, keys)
        else:
            for i in range(c.n_layers):
                x = _Block(c, c.is_local(i), name=f"blocks_{i}")(x, pos, decode, keys)
        x = _norm(c, "ln_f")(x)
        if c.tie_embeddings:
            tok = self.variables["params"]["embed"]["tok"]["embedding"]
            logits = _Id(name="unembed")(_matmul(x, tok.T.astype(x.dtype)))
        else:
            logits = _Unembed(c, name="unembed")(x)
        logits = _softcap(logits, c.final_softcap)
        logits = poison(logits, ok.all(-1)[:, None])  # a bad id spoils its whole row
        return poison(logits, start_ok)


def _stack_local(cfg: DecoderConfig) -> bool:
    """Whether the layers of the stacked layout attend through the sliding window; raises for
    a config that mixes local and global layers (one ``nn.scan`` body is one kind of layer)."""
    kinds = {cfg.is_local(i) for i in range(cfg.n_layers)}
    if len(kinds) > 1:
        local = [i for i in range(cfg.n_layers) if cfg.is_local(i)]
        raise ValueError(
            "scan_layers: the stacked layout needs layers of one kind; this config has "
            f"sliding-window layers {local} among {cfg.n_layers} (local_layers="
            f"{cfg.local_layers}): use scan_layers=False"
        )
    return kinds.pop()


def _check_mask(mask: Any, shape: tuple[int, int]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(real [batch, n] bool, positions [batch, n] int32, ok [batch])`` of an
    ``attention_mask`` (``ok``: the row holds only 0/1; under jit a bad row's logits are NaN).

    Positions count real tokens (``cumsum(mask) - 1``, as transformers' ``generate`` makes
    them), so a left-padded row has its real tokens at ``0, 1, ...``; padded slots get the
    position of the real token before them (0 before any).
    """
    mask = check_array(mask, "attention_mask", ndim=2)
    if not (jnp.issubdtype(mask.dtype, jnp.integer) or mask.dtype == jnp.bool_):
        raise TypeError(f"attention_mask: expected integer or bool 0/1 values, got {mask.dtype}")
    if mask.shape != shape:
        raise ValueError(
            f"attention_mask: expected shape {shape} ([batch, seq], or [batch, cache length] "
            f"with decode=True), got {mask.shape}"
        )
    binary = (mask == 0) | (mask == 1)
    value_check(
        binary.all(),
        "attention_mask: expected 0/1 values, got {}",
        mask.ravel()[jnp.argmin(binary.ravel())],
    )
    real = mask == 1
    some = real.any(-1)  # a row of padding only has no output to read
    value_check(
        some.all(),
        "attention_mask: expected a real token (a 1) in every row, got row {} all 0",
        jnp.argmin(some),
    )
    pos = jnp.maximum(jnp.cumsum(real, -1, dtype=jnp.int32) - 1, 0)
    return real, pos, binary.all(-1) & some


def init_cache(
    cfg: DecoderConfig,
    batch: int,
    length: int,
    dtype: Any = jnp.float32,
    *,
    scan_layers: bool = False,
) -> dict:
    """Zero KV cache, the ``"cache"`` collection for ``decode=True``.

    Returns:
      ``{"blocks_{i}": {"attn": {"k_cache": ..., "v_cache": ...}}}``, each
      ``[batch, length, n_kv_heads, d_head]``; with ``scan_layers=True`` (for
      ``Decoder(cfg, scan_layers=True)``) one ``{"blocks": {"attn": ...}}`` whose arrays are
      ``[layer, batch, length, n_kv_heads, d_head]``.

    >>> init_cache(DecoderConfig(), 2, 8)["blocks_0"]["attn"]["k_cache"].shape
    (2, 8, 2, 16)
    >>> init_cache(DecoderConfig(), 2, 8, scan_layers=True)["blocks"]["attn"]["k_cache"].shape
    (2, 2, 8, 2, 16)
    """
    check_int(batch, "batch", lo=1)
    check_int(length, "length", lo=1)
    shape = (batch, length, cfg.n_kv_heads, cfg.d_head)
    if scan_layers:
        shape = (cfg.n_layers, *shape)
    kv = {"k_cache": jnp.zeros(shape, dtype), "v_cache": jnp.zeros(shape, dtype)}
    if scan_layers:
        return {"blocks": {"attn": kv}}
    return {f"blocks_{i}": {"attn": dict(kv)} for i in range(cfg.n_layers)}


def last_token_index(attention_mask: Any) -> jax.Array:
    """Index of each row's last real token, ``[batch]`` int32, from ``attention_mask [batch, seq]``.

    The read-out position of a padded batch, left- or right-padded: pass it as the
    ``position`` of :func:`jaxinterp.interventions.logit_diff` (or index the logits with it)
    so each row is read at its own last token. A row with no real token raises (concrete) or
    gives -1 (traced).

    >>> last_token_index(jnp.array([[0, 0, 1, 1], [1, 1, 1, 0]])).tolist()
    [3, 2]
    """
    mask = check_array(attention_mask, "attention_mask", ndim=2)
    if not (jnp.issubdtype(mask.dtype, jnp.integer) or mask.dtype == jnp.bool_):
        raise TypeError(f"attention_mask: expected integer or bool 0/1 values, got {mask.dtype}")
    binary = ((mask == 0) | (mask == 1)).all()
    value_check(binary, "attention_mask: expected 0/1 values, got {}", mask.max())
    real = mask != 0
    seq = mask.shape[1]
    last = seq - 1 - jnp.argmax(real[:, ::-1], axis=1).astype(jnp.int32)
    has = real.any(1)
    value_check(has.all(), "attention_mask: expected a real token in every row, got row {}",
                jnp.argmin(has))  # fmt: skip
    return jnp.where(has & binary, last, -1)


def _pick(logits: jax.Array, key: Any, temperature: Any, top_k: int | None, top_p: Any):
    """Next tokens ``[batch]`` from ``logits [batch, vocab]``: argmax without a key, else a
    sample after temperature, then top-k, then top-p (nucleus) truncation."""
    if key is None:
        return jnp.argmax(logits, -1)
    x = logits.astype(jnp.float32) / temperature
    low = jnp.finfo(jnp.float32).min
    if top_k is not None:
        kth = jax.lax.top_k(x, top_k)[0][:, -1:]
        x = jnp.where(x < kth, low, x)
    if top_p is not None:
        # keep the smallest set of most likely tokens whose probability reaches top_p (the most
        # likely always; ties at the cut are kept)
        srt = jnp.sort(x, -1)[:, ::-1]
        p = jax.nn.softmax(srt, -1)
        before = jnp.cumsum(p, -1) - p
        cut = jnp.min(jnp.where(before < top_p, srt, jnp.inf), -1, keepdims=True)
        x = jnp.where(x < cut, low, x)
    return jax.random.categorical(key, x, -1)


@partial(jax.jit, static_argnums=(0, 3, 6))
def _generate(model, variables, prompt, n_new, key, temperature, top_k, top_p, mask):
    b, s = prompt.shape
    cache = init_cache(model.cfg, b, s + n_new, scan_layers=model.scan_layers)
    full = jnp.concatenate([mask.astype(jnp.int32), jnp.ones((b, n_new), jnp.int32)], 1)
    logits, cache = model.apply(
        {**variables, "cache": cache}, prompt, 0, True, attention_mask=full, mutable="cache"
    )
    # each row continues from its own last real token (right padding too: the padded slots
    # stay masked and positions count real tokens only)
    last = last_token_index(mask)
    keys = None if key is None else jax.random.split(key, n_new)
    first = logits[jnp.arange(b), last]
    tok = _pick(first, None if key is None else keys[0], temperature, top_k, top_p)
    tok = tok.astype(prompt.dtype)

    def step(carry, t):
        tok, cache = carry
        logits, cache = model.apply(
            {**variables, **cache}, tok[:, None], s + t, True, attention_mask=full,
            mutable="cache",
        )  # fmt: skip
        k = None if keys is None else keys[t + 1]
        nxt = _pick(logits[:, -1], k, temperature, top_k, top_p).astype(prompt.dtype)
        return (nxt, cache), tok

    (last_tok, _), toks = jax.lax.scan(step, (tok, cache), jnp.arange(n_new - 1))
    return jnp.concatenate([toks.T, last_tok[:, None]], 1)


def generate(
    model: Decoder,
    variables: dict,
    prompt: jax.Array,
    n_new: int,
    *,
    key: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    attention_mask: jax.Array | None = None,
    edits: Mapping[str, Any] | None = None,
) -> jax.Array:
    """Greedy or sampled continuation with a KV cache, compiled as one ``lax.scan``.

    Without ``key``: greedy (argmax at each step). With ``key``: each step samples from
    ``softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and then
    to the smallest set of most likely tokens whose probability reaches ``top_p`` (the order
    transformers applies them); the same key gives the same tokens. Rows are sampled
    independently (one key per step, split from ``key``).

    Args:
      model: a :class:`Decoder`.
      variables: its ``{"params": ...}``.
      prompt: ``[batch, seq]`` token ids; with padding, give ``attention_mask``.
      n_new: number of tokens to generate (>= 1).
      key: a PRNG key to sample; ``None`` (default) is greedy.
      temperature: > 0; divides the logits before sampling (``0`` without a key: greedy).
      top_k: keep only the ``top_k`` most likely tokens (1 is greedy), in ``[1, vocab]``.
      top_p: nucleus sampling, in ``(0, 1]``.
      attention_mask: ``[batch, seq]``, 1 for real tokens, 0 for padding (left or right):
        each row is continued from its own last real token at its own positions, as if it
        were alone.
      edits: steering, ``{site: edit}`` as for :func:`jaxinterp.interventions.intervene`
        (e.g. ``{"blocks_3": jaxinterp.circuits.add(direction, 4.0)}``) applied at every step.
        Non-empty edits decode through :func:`jaxinterp.circuits.generate` (the same
        arguments: ``key=None`` is its ``temperature=0``; no KV cache, since an edit may
        change any position; not with ``attention_mask``); greedy decoding gives the same
        tokens either way.

    Returns:
      ``[batch, n_new]`` token ids.

    Raises:
      ValueError: a prompt id outside ``[0, vocab)`` at a real position (concrete; traced:
        that row's tokens are -1), ``n_new < 1``, a sampling option without ``key`` or out of
        range, a bad mask, or more positions than GPT-2 has.

    >>> m = Decoder(DecoderConfig(n_layers=1))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> generate(m, v, jnp.array([[1, 2, 3]]), 4).shape
    (1, 4)
    >>> a = generate(m, v, jnp.array([[1, 2, 3]]), 4, key=jax.random.key(1), top_k=5)
    >>> bool((a == generate(m, v, jnp.array([[1, 2, 3]]), 4, key=jax.random.key(1),
    ...                     top_k=5)).all())
    True
    >>> from jaxinterp.circuits import add
    >>> steer = {"blocks_0": add(jnp.ones(64), 3.0)}   # steered: the same call, with edits
    >>> generate(m, v, jnp.array([[1, 2, 3]]), 2, edits=steer).shape
    (1, 2)
    """
    if not isinstance(model, Decoder):
        raise TypeError(
            f"model: expected a jaxinterp.models.Decoder, got {type(model).__name__} (for any "
            "linen model, jaxinterp.circuits.generate)"
        )
    prompt = check_array(prompt, "prompt", ndim=2, kind="integer")
    if 0 in prompt.shape:
        raise ValueError(f"prompt: expected at least one token per row, got shape {prompt.shape}")
    check_int(n_new, "n_new", lo=1)
    if edits:
        if attention_mask is not None:
            raise ValueError(
                "attention_mask: not supported with edits (steered decoding runs without a "
                "KV cache on unpadded prompts); got both"
            )
        if key is None and (temperature != 1.0 or top_k is not None or top_p is not None):
            raise ValueError(
                "key: temperature/top_k/top_p sample, which needs a PRNG key; got key=None (greedy)"
            )
        from jaxinterp.circuits import generate as steered

        t = 0.0 if key is None else temperature
        return steered(
            key, model, variables, prompt, n_new, edits=edits, temperature=t, top_k=top_k,
            top_p=top_p,
        )  # fmt: skip
    vocab = model.cfg.vocab_size
    if key is not None:
        key = check_key(key)
    if key is None and not is_traced(temperature) and temperature == 0:
        temperature = 1.0  # temperature 0 is greedy, as key=None is
    if key is None:
        if temperature != 1.0 or top_k is not None or top_p is not None:
            raise ValueError(
                "key: temperature/top_k/top_p sample, which needs a PRNG key; got key=None (greedy)"
            )
    else:
        if not is_traced(temperature) and not float(temperature) > 0:
            raise ValueError(
                f"temperature: expected > 0 when sampling with a key (greedy: key=None), got "
                f"{temperature}"
            )
        if top_k is not None:
            top_k = check_int(top_k, "top_k", lo=1)
            if top_k > vocab:
                raise ValueError(f"top_k: expected at most vocab_size={vocab}, got {top_k}")
        if top_p is not None and not is_traced(top_p) and not 0 < float(top_p) <= 1:
            raise ValueError(f"top_p: expected a value in (0, 1], got {top_p}")
    if model.cfg.family == "gpt2" and prompt.shape[1] + n_new > model.cfg.max_positions:
        raise ValueError(
            f"n_new: prompt + n_new must be at most max_positions={model.cfg.max_positions}, "
            f"got {prompt.shape[1] + n_new}"
        )
    if attention_mask is None:
        mask = jnp.ones(prompt.shape, jnp.int32)
    else:
        mask = check_array(attention_mask, "attention_mask", ndim=2)
        if mask.shape != prompt.shape:
            raise ValueError(
                f"attention_mask: expected the prompt's shape {prompt.shape}, got {mask.shape}"
            )
        if not is_traced(mask):
            m = np.asarray(mask)
            if not np.isin(m, (0, 1)).all() or not (m == 1).any(1).all():
                raise ValueError(
                    "attention_mask: expected 0/1 values with a real token in every row, got "
                    f"{m.tolist()}"
                )
    # an id outside the vocabulary would be read as token 0 (its logits are NaN): refuse it
    bad = ((prompt < 0) | (prompt >= vocab)) & (mask == 1)
    if not is_traced((prompt, mask)):
        if bool(np.asarray(bad).any()):
            r, c = np.argwhere(np.asarray(bad))[0]
            raise ValueError(
                f"prompt: expected ids in [0, {vocab}), got {int(prompt[r, c])} at [{r}, {c}]"
            )
    temp = jnp.asarray(temperature, jnp.float32)
    topp = None if top_p is None else jnp.asarray(top_p, jnp.float32)
    out = _generate(model, variables, prompt, n_new, key, temp, top_k, topp, mask)
    return poison(out, ~bad.any(1)[:, None])


def _strip(name: str) -> str:
    """HF tensor name without its wrapper prefixes (``model.``, ``transformer.``, and Gemma 3's
    ``language_model.`` in either order)."""
    for _ in range(3):
        for pre in ("model.", "transformer.", "language_model."):
            name = name.removeprefix(pre)
    return name


def decoder_params_from_hf(tensors: dict[str, np.ndarray], cfg: DecoderConfig, dtype=jnp.float32):
    """Converts HF GPT-2 / Llama-family / Gemma tensors into :class:`Decoder` params.

    Args:
      tensors: ``{hf_name: array}`` (torch layout) as read from safetensors.
      cfg: the configuration.
      dtype: parameter dtype (``jnp.float32`` or ``jnp.bfloat16``).

    Returns:
      ``{"params": ...}`` for ``Decoder(cfg).apply``.

    Raises:
      KeyError: ``tensors`` lacks a required weight (the message names it).

    >>> cfg = DecoderConfig(n_layers=1)
    >>> decoder_params_from_hf({}, cfg)
    Traceback (most recent call last):
    ...
    KeyError: "tensors: missing 'embed_tokens.weight' (have e.g. [])"
    """
    t = {_strip(k): v for k, v in tensors.items()}
    h, kvh, dh, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    used: set[str] = set()

    def get(name):
        if name not in t:
            raise KeyError(f"tensors: missing {name!r} (have e.g. {sorted(t)[:5]})")
        used.add(name)
        return np.asarray(t[name], np.float32)

    p: dict[str, Any] = {}
    if cfg.family == "gpt2":
        p["embed"] = {
            "tok": {"embedding": get("wte.weight")},
            "pos": {"embedding": get("wpe.weight")},
        }
        for i in range(cfg.n_layers):
            b = f"h.{i}"
            w, bias = get(f"{b}.attn.c_attn.weight"), get(f"{b}.attn.c_attn.bias")  # [d, 3d]
            attn = {
                n: {
                    "kernel": w[:, j * d : (j + 1) * d].reshape(d, h, dh),
                    "bias": bias[j * d : (j + 1) * d].reshape(h, dh),
                }
                for j, n in enumerate("qkv")
            }
            attn["o"] = {
                "kernel": get(f"{b}.attn.c_proj.weight").reshape(h, dh, d),
                "bias": get(f"{b}.attn.c_proj.bias"),
            }

            def ln(n):
                return {"scale": get(f"{n}.weight"), "bias": get(f"{n}.bias")}

            p[f"blocks_{i}"] = {
                "ln_1": ln(f"{b}.ln_1"),
                "attn": attn,
                "ln_2": ln(f"{b}.ln_2"),
                "mlp": {
                    "fc_in": {
                        "kernel": get(f"{b}.mlp.c_fc.weight"),
                        "bias": get(f"{b}.mlp.c_fc.bias"),
                    },
                    "fc_out": {
                        "kernel": get(f"{b}.mlp.c_proj.weight"),
                        "bias": get(f"{b}.mlp.c_proj.bias"),
                    },
                },
            }
        p["ln_f"] = {"scale": get("ln_f.weight"), "bias": get("ln_f.bias")}
        if not cfg.tie_embeddings:
            p["unembed"] = {"kernel": get("lm_head.weight").T}
    else:
        p["embed"] = {"tok": {"embedding": get("embed_tokens.weight")}}

        def dense(name, bias):
            out = {"kernel": get(f"{name}.weight").T}
            if bias:
                out["bias"] = get(f"{name}.bias")
            return out

        for i in range(cfg.n_layers):
            b = f"layers.{i}"
            attn = {}
            for n, heads in (("q", h), ("k", kvh), ("v", kvh)):
                w = get(f"{b}.self_attn.{n}_proj.weight")  # [heads * dh, d]
                attn[n] = {"kernel": w.T.reshape(d, heads, dh)}
                if cfg.qkv_bias:
                    attn[n]["bias"] = get(f"{b}.self_attn.{n}_proj.bias").reshape(heads, dh)
            attn["o"] = {"kernel": get(f"{b}.self_attn.o_proj.weight").T.reshape(h, dh, d)}
            if cfg.o_bias:
                attn["o"]["bias"] = get(f"{b}.self_attn.o_proj.bias")
            if cfg.qk_norm:
                attn["q_norm"] = {"scale": get(f"{b}.self_attn.q_norm.weight")}
                attn["k_norm"] = {"scale": get(f"{b}.self_attn.k_norm.weight")}
            blk = {
                "ln_1": {"scale": get(f"{b}.input_layernorm.weight")},
                "attn": attn,
                "mlp": {
                    "gate": dense(f"{b}.mlp.gate_proj", cfg.mlp_bias),
                    "up": dense(f"{b}.mlp.up_proj", cfg.mlp_bias),
                    "fc_out": dense(f"{b}.mlp.down_proj", cfg.mlp_bias),
                },
            }
            if cfg.family == "gemma":
                blk["post_ln_1"] = {"scale": get(f"{b}.post_attention_layernorm.weight")}
                blk["ln_2"] = {"scale": get(f"{b}.pre_feedforward_layernorm.weight")}
                blk["post_ln_2"] = {"scale": get(f"{b}.post_feedforward_layernorm.weight")}
            else:
                blk["ln_2"] = {"scale": get(f"{b}.post_attention_layernorm.weight")}
            p[f"blocks_{i}"] = blk
        p["ln_f"] = {"scale": get("norm.weight")}
        if not cfg.tie_embeddings:
            p["unembed"] = {"kernel": get("lm_head.weight").T}
    _warn_unused(t, used, cfg)
    _check_shapes(p, cfg)
    return {"params": jax.tree.map(lambda a: jnp.asarray(a, dtype), p)}


def _check_shapes(params: dict, cfg: DecoderConfig) -> None:
    """Every loaded tensor has the shape the config's model makes (a tensor of another size
    would otherwise load and fail, or broadcast, only at the first call)."""
    want = jax.eval_shape(
        lambda: Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
    )["params"]
    got_paths = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    for path, leaf in jax.tree_util.tree_flatten_with_path(want)[0]:
        have = got_paths.get(path)
        if have is not None and tuple(np.shape(have)) != tuple(leaf.shape):
            name = "/".join(str(getattr(k, "key", k)) for k in path)
            raise ValueError(
                f"tensors: {name} has shape {tuple(np.shape(have))}, but the config "
                f"({cfg.family}, d_model={cfg.d_model}, d_mlp={cfg.d_mlp}, ...) makes "
                f"{tuple(leaf.shape)}"
            )


# buffers some writers save that hold no weights: RoPE frequencies, GPT-2's causal mask
_BUFFERS = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def _warn_unused(t: dict, used: set[str], cfg: DecoderConfig) -> None:
    """Warns naming the tensors the config does not use (e.g. more layers than ``n_layers``):
    a checkpoint and config that disagree are never loaded without a word."""
    extra = sorted(
        n
        for n in t
        if n not in used
        and not n.endswith(_BUFFERS)
        and not n.startswith(("vision_tower.", "multi_modal_projector."))  # Gemma 3's image part
    )
    if cfg.tie_embeddings and "lm_head.weight" in extra:
        # transformers ties the head to the embedding and ignores this copy; say so only if it
        # differs
        emb = "wte.weight" if cfg.family == "gpt2" else "embed_tokens.weight"
        if emb in t and np.array_equal(np.asarray(t["lm_head.weight"]), np.asarray(t[emb])):
            extra.remove("lm_head.weight")
    if extra:
        warnings.warn(
            f"tensors: {len(extra)} tensors are not used by the config ({cfg.family}, "
            f"{cfg.n_layers} layers, tie_embeddings={cfg.tie_embeddings}): {extra[:8]}"
            f"{' ...' if len(extra) > 8 else ''}; the checkpoint and config may disagree",
            UserWarning,
            stacklevel=3,
        )


class LoadedDecoder(NamedTuple):
    """A loaded checkpoint: ``model.apply(variables, ids)`` gives logits."""

    model: Decoder
    variables: dict
    config: DecoderConfig


def load_decoder(
    path: str | Path, dtype: Any = jnp.float32, *, scan_layers: bool = False
) -> LoadedDecoder:
    """Loads a Hugging Face GPT-2 / Llama / Mistral / Qwen2/3 / Gemma 2/3 checkpoint folder.

    Args:
      path: a folder with ``config.json`` and ``model.safetensors`` or a sharded
        ``model.safetensors.index.json`` (read with numpy, bf16 or f32 tensors); or a
        ``.gguf`` file (see :func:`jaxinterp.models.load_gguf`).
      dtype: parameter dtype, ``jnp.float32`` (default) or ``jnp.bfloat16``.
      scan_layers: load into the stacked layout (``Decoder(cfg, scan_layers=True)``: one
        ``nn.scan`` over the blocks, compiled once whatever the depth; see
        :func:`jaxinterp.models.stack_layers`).

    Returns:
      A :class:`LoadedDecoder`.

    Raises:
      FileNotFoundError: ``path`` lacks ``config.json`` or the weights.
      ValueError: the config is not a supported family.

    >>> import jaxinterp
    >>> root = Path(jaxinterp.__file__).resolve().parents[1]
    >>> d = load_decoder(root / "tests/fixtures/decoders/llama")
    >>> d.model.apply(d.variables, jnp.array([[1, 2, 3]])).shape
    (1, 3, 128)
    """
    if str(path).endswith(".gguf"):  # llama.cpp's format: jaxinterp.models.load_gguf
        from jaxinterp.models._gguf import load_gguf

        return load_gguf(path, dtype, scan_layers=scan_layers)
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"path: {folder} has no config.json")
    cfg = DecoderConfig.from_hf(json.loads((folder / "config.json").read_text()))
    if (folder / "model.safetensors").is_file():
        tensors = read_safetensors(folder / "model.safetensors")
    elif (folder / "model.safetensors.index.json").is_file():
        index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
        tensors = {}
        for shard in sorted(set(index.values())):
            tensors.update(read_safetensors(folder / shard))
    else:
        raise FileNotFoundError(f"path: {folder} has no model.safetensors(.index.json)")
    variables = decoder_params_from_hf(tensors, cfg, dtype)
    if scan_layers:
        from jaxinterp.models._scan import stack_layers

        _stack_local(cfg)  # a config with mixed layers raises before the copy
        return LoadedDecoder(Decoder(cfg, scan_layers=True), stack_layers(variables), cfg)
    return LoadedDecoder(Decoder(cfg), variables, cfg)
