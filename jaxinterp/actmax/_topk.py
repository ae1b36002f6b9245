"""Top-k dataset examples per target, streamed over a dataset in fixed-size chunks.

The natural companion to feature visualization: which real inputs excite a unit most. The
dataset is read ``chunk_size`` examples at a time; each chunk is captured once (only the paths
the objective reads), every target's objective is evaluated per example (a vmap over targets
of a vmap over examples) and merged into a running ``[target, k]`` top-k with ``lax.top_k``.
One compiled step serves every chunk (the last is padded and masked), so memory is
``O(chunk_size + target * k)`` whatever the dataset size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp.actmax._maximize import ObjectiveFactory, forward_fn
from jaxinterp.actmax._objectives import INPUT, OUTPUT, Objective


class TopK(NamedTuple):
    """Top-k examples per target, best first.

    Attributes:
      values: ``[target, k]`` objective values (``-inf`` where the dataset had fewer than k).
      indices: ``[target, k]`` int32 positions in the dataset (``-1`` where missing).
    """

    values: jax.Array
    indices: jax.Array


def _chunks(data: Any, chunk_size: int) -> Iterable[np.ndarray]:
    if hasattr(data, "shape"):
        for start in range(0, data.shape[0], chunk_size):
            yield data[start : start + chunk_size]
    else:
        yield from data


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

    @jax.jit
    def update(variables, x, n_valid, offset, best_v, best_i):
        fwd = forward_fn(model, variables, paths, method)
        args, kwargs = feed(x)
        out, acts = fwd(*args, **kwargs)
        acts = {**acts, INPUT: x, OUTPUT: out}

        def per_target(t):
            obj = make(t)
            one = lambda a: obj(jax.tree.map(lambda v: v[None], a))
            return jax.vmap(one)(acts)  # [chunk]

        scores = jax.vmap(per_target)(targets)  # [target, chunk]
        pos = jnp.arange(x.shape[0])
        scores = jnp.where(pos < n_valid, scores, -jnp.inf)
        idx = jnp.broadcast_to(offset + pos, scores.shape).astype(jnp.int32)
        v, sel = jax.lax.top_k(jnp.concatenate([best_v, scores], 1), k)
        i = jnp.take_along_axis(jnp.concatenate([best_i, idx], 1), sel, 1)
        return v, i

    best_v = jnp.full((n_targets, k), -jnp.inf, jnp.float32)
    best_i = jnp.full((n_targets, k), -1, jnp.int32)
    offset = 0
    for chunk in _chunks(data, chunk_size):
        chunk = np.asarray(chunk)
        m = chunk.shape[0]
        if m > chunk_size:
            raise ValueError(f"data: a chunk has {m} examples, more than chunk_size={chunk_size}")
        if m == 0:
            continue
        if m < chunk_size:
            pad = np.zeros((chunk_size - m, *chunk.shape[1:]), chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        best_v, best_i = update(variables, chunk, m, offset, best_v, best_i)
        offset += m
    if offset == 0:
        raise ValueError("data: the dataset is empty")
    return TopK(best_v, best_i)
