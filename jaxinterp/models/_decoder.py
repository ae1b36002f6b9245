"""Decoder-only language models (GPT-2 and the Llama family) loaded from Hugging Face checkpoints.

One Flax linen module, :class:`Decoder`, covers two families selected by
:class:`DecoderConfig` ``family``:

* ``"gpt2"``: learned positions, pre-LayerNorm blocks, tanh-GELU MLP, tied unembedding.
* ``"llama"`` (Llama 2/3, Mistral, Qwen2): RoPE (``rope_scaling`` ``linear`` or ``llama3``),
  grouped-query attention, RMSNorm, SwiGLU MLP, optional q/k/v bias, optional sliding window,
  tied or untied unembedding.

The maths follows ``transformers`` (4.57) ``GPT2LMHeadModel`` / ``LlamaForCausalLM``; the tests
compare with reference outputs made by ``scripts/make_decoder_fixtures.py``. Attention is written
by hand so that every intermediate is a submodule output (capturable, patchable); the weights are
the output of the ``probs`` submodule, so use
``jaxinterp.attention.attention_weights(model, v, weights_at="blocks_*/attn/probs")``.

Canonical paths (stable):

============================  ==============================================================
``embed``                     token (+ position, GPT-2) embedding: the residual stream
                              entering block 0, ``[batch, seq, d_model]``
``blocks_{i}``                residual stream after block ``i``, ``[batch, seq, d_model]``;
                              the stream entering block ``i > 0`` is ``blocks_{i-1}``
``blocks_{i}/ln_1``           normalisation before attention
``blocks_{i}/attn/{q,k,v}``   projections ``[batch, seq, head, d_head]`` (``k``, ``v`` have
                              ``n_kv_heads`` heads; Llama ``q``/``k`` are before RoPE)
``blocks_{i}/attn/{q,k}_rot``  Llama only: ``q``/``k`` after RoPE
``blocks_{i}/attn/probs``     attention probabilities ``[batch, head, q, k]``
``blocks_{i}/attn/z``         per-head result ``[batch, seq, head, d_head]``
``blocks_{i}/attn``           attention output after the ``o`` projection
``blocks_{i}/ln_2``           normalisation before the MLP
``blocks_{i}/mlp/hidden``     MLP hidden units ``[batch, seq, d_mlp]`` (GELU output, or
                              ``silu(gate) * up`` for SwiGLU)
``blocks_{i}/mlp``            MLP output
``ln_f``                      final normalisation (HF's last ``hidden_states`` entry)
``unembed``                   logits ``[batch, seq, vocab]``
============================  ==============================================================

``__call__(input_ids, start=0, decode=False)`` returns logits. With ``decode=True`` and a
``"cache"`` collection from :func:`init_cache` (applied with ``mutable="cache"``), the chunk's
keys/values are written at positions ``start ..`` and attention reads the whole cache (used by
:func:`generate`). Gemma would add a family here (soft-capping,
(1 + w) RMSNorm, embedding scaling, local layers) without changing the paths.
"""

from __future__ import annotations

import dataclasses
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
from jaxinterp.models._safetensors import read_safetensors


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Hyperparameters of a decoder LM (``family`` ``"gpt2"`` or ``"llama"``)."""

    family: str = "llama"
    vocab_size: int = 128
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    d_head: int = 16
    d_mlp: int = 128
    max_positions: int = 128
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: tuple = ()  # sorted (key, value) items of HF rope_scaling
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_embeddings: bool = False
    sliding_window: int | None = None

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> DecoderConfig:
        """Builds the config from a Hugging Face ``config.json`` dict (gpt2/llama/mistral/qwen2).

        Raises:
          ValueError: an unsupported ``model_type`` or option; the message names it.

        >>> DecoderConfig.from_hf({"model_type": "gpt2", "n_embd": 64, "n_head": 4, "n_layer": 2,
        ...     "vocab_size": 128, "n_positions": 32, "layer_norm_epsilon": 1e-5}).d_head
        16
        """
        mt = config.get("model_type")
        if mt == "gpt2":
            if config.get("scale_attn_by_inverse_layer_idx") or config.get(
                "reorder_and_upcast_attn"
            ):
                raise ValueError("config: GPT-2 attention variants are not supported")
            if config.get("activation_function", "gelu_new") != "gelu_new":
                raise ValueError(f"config: activation {config['activation_function']!r}")
            d, h = config["n_embd"], config["n_head"]
            return cls(
                family="gpt2",
                vocab_size=config["vocab_size"],
                d_model=d,
                n_layers=config["n_layer"],
                n_heads=h,
                n_kv_heads=h,
                d_head=d // h,
                d_mlp=config.get("n_inner") or 4 * d,
                max_positions=config["n_positions"],
                norm_eps=config["layer_norm_epsilon"],
                qkv_bias=True,
                o_bias=True,
                mlp_bias=True,
                tie_embeddings=True,
            )
        if mt in ("llama", "mistral", "qwen2"):
            if config.get("hidden_act", "silu") != "silu":
                raise ValueError(f"config: hidden_act {config['hidden_act']!r} is not 'silu'")
            d, h = config["hidden_size"], config["num_attention_heads"]
            kvh = config.get("num_key_value_heads") or h
            if h % kvh:
                raise ValueError(f"config: {h} heads not divisible by {kvh} kv heads")
            scaling = config.get("rope_scaling") or {}
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind not in ("default", "linear", "llama3"):
                raise ValueError(f"config: rope_scaling type {kind!r} is not supported")
            window = config.get("sliding_window")
            if mt == "qwen2" and not config.get("use_sliding_window", False):
                window = None
            return cls(
                family="llama",
                vocab_size=config["vocab_size"],
                d_model=d,
                n_layers=config["num_hidden_layers"],
                n_heads=h,
                n_kv_heads=kvh,
                d_head=config.get("head_dim") or d // h,
                d_mlp=config["intermediate_size"],
                max_positions=config.get("max_position_embeddings", 2048),
                norm_eps=config["rms_norm_eps"],
                rope_theta=config.get("rope_theta", 10000.0),
                rope_scaling=tuple(sorted((k, v) for k, v in scaling.items())),
                qkv_bias=bool(config.get("attention_bias", False)) or mt == "qwen2",
                o_bias=bool(config.get("attention_bias", False)),
                mlp_bias=bool(config.get("mlp_bias", False)),
                tie_embeddings=bool(config.get("tie_word_embeddings", False)),
                sliding_window=window,
            )
        raise ValueError(f"config: model_type {mt!r} is not one of gpt2, llama, mistral, qwen2")


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
    """HF Llama RMSNorm: ``w * (x / sqrt(mean(x²) + eps))`` computed in float32."""

    eps: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
        return w * y.astype(x.dtype)


def _norm(cfg: DecoderConfig, name: str) -> nn.Module:
    if cfg.family == "gpt2":
        return nn.LayerNorm(epsilon=cfg.norm_eps, use_fast_variance=False, name=name)
    return RMSNorm(cfg.norm_eps, name=name)


def rope_frequencies(cfg: DecoderConfig) -> np.ndarray:
    """Inverse RoPE frequencies ``[d_head // 2]`` with HF's ``linear``/``llama3`` scaling."""
    d = cfg.d_head
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    s = dict(cfg.rope_scaling)
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
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], -1)
    return (x * cos + rot * sin).astype(x.dtype)


class _Attention(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x, pos, decode):
        c = self.cfg

        def proj(n, name):
            return nn.DenseGeneral((n, c.d_head), use_bias=c.qkv_bias, name=name)(x)

        q, k, v = proj(c.n_heads, "q"), proj(c.n_kv_heads, "k"), proj(c.n_kv_heads, "v")
        if c.family == "llama":
            inv = rope_frequencies(c)
            q = _Id(name="q_rot")(_rope(q, pos, inv))
            k = _Id(name="k_rot")(_rope(k, pos, inv))
        if decode:
            ck, cv = self.variable("cache", "k_cache"), self.variable("cache", "v_cache")
            k = jax.lax.dynamic_update_slice_in_dim(ck.value, k.astype(ck.value.dtype), pos[0], 1)
            v = jax.lax.dynamic_update_slice_in_dim(cv.value, v.astype(cv.value.dtype), pos[0], 1)
            ck.value, cv.value = k, v
        rep = c.n_heads // c.n_kv_heads
        kk, vv = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, kk) / jnp.sqrt(jnp.float32(c.d_head))
        kpos = jnp.arange(k.shape[1])
        mask = kpos[None, :] <= pos[:, None]
        if c.sliding_window is not None:
            mask &= kpos[None, :] > pos[:, None] - c.sliding_window
        scores = jnp.where(mask, scores.astype(jnp.float32), jnp.finfo(jnp.float32).min)
        p = _Softmax(name="probs")(scores)
        z = _Id(name="z")(jnp.einsum("bhqk,bkhd->bqhd", p.astype(vv.dtype), vv))
        out = nn.DenseGeneral(c.d_model, axis=(-2, -1), use_bias=c.o_bias, name="o")(z)
        return out


class _MLP(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x):
        c = self.cfg
        if c.family == "gpt2":
            h = nn.gelu(nn.Dense(c.d_mlp, name="fc_in")(x), approximate=True)
        else:
            g = nn.Dense(c.d_mlp, use_bias=c.mlp_bias, name="gate")(x)
            h = nn.silu(g) * nn.Dense(c.d_mlp, use_bias=c.mlp_bias, name="up")(x)
        h = _Id(name="hidden")(h)
        return nn.Dense(c.d_model, use_bias=c.mlp_bias, name="fc_out")(h)


class _Block(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x, pos, decode):
        x = x + _Attention(self.cfg, name="attn")(_norm(self.cfg, "ln_1")(x), pos, decode)
        return x + _MLP(self.cfg, name="mlp")(_norm(self.cfg, "ln_2")(x))


class _Embed(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, ids, pos):
        x = nn.Embed(self.cfg.vocab_size, self.cfg.d_model, name="tok")(ids)
        if self.cfg.family == "gpt2":
            x = x + nn.Embed(self.cfg.max_positions, self.cfg.d_model, name="pos")(pos)[None]
        return x


class _Unembed(nn.Module):
    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x):
        w = self.param(
            "kernel", nn.initializers.normal(0.02), (self.cfg.d_model, self.cfg.vocab_size)
        )
        return x @ w.astype(x.dtype)


class Decoder(nn.Module):
    """Causal decoder LM: ``input_ids [batch, seq] -> logits [batch, seq, vocab]``.

    ``start`` (int, may be traced) is the position of the first token; ``decode=True`` reads and
    updates the ``"cache"`` collection (see :func:`init_cache`, :func:`generate`). Token ids outside
    ``[0, vocab_size)`` raise ``ValueError`` when concrete; Under jit, the logits of the affected
    batch rows are NaN; see ``jaxinterp.checked``.

    >>> m = Decoder(DecoderConfig(family="gpt2", n_kv_heads=4, max_positions=8))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    >>> m.apply(v, jnp.array([[1, 2, 3]])).shape
    (1, 3, 128)
    """

    cfg: DecoderConfig = DecoderConfig()

    @nn.compact
    def __call__(self, input_ids: jax.Array, start: Any = 0, decode: bool = False) -> jax.Array:
        c = self.cfg
        ids = check_array(input_ids, "input_ids", ndim=2, kind="integer")
        seq = ids.shape[1]
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
        x = _Embed(c, name="embed")(jnp.where(ok, ids, 0), pos)
        for i in range(c.n_layers):
            x = _Block(c, name=f"blocks_{i}")(x, pos, decode)
        x = _norm(c, "ln_f")(x)
        if c.tie_embeddings:
            tok = self.variables["params"]["embed"]["tok"]["embedding"]
            logits = _Id(name="unembed")(x @ tok.T.astype(x.dtype))
        else:
            logits = _Unembed(c, name="unembed")(x)
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


def decoder_params_from_hf(tensors: dict[str, np.ndarray], cfg: DecoderConfig, dtype=jnp.float32):
    """Converts HF ``GPT2LMHeadModel`` / ``LlamaForCausalLM`` tensors into :class:`Decoder` params.

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
    t = {k.removeprefix("transformer.").removeprefix("model."): v for k, v in tensors.items()}
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
            p[f"blocks_{i}"] = {
                "ln_1": {"scale": get(f"{b}.input_layernorm.weight")},
                "attn": attn,
                "ln_2": {"scale": get(f"{b}.post_attention_layernorm.weight")},
                "mlp": {
                    "gate": dense(f"{b}.mlp.gate_proj", cfg.mlp_bias),
                    "up": dense(f"{b}.mlp.up_proj", cfg.mlp_bias),
                    "fc_out": dense(f"{b}.mlp.down_proj", cfg.mlp_bias),
                },
            }
        p["ln_f"] = {"scale": get("norm.weight")}
        if not cfg.tie_embeddings:
            if "lm_head.weight" not in tensors:
                raise KeyError("tensors: missing 'lm_head.weight' (config has untied embeddings)")
            p["unembed"] = {"kernel": np.asarray(tensors["lm_head.weight"], np.float32).T}
    return {"params": jax.tree.map(lambda a: jnp.asarray(a, dtype), p)}


class LoadedDecoder(NamedTuple):
    """A loaded checkpoint: ``model.apply(variables, ids)`` gives logits."""

    model: Decoder
    variables: dict
    config: DecoderConfig


def load_decoder(path: str | Path, dtype: Any = jnp.float32) -> LoadedDecoder:
    """Loads a Hugging Face GPT-2 / Llama / Mistral / Qwen2 checkpoint folder.

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
