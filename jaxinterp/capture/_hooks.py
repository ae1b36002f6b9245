"""One hook for Flax linen and nnx: run a model with a function around each submodule call.

Everything that looks inside a model (capture, attention extraction, interventions) is written
once against :func:`apply_with_hook`. A hook receives the canonical path of the submodule being
called, the module, the continuation and its arguments, and returns the call's output:

    def around(path, module, call_next, args, kwargs):
        out = call_next(*args, **kwargs)   # run the submodule (args may be changed first)
        return out                         # or a replacement: that is an intervention

* linen: :func:`flax.linen.intercept_methods` wraps every ``__call__`` of a bound submodule.
* nnx: the model is copied (``nnx.split`` / ``nnx.merge``), and in the copy each submodule's
  class is swapped for a cached subclass whose ``__call__`` goes through the hook. The caller's
  model is never touched, so the result is a pure function of the inputs and the model state.
  (``nnx.capture(method_outputs=...)`` would record every method of every module by patching
  the classes in place; the copy keeps memory to what the hook keeps and leaves other instances
  of the same class alone.)

Hooks run at trace time, so all of this composes with ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
from flax import nnx

from jaxinterp.capture._paths import canonical_path

Around = Callable[[str, Any, Callable[..., Any], tuple, dict], Any]

# id(module copy) -> canonical path, for the nnx copies of the forward pass being traced.
_NNX_PATHS: contextvars.ContextVar[Mapping[int, str] | None] = contextvars.ContextVar(
    "jaxinterp_nnx_paths", default=None
)
_NNX_AROUND: contextvars.ContextVar[Around | None] = contextvars.ContextVar(
    "jaxinterp_nnx_around", default=None
)
_HOOKED_CLASSES: dict[type, type] = {}
_LOCK = threading.Lock()


def is_linen(model: Any) -> bool:
    """Whether ``model`` is a Flax linen module."""
    return isinstance(model, nn.Module)


def is_nnx(model: Any) -> bool:
    """Whether ``model`` is a Flax nnx module."""
    return isinstance(model, nnx.Module)


def check_model(model: Any, variables: Any) -> None:
    """Validates the (model, variables) pair every public entry point takes."""
    if is_linen(model):
        if variables is None:
            raise TypeError(
                "variables: a linen model needs its variables (e.g. {'params': ...}); got None"
            )
    elif is_nnx(model):
        if variables is not None:
            raise TypeError(
                "variables: an nnx module carries its own state; pass variables=None, "
                f"got {type(variables).__name__}"
            )
    else:
        raise TypeError(
            f"model: expected a flax.linen.Module or a flax.nnx.Module, got {type(model).__name__}"
        )


def _hooked_class(cls: type) -> type:
    with _LOCK:
        sub = _HOOKED_CLASSES.get(cls)
        if sub is None:
            orig_call = cls.__call__

            def __call__(self, *args, **kwargs):
                paths = _NNX_PATHS.get()
                around = _NNX_AROUND.get()
                path = None if paths is None else paths.get(id(self))
                if around is None or path is None:
                    return orig_call(self, *args, **kwargs)

                def call_next(*a, **k):
                    return orig_call(self, *a, **k)

                return around(path, self, call_next, args, kwargs)

            sub = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})
            _HOOKED_CLASSES[cls] = sub
    return sub


def apply_with_hook(
    model: Any,
    variables: Any,
    around: Around,
    *args: Any,
    method: str | None = None,
    mutable: Any = False,
    rngs: Any = None,
    **kwargs: Any,
) -> Any:
    """Runs ``model`` on ``args`` with ``around`` wrapped about every submodule ``__call__``.

    Args:
      model: a ``flax.linen.Module`` (with ``variables``) or a ``flax.nnx.Module``.
      variables: the linen variables dict; ``None`` for nnx.
      around: ``around(path, module, call_next, args, kwargs) -> output``.
      *args: positional inputs of the model.
      method: name of the model method to run (default ``__call__``).
      mutable: linen ``mutable`` collections (returned as ``(out, updates)`` when set).
      rngs: linen ``rngs`` dict.
      **kwargs: keyword inputs of the model.

    Returns:
      Whatever the model method returns.
    """
    check_model(model, variables)
    if is_linen(model):

        def interceptor(next_fun, a, k, context):
            mod = context.module
            if context.method_name != "__call__" or not mod.path:
                return next_fun(*a, **k)
            return around(canonical_path(mod.path), mod, next_fun, tuple(a), dict(k))

        with nn.intercept_methods(interceptor):
            return model.apply(
                variables, *args, method=method, mutable=mutable, rngs=rngs, **kwargs
            )

    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    paths: dict[int, str] = {}
    for raw, sub in nnx.iter_modules(copy):
        if not raw:
            continue
        paths[id(sub)] = canonical_path(raw)
        if type(sub) not in _HOOKED_CLASSES.values():
            object.__setattr__(sub, "__class__", _hooked_class(type(sub)))
    tok_p, tok_a = _NNX_PATHS.set(paths), _NNX_AROUND.set(around)
    try:
        fn = getattr(copy, method or "__call__")
        return fn(*args, **kwargs)
    finally:
        _NNX_PATHS.reset(tok_p)
        _NNX_AROUND.reset(tok_a)
