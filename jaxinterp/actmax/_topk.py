"""Top-k dataset examples per target, streamed over a dataset in fixed-size chunks.

The natural companion to feature visualization: which real inputs excite a unit most. The
dataset is read ``chunk_size`` examples at a time; each chunk is captured once (only the paths
the objective reads), every target's objective is evaluated per example (a vmap over targets
of a vmap over examples) and merged into a running ``[target, k]`` top-k with ``lax.top_k``.
One compiled step serves every chunk (the last is padded and masked), so memory is
``O(chunk_size + target * k)`` whatever the dataset size.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_int, is_traced
from jaxinterp.actmax._maximize import ObjectiveFactory, _num_targets, forward_fn
from jaxinterp.actmax._objectives import INPUT, OUTPUT, Objective, resolve
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
    if is_traced(data):
        raise TypeError("data: expected a concrete array or an iterable of chunks, got a tracer")
    if isinstance(data, (list, tuple)) and data and not hasattr(data[0], "shape"):
        data = np.asarray(data)
    source = iter_chunks(data, chunk_size) if hasattr(data, "shape") else data
    try:
        source = iter(source)
    except TypeError:
        raise TypeError(f"data: expected an array or an iterable of chunks, got {data!r}") from None
    start = 0
    for chunk in source:
        chunk = np.asarray(chunk)
        if not (np.issubdtype(chunk.dtype, np.number) or chunk.dtype == np.bool_):
            raise TypeError(f"data: expected numeric arrays, got dtype {chunk.dtype}")
        if chunk.ndim == 0:
            raise ValueError("data: expected chunks [m, ...] with a leading example axis")
        if chunk.shape[0] > chunk_size:
            raise ValueError(
                f"data: a chunk has {chunk.shape[0]} examples, more than chunk_size={chunk_size}"
            )
        if np.issubdtype(chunk.dtype, np.inexact):
            bad = ~np.isfinite(chunk.reshape(chunk.shape[0], -1)).all(1)
            if bad.any():
                raise ValueError(
                    f"data: expected finite values, got NaN/inf in example "
                    f"{start + int(np.argmax(bad))} ({int(bad.sum())} examples)"
                )
        start += chunk.shape[0]
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
    method: str | Callable[..., Any] | None = None,
) -> TopK:
    """Finds, for each target, the ``k`` dataset examples with the largest objective.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      objective: a factory ``target -> Objective`` (as for :func:`maximize`), or one Objective
        (then ``targets`` must be ``None``; one target).
      targets: pytree with a leading ``[target]`` axis.
      data: inputs ``[n, ...]`` (a NumPy or JAX array, sliced on the host), or an iterable of
        chunks ``[m, ...]`` with ``m <= chunk_size`` (e.g. a data loader). Must be concrete
        (this function streams on the host; it is not traced under jit).
      k: examples kept per target.
      chunk_size: examples evaluated per compiled step.
      feed: how a chunk is passed to the model, ``x -> (args, kwargs)`` (default ``(x,), {}``).
      method: the model method to run: a name or a function ``(model, *args)``.

    Returns:
      :class:`TopK` with ``values, indices: [target, k]``, each row sorted descending.

    Raises:
      ValueError: NaN/inf in ``data``, an objective that is NaN on some example (never ranked
        as a value), an out-of-range unit, or an empty dataset.

    >>> import jax, jax.numpy as jnp, numpy as np
    >>> from jaxinterp import models
    >>> from jaxinterp.actmax import neuron
    >>> m = models.MLP(hidden=(4,))
    >>> v = models.init_vision(m, jax.random.key(0), (3,))
    >>> x = np.random.RandomState(0).rand(10, 3).astype(np.float32)
    >>> top = top_k_examples(m, v, lambda u: neuron("act_0", u), jnp.arange(4), x, k=2)
    >>> top.values.shape, top.indices.shape
    ((4, 2), (4, 2))
    """
    k = check_int(k, "k", lo=1)
    chunk_size = check_int(chunk_size, "chunk_size", lo=1)
    if feed is not None and not callable(feed):
        raise TypeError(f"feed: expected a function x -> (args, kwargs), got {type(feed).__name__}")
    fixed = isinstance(objective, Objective)
    if not fixed and not callable(objective):
        raise TypeError(f"objective: expected an Objective or a factory, got {type(objective)}")
    if fixed:
        if targets is not None:
            raise ValueError("targets: given, but objective is one fixed Objective")
        targets = jnp.zeros((1,), jnp.int32)
    elif targets is None:
        raise ValueError("targets: an objective factory needs targets with a [target] axis")
    n_targets = _num_targets(targets)
    make = (lambda t: objective) if fixed else objective
    first_obj = make(jax.tree.map(lambda t: t[0], targets))
    if not isinstance(first_obj, Objective):
        raise TypeError(f"objective: the factory returned {type(first_obj).__name__}")
    paths = first_obj.paths
    feed = feed or (lambda x: ((x,), {}))

    chunks = _chunks(data, chunk_size)
    first = next(chunks, None)
    if first is None:
        raise ValueError("data: expected at least one example, got an empty dataset")
    # static checks and concrete unit ranges, against the activation shapes of one example
    batched = objective if fixed else jax.vmap(make)(targets)
    if batched.structural:

        def shapes_of(x, variables):
            args, kwargs = feed(x)
            return forward_fn(model, variables, paths, method)(*args, **kwargs)

        out, acts = jax.eval_shape(shapes_of, jnp.asarray(first[:1]), variables)
        x1 = jnp.asarray(first[:1])
        acts = {**acts, INPUT: jax.ShapeDtypeStruct(x1.shape, x1.dtype), OUTPUT: out}
        batched.check({p: tuple(resolve(acts, p).shape) for p in paths})

    def update(state, x, valid, variables):
        best_v, best_i, offset, n_nan = state
        fwd = forward_fn(model, variables, paths, method)
        args, kwargs = feed(x)
        out, acts = fwd(*args, **kwargs)
        acts = {**acts, INPUT: x, OUTPUT: out}

        def per_target(t):
            obj = make(t)
            one = lambda a: obj(jax.tree.map(lambda v: v[None], a))
            return jax.vmap(one)(acts)  # [chunk]

        scores = jax.vmap(per_target)(targets)  # [target, chunk]
        nan = jnp.isnan(scores) & valid
        n_nan = n_nan + nan.sum(dtype=jnp.int32)
        scores = jnp.where(valid & ~nan, scores, -jnp.inf)
        idx = jnp.broadcast_to(offset + jnp.arange(x.shape[0]), scores.shape).astype(jnp.int32)
        v, sel = jax.lax.top_k(jnp.concatenate([best_v, scores], 1), k)
        i = jnp.take_along_axis(jnp.concatenate([best_i, idx], 1), sel, 1)
        return v, i, offset + valid.sum(dtype=jnp.int32), n_nan

    init = (
        jnp.full((n_targets, k), -jnp.inf, jnp.float32),
        jnp.full((n_targets, k), -1, jnp.int32),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
    )
    best_v, best_i, count, n_nan = stream_reduce(
        update,
        init,
        itertools.chain([first], chunks),
        chunk_size=chunk_size,
        args=(variables,),
    )
    if int(n_nan):
        raise ValueError(
            f"objective: NaN for {int(n_nan)} (target, example) pairs of {int(count)} examples; "
            "NaN is not ranked as a value. Check the model and the data."
        )
    # an entry never filled (fewer than k examples) is -inf with index -1
    best_i = jnp.where(jnp.isneginf(best_v) & (best_i < 0), -1, best_i)
    return TopK(best_v, best_i)
