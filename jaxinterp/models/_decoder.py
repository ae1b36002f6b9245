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

``__call__(input_ids, start=0, decode=False)`` returns logits. With ``decode=True`` and a
``"cache"`` collection from :func:`init_cache` (applied with ``mutable="cache"``), the chunk's
keys/values are written at positions ``start ..`` and attention reads the whole cache (used by
:func:`generate`); local layers mask keys more than ``sliding_window - 1`` positions back.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_int, poison, value_check
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
    ang = pos[:, None].astype(jnp.float32) * jnp.asarray(inv)[None, :]  # [seq, d/2]
    emb = jnp.concatenate([ang, ang], -1)
    cos, sin = jnp.cos(emb)[None, :, None, :], jnp.sin(emb)[None, :, None, :]
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
    def __call__(self, x, pos, decode):
        c = self.cfg

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
            k = jax.lax.dynamic_update_slice_in_dim(ck.value, k.astype(ck.value.dtype), pos[0], 1)
            v = jax.lax.dynamic_update_slice_in_dim(cv.value, v.astype(cv.value.dtype), pos[0], 1)
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
        kpos = jnp.arange(k.shape[1])
        mask = kpos[None, :] <= pos[:, None]
        if self.local:
            mask &= kpos[None, :] > pos[:, None] - c.sliding_window
        scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
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

    @nn.compact
    def __call__(self, x, pos, decode):
        c = self.cfg
        a = _Attention(c, self.local, name="attn")(_norm(c, "ln_1")(x), pos, decode)
        if c.family == "gemma":
            a = _norm(c, "post_ln_1")(a)
        x = x + a
        m = _MLP(c, name="mlp")(_norm(c, "ln_2")(x))
        if c.family == "gemma":
            m = _norm(c, "post_ln_2")(m)
        return x + m


class _Embed(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, ids, pos, embeddings=None):
        x = nn.Embed(self.cfg.vocab_size, self.cfg.d_model, name="tok")(ids)
        if embeddings is not None:  # the lookup above only creates the table (dead code)
            x = embeddings.astype(x.dtype)
        if self.cfg.family == "gpt2":
            x = x + nn.Embed(self.cfg.max_positions, self.cfg.d_model, name="pos")(pos)[None]
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

    ``start`` (int, may be traced) is the position of the first token; ``decode=True`` reads and
    updates the ``"cache"`` collection (see :func:`init_cache`, :func:`generate`). Token ids outside
    ``[0, vocab_size)`` raise ``ValueError`` when concrete; under jit, the logits of the affected
    batch rows are NaN; see ``jaxinterp.checked``.

    ``embeddings [batch, seq, d_model]`` (keyword), when given, replaces the token-table lookup
    of ``input_ids`` (which then only sets the shape, e.g. zeros): the rows are used as if they
    were table rows, so GPT-2 still adds positions and Gemma still multiplies by
    ``sqrt(d_model)`` (as HF Gemma 2's ``inputs_embeds``; HF Gemma 3 expects them pre-scaled).
    This is the soft-prompt entry point: ``jaxinterp.actmax.soft_prompt(table, seq_len)``.

    >>> m = Decoder(DecoderConfig(family="gpt2", n_kv_heads=4, max_positions=8))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    >>> m.apply(v, jnp.array([[1, 2, 3]])).shape
    (1, 3, 128)
    >>> table = v["params"]["embed"]["tok"]["embedding"]
    >>> e = table[jnp.array([[1, 2, 3]])]
    >>> bool(jnp.allclose(m.apply(v, jnp.zeros((1, 3), int), embeddings=e),
    ...                   m.apply(v, jnp.array([[1, 2, 3]]))))
    True
    """

    cfg: DecoderConfig = DecoderConfig()

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        start: Any = 0,
        decode: bool = False,
        *,
        embeddings: jax.Array | None = None,
    ) -> jax.Array:
        c = self.cfg
        ids = check_array(input_ids, "input_ids", ndim=2, kind="integer")
        seq = ids.shape[1]
        if embeddings is not None:
            embeddings = check_array(embeddings, "embeddings", kind="floating")
            if embeddings.shape != (*ids.shape, c.d_model):
                raise ValueError(
                    f"embeddings: expected [batch, seq, d_model] = {(*ids.shape, c.d_model)}, "
                    f"got {embeddings.shape}"
                )
        if decode:
            if "blocks_0" not in self.variables.get("cache", {}):
                raise ValueError("decode: needs a 'cache' collection from init_cache (mutable)")
            length = self.variables["cache"]["blocks_0"]["attn"]["k_cache"].shape[1]
            if seq > length:
                raise ValueError(f"input_ids: expected at most {length} (cache length), got {seq}")
        if c.family == "gpt2" and seq > c.max_positions:
            raise ValueError(f"input_ids: expected at most {c.max_positions} positions, got {seq}")
        ok = (ids >= 0) & (ids < c.vocab_size)
        value_check(
            ok.all(),
            f"input_ids: expected ids in [0, {c.vocab_size}), got {{}}",
            ids.ravel()[jnp.argmin(ok.ravel())],
        )
        pos = jnp.asarray(start, jnp.int32) + jnp.arange(seq, dtype=jnp.int32)
        x = _Embed(c, name="embed")(jnp.where(ok, ids, 0), pos, embeddings)
        for i in range(c.n_layers):
            x = _Block(c, c.is_local(i), name=f"blocks_{i}")(x, pos, decode)
        x = _norm(c, "ln_f")(x)
        if c.tie_embeddings:
            tok = self.variables["params"]["embed"]["tok"]["embedding"]
            logits = _Id(name="unembed")(_matmul(x, tok.T.astype(x.dtype)))
        else:
            logits = _Unembed(c, name="unembed")(x)
        logits = _softcap(logits, c.final_softcap)
        logits = poison(logits, ok.all(-1)[:, None])  # a bad id spoils its whole row
        return logits


def init_cache(cfg: DecoderConfig, batch: int, length: int, dtype: Any = jnp.float32) -> dict:
    """Zero KV cache, the ``"cache"`` collection for ``decode=True``.

    Returns:
      ``{"blocks_{i}": {"attn": {"k_cache": ..., "v_cache": ...}}}``, each
      ``[batch, length, n_kv_heads, d_head]``.

    >>> init_cache(DecoderConfig(), 2, 8)["blocks_0"]["attn"]["k_cache"].shape
    (2, 8, 2, 16)
    """
    check_int(batch, "batch", lo=1)
    check_int(length, "length", lo=1)
    shape = (batch, length, cfg.n_kv_heads, cfg.d_head)
    kv = {"k_cache": jnp.zeros(shape, dtype), "v_cache": jnp.zeros(shape, dtype)}
    return {f"blocks_{i}": {"attn": dict(kv)} for i in range(cfg.n_layers)}


@partial(jax.jit, static_argnums=(0, 3))
def _generate(model, variables, prompt, n_new):
    b, s = prompt.shape
    cache = init_cache(model.cfg, b, s + n_new)
    logits, cache = model.apply({**variables, "cache": cache}, prompt, 0, True, mutable="cache")
    tok = jnp.argmax(logits[:, -1], -1).astype(prompt.dtype)

    def step(carry, t):
        tok, cache = carry
        logits, cache = model.apply(
            {**variables, **cache}, tok[:, None], s + t, True, mutable="cache"
        )
        nxt = jnp.argmax(logits[:, -1], -1).astype(prompt.dtype)
        return (nxt, cache), tok

    (last, _), toks = jax.lax.scan(step, (tok, cache), jnp.arange(n_new - 1))
    return jnp.concatenate([toks.T, last[:, None]], 1)


def generate(model: Decoder, variables: dict, prompt: jax.Array, n_new: int) -> jax.Array:
    """Greedy continuation with a KV cache, compiled as one ``lax.scan``.

    Args:
      model: a :class:`Decoder`.
      variables: its ``{"params": ...}``.
      prompt: ``[batch, seq]`` token ids.
      n_new: number of tokens to generate (>= 1).

    Returns:
      ``[batch, n_new]`` token ids (argmax at each step).

    >>> m = Decoder(DecoderConfig(n_layers=1))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> generate(m, v, jnp.array([[1, 2, 3]]), 4).shape
    (1, 4)
    """
    prompt = check_array(prompt, "prompt", ndim=2, kind="integer")
    check_int(n_new, "n_new", lo=1)
    if model.cfg.family == "gpt2" and prompt.shape[1] + n_new > model.cfg.max_positions:
        raise ValueError(
            f"n_new: prompt + n_new must be at most max_positions={model.cfg.max_positions}, "
            f"got {prompt.shape[1] + n_new}"
        )
    return _generate(model, variables, prompt, n_new)


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

    def get(name):
        if name not in t:
            raise KeyError(f"tensors: missing {name!r} (have e.g. {sorted(t)[:5]})")
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
    return {"params": jax.tree.map(lambda a: jnp.asarray(a, dtype), p)}


class LoadedDecoder(NamedTuple):
    """A loaded checkpoint: ``model.apply(variables, ids)`` gives logits."""

    model: Decoder
    variables: dict
    config: DecoderConfig


def load_decoder(path: str | Path, dtype: Any = jnp.float32) -> LoadedDecoder:
    """Loads a Hugging Face GPT-2 / Llama / Mistral / Qwen2/3 / Gemma 2/3 checkpoint folder.

    Args:
      path: a folder with ``config.json`` and ``model.safetensors`` or a sharded
        ``model.safetensors.index.json`` (read with numpy, bf16 or f32 tensors).
      dtype: parameter dtype, ``jnp.float32`` (default) or ``jnp.bfloat16``.

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
    return LoadedDecoder(Decoder(cfg), decoder_params_from_hf(tensors, cfg, dtype), cfg)
