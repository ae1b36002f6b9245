"""Attention extraction on linen / nnx / hand-written attention, checked against numpy softmax."""

from __future__ import annotations

import chex
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


def test_attention_stats_with_weights_at_records_only_those_modules(hand):
    """weights_at= alone records no other softmax (attn_1's is left out), as attention_weights."""
    model, variables, x, pad = hand
    stat = lambda w, *inputs: {"entropy": head_entropy(w)}  # w: [layer, batch, head, q, k]
    got = attention_stats(model, variables, stat, [x, pad], chunk_size=3, weights_at="attn_0/probs")
    _, maps = attention_weights(model, variables, weights_at="attn_0/probs")(x, pad)
    assert list(maps) == ["attn_0/probs"]
    ref = np.asarray(head_entropy(stack_layers(maps))).mean(1)  # [layer, head]
    assert np.asarray(got["entropy"]).shape == ref.shape == (1, 2)
    np.testing.assert_allclose(got["entropy"], ref, atol=1e-5)


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


# ------------------------------------------------- the default path: softmax calls are recorded


class InlineAttention(nn.Module):
    """Hand-written attention with the softmax inline (no submodule): [batch, head, q, k]."""

    num_heads: int = 2
    d_head: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        q = nn.DenseGeneral((self.num_heads, self.d_head), name="query")(x)
        k = nn.DenseGeneral((self.num_heads, self.d_head), name="key")(x)
        v = nn.DenseGeneral((self.num_heads, self.d_head), name="value")(x)
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(self.d_head)
        p = jax.nn.softmax(jnp.where(pad_mask[:, None, None, :], s, -1e30), axis=-1)
        o = jnp.einsum("bhqk,bkhd->bqhd", p, v)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(o)


class GemmaStyleAttention(nn.Module):
    """Gemma's layout: logits 'BTNS' = [batch, q, head, k], softmax over the last axis."""

    num_heads: int = 2
    d_head: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        q = nn.DenseGeneral((self.num_heads, self.d_head), name="query")(x)
        k = nn.DenseGeneral((self.num_heads, self.d_head), name="key")(x)
        v = nn.DenseGeneral((self.num_heads, self.d_head), name="value")(x)
        logits = jnp.einsum("BTNH,BSNH->BTNS", q, k) / jnp.sqrt(self.d_head)
        logits = jnp.where(pad_mask[:, None, None, :], logits, -1e30)
        p = jax.nn.softmax(logits, axis=-1)
        o = jnp.einsum("BTNS,BSNH->BTNH", p, v)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(o)


class TwoLayer(nn.Module):
    layer: type = InlineAttention
    num_heads: int = 2

    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        for i in range(2):
            x = x + self.layer(num_heads=self.num_heads, name=f"layer_{i}")(x, pad_mask)
        return jax.nn.softmax(x, axis=-1)  # a 3-D softmax in the root: never recorded


def _two_layer(layer, heads=2):
    model = TwoLayer(layer=layer, num_heads=heads)
    x = jax.random.normal(jax.random.key(0), (3, 5, 8))
    pad = jnp.arange(5)[None] < jnp.array([5, 3, 4])[:, None]
    return model, model.init(jax.random.key(1), x, pad), x, pad


class TestSoftmaxRecording(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_inline_and_gemma_layouts_match_numpy(self):
        for layer in (InlineAttention, GemmaStyleAttention):
            model, variables, x, pad = _two_layer(layer)
            out, maps = self.variant(attention_weights(model, variables))(x, pad)
            np.testing.assert_allclose(out, model.apply(variables, x, pad), atol=1e-6)
            _, qk = capture(model, variables, select="layer_*/[qk]*")(x, pad)
            assert sorted(maps) == ["layer_0", "layer_1"], (layer, sorted(maps))
            for i in range(2):
                ref = _np_softmax_weights(
                    qk[f"layer_{i}/query"], qk[f"layer_{i}/key"], np.asarray(pad)[:, None, None]
                )
                assert maps[f"layer_{i}"].shape == (3, 2, 5, 5)  # [batch, head, q, k]
                np.testing.assert_allclose(maps[f"layer_{i}"], ref, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_submodule_softmax_recorded_by_default(self):
        model = HandModel()
        x = jax.random.normal(jax.random.key(0), (3, 5, 8))
        pad = jnp.arange(5)[None] < jnp.array([5, 3, 4])[:, None]
        variables = model.init(jax.random.key(1), x, pad)
        _, maps = self.variant(attention_weights(model, variables))(x, pad)
        _, ref = attention_weights(model, variables, weights_at="attn_*/probs")(x, pad)
        assert sorted(maps) == sorted(ref) == ["attn_0/probs", "attn_1/probs"]
        for p in maps:
            np.testing.assert_allclose(maps[p], ref[p], atol=1e-7)

    def test_layout_ambiguous_raises_then_explicit_layout_works(self):
        # 5 heads and 5 tokens: [batch, 5, 5, k] fits both layouts
        model, variables, x, pad = _two_layer(GemmaStyleAttention, heads=5)
        with pytest.raises(ValueError, match="^layout: cannot tell.*layout='bqhk'"):
            attention_weights(model, variables)(x, pad)
        _, maps = jax.jit(attention_weights(model, variables, layout="bqhk"))(x, pad)
        _, qk = capture(model, variables, select="layer_0/[qk]*")(x, pad)
        ref = _np_softmax_weights(qk["layer_0/query"], qk["layer_0/key"], pad[:, None, None])
        np.testing.assert_allclose(maps["layer_0"], ref, atol=1e-6)
        # the wrong explicit layout is taken as asked: it transposes head and q
        _, wrong = attention_weights(model, variables, layout="bhqk")(x, pad)
        np.testing.assert_allclose(wrong["layer_0"], np.swapaxes(ref, 1, 2), atol=1e-6)

    def test_nnx_gemma_style_and_builtin(self):
        from flax import nnx

        class Attn(nnx.Module):
            def __init__(self, rngs):
                self.num_heads = 3
                self.query = nnx.LinearGeneral(8, (3, 4), rngs=rngs)
                self.key = nnx.LinearGeneral(8, (3, 4), rngs=rngs)

            def __call__(self, x):
                s = jnp.einsum("BTNH,BSNH->BTNS", self.query(x), self.key(x)) / 2.0
                return jnp.einsum("BTNS,BSD->BTD", jax.nn.softmax(s, axis=-1), x)

        class Net(nnx.Module):
            def __init__(self, rngs):
                self.attn = Attn(rngs)
                self.mha = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)

            def __call__(self, x):
                return self.mha(x + self.attn(x))

        model = Net(nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(2), (2, 6, 8))
        out, maps = jax.jit(attention_weights(model))(x)
        np.testing.assert_allclose(out, model(x), atol=1e-6)
        _, qk = capture(model, select=["attn/query", "attn/key"])(x)
        s = np.einsum("bqhd,bkhd->bhqk", qk["attn/query"], qk["attn/key"]) / 2.0
        e = np.exp(s - s.max(-1, keepdims=True))
        np.testing.assert_allclose(maps["attn"], e / e.sum(-1, keepdims=True), atol=1e-6)
        assert maps["mha"].shape == (2, 2, 6, 6)
        np.testing.assert_allclose(np.asarray(maps["mha"]).sum(-1), 1.0, atol=1e-6)

    def test_softmax_restored_and_untouched_elsewhere(self):
        model, variables, x, pad = _two_layer(InlineAttention)
        orig = jax.nn.softmax
        attention_weights(model, variables)(x, pad)
        assert jax.nn.softmax is orig and nn.softmax is orig
        with pytest.raises(KeyError):
            attention_weights(model, variables, select="nope")(x, pad)
        assert jax.nn.softmax is orig

    def test_softmax_in_other_thread_not_recorded(self):
        import threading

        model, variables, x, pad = _two_layer(InlineAttention)
        started, release = threading.Event(), threading.Event()
        results = {}

        class Slow(InlineAttention):
            @nn.compact
            def __call__(self, x, pad_mask):
                y = super().__call__(x, pad_mask)
                parked = threading.current_thread() is not threading.main_thread()
                if parked and self.name == "layer_0":  # park the thread in its forward pass
                    started.set()
                    assert release.wait(30)
                return y

        slow, slow_vars, _, _ = _two_layer(Slow)
        t = threading.Thread(
            target=lambda: results.setdefault("maps", attention_weights(slow, slow_vars)(x, pad))
        )
        t.start()
        assert started.wait(30)
        # while the other thread's recorder is active, softmax here is plain
        np.testing.assert_allclose(jax.nn.softmax(jnp.zeros(4)), 0.25)
        _, mine = attention_weights(model, variables)(x, pad)
        release.set()
        t.join(30)
        assert sorted(mine) == ["layer_0", "layer_1"]
        assert sorted(results["maps"][1]) == ["layer_0", "layer_1"]


class TestWeightsAtChecks(chex.TestCase):
    def _scores_model(self):
        class Scores(nn.Module):
            @nn.compact
            def __call__(self, s):
                return s

        class M(nn.Module):
            @nn.compact
            def __call__(self, x):
                s = jnp.einsum("bqd,bkd->bqk", x, x)[:, None]  # [batch, 1, q, k] raw scores
                s = Scores(name="scores")(s)
                return jax.nn.softmax(s, axis=-1)

        x = jax.random.normal(jax.random.key(0), (2, 4, 3))
        return M(), x

    def test_rows_not_probabilities_raise_eagerly_and_nan_under_jit(self):
        import jaxinterp

        model, x = self._scores_model()
        variables = model.init(jax.random.key(0), x)
        with pytest.raises(ValueError, match="^weights_at: module 'scores' output is not"):
            attention_weights(model, variables, weights_at="scores")(x)
        _, maps = jax.jit(attention_weights(model, variables, weights_at="scores"))(x)
        assert bool(jnp.isnan(maps["scores"]).all())
        with pytest.raises(ValueError, match="^weights_at: module 'scores' output is not"):
            jaxinterp.checked(attention_weights(model, variables, weights_at="scores"))(x)

    def test_row_tolerance_accepts_real_softmax_rows(self):
        from jaxinterp.attention._extract import _check_rows

        for dtype, k in ((jnp.float32, 7), (jnp.float32, 300), (jnp.bfloat16, 64)):
            s = jax.random.normal(jax.random.key(k), (2, 3, 5, k)) * 10
            w = jax.nn.softmax(s.astype(dtype), axis=-1)
            np.testing.assert_array_equal(_check_rows("p", w), w)


# ------------------------------------------- fused jax.nn.dot_product_attention (no softmax seen)


class FusedGQA(nn.Module):
    """jax.nn.dot_product_attention with 4 query heads on 2 kv heads, causal, local window."""

    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        q = nn.DenseGeneral((4, 4), name="query")(x)
        k = nn.DenseGeneral((2, 4), name="key")(x)
        v = nn.DenseGeneral((2, 4), name="value")(x)
        o = jax.nn.dot_product_attention(
            q, k, v, mask=pad_mask[:, None, None, :], is_causal=True, local_window_size=(2, 0)
        )
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(o)


class FusedNet(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, pad_mask: jax.Array) -> jax.Array:
        return FusedGQA(name="attn")(x, pad_mask)


class TestFusedAttention(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_gqa_causal_window_match_numpy_and_reproduce_output(self):
        model = FusedNet()
        x = jax.random.normal(jax.random.key(0), (2, 6, 8))
        pad = jnp.arange(6)[None] < jnp.array([6, 4])[:, None]
        variables = model.init(jax.random.key(1), x, pad)
        out, maps = self.variant(attention_weights(model, variables))(x, pad)
        _, acts = capture(model, variables, select="attn/*")(x, pad)
        q = np.asarray(acts["attn/query"], np.float64)
        k = np.repeat(np.asarray(acts["attn/key"], np.float64), 2, axis=2)  # head n uses kv n // 2
        s = np.einsum("bqhd,bkhd->bhqk", q, k) / 2.0
        qi, ki = np.arange(6)[:, None], np.arange(6)[None]
        allowed = (ki <= qi) & (ki >= qi - 2) & np.asarray(pad)[:, None, None, :]
        e = np.exp(np.where(allowed, s, -np.inf) - np.where(allowed, s, -np.inf).max(-1)[..., None])
        ref = e / e.sum(-1, keepdims=True)
        assert list(maps) == ["attn"]
        w = maps["attn"]
        assert w.shape == (2, 4, 6, 6)
        np.testing.assert_allclose(w, ref, atol=1e-6)
        # the weights are the ones the model used: they reproduce its output
        vv = np.repeat(np.asarray(acts["attn/value"]), 2, axis=2)
        p = variables["params"]["attn"]["out"]
        o = np.einsum("bhqk,bkhd->bqhd", np.asarray(w), vv)
        np.testing.assert_allclose(
            np.einsum("bqhd,hdf->bqf", o, p["kernel"]) + p["bias"], out, atol=1e-5
        )

    def test_nnx_module_calling_dot_product_attention_directly(self):
        from flax import nnx

        class Attn(nnx.Module):
            def __init__(self, rngs):
                self.query = nnx.LinearGeneral(8, (2, 4), rngs=rngs)
                self.key = nnx.LinearGeneral(8, (2, 4), rngs=rngs)
                self.value = nnx.LinearGeneral(8, (2, 4), rngs=rngs)

            def __call__(self, x, mask):
                q, k, v = self.query(x), self.key(x), self.value(x)
                return nnx.dot_product_attention(q, k, v, mask=mask).reshape(x.shape)

        class Net(nnx.Module):
            def __init__(self, rngs):
                self.attn = Attn(rngs)

            def __call__(self, x, mask):
                return self.attn(x, mask)

        model = Net(nnx.Rngs(0))
        x = jax.random.normal(jax.random.key(3), (2, 5, 8))
        pad = jnp.arange(5)[None] < jnp.array([5, 2])[:, None]
        out, maps = jax.jit(attention_weights(model))(x, pad[:, None, None, :])
        np.testing.assert_allclose(out, model(x, pad[:, None, None, :]), atol=1e-6)
        _, qk = capture(model, select=["attn/query", "attn/key"])(x, pad[:, None, None, :])
        ref = _np_softmax_weights(qk["attn/query"], qk["attn/key"], np.asarray(pad)[:, None, None])
        np.testing.assert_allclose(maps["attn"], ref, atol=1e-6)
