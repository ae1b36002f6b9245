"""Streaming a dataset larger than device memory through a jitted reduction, chunk by chunk.

A streamed analysis is a fold: ``state = step(state, chunk, valid)`` over fixed-size chunks.
:func:`stream_reduce` keeps every chunk the same shape (the last one is padded and ``valid``
marks its real rows), so ``step`` compiles once; it places each chunk on the device(s) just
before use (split over ``mesh`` when one is given) and lets the previous chunk be freed, so peak
device memory is one or two chunks plus the state, whatever the dataset size.
:func:`iter_chunks` cuts in-memory or memory-mapped arrays into such chunks without copying the
whole dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

State = TypeVar("State")


def iter_chunks(data: Any, chunk_size: int) -> Iterator[Any]:
    """Yields consecutive ``[chunk_size, ...]`` slices of a pytree of arrays (last may be short).

    Args:
      data: pytree of arrays (numpy, ``np.memmap`` or jax) sharing the leading length ``n``.
      chunk_size: rows per chunk.
    """
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data: expected at least one array")
    n = leaves[0].shape[0]
    for leaf in leaves:
        if leaf.shape[0] != n:
            raise ValueError(f"data: leading lengths differ ({n} vs {leaf.shape[0]})")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    for start in range(0, n, chunk_size):
        yield jax.tree.map(lambda a, s=start: a[s : s + chunk_size], data)


def _pad_to(chunk: Any, size: int) -> tuple[Any, np.ndarray]:
    """Pads every leaf to ``size`` rows by repeating its last row (zeros if it has none).

    Repeating a real row keeps padding inside the data's domain (valid token ids, non-empty
    masks), so a masked-out padding row can never turn into ``nan`` that a ``0 * x`` mask keeps.
    """
    n = jax.tree.leaves(chunk)[0].shape[0]
    if n > size:
        raise ValueError(f"chunks: got a chunk of {n} rows, more than chunk_size={size}")
    valid = np.arange(size) < n
    if n == size:
        return chunk, valid

    def pad(a):
        a = np.asarray(a)
        fill = np.repeat(a[-1:], size - n, axis=0) if n else np.zeros((size, *a.shape[1:]), a.dtype)
        return np.concatenate([a, fill], axis=0)

    return jax.tree.map(pad, chunk), valid


def _check_state(new: Any, old: Any) -> None:
    spec = lambda t: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), t)
    if jax.tree.structure(new) != jax.tree.structure(old) or spec(new) != spec(old):
        raise TypeError(
            "step: must return a state with the structure, shapes and dtypes of the initial "
            f"state {spec(old)}; got {spec(new)}"
        )


def stream_reduce(
    step: Callable[[State, Any, jax.Array], State],
    state: State,
    chunks: Iterable[Any],
    *,
    chunk_size: int,
    mesh: Mesh | None = None,
    axis: str | tuple[str, ...] = "data",
    args: tuple = (),
) -> State:
    """Folds ``step`` over a stream of chunks with one compilation.

    Args:
      step: ``step(state, chunk, valid, *args) -> state``; ``chunk`` is a pytree of
        ``[chunk_size, ...]`` arrays and ``valid: [chunk_size] bool`` marks real rows (padding
        rows repeat the chunk's last row and must not count).
      state: the initial state (pytree of arrays).
      chunks: an iterable of pytrees with at most ``chunk_size`` rows each (see
        :func:`iter_chunks`); it is consumed lazily, so it can read from disk or a generator.
      chunk_size: the fixed row count every chunk is padded to.
      mesh: optional mesh; each chunk is then split over ``axis`` (``chunk_size`` must be a
        multiple of that axis' size) and the state is replicated.
      axis: mesh axis name(s) for the rows.
      args: extra arguments passed to every ``step`` call unchanged and not donated (e.g. model
        variables, so they are jit arguments rather than constants baked into the program);
        replicated over ``mesh``.

    Returns:
      The final state.

    >>> import numpy as np
    >>> x = np.arange(10.0)
    >>> total = stream_reduce(lambda s, c, v: s + (c * v).sum(), jnp.zeros(()),
    ...                       iter_chunks(x, 4), chunk_size=4)
    >>> float(total)
    45.0
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    if not isinstance(args, tuple):
        raise TypeError(
            f"args: expected a tuple of extra step arguments, got {type(args).__name__}"
        )
    jstep = jax.jit(step, donate_argnums=0)
    put: Callable[[Any], Any]
    if mesh is None:
        put = jax.device_put
    else:
        names = (axis,) if isinstance(axis, str) else tuple(axis)
        size = int(np.prod([mesh.shape[a] for a in names]))
        if chunk_size % size:
            raise ValueError(
                f"chunk_size: must be a multiple of the mesh axis size {size}, got {chunk_size}"
            )
        rows = NamedSharding(mesh, P(axis))
        state = jax.device_put(state, NamedSharding(mesh, P()))
        put = lambda tree: jax.device_put(tree, rows)
        args = jax.device_put(args, NamedSharding(mesh, P()))
    state = jax.tree.map(jnp.array, state)  # own copy: the caller's buffers are not donated
    checked = False
    for chunk in chunks:
        padded, valid = _pad_to(chunk, chunk_size)
        padded, valid = put(padded), put(valid)
        if not checked:
            _check_state(jax.eval_shape(step, state, padded, valid, *args), state)
            checked = True
        state = jstep(state, padded, valid, *args)
    return state
