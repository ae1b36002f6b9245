"""A small decoder-only transformer, written twice (linen and nnx) with the same paths.

Both versions are built on Flax's own attention modules (``nn.MultiHeadDotProductAttention`` and
``nnx.MultiHeadAttention``), so the attention extraction in :mod:`jaxinterp.attention` works on
them exactly as on a user's model. Canonical paths, identical in the two APIs:

=====================  =========================================================
``embed``              token embedding, ``[batch, seq, d_model]``
``pos_embed``          learned position embedding, ``[1, seq, d_model]``
``block_{i}/ln_1``     pre-attention LayerNorm
``block_{i}/attn``     attention output (after the ``out`` projection)
``block_{i}/attn/out`` output projection; its *input* is the per-head result
                       ``[batch, seq, head, d_head]`` (used for per-head interventions)
``block_{i}/ln_2``     pre-MLP LayerNorm
``block_{i}/mlp``      MLP output; ``block_{i}/mlp/act`` its hidden units
``block_{i}``          residual stream after the block, ``[batch, seq, d_model]``
``ln_f``, ``unembed``  final LayerNorm and logits ``[batch, seq, vocab]``
=====================  =========================================================

The models are causal. ``pad_mask: [batch, seq]`` (True for real tokens) additionally masks
padded keys. :func:`linen_to_nnx` copies trained linen parameters into the nnx model.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of the reference transformer."""

    vocab: int = 16
    seq_len: int = 16
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_mlp: int = 128

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


def attention_mask(tokens: jax.Array, pad_mask: jax.Array | None) -> jax.Array:
    """Causal (and padding) mask ``[batch, 1, q, k]`` for ``tokens: [batch, seq]``."""
    mask = nn.make_causal_mask(tokens)
    if pad_mask is not None:
        mask = nn.combine_masks(mask, nn.make_attention_mask(pad_mask, pad_mask))
    return mask


class GELU(nn.Module):
    """GELU as a module, so MLP hidden units have a path (``block_i/mlp/act``)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.gelu(x)


class _MLP(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = GELU(name="act")(nn.Dense(self.cfg.d_mlp, name="fc_in")(x))
        return nn.Dense(self.cfg.d_model, name="fc_out")(h)


class _Block(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = nn.LayerNorm(name="ln_1")(x)
        h = nn.MultiHeadDotProductAttention(
            num_heads=self.cfg.n_heads, qkv_features=self.cfg.d_model, name="attn"
        )(h, h, mask=mask)
        x = x + h
        return x + _MLP(self.cfg, name="mlp")(nn.LayerNorm(name="ln_2")(x))


class _PosEmbed(nn.Module):
    cfg: TransformerConfig

    @nn.compact
    def __call__(self, seq: int) -> jax.Array:
        table = self.param(
            "embedding", nn.initializers.normal(0.02), (self.cfg.seq_len, self.cfg.d_model)
        )
        return table[None, :seq]


def _check_inputs(cfg: TransformerConfig, tokens: jax.Array, embeddings: jax.Array | None) -> None:
    """Trace-time checks of the transformer inputs (shapes are static)."""
    shape = tuple(jnp.shape(tokens))
    if len(shape) != 2 or shape[1] > cfg.seq_len:
        raise ValueError(
            f"tokens: expected [batch, seq] with seq <= seq_len={cfg.seq_len}, got shape {shape}"
        )
    if embeddings is None:
        if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
            raise TypeError(f"tokens: expected integer token ids, got {jnp.result_type(tokens)}")
    elif tuple(jnp.shape(embeddings)) != (*shape, cfg.d_model):
        raise ValueError(
            f"embeddings: expected [batch, seq, d_model] = {(*shape, cfg.d_model)}, "
            f"got {tuple(jnp.shape(embeddings))}"
        )


class Transformer(nn.Module):
    """Linen transformer: ``tokens [batch, seq] int -> logits [batch, seq, vocab]``.

    ``__call__(tokens, pad_mask=None, embeddings=None)``: pass ``embeddings [batch, seq, d_model]``
    instead of token ids to feed continuous inputs (soft prompts); ``tokens`` is then only used
    for its shape.
    """

    cfg: TransformerConfig = TransformerConfig()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        pad_mask: jax.Array | None = None,
        embeddings: jax.Array | None = None,
    ) -> jax.Array:
        _check_inputs(self.cfg, tokens, embeddings)
        embed = nn.Embed(self.cfg.vocab, self.cfg.d_model, name="embed")
        x = embed(tokens) if embeddings is None else embeddings
        x = x + _PosEmbed(self.cfg, name="pos_embed")(tokens.shape[-1])
        mask = attention_mask(tokens, pad_mask)
        for i in range(self.cfg.n_layers):
            x = _Block(self.cfg, name=f"block_{i}")(x, mask)
        x = nn.LayerNorm(name="ln_f")(x)
        return nn.Dense(self.cfg.vocab, name="unembed")(x)


# ----------------------------------------------------------------------------------------- nnx


class NNXGELU(nnx.Module):
    """GELU as an nnx module."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return nnx.gelu(x)


class _NNXMLP(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.fc_in = nnx.Linear(cfg.d_model, cfg.d_mlp, rngs=rngs)
        self.act = NNXGELU()
        self.fc_out = nnx.Linear(cfg.d_mlp, cfg.d_model, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc_out(self.act(self.fc_in(x)))


class _NNXBlock(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.ln_1 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=cfg.n_heads,
            in_features=cfg.d_model,
            qkv_features=cfg.d_model,
            decode=False,
            rngs=rngs,
        )
        self.ln_2 = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.mlp = _NNXMLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = self.ln_1(x)
        x = x + self.attn(h, h, mask=mask)
        return x + self.mlp(self.ln_2(x))


class _NNXPosEmbed(nnx.Module):
    def __init__(self, cfg: TransformerConfig, *, rngs: nnx.Rngs):
        self.embedding = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (cfg.seq_len, cfg.d_model))
        )

    def __call__(self, seq: int) -> jax.Array:
        return self.embedding[None, :seq]


class NNXTransformer(nnx.Module):
    """The nnx twin of :class:`Transformer` (same paths, same maths)."""

    def __init__(self, cfg: TransformerConfig = TransformerConfig(), *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = nnx.Embed(cfg.vocab, cfg.d_model, rngs=rngs)
        self.pos_embed = _NNXPosEmbed(cfg, rngs=rngs)
        for i in range(cfg.n_layers):
            setattr(self, f"block_{i}", _NNXBlock(cfg, rngs=rngs))
        self.ln_f = nnx.LayerNorm(cfg.d_model, rngs=rngs)
        self.unembed = nnx.Linear(cfg.d_model, cfg.vocab, rngs=rngs)

    def __call__(
        self,
        tokens: jax.Array,
        pad_mask: jax.Array | None = None,
        embeddings: jax.Array | None = None,
    ) -> jax.Array:
        _check_inputs(self.cfg, tokens, embeddings)
        x = self.embed(tokens) if embeddings is None else embeddings
        x = x + self.pos_embed(tokens.shape[-1])
        mask = attention_mask(tokens, pad_mask)
        for i in range(self.cfg.n_layers):
            x = getattr(self, f"block_{i}")(x, mask)
        return self.unembed(self.ln_f(x))


def linen_to_nnx(cfg: TransformerConfig, params: dict) -> NNXTransformer:
    """Builds an :class:`NNXTransformer` holding the linen :class:`Transformer` ``params``.

    Args:
      cfg: the shared configuration.
      params: ``variables["params"]`` of the linen model.

    Returns:
      An nnx model whose forward pass equals the linen one.
    """
    model = NNXTransformer(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        node = params
        for part in path:
            node = node[str(part)]
        value = jnp.asarray(node)
        if value.shape != var.get_value().shape:
            raise ValueError(
                f"params: {'/'.join(map(str, path))} has shape {value.shape}, "
                f"expected {var.get_value().shape}"
            )
        var.set_value(value)
    nnx.update(model, state)
    return model
