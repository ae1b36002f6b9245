"""Top-k dataset examples per target, streamed over a dataset in fixed-size chunks.

The natural companion to feature visualization: which real inputs excite a unit most. The
dataset is read ``chunk_size`` examples at a time; each chunk is captured once (only the paths
the objective reads), every target's objective is evaluated per example (a vmap over targets
of a vmap over examples) and merged into a running ``[target, k]`` top-k with ``lax.top_k``.
One compiled step serves every chunk (the last is padded and masked), so memory is
``O(chunk_size + target * k)`` whatever the dataset size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.actmax._maximize import ObjectiveFactory, forward_fn
from jaxinterp.actmax._objectives import INPUT, OUTPUT, Objective
from jaxinterp.sharding import iter_chunks, stream_reduce


class TopK(NamedTuple):
    """Top-k examples per target, best first.

    Attributes:
      values: ``[target, k]`` objective values (``-inf`` where the dataset had fewer than k).
      indices: ``[target, k]`` int32 positions in the dataset (``-1`` where missing).
    """

    values: jax.Array
    indices: jax.Array


def _chunks(data: Any, chunk_size: int) -> Iterator[np.ndarray]:
    """The dataset as host chunks of at most ``chunk_size`` examples, empty chunks skipped."""
    source = iter_chunks(data, chunk_size) if hasattr(data, "shape") else data
    for chunk in source:
        chunk = np.asarray(chunk)
        if not (np.issubdtype(chunk.dtype, np.number) or chunk.dtype == np.bool_):
            raise TypeError(f"data: expected numeric arrays, got dtype {chunk.dtype}")
        if chunk.shape[0] > chunk_size:
            raise ValueError(
                f"data: a chunk has {chunk.shape[0]} examples, more than chunk_size={chunk_size}"
            )
        if chunk.shape[0]:
            yield chunk


def top_k_examples(
    model: Any,
    variables: Any,
    objective: Objective | ObjectiveFactory,
    targets: Any,
    data: Any,
    *,
    k: int = 9,
    chunk_size: int = 256,
    feed: Callable[[jax.Array], tuple[tuple, dict]] | None = None,
    method: str | None = None,
) -> TopK:
    """Finds, for each target, the ``k`` dataset examples with the largest objective.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      objective: a factory ``target -> Objective`` (as for :func:`maximize`), or one Objective
        (then ``targets`` must be ``None``; one target).
      targets: pytree with a leading ``[target]`` axis.
      data: inputs ``[n, ...]`` (a NumPy or JAX array, sliced on the host), or an iterable of
        chunks ``[m, ...]`` with ``m <= chunk_size`` (e.g. a data loader).
      k: examples kept per target.
      chunk_size: examples evaluated per compiled step.
      feed: how a chunk is passed to the model, ``x -> (args, kwargs)`` (default ``(x,), {}``).
      method: the model method to run.

    Returns:
      :class:`TopK` with ``values, indices: [target, k]``, each row sorted descending.
    """
    if k < 1 or chunk_size < 1:
        raise ValueError(f"k, chunk_size: expected positive integers, got {k}, {chunk_size}")
    fixed = isinstance(objective, Objective)
    if fixed:
        if targets is not None:
            raise ValueError("targets: given, but objective is one fixed Objective")
        targets = jnp.zeros((1,), jnp.int32)
    leaves = jax.tree.leaves(targets)
    if not leaves or any(jnp.ndim(x) == 0 for x in leaves):
        raise ValueError("targets: expected a pytree of arrays with a leading [target] axis")
    n_targets = jnp.shape(leaves[0])[0]
    make = (lambda t: objective) if fixed else objective
    paths = make(jax.tree.map(lambda t: t[0], targets)).paths
    feed = feed or (lambda x: ((x,), {}))

    def update(state, x, valid, variables):
        best_v, best_i, offset = state
        fwd = forward_fn(model, variables, paths, method)
        args, kwargs = feed(x)
        out, acts = fwd(*args, **kwargs)
        acts = {**acts, INPUT: x, OUTPUT: out}

        def per_target(t):
            obj = make(t)
            one = lambda a: obj(jax.tree.map(lambda v: v[None], a))
            return jax.vmap(one)(acts)  # [chunk]

        scores = jax.vmap(per_target)(targets)  # [target, chunk]
        scores = jnp.where(valid, scores, -jnp.inf)
        idx = jnp.broadcast_to(offset + jnp.arange(x.shape[0]), scores.shape).astype(jnp.int32)
        v, sel = jax.lax.top_k(jnp.concatenate([best_v, scores], 1), k)
        i = jnp.take_along_axis(jnp.concatenate([best_i, idx], 1), sel, 1)
        return v, i, offset + valid.sum(dtype=jnp.int32)

    init = (
        jnp.full((n_targets, k), -jnp.inf, jnp.float32),
        jnp.full((n_targets, k), -1, jnp.int32),
        jnp.zeros((), jnp.int32),
    )
    best_v, best_i, count = stream_reduce(
        update, init, _chunks(data, chunk_size), chunk_size=chunk_size, args=(variables,)
    )
    if int(count) == 0:
        raise ValueError("data: the dataset is empty")
    return TopK(best_v, best_i)
