"""Argument and value checks shared by every public function: one policy, one place.

**The policy** (also in the package docstring and the README):

1. *Static checks.* Everything that depends only on shapes, dtypes and Python arguments is
   checked when a function is called or traced, so it holds under ``jit`` and ``vmap`` too. A
   failure raises ``TypeError`` (wrong kind of thing) or ``ValueError`` (wrong shape or
   value) whose message starts with the argument's name, then says what was expected and what
   was given: ``"k: expected an int in [1, 1797], got 5000"``.
2. *Value checks on concrete arrays* (NaN or inf in data, an index outside its axis) raise the
   same way, before any work is done.
3. *Value checks on traced arrays* (inside ``jit``, ``vmap``, ``grad``) cannot raise. A failed
   check then never clamps or wraps: the results it affects come out as NaN (float results)
   or -1 (integer results), and the check is registered with
   :mod:`jax.experimental.checkify`, so :func:`checked` — or the caller's own
   ``checkify.checkify`` — turns it into the same error message.

Helpers here are private to the package; :func:`checked` is re-exported at the top level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

__all__ = [
    "check_array",
    "check_int",
    "check_key",
    "check_finite",
    "check_ids",
    "model_vocab",
    "checked",
    "is_traced",
    "poison",
    "value_check",
]


def is_traced(x: Any) -> bool:
    """Whether ``x`` (or any leaf of it) is a tracer, i.e. its values are unknown now."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def _describe(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"an array of shape {tuple(x.shape)} and dtype {x.dtype}"
    if isinstance(x, (int, float, bool, str)) or x is None:
        return f"{type(x).__name__} {x!r}"
    return f"a {type(x).__name__}"


def check_key(key: Any, name: str = "key") -> jax.Array:
    """Checks that ``key`` is one PRNG key: ``jax.random.key(seed)`` or a raw ``uint32[2]``.

    Args:
      key: the caller's key.
      name: the argument's name, for the message.

    Returns:
      ``key`` unchanged.

    Raises:
      TypeError: ``key`` is an int, a float array, or a batch of keys.

    >>> check_key(jax.random.key(0)).shape
    ()
    >>> check_key(0)
    Traceback (most recent call last):
    ...
    TypeError: key: expected a PRNG key such as jax.random.key(0), got int 0
    """
    if isinstance(key, (bool, int, float, np.integer, np.floating)):
        raise TypeError(
            f"{name}: expected a PRNG key such as jax.random.key({key!r}), got "
            f"{type(key).__name__} {key!r}"
        )
    dtype = getattr(key, "dtype", None)
    shape = tuple(getattr(key, "shape", ()))
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if shape != ():
            raise TypeError(
                f"{name}: expected one PRNG key (shape ()), got a batch of keys of shape "
                f"{shape}; split it or pass one key"
            )
        return key
    if dtype is not None and dtype == jnp.uint32 and shape == (2,):
        return key
    raise TypeError(f"{name}: expected a PRNG key such as jax.random.key(0), got {_describe(key)}")


def check_int(value: Any, name: str, *, lo: int | None = None, hi: int | None = None) -> int:
    """Checks a static integer argument and its range ``lo <= value <= hi`` (inclusive).

    Raises:
      TypeError: not a Python/NumPy integer (``bool`` and floats are refused).
      ValueError: outside the range.

    >>> check_int(3, "k", lo=1)
    3
    >>> check_int(0, "k", lo=1)
    Traceback (most recent call last):
    ...
    ValueError: k: expected an int >= 1, got 0
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {_describe(value)}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            want = f"an int in [{lo}, {hi}]"
        elif lo is not None:
            want = f"an int >= {lo}"
        else:
            want = f"an int <= {hi}"
        raise ValueError(f"{name}: expected {want}, got {value}")
    return value


_KINDS = {
    "floating": (jnp.floating, "a floating-point"),
    "integer": (jnp.integer, "an integer"),
    "bool": (jnp.bool_, "a boolean"),
    "number": (jnp.number, "a numeric"),
}


def check_array(
    x: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    kind: str | None = None,
    shape: tuple[int | None, ...] | None = None,
) -> jax.Array:
    """Converts ``x`` to an array and checks its rank, dtype kind and shape.

    Args:
      x: array-like.
      name: the argument's name, for the message.
      ndim: required rank, or a tuple of allowed ranks.
      kind: ``"floating"``, ``"integer"``, ``"bool"`` or ``"number"``.
      shape: required shape; ``None`` entries match any size.

    Returns:
      ``jnp.asarray(x)``.

    Raises:
      TypeError: ``x`` is not array-like or of the wrong dtype kind.
      ValueError: wrong rank or shape.

    >>> check_array(jnp.zeros((2, 3)), "feats", ndim=3)
    Traceback (most recent call last):
    ...
    ValueError: feats: expected 3 dimensions, got shape (2, 3)
    """
    try:
        arr = x if isinstance(x, jax.Array) else jnp.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected an array, got {_describe(x)}") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise ValueError(f"{name}: expected {want} dimensions, got shape {tuple(arr.shape)}")
    if kind is not None:
        base, words = _KINDS[kind]
        if not jnp.issubdtype(arr.dtype, base):
            raise TypeError(f"{name}: expected {words} array, got dtype {arr.dtype}")
    if shape is not None:
        ok = len(shape) == arr.ndim and all(s is None or s == a for s, a in zip(shape, arr.shape))
        if not ok:
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{name}: expected shape {want}, got {tuple(arr.shape)}")
    return arr


def value_check(ok: Any, message: str, *fmt_args: Any) -> None:
    """A check on values: raises now when they are concrete, else registers it with checkify.

    Args:
      ok: a boolean scalar (array or Python bool); ``True`` means the check passed.
      message: the error text; ``{}`` fields are filled from ``fmt_args``.
      *fmt_args: values for the message (arrays allowed).

    Raises:
      ValueError: ``ok`` is concrete and False.
    """
    if not is_traced((ok, fmt_args)):
        if not bool(np.asarray(ok)):
            vals = [np.asarray(a).tolist() if hasattr(a, "shape") else a for a in fmt_args]
            raise ValueError(message.format(*vals))
        return
    checkify.debug_check(jnp.asarray(ok), message, *(jnp.asarray(a) for a in fmt_args))


def check_finite(x: Any, name: str) -> None:
    """Value check: every entry of ``x`` is finite (see :func:`value_check`)."""
    arr = jnp.asarray(x)
    if not jnp.issubdtype(arr.dtype, jnp.inexact):
        return
    finite = jnp.isfinite(arr)
    value_check(
        finite.all(),
        f"{name}: expected finite values, got {{}} NaN/inf entries of {arr.size}",
        (~finite).sum(),
    )


def check_ids(ids: Any, vocab: Any, name: str) -> None:
    """Value check: concrete token ``ids`` lie in ``[0, vocab)`` (skipped when ``vocab`` is not
    an int, e.g. a model that declares none, or when ``ids`` are traced: the model's own check
    then applies).

    An id outside the vocabulary would be embedded as a clamped row, a silent wrong answer.

    >>> check_ids(jnp.array([[1, 40]]), 32, "tokens")
    Traceback (most recent call last):
    ...
    ValueError: tokens: expected ids in [0, 32) (the model's vocabulary), got 40 at [0, 1]
    """
    if not isinstance(vocab, (int, np.integer)) or isinstance(vocab, bool) or is_traced(ids):
        return
    arr = np.asarray(ids)
    if not np.issubdtype(arr.dtype, np.integer) or arr.size == 0:
        return
    bad = (arr < 0) | (arr >= vocab)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        at = ", ".join(map(str, where))
        raise ValueError(
            f"{name}: expected ids in [0, {vocab}) (the model's vocabulary), got {arr[where]} "
            f"at [{at}]"
        )


def model_vocab(model: Any) -> int | None:
    """``model.cfg.vocab_size`` when the model declares one (the library's decoders), else
    ``None``."""
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    return vocab if isinstance(vocab, int) else None


def poison(x: Any, ok: Any) -> Any:
    """``x`` where ``ok`` holds, else NaN (float leaves) or -1 (integer leaves); never a clamp.

    ``ok`` broadcasts against every leaf of ``x`` (a scalar poisons everything).

    >>> poison(jnp.array([1.0, 2.0]), jnp.array([True, False])).tolist()
    [1.0, nan]
    """

    def one(leaf):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            bad = jnp.asarray(jnp.nan, leaf.dtype)
        elif jnp.issubdtype(leaf.dtype, jnp.signedinteger):
            bad = jnp.asarray(-1, leaf.dtype)
        else:
            return leaf
        mask = jnp.asarray(ok)
        mask = mask.reshape(mask.shape + (1,) * max(leaf.ndim - mask.ndim, 0))
        return jnp.where(mask, leaf, bad)

    return jax.tree_util.tree_map(one, x)


def checked(f: Callable[..., Any], *, jit: bool = True) -> Callable[..., Any]:
    """Wraps ``f`` so that jaxinterp's value checks raise under ``jit`` too.

    Runs ``checkify.checkify(f)`` (jitted unless ``jit=False``) and raises the first failed
    check's message as ``ValueError``; otherwise returns ``f``'s output.

    Args:
      f: any function built from jaxinterp calls.
      jit: compile the checkified function (default).

    Returns:
      ``g(*args, **kwargs)`` with ``f``'s outputs.

    >>> def first(x, i):
    ...     value_check((0 <= i) & (i < x.shape[0]), "i: expected an index in [0, {}), got {}",
    ...                 x.shape[0], i)
    ...     return x[i]
    >>> checked(first)(jnp.arange(3.0), 5)
    Traceback (most recent call last):
    ...
    ValueError: i: expected an index in [0, 3), got 5
    """
    cf = checkify.checkify(f, errors=checkify.user_checks)
    if jit:
        cf = jax.jit(cf)

    def g(*args: Any, **kwargs: Any) -> Any:
        err, out = cf(*args, **kwargs)
        msg = err.get()
        if msg is not None:
            raise ValueError(msg.removesuffix(" (`check` failed)"))
        return out

    return g
