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
import numpy as np
from jax.extend.core import Literal
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P


def _check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    return mesh


def data_mesh(axis: str = "data", devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over all (or the given) devices, with axis name ``axis``.

    Raises:
      TypeError: ``axis`` is not a string.
      ValueError: ``devices`` is empty.

    >>> data_mesh().axis_names
    ('data',)
    """
    if not isinstance(axis, str) or not axis:
        raise TypeError(f"axis: expected a non-empty axis name (str), got {axis!r}")
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices: expected at least one device, got none")
    return jax.make_mesh((len(devices),), (axis,), axis_types=(AxisType.Auto,), devices=devices)


def _axis_size(mesh: Mesh, axes: str | tuple[str, ...]) -> int:
    if isinstance(axes, str):
        names: tuple = (axes,)
    elif isinstance(axes, (tuple, list)) and axes and all(isinstance(a, str) for a in axes):
        names = tuple(axes)
    else:
        raise TypeError(f"axis: expected a mesh axis name or a tuple of names, got {axes!r}")
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


_CALLS = ("jit", "pjit", "closed_call", "core_call")


def _depends(jaxpr: Any, tainted: Sequence[bool]) -> list[bool]:
    """Which outputs of ``jaxpr`` depend on the inputs marked ``tainted`` (conservative)."""
    marks = dict(zip(jaxpr.invars, tainted))
    get = lambda v: not isinstance(v, Literal) and marks.get(v, False)
    for eqn in jaxpr.eqns:
        ins = [get(v) for v in eqn.invars]
        sub = eqn.params.get("jaxpr") if eqn.primitive.name in _CALLS else None
        if eqn.primitive.name == "axis_index":  # differs per device without any input
            outs = [True] * len(eqn.outvars)
        elif sub is not None and any(ins):
            outs = _depends(getattr(sub, "jaxpr", sub), ins)
        else:
            outs = [any(ins)] * len(eqn.outvars)
        marks.update(zip(eqn.outvars, outs))
    return [get(v) for v in jaxpr.outvars]


def _out_kinds(fn: Callable[..., Any], args: Sequence[Any], argnums: tuple, m: int) -> Any:
    """Classifies every output leaf of ``fn`` at per-device batch ``m``: batched or not.

    A leaf is *batched* when its leading axis follows the batch (``m`` rows at batch ``m``,
    ``2m`` at batch ``2m``); *unbatched* when its shape does not change with the batch and its
    value does not depend on the batched arguments (e.g. a parameter, a position embedding).
    Anything else (an output that reduces over the batch) cannot be split over devices.
    """

    def struct(x: Any, rows: int | None) -> jax.ShapeDtypeStruct:
        shape = tuple(jnp.shape(x))
        shape = shape if rows is None else (rows, *shape[1:])
        return jax.ShapeDtypeStruct(shape, jnp.result_type(x))

    def structs(rows: int) -> list:
        return [
            jax.tree.map(lambda x, r=(rows if i in argnums else None): struct(x, r), a)
            for i, a in enumerate(args)
        ]

    closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*structs(m))
    tainted = [
        flag for i, a in enumerate(args) for flag in [i in argnums] * len(jax.tree.leaves(a))
    ]
    dep = _depends(closed.jaxpr, tainted)
    try:
        shapes2 = jax.tree.leaves(jax.eval_shape(fn, *structs(2 * m)))
    except Exception:  # noqa: BLE001 - fn may need batch m exactly: fall back on m alone
        shapes2 = None
    flat, tree = jax.tree.flatten(shapes)
    kinds = []
    for k, leaf in enumerate(flat):
        sh = tuple(leaf.shape)
        sh2 = sh if shapes2 is None else tuple(shapes2[k].shape)
        follows = bool(sh) and sh[0] == m and (shapes2 is None or sh2 == (2 * m, *sh[1:]))
        if follows and (shapes2 is not None or dep[k]):
            kinds.append(True)
        elif sh2 == sh and not dep[k]:
            kinds.append(False)
        else:
            path = jax.tree_util.keystr(jax.tree_util.tree_flatten_with_path(shapes)[0][k][0])
            raise ValueError(
                f"fn: output{path or ''} of shape {sh} (at {m} items per device) has no leading "
                f"batch axis but depends on the batched arguments {argnums} (a reduction over "
                "the batch?); shard_batched splits the batch over devices, so it would be a "
                "partial result per device: return per-item values [n, ...] and reduce them "
                "after the call"
            )
    return jax.tree.unflatten(tree, kinds)


def shard_batched(
    fn: Callable[..., Any],
    mesh: Mesh,
    *,
    batch_argnums: int | Sequence[int] = 0,
    axis: str | tuple[str, ...] | None = None,
) -> Callable[..., Any]:
    """Wraps a batched ``fn`` so its leading axis is split over ``mesh``.

    ``fn`` must treat the leading axis of ``batch_argnums`` arguments as independent items, as
    a vmapped core does. Each output leaf is classified when the wrapper is traced:

    * *batched* (its leading axis follows the batch): split over the devices and returned
      ``[n, ...]``, padding dropped;
    * *unbatched* (its shape does not change with the batch and its value does not depend on
      the batched arguments, e.g. a captured parameter or a ``[1, seq, d]`` position
      embedding): returned once, as ``fn`` returns it — never tiled per device;
    * an output without the batch axis that depends on the batched arguments (a sum over the
      batch) raises ``ValueError``: it would be a per-device partial result.

    Args:
      fn: ``fn(*args) -> outputs``; batched args ``[n, ...]``.
      mesh: the device mesh.
      batch_argnums: which positional arguments carry the batch axis (pytrees allowed).
      axis: mesh axis name(s) the batch is split over. Default: every mesh axis except one
        named ``"model"``, which stays automatic inside ``fn`` (``shard_map`` manual over the
        other axes only), so weights placed over it by :func:`shard_params` stay
        tensor-parallel; without a ``"model"`` axis, all mesh axes.

    Returns:
      A function with the same signature and results. Call it inside or outside ``jit``.

    Raises:
      TypeError: ``fn`` is not callable, ``mesh`` is not a Mesh, ``batch_argnums`` or
        ``axis`` have the wrong type.
      ValueError: an unknown mesh axis; at call time, a missing batched argument, batched
        leaves without a shared leading axis, or an output that reduces over the batch.

    >>> f = lambda x: {"y": 2 * x, "c": jnp.ones((1, 3))}
    >>> out = shard_batched(f, data_mesh())(jnp.arange(5.0))
    >>> out["y"].shape, out["c"].shape
    ((5,), (1, 3))
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a function, got {type(fn).__name__}")
    mesh = _check_mesh(mesh)
    if isinstance(batch_argnums, (int, np.integer)) and not isinstance(batch_argnums, bool):
        argnums: tuple[int, ...] = (int(batch_argnums),)
    elif isinstance(batch_argnums, Sequence) and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in batch_argnums
    ):
        argnums = tuple(int(i) for i in batch_argnums)
    else:
        raise TypeError(
            f"batch_argnums: expected an int or a sequence of ints, got {batch_argnums!r}"
        )
    if not argnums or any(i < 0 for i in argnums):
        raise ValueError(
            f"batch_argnums: expected one or more non-negative argument indices, got {argnums}"
        )
    manual = None  # shard_map over every mesh axis, unless 'model' is kept automatic
    if axis is None:
        axes: str | tuple[str, ...] = tuple(a for a in mesh.axis_names if a != "model")
        if axes and len(axes) < len(mesh.axis_names):
            manual = set(axes)
        else:
            axes = tuple(mesh.axis_names)
    else:
        axes = axis
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
        if n == 0:
            raise ValueError(f"batch_argnums: the batch of arguments {argnums} is empty (0 rows)")
        padded = [
            jax.tree.map(lambda x: _pad_leading(jnp.asarray(x), size), a) if i in argnums else a
            for i, a in enumerate(args)
        ]
        m = (n + (-n) % size) // size
        kinds = _out_kinds(fn, padded, argnums, m)
        specs = tuple(
            jax.tree.map(lambda _: P(axes), a) if i in argnums else jax.tree.map(lambda _: P(), a)
            for i, a in enumerate(padded)
        )
        explicit = any(t == AxisType.Explicit for t in mesh.axis_types)
        if explicit:
            padded = [
                jax.tree.map(lambda x, s: jax.reshard(x, NamedSharding(mesh, s)), a, sp)
                for a, sp in zip(padded, specs)
            ]
        out_specs = jax.tree.map(lambda b: P(axes) if b else P(), kinds)
        kw = {} if manual is None else {"axis_names": manual}
        out = jax.shard_map(
            fn, mesh=mesh, in_specs=specs, out_specs=out_specs, check_vma=False, **kw
        )(*padded)
        if explicit and n % size:
            out = jax.tree.map(
                lambda y, b: jax.reshard(y, NamedSharding(mesh, P())) if b else y, out, kinds
            )
        return jax.tree.map(lambda y, b: y[:n] if b else y, out, kinds)

    return wrapped


def chunked(fn: Callable[..., Any], chunk_size: int | None) -> Callable[..., Any]:
    """Runs single-item ``fn`` vmapped over the leading axis, ``chunk_size`` items at a time.

    Args:
      fn: ``fn(item) -> output`` for ONE item (a pytree without the batch axis).
      chunk_size: items per vmapped chunk; ``None`` vmaps everything at once.

    Returns:
      ``g(items) -> outputs`` with a leading ``[n]`` axis, equal to ``jax.vmap(fn)(items)``.

    Raises:
      TypeError: ``fn`` is not callable or ``chunk_size`` is not an int or None.
      ValueError: ``chunk_size < 1``.

    >>> chunked(lambda r: r.sum(), 2)(jnp.ones((5, 3))).tolist()
    [3.0, 3.0, 3.0, 3.0, 3.0]
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a function, got {type(fn).__name__}")
    if chunk_size is None:
        return jax.vmap(fn)
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, (int, np.integer)):
        raise TypeError(f"chunk_size: expected a positive integer or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer or None, got {chunk_size}")
    return lambda items: jax.lax.map(fn, items, batch_size=int(chunk_size))


def replicate(x: Any, mesh: Mesh) -> Any:
    """Places a pytree on every device of ``mesh`` (fully replicated).

    >>> replicate(jnp.ones(3), data_mesh()).sharding.spec
    P()
    """
    return jax.device_put(x, NamedSharding(_check_mesh(mesh), P()))


def shard_leading(x: Any, mesh: Mesh, axis: str | tuple[str, ...] = "data") -> Any:
    """Places a pytree with its leading axis split over mesh axis ``axis``.

    Every leaf needs a leading axis whose length is a multiple of the axis' device count.

    Raises:
      TypeError: ``mesh`` is not a Mesh or ``axis`` is not a name.
      ValueError: ``axis`` is not a mesh axis, or a leaf has no leading axis divisible by
        its size.

    >>> shard_leading(jnp.ones((8, 2)), data_mesh()).sharding.spec  # 8 rows: 1 or 8 devices
    P('data',)
    """
    size = _axis_size(_check_mesh(mesh), axis)
    for path, leaf in jax.tree_util.tree_flatten_with_path(x)[0]:
        shape = tuple(jnp.shape(leaf))
        if not shape or shape[0] % size:
            raise ValueError(
                f"x: leaf{jax.tree_util.keystr(path)} of shape {shape} needs a leading axis "
                f"divisible by the {size} devices of mesh axis {axis!r}"
            )
    return jax.device_put(x, NamedSharding(mesh, P(axis)))
