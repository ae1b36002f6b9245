"""Activation capture: turn a model into ``f(*inputs) -> (output, activations)``.

``capture`` is the spine of jaxinterp. It takes a Flax linen module with its variables, or an
nnx module, and a selector of canonical paths (see :mod:`jaxinterp.capture._paths`), and returns
a pure function. The function runs the model once and returns its output together with a flat
``{path: activation}`` dict holding the outputs of the selected submodules and nothing else, so
memory is what the selection needs. It is built on :func:`apply_with_hook` and so composes with
``jax.jit``, ``jax.vmap`` and ``jax.grad`` like any other JAX function::

    f = capture(model, variables, select="block_*/mlp")
    out, acts = jax.jit(f)(x)          # acts == {"block_0/mlp": ..., "block_1/mlp": ...}
    jax.vmap(f)(xs)                    # one extra leading axis everywhere

A selector that matches nothing raises ``KeyError`` listing the available paths, at trace time,
never a silent empty dict.

A pattern selects modules: ``"mlp"`` keeps every call of ``mlp`` (keys ``mlp``, ``mlp@1``, ...,
one rule for all of jaxinterp, see ``jaxinterp.capture._hooks``); ``"mlp@2"`` keeps its
third call only. Activations of layers inside ``nn.scan`` / ``nnx.scan`` come out stacked
``[layer, ...]`` under the scanned module's paths (``"layers/attn"``), also under ``jit`` and
``grad``; outputs that are tuples or other pytrees are returned as the module returns them.
Path naming per model pattern is in :mod:`jaxinterp.capture._paths`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Collection
from typing import Any

import jax

from jaxinterp.capture._hooks import (
    LOST_PATTERNS,
    check_model,
    current_call,
    is_linen,
    record,
    run_with_hook,
)
from jaxinterp.capture._paths import Selector, as_matcher, check_selection

Activations = dict[str, Any]


def _lost_error(select: Selector, lost: tuple[str, ...], bypassed=()) -> ValueError:
    if bypassed:
        return ValueError(
            f"select: {select!r} picks {', '.join(repr(k) for k in lost)}, which cannot be "
            "recorded: " + " ".join(bypassed)
        )
    return ValueError(
        f"select: {select!r} picks {', '.join(repr(k) for k in lost)}, called inside a JAX "
        f"transform whose values jaxinterp cannot carry out: {LOST_PATTERNS}. Select the "
        "enclosing module instead (edits at these sites still apply)"
    )


def capture(
    model: Any,
    variables: Any = None,
    *,
    select: Selector = "**",
    method: str | Callable[..., Any] | None = None,
    methods: Collection[str] | None = None,
    mutable: Any = False,
) -> Callable[..., tuple[Any, Activations]]:
    """Returns ``f(*args, **kwargs) -> (output, activations)`` for the selected submodules.

    Args:
      model: a ``flax.linen.Module`` or a ``flax.nnx.Module``. The model code is not edited.
      variables: the linen variables (``{"params": ...}``); ``None`` for an nnx module.
      select: which submodule outputs to keep: a glob (``"block_*/attn"``), a sequence of
        globs, or a predicate on canonical paths. ``"**"`` keeps every submodule. A pattern
        with ``@k`` (``"mlp@2"``) keeps only that call.
      method: the model method to run: a name or a callable taking the model first (default
        ``__call__``).
      methods: submodule methods recorded besides ``__call__`` (``("encode", "decode")``);
        their outputs are named ``"path.method"``.
      mutable: linen only, as in ``model.apply``: the collections the call may update
        (``["cache"]`` for a decode cache, ``["batch_stats"]`` in training mode); the output
        is then ``(output, updated_variables)`` as ``apply`` returns it. An nnx model's state
        changes (caches, BatchNorm statistics) are written back into the module, as its own
        call does (see ``jaxinterp.capture._hooks``).

    Returns:
      A function. Called with the model's inputs (e.g. ``x: [batch, ...]``) it returns
      ``(output, {key: activation})``; each activation is the selected submodule's output as
      the module returns it (``[batch, ..., features]``, or a tuple/pytree), with
      ``[layer, ...]`` in front inside a scan. Keys are in call order (``jax.jit`` sorts
      them).

    Raises:
      TypeError: ``model`` is neither linen nor nnx, or ``variables`` does not fit it.
      KeyError: (when ``f`` runs or is traced) a pattern or path matches no submodule; the
        message lists the available paths.
      ValueError: (when ``f`` runs or is traced) a selected call runs inside a transform
        whose values cannot be carried out (``lax.cond``, an inner ``jax.jit``).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> out, acts = jax.jit(capture(model, variables, select="layers_0"))(jnp.ones((5, 4)))
    >>> acts["layers_0"].shape
    (5, 3)
    """
    check_model(model, variables)
    match = as_matcher(select)

    def f(*args: Any, **kwargs: Any) -> tuple[Any, Activations]:
        seen: list[str] = []

        def around(path, module, call_next, a, k):
            out = call_next(*a, **k)
            call = current_call()
            seen.append(call.key)
            if match(path) or (call.index and match(call.key)):
                record(call.key, out)
            return out

        out, recs = run_with_hook(
            model,
            variables,
            around,
            *args,
            method=method,
            methods=methods,
            mutable=mutable,
            **kwargs,
        )
        lost = tuple(k for k in recs.lost)
        if lost:
            raise _lost_error(select, lost, recs.bypassed)
        check_selection(select, list(recs), list(dict.fromkeys(seen)), recs.opaque)
        return out, dict(recs)

    return f


def _mutable_all(model: Any) -> Any:
    return True if is_linen(model) else False


def list_paths(
    model: Any,
    variables: Any,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    methods: Collection[str] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Lists every capturable call key with the shape of its output, without running the model.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      *args: example inputs (arrays or ``jax.ShapeDtypeStruct``).
      method: the model method to run.
      methods: submodule methods listed besides ``__call__`` (as ``"path.method"``).
      **kwargs: keyword inputs.

    Returns:
      ``{key: jax.ShapeDtypeStruct pytree}`` in the order the calls start (outer modules
      before the modules they call); ``{}`` for a model without submodules. Errors of the
      model itself propagate. Calls inside a transform whose values cannot be carried out
      (``lax.cond``, an inner ``jax.jit``) are left out with a warning naming them.

    Raises:
      ValueError: the model enters ``jax.lax.scan`` / ``jax.vmap`` / ``jax.checkpoint``
        through a name bound before the hook (``from jax.lax import scan`` at import), so
        the calls inside cannot be listed; the message names the file and line and the fix.

    >>> import jax.numpy as jnp, flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> {k: v.shape for k, v in list_paths(model, variables, jnp.ones((5, 4))).items()}
    {'layers_0': (5, 3), 'layers_2': (5, 2)}
    """
    check_model(model, variables)
    order: list[str] = []

    def around(path, module, call_next, a, k):
        order.append(current_call().key)
        out = call_next(*a, **k)
        record(current_call().key, out)
        return out

    def run(*a):
        out, recs = run_with_hook(
            model,
            variables,
            around,
            *a,
            method=method,
            methods=methods,
            mutable=_mutable_all(model),
            update_model=False,  # nothing runs: the model is left as it is
            **kwargs,
        )
        lost[:] = [recs.lost, recs.bypassed]
        return dict(recs)

    lost: list[Any] = [(), ()]
    acts = jax.eval_shape(run, *args)
    keys, bypassed = lost
    if bypassed:
        raise ValueError(
            f"list_paths: the calls {', '.join(map(repr, keys))} cannot be listed: "
            + " ".join(bypassed)
        )
    if keys:
        warnings.warn(
            f"list_paths: the calls {', '.join(map(repr, keys))} are left out: they run inside "
            f"a JAX transform whose values jaxinterp cannot carry out ({LOST_PATTERNS}); "
            "edits there still apply, capture raises for them",
            stacklevel=2,
        )
    return {k: acts[k] for k in dict.fromkeys(order) if k in acts}
