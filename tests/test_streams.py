"""Streams and sharding: what counts as data, linear chunking, empty and used-up streams,
outputs without the batch axis, in-process on one device. The same on 8 host devices is
``tests/sharded/check_streams.py``, run once with the other sharded checks by
``tests/test_sharding.py`` (one subprocess for all of them)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import models
from jaxinterp.attention import attention_stats, attention_weights, stack_layers
from jaxinterp.attention._stream import _chunks
from jaxinterp.sharding import data_mesh, is_stream, iter_chunks, shard_batched, stream_reduce


@pytest.fixture(scope="module")
def tiny():
    cfg = models.TransformerConfig(n_layers=2, n_heads=2, d_model=16, d_mlp=16)
    tf = models.Transformer(cfg)
    variables = tf.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    toks = np.asarray(models.offset_batch(jax.random.key(1), 21, 16, 16, 3).tokens)
    lengths = np.random.default_rng(0).integers(3, 17, size=21)
    pad = np.arange(16)[None, :] < lengths[:, None]
    return tf, variables, toks, pad, lengths


def _stat(w, ids, mask):
    return w[:, :, mask.sum() - 1, :]  # [layer, head, k]: the last real query's row


def test_list_of_ids_and_mask_is_one_dataset(tiny):
    tf, variables, toks, pad, lengths = tiny
    _, maps = attention_weights(tf, variables)(jnp.asarray(toks), jnp.asarray(pad))
    w = np.asarray(stack_layers(maps))
    ref = np.stack([w[:, i, :, lengths[i] - 1, :] for i in range(len(toks))]).mean(0)
    as_list = attention_stats(tf, variables, _stat, [toks, pad], chunk_size=8)
    as_tuple = attention_stats(tf, variables, _stat, (toks, pad), chunk_size=8)
    np.testing.assert_allclose(as_list, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(as_tuple, ref, rtol=1e-5, atol=1e-6)
    assert not is_stream([toks, pad]) and not is_stream(toks)
    assert is_stream(iter([toks])) and is_stream(lambda: [toks])


def test_streams_generator_function_and_reuse(tiny):
    tf, variables, toks, pad, _ = tiny
    ref = attention_stats(tf, variables, _stat, (toks, pad), chunk_size=8)

    def pieces():  # uneven pieces, re-cut to chunks of 8
        for i in range(0, len(toks), 5):
            yield toks[i : i + 5], pad[i : i + 5]

    gen = pieces()
    np.testing.assert_allclose(
        attention_stats(tf, variables, _stat, gen, chunk_size=8), ref, rtol=1e-6, atol=1e-7
    )
    with pytest.raises(ValueError, match=r"^data: the stream yielded no examples \(an iterator"):
        attention_stats(tf, variables, _stat, gen, chunk_size=8)  # used up
    for _ in range(2):  # a function is re-read from the start each time
        got = attention_stats(tf, variables, _stat, pieces, chunk_size=8)
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-7)


def test_empty_data_raises(tiny):
    tf, variables, toks, pad, _ = tiny
    with pytest.raises(ValueError, match="^data: expected at least one example, got 0"):
        attention_stats(tf, variables, _stat, (toks[:0], pad[:0]), chunk_size=8)
    with pytest.raises(ValueError, match="^data: the stream yielded no examples"):
        attention_stats(tf, variables, _stat, iter([]), chunk_size=8)


def test_in_memory_chunks_are_views_and_stream_pieces_cut_to_size():
    x = np.arange(1000 * 3).reshape(1000, 3)
    m = np.arange(1000)
    chunks = list(_chunks((x, m), 64))
    assert [len(c[0]) for c in chunks] == [64] * 15 + [40]
    assert all(np.shares_memory(c[0], x) and np.shares_memory(c[1], m) for c in chunks)
    assert all(np.shares_memory(c, x) for c in iter_chunks(x, 64))
    sizes = [1, 7, 130, 2, 64, 64, 0, 732]
    starts = np.cumsum([0] + sizes)
    stream = (x[a:b] for a, b in zip(starts[:-1], starts[1:]))
    recut = [c[0] for c in _chunks(stream, 64)]
    # each piece of a stream is cut on its own (stream_reduce pads the short ones)
    want = [n for s in sizes for n in [64] * (s // 64) + [s % 64] * (s % 64 > 0)]
    assert [len(c) for c in recut] == want
    np.testing.assert_array_equal(np.concatenate(recut), x)


def test_stream_reduce_empty_and_function_streams():
    x = np.arange(10.0)
    step = lambda s, c, v: s + (c * v).sum()
    got = stream_reduce(step, jnp.zeros(()), lambda: iter_chunks(x, 4), chunk_size=4)
    assert float(got) == 45.0
    used = iter_chunks(x, 4)
    stream_reduce(step, jnp.zeros(()), used, chunk_size=4)
    with pytest.raises(ValueError, match="^chunks: the stream yielded no chunks"):
        stream_reduce(step, jnp.zeros(()), used, chunk_size=4)
    with pytest.raises(TypeError, match=r"^chunks: expected a stream of chunks, got an array"):
        stream_reduce(step, jnp.zeros(()), x, chunk_size=4)  # would fold over scalars


class TestShardBatchedOneDevice(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_unbatched_output_returned_once(self):
        table = jnp.arange(16.0 * 4).reshape(16, 4)
        f = lambda x: {"y": x * 2.0, "table": table + 1.0, "first": table[:1]}
        x = jnp.arange(5.0)
        got = self.variant(shard_batched(f, data_mesh()))(x)
        # before: every output was cut to [:n], so table came back as [5, 4]
        assert got["table"].shape == (16, 4) and got["first"].shape == (1, 4)
        np.testing.assert_array_equal(got["table"], table + 1.0)
        np.testing.assert_array_equal(got["y"], 2.0 * x)

    def test_reduction_over_the_batch_is_refused(self):
        with pytest.raises(ValueError, match=r"^fn: output\['s'\] of shape \(\)"):
            shard_batched(lambda x: {"s": x.sum()}, data_mesh())(jnp.ones(4))
