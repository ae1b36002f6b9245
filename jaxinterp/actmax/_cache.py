"""Keys for ``maximize``'s compile cache: parts compared by value where that is sound, by
identity otherwise."""

from __future__ import annotations

import functools
import types
from typing import Any

import jax
import numpy as np
import optax

from jaxinterp._checks import is_traced
from jaxinterp._keys import ById


class _Unkeyable(Exception):
    pass


def _fingerprint(obj: Any, depth: int = 0) -> Any:
    """A value key for an optax optimizer: its functions' code and closed-over hyperparameters.

    Only functions defined in optax are opened (their globals are optax's own modules); any
    other function, and anything that is not a plain value, raises :class:`_Unkeyable`.
    """
    if depth > 30:
        raise _Unkeyable
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return (type(obj).__name__, obj)
    if isinstance(obj, np.dtype) or isinstance(obj, type):
        return ("type", obj)
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)) and not is_traced(obj):
        a = np.asarray(obj)
        if a.size > 64:
            raise _Unkeyable
        return ("array", a.shape, str(a.dtype), a.tobytes())
    if isinstance(obj, tuple):
        return (type(obj).__name__, tuple(_fingerprint(o, depth + 1) for o in obj))
    if isinstance(obj, types.FunctionType):
        if not (obj.__module__ or "").startswith("optax"):
            raise _Unkeyable
        cells = tuple(_fingerprint(c.cell_contents, depth + 1) for c in obj.__closure__ or ())
        defaults = _fingerprint(obj.__defaults__, depth + 1)
        kw = _fingerprint(tuple(sorted((obj.__kwdefaults__ or {}).items())), depth + 1)
        return ("fn", obj.__code__, cells, defaults, kw)
    if isinstance(obj, functools.partial):
        kw = tuple(sorted(obj.keywords.items()))
        return ("partial", _fingerprint((obj.func, obj.args, kw), depth + 1))
    raise _Unkeyable


class OptKey:
    """An optimizer as part of the cache key: by hyperparameters when they can be read."""

    def __init__(self, opt: optax.GradientTransformation):
        self.opt = opt
        try:
            self.key: Any = ("value", _fingerprint(tuple(opt)))
        except (_Unkeyable, ValueError, TypeError):
            self.key = ("id", id(opt))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OptKey) and other.key == self.key


def unwrap(part: Any) -> Any:
    """The object behind a key part."""
    return part.obj if isinstance(part, ById) else part
