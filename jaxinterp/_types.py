"""Type aliases and callable protocols shared by the public entry points.

One module for the names that appear in many signatures, as ``chex.pytypes`` does for arrays
and ``optax._src.base`` does for gradient transformations:

* :data:`Model`, :data:`Variables` and :data:`ModelAndVariables`: what every capability takes
  first. A linen module comes with its variables (``{"params": ...}``); an nnx module carries
  its own state and comes with ``None``.
* :class:`ObjectiveFn`, :class:`MetricFn`, :class:`EditFn`: the callables a user passes in
  (what :func:`jaxinterp.actmax.maximize` maximizes, what a patch sweep measures, what an
  intervention does at a site), written as :class:`typing.Protocol` so any function or object
  with the right call signature type-checks, without subclassing anything.

This module imports only jax, flax and chex (never another ``jaxinterp`` module), so every
part of the package can import it without a cycle.

>>> import jax.numpy as jnp
>>> from jaxinterp import interventions as iv
>>> from jaxinterp._types import EditFn, MetricFn
>>> edit: EditFn = iv.zero(at={-1: 0})
>>> edit(jnp.ones((1, 3))).tolist()
[[0.0, 1.0, 1.0]]
>>> metric: MetricFn = lambda logits: logits[:, -1].mean()
>>> float(metric(jnp.ones((2, 4))))
1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, Union, runtime_checkable

import chex
import flax.linen as nn
import jax
from flax import nnx

__all__ = [
    "Activations",
    "Array",
    "EditFn",
    "MetricFn",
    "Model",
    "ModelAndVariables",
    "ObjectiveFactory",
    "ObjectiveFn",
    "PRNGKey",
    "PyTree",
    "Variables",
]

Array = jax.Array
"""A JAX array (concrete or traced)."""

PRNGKey = chex.PRNGKey
"""One PRNG key, ``jax.random.key(seed)`` (shape ``()``)."""

PyTree = chex.ArrayTree
"""A nested structure of arrays (dicts, lists, tuples, dataclasses registered with jax)."""

Activations = dict[str, jax.Array]
"""Captured activations ``{path: activation}``, e.g. ``{"block_0/attn": [batch, seq, ...]}``."""

Model = Union[nn.Module, nnx.Module]
"""A Flax model: a linen module (bound to :data:`Variables`) or an nnx module."""

Variables = Union[Mapping[str, PyTree], None]
"""Linen variables ``{"params": ..., ...}``; ``None`` for an nnx module."""

ModelAndVariables = tuple[Model, Variables]
"""A model with its variables, in the order every entry point takes them: ``(model, variables)``.

``(linen_module, {"params": ...})`` or ``(nnx_module, None)``; a
:class:`jaxinterp.models.Trained` unpacks into it as ``trained.model, trained.variables``.
"""


@runtime_checkable
class ObjectiveFn(Protocol):
    """What activation maximization maximizes: a scalar function of one target's activations.

    ``paths`` names the activations it reads (only those are captured). ``acts[path]`` is
    ``[batch, ...]`` (the inputs optimized together for one target); the result is a scalar
    ``[]``. :class:`jaxinterp.actmax.Objective` implements it.
    """

    paths: tuple[str, ...]

    def __call__(self, acts: Activations) -> jax.Array:
        """Returns the objective ``[]`` for activations ``{path: [batch, ...]}``."""
        ...


class ObjectiveFactory(Protocol):
    """Builds the objective of one target: ``target -> ObjectiveFn``.

    ``target`` is one entry of the ``[target]`` array that :func:`jaxinterp.actmax.maximize`
    vmaps over (a traced integer scalar under ``vmap``), e.g.
    ``lambda t: actmax.neuron("act_1", t)``.
    """

    def __call__(self, target: jax.Array) -> ObjectiveFn:
        """Returns the objective of ``target`` (a scalar or one row of the targets)."""
        ...


class MetricFn(Protocol):
    """What a patch sweep measures: ``metric(output) -> []`` for a whole batch's output.

    ``output`` is the model's output (e.g. logits ``[batch, seq, vocab]``); the result is one
    scalar, e.g. the mean logit difference (:func:`jaxinterp.interventions.logit_diff`).
    """

    def __call__(self, output: Any, /) -> jax.Array:
        """Returns the scalar metric ``[]`` of one run's output."""
        ...


class EditFn(Protocol):
    """What an intervention does at a site: ``activation -> new activation``.

    Pure: returns a new array of the same shape and dtype as ``activation`` (e.g.
    ``[batch, seq, head, d_head]``). :func:`jaxinterp.interventions.zero`, ``mean``,
    ``resample`` and ``replace`` build them.
    """

    def __call__(self, activation: jax.Array, /) -> jax.Array:
        """Returns the edited activation, same shape and dtype as ``activation``."""
        ...
