"""Models written by other people: attention extraction and capture checked against their output.

Hugging Face's Flax BERT, GPT-2 and ViT (``transformers`` 4.x, random weights, small configs)
report their own attention probabilities (``output_attentions=True``) and hidden states
(``output_hidden_states=True``): :func:`attention_weights` and :func:`capture` must give the
same arrays, without touching the model's code. A Gemma-style attention (grouped-query heads,
``'BTNS'`` = ``[batch, q, head, k]`` logits, soft-capping, a sliding window, an identity
``attention_weights`` submodule, as in Google's ``gemma`` package) is checked against a numpy
computation from its captured projections.

The packages come from the ``thirdparty`` extra (``pip install -e .[thirdparty]``); they are
imported plainly so that a missing install fails loudly instead of skipping.
"""

from __future__ import annotations

import functools
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxinterp.attention import attention_weights, layer_order, stack_layers
from jaxinterp.capture import capture

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import transformers
    from transformers import (
        BertConfig,
        FlaxBertModel,
        FlaxGPT2LMHeadModel,
        FlaxViTModel,
        GPT2Config,
        ViTConfig,
    )

transformers.logging.set_verbosity_error()

# Both sides compute the same float32 ops; only XLA's fusion of the jitted version differs, a
# few ulps per op. Probabilities are in [0, 1] and come straight from one softmax: 1e-6 (about
# 8 ulps of 1) leaves ample room over the 1.5e-8 measured. Hidden states pass through ~30 ops
# per layer (matmuls, GELU, layer norms) and reach |h| ~ 4: they are compared at 64 ulps of
# their largest entry (measured: at most 4 ulps).
ATOL = 1e-6


def _hidden_tol(h) -> float:
    return 64 * float(jnp.finfo(jnp.float32).eps) * max(1.0, float(jnp.abs(h).max()))


def _hf_bert():
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    m = FlaxBertModel(cfg, seed=0)
    ids = jax.random.randint(jax.random.key(0), (2, 7), 0, 64)
    mask = jnp.array([[1] * 7, [1] * 4 + [0] * 3])
    ref = m(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    args = (ids, mask, jnp.zeros_like(ids), jnp.broadcast_to(jnp.arange(7), ids.shape), None)
    layers = [f"encoder/layer/{i}" for i in range(2)]
    return m, args, ref, ["embeddings", *layers], [f"{p}/attention/self" for p in layers]


def _hf_gpt2():
    cfg = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    m = FlaxGPT2LMHeadModel(cfg, seed=0)
    ids = jax.random.randint(jax.random.key(1), (2, 7), 0, 64)
    mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
    ref = m(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    args = (ids, mask, jnp.broadcast_to(jnp.arange(7), ids.shape))
    # GPT-2's hidden states are the inputs of the blocks, then the final layer norm's output
    hidden = ["transformer/dropout", "transformer/h/0", "transformer/ln_f"]
    return m, args, ref, hidden, [f"transformer/h/{i}/attn" for i in range(2)]


def _hf_vit():
    cfg = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
    )
    m = FlaxViTModel(cfg, seed=0)
    px = jax.random.normal(jax.random.key(2), (2, 3, 8, 8))  # the wrapper takes NCHW
    ref = m(px, output_attentions=True, output_hidden_states=True)
    args = (jnp.transpose(px, (0, 2, 3, 1)),)  # the module takes NHWC
    layers = [f"encoder/layer/{i}" for i in range(2)]
    return m, args, ref, ["embeddings", *layers], [f"{p}/attention/attention" for p in layers]


@functools.cache
def _hf(name: str):
    return {"bert": _hf_bert, "gpt2": _hf_gpt2, "vit": _hf_vit}[name]()


NAMES = [("bert", "bert"), ("gpt2", "gpt2"), ("vit", "vit")]


def _first(x):
    """HF layers return tuples ``(hidden, ...)``; other modules return the array."""
    return x[0] if isinstance(x, tuple) else x


class TestHuggingFace(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMES)
    def test_attention_weights_equal_output_attentions(self, name):
        m, args, ref, _, attn_paths = _hf(name)
        f = self.variant(attention_weights(m.module, {"params": m.params}))
        _, maps = f(*args)
        assert layer_order(maps) == attn_paths
        got = stack_layers(maps)
        want = jnp.stack(ref.attentions)
        assert got.shape == want.shape  # [layer, batch, head, q, k]
        diff = float(jnp.abs(got - want).max())
        assert diff <= ATOL, diff

    @parameterized.named_parameters(*NAMES)
    def test_weights_are_the_arrays_of_the_same_forward(self, name):
        # asked for its attentions in the same call, the model returns the recorded arrays
        m, args, _, _, attn_paths = _hf(name)
        f = jax.jit(
            lambda *a: attention_weights(m.module, {"params": m.params})(*a, output_attentions=True)
        )
        out, maps = f(*args)
        for i, p in enumerate(attn_paths):
            np.testing.assert_array_equal(maps[p], out.attentions[i])

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*NAMES)
    def test_capture_equals_output_hidden_states(self, name):
        m, args, ref, hidden_paths, _ = _hf(name)
        f = self.variant(capture(m.module, {"params": m.params}, select=hidden_paths))
        out, acts = f(*args)
        assert len(ref.hidden_states) == len(hidden_paths)
        for p, h in zip(hidden_paths, ref.hidden_states):
            diff = float(jnp.abs(_first(acts[p]) - h).max())
            assert diff <= _hidden_tol(h), (p, diff)
        last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits
        want = ref.last_hidden_state if hasattr(ref, "last_hidden_state") else ref.logits
        assert float(jnp.abs(last - want).max()) <= _hidden_tol(want)


def test_padded_keys_get_zero_weight_bert():
    m, args, _, _, _ = _hf("bert")
    _, maps = jax.jit(attention_weights(m.module, {"params": m.params}))(*args)
    w = np.asarray(stack_layers(maps))  # [layer, batch, head, q, k]
    keys = np.asarray(args[1], bool)[None, :, None, None, :]
    np.testing.assert_array_equal(np.where(keys, 0.0, w), 0.0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)


# ------------------------------------------------------ Gemma-style attention ('BTNS' layout)

K_MASK = -2.3819763e38  # gemma's mask value


class Einsum(nn.Module):
    """Gemma's projection: called as ``Einsum(shape)(eqn, x)`` (a string first argument)."""

    shape: tuple[int, ...]

    @nn.compact
    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        w = self.param("w", nn.initializers.normal(0.5), self.shape)
        return jnp.einsum(eqn, x, w)


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class GemmaAttention(nn.Module):
    """Gemma's Attention: q/kv einsums, GQA, soft-capped ``'BTNS'`` logits, sliding window."""

    num_heads: int = 4
    num_kv_heads: int = 2
    features: int = 8
    head_dim: int = 4
    soft_cap: float = 5.0
    window: int = 3

    def setup(self):
        self.q_einsum = Einsum((self.num_heads, self.features, self.head_dim))
        self.kv_einsum = Einsum((2, self.num_kv_heads, self.features, self.head_dim))
        self.attn_vec_einsum = Einsum((self.num_heads, self.head_dim, self.features))
        self.attention_weights = Identity()

    def __call__(self, x, kv_x, q_pos, kv_pos, attn_mask):
        q = self.q_einsum("BTD,NDH->BTNH", x) * self.head_dim**-0.5
        k, v = self.kv_einsum("BSD,CKDH->CBSKH", kv_x)
        b, t, n, h = q.shape
        g = n // self.num_kv_heads
        logits = jnp.einsum("BTKGH,BSKH->BTKGS", q.reshape(b, t, self.num_kv_heads, g, h), k)
        logits = logits.reshape(b, t, n, -1)
        logits = jnp.tanh(logits / self.soft_cap) * self.soft_cap
        near = jnp.abs(q_pos[:, :, None] - kv_pos[:, None, :]) < self.window
        mask = attn_mask & near
        probs = jax.nn.softmax(jnp.where(mask[:, :, None, :], logits, K_MASK), axis=-1)
        probs = self.attention_weights(probs)
        enc = jnp.einsum("BTKGS,BSKH->BTKGH", probs.reshape(b, t, self.num_kv_heads, g, -1), v)
        return (None, self.attn_vec_einsum("BTNH,NHD->BTD", enc.reshape(b, t, n, h)))


class GemmaStack(nn.Module):
    @nn.compact
    def __call__(self, x, kv_x, q_pos, kv_pos, attn_mask):
        for i in range(2):
            _, y = GemmaAttention(name=f"layer_{i}")(x, kv_x, q_pos, kv_pos, attn_mask)
            x, kv_x = (
                x + y,
                kv_x
                + GemmaAttention(name=f"kv_{i}")(
                    kv_x, kv_x, kv_pos, kv_pos, attn_mask[:, -1:].repeat(kv_x.shape[1], 1)
                )[1],
            )
        return x


def _np_gemma_probs(q, kv, q_pos, kv_pos, attn_mask, cfg):
    """numpy reference from the captured projections: [batch, head, q, k]."""
    q = np.asarray(q, np.float64) * cfg.head_dim**-0.5
    k = np.asarray(kv[0], np.float64)
    k = np.repeat(k, cfg.num_heads // cfg.num_kv_heads, axis=2)  # kv head of query head n
    logits = np.einsum("btnh,bsnh->bnts", q, k)
    logits = np.tanh(logits / cfg.soft_cap) * cfg.soft_cap
    near = np.abs(np.asarray(q_pos)[:, :, None] - np.asarray(kv_pos)[:, None, :]) < cfg.window
    mask = (np.asarray(attn_mask) & near)[:, None]
    logits = np.where(mask, logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def gemma():
    """Two decode-like query positions over six cached keys (q != k), one padded sequence."""
    kv_x = jax.random.normal(jax.random.key(0), (2, 6, 8))
    x = kv_x[:, -2:]
    kv_pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    q_pos = kv_pos[:, -2:]
    valid = jnp.array([[1] * 6, [0] * 1 + [1] * 5], bool)  # left padding in example 1
    attn_mask = (kv_pos[:, None, :] <= q_pos[:, :, None]) & valid[:, None, :]
    model = GemmaStack()
    args = (x, kv_x, q_pos, kv_pos, attn_mask)
    return model, model.init(jax.random.key(1), *args), args


class TestGemmaStyle(chex.TestCase):
    @pytest.fixture(autouse=True)
    def _model(self, gemma):
        self.gemma = gemma

    @chex.variants(with_jit=True, without_jit=True)
    def test_default_path_normalises_bqhk_layout(self):
        model, variables, args = self.gemma
        out, maps = self.variant(attention_weights(model, variables, select="layer_*"))(*args)
        np.testing.assert_allclose(out, model.apply(variables, *args), atol=1e-6)
        assert layer_order(maps) == ["layer_0", "layer_1"]
        sel = ["layer_*/q_einsum", "layer_*/kv_einsum"]
        _, proj = capture(model, variables, select=sel)(*args)
        x, kv_x, q_pos, kv_pos, attn_mask = args
        for i in range(2):
            q, kv = proj[f"layer_{i}/q_einsum"], proj[f"layer_{i}/kv_einsum"]
            ref = _np_gemma_probs(q, kv, q_pos, kv_pos, attn_mask, GemmaAttention())
            assert maps[f"layer_{i}"].shape == (2, 4, 2, 6)  # [batch, head, q, k]
            np.testing.assert_allclose(maps[f"layer_{i}"], ref, atol=1e-6)

    def test_weights_at_identity_submodule_equals_default(self):
        model, variables, args = self.gemma
        _, dflt = jax.jit(attention_weights(model, variables))(*args)
        f = attention_weights(model, variables, weights_at="**/attention_weights")
        _, at = jax.jit(f)(*args)
        assert len(at) == len(dflt) == 4  # layer_i and kv_i, each once (no double record)
        for p in dflt:
            np.testing.assert_array_equal(at[f"{p}/attention_weights"], dflt[p])

    def test_self_attention_square_maps(self):
        model, variables, args = self.gemma
        _, maps = jax.jit(attention_weights(model, variables, select="kv_*"))(*args)
        w = np.asarray(stack_layers(maps))
        assert w.shape == (2, 2, 4, 6, 6)
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
        near = np.abs(np.arange(6)[:, None] - np.arange(6)[None]) < GemmaAttention.window
        assert (w[..., ~near] == 0).all()  # the sliding window is respected


def test_gpt2_soft_prompt_as_the_readme_writes_it():
    """Issue 20: ``soft_prompt(table, seq_len, site="transformer/wte")`` on HF GPT-2, as the
    README writes it, with nothing else: the module's call requires ``attention_mask`` and
    ``position_ids``, which ``maximize`` fills in as the HF wrapper does for ``None``. Started
    at the embeddings of real tokens, the first trace value (before any step) is the model's
    own logit for those tokens; the ascent then raises it."""
    import optax

    from jaxinterp import actmax

    m = _hf("gpt2")[0]
    table = m.params["transformer"]["wte"]["embedding"]
    ids, pos, targets = jnp.array([[5, 17, 3, 40, 9]]), 3, jnp.array([7, 21])
    res = actmax.maximize(
        jax.random.key(0),
        m.module,
        {"params": m.params},
        lambda t: actmax.class_logit(t, position=(pos,)),
        targets,
        param=actmax.soft_prompt(table, 5, site="transformer/wte"),
        init=jnp.broadcast_to(table[ids], (2, 1, 5, 16)),
        optimizer=optax.adam(0.1),
        steps=10,
    )
    own = m(ids).logits[0, pos, targets]  # the wrapper's own forward on the tokens
    np.testing.assert_allclose(res.traces[:, 0], own, rtol=1e-5, atol=1e-5)
    assert bool((res.traces[:, -1] > res.traces[:, 0] + 0.1).all()), res.traces[:, [0, -1]]
