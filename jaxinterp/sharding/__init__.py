"""Sharding over a device mesh, chunked execution and streaming for every batched analysis."""

from jaxinterp.sharding._mesh import chunked, data_mesh, replicate, shard_batched, shard_leading
from jaxinterp.sharding._stream import iter_chunks, stream_reduce

__all__ = [
    "chunked",
    "data_mesh",
    "iter_chunks",
    "replicate",
    "shard_batched",
    "shard_leading",
    "stream_reduce",
]
