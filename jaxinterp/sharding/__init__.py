"""Sharding over a device mesh and chunked execution for every batched analysis."""

from jaxinterp.sharding._mesh import chunked, data_mesh, replicate, shard_batched, shard_leading

__all__ = ["chunked", "data_mesh", "replicate", "shard_batched", "shard_leading"]
