"""Running a batched analysis over a device mesh, and in chunks to a memory budget.

Every batched capability in jaxinterp (act-max over targets, probes over layers × tasks, patch
sweeps over sites, capture and attention over examples) is a ``vmap`` over a single-item core.
That makes scaling a question of *where the batch axis lives*, answered here once:

* :func:`shard_batched` splits the leading axis of chosen arguments over one or more mesh axes
  with ``jax.shard_map``; the other arguments are replicated. Each device runs the same vmapped
  core on its slice, so results equal the single-device ones up to float reassociation. The
  leading axis is padded to a multiple of the device count and the padding dropped afterwards.
* :func:`chunked` runs the vmapped core over the leading axis ``chunk_size`` items at a time
  (``jax.lax.map`` with ``batch_size``), so peak memory is that of one chunk.

Many hosts: call ``jax.distributed.initialize()`` on every host first; ``jax.make_mesh`` then
spans all devices of all hosts and the same call runs unchanged (the arrays passed in must be
global, e.g. built with ``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh(axis: str = "data", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (or the given) devices, with axis name ``axis``.

    >>> data_mesh().axis_names
    ('data',)
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def _axis_size(mesh: Mesh, axes: str | tuple[str, ...]) -> int:
    names = (axes,) if isinstance(axes, str) else axes
    for name in names:
        if name not in mesh.shape:
            raise ValueError(f"axis: {name!r} is not an axis of the mesh {dict(mesh.shape)}")
    return math.prod(mesh.shape[n] for n in names)


def _pad_leading(x: jax.Array, multiple: int) -> jax.Array:
    n = x.shape[0]
    pad = (-n) % multiple
    if pad == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)


def shard_batched(
    fn: Callable[..., Any],
    mesh: Mesh,
    *,
    batch_argnums: int | Sequence[int] = 0,
    axis: str | tuple[str, ...] | None = None,
) -> Callable[..., Any]:
    """Wraps a batched ``fn`` so its leading axis is split over ``mesh``.

    ``fn`` must treat the leading axis of ``batch_argnums`` arguments (and of every output) as
    independent items, as a vmapped core does.

    Args:
      fn: ``fn(*args) -> outputs``; batched args ``[n, ...]``, every output leaf ``[n, ...]``.
      mesh: the device mesh.
      batch_argnums: which positional arguments carry the batch axis (pytrees allowed).
      axis: mesh axis name(s) the batch is split over; default all mesh axes.

    Returns:
      A function with the same signature and results. Call it inside or outside ``jit``.
    """
    argnums = (batch_argnums,) if isinstance(batch_argnums, int) else tuple(batch_argnums)
    axes = tuple(mesh.axis_names) if axis is None else axis
    size = _axis_size(mesh, axes)

    def wrapped(*args: Any) -> Any:
        for i in argnums:
            if i >= len(args):
                raise ValueError(f"batch_argnums: argument {i} not given ({len(args)} args)")
        leaves = jax.tree.leaves([args[i] for i in argnums])
        if not leaves:
            raise ValueError("batch_argnums: the batched arguments hold no arrays")
        shapes = [tuple(jnp.shape(x)) for x in leaves]
        if any(not sh for sh in shapes) or len({sh[0] for sh in shapes}) > 1:
            raise ValueError(
                f"batch_argnums: every leaf of arguments {argnums} needs the same leading "
                f"[batch] axis; got shapes {shapes}"
            )
        n = shapes[0][0]
        padded = [
            jax.tree.map(lambda x: _pad_leading(jnp.asarray(x), size), a) if i in argnums else a
            for i, a in enumerate(args)
        ]
        specs = tuple(
            jax.tree.map(lambda _: P(axes), a) if i in argnums else jax.tree.map(lambda _: P(), a)
            for i, a in enumerate(padded)
        )
        if any(t == AxisType.Explicit for t in mesh.axis_types):
            padded = [
                jax.tree.map(lambda x, s: jax.reshard(x, NamedSharding(mesh, s)), a, sp)
                for a, sp in zip(padded, specs)
            ]
        out = jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P(axes), check_vma=False)(
            *padded
        )
        if any(t == AxisType.Explicit for t in mesh.axis_types) and n % size:
            out = jax.tree.map(lambda y: jax.reshard(y, NamedSharding(mesh, P())), out)
        return jax.tree.map(lambda y: y[:n], out)

    return wrapped


def chunked(fn: Callable[..., Any], chunk_size: int | None) -> Callable[..., Any]:
    """Runs single-item ``fn`` vmapped over the leading axis, ``chunk_size`` items at a time.

    Args:
      fn: ``fn(item) -> output`` for ONE item (a pytree without the batch axis).
      chunk_size: items per vmapped chunk; ``None`` vmaps everything at once.

    Returns:
      ``g(items) -> outputs`` with a leading ``[n]`` axis, equal to ``jax.vmap(fn)(items)``.
    """
    if chunk_size is None:
        return jax.vmap(fn)
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer or None, got {chunk_size}")
    return lambda items: jax.lax.map(fn, items, batch_size=chunk_size)


def replicate(x: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device of ``mesh`` (fully replicated)."""
    return jax.device_put(x, NamedSharding(mesh, P()))


def shard_leading(x: Any, mesh: Mesh, axis: str | tuple[str, ...] = "data") -> Any:
    """Places a pytree with its leading axis split over mesh axis ``axis``."""
    return jax.device_put(x, NamedSharding(mesh, P(axis)))
