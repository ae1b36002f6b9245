"""Per-layer, per-head attention weights from Flax models, without editing the model.

:func:`attention_weights` turns a model into ``f(*inputs) -> (output, {path: weights})`` where
each ``weights`` is ``[batch, head, q, k]`` (softmax probabilities, before dropout) and ``path``
is the canonical path of the attention module (``"block_0/attn"``). It is written once on
:func:`jaxinterp.capture.apply_with_hook`, which wraps every submodule call:

* **linen** ``nn.MultiHeadDotProductAttention`` (and its alias ``nn.MultiHeadAttention``):
  the hook calls the module with ``sow_weights=True``; Flax's ``dot_product_attention`` then
  sows the weights into the ``intermediates`` collection of that module, which the hook reads
  right after the call (the apply runs with ``mutable=["intermediates"]``).
* **nnx** ``nnx.MultiHeadAttention``: the hook calls the (copied) module with
  ``sow_weights=True`` inside :func:`flax.nnx.capture`, which collects the sown
  ``nnx.Intermediate`` ``attention_weights``.

Nothing is recomputed: the recorded array is the one the forward pass uses, so masks (causal,
padding) are respected exactly as the model applies them (masked keys get weight 0) and, under
``jit``, extraction costs only writing the weights out. ``stack_layers`` gives the
``[layer, batch, head, q, k]`` form.

**Hand-written attention.** A model that computes ``softmax(q kᵀ/√d + mask)`` itself is
supported in two documented ways:

1. Compute the probabilities in a small submodule (e.g. ``probs = Softmax(name="probs")(s)``
   with a one-line ``__call__``) and pass ``weights_at="block_*/attn/probs"``: the outputs of
   those modules are taken as weights ``[batch, head, q, k]``. No other change is needed.
2. If the query and key projections are submodules (e.g. ``Dense`` named ``query``/``key``),
   capture them with :func:`jaxinterp.capture.capture` and recompute the weights with
   :func:`attention_from_qk` (the same formula as ``nn.dot_product_attention_weights``).

A model calling ``nn.dot_product_attention`` directly (not through the multi-head module) is
covered by either route as well. The tests check both against a manual computation.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxinterp.capture import Selector, apply_with_hook, as_matcher
from jaxinterp.capture._hooks import check_model, is_linen
from jaxinterp.capture._paths import record_key

Maps = dict[str, jax.Array]

_LINEN_ATTN = (nn.MultiHeadDotProductAttention,)
_NNX_ATTN = (nnx.MultiHeadAttention,)


def _is_attention(module: Any) -> bool:
    return isinstance(module, _LINEN_ATTN + _NNX_ATTN)


def _check_weights(path: str, w: Any) -> jax.Array:
    if not hasattr(w, "ndim") or w.ndim != 4:
        shape = getattr(w, "shape", type(w).__name__)
        raise ValueError(
            f"weights_at: module {path!r} should output attention weights [batch, head, q, k], "
            f"got {shape}"
        )
    return w


def _linen_weights(path: str, module: nn.Module, call_next, a, k):
    fn = module.attention_fn
    if "module" not in inspect.signature(fn).parameters:
        raise TypeError(
            f"model: attention module {path!r} uses a custom attention_fn without a 'module' "
            "argument, so its weights cannot be sown; compute them in a submodule and pass "
            "weights_at= (see jaxinterp.attention docs)"
        )
    out = call_next(*a, **{**k, "sow_weights": True})
    sown = module.get_variable("intermediates", "attention_weights")
    if not sown:
        raise RuntimeError(f"model: attention module {path!r} sowed no attention weights")
    return out, sown[-1]


def _nnx_weights(path: str, module: nnx.Module, call_next, a, k):
    def run(m: nnx.Module) -> Any:
        return call_next(*a, **{**k, "sow_weights": True})

    out, inter = nnx.capture(run, nnx.Intermediate)(module)
    sown = inter.get("attention_weights") if hasattr(inter, "get") else None
    if sown is None:
        raise RuntimeError(f"model: attention module {path!r} sowed no attention weights")
    sown = sown.get_value() if isinstance(sown, nnx.Variable) else sown
    return out, sown[-1]


def attention_weights(
    model: Any,
    variables: Any = None,
    *,
    select: Selector = "**",
    weights_at: Selector | None = None,
    method: str | None = None,
) -> Callable[..., tuple[Any, Maps]]:
    """Returns ``f(*args, **kwargs) -> (output, {path: weights [batch, head, q, k]})``.

    Args:
      model: a ``flax.linen.Module`` or ``flax.nnx.Module``; its code is not edited.
      variables: linen variables (``{"params": ...}``); ``None`` for nnx.
      select: which built-in attention modules (``nn.MultiHeadDotProductAttention``,
        ``nnx.MultiHeadAttention``) to record, as a glob / globs / predicate on canonical paths.
      weights_at: paths of modules whose *output* is attention weights ``[batch, head, q, k]``
        (hand-written attention, see the module docs); recorded in addition to ``select``.
      method: the model method to run (default ``__call__``).

    Returns:
      A pure function composing with ``jit``/``vmap``/``grad``. Its second output maps the
      canonical path of each attention module (``"block_0/attn"``; a second call of the same
      module is ``"block_0/attn@1"``) to ``[batch, head, q, k]`` weights whose rows sum to 1
      over the keys the model's mask allows (masked keys are 0).

    Raises:
      TypeError: a bad ``model``/``variables`` pair.
      KeyError: (at trace time) nothing matched; the message lists the attention modules seen.
      ValueError: a ``weights_at`` module does not output a 4-D array.

    >>> from jaxinterp import models
    >>> tf = models.offset_transformer()
    >>> f = jax.jit(attention_weights(tf.model, tf.variables))
    >>> _, maps = f(jnp.zeros((2, 16), jnp.int32))
    >>> sorted(maps), maps["block_0/attn"].shape
    (['block_0/attn', 'block_1/attn'], (2, 4, 16, 16))
    """
    check_model(model, variables)
    match = as_matcher(select)
    match_w = None if weights_at is None else as_matcher(weights_at)
    linen = is_linen(model)

    def f(*args: Any, **kwargs: Any) -> tuple[Any, Maps]:
        maps: Maps = {}
        attn_seen: list[str] = []
        all_seen: list[str] = []

        def around(path, module, call_next, a, k):
            all_seen.append(path)
            if match_w is not None and match_w(path):
                out = call_next(*a, **k)
                maps[record_key(maps, path)] = _check_weights(path, out)
                return out
            if not _is_attention(module):
                return call_next(*a, **k)
            attn_seen.append(path)
            if not match(path):
                return call_next(*a, **k)
            grab = _linen_weights if linen else _nnx_weights
            out, w = grab(path, module, call_next, a, k)
            maps[record_key(maps, path)] = w
            return out

        if linen:
            out, _ = apply_with_hook(
                model, variables, around, *args, method=method, mutable=["intermediates"], **kwargs
            )
        else:
            out = apply_with_hook(model, None, around, *args, method=method, **kwargs)
        if not maps:
            listing = ", ".join(repr(p) for p in dict.fromkeys(attn_seen)) or "(none)"
            raise KeyError(
                f"select/weights_at: no attention weights recorded (select={select!r}, "
                f"weights_at={weights_at!r}). Attention modules seen: {listing}; all paths: "
                f"{', '.join(dict.fromkeys(all_seen)) or '(none)'}"
            )
        return out, maps

    return f


def _natural_key(path: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def layer_order(maps: Mapping[str, Any]) -> list[str]:
    """The paths of ``maps`` in layer order (numbers compared as numbers: ``layer_2 < layer_10``).

    ``jax.jit`` returns dicts with sorted keys; this restores the model's order whatever the
    dict order is.

    >>> layer_order({"layer_10/attn": 0, "layer_2/attn": 0})
    ['layer_2/attn', 'layer_10/attn']
    """
    return sorted(maps, key=_natural_key)


def stack_layers(maps: Mapping[str, jax.Array]) -> jax.Array:
    """Stacks ``{path: [batch, head, q, k]}`` into ``[layer, batch, head, q, k]``.

    Layers are ordered by :func:`layer_order`.

    Raises:
      ValueError: ``maps`` is empty or the shapes differ (the message lists them).
    """
    if not maps:
        raise ValueError("maps: expected at least one attention map, got an empty dict")
    paths = layer_order(maps)
    shapes = {p: tuple(maps[p].shape) for p in paths}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"maps: attention maps have different shapes, cannot stack: {shapes}")
    return jnp.stack([maps[p] for p in paths])


def attention_from_qk(query: jax.Array, key: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Recomputes ``softmax(q kᵀ / √d)`` from captured query/key projections.

    For hand-written attention whose ``query`` and ``key`` projections are submodules (capture
    them by path). Same formula and masking as ``nn.dot_product_attention_weights``.

    Args:
      query: ``[batch, q, head, d_head]``.
      key: ``[batch, k, head, d_head]``.
      mask: optional boolean, broadcastable to ``[batch, head, q, k]``; False = masked out.

    Returns:
      ``[batch, head, q, k]`` attention weights.

    >>> q = k = jnp.zeros((1, 3, 2, 4))
    >>> attention_from_qk(q, k)[0, 0, 0]
    Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
    """
    if query.ndim != 4 or key.ndim != 4:
        raise ValueError(
            f"query/key: expected [batch, seq, head, d_head], got {query.shape} and {key.shape}"
        )
    if query.shape[0] != key.shape[0] or query.shape[2:] != key.shape[2:]:
        raise ValueError(
            f"query/key: batch, head and d_head must match, got {query.shape} and {key.shape}"
        )
    return nn.dot_product_attention_weights(query, key, mask=mask)
