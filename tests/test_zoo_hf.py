"""Hugging Face Flax models beyond BERT/GPT-2/ViT, built from ``transformers`` 4.x (random init).

* **ResNet** (``FlaxResNetModel``): BatchNorm with running statistics and a ``deterministic``
  flag. Captured in eval mode, the stage outputs equal the model's ``output_hidden_states``; in
  training mode the update of the immutable ``batch_stats`` is reported as an error that names
  eval mode. ``layer_features``, a patch sweep and attribution patching over whole stages.
* **BERT with gradient checkpointing** (``nn.remat`` around every layer): attention equals
  ``output_attentions``; head ablation on the merged ``[batch, seq, head·d_head]`` input of the
  output projection equals zeroing that head's rows of the projection kernel.
* **Llama** (hand-written attention with rotary embeddings and grouped-query heads): attention
  equals ``output_attentions``, head ablation equals zeroing weights, patch sweep, attribution
  patching, ``layer_features`` against ``output_hidden_states``.

A whole-layer patch of the clean residual stream into the corrupted run reproduces the clean
run downstream, so its normalized effect is exactly 1; where the metric is linear in the
patched activation, attribution patching is exact too.
"""

from __future__ import annotations

import functools
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.attention import attention_weights, stack_layers
from jaxinterp.capture import capture
from jaxinterp.interventions import attribution_patch, intervene, patch_sweep, site_grid, zero
from jaxinterp.probes import layer_features

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import transformers
    from transformers import (
        BertConfig,
        FlaxBertModel,
        FlaxLlamaForCausalLM,
        FlaxResNetModel,
        LlamaConfig,
        ResNetConfig,
    )

transformers.logging.set_verbosity_error()

# Same float32 ops on both sides, only XLA's fusion differs: probabilities (one softmax, in
# [0, 1]) to 1e-6; activations after a few dozen ops per layer to 64 ulps of their largest entry.
ATOL = 1e-6


def _tol(h) -> float:
    return 64 * float(jnp.finfo(jnp.float32).eps) * max(1.0, float(jnp.abs(h).max()))


def _close(a, b):
    b = np.asarray(b)
    np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=_tol(b))


# --------------------------------------------------------------------------------- builders


@functools.cache
def _resnet():
    cfg = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    )
    m = FlaxResNetModel(cfg, seed=0)
    px = jax.random.normal(jax.random.key(0), (4, 3, 16, 16))  # the wrapper takes NCHW
    ref = m(px, output_hidden_states=True)
    # m.params holds both collections: {"params": ..., "batch_stats": ...}
    return m.module, dict(m.params), jnp.transpose(px, (0, 2, 3, 1)), ref


@functools.cache
def _bert_remat():
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    m = FlaxBertModel(cfg, seed=0, gradient_checkpointing=True)
    ids = jax.random.randint(jax.random.key(1), (2, 6), 0, 64)
    mask = jnp.array([[1] * 6, [1] * 4 + [0] * 2])
    ref = m(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    args = (ids, mask, jnp.zeros_like(ids), jnp.broadcast_to(jnp.arange(6), ids.shape))
    return m.module, {"params": m.params}, args, ref


@functools.cache
def _llama():
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    m = FlaxLlamaForCausalLM(cfg, seed=0)
    ids = jax.random.randint(jax.random.key(2), (2, 6), 0, 64)
    mask = jnp.ones_like(ids)
    ref = m(ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    args = (ids, mask, jnp.broadcast_to(jnp.arange(6), ids.shape))
    return m.module, {"params": m.params}, args, ref


def _corrupt(args, seed):
    ids = jax.random.randint(jax.random.key(seed), args[0].shape, 0, 64)
    return (ids, *args[1:])


# ----------------------------------------------------------------------------------- ResNet

STAGES = ["encoder/stages/0", "encoder/stages/1"]


class TestResNet(chex.TestCase):
    def test_capture_in_eval_mode_equals_hidden_states(self):
        model, v, px, ref = _resnet()
        out, acts = jax.jit(capture(model, v, select=["embedder", *STAGES]))(px)
        for p, h in zip(["embedder", *STAGES], ref.hidden_states):
            _close(jnp.transpose(acts[p], (0, 3, 1, 2)), h)  # HF reports NCHW
        _close(out.pooler_output, ref.pooler_output)

    def test_training_mode_names_eval_mode(self):
        model, v, px, _ = _resnet()
        with pytest.raises(ValueError, match="^mutable: .*training mode.*eval flag"):
            capture(model, v)(px, False)  # deterministic=False: BatchNorm updates batch_stats

    def test_layer_features_equal_pooled_hidden_states(self):
        model, v, px, ref = _resnet()
        feats = layer_features(model, v, px, STAGES, pool=lambda a: a.mean((1, 2)), chunk_size=3)
        assert feats.shape == (2, 4, 16)  # [layer, n, widest d]; stage 0 zero-padded 8 -> 16
        for i, h in enumerate(ref.hidden_states[1:]):
            want = np.asarray(h).mean((2, 3))
            _close(feats[i, :, : want.shape[1]], want)
        assert (np.asarray(feats[0, :, 8:]) == 0).all()

    def test_patch_sweep_and_attribution_over_whole_stages(self):
        model, v, px, _ = _resnet()
        corrupted = jax.random.normal(jax.random.key(9), px.shape)
        metric = lambda out: out.pooler_output[:, :4].sum()
        sites = site_grid(STAGES, [])
        res = patch_sweep(model, v, px, corrupted, sites, metric, chunk_size=None)
        np.testing.assert_allclose(res.normalized, 1.0, atol=1e-5)  # clean stage -> clean out
        attr = attribution_patch(model, v, px, corrupted, sites, metric)
        np.testing.assert_allclose(attr.clean, res.clean, rtol=1e-6)
        # the metric is linear (average pooling) in the last stage: first order is exact
        np.testing.assert_allclose(attr.normalized[1], 1.0, atol=1e-4)


# ----------------------------------------------------------------- BERT, gradient checkpointing


def _head_rows(kernel_in: int, head: int, n_heads: int) -> np.ndarray:
    d = kernel_in // n_heads
    rows = np.zeros(kernel_in, bool)
    rows[head * d : (head + 1) * d] = True
    return rows


class TestBertRemat(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_weights_equal_output_attentions(self):
        model, v, args, ref = _bert_remat()
        _, maps = self.variant(attention_weights(model, v))(*args)
        assert list(maps) == [f"encoder/layer/{i}/attention/self" for i in range(2)]
        got, want = stack_layers(maps), jnp.stack(ref.attentions)
        assert got.shape == want.shape
        assert float(jnp.abs(got - want).max()) <= ATOL

    def test_head_ablation_equals_zeroed_output_rows(self):
        model, v, args, _ = _bert_remat()
        site = "encoder/layer/1/attention/output/dense:input"
        rows = _head_rows(16, 1, 2)
        out = jax.jit(intervene(model, v, {site: zero(where=rows)}))(*args)
        p = jax.tree.map(np.array, v["params"])
        p["encoder"]["layer"]["1"]["attention"]["output"]["dense"]["kernel"][rows] = 0
        want = model.apply({"params": p}, *args)
        _close(out.last_hidden_state, want.last_hidden_state)
        base = model.apply(v, *args).last_hidden_state
        assert float(jnp.abs(base - want.last_hidden_state).max()) > 1e-3  # the edit matters

    def test_patch_sweep_clean_into_corrupted_layers(self):
        model, v, args, _ = _bert_remat()
        sites = site_grid([f"encoder/layer/{i}:output[0]" for i in range(2)], [])
        metric = lambda out: out.last_hidden_state[:, 0, :3].sum()
        corrupted = _corrupt(args, 5)
        res = patch_sweep(model, v, args, corrupted, sites, metric, chunk_size=None)
        np.testing.assert_allclose(res.normalized, 1.0, atol=1e-5)
        attr = attribution_patch(model, v, args, corrupted, sites, metric)
        np.testing.assert_allclose(attr.normalized[1], 1.0, atol=1e-4)  # linear in the last


# ------------------------------------------------------------------------ Llama (RoPE + GQA)


class TestLlama(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_attention_weights_equal_output_attentions(self):
        model, v, args, ref = _llama()
        _, maps = self.variant(attention_weights(model, v))(*args)
        assert list(maps) == [f"model/layers/{i}/self_attn" for i in range(2)]
        got, want = stack_layers(maps), jnp.stack(ref.attentions)
        assert got.shape == want.shape == (2, 2, 4, 6, 6)  # 4 query heads over 2 kv heads
        assert float(jnp.abs(got - want).max()) <= ATOL

    def test_head_ablation_equals_zeroed_o_proj_rows(self):
        model, v, args, _ = _llama()
        rows = _head_rows(16, 2, 4)
        f = intervene(model, v, {"model/layers/0/self_attn/o_proj:input": zero(where=rows)})
        out = jax.jit(f)(*args)
        p = jax.tree.map(np.array, v["params"])
        p["model"]["layers"]["0"]["self_attn"]["o_proj"]["kernel"][rows] = 0
        _close(out.logits, model.apply({"params": p}, *args).logits)

    def test_patch_sweep_attribution_and_layer_features(self):
        model, v, args, ref = _llama()
        sites = site_grid([f"model/layers/{i}:output[0]" for i in range(2)], [])
        metric = lambda out: out.logits[:, -1, 3].sum() - out.logits[:, -1, 5].sum()
        corrupted = _corrupt(args, 7)
        res = patch_sweep(model, v, args, corrupted, sites, metric, chunk_size=None)
        np.testing.assert_allclose(res.normalized, 1.0, atol=1e-5)
        attr = attribution_patch(model, v, args, corrupted, sites, metric)
        assert np.isfinite(np.asarray(attr.normalized)).all()
        np.testing.assert_allclose(attr.clean, res.clean, rtol=1e-6)
        feats = layer_features(model, v, args, ["model/norm"], pool="last")
        _close(feats[0], ref.hidden_states[-1][:, -1])  # HF's last hidden state is normed
