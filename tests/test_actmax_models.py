"""Act-max on models written by other people: soft prompts through the embedding module,
``method=`` callables on linen and nnx, output objectives on dataclass and tuple outputs, and
the CPU ascent's convolution gradients on Hugging Face's Flax ResNet.

Every reported value is checked against the model's own forward pass: the optimized soft
prompt is written into the model's embedding table (rows the objective does not read) and the
model runs on those token ids, so no jaxinterp hook is involved in the reference.
"""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import actmax, models

FIXTURES = Path(__file__).parent / "fixtures"
L = 4  # prompt length
TARGETS = jnp.array([9, 17, 30])  # classes >= L: their tied unembedding rows stay untouched


@functools.cache
def _hf_gpt2():
    from transformers import FlaxGPT2LMHeadModel, GPT2Config

    cfg = GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    return FlaxGPT2LMHeadModel(cfg, seed=0)


def _gpt2_inputs(module, ids):
    """HF's GPT-2 module wants an attention mask and position ids besides the token ids."""
    positions = jnp.broadcast_to(jnp.arange(ids.shape[-1]), ids.shape)
    return module(ids, jnp.ones_like(ids), positions)


def _with_rows(table, prompt):
    """The embedding table with rows ``0..L-1`` replaced by the prompt ``[L, d]``."""
    return jnp.asarray(table).at[: prompt.shape[0]].set(prompt)


def test_soft_prompt_site_on_hf_flax_gpt2():
    m = _hf_gpt2()
    table = m.params["transformer"]["wte"]["embedding"]
    res = jax.jit(
        lambda key: actmax.maximize(
            key, m.module, {"params": m.params},
            lambda t: actmax.class_logit(t, position=L - 1), TARGETS,
            param=actmax.soft_prompt(table, L, site="transformer/wte"), steps=25,
            method=_gpt2_inputs,
        )
    )(jax.random.key(0))  # fmt: skip
    assert res.inputs.shape == (3, 1, L, 16)
    ids = jnp.arange(L)[None]
    for i, t in enumerate(TARGETS.tolist()):
        params = jax.tree.map(lambda a: a, m.params)
        params["transformer"]["wte"]["embedding"] = _with_rows(table, res.inputs[i, 0])
        out = m(ids, params=params)  # HF's own forward (a ModelOutput with .logits)
        np.testing.assert_allclose(res.values[i], out.logits[0, L - 1, t], rtol=1e-4, atol=1e-5)
    assert bool((res.values > res.traces[:, 0]).all())  # the ascent raised every logit


def test_soft_prompt_site_on_loaded_decoder():
    d = models.load_decoder(FIXTURES / "decoders" / "gpt2")
    table = d.variables["params"]["embed"]["tok"]["embedding"]
    res = actmax.maximize(
        jax.random.key(1), d.model, d.variables,
        lambda t: actmax.class_logit(t, position=L - 1), TARGETS,
        param=actmax.soft_prompt(table, L, site="embed/tok"), steps=25,
    )  # fmt: skip
    ids = jnp.arange(L)[None]
    for i, t in enumerate(TARGETS.tolist()):
        v = jax.tree.map(lambda a: a, d.variables)
        v["params"]["embed"]["tok"]["embedding"] = _with_rows(table, res.inputs[i, 0])
        logits = d.model.apply(v, ids)
        np.testing.assert_allclose(res.values[i], logits[0, L - 1, t], rtol=1e-4, atol=1e-5)
    assert bool((res.values > res.traces[:, 0]).all())


def test_soft_prompt_site_and_method_callable_on_nnx(offset_nnx):
    model = offset_nnx
    table = np.asarray(model.embed.embedding.value)
    seq = 6
    res = actmax.maximize(
        jax.random.key(2), model, None,
        lambda t: actmax.class_logit(t, position=seq - 1), jnp.arange(3),
        param=actmax.soft_prompt(table, seq, site="embed"), steps=20,
        method=lambda mod, tokens: mod(tokens),
    )  # fmt: skip
    tokens = jnp.zeros((1, seq), jnp.int32)
    for t in range(3):
        logits = model(tokens, embeddings=res.inputs[t])  # the model's own continuous route
        np.testing.assert_allclose(res.values[t], logits[0, seq - 1, t], rtol=1e-4, atol=1e-5)


def test_soft_prompt_site_must_be_the_embedding(offset_tf):
    table = offset_tf.variables["params"]["embed"]["embedding"]
    with pytest.raises(ValueError, match="^site: soft_prompt replaces the output of 'pos_embed'"):
        actmax.maximize(
            jax.random.key(0), offset_tf.model, offset_tf.variables,
            lambda t: actmax.class_logit(t), jnp.arange(2),
            param=actmax.soft_prompt(table, 3, batch=2, site="pos_embed"), steps=2,
        )  # fmt: skip


@functools.cache
def _hf_vit():
    from transformers import FlaxViTForImageClassification, ViTConfig

    cfg = ViTConfig(
        image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, num_labels=5,
    )  # fmt: skip
    return FlaxViTForImageClassification(cfg, seed=0)


def test_class_logit_on_hf_model_output_dataclass():
    m = _hf_vit()
    res = actmax.maximize(
        jax.random.key(3), m.module, {"params": m.params}, actmax.class_logit, jnp.arange(5),
        param=actmax.pixel((8, 8, 3), value_range=(-1.0, 1.0)), steps=20,
    )  # fmt: skip
    # the module takes NHWC; HF's wrapper takes NCHW
    logits = m(jnp.transpose(res.inputs[:, 0], (0, 3, 1, 2))).logits
    np.testing.assert_allclose(res.values, np.diagonal(logits), rtol=1e-4, atol=1e-5)
    assert bool((res.values > res.traces[:, 0]).all())


class _TupleOut(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(8, name="hidden")(x))
        return h, nn.Dense(3, name="head")(h)  # (features, logits)


def test_output_objectives_on_tuple_outputs_by_element_path():
    model = _TupleOut()
    v = model.init(jax.random.key(0), jnp.ones((1, 5)))
    obj = lambda t: actmax.class_logit(t, path="<output>:output[1]")  # noqa: E731
    res = actmax.maximize(
        jax.random.key(4), model, v, obj, jnp.arange(3),
        param=actmax.norm_ball((5,), 1.0), steps=60, optimizer=None,
    )  # fmt: skip
    logits = model.apply(v, res.inputs[:, 0])[1]
    np.testing.assert_allclose(res.values, np.diagonal(logits), rtol=1e-5, atol=1e-6)
    # a non-array output without a logits field is an error naming the path
    with pytest.raises(ValueError, match=r"^path: '<output>' holds a tuple"):
        actmax.maximize(
            jax.random.key(4), model, v, actmax.class_logit, jnp.arange(3),
            param=actmax.norm_ball((5,), 1.0), steps=2,
        )  # fmt: skip


def test_fast_conv_gradients_on_hf_flax_resnet():
    """The CPU ascent's convolution gradients (im2col, canonical kernel, strided phases) on a
    model we did not write: Hugging Face's Flax ResNet (random weights, batch norm in inference,
    max pooling, 3x3 stride-2 convolutions and 1x1 stride-2 shortcuts) give ``jax.grad``'s
    input gradient and value."""
    from unittest import mock

    from transformers import FlaxResNetModel, ResNetConfig

    from jaxinterp.actmax import _fastgrad

    cfg = ResNetConfig(
        num_channels=3, embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1],
        layer_type="basic", downsample_in_first_stage=False,
    )  # fmt: skip
    m = FlaxResNetModel(cfg, seed=0)
    x = jax.random.uniform(jax.random.key(0), (2, 3, 32, 32))  # HF's wrapper takes NCHW

    def f(x):
        out = m(x).last_hidden_state  # [batch, channels, h, w]
        return jnp.sum(jnp.sin(out[:, 5])) + 0.1 * jnp.sum(out**2)

    phases = mock.patch.object(_fastgrad, "_phase_input_grad", wraps=_fastgrad._phase_input_grad)
    with phases as spy:
        v1, g1 = jax.jit(jax.value_and_grad(_fastgrad.fast_input_grads(f)))(x)
    assert spy.call_count >= 1  # a strided 3x3 convolution with 64 inputs took that path
    v0, g0 = jax.jit(jax.value_and_grad(f))(x)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    scale = float(jnp.abs(g0).max())
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-5 * scale)


def test_automatic_chunks_on_hf_flax_resnet():
    """Automatic chunking on CPU on a model we did not write: Hugging Face's Flax ResNet at
    128x128 (a [64, 64, 32] stem activation, 512 KB per target, 12 MB for 24 targets) runs 2
    targets at a time, with the values of one chunk of all 24 and the model's own logits."""
    from transformers import FlaxResNetForImageClassification, ResNetConfig

    from jaxinterp.actmax import _maximize

    cfg = ResNetConfig(
        num_channels=3, embedding_size=32, hidden_sizes=[32, 64], depths=[1, 1],
        layer_type="basic", downsample_in_first_stage=False, num_labels=4,
    )  # fmt: skip
    m = FlaxResNetForImageClassification(cfg, seed=0)
    units = jnp.arange(24) % 4

    def job(**kw):
        return actmax.maximize(
            jax.random.key(3), m.module, dict(m.params), actmax.class_logit, units,
            param=actmax.pixel((128, 128, 3), value_range=(-1.0, 1.0)), steps=3, **kw,
        )  # fmt: skip

    calls, real = [], _maximize.chunked
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_maximize, "chunked", lambda f, c: calls.append(c) or real(f, c))
        got = job()
    assert calls == [2]
    np.testing.assert_allclose(got.values, job(chunk_size=24).values, rtol=1e-5, atol=1e-6)
    logits = m(jnp.transpose(got.inputs[:, 0], (0, 3, 1, 2))).logits  # HF's wrapper: NCHW
    np.testing.assert_allclose(got.values, logits[jnp.arange(24), units], rtol=1e-4, atol=1e-5)
