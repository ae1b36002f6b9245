"""Sharding over a device mesh, chunked execution and streaming for every batched analysis.

**Data versus streams** (one rule for every function that takes a dataset, see
:func:`is_stream`): an array, or a list/tuple (or other pytree) of arrays sharing the leading
example axis, is an *in-memory dataset*; it is sliced into chunks without copying. A function
returning an iterable of chunks, or any other iterable (iterator, generator), is a *stream*;
chunks may have any sizes and are re-cut. A function can be read many times; an iterator or
generator is used up after one pass, and reading it again raises a ``ValueError`` that says
so. An empty dataset or stream raises ``ValueError``.

**Weights larger than one device.** :func:`model_mesh` builds a 2-D mesh ``('data',
'model')``; :func:`shard_params` places parameters on it by ``(regex, PartitionSpec)`` path
rules (:func:`decoder_rules` for :class:`jaxinterp.models.Decoder`: heads and MLP hidden units
over ``model``, the ``d_model`` axis over ``data``; any other leaf: its largest divisible axis
over all devices, small leaves replicated). Put the batch on the ``data`` axis with
:func:`shard_leading` and call the analysis under ``jax.jit`` with the sharded variables as an
*argument* (a closed-over array becomes a replicated constant)::

    mesh = model_mesh(model=2)                      # 8 devices: data 4 × model 2
    v = shard_params(variables, mesh)               # each device holds ≈ 1/8 of the bytes
    x = shard_leading(tokens, mesh, "data")
    out, acts = jax.jit(lambda v, x: capture(model, v, select="blocks_*")(x))(v, x)

XLA partitions the program (GSPMD) and inserts the collectives; results equal one device's up
to float reassociation of the sharded matrix products. :func:`device_bytes` reports the bytes
each device holds. The ``mesh=`` argument of the batched analyses (sites, targets, layers over
devices) is a separate, complementary split; inside it the weights are gathered per device.

**Many hosts.** Start the same program on every host and call, before any other jax call,
``jax.distributed.initialize(coordinator_address="host0:1234", num_processes=N,
process_id=i)`` (on TPU pods and SLURM/Open MPI clusters the arguments are read from the
environment). ``jax.devices()`` then lists the devices of all hosts, so :func:`model_mesh`,
:func:`data_mesh` and :func:`shard_params` span them unchanged (each host must hold the full
parameter values it passes: every host loads the same checkpoint; only its own shards are
placed on its devices). Each host loads only its own rows of the batch and builds the global
array with ``jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), local_rows,
global_shape)``. Results are global arrays: read your host's part from
``.addressable_shards``, or gather a small result everywhere with
``jax.experimental.multihost_utils.process_allgather``. ``tests/sharded/check_multihost.py``
runs two processes × 4 CPU devices this way.
"""

from jaxinterp.sharding._mesh import chunked, data_mesh, replicate, shard_batched, shard_leading
from jaxinterp.sharding._params import (
    decoder_rules,
    device_bytes,
    model_mesh,
    param_path,
    param_specs,
    shard_params,
)
from jaxinterp.sharding._stream import is_stream, iter_chunks, stream_reduce

__all__ = [
    "chunked",
    "data_mesh",
    "decoder_rules",
    "device_bytes",
    "is_stream",
    "iter_chunks",
    "model_mesh",
    "param_path",
    "param_specs",
    "replicate",
    "shard_batched",
    "shard_leading",
    "shard_params",
    "stream_reduce",
]
