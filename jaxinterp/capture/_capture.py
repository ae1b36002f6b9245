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
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from jaxinterp.capture._hooks import apply_with_hook, check_model
from jaxinterp.capture._paths import Selector, as_matcher, check_selection, record_key

Activations = dict[str, Any]


def capture(
    model: Any,
    variables: Any = None,
    *,
    select: Selector = "**",
    method: str | None = None,
) -> Callable[..., tuple[Any, Activations]]:
    """Returns ``f(*args, **kwargs) -> (output, activations)`` for the selected submodules.

    Args:
      model: a ``flax.linen.Module`` or a ``flax.nnx.Module``. The model code is not edited.
      variables: the linen variables (``{"params": ...}``); ``None`` for an nnx module.
      select: which submodule outputs to keep: a glob (``"block_*/attn"``), a sequence of
        globs, or a predicate on canonical paths. ``"**"`` keeps every submodule.
      method: the model method to run (default ``__call__``).

    Returns:
      A pure function. Called with the model's inputs (e.g. ``x: [batch, ...]``) it returns
      ``(output, {path: activation})``; each activation is the selected submodule's output
      with the shapes the model gives it (``[batch, ..., features]``).

    Raises:
      TypeError: ``model`` is neither linen nor nnx, or ``variables`` does not fit it.
      KeyError: (when ``f`` runs or is traced) a pattern or path matches no submodule; the
        message lists the available paths.

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
        acts: Activations = {}
        seen: list[str] = []

        def around(path, module, call_next, a, k):
            out = call_next(*a, **k)
            if path not in seen:
                seen.append(path)
            if match(path):
                acts[record_key(acts, path)] = out
            return out

        out = apply_with_hook(model, variables, around, *args, method=method, **kwargs)
        check_selection(select, sorted({p.split("@")[0] for p in acts}), seen)
        return out, acts

    return f


def list_paths(
    model: Any, variables: Any, *args: Any, method: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Lists every capturable path with the shape of its output, without running the model.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      *args: example inputs (arrays or ``jax.ShapeDtypeStruct``).
      method: the model method to run.
      **kwargs: keyword inputs.

    Returns:
      ``{path: jax.ShapeDtypeStruct pytree}`` in call order.
    """
    fn = capture(model, variables, select=lambda p: True, method=method)
    try:
        _, acts = jax.eval_shape(lambda *a: fn(*a, **kwargs), *args)
    except KeyError:
        return {}
    return dict(acts)
