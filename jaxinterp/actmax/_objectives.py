"""Objectives: what activation maximization maximizes, as pure functions of captured activations.

An :class:`Objective` pairs a function ``fn(acts) -> scalar`` with the activation ``paths`` it
reads, so :func:`~jaxinterp.actmax.maximize` captures those paths and nothing else. ``acts`` is
the ``{path: activation}`` dict that :func:`jaxinterp.capture.capture` returns for ONE target's
inputs, each activation with a leading ``[batch]`` axis (the images optimized together for that
target, usually one). Two more keys are available:

* :data:`INPUT` (``"<input>"``): the parameterized input before robustness transforms, used by
  the regularizers (:func:`l1`, :func:`l2`, :func:`total_variation`, :func:`blur`);
* :data:`OUTPUT` (``"<output>"``): the model's output, used by :func:`class_logit` by default.

**Batch convention.** Per-example objectives (:func:`neuron`, :func:`channel`, :func:`direction`,
:func:`deepdream`, :func:`class_logit`) return the *mean over the batch axis* of the per-example
value, so an objective's scale does not depend on how many images are optimized together.
:func:`diversity` is the one objective that couples the examples of a batch.

Objectives combine with ``+``, ``-``, unary ``-``, ``*`` and ``/`` by a number, and ``sum(...)``;
the result reads the union of the paths. A unit index or direction may be a traced array, which
is how ``maximize`` vmaps one objective factory over a ``[target]`` axis::

    objective = neuron("act_1", 17) - 1e-3 * total_variation()
    maximize(key, model, variables, lambda t: neuron("act_1", t), jnp.arange(128))
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

INPUT = "<input>"
OUTPUT = "<output>"
SPECIAL_PATHS = (INPUT, OUTPUT)

Acts = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A scalar function of one target's activations, with the paths it reads.

    Attributes:
      fn: ``fn(acts) -> []`` where ``acts[path]`` is ``[batch, ...]``.
      paths: the activation paths ``fn`` reads (:data:`INPUT` / :data:`OUTPUT` allowed).
      name: a readable description, e.g. ``"neuron(act_1, 17)"``.
    """

    fn: Callable[[Acts], jax.Array]
    paths: tuple[str, ...]
    name: str = "objective"

    def __call__(self, acts: Acts) -> jax.Array:
        missing = [p for p in self.paths if p not in acts]
        if missing:
            raise KeyError(f"acts: objective {self.name} needs paths {missing}; got {sorted(acts)}")
        return jnp.asarray(self.fn(acts), jnp.float32)

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, numbers.Number):
            c = float(other)
            return Objective(lambda a: self.fn(a) + c, self.paths, f"({self.name} + {c})")
        other = _as_objective(other, "+")
        return Objective(
            lambda a: self.fn(a) + other.fn(a),
            _union(self.paths, other.paths),
            f"({self.name} + {other.name})",
        )

    def __radd__(self, other: Objective | float) -> Objective:
        if isinstance(other, numbers.Number) and other == 0:  # makes sum([...]) work
            return self
        return self + other

    def __neg__(self) -> Objective:
        return Objective(lambda a: -self.fn(a), self.paths, f"-{self.name}")

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other)

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, c: float) -> Objective:
        if not isinstance(c, numbers.Number) and not _is_scalar_array(c):
            raise TypeError(f"Objective * c: expected a number, got {type(c).__name__}")
        return Objective(lambda a: c * self.fn(a), self.paths, f"{_fmt(c)} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> Objective:
        return self * (1.0 / c)


def _fmt(c: Any) -> str:
    return f"{c:g}" if isinstance(c, numbers.Number) else "c"


def _is_scalar_array(c: Any) -> bool:
    return hasattr(c, "shape") and tuple(c.shape) == ()


def _as_objective(other: Any, op: str) -> Objective:
    if not isinstance(other, Objective):
        raise TypeError(f"Objective {op} x: expected an Objective or a number, got {type(other)}")
    return other


def _union(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*a, *b]))


def _get(acts: Acts, path: str, min_ndim: int, what: str) -> jax.Array:
    x = acts[path]
    if x.ndim < min_ndim:
        raise ValueError(
            f"{what}: activation {path!r} must be [batch, ..., features] (ndim >= {min_ndim}), "
            f"got shape {x.shape}"
        )
    return x


def _check_unit(x: jax.Array, unit: Any, path: str, what: str) -> None:
    if isinstance(unit, numbers.Integral) and not -x.shape[-1] <= unit < x.shape[-1]:
        raise ValueError(
            f"{what}: unit {unit} is out of range for {path!r} with {x.shape[-1]} features"
        )


def _position_index(x: jax.Array, position: Any) -> tuple:
    """Index tuple into the middle axes of ``x: [batch, *mid, features]``."""
    mid = x.shape[1:-1]
    if position is None:
        return tuple(n // 2 for n in mid)
    pos = (position,) if not isinstance(position, (tuple, list)) else tuple(position)
    if len(pos) != len(mid):
        raise ValueError(
            f"position: expected {len(mid)} indices for activation shape {x.shape}, got {pos}"
        )
    return pos


def neuron(path: str, unit: int | jax.Array, *, position: Any = None) -> Objective:
    """One unit of ``path``: ``acts[path][b, *position, unit]``, averaged over the batch.

    Args:
      path: activation path, e.g. ``"act_1"`` (``[batch, features]``) or ``"act_0"``
        (``[batch, h, w, channels]``).
      unit: index in the last (feature / channel) axis; may be a traced integer.
      position: index into the axes between batch and features (spatial ``(y, x)`` or a
        sequence position); default their centre, as in Lucid.

    Returns:
      An :class:`Objective`. A traced ``unit`` is not range-checked (JAX clamps the index);
      a Python int is.

    >>> acts = {"act_1": jnp.arange(6.0).reshape(2, 3)}   # [batch=2, features=3]
    >>> float(neuron("act_1", 2)(acts))                    # mean of 2.0 and 5.0
    3.5
    >>> float((neuron("act_1", 2) - 0.5 * channel("act_1", 0))(acts))
    2.75
    """

    def fn(acts):
        x = _get(acts, path, 2, "neuron")
        _check_unit(x, unit, path, "neuron")
        idx = _position_index(x, position)
        return x[(slice(None), *idx, unit)].mean()

    return Objective(fn, (path,), f"neuron({path}, {_show(unit)})")


def channel(path: str, unit: int | jax.Array) -> Objective:
    """Mean of channel ``unit`` of ``path`` over every position and the batch.

    Args:
      path: activation path with shape ``[batch, ..., channels]`` (e.g. a conv layer).
      unit: channel index; may be a traced integer.
    """

    def fn(acts):
        x = _get(acts, path, 2, "channel")
        _check_unit(x, unit, path, "channel")
        return x[..., unit].mean()

    return Objective(fn, (path,), f"channel({path}, {_show(unit)})")


def direction(path: str, vector: jax.Array, *, cosine: bool = False) -> Objective:
    """Projection of ``path``'s activation onto ``vector``, averaged over positions and batch.

    Args:
      path: activation path ``[batch, ..., features]``.
      vector: ``[features]`` direction (any norm; the dot product is taken as is).
      cosine: use the cosine similarity instead of the dot product.
    """
    vector = jnp.asarray(vector)
    if vector.ndim != 1:
        raise ValueError(f"direction: vector must be [features], got shape {vector.shape}")

    def fn(acts):
        x = _get(acts, path, 2, "direction")
        if x.shape[-1] != vector.shape[0]:
            raise ValueError(
                f"direction: vector has {vector.shape[0]} features, {path!r} has {x.shape[-1]}"
            )
        dots = x @ vector
        if cosine:
            dots = dots / (jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(vector) + 1e-8)
        return dots.mean()

    return Objective(fn, (path,), f"direction({path})")


def deepdream(path: str) -> Objective:
    """DeepDream: the mean squared activation of ``path`` (all positions, units and batch)."""
    return Objective(lambda a: jnp.mean(a[path] ** 2), (path,), f"deepdream({path})")


def class_logit(cls: int | jax.Array, *, path: str = OUTPUT, position: Any = None) -> Objective:
    """The logit of class ``cls``; by default read from the model output.

    Args:
      cls: class index; may be a traced integer.
      path: where the logits are (default the model output, :data:`OUTPUT`).
      position: for ``[batch, seq, classes]`` logits, the sequence position (default centre).
    """
    obj = neuron(path, cls, position=position)
    return Objective(obj.fn, obj.paths, f"class_logit({_show(cls)})")


def diversity(path: str) -> Objective:
    """Lucid's diversity term: minus the mean pairwise cosine similarity of Gram matrices.

    For ``acts[path]: [batch, *positions, c]`` the Gram matrix of example ``b`` is
    ``G_b = A_b^T A_b`` (``[c, c]``, ``A_b`` flattened to ``[positions, c]``). With the
    flattened, normalized Grams ``g_b``, the value is ``-(sum_{b != b'} <g_b, g_b'>) / batch``,
    computed as one ``[batch, batch]`` matrix product (no Python loop over pairs). It is zero
    for a batch of one. Add it, scaled, to an objective optimizing several images per target.
    """

    def fn(acts):
        x = _get(acts, path, 2, "diversity")
        b, c = x.shape[0], x.shape[-1]
        a = x.reshape(b, -1, c)
        grams = jnp.einsum("bpi,bpj->bij", a, a).reshape(b, -1)
        grams = grams / (jnp.linalg.norm(grams, axis=-1, keepdims=True) + 1e-8)
        sim = grams @ grams.T
        return -(sim.sum() - jnp.trace(sim)) / b

    return Objective(fn, (path,), f"diversity({path})")


# ------------------------------------------------------------------------------- regularizers
# Penalties on the parameterized input (before transforms). They are positive; subtract them
# from an objective or pass them to ``maximize(..., regularizers=...)``.


def _input(acts: Acts, what: str, min_ndim: int = 2) -> jax.Array:
    x = acts[INPUT]
    if x.ndim < min_ndim:
        raise ValueError(f"{what}: input must have ndim >= {min_ndim}, got shape {x.shape}")
    return x


def l1(center: float = 0.0) -> Objective:
    """L1 penalty ``mean_b sum |x - center|`` on the input ``[batch, ...]``."""

    def fn(acts):
        x = _input(acts, "l1", 1)
        return jnp.abs(x - center).reshape(x.shape[0], -1).sum(-1).mean()

    return Objective(fn, (INPUT,), "l1")


def l2(center: float = 0.0) -> Objective:
    """L2 penalty ``mean_b sqrt(sum (x - center)^2)`` on the input ``[batch, ...]``."""

    def fn(acts):
        x = _input(acts, "l2", 1)
        return jnp.sqrt(jnp.square(x - center).reshape(x.shape[0], -1).sum(-1) + 1e-12).mean()

    return Objective(fn, (INPUT,), "l2")


def total_variation() -> Objective:
    """Total variation of images ``[batch, h, w, c]``: summed absolute neighbour differences,
    averaged over the batch."""

    def fn(acts):
        x = _input(acts, "total_variation", 4)
        dy = jnp.abs(x[:, 1:] - x[:, :-1]).sum((1, 2, 3))
        dx = jnp.abs(x[:, :, 1:] - x[:, :, :-1]).sum((1, 2, 3))
        return (dy + dx).mean()

    return Objective(fn, (INPUT,), "total_variation")


def blur() -> Objective:
    """Blur penalty ``0.5 * sum (x - stop_gradient(blur3x3(x)))^2`` on images ``[batch, h, w, c]``.

    Its gradient step moves each pixel towards the 3×3 box blur of the image, like Lucid's
    ``blur_input_each_step``.
    """

    def fn(acts):
        x = _input(acts, "blur", 4)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        h, w = x.shape[1:3]
        blurred = sum(padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
        diff = x - jax.lax.stop_gradient(blurred)
        return 0.5 * jnp.square(diff).reshape(x.shape[0], -1).sum(-1).mean()

    return Objective(fn, (INPUT,), "blur")


def _show(v: Any) -> str:
    return str(v) if isinstance(v, numbers.Number) else "t"
