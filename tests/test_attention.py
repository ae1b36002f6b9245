"""Attention extraction on linen / nnx / hand-written attention, checked against numpy softmax."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import models
from jaxinterp.attention import (
    attention_from_qk,
    attention_stats,
    attention_weights,
    head_entropy,
    layer_order,
    offset_score,
    stack_layers,
)
from jaxinterp.capture import capture


def _np_softmax_weights(q, k, mask):
    """numpy reference: softmax(q kᵀ/√d) with masked keys removed; [batch, head, q, k]."""
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    s = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    s = np.where(np.asarray(mask, bool), s, -np.inf)
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def batch():
    return models.offset_batch(jax.random.key(3), 6, 16, 16, 3)


@pytest.mark.parametrize("use_jit", [False, True])
def test_linen_weights_match_numpy_softmax_of_captured_qk(offset_tf, batch, use_jit):
    f = attention_weights(offset_tf.model, offset_tf.variables)
    f = jax.jit(f) if use_jit else f
    out, maps = f(batch.tokens)
    assert layer_order(maps) == ["block_0/attn", "block_1/attn"]
    np.testing.assert_allclose(
        out, offset_tf.model.apply(offset_tf.variables, batch.tokens), atol=1e-4
    )
    _, qk = capture(offset_tf.model, offset_tf.variables, select="block_*/attn/[qk]*")(batch.tokens)
    causal = np.tril(np.ones((16, 16), bool))[None, None]
    for i in range(2):
        ref = _np_softmax_weights(qk[f"block_{i}/attn/query"], qk[f"block_{i}/attn/key"], causal)
        assert maps[f"block_{i}/attn"].shape == (6, 4, 16, 16)
        np.testing.assert_allclose(maps[f"block_{i}/attn"], ref, atol=2e-5)


def test_nnx_weights_equal_linen(offset_tf, offset_nnx, batch):
    _, lin = jax.jit(attention_weights(offset_tf.model, offset_tf.variables))(batch.tokens)
    out, nx = jax.jit(attention_weights(offset_nnx))(batch.tokens)
    assert sorted(nx) == sorted(lin)
    for p in lin:
        np.testing.assert_allclose(nx[p], lin[p], atol=1e-5)
    ref = offset_tf.model.apply(offset_tf.variables, batch.tokens)
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("which", ["linen", "nnx"])
def test_padding_masks_respected(offset_tf, offset_nnx, batch, which):
    pad = jnp.arange(16)[None, :] < jnp.array([16, 10, 5, 16, 12, 7])[:, None]
    model, variables = (
        (offset_tf.model, offset_tf.variables) if which == "linen" else (offset_nnx, None)
    )
    _, maps = jax.jit(attention_weights(model, variables))(batch.tokens, pad)
    w = np.asarray(stack_layers(maps))  # [layer, batch, head, q, k]
    allowed = np.tril(np.ones((16, 16), bool))[None] & np.asarray(pad)[:, None, :]
    allowed = allowed[None, :, None]  # [1, batch, 1, q, k]
    real_q = np.broadcast_to(np.asarray(pad)[None, :, None, :], w.shape[:-1])
    # rows of real queries: zero on masked keys, sum to 1 over the allowed ones
    # (rows of padded queries are fully masked in this model, so Flax makes them uniform)
    np.testing.assert_array_equal(np.where(allowed, 0.0, w)[real_q], 0.0)
    np.testing.assert_allclose(w.sum(-1)[real_q], 1.0, atol=1e-5)


def test_vmap_adds_leading_axis_and_select_subset(offset_tf, batch):
    f = attention_weights(offset_tf.model, offset_tf.variables, select="block_1/*")
    toks = batch.tokens.reshape(2, 3, 16)
    _, maps = jax.jit(jax.vmap(f))(toks)
    assert list(maps) == ["block_1/attn"]
    _, flat = f(batch.tokens)
    np.testing.assert_allclose(
        maps["block_1/attn"].reshape(6, 4, 16, 16), flat["block_1/attn"], atol=1e-5
    )


def test_bad_selection_and_bad_model_raise(offset_tf, batch):
    with pytest.raises(KeyError, match="block_0/attn"):
        attention_weights(offset_tf.model, offset_tf.variables, select="nope/*")(batch.tokens)
    with pytest.raises(ValueError, match="weights_at"):
        attention_weights(offset_tf.model, offset_tf.variables, weights_at="block_0/ln_1")(
            batch.tokens
        )
    with pytest.raises(TypeError, match="variables"):
        attention_weights(offset_tf.model, None)
    with pytest.raises(ValueError, match="different shapes"):
        stack_layers({"a": jnp.zeros((1, 2, 3, 3)), "b": jnp.zeros((1, 2, 4, 4))})
    with pytest.raises(ValueError, match="empty"):
        stack_layers({})


def test_grad_flows_through_weights(offset_tf, batch):
    f = attention_weights(offset_tf.model, offset_tf.variables)
    emb = offset_tf.variables["params"]["embed"]["embedding"][batch.tokens]

    def loss(e):
        _, maps = f(batch.tokens, embeddings=e)
        return offset_score(maps["block_0/attn"], 3).sum()

    g = jax.jit(jax.grad(loss))(emb)
    assert g.shape == emb.shape and bool(jnp.isfinite(g).all()) and float(jnp.abs(g).sum()) > 0


# --------------------------------------------------------------- hand-written softmax attention


class Probs(nn.Module):
    """The softmax of a hand-written attention, as a submodule so it has a path."""

    @nn.compact
    def __call__(self, scores: jax.Array) -> jax.Array:
        return jax.nn.softmax(scores, axis=-1)


class HandAttention(nn.Module):
    heads: int = 2
    d_head: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        q = nn.DenseGeneral((self.heads, self.d_head), name="query")(x)
        k = nn.DenseGeneral((self.heads, self.d_head), name="key")(x)
        v = nn.DenseGeneral((self.heads, self.d_head), name="value")(x)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.d_head)
        s = jnp.where(pad_mask[:, None, None, :], s, -1e30)
        p = Probs(name="probs")(s)
        o = jnp.einsum("bhqk,bkhd->bqhd", p, v)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(o)


class HandModel(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        x = x + HandAttention(name="attn_0")(x, pad_mask)
        return x + HandAttention(name="attn_1")(x, pad_mask)


@pytest.fixture(scope="module")
def hand():
    model = HandModel()
    x = jax.random.normal(jax.random.key(0), (3, 5, 8))
    pad = jnp.arange(5)[None] < jnp.array([5, 3, 4])[:, None]
    return model, model.init(jax.random.key(1), x, pad), x, pad


def test_hand_written_attention_via_weights_at(hand):
    model, variables, x, pad = hand
    f = jax.jit(attention_weights(model, variables, weights_at="attn_*/probs"))
    _, maps = f(x, pad)
    _, qk = capture(model, variables, select=["attn_*/query", "attn_*/key"])(x, pad)
    for i in range(2):
        ref = _np_softmax_weights(
            qk[f"attn_{i}/query"], qk[f"attn_{i}/key"], np.asarray(pad)[:, None, None, :]
        )
        np.testing.assert_allclose(maps[f"attn_{i}/probs"], ref, atol=1e-5)
    assert stack_layers(maps).shape == (2, 3, 2, 5, 5)


def test_hand_written_attention_via_attention_from_qk(hand):
    model, variables, x, pad = hand
    _, maps = attention_weights(model, variables, weights_at="attn_*/probs")(x, pad)
    _, qk = jax.jit(capture(model, variables, select=["attn_*/query", "attn_*/key"]))(x, pad)
    mask = pad[:, None, None, :]
    for i in range(2):
        w = jax.jit(attention_from_qk)(qk[f"attn_{i}/query"], qk[f"attn_{i}/key"], mask)
        ref = _np_softmax_weights(qk[f"attn_{i}/query"], qk[f"attn_{i}/key"], np.asarray(mask))
        np.testing.assert_allclose(w, ref, atol=1e-5)
        np.testing.assert_allclose(w, maps[f"attn_{i}/probs"], atol=1e-5)
    with pytest.raises(ValueError, match="^query"):
        attention_from_qk(jnp.zeros((2, 3, 4)), jnp.zeros((2, 3, 4)))


# ------------------------------------------------------------------------------- ground truth


def test_offset_head_found_in_trained_model(offset_tf):
    """The offset-3 copy task is solved by a head that attends 3 back: find it."""
    k = offset_tf.metrics["offset"]
    assert offset_tf.metrics["task_accuracy"] > 0.95
    b = models.offset_batch(jax.random.key(7), 64, 16, 16, k)
    _, maps = jax.jit(attention_weights(offset_tf.model, offset_tf.variables))(b.tokens)
    w = stack_layers(maps)  # [layer, batch, head, q, k]
    scores = np.asarray(offset_score(w, k).mean(1))  # [layer, head]
    layer, head = np.unravel_index(scores.argmax(), scores.shape)
    assert scores[layer, head] > 0.9, scores
    # the control offsets do not score: the mechanism is specific to k
    for other in (1, 2, 4):
        assert float(offset_score(w, other).mean(1)[layer, head]) < 0.1


# ------------------------------------------------------------------------------ streaming


def test_attention_stats_equals_full_batch_mean(offset_tf):
    b = models.offset_batch(jax.random.key(11), 50, 16, 16, 3)
    toks = np.asarray(b.tokens)

    def stat(w, tokens):
        return {"offset": offset_score(w, 3), "entropy": head_entropy(w)}

    _, maps = jax.jit(attention_weights(offset_tf.model, offset_tf.variables))(b.tokens)
    w = stack_layers(maps)
    ref_off = np.asarray(offset_score(w, 3)).mean(1)
    ref_ent = np.asarray(head_entropy(w)).mean(1)
    got = attention_stats(offset_tf.model, offset_tf.variables, stat, toks, chunk_size=16)
    np.testing.assert_allclose(got["offset"], ref_off, atol=1e-5)
    np.testing.assert_allclose(got["entropy"], ref_ent, atol=1e-5)
    chunks = (toks[i : i + 7] for i in range(0, 50, 7))  # a generator, uneven chunks
    got2 = attention_stats(offset_tf.model, offset_tf.variables, stat, chunks, chunk_size=8)
    np.testing.assert_allclose(got2["offset"], ref_off, atol=1e-5)
    with pytest.raises(ValueError, match="chunk_size"):
        attention_stats(offset_tf.model, offset_tf.variables, stat, toks, chunk_size=0)
    with pytest.raises(TypeError, match="data"):
        attention_stats(offset_tf.model, offset_tf.variables, stat, [1, 2], chunk_size=4)


class DirectDPA(nn.Module):
    """Calls nn.dot_product_attention directly (no multi-head module): route 2 applies."""

    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        q = nn.DenseGeneral((2, 4), name="query")(x)
        k = nn.DenseGeneral((2, 4), name="key")(x)
        v = nn.DenseGeneral((2, 4), name="value")(x)
        o = nn.dot_product_attention(q, k, v, mask=pad_mask[:, None, None, :])
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(o)


def test_direct_dot_product_attention_via_captured_qk(hand):
    _, _, x, pad = hand
    model = DirectDPA()
    variables = model.init(jax.random.key(2), x, pad)
    out, qk = jax.jit(capture(model, variables, select=["query", "key", "value"]))(x, pad)
    w = attention_from_qk(qk["query"], qk["key"], pad[:, None, None, :])
    ref = _np_softmax_weights(qk["query"], qk["key"], np.asarray(pad)[:, None, None, :])
    np.testing.assert_allclose(w, ref, atol=1e-5)
    # the recomputed weights reproduce the model's output
    o = jnp.einsum("bhqk,bkhd->bqhd", w, qk["value"])
    p = variables["params"]["out"]
    np.testing.assert_allclose(
        jnp.einsum("bqhd,hdf->bqf", o, p["kernel"]) + p["bias"], out, atol=1e-5
    )


def test_nnx_hand_written_attention_via_weights_at(hand):
    from flax import nnx

    class NNXProbs(nnx.Module):
        def __call__(self, s: jax.Array) -> jax.Array:
            return jax.nn.softmax(s, axis=-1)

    class NNXHand(nnx.Module):
        def __init__(self, rngs: nnx.Rngs):
            self.query = nnx.LinearGeneral(8, (2, 4), rngs=rngs)
            self.key = nnx.LinearGeneral(8, (2, 4), rngs=rngs)
            self.probs = NNXProbs()

        def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
            q, k = self.query(x), self.key(x)
            s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
            return self.probs(jnp.where(pad_mask[:, None, None, :], s, -1e30))

    _, _, x, pad = hand
    model = NNXHand(nnx.Rngs(0))
    out, maps = jax.jit(attention_weights(model, weights_at="probs"))(x, pad)
    _, qk = capture(model, select=["query", "key"])(x, pad)
    ref = _np_softmax_weights(qk["query"], qk["key"], np.asarray(pad)[:, None, None, :])
    np.testing.assert_allclose(maps["probs"], ref, atol=1e-5)
    np.testing.assert_allclose(out, maps["probs"], atol=1e-6)
