"""Cross-capability checks: bad input names the argument, and helpers without a home test.

Each error test feeds one wrong argument to a public entry point and checks the message names
that argument (before this, several of these failed deep inside XLA/flax or not at all).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import actmax, attention, models
from jaxinterp import interventions as iv
from jaxinterp.sharding import (
    data_mesh,
    iter_chunks,
    replicate,
    shard_batched,
    shard_leading,
    stream_reduce,
)

# ------------------------------------------------------------------------------ bad input


def test_transformer_rejects_bad_tokens(offset_tf, offset_nnx):
    toks = models.offset_batch(jax.random.key(0), 2, 16, 16, 3).tokens
    for f in (
        lambda t, **kw: offset_tf.model.apply(offset_tf.variables, t, **kw),
        lambda t, **kw: offset_nnx(t, **kw),
    ):
        with pytest.raises(ValueError, match=r"tokens: .*seq_len=16, got shape \(2, 40\)"):
            f(jnp.zeros((2, 40), jnp.int32))
        with pytest.raises(ValueError, match=r"tokens: .*got shape \(2, 16, 2\)"):
            f(jnp.zeros((2, 16, 2), jnp.int32))  # used to broadcast silently
        with pytest.raises(TypeError, match="tokens: expected integer token ids, got float32"):
            f(toks.astype(jnp.float32))
        with pytest.raises(ValueError, match=r"embeddings: .*\(2, 16, 64\), got \(2, 16, 8\)"):
            f(toks, embeddings=jnp.zeros((2, 16, 8)))
    # the same check fires through attention_weights, under jit
    with pytest.raises(ValueError, match="tokens"):
        jax.jit(attention.attention_weights(offset_tf.model, offset_tf.variables))(toks[0])
    with pytest.raises(ValueError, match="offset: expected 0 <= offset < seq_len=3, got 3"):
        models.offset_batch(jax.random.key(0), 2, 3, 16, 3)


def test_loaders_name_the_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="path: .*nope"):
        models.load_minilm(missing)
    with pytest.raises(FileNotFoundError, match="path: .*tokenizer.json"):
        models.load_tokenizer(missing / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="path: .*x.safetensors"):
        models.read_safetensors(missing / "x.safetensors")


def test_sharding_errors():
    mesh = data_mesh()
    with pytest.raises(ValueError, match=r"batch_argnums: .*leading \[batch\] axis; got shapes"):
        shard_batched(lambda x: x, mesh)(jnp.asarray(1.0))
    with pytest.raises(ValueError, match=r"got shapes \[\(3,\), \(4,\)\]"):
        shard_batched(lambda x: x, mesh)((jnp.ones(3), jnp.ones(4)))
    with pytest.raises(TypeError, match=r"step: .*\(\(\), 'float32'\); got \(\(4,\), 'float32'\)"):
        stream_reduce(lambda s, c, v: s + c, jnp.zeros(()), [np.zeros(3)], chunk_size=4)
    with pytest.raises(ValueError, match="chunk_size: expected a positive integer, got 0"):
        stream_reduce(lambda s, c, v: s, jnp.zeros(()), [np.zeros(3)], chunk_size=0)
    with pytest.raises(TypeError, match="args: expected a tuple"):
        stream_reduce(lambda s, c, v, a: s, jnp.zeros(()), [np.zeros(3)], chunk_size=4, args=1)


def test_top_k_and_patch_sweep_errors(cnn, offset_tf):
    with pytest.raises(TypeError, match="data: expected numeric arrays, got dtype <U1"):
        actmax.top_k_examples(
            cnn.model, cnn.variables, actmax.neuron("act_2", 1), None, np.array(["a"] * 4), k=2
        )
    toks = models.offset_batch(jax.random.key(0), 4, 16, 16, 3).tokens
    metric = lambda out: out[:, -1, 0].mean()
    for sweep in (iv.patch_sweep, iv.attribution_patch):
        with pytest.raises(ValueError, match="sites: index 4 on axis -2 .* has size 4"):
            sweep(offset_tf.model, offset_tf.variables, toks, toks, iv.head_sites(2, 5), metric)


# ------------------------------------------------------------------------------ sharding helpers


def test_replicate_and_shard_leading_place_and_keep_values():
    mesh = data_mesh()
    n = 2 * jax.device_count()  # rows divide over the mesh (1 device, or 8 in the ISA runs)
    x = {"a": np.arange(2.0 * n).reshape(n, 2), "b": np.ones(n, np.int32)}
    for place, spec in ((replicate, ()), (lambda t, m: shard_leading(t, m), ("data",))):
        out = place(x, mesh)
        for k in x:
            np.testing.assert_array_equal(out[k], x[k])
            assert tuple(out[k].sharding.spec) == spec
        # placement composes with jit (same values, same sharding inside a jitted function)
        y = jax.jit(lambda t, place=place: jax.tree.map(lambda v: v * 2, place(t, mesh)))(x)
        np.testing.assert_array_equal(y["a"], 2 * x["a"])


def test_stream_reduce_args_and_padding_stay_in_domain():
    x = np.linspace(0.5, 3.0, 10, dtype=np.float32)  # 10 rows in chunks of 4: last one padded

    def step(s, c, valid, scale):
        # log of a zero padding row would be -inf, and -inf * 0 is nan: padding must repeat data
        return s + jnp.sum(jnp.log(c) * valid) * scale

    got = stream_reduce(step, jnp.zeros(()), iter_chunks(x, 4), chunk_size=4, args=(2.0,))
    np.testing.assert_allclose(got, 2.0 * np.log(x).sum(), rtol=1e-6)
    # args are jit arguments: a new value does not change the answer's form, only its scale
    got3 = stream_reduce(
        step, jnp.zeros(()), iter_chunks(x, 4), chunk_size=4, args=(jnp.float32(3.0),)
    )
    np.testing.assert_allclose(got3, 3.0 * np.log(x).sum(), rtol=1e-6)


# ------------------------------------------------------------------------------ vmap of scores


def test_head_scores_under_vmap_match_numpy(variant):
    # run with and without jit (chex.variants, see conftest.py)
    w = jax.nn.softmax(jax.random.normal(jax.random.key(3), (3, 2, 5, 5)), axis=-1)  # [b,h,q,k]
    wn = np.asarray(w, np.float64)
    ent_ref = -(wn * np.log(wn)).sum(-1).mean(-1)  # [b, h]
    off_ref = np.stack([wn[..., q, q - 1] for q in range(1, 5)], -1).mean(-1)
    for f, ref in (
        (attention.head_entropy, ent_ref),
        (lambda a: attention.offset_score(a, 1), off_ref),
    ):
        got = variant(jax.vmap(f))(w)
        chex.assert_shape(got, (3, 2))
        np.testing.assert_allclose(got, ref, rtol=1e-5)
        np.testing.assert_allclose(variant(jax.vmap(jax.vmap(f)))(w), f(w), rtol=1e-6)


def test_attention_stats_passes_method(offset_tf):
    toks = np.asarray(models.offset_batch(jax.random.key(2), 6, 16, 16, 3).tokens)
    stat = lambda w, t: attention.head_entropy(w)
    args = (offset_tf.model, offset_tf.variables, stat, toks)
    ref = attention.attention_stats(*args, chunk_size=4)
    got = attention.attention_stats(*args, chunk_size=4, method="__call__")
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    with pytest.raises((AttributeError, ValueError, TypeError), match="no_such_method"):
        attention.attention_stats(*args, chunk_size=4, method="no_such_method")
