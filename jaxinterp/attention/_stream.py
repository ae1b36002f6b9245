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
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxinterp.attention._extract import attention_weights, stack_layers
from jaxinterp.capture import Selector
from jaxinterp.sharding import shard_batched, stream_reduce

Stat = Callable[..., Any]


def _as_tuple(item: Any, what: str) -> tuple:
    item = tuple(item) if isinstance(item, (tuple, list)) else (item,)
    if not item or not all(hasattr(a, "shape") and len(a.shape) >= 1 for a in item):
        raise TypeError(
            f"{what}: expected an array or a tuple of arrays with a leading example axis, "
            f"got {[getattr(a, 'shape', type(a).__name__) for a in item]}"
        )
    n = item[0].shape[0]
    if any(a.shape[0] != n for a in item):
        raise ValueError(f"{what}: leading axes differ: {[a.shape for a in item]}")
    return tuple(np.asarray(a) for a in item)


def _chunks(data: Any, chunk_size: int) -> Iterator[tuple]:
    """Re-cuts ``data`` into chunks of exactly ``chunk_size`` examples (the last may be short)."""
    is_arrays = hasattr(data, "shape") or (
        isinstance(data, tuple) and all(hasattr(a, "shape") for a in data)
    )
    sources: Iterable[Any] = [data] if is_arrays else data
    buf: list[tuple] = []
    for src in sources:
        item = _as_tuple(src, "data")
        if buf and len(buf[0]) != len(item):
            raise ValueError("data: every chunk must hold the same number of arrays")
        buf.append(item)
        while sum(b[0].shape[0] for b in buf) >= chunk_size:
            joined = tuple(np.concatenate(parts) for parts in zip(*buf))
            yield tuple(a[:chunk_size] for a in joined)
            rest = tuple(a[chunk_size:] for a in joined)
            buf = [rest] if rest[0].shape[0] else []
    if buf:
        yield tuple(np.concatenate(parts) for parts in zip(*buf))


def attention_stats(
    model: Any,
    variables: Any,
    stat: Stat,
    data: Any,
    *,
    chunk_size: int = 64,
    mesh: Mesh | None = None,
    select: Selector = "**",
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
      data: the model's positional inputs with a leading example axis ``[n, ...]`` (one array
        or a tuple), or an iterable of such chunks (any sizes; re-chunked).
      chunk_size: examples per jitted chunk; memory scales with it, not with ``n``.
      mesh: optional device mesh; each chunk is split over all its axes (``chunk_size`` should
        be a multiple of the device count to avoid padding).
      select, weights_at: which attention modules, as in :func:`attention_weights`.
      method: the model method to run, as in :func:`attention_weights`.

    Returns:
      The pytree of ``stat`` averaged over all ``n`` examples (float32).

    Raises:
      ValueError: ``chunk_size`` < 1, the data is empty, or its arrays disagree in length.
      TypeError: ``data`` holds something other than arrays.
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
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
