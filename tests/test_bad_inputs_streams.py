"""Bad inputs to the sharding, streaming and attention_stats functions: each row asserts the
exception type and that the message starts with the argument's name. Rows marked "regression"
were silent wrong answers or deep errors before."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import models
from jaxinterp.attention import attention_stats, head_entropy
from jaxinterp.sharding import (
    chunked,
    data_mesh,
    iter_chunks,
    replicate,
    shard_batched,
    shard_leading,
    stream_reduce,
)

X = np.arange(12.0).reshape(4, 3)
ID = lambda x: x * 2.0
STEP = lambda s, c, v: s + (c * v[:, None]).sum()


def _mesh():
    return data_mesh()


def _used_up():
    it = iter_chunks(X, 2)
    list(it)
    return it


SHARDING = [
    ("data_mesh axis int", lambda: data_mesh(axis=3), TypeError, "axis"),
    ("data_mesh no devices", lambda: data_mesh(devices=[]), ValueError, "devices"),
    ("shard_batched fn", lambda: shard_batched(3, _mesh()), TypeError, "fn"),
    ("shard_batched mesh", lambda: shard_batched(ID, "mesh"), TypeError, "mesh"),
    (
        "argnums str",
        lambda: shard_batched(ID, _mesh(), batch_argnums="0"),
        TypeError,
        "batch_argnums",
    ),
    (
        "argnums negative",
        lambda: shard_batched(ID, _mesh(), batch_argnums=-1),
        ValueError,
        "batch_argnums",
    ),
    (
        "argnums empty",
        lambda: shard_batched(ID, _mesh(), batch_argnums=()),
        ValueError,
        "batch_argnums",
    ),
    ("unknown axis", lambda: shard_batched(ID, _mesh(), axis="nope"), ValueError, "axis"),
    ("axis int", lambda: shard_batched(ID, _mesh(), axis=3), TypeError, "axis"),
    (
        "scalar batch",
        lambda: shard_batched(ID, _mesh())(jnp.float32(1)),
        ValueError,
        "batch_argnums",
    ),
    (
        "empty batch",
        lambda: shard_batched(ID, _mesh())(jnp.zeros((0, 3))),
        ValueError,
        "batch_argnums",
    ),
    (
        "argument missing",
        lambda: shard_batched(ID, _mesh(), batch_argnums=1)(X),
        ValueError,
        "batch_argnums",
    ),
    (
        "lengths differ",
        lambda: shard_batched(lambda a: a, _mesh())((X, X[:2])),
        ValueError,
        "batch_argnums",
    ),
    # regression: a sum over the batch came back per device (tiled), now refused
    ("batch reduction", lambda: shard_batched(lambda x: x.sum(0), _mesh())(X), ValueError, "fn"),
    ("chunked fn", lambda: chunked(None, 2), TypeError, "fn"),
    ("chunked zero", lambda: chunked(ID, 0), ValueError, "chunk_size"),
    ("chunked float", lambda: chunked(ID, 2.5), TypeError, "chunk_size"),
    ("replicate mesh", lambda: replicate(X, "mesh"), TypeError, "mesh"),
    ("shard_leading axis", lambda: shard_leading(X, _mesh(), axis="nope"), ValueError, "axis"),
    ("shard_leading scalar", lambda: shard_leading(jnp.float32(1), _mesh()), ValueError, "x"),
    ("shard_leading mesh", lambda: shard_leading(X, None), TypeError, "mesh"),
    ("iter_chunks lengths", lambda: iter_chunks((X, X[:3]), 2), ValueError, "data"),
    ("iter_chunks zero", lambda: iter_chunks(X, 0), ValueError, "chunk_size"),
    ("iter_chunks float", lambda: iter_chunks(X, 1.5), TypeError, "chunk_size"),
    ("iter_chunks empty tree", lambda: iter_chunks({}, 2), ValueError, "data"),
    ("iter_chunks scalar", lambda: iter_chunks(np.float32(1), 2), ValueError, "data"),
    ("iter_chunks strings", lambda: iter_chunks(["a", "b"], 2), TypeError, "data"),
    (
        "stream step",
        lambda: stream_reduce(None, jnp.zeros(()), [X], chunk_size=4),
        TypeError,
        "step",
    ),
    (
        "stream chunk_size",
        lambda: stream_reduce(STEP, jnp.zeros(()), [X], chunk_size=0),
        ValueError,
        "chunk_size",
    ),
    (
        "stream args",
        lambda: stream_reduce(STEP, jnp.zeros(()), [X], chunk_size=4, args=1),
        TypeError,
        "args",
    ),
    # regression: an array passed as the stream was folded row by row
    (
        "stream array",
        lambda: stream_reduce(STEP, jnp.zeros(()), X, chunk_size=4),
        TypeError,
        "chunks",
    ),
    (
        "stream not iterable",
        lambda: stream_reduce(STEP, jnp.zeros(()), 5, chunk_size=4),
        TypeError,
        "chunks",
    ),
    # regression: an empty or used-up stream returned the initial state silently
    (
        "stream empty",
        lambda: stream_reduce(STEP, jnp.zeros(()), [], chunk_size=4),
        ValueError,
        "chunks",
    ),
    (
        "stream used up",
        lambda: stream_reduce(STEP, jnp.zeros(()), _used_up(), chunk_size=4),
        ValueError,
        "chunks",
    ),
    (
        "stream long chunk",
        lambda: stream_reduce(STEP, jnp.zeros(()), [X], chunk_size=2),
        ValueError,
        "chunks",
    ),
    (
        "stream ragged chunk",
        lambda: stream_reduce(lambda s, c, v: s, jnp.zeros(()), [(X, X[:2])], chunk_size=4),
        ValueError,
        "chunks",
    ),
    (
        "stream state changes",
        lambda: stream_reduce(lambda s, c, v: s + c, jnp.zeros(()), [X[:, 0]], chunk_size=4),
        TypeError,
        "step",
    ),
    (
        "stream mesh",
        lambda: stream_reduce(STEP, jnp.zeros(()), [X], chunk_size=4, mesh="m"),
        TypeError,
        "mesh",
    ),
    (
        "stream axis",
        lambda: stream_reduce(STEP, jnp.zeros(()), [X], chunk_size=4, mesh=_mesh(), axis="nope"),
        ValueError,
        "axis",
    ),
]


@pytest.mark.parametrize("call, exc, name", [r[1:] for r in SHARDING], ids=[r[0] for r in SHARDING])
def test_sharding_bad_inputs(call, exc, name):
    with pytest.raises(exc, match=f"^{name}:"):
        call()


@pytest.fixture(scope="module")
def tiny():
    cfg = models.TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_mlp=8)
    tf = models.Transformer(cfg)
    variables = tf.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    toks = np.asarray(models.offset_batch(jax.random.key(1), 6, 16, 16, 3).tokens)
    return tf, variables, toks


def _ragged_stream(toks):
    yield toks[:3]
    yield toks[3:], np.ones_like(toks[3:], bool)


STAT = lambda w, *ex: head_entropy(w)
ATTENTION_STATS = [
    ("chunk_size zero", lambda t: dict(data=t, chunk_size=0), ValueError, "chunk_size"),
    ("chunk_size float", lambda t: dict(data=t, chunk_size=2.0), TypeError, "chunk_size"),
    ("stat not callable", lambda t: dict(data=t, stat="entropy"), TypeError, "stat"),
    ("mesh not a mesh", lambda t: dict(data=t, mesh="cpu"), TypeError, "mesh"),
    ("list of ints", lambda t: dict(data=[1, 2]), TypeError, "data"),
    ("int", lambda t: dict(data=5), TypeError, "data"),
    ("dict", lambda t: dict(data={"ids": t}), TypeError, "data"),
    ("scalar array", lambda t: dict(data=np.float32(3)), ValueError, "data"),
    ("strings", lambda t: dict(data=np.array([["a"] * 16] * 2)), TypeError, "data"),
    # regression: a list [ids, mask] was a stream whose 2nd chunk (the mask) ran as token ids;
    # now a list is the model's inputs and must share the example axis
    ("list lengths differ", lambda t: dict(data=[t, np.ones((2, 16), bool)]), ValueError, "data"),
    # regression: an empty dataset returned NaN
    ("empty dataset", lambda t: dict(data=t[:0]), ValueError, "data"),
    ("empty stream", lambda t: dict(data=iter([])), ValueError, "data"),
    ("function returning int", lambda t: dict(data=lambda: 3), TypeError, "data"),
    ("ragged stream", lambda t: dict(data=_ragged_stream(t)), ValueError, "data"),
    ("token ids out of range", lambda t: dict(data=t + 16), ValueError, "tokens"),
]


@pytest.mark.parametrize(
    "make, exc, name", [r[1:] for r in ATTENTION_STATS], ids=[r[0] for r in ATTENTION_STATS]
)
def test_attention_stats_bad_inputs(tiny, make, exc, name):
    tf, variables, toks = tiny
    kw = dict(stat=STAT, chunk_size=4)
    kw.update(make(toks))
    stat, data = kw.pop("stat"), kw.pop("data")
    with pytest.raises(exc, match=f"^{name}:"):
        attention_stats(tf, variables, stat, data, **kw)
