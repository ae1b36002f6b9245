"""Streaming a dataset larger than device memory through a jitted reduction, chunk by chunk.

A streamed analysis is a fold: ``state = step(state, chunk, valid)`` over fixed-size chunks.
:func:`stream_reduce` keeps every chunk the same shape (the last one is padded and ``valid``
marks its real rows), so ``step`` compiles once; it places each chunk on the device(s) just
before use (split over ``mesh`` when one is given) and lets the previous chunk be freed, so peak
device memory is one or two chunks plus the state, whatever the dataset size.
:func:`iter_chunks` cuts in-memory or memory-mapped arrays into such chunks without copying the
whole dataset: each chunk is a slice (a view for numpy and ``np.memmap``), so cutting ``n`` rows
costs ``O(n)`` in total.

**Data versus streams.** An *in-memory dataset* is an array (numpy, ``np.memmap`` or jax) or a
pytree of arrays sharing the leading example axis. A *stream* is an iterable of such chunks
that is read once, in order: an iterator, a generator, or a function returning a fresh
iterable (a function can be re-read; an iterator or generator is used up after one pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

State = TypeVar("State")


def is_stream(data: Any) -> bool:
    """Whether ``data`` is a stream of chunks rather than an in-memory dataset.

    In memory: an array (numpy, ``np.memmap``, jax), or a list/tuple of arrays (e.g. a model's
    positional inputs ``[input_ids, attention_mask]``), or another pytree of arrays such as a
    dict. Stream: a function (called with no arguments, it returns a fresh iterable of chunks;
    it can be read again), or any other iterable: an iterator, a generator, a dataset object
    (read once: an iterator or generator is used up after one pass). Strings are neither.

    >>> is_stream(np.zeros((4, 2))), is_stream([np.zeros(4), np.ones(4)])
    (False, False)
    >>> is_stream(iter_chunks(np.zeros(4), 2)), is_stream(lambda: iter_chunks(np.zeros(4), 2))
    (True, True)
    """
    if hasattr(data, "shape") or isinstance(data, (tuple, list, dict, str, bytes)):
        return False
    return callable(data) or hasattr(data, "__iter__")


def _leading_length(tree: Any, name: str) -> int:
    """The shared leading length of every leaf of ``tree`` (arrays with at least one axis)."""
    leaves = jax.tree.leaves(tree)
    if not leaves:
        raise ValueError(f"{name}: expected at least one array, got {tree!r:.60}")
    shapes = []
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is None:
            raise TypeError(f"{name}: expected arrays, got a leaf of type {type(leaf).__name__}")
        shapes.append(tuple(shape))
    if any(len(s) == 0 for s in shapes):
        raise ValueError(f"{name}: expected arrays with a leading [n] axis, got shapes {shapes}")
    if len({s[0] for s in shapes}) > 1:
        raise ValueError(f"{name}: leading lengths differ, got shapes {shapes}")
    return shapes[0][0]


def _check_chunk_size(chunk_size: Any) -> int:
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size: expected a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    return int(chunk_size)


def iter_chunks(data: Any, chunk_size: int) -> Iterator[Any]:
    """Yields consecutive ``[chunk_size, ...]`` slices of a pytree of arrays (last may be short).

    The arguments are checked when this is called (not at the first ``next``). Each chunk is a
    slice of ``data`` (a view for numpy arrays and memory maps), so the whole pass is linear in
    the number of rows.

    Args:
      data: pytree of arrays (numpy, ``np.memmap`` or jax) sharing the leading length ``n``.
      chunk_size: rows per chunk, ``>= 1``.

    Returns:
      An iterator over ``ceil(n / chunk_size)`` chunks, pytrees like ``data``.

    Raises:
      TypeError: ``chunk_size`` is not an int, or ``data`` holds non-arrays.
      ValueError: ``chunk_size < 1``, ``data`` is empty or its leading lengths differ.

    >>> [c.tolist() for c in iter_chunks(np.arange(5), 2)]
    [[0, 1], [2, 3], [4]]
    """
    n = _leading_length(data, "data")
    chunk_size = _check_chunk_size(chunk_size)

    def gen() -> Iterator[Any]:
        for start in range(0, n, chunk_size):
            yield jax.tree.map(lambda a, s=start: a[s : s + chunk_size], data)

    return gen()


def _pad_to(chunk: Any, size: int) -> tuple[Any, np.ndarray]:
    """Pads every leaf to ``size`` rows by repeating its last row (zeros if it has none).

    Repeating a real row keeps padding inside the data's domain (valid token ids, non-empty
    masks), so a masked-out padding row can never turn into ``nan`` that a ``0 * x`` mask keeps.
    """
    n = _leading_length(chunk, "chunks")
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


def _raise_failed(err: Any) -> None:
    if err is not None:
        msg = err.get()
        if msg is not None:
            raise ValueError(msg)


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
    chunks: Iterable[Any] | Callable[[], Iterable[Any]],
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
      chunks: a stream of pytrees with at most ``chunk_size`` rows each: an iterable (e.g.
        :func:`iter_chunks`, a generator) or a function returning one. It is consumed lazily,
        so it can read from disk. An in-memory array is not a stream: wrap it with
        :func:`iter_chunks`.
      chunk_size: the fixed row count every chunk is padded to.
      mesh: optional mesh; each chunk is then split over ``axis`` (``chunk_size`` must be a
        multiple of that axis' size) and the state is replicated.
      axis: mesh axis name(s) for the rows.
      args: extra arguments passed to every ``step`` call unchanged and not donated (e.g. model
        variables, so they are jit arguments rather than constants baked into the program);
        replicated over ``mesh``.

    Returns:
      The final state.

    Value checks registered inside ``step`` with :func:`jaxinterp._checks.value_check` (e.g.
    a model's token-range check) raise ``ValueError`` here, as on any concrete input.

    Raises:
      TypeError: ``step`` is not callable, ``chunks`` is an array or not iterable, ``args`` is
        not a tuple, or ``step`` changes the state's structure, shapes or dtypes.
      ValueError: ``chunk_size`` is not positive (or not a multiple of the mesh axis size),
        a chunk is longer than ``chunk_size``, or the stream yields no chunks (an iterator or
        generator that was already used up yields none).

    >>> import numpy as np
    >>> x = np.arange(10.0)
    >>> total = stream_reduce(lambda s, c, v: s + (c * v).sum(), jnp.zeros(()),
    ...                       iter_chunks(x, 4), chunk_size=4)
    >>> float(total)
    45.0
    """
    if not callable(step):
        raise TypeError(f"step: expected a function, got {type(step).__name__}")
    chunk_size = _check_chunk_size(chunk_size)
    if not isinstance(args, tuple):
        raise TypeError(
            f"args: expected a tuple of extra step arguments, got {type(args).__name__}"
        )
    if hasattr(chunks, "shape"):
        raise TypeError(
            f"chunks: expected a stream of chunks, got an array of shape {tuple(chunks.shape)}; "
            "cut it with iter_chunks(data, chunk_size)"
        )
    source = chunks() if callable(chunks) else chunks
    try:
        iterator = iter(source)
    except TypeError:
        raise TypeError(
            f"chunks: expected an iterable of chunks (or a function returning one), got "
            f"{type(source).__name__}"
        ) from None
    # value checks registered inside step (jaxinterp's policy: a model's token-range check, an
    # objective's index check) would only poison results under jit; the data here are
    # concrete, so they are collected with checkify and raised as errors.
    jstep = jax.jit(checkify.checkify(step, errors=checkify.user_checks), donate_argnums=0)
    put: Callable[[Any], Any]
    if mesh is None:
        put = jax.device_put
    else:
        if not isinstance(mesh, Mesh):
            raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
        names = (axis,) if isinstance(axis, str) else tuple(axis)
        for a in names:
            if a not in mesh.shape:
                raise ValueError(f"axis: {a!r} is not an axis of the mesh {dict(mesh.shape)}")
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
    seen = False
    pending = None  # the previous chunk's check result, read one step behind (no stall)
    for chunk in iterator:
        padded, valid = _pad_to(chunk, chunk_size)
        padded, valid = put(padded), put(valid)
        if not seen:
            _check_state(jax.eval_shape(step, state, padded, valid, *args), state)
            seen = True
        err, state = jstep(state, padded, valid, *args)
        _raise_failed(pending)
        pending = err
    _raise_failed(pending)
    if not seen:
        raise ValueError(
            "chunks: the stream yielded no chunks (an iterator or generator is used up after "
            "one pass; pass a new one, or a function returning one)"
        )
    return state
