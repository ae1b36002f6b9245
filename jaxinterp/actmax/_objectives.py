"""Objectives: what activation maximization maximizes, as pure functions of captured activations.

An :class:`Objective` pairs a function ``fn(acts) -> scalar`` with the activation ``paths`` it
reads, so :func:`~jaxinterp.actmax.maximize` captures those paths and nothing else. ``acts`` is
the ``{path: activation}`` dict that :func:`jaxinterp.capture.capture` returns for ONE target's
inputs, each activation with a leading ``[batch]`` axis (the images optimized together for that
target, usually one). Two more keys are available:

* :data:`INPUT` (``"<input>"``): the parameterized input before robustness transforms, used by
  the regularizers (:func:`l1`, :func:`l2`, :func:`total_variation`, :func:`blur`);
* :data:`OUTPUT` (``"<output>"``): the model's output, used by :func:`class_logit` by default.

**Paths into pytree outputs.** A path may name one element of a module's (or the model's)
output pytree with the site syntax of :mod:`jaxinterp.capture`: ``"<output>:output[0]"`` (first
element of a tuple output), ``"<output>:output.logits"`` (an attribute), ``"block_0:output[1]"``
(the ``x`` of a ``(cache, x)`` block output), and one step of a scanned module's stacked output
with ``"layers/attn[3]"``. Where a path names a dataclass, mapping or Hugging Face
``ModelOutput`` that has a ``logits`` field, that field is used: :func:`class_logit` works on HF
models unchanged. Any other non-array value is an error that names the path.

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
import numpy as np

from jaxinterp._checks import is_traced, poison, value_check
from jaxinterp.capture import parse_site

INPUT = "<input>"
OUTPUT = "<output>"
SPECIAL_PATHS = (INPUT, OUTPUT)

Acts = dict[str, Any]
Shapes = dict[str, tuple[int, ...]]


# ------------------------------------------------------------------------------------- ops
# A built-in objective is an ``_Op`` (a frozen dataclass: hashable, compared by value, so it can
# be part of a compilation cache key) plus an ``args`` pytree of the numbers it reads (unit
# indices, direction vectors, weights), which are traced like any other array. Two objectives
# with equal ops and args of equal shapes run the same compiled program.


class _Op:
    """The static part of a built-in objective: ``op(acts, args) -> []``."""

    structural = True  # False when a user function is somewhere inside

    def __call__(self, acts: Acts, args: Any) -> jax.Array:
        raise NotImplementedError

    def check(self, shapes: Shapes, args: Any) -> None:
        """Static and (for concrete ``args``) value checks against the activation shapes."""


def path_key(path: str) -> str:
    """The activation key a path reads (the path without step and element suffixes)."""
    if path in SPECIAL_PATHS:
        return path
    try:
        return parse_site(path).key
    except (TypeError, ValueError):
        return path


def _element(x: Any, key: object, path: str) -> Any:
    try:
        if isinstance(key, tuple):
            return getattr(x, key[1])
        if isinstance(key, str):
            return x[key]
        return x.to_tuple()[key] if hasattr(x, "to_tuple") else x[key]
    except (KeyError, IndexError, AttributeError, TypeError) as err:
        shown = f".{key[1]}" if isinstance(key, tuple) else f"[{key!r}]"
        raise ValueError(
            f"path: {path!r}: a {type(x).__name__} has no element {shown} ({err})"
        ) from None


def _logits_field(x: Any) -> Any:
    if isinstance(x, dict) or hasattr(x, "keys"):
        try:
            return x["logits"]
        except (KeyError, TypeError):
            pass
    return getattr(x, "logits", None)


def _step(a: Any, step: int, path: str) -> Any:
    """Layer ``step`` of a stacked ``[layer, ...]`` record (a shape struct too); never clamped."""
    shape = tuple(getattr(a, "shape", ()))
    if not shape or not -shape[0] <= step < shape[0]:
        raise ValueError(
            f"path: {path!r}: step [{step}] is out of range for a record of shape {shape} "
            f"({shape[0] if shape else 0} stacked layers)"
        )
    if isinstance(a, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(shape[1:], a.dtype)
    return a[step]


def resolve(acts: Acts, path: str) -> Any:
    """The array ``path`` names in ``acts`` (steps, elements and a ``logits`` field resolved);
    works on arrays and on shape structs alike."""
    if path in acts:
        x = acts[path]
    else:
        site = parse_site(path)
        x = acts[site.key]
        for step in site.steps:
            x = jax.tree.map(lambda a, s=step: _step(a, s, path), x)
        for key in site.element:
            x = _element(x, key, path)
    if not hasattr(x, "shape"):
        logits = _logits_field(x)
        if logits is None or not hasattr(logits, "shape"):
            raise ValueError(
                f"path: {path!r} holds a {type(x).__name__}, not an array; name one element "
                f"with the site syntax, e.g. {path_key(path) + ':output[0]'!r} or "
                f"{path_key(path) + ':output.logits'!r}"
            )
        x = logits
    return x


def _feature_axis(shapes: Shapes, path: str, min_ndim: int, what: str) -> tuple[int, ...]:
    shape = tuple(shapes[path])
    if len(shape) < min_ndim:
        raise ValueError(
            f"path: {what} needs activation {path!r} as [batch, ..., features] (ndim >= "
            f"{min_ndim}), got shape {shape}"
        )
    return shape


def _get(acts: Acts, path: str, min_ndim: int, what: str) -> jax.Array:
    x = resolve(acts, path)
    _feature_axis({path: jnp.shape(x)}, path, min_ndim, what)
    return x


def _unit_ok(n: int, unit: Any, path: str, name: str = "unit") -> Any:
    """Range check of a unit index against ``n`` features: raises for Python ints and concrete
    arrays; for traced ones registers the check and returns the boolean mask to poison with."""
    if isinstance(unit, (bool, np.bool_)) or isinstance(unit, (float, np.floating)):
        raise TypeError(f"{name}: expected an integer index, got {type(unit).__name__} {unit!r}")
    if isinstance(unit, (int, np.integer)):
        if not 0 <= unit < n:
            raise ValueError(
                f"{name}: expected an index in [0, {n}) for {path!r} ({n} features), got {unit}"
            )
        return True
    if not is_traced(unit):  # concrete: checked with NumPy (no small programs to compile)
        u = np.asarray(unit)
        if not np.issubdtype(u.dtype, np.integer):
            raise TypeError(f"{name}: expected an integer index, got dtype {u.dtype}")
        bad = u[(u < 0) | (u >= n)]
        if bad.size:
            raise ValueError(
                f"{name}: expected indices in [0, {n}) for {path!r} ({n} features), got "
                f"{bad.reshape(-1)[0]}"
            )
        return True
    u = jnp.asarray(unit)
    if not jnp.issubdtype(u.dtype, jnp.integer):
        raise TypeError(f"{name}: expected an integer index, got dtype {u.dtype}")
    ok = (u >= 0) & (u < n)
    value_check(
        ok.all(),
        f"{name}: expected indices in [0, {n}) for {path!r} ({n} features), got {{}}",
        jnp.where(ok, 0, u).reshape(-1)[jnp.argmin(ok.reshape(-1))] if u.ndim else u,
    )
    return ok


def _position_index(shape: tuple[int, ...], position: tuple[int, ...] | None, path: str) -> tuple:
    """Index tuple into the middle axes of ``[batch, *mid, features]``; a static check."""
    mid = shape[1:-1]
    if position is None:
        return tuple(n // 2 for n in mid)
    if len(position) != len(mid):
        raise ValueError(
            f"position: expected {len(mid)} indices for {path!r} of shape {shape}, got {position}"
        )
    if any(not 0 <= p < n for p, n in zip(position, mid)):
        want = " x ".join(f"[0, {n})" for n in mid)
        raise ValueError(f"position: expected indices in {want} for {path!r}, got {position}")
    return position


@dataclasses.dataclass(frozen=True)
class _Neuron(_Op):
    path: str
    position: tuple[int, ...] | None

    def check(self, shapes, unit):
        shape = _feature_axis(shapes, self.path, 2, "neuron")
        _position_index(shape, self.position, self.path)
        _unit_ok(shape[-1], unit, self.path)

    def __call__(self, acts, unit):
        x = _get(acts, self.path, 2, "neuron")
        idx = _position_index(x.shape, self.position, self.path)
        ok = _unit_ok(x.shape[-1], unit, self.path)
        safe = unit if ok is True else jnp.where(ok, unit, 0)
        return poison(x[(slice(None), *idx, safe)].mean(), ok)


@dataclasses.dataclass(frozen=True)
class _Channel(_Op):
    path: str

    def check(self, shapes, unit):
        _unit_ok(_feature_axis(shapes, self.path, 2, "channel")[-1], unit, self.path)

    def __call__(self, acts, unit):
        x = _get(acts, self.path, 2, "channel")
        ok = _unit_ok(x.shape[-1], unit, self.path)
        safe = unit if ok is True else jnp.where(ok, unit, 0)
        return poison(x[..., safe].mean(), ok)


@dataclasses.dataclass(frozen=True)
class _Direction(_Op):
    path: str
    cosine: bool

    def check(self, shapes, vector):
        n = _feature_axis(shapes, self.path, 2, "direction")[-1]
        if jnp.shape(vector)[-1] != n:
            raise ValueError(
                f"vector: expected [features] = [{n}] for {self.path!r}, got shape "
                f"{tuple(jnp.shape(vector))}"
            )

    def __call__(self, acts, vector):
        x = _get(acts, self.path, 2, "direction")
        self.check({self.path: x.shape}, vector)
        dots = x @ vector
        if self.cosine:
            dots = dots / (jnp.linalg.norm(x, axis=-1) * jnp.linalg.norm(vector) + 1e-8)
        return dots.mean()


@dataclasses.dataclass(frozen=True)
class _DeepDream(_Op):
    path: str

    def __call__(self, acts, args):
        return jnp.mean(resolve(acts, self.path) ** 2)


@dataclasses.dataclass(frozen=True)
class _Diversity(_Op):
    path: str

    def check(self, shapes, args):
        _feature_axis(shapes, self.path, 2, "diversity")

    def __call__(self, acts, args):
        x = _get(acts, self.path, 2, "diversity")
        b, c = x.shape[0], x.shape[-1]
        a = x.reshape(b, -1, c)
        grams = jnp.einsum("bpi,bpj->bij", a, a).reshape(b, -1)
        grams = grams / (jnp.linalg.norm(grams, axis=-1, keepdims=True) + 1e-8)
        sim = grams @ grams.T
        return -(sim.sum() - jnp.trace(sim)) / b


def _input(acts: Acts, what: str, min_ndim: int) -> jax.Array:
    x = acts[INPUT]
    if x.ndim < min_ndim:
        raise ValueError(
            f"acts: {what} needs the input {INPUT!r} with ndim >= {min_ndim}, got shape {x.shape}"
        )
    return x


@dataclasses.dataclass(frozen=True)
class _L1(_Op):
    def __call__(self, acts, center):
        x = _input(acts, "l1", 1)
        return jnp.abs(x - center).reshape(x.shape[0], -1).sum(-1).mean()


@dataclasses.dataclass(frozen=True)
class _L2(_Op):
    def __call__(self, acts, center):
        x = _input(acts, "l2", 1)
        return jnp.sqrt(jnp.square(x - center).reshape(x.shape[0], -1).sum(-1) + 1e-12).mean()


@dataclasses.dataclass(frozen=True)
class _TotalVariation(_Op):
    def __call__(self, acts, args):
        x = _input(acts, "total_variation", 4)
        dy = jnp.abs(x[:, 1:] - x[:, :-1]).sum((1, 2, 3))
        dx = jnp.abs(x[:, :, 1:] - x[:, :, :-1]).sum((1, 2, 3))
        return (dy + dx).mean()


@dataclasses.dataclass(frozen=True)
class _Blur(_Op):
    def __call__(self, acts, args):
        x = _input(acts, "blur", 4)
        padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        # 3x3 box blur as two separable cumulative differences (no unrolled 9-term sum)
        c = jnp.cumsum(padded, axis=1)
        c = jnp.concatenate([jnp.zeros_like(c[:, :1]), c], 1)
        rows = c[:, 3:] - c[:, :-3]
        c = jnp.cumsum(rows, axis=2)
        c = jnp.concatenate([jnp.zeros_like(c[:, :, :1]), c], 2)
        blurred = (c[:, :, 3:] - c[:, :, :-3]) / 9.0
        diff = x - jax.lax.stop_gradient(blurred)
        return 0.5 * jnp.square(diff).reshape(x.shape[0], -1).sum(-1).mean()


@dataclasses.dataclass(frozen=True)
class _UserFn(_Op):
    fn: Callable[[Acts], jax.Array]
    structural = False

    def __call__(self, acts, args):
        return self.fn(acts)


@dataclasses.dataclass(frozen=True)
class _Add(_Op):
    a: _Op
    b: _Op

    @property
    def structural(self):
        return self.a.structural and self.b.structural

    def check(self, shapes, args):
        self.a.check(shapes, args[0])
        self.b.check(shapes, args[1])

    def __call__(self, acts, args):
        return self.a(acts, args[0]) + self.b(acts, args[1])


@dataclasses.dataclass(frozen=True)
class _Affine(_Op):
    """``scale * inner + shift``, with ``scale`` and ``shift`` traced numbers."""

    inner: _Op

    @property
    def structural(self):
        return self.inner.structural

    def check(self, shapes, args):
        self.inner.check(shapes, args[0])

    def __call__(self, acts, args):
        inner, scale, shift = args
        return scale * self.inner(acts, inner) + shift


class _Label(str):
    """A name that every other name compares equal to, so it never splits a compilation cache."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    def __hash__(self) -> int:
        return 0


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """A scalar function of one target's activations, with the paths it reads.

    Attributes:
      fn: ``fn(acts) -> []`` where ``acts[path]`` is ``[batch, ...]``. (Built-in objectives
        store a static description here and their numbers in ``args``.)
      paths: the activation paths ``fn`` reads (:data:`INPUT` / :data:`OUTPUT` allowed).
      name: a readable description, e.g. ``"neuron(act_1, 17)"``.
      args: the arrays a built-in objective reads (unit index, direction, weights); ``None``
        for a user ``fn``.

    An Objective is a pytree whose leaves are ``args``, so ``jax.vmap(lambda t: neuron("a",
    t))(units)`` gives one Objective with a ``[target]`` axis on its unit index, and
    :func:`~jaxinterp.actmax.maximize` compiles one program per objective *structure*.

    >>> obj = neuron("act_1", 2) - 0.5
    >>> float(obj({"act_1": jnp.arange(6.0).reshape(2, 3)}))
    3.0
    """

    fn: Callable[..., jax.Array]
    paths: tuple[str, ...]
    name: str = "objective"
    args: Any = None

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise TypeError(f"fn: expected a function acts -> scalar, got {type(self.fn).__name__}")
        paths = self.paths
        if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
            raise TypeError(f"paths: expected a tuple of path strings, got {paths!r}")
        if not isinstance(self.fn, _Op):  # built-in objectives checked their path already
            for p in paths:
                try:
                    _check_path(p)
                except ValueError as err:
                    raise ValueError("paths: " + str(err).removeprefix("path: ")) from None
        object.__setattr__(self, "paths", tuple(paths))

    @property
    def op(self) -> _Op:
        """The static part (a hashable description of the computation)."""
        return self.fn if isinstance(self.fn, _Op) else _UserFn(self.fn)

    @property
    def structural(self) -> bool:
        """Whether the objective is built from jaxinterp's objectives only (no user function),
        so that it can be cached by structure."""
        return self.op.structural

    def check(self, shapes: Shapes) -> None:
        """Checks the objective against activation shapes ``{path: shape}``; raises on static
        problems, and on out-of-range indices among concrete ``args``."""
        missing = [p for p in self.paths if p not in shapes]
        if missing:
            raise KeyError(
                f"acts: objective {self.name} needs paths {missing}; got {sorted(shapes)}"
            )
        self.op.check(shapes, self.args)

    def __call__(self, acts: Acts) -> jax.Array:
        missing = [p for p in self.paths if path_key(p) not in acts]
        if missing:
            raise KeyError(f"acts: objective {self.name} needs paths {missing}; got {sorted(acts)}")
        out = self.fn(acts, self.args) if isinstance(self.fn, _Op) else self.fn(acts)
        out = jnp.asarray(out, jnp.float32)
        if out.shape != ():
            raise ValueError(f"objective: {self.name} must return a scalar, got shape {out.shape}")
        return out

    def _affine(self, scale: Any, shift: Any, name: str) -> Objective:
        return Objective(_Affine(self.op), self.paths, name, (self.args, scale, shift))

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return Objective(
                _Add(self.op, other.op),
                _union(self.paths, other.paths),
                f"({self.name} + {other.name})",
                (self.args, other.args),
            )
        c = _number(other, "other")
        return self._affine(1.0, c, f"({self.name} + {_fmt(c)})")

    def __radd__(self, other: Objective | float) -> Objective:
        if isinstance(other, numbers.Number) and not isinstance(other, bool) and other == 0:
            return self  # makes sum([...]) work
        return self + other

    def __neg__(self) -> Objective:
        return self._affine(-1.0, 0.0, f"-{self.name}")

    def __sub__(self, other: Objective | float) -> Objective:
        if isinstance(other, Objective):
            return self + (-other)
        return self + (-_number(other, "other"))

    def __rsub__(self, other: float) -> Objective:
        return (-self) + _number(other, "other")

    def __mul__(self, c: float) -> Objective:
        c = _number(c, "c")
        return self._affine(c, 0.0, f"{_fmt(c)} * {self.name}")

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> Objective:
        c = _number(c, "c")
        if not is_traced(c) and float(c) == 0.0:
            raise ValueError("c: expected a non-zero divisor, got 0")
        return self * (1.0 / c)


def _flatten(obj: Objective):
    return (obj.args,), (obj.fn, obj.paths, _Label(obj.name))


def _unflatten(aux, children):
    fn, paths, name = aux
    new = object.__new__(Objective)
    for field, value in zip(("fn", "paths", "name", "args"), (fn, paths, str(name), children[0])):
        object.__setattr__(new, field, value)
    return new


jax.tree_util.register_pytree_node(Objective, _flatten, _unflatten)


def _number(c: Any, name: str) -> Any:
    """A finite real number or scalar array (a weight or offset of an objective)."""
    if isinstance(c, numbers.Real) and not isinstance(c, (bool, np.bool_)):
        if not np.isfinite(float(c)):
            raise ValueError(f"{name}: expected a finite number, got {c}")
        return float(c)
    if hasattr(c, "shape") and tuple(c.shape) == () and jnp.issubdtype(c.dtype, jnp.number):
        if not is_traced(c) and not bool(jnp.isfinite(c)):
            raise ValueError(f"{name}: expected a finite number, got {c}")
        return c
    raise TypeError(f"{name}: expected a number or an Objective, got {type(c).__name__}")


def _fmt(c: Any) -> str:
    return f"{c:g}" if isinstance(c, numbers.Number) else "c"


def _union(a: Sequence[str], b: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*a, *b]))


def _check_path(path: Any) -> str:
    if not isinstance(path, str):
        raise TypeError(f"path: expected an activation path string, got {type(path).__name__}")
    if path not in SPECIAL_PATHS:
        try:
            glob = any(c in parse_site(path).path for c in "*?[")
        except (TypeError, ValueError):
            glob = False  # reported where the path is resolved
        if glob:
            raise ValueError(
                f"path: {path!r} is a glob; an objective reads one exact path (a module path, "
                "'layers/mlp[2]' for one layer of a scan): name it, e.g. from "
                "jaxinterp.capture.list_paths"
            )
    return path


def _check_position(position: Any) -> tuple[int, ...] | None:
    if position is None:
        return None
    pos = tuple(position) if isinstance(position, (tuple, list)) else (position,)
    for p in pos:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            raise TypeError(f"position: expected int indices, got {position!r}")
        if p < 0:
            raise ValueError(f"position: expected non-negative indices, got {position!r}")
    return tuple(int(p) for p in pos)


def _check_index_arg(unit: Any, name: str) -> Any:
    if isinstance(unit, (bool, np.bool_)) or isinstance(unit, (float, np.floating)):
        raise TypeError(f"{name}: expected an integer index, got {type(unit).__name__} {unit!r}")
    if isinstance(unit, (int, np.integer)):
        if unit < 0:
            raise ValueError(f"{name}: expected a non-negative index, got {unit}")
        return int(unit)
    u = jnp.asarray(unit) if not hasattr(unit, "dtype") else unit
    if not jnp.issubdtype(u.dtype, jnp.integer) or jnp.ndim(u) != 0:
        raise TypeError(
            f"{name}: expected an integer index (int or int scalar array), got "
            f"{'dtype ' + str(u.dtype) if jnp.ndim(u) == 0 else 'shape ' + str(jnp.shape(u))}"
        )
    return u


# ------------------------------------------------------------------------------- objectives


def neuron(path: str, unit: int | jax.Array, *, position: Any = None) -> Objective:
    """One unit of ``path``: ``acts[path][b, *position, unit]``, averaged over the batch.

    Args:
      path: activation path, e.g. ``"act_1"`` (``[batch, features]``) or ``"act_0"``
        (``[batch, h, w, channels]``).
      unit: index in the last (feature / channel) axis; may be a traced integer.
      position: ints indexing the axes between batch and features (spatial ``(y, x)`` or a
        sequence position); default their centre, as in Lucid. Checked against the
        activation's shape when the objective is traced (never clamped).

    Returns:
      An :class:`Objective` (a scalar). A unit outside ``[0, features)`` raises ``ValueError``
      when it is a Python int or a concrete array; under jit a traced out-of-range unit gives
      NaN (see :func:`jaxinterp.checked`), never a clamped index.

    >>> acts = {"act_1": jnp.arange(6.0).reshape(2, 3)}   # [batch=2, features=3]
    >>> float(neuron("act_1", 2)(acts))                    # mean of 2.0 and 5.0
    3.5
    >>> float((neuron("act_1", 2) - 0.5 * channel("act_1", 0))(acts))
    2.75
    """
    path, unit = _check_path(path), _check_index_arg(unit, "unit")
    return Objective(
        _Neuron(path, _check_position(position)), (path,), f"neuron({path}, {_show(unit)})", unit
    )


def channel(path: str, unit: int | jax.Array) -> Objective:
    """Mean of channel ``unit`` of ``path`` over every position and the batch.

    Args:
      path: activation path with shape ``[batch, ..., channels]`` (e.g. a conv layer).
      unit: channel index; may be a traced integer (out of range: as in :func:`neuron`).

    Returns:
      An :class:`Objective` (a scalar).

    >>> float(channel("c", 1)({"c": jnp.arange(8.0).reshape(2, 2, 2)}))  # mean of 1, 3, 5, 7
    4.0
    """
    path, unit = _check_path(path), _check_index_arg(unit, "unit")
    return Objective(_Channel(path), (path,), f"channel({path}, {_show(unit)})", unit)


def direction(path: str, vector: jax.Array, *, cosine: bool = False) -> Objective:
    """Projection of ``path``'s activation onto ``vector``, averaged over positions and batch.

    Args:
      path: activation path ``[batch, ..., features]``.
      vector: ``[features]`` direction (any norm; the dot product is taken as is).
      cosine: use the cosine similarity instead of the dot product.

    Returns:
      An :class:`Objective` (a scalar).

    >>> float(direction("d", jnp.array([1.0, -1.0]))({"d": jnp.array([[3.0, 1.0]])}))
    2.0
    """
    path = _check_path(path)
    vector = jnp.asarray(vector) if not hasattr(vector, "dtype") else vector
    if jnp.ndim(vector) != 1:
        raise ValueError(f"vector: expected [features], got shape {tuple(jnp.shape(vector))}")
    if not jnp.issubdtype(vector.dtype, jnp.floating):
        vector = vector.astype(jnp.float32)
    if not is_traced(vector) and not bool(jnp.isfinite(vector).all()):
        raise ValueError("vector: expected finite values, got NaN/inf entries")
    return Objective(_Direction(path, bool(cosine)), (path,), f"direction({path})", vector)


def deepdream(path: str) -> Objective:
    """DeepDream: the mean squared activation of ``path`` (all positions, units and batch).

    >>> float(deepdream("a")({"a": jnp.array([[1.0, 3.0]])}))
    5.0
    """
    path = _check_path(path)
    return Objective(_DeepDream(path), (path,), f"deepdream({path})")


def class_logit(cls: int | jax.Array, *, path: str = OUTPUT, position: Any = None) -> Objective:
    """The logit of class ``cls``; by default read from the model output.

    Args:
      cls: class index; may be a traced integer (out of range: as in :func:`neuron`).
      path: where the logits are (default the model output, :data:`OUTPUT`).
      position: for ``[batch, seq, classes]`` logits, the sequence position (default centre).

    Returns:
      An :class:`Objective` (a scalar).

    >>> float(class_logit(1)({OUTPUT: jnp.array([[0.5, 2.0]])}))
    2.0
    """
    path, cls = _check_path(path), _check_index_arg(cls, "cls")
    return Objective(
        _Neuron(path, _check_position(position)), (path,), f"class_logit({_show(cls)})", cls
    )


def diversity(path: str) -> Objective:
    """Lucid's diversity term: minus the mean pairwise cosine similarity of Gram matrices.

    For ``acts[path]: [batch, *positions, c]`` the Gram matrix of example ``b`` is
    ``G_b = A_b^T A_b`` (``[c, c]``, ``A_b`` flattened to ``[positions, c]``). With the
    flattened, normalized Grams ``g_b``, the value is ``-(sum_{b != b'} <g_b, g_b'>) / batch``,
    computed as one ``[batch, batch]`` matrix product (no Python loop over pairs). It is zero
    for a batch of one. Add it, scaled, to an objective optimizing several images per target.

    >>> float(diversity("a")({"a": jnp.array([[1.0, 0.0], [1.0, 0.0]])}))  # identical pair
    -1.0
    """
    path = _check_path(path)
    return Objective(_Diversity(path), (path,), f"diversity({path})")


# ------------------------------------------------------------------------------- regularizers
# Penalties on the parameterized input (before transforms). They are positive; subtract them
# from an objective or pass them to ``maximize(..., regularizers=...)``.


def l1(center: float = 0.0) -> Objective:
    """L1 penalty ``mean_b sum |x - center|`` on the input ``[batch, ...]``.

    >>> float(l1(0.5)({INPUT: jnp.array([[0.0, 1.0]])}))
    1.0
    """
    return Objective(_L1(), (INPUT,), "l1", _number(center, "center"))


def l2(center: float = 0.0) -> Objective:
    """L2 penalty ``mean_b sqrt(sum (x - center)^2)`` on the input ``[batch, ...]``.

    >>> round(float(l2()({INPUT: jnp.array([[3.0, 4.0]])})), 4)
    5.0
    """
    return Objective(_L2(), (INPUT,), "l2", _number(center, "center"))


def total_variation() -> Objective:
    """Total variation of images ``[batch, h, w, c]``: summed absolute neighbour differences,
    averaged over the batch.

    >>> float(total_variation()({INPUT: jnp.array([[0.0, 1.0], [1.0, 1.0]])[None, ..., None]}))
    2.0
    """
    return Objective(_TotalVariation(), (INPUT,), "total_variation")


def blur() -> Objective:
    """Blur penalty ``0.5 * sum (x - stop_gradient(blur3x3(x)))^2`` on images ``[batch, h, w, c]``.

    Its gradient step moves each pixel towards the 3×3 box blur (edge-padded) of the image, like
    Lucid's ``blur_input_each_step``.

    >>> float(blur()({INPUT: jnp.ones((1, 4, 4, 1))}))  # a constant image is its own blur
    0.0
    """
    return Objective(_Blur(), (INPUT,), "blur")


def _show(v: Any) -> str:
    return str(v) if isinstance(v, numbers.Number) else "t"
