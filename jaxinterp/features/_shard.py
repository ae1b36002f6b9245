"""Training a stack of dictionaries sharded over a device mesh.

The stacked training step (:func:`jaxinterp.features.train_steps`) is one ``jit`` program, so
sharding is a matter of where its inputs live; XLA partitions the program (GSPMD) and inserts
the collectives. Three axes can be split:

* the batch (axis 1 of ``xs [steps, batch, n_sites, d]``) over a *data* axis:
  :func:`shard_batch`; every device computes the loss of its tokens and the gradients are
  summed across devices;
* the latents (``d_sae``: columns of ``W_enc``, rows of ``W_dec``, their Adam moments and the
  per-latent counters) over a *model* axis, for dictionaries wider than one device holds:
  ``shard_state(..., latent="model")``;
* or the stack (the leading ``[dict]`` axis of every leaf) over a model axis, for many small
  dictionaries: ``shard_state(..., stack="model")``.

Results equal the one-device run up to float reassociation of the sharded sums. Build the
mesh with :func:`jaxinterp.sharding.model_mesh` (``('data', 'model')``) or
:func:`jaxinterp.sharding.data_mesh`; :func:`jaxinterp.features.train` takes ``mesh=`` and
places each block of batches with :func:`shard_batch`.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxinterp.features._arch import Params
from jaxinterp.features._train import TrainState


def _axis(mesh: Mesh, name: str | None, what: str) -> int:
    if name is None:
        return 1
    if not isinstance(name, str) or name not in mesh.axis_names:
        raise ValueError(f"{what}: expected a mesh axis name in {mesh.axis_names}, got {name!r}")
    return int(mesh.shape[name])


def _check_mesh(mesh: Any) -> Mesh:
    if not isinstance(mesh, Mesh):
        raise TypeError(f"mesh: expected a jax.sharding.Mesh, got {type(mesh).__name__}")
    return mesh


# the axis of each Params field that indexes latents (after the leading [dict] axis)
def _latent_axes(params: Params) -> Params:
    return Params(
        W_enc=params.W_enc.ndim - 1, b_enc=1, W_dec=1, b_dec=None, threshold=1
    )  # fmt: skip


def _spec(ndim: int, stack: str | None, latent: str | None, latent_axis: int | None) -> P:
    entries: list[Any] = [stack] + [None] * (ndim - 1)
    if latent is not None and latent_axis is not None:
        entries[latent_axis] = latent
    return P(*entries)


def shard_state(
    state: TrainState, mesh: Mesh, *, latent: str | None = None, stack: str | None = None
) -> TrainState:
    """Places a training state on ``mesh``: latents and/or the stack split over mesh axes.

    Args:
      state: from :func:`jaxinterp.features.init_train` (``[dict, ...]`` leaves).
      mesh: the device mesh.
      latent: mesh axis over which the ``d_sae`` latents are split (``None``: not split).
      stack: mesh axis over which the ``[dict]`` stack is split (``None``: not split).

    Returns:
      The same state, each leaf a global array with a ``NamedSharding`` on ``mesh``
      (replicated along the axes not named).

    Raises:
      TypeError: ``state`` is not a :class:`~jaxinterp.features.TrainState` or ``mesh`` not a
        Mesh.
      ValueError: an axis is not a mesh axis, both name the same axis, or ``d_sae`` / the
        number of dictionaries is not divisible by its axis' size.

    >>> from jaxinterp.features import init_params, init_train
    >>> from jaxinterp.sharding import data_mesh
    >>> ps = jax.vmap(lambda k: init_params(k, 4, 8))(jax.random.split(jax.random.key(0), 2))
    >>> st = shard_state(init_train(ps), data_mesh("model"), latent="model")
    >>> st.params.W_dec.sharding.spec
    P(None, 'model', None)
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state: expected a TrainState, got {type(state).__name__}")
    mesh = _check_mesh(mesh)
    n_lat, n_stack = _axis(mesh, latent, "latent"), _axis(mesh, stack, "stack")
    if latent is not None and latent == stack:
        raise ValueError(f"latent, stack: expected two different mesh axes, got {latent!r} twice")
    n, d_sae = state.latent_mask.shape
    if d_sae % n_lat:
        raise ValueError(
            f"latent: d_sae={d_sae} is not divisible by the {n_lat} devices of mesh axis {latent!r}"
        )
    if n % n_stack:
        raise ValueError(
            f"stack: {n} dictionaries are not divisible by the {n_stack} devices of mesh axis "
            f"{stack!r}"
        )
    axes = _latent_axes(state.params)

    def params_specs(p: Params) -> Params:
        return Params(*(_spec(a.ndim, stack, latent, ax) for a, ax in zip(p, axes)))

    def opt_spec(x: Any) -> Any:  # Adam moments are Params; the counters are [dict]
        return params_specs(x) if isinstance(x, Params) else _spec(x.ndim, stack, None, None)

    specs = TrainState(
        params=params_specs(state.params),
        opt_state=jax.tree.map(opt_spec, state.opt_state, is_leaf=lambda x: isinstance(x, Params)),
        since_fired=_spec(2, stack, latent, 1),
        latent_mask=_spec(2, stack, latent, 1),
        dec_mask=_spec(state.dec_mask.ndim, stack, latent, 1),
        step=_spec(1, stack, None, None),
    )
    return jax.tree.map(
        lambda x, s: jax.device_put(x, NamedSharding(mesh, s)),
        state,
        specs,
        is_leaf=lambda x: isinstance(x, P),
    )


def shard_batch(xs: Any, mesh: Mesh, *, data: str = "data") -> jax.Array:
    """Places training batches ``[steps, batch, ...]`` with the batch axis split over ``data``.

    Args:
      xs: ``[steps, batch, n_sites, d]`` (or any ``[steps, batch, ...]``) activations.
      mesh: the device mesh.
      data: the mesh axis of the batch.

    Returns:
      ``xs`` as a global array sharded ``P(None, data)``.

    Raises:
      ValueError: ``data`` is not a mesh axis, ``xs`` has fewer than 2 axes, or its batch is
        not divisible by the axis' size.

    >>> from jaxinterp.sharding import data_mesh
    >>> shard_batch(np.zeros((3, 8, 2, 4)), data_mesh()).sharding.spec
    P(None, 'data')
    """
    mesh = _check_mesh(mesh)
    size = _axis(mesh, data, "data")
    shape = np.shape(xs)
    if len(shape) < 2:
        raise ValueError(f"xs: expected [steps, batch, ...], got shape {tuple(shape)}")
    if shape[1] % size:
        raise ValueError(
            f"xs: the batch of {shape[1]} is not divisible by the {size} devices of mesh axis "
            f"{data!r}"
        )
    return jax.device_put(xs, NamedSharding(mesh, P(None, data)))


__all__ = ["shard_batch", "shard_state"]
