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

from jaxinterp._checks import check_array, poison, value_check


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Hyperparameters of the reference transformer."""

    vocab: int = 16
    seq_len: int = 16
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2
    d_mlp: int = 128

    def __post_init__(self) -> None:
        for name in ("vocab", "seq_len", "d_model", "n_heads", "n_layers", "d_mlp"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: must divide d_model={self.d_model}, got {self.n_heads}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads


def attention_mask(tokens: jax.Array, pad_mask: jax.Array | None) -> jax.Array:
    """Causal (and padding) mask ``[batch, 1, q, k]`` for ``tokens: [batch, seq]``.

    Args:
      tokens: ``[batch, seq]`` (only the shape is used).
      pad_mask: ``[batch, seq]`` bool or 0/1, True for real tokens; ``None`` for no padding.

    Returns:
      ``[batch, 1, seq, seq]`` float mask, 1 where query ``q`` may attend to key ``k``.

    Raises:
      ValueError: ``tokens`` is not 2-D, or ``pad_mask`` has another shape.

    >>> attention_mask(jnp.zeros((1, 3)), jnp.array([[1, 1, 0]]))[0, 0].astype(int).tolist()
    [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    """
    tokens = check_array(tokens, "tokens", ndim=2)
    if pad_mask is not None:
        pad_mask = check_array(pad_mask, "pad_mask", shape=tuple(tokens.shape))
        if not (
            jnp.issubdtype(pad_mask.dtype, jnp.bool_) or jnp.issubdtype(pad_mask.dtype, jnp.integer)
        ):
            raise TypeError(f"pad_mask: expected a bool or 0/1 int array, got {pad_mask.dtype}")
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


def _check_inputs(
    cfg: TransformerConfig,
    tokens: jax.Array,
    pad_mask: jax.Array | None,
    embeddings: jax.Array | None,
) -> jax.Array | bool:
    """Checks the transformer inputs; returns ``[batch]`` "token ids in range" (or True).

    Shapes and dtypes are checked at trace time. Token ids outside ``[0, vocab)`` raise on
    concrete inputs; under ``jit`` the affected rows of the logits become NaN and the check is
    registered for :func:`jaxinterp.checked`.
    """
    shape = tuple(jnp.shape(tokens))
    if len(shape) != 2 or shape[1] > cfg.seq_len or 0 in shape:
        raise ValueError(
            f"tokens: expected [batch, seq] with 1 <= seq <= seq_len={cfg.seq_len}, got shape "
            f"{shape}"
        )
    if pad_mask is not None and tuple(jnp.shape(pad_mask)) != shape:
        raise ValueError(f"pad_mask: expected shape {shape} like tokens, got {jnp.shape(pad_mask)}")
    if embeddings is not None:
        if tuple(jnp.shape(embeddings)) != (*shape, cfg.d_model):
            raise ValueError(
                f"embeddings: expected [batch, seq, d_model] = {(*shape, cfg.d_model)}, "
                f"got {tuple(jnp.shape(embeddings))}"
            )
        if not jnp.issubdtype(jnp.result_type(embeddings), jnp.floating):
            raise TypeError(f"embeddings: expected floats, got {jnp.result_type(embeddings)}")
        return True
    if not jnp.issubdtype(jnp.result_type(tokens), jnp.integer):
        raise TypeError(f"tokens: expected integer token ids, got {jnp.result_type(tokens)}")
    in_range = (tokens >= 0) & (tokens < cfg.vocab)
    bad = (~in_range).sum()
    value_check(
        bad == 0,
        f"tokens: expected ids in [0, {cfg.vocab - 1}], got {{}} ids outside (min {{}}, max {{}})",
        bad,
        tokens.min(),
        tokens.max(),
    )
    return in_range.all(-1)


class Transformer(nn.Module):
    """Linen transformer: ``tokens [batch, seq] int -> logits [batch, seq, vocab]``.

    ``__call__(tokens, pad_mask=None, embeddings=None)``: pass ``embeddings [batch, seq, d_model]``
    instead of token ids to feed continuous inputs (soft prompts); ``tokens`` is then only used
    for its shape. Token ids outside ``[0, vocab)`` raise ``ValueError`` on concrete inputs;
    under ``jit`` the logits of those rows are NaN (never a wrapped id); see
    :func:`jaxinterp.checked`.

    >>> cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=8)
    >>> v = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> Transformer(cfg).apply(v, jnp.zeros((2, 4), jnp.int32)).shape
    (2, 4, 16)
    >>> bad = jnp.full((1, 4), 16)  # id 16 is outside a 16-token vocabulary
    >>> bool(jnp.isnan(jax.jit(Transformer(cfg).apply)(v, bad)).all())
    True
    """

    cfg: TransformerConfig = TransformerConfig()

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        pad_mask: jax.Array | None = None,
        embeddings: jax.Array | None = None,
    ) -> jax.Array:
        ok = _check_inputs(self.cfg, tokens, pad_mask, embeddings)
        embed = nn.Embed(self.cfg.vocab, self.cfg.d_model, name="embed")
        x = embed(tokens) if embeddings is None else embeddings
        x = x + _PosEmbed(self.cfg, name="pos_embed")(tokens.shape[-1])
        mask = attention_mask(tokens, pad_mask)
        for i in range(self.cfg.n_layers):
            x = _Block(self.cfg, name=f"block_{i}")(x, mask)
        x = nn.LayerNorm(name="ln_f")(x)
        logits = nn.Dense(self.cfg.vocab, name="unembed")(x)
        return logits if ok is True else poison(logits, ok)


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
    """The nnx twin of :class:`Transformer` (same paths, same maths, same input checks).

    >>> cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=8)
    >>> NNXTransformer(cfg, rngs=nnx.Rngs(0))(jnp.zeros((2, 4), jnp.int32)).shape
    (2, 4, 16)
    """

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
        ok = _check_inputs(self.cfg, tokens, pad_mask, embeddings)
        x = self.embed(tokens) if embeddings is None else embeddings
        x = x + self.pos_embed(tokens.shape[-1])
        mask = attention_mask(tokens, pad_mask)
        for i in range(self.cfg.n_layers):
            x = getattr(self, f"block_{i}")(x, mask)
        logits = self.unembed(self.ln_f(x))
        return logits if ok is True else poison(logits, ok)


def linen_to_nnx(cfg: TransformerConfig, params: dict) -> NNXTransformer:
    """Builds an :class:`NNXTransformer` holding the linen :class:`Transformer` ``params``.

    Args:
      cfg: the shared configuration.
      params: ``variables["params"]`` of the linen model.

    Returns:
      An nnx model whose forward pass equals the linen one.

    Raises:
      TypeError: ``cfg`` is not a :class:`TransformerConfig` or ``params`` not a mapping.
      KeyError: a parameter is missing from ``params`` (e.g. the whole ``variables`` dict was
        passed instead of ``variables["params"]``).
      ValueError: a parameter has the wrong shape.

    >>> cfg = TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=8)
    >>> v = Transformer(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> linen_to_nnx(cfg, v)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    KeyError: "params: missing 'block_0' (at block_0/...); pass variables['params'], not ..."
    """
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg: expected a TransformerConfig, got {type(cfg).__name__}")
    if not hasattr(params, "keys"):
        raise TypeError(f"params: expected a mapping of parameters, got {type(params).__name__}")
    model = NNXTransformer(cfg, rngs=nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    flat = dict(nnx.to_flat_state(state))
    for path, var in flat.items():
        node = params
        for part in path:
            if not hasattr(node, "keys") or str(part) not in node:
                hint = (
                    "; pass variables['params'], not the whole variables dict"
                    if "params" in params
                    else ""
                )
                raise KeyError(
                    f"params: missing {str(part)!r} (at {'/'.join(map(str, path))}){hint}"
                )
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
