"""Compile-once dispatch for the sweeps: plain calls reuse one program per configuration.

:func:`jaxinterp.interventions.patch_sweep` and :func:`~jaxinterp.interventions.attribution_patch`
called outside any trace (every input concrete) run as ONE jitted program, cached in JAX's own
``jit`` cache of a module-level function. The cache key is *structure*, the traced arguments are
the arrays:

* the model: a linen module compares by its attributes; an nnx module by its graph (its state
  is traced);
* the sites: by value (paths, axes, layer and index arrays), so the prefix-reuse grouping and
  the range checks see concrete sites;
* the metric and the inputs: split as pytrees. Array leaves are traced (new data of the same
  shapes reuses the program), other leaves (ints, strings, modules) are part of the key. A
  metric that is a bound method of a pytree (``task.metric`` of a :class:`PatchTask`), a
  ``functools.partial`` or a Python function of your own is opened the same way: its
  ``self``, arguments, closed-over values, defaults and the globals its code reads are split
  like inputs, and the function is keyed on its code, so a ``lambda`` written anew at every
  call (at the same place in the source), reading new arrays of the same shapes, reuses the
  program and sees the new values. An instance of your own class (a callable metric object,
  the ``self`` of a bound method) that hashes by identity is opened through its attributes
  the same way. Library functions (jaxinterp, JAX, NumPy, Flax) and anything else that is
  neither a pytree nor hashable by value are keyed by identity.

The program runs under :func:`jax.experimental.checkify.checkify`, so the value checks that an
eager call raised at once (a metric index out of range, equal clean and corrupted metrics)
still raise the same ``ValueError`` after the call, never a silent NaN. Inside the caller's own
``jit``/``vmap``/``grad``/``eval_shape`` the sweep is traced inline as before; so is a
sweep over a ``mesh`` (checkify does not run through ``shard_map``): jit it yourself, passing
the data as arguments, to compile it once.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import checkify

from jaxinterp._checks import is_traced
from jaxinterp._keys import ById, static

_ARRAYS = (jax.Array, np.ndarray)
_LIBRARIES = {"jaxinterp", "jax", "jaxlib", "numpy", "flax", "optax", "functools", "builtins"}


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the functions defined in it) may read from its globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _static(obj: Any) -> tuple:
    key = static(obj)
    return ("id" if isinstance(key, ById) else "static", key)


def split(obj: Any, dyn: list, depth: int = 0) -> tuple:
    """A hashable spec of ``obj`` with its array leaves appended to ``dyn`` (see module doc).

    >>> dyn = []
    >>> spec = split({"a": np.ones(2), "b": 3}, dyn)
    >>> len(dyn), merge(spec, iter(dyn))["b"]
    (1, 3)
    """
    if depth > 16:
        return _static(obj)
    if isinstance(obj, _ARRAYS):
        dyn.append(obj)
        return ("dyn",)
    if isinstance(obj, types.MethodType):
        return ("method", _static(obj.__func__), split(obj.__self__, dyn, depth + 1))
    if isinstance(obj, functools.partial):
        kw = tuple(sorted(obj.keywords.items()))
        return (
            "partial",
            split(obj.func, dyn, depth + 1),
            tuple(split(a, dyn, depth + 1) for a in obj.args),
            tuple((k, split(v, dyn, depth + 1)) for k, v in kw),
        )
    if isinstance(obj, types.FunctionType):
        if (obj.__module__ or "").split(".")[0] in _LIBRARIES:
            return _static(obj)  # library code: module-level, keyed by identity
        try:
            contents = [c.cell_contents for c in obj.__closure__ or ()]
        except ValueError:  # an empty cell (a name assigned later)
            return _static(obj)
        names = sorted(n for n in _global_names(obj.__code__) if n in obj.__globals__)
        return (
            "fn",
            obj.__code__,
            ById(obj.__globals__),
            tuple((n, split(obj.__globals__[n], dyn, depth + 1)) for n in names),
            obj.__name__,
            split(obj.__defaults__, dyn, depth + 1),
            split(obj.__kwdefaults__, dyn, depth + 1),
            tuple(split(c, dyn, depth + 1) for c in contents),
            split(dict(obj.__dict__), dyn, depth + 1),  # attributes (functools.wraps, ...)
        )
    leaves, treedef = jax.tree_util.tree_flatten(obj)
    if treedef.num_leaves == 1 and treedef.num_nodes == 1:  # obj is a leaf
        if _plain_object(obj):  # compared by identity: open its attributes (never stale)
            return ("obj", type(obj), split(dict(vars(obj)), dyn, depth + 1))
        return _static(obj)
    try:
        hash(treedef)
    except TypeError:
        return _static(obj)
    return ("tree", treedef, tuple(split(x, dyn, depth + 1) for x in leaves))


def _plain_object(obj: Any) -> bool:
    """An instance of a Python class of your own that hashes by identity, with a ``__dict__``."""
    cls = type(obj)
    return (
        cls.__hash__ is object.__hash__
        and (cls.__module__ or "").split(".")[0] not in _LIBRARIES
        and isinstance(getattr(obj, "__dict__", None), dict)
        and not hasattr(cls, "__slots__")
    )


def merge(spec: tuple, dyn: Any) -> Any:
    """Rebuilds the object of :func:`split` from its spec and an iterator over its arrays."""
    kind = spec[0]
    if kind == "dyn":
        return next(dyn)
    if kind == "static":
        return spec[1]
    if kind == "id":
        return spec[1].obj
    if kind == "method":
        return types.MethodType(merge(spec[1], dyn), merge(spec[2], dyn))
    if kind == "obj":
        new = object.__new__(spec[1])
        new.__dict__.update(merge(spec[2], dyn))
        return new
    if kind == "partial":
        fn = merge(spec[1], dyn)
        args = [merge(a, dyn) for a in spec[2]]
        return functools.partial(fn, *args, **{k: merge(v, dyn) for k, v in spec[3]})
    if kind == "fn":
        code, globs, used, name, defaults, kwdefaults, cells, attrs = spec[1:]
        namespace = dict(globs.obj)
        namespace.update({n: merge(v, dyn) for n, v in used})
        fn = types.FunctionType(
            code,
            namespace,
            name,
            merge(defaults, dyn),
            tuple(types.CellType(merge(c, dyn)) for c in cells),
        )
        fn.__kwdefaults__ = merge(kwdefaults, dyn)
        fn.__dict__.update(merge(attrs, dyn))
        return fn
    return spec[1].unflatten([merge(s, dyn) for s in spec[2]])


class SitesKey:
    """Concrete :class:`~jaxinterp.interventions.Sites` as a key part, compared by value."""

    def __init__(self, sites: Any):
        self.sites = sites
        layer, index = np.asarray(sites.layer), np.asarray(sites.index)
        self._key = (
            sites.paths,
            sites.axes,
            sites.grid,
            sites.names,
            layer.shape,
            str(layer.dtype),
            layer.tobytes(),
            index.shape,
            str(index.dtype),
            index.tobytes(),
        )

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SitesKey) and other._key == self._key


class Key:
    """The static part of one sweep call: ``(impl, model key, sites key, spec, options)``."""

    def __init__(self, parts: tuple):
        self.parts = parts
        self._hash = hash(parts)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Key) and other.parts == self.parts


def _from_key(dyn: list, key: Key) -> Any:
    impl, model_key, sites_key, spec, options = key.parts
    it = iter(dyn)
    model_dyn, rest = merge(spec, it)
    if model_key[0] == "nnx":
        model, variables = nnx.merge(model_key[1], model_dyn), None
    else:
        model, variables = model_key[1], model_dyn
    return impl(model, variables, *rest, sites_key.sites, **dict(options))


@functools.partial(jax.jit, static_argnames="key")
def _compiled(dyn: list, key: Key) -> Any:
    return checkify.checkify(lambda d: _from_key(d, key), errors=checkify.user_checks)(dyn)


def cache_size() -> int:
    """Number of sweep programs compiled so far in this process (for tests and benchmarks)."""
    return _compiled._cache_size()


def _under_trace() -> bool:
    """Whether a JAX transform is tracing now (closed-over inputs look concrete there)."""
    return isinstance(jax.lax.add(np.int32(0), np.int32(0)), jax.core.Tracer)


def run(
    impl: Callable[..., Any],
    model: Any,
    variables: Any,
    rest: tuple,
    sites: Any,
    options: dict,
) -> Any:
    """``impl(model, variables, *rest, sites, **options)``, compiled once per configuration.

    Under the caller's own transform (traced inputs, or any trace running) and with a
    ``mesh`` (checkify cannot see through ``shard_map``) ``impl`` runs inline; otherwise the
    cached program runs and its failed value checks raise ``ValueError``.
    """
    if _under_trace() or is_traced((variables, rest, sites)) or options.get("mesh") is not None:
        return impl(model, variables, *rest, sites, **options)
    if isinstance(model, nnx.Module):
        graphdef, state = nnx.split(model)
        if is_traced(state):
            return impl(model, variables, *rest, sites, **options)
        model_key: tuple = ("nnx", graphdef)
        model_dyn = state
    else:
        model_key, model_dyn = ("linen", model), variables
    dyn: list = []
    spec = split((model_dyn, rest), dyn)
    try:
        key = Key((impl, model_key, SitesKey(sites), spec, tuple(sorted(options.items()))))
    except TypeError:  # an unhashable option or model: no cache
        return impl(model, variables, *rest, sites, **options)
    err, out = _compiled(dyn, key=key)
    msg = err.get()
    if msg is not None:
        raise ValueError(msg.removesuffix(" (`check` failed)"))
    return out
