"""Attention statistics over a whole dataset, streamed in chunks.

:func:`attention_stats` averages a per-example statistic of the attention weights over a
dataset. The dataset is cut into chunks of ``chunk_size`` examples; one jitted function runs the
model on a chunk, reduces each example's ``[layer, head, q, k]`` weights with ``stat`` and sums
over the chunk, and only those sums are kept between chunks. Memory is therefore one chunk's
activations plus the size of the statistic, independent of the number of examples. (The chunk
loop is a Python loop on purpose: the data may come from a generator or from disk.)

The single-example core (model on one example → ``stat``) is vmapped over the chunk in one
place; with a ``mesh`` the vmapped core is split over devices with
:func:`jaxinterp.sharding.shard_batched`. The chunk loop is
:func:`jaxinterp.sharding.stream_reduce`: the last, partial chunk is padded to ``chunk_size``
(so nothing recompiles) and the padding is weighted out.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxinterp._checks import check_int
from jaxinterp.attention._extract import attention_weights, stack_layers
from jaxinterp.capture import Selector
from jaxinterp.sharding import is_stream, iter_chunks, shard_batched, stream_reduce

Stat = Callable[..., Any]


def _as_arrays(item: Any, what: str) -> tuple[np.ndarray, ...]:
    """One dataset or chunk: an array or a list/tuple of arrays sharing the example axis."""
    parts = tuple(item) if isinstance(item, (tuple, list)) else (item,)
    if not parts or not all(hasattr(a, "shape") and hasattr(a, "dtype") for a in parts):
        raise TypeError(
            f"{what}: expected an array or a list/tuple of arrays (the model's positional "
            f"inputs) with a leading example axis, got "
            f"{[getattr(a, 'shape', type(a).__name__) for a in parts]}"
        )
    shapes = [tuple(a.shape) for a in parts]
    if any(len(s) == 0 for s in shapes):
        raise ValueError(f"{what}: expected arrays with a leading [n] example axis, got {shapes}")
    if len({s[0] for s in shapes}) > 1:
        raise ValueError(
            f"{what}: a list/tuple holds the model's positional inputs, which must share the "
            f"leading example axis; got shapes {shapes} (to stream chunks, pass an iterator, "
            "a generator or a function returning one)"
        )
    out = tuple(np.asarray(a) for a in parts)
    for a in out:
        if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
            raise TypeError(f"{what}: expected numeric arrays, got dtype {a.dtype}")
    return out


def _chunks(data: Any, chunk_size: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Checks ``data`` and cuts it with :func:`jaxinterp.sharding.iter_chunks`.

    An in-memory dataset is sliced (views, no copy). Each chunk of a stream is checked and cut
    the same way, so no piece is longer than ``chunk_size``; shorter pieces are padded by
    :func:`jaxinterp.sharding.stream_reduce` (same compiled shape, padding weighted out).
    """
    if not is_stream(data):
        arrays = _as_arrays(data, "data")
        if arrays[0].shape[0] == 0:
            raise ValueError("data: expected at least one example, got 0")
        yield from iter_chunks(arrays, chunk_size)
        return
    if not (callable(data) or hasattr(data, "__iter__")):
        raise TypeError(f"data: expected arrays or a stream of chunks, got {type(data).__name__}")
    source = data() if callable(data) else data
    try:
        iterator = iter(source)
    except TypeError:
        raise TypeError(
            f"data: the function passed as a stream returned {type(source).__name__}, "
            "not an iterable of chunks"
        ) from None
    width, seen = None, 0
    for i, src in enumerate(iterator):
        item = _as_arrays(src, f"data: chunk {i}")
        if width is None:
            width = len(item)
        elif len(item) != width:
            raise ValueError(
                f"data: chunk {i} holds {len(item)} arrays, chunk 0 held {width}; every chunk "
                "must hold the same model inputs"
            )
        if item[0].shape[0]:
            seen += item[0].shape[0]
            yield from iter_chunks(item, chunk_size)
    if seen == 0:
        raise ValueError(
            "data: the stream yielded no examples (an iterator or generator is used up after "
            "one pass; pass a new one, or a function returning a new iterator each call)"
        )


def attention_stats(
    model: Any,
    variables: Any,
    stat: Stat,
    data: Any,
    *,
    chunk_size: int = 64,
    mesh: Mesh | None = None,
    select: Selector | None = None,
    weights_at: Selector | None = None,
    method: str | None = None,
) -> Any:
    """Mean over a dataset of ``stat(weights, *example)``, streamed in chunks.

    Args:
      model: linen or nnx model (see :func:`attention_weights`).
      variables: linen variables, or ``None`` for nnx.
      stat: ``stat(weights [layer, head, q, k], *example) -> pytree of arrays`` for ONE
        example, where ``example`` are the model's positional inputs without the batch axis
        (e.g. ``tokens [seq]`` or ``input_ids [seq], attention_mask [seq]``). Typically built
        from :mod:`jaxinterp.attention` scores, e.g.
        ``lambda w, ids, m: head_entropy(w, m)`` giving ``[layer, head]``.
      data: the dataset, either in memory or as a stream (see
        :func:`jaxinterp.sharding.is_stream`).
        *In memory*: the model's positional inputs with a leading example axis ``[n, ...]``,
        one array or a list/tuple of arrays (e.g. ``[input_ids, attention_mask]``); it is
        sliced into chunks without copying. *Stream*: an iterator or generator of such chunks
        (any sizes; re-chunked to ``chunk_size``), or a function returning a new one. An
        iterator or generator is used up after one pass: to reuse a stream, pass a function.
      chunk_size: examples per jitted chunk; memory scales with it, not with ``n``.
      mesh: optional device mesh; each chunk is split over all its axes (``chunk_size`` should
        be a multiple of the device count to avoid padding).
      select, weights_at: which attention modules, as in :func:`attention_weights`.
      method: the model method to run, as in :func:`attention_weights`.

    Returns:
      The pytree of ``stat`` averaged over all ``n`` examples (float32).

    Raises:
      ValueError: ``chunk_size`` < 1, the data is empty (also a stream that yields nothing,
        e.g. a generator already used up), or its arrays disagree in length.
      TypeError: ``data`` holds something other than numeric arrays, ``stat`` is not callable,
        ``mesh`` is not a Mesh.

    >>> from jaxinterp import models
    >>> from jaxinterp.attention import head_entropy
    >>> cfg = models.TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_mlp=8)
    >>> tf = models.Transformer(cfg)
    >>> variables = tf.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    >>> toks = np.zeros((10, 16), np.int32)
    >>> attention_stats(tf, variables, lambda w, t: head_entropy(w), toks, chunk_size=4).shape
    (1, 2)
    """
    chunk_size = check_int(chunk_size, "chunk_size", lo=1)
    if not callable(stat):
        raise TypeError(f"stat: expected a function of (weights, *example), got {stat!r:.60}")
    if mesh is not None and not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    f = attention_weights(model, variables, select=select, weights_at=weights_at, method=method)

    def one(item: tuple) -> Any:
        _, maps = f(*(a[None] for a in item))
        return stat(stack_layers(maps)[:, 0], *item)

    batched = jax.vmap(one)
    if mesh is not None:
        batched = shard_batched(batched, mesh, batch_argnums=0)

    def step(state: tuple, item: tuple, valid: jax.Array) -> tuple:
        total, count = state
        per = batched(item)
        w = valid.astype(jnp.float32)
        chunk_sum = jax.tree.map(lambda s: jnp.tensordot(w, s.astype(jnp.float32), (0, 0)), per)
        return jax.tree.map(jnp.add, total, chunk_sum), count + valid.sum(dtype=jnp.int32)

    chunks = _chunks(data, chunk_size)
    first = next(chunks, None)
    if first is None:
        raise ValueError("data: no examples")
    spec = jax.eval_shape(lambda item: batched(item), first)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape[1:], jnp.float32), spec)
    total, count = stream_reduce(
        step,
        (zeros, jnp.zeros((), jnp.int32)),
        itertools.chain([first], chunks),
        chunk_size=chunk_size,
    )
    return jax.tree.map(lambda t: t / count, total)
