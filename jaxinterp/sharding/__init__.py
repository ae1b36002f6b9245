"""Sharding over a device mesh, chunked execution and streaming for every batched analysis.

**Data versus streams** (one rule for every function that takes a dataset, see
:func:`is_stream`): an array, or a list/tuple (or other pytree) of arrays sharing the leading
example axis, is an *in-memory dataset*; it is sliced into chunks without copying. A function
returning an iterable of chunks, or any other iterable (iterator, generator), is a *stream*;
chunks may have any sizes and are re-cut. A function can be read many times; an iterator or
generator is used up after one pass, and reading it again raises a ``ValueError`` that says
so. An empty dataset or stream raises ``ValueError``.
"""

from jaxinterp.sharding._mesh import chunked, data_mesh, replicate, shard_batched, shard_leading
from jaxinterp.sharding._stream import is_stream, iter_chunks, stream_reduce

__all__ = [
    "chunked",
    "data_mesh",
    "is_stream",
    "iter_chunks",
    "replicate",
    "shard_batched",
    "shard_leading",
    "stream_reduce",
]
