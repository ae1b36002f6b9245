"""Attention analysis: rollout and per-head scores.

Every function here reads attention weights on their last two axes, ``[..., q, k]`` (rows are
probability distributions over keys), and keeps all leading axes, so the same call scores one
head ``[q, k]``, one example ``[layer, head, q, k]`` (giving ``[layer, head]``) or a batch
``[layer, batch, head, q, k]``. Masks broadcast against ``weights.shape[:-1]`` (queries) or
``weights.shape[:-2] + (k,)`` (keys); a ``[q]`` mask therefore applies to every layer and head
of one example. Padded queries are left out of every average through ``query_mask``; padded
keys need nothing, the model already gives them weight 0.

Scores:

* :func:`head_entropy` — mean over queries of the entropy of the row (nats): 0 for a head
  that always looks at one key, ``log(k)`` for uniform attention.
* :func:`mean_attention_distance` — mean over queries of ``Σ_k p[q,k] |q - k|``, in positions.
* :func:`attention_to` — mean mass on a class of keys (``[CLS]``, ``[SEP]``, punctuation, ...).
* :func:`offset_score` — mean mass at key ``q - offset``; ``offset=1`` is the previous-token
  score.
* :func:`induction_score` — mean mass on the tokens that *followed* earlier occurrences of the
  current token (the induction pattern of Olsson et al. 2022).
* :func:`rollout` — attention rollout (Abnar & Zuidema 2020): heads averaged, the residual
  connection modelled as ``0.5 I + 0.5 A`` per layer, rows renormalised, and the layers
  multiplied, giving how much each input token flows into each position at the top.

Checks (the package's value-check policy). ``weights`` must be a floating array whose rows
are attention distributions: entries ``>= 0`` and each row summing to 1 (or to 0, a query
that attends to nothing), within ``max(1e-3, 4 eps)`` of the dtype — logits or unnormalised
scores would otherwise give plausible wrong numbers. Concrete weights that fail raise
``ValueError``; under ``jit`` the scores come out NaN and the check is registered (see
``jaxinterp.checked``). Masks must be boolean or integer (nonzero = kept); shapes that do not
broadcast raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_int, is_traced, poison, value_check


def _check_weights(
    weights: jax.Array, min_ndim: int = 2, allow_empty_rows: bool = True
) -> tuple[jax.Array, Any]:
    """``(weights, ok)``: static checks, then the row check (raises if concrete)."""
    w = check_array(weights, "weights", kind="floating")
    if w.ndim < min_ndim:
        raise ValueError(
            f"weights: expected at least {min_ndim} axes [..., q, k], got shape {w.shape}"
        )
    if w.shape[-1] == 0 or w.shape[-2] == 0:
        raise ValueError(f"weights: expected at least one query and one key, got shape {w.shape}")
    tol = max(1e-3, 4 * float(jnp.finfo(w.dtype).eps))
    rows = w.astype(jnp.float32).sum(-1)
    low = w.min(-1)
    good = jnp.abs(rows - 1.0) <= tol
    if allow_empty_rows:  # entries >= -tol summing to ~0: a query that attends to nothing
        good = good | (jnp.abs(rows) <= tol)
    good = good & (low >= -tol)
    ok = good.all()
    first = jnp.argmin(good.ravel())
    if allow_empty_rows:
        want = "rows of attention probabilities (entries >= 0, each row summing to 1 or 0)"
    else:
        want = "rows of attention probabilities (entries >= 0, each row summing to 1)"
    value_check(
        ok,
        f"weights: expected {want}; row {{}} sums to {{}} with minimum {{}}",
        first,
        rows.ravel()[first],
        low.ravel()[first],
    )
    return w, (ok if is_traced(ok) else True)


def _finish(out: jax.Array, ok: Any) -> jax.Array:
    return out if ok is True else poison(out, ok)


def _mask(name: str, mask: Any, shape: tuple[int, ...], axes: str) -> jax.Array:
    """A boolean mask broadcast to ``shape`` (nonzero = kept)."""
    m = check_array(mask, name)
    if not (m.dtype == jnp.bool_ or jnp.issubdtype(m.dtype, jnp.integer)):
        raise TypeError(f"{name}: expected a boolean or integer mask, got dtype {m.dtype}")
    try:
        out_shape = np.broadcast_shapes(m.shape, tuple(shape))
    except ValueError:
        out_shape = None
    if out_shape != tuple(shape):
        raise ValueError(f"{name}: shape {m.shape} does not broadcast to {tuple(shape)} ({axes})")
    return jnp.broadcast_to(m != 0, shape)


def _query_mean(values: jax.Array, query_mask: jax.Array | None) -> jax.Array:
    """Mean of ``values [..., q]`` over (unmasked) queries; 0 where none is left."""
    if query_mask is None:
        return values.mean(-1)
    m = _mask("query_mask", query_mask, values.shape, "[..., q]").astype(values.dtype)
    return (values * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)


def head_entropy(weights: jax.Array, query_mask: jax.Array | None = None) -> jax.Array:
    """Mean entropy (nats) of the attention rows.

    Args:
      weights: ``[..., q, k]`` attention weights.
      query_mask: optional, broadcastable to ``[..., q]``; False/0 drops a query.

    Returns:
      ``[...]`` mean over queries of ``-Σ_k p log p``.

    Raises:
      TypeError, ValueError: wrong ranks, dtypes or shapes, or ``weights`` rows that are not
        attention distributions (module docstring). Under jit, such weights give NaN
        results; see ``jaxinterp.checked``.

    >>> round(float(head_entropy(jnp.full((4, 4), 0.25))), 5)  # log 4
    1.38629
    """
    w, ok = _check_weights(weights)
    ent = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), axis=-1)
    return _finish(_query_mean(ent, query_mask), ok)


def mean_attention_distance(weights: jax.Array, query_mask: jax.Array | None = None) -> jax.Array:
    """Mean distance ``|q - k|`` (in positions) between a query and the keys it attends to.

    Args:
      weights: ``[..., q, k]``.
      query_mask: optional, broadcastable to ``[..., q]``.

    Returns:
      ``[...]``.

    Raises:
      TypeError, ValueError: wrong ranks, dtypes or shapes, or ``weights`` rows that are not
        attention distributions (module docstring). Under jit, such weights give NaN
        results; see ``jaxinterp.checked``.

    >>> mean_attention_distance(jnp.eye(3)[::-1])  # rows attend to keys 2, 1, 0
    Array(1.3333334, dtype=float32)
    """
    w, ok = _check_weights(weights)
    nq, nk = w.shape[-2:]
    dist = jnp.abs(jnp.arange(nq)[:, None] - jnp.arange(nk)[None, :]).astype(w.dtype)
    return _finish(_query_mean((w * dist).sum(-1), query_mask), ok)


def attention_to(
    weights: jax.Array, key_selected: jax.Array, query_mask: jax.Array | None = None
) -> jax.Array:
    """Mean attention mass on a class of keys.

    Args:
      weights: ``[..., q, k]``.
      key_selected: boolean, broadcastable to ``[..., k]`` (e.g. ``input_ids == sep_id``).
      query_mask: optional, broadcastable to ``[..., q]``.

    Returns:
      ``[...]`` mean over queries of ``Σ_{k selected} p[q, k]``.

    Raises:
      TypeError, ValueError: wrong ranks, dtypes or shapes, or ``weights`` rows that are not
        attention distributions (module docstring). Under jit, such weights give NaN
        results; see ``jaxinterp.checked``.

    >>> w = jnp.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    >>> round(float(attention_to(w, jnp.array([True, False, False]))), 5)  # (1 + .5 + .2) / 3
    0.56667
    """
    w, ok = _check_weights(weights)
    sel = check_array(key_selected, "key_selected")
    if sel.dtype != jnp.bool_:
        raise TypeError(
            f"key_selected: expected a boolean array (e.g. input_ids == sep_id), got dtype "
            f"{sel.dtype}"
        )
    if sel.ndim == 0 or sel.shape[-1] != w.shape[-1]:
        raise ValueError(
            f"key_selected: expected [..., k] with k={w.shape[-1]}, got shape {sel.shape}"
        )
    sel = _mask("key_selected", sel, w.shape[:-2] + (w.shape[-1],), "[..., k]")
    mass = jnp.einsum("...qk,...k->...q", w, sel.astype(w.dtype))
    return _finish(_query_mean(mass, query_mask), ok)


def offset_score(weights: jax.Array, offset: int, query_mask: jax.Array | None = None) -> jax.Array:
    """Mean attention mass at key ``q - offset`` (``offset=1``: previous-token score).

    Only queries with ``q - offset`` in range (and unmasked) are averaged.

    Args:
      weights: ``[..., q, k]``.
      offset: positions back (negative looks ahead).
      query_mask: optional, broadcastable to ``[..., q]``.

    Returns:
      ``[...]``.

    Raises:
      TypeError, ValueError: wrong ranks, dtypes or shapes, or ``weights`` rows that are not
        attention distributions (module docstring). Under jit, such weights give NaN
        results; see ``jaxinterp.checked``.

    >>> offset_score(jnp.eye(5, k=-1), 1)  # every row looks one back
    Array(1., dtype=float32)
    """
    w, ok = _check_weights(weights)
    nq, nk = w.shape[-2:]
    offset = check_int(offset, "offset", lo=-(nk - 1), hi=nq - 1)
    q = jnp.arange(nq)
    valid = (q - offset >= 0) & (q - offset < nk)
    target = jnp.arange(nk)[None, :] == (q - offset)[:, None]
    mass = (w * target.astype(w.dtype)).sum(-1)
    if query_mask is not None:
        valid = valid & _mask("query_mask", query_mask, mass.shape, "[..., q]")
    return _finish(_query_mean(mass, valid), ok)


def prev_token_score(weights: jax.Array, query_mask: jax.Array | None = None) -> jax.Array:
    """Mean attention to the previous token: :func:`offset_score` with ``offset=1``.

    Args:
      weights: ``[..., q, k]`` with ``q >= 2``.
      query_mask: optional, broadcastable to ``[..., q]``.

    Returns:
      ``[...]``.

    Raises:
      As :func:`offset_score`.

    >>> prev_token_score(jnp.eye(4, k=-1))
    Array(1., dtype=float32)
    """
    w = check_array(weights, "weights", kind="floating")
    if w.ndim >= 2 and w.shape[-2] < 2:
        raise ValueError(f"weights: expected at least 2 queries [..., q, k], got {w.shape}")
    return offset_score(w, 1, query_mask)


def induction_score(
    weights: jax.Array, tokens: jax.Array, query_mask: jax.Array | None = None
) -> jax.Array:
    """Mean attention mass on tokens that followed earlier occurrences of the query token.

    For query ``q`` the induction keys are ``j + 1`` for every ``j < q - 1`` with
    ``tokens[j] == tokens[q]`` (the key strictly before the query). Queries without an earlier
    occurrence are not averaged.

    Args:
      weights: ``[..., q, k]`` self-attention (``q == k == seq``).
      tokens: ``[..., seq]`` token ids, broadcastable to the leading axes.
      query_mask: optional, broadcastable to ``[..., q]``.

    Returns:
      ``[...]`` (0 where no query has an earlier occurrence).

    Raises:
      TypeError, ValueError: wrong ranks, dtypes or shapes, or ``weights`` rows that are not
        attention distributions (module docstring). Under jit, such weights give NaN
        results; see ``jaxinterp.checked``.

    >>> toks = jnp.array([5, 6, 7, 5, 6, 7])
    >>> w = jnp.eye(6, k=-2)  # from the 2nd copy, every query looks at key q - 2
    >>> induction_score(w, toks)
    Array(1., dtype=float32)
    """
    w, ok = _check_weights(weights)
    tokens = check_array(tokens, "tokens", kind="integer")
    seq = w.shape[-1]
    if w.shape[-2] != seq:
        raise ValueError(f"weights: expected self-attention [..., seq, seq], got {w.shape}")
    if tokens.ndim == 0 or tokens.shape[-1] != seq:
        raise ValueError(f"tokens: expected [..., seq] with seq={seq}, got shape {tokens.shape}")
    try:
        np.broadcast_shapes(tokens.shape[:-1], w.shape[:-2])
    except ValueError:
        raise ValueError(
            f"tokens: leading axes {tokens.shape[:-1]} do not broadcast to the weights' "
            f"{w.shape[:-2]}"
        ) from None
    prev = jnp.concatenate([jnp.full_like(tokens[..., :1], -1), tokens[..., :-1]], axis=-1)
    same = prev[..., None, :] == tokens[..., :, None]  # [..., q, k]: tokens[k-1] == tokens[q]
    qi, ki = jnp.arange(seq)[:, None], jnp.arange(seq)[None, :]
    target = same & (ki >= 1) & (ki < qi)
    has = target.any(-1)
    mass = (w * target.astype(w.dtype)).sum(-1)
    if query_mask is not None:
        has = has & _mask("query_mask", query_mask, mass.shape, "[..., q]")
    return _finish(_query_mean(mass, has), ok)


def _rollout_layout(layout: Any, ndim: int, head_axis: Any) -> tuple[int, int]:
    """``(layer_axis, head_axis)`` of ``[..., q, k]`` weights of rank ``ndim``, checked."""
    if layout is None:
        if ndim > 4:
            raise ValueError(
                f"layout: weights of rank {ndim} could be [layer, batch, head, q, k] "
                "(stack_layers' output) or [batch, layer, head, q, k] (batch first), and the "
                "shape cannot tell; pass layout='lbhqk' or layout='blhqk'"
            )
        if head_axis is None:
            raise ValueError(
                "layout: 4-D weights could be [layer, head, q, k] (one example, layers "
                "stacked) or [batch, head, q, k] (one layer's map from attention_weights, "
                "which has no layer axis to roll out over), and the shape cannot tell; pass "
                "layout='lhqk' for stacked layers (stack_layers(maps)[:, i] for example i)"
            )
        head = head_axis
        head = check_int(head, "head_axis", lo=-ndim, hi=ndim - 1)
        if head % ndim in (0, ndim - 1, ndim - 2):
            raise ValueError(f"head_axis: {head} must not be the layer, q or k axis")
        return 0, head % ndim
    if head_axis is not None:
        raise ValueError("head_axis: give either layout= or head_axis=, not both")
    if not isinstance(layout, str):
        raise TypeError(f"layout: expected a string such as 'lbhqk', got {type(layout).__name__}")
    ok = (
        layout.endswith("qk")
        and layout.count("l") == 1
        and layout.count("h") == 1
        and len(set(layout)) == len(layout)
        and layout.isalpha()
    )
    if not ok:
        raise ValueError(
            "layout: expected one letter per axis, with one 'l' (layer), one 'h' (head) and "
            f"ending in 'qk', e.g. 'lbhqk' or 'blhqk'; got {layout!r}"
        )
    if len(layout) != ndim:
        raise ValueError(
            f"layout: {layout!r} names {len(layout)} axes, but the weights have {ndim}"
        )
    return layout.index("l"), layout.index("h")


def rollout(
    weights: jax.Array,
    *,
    head_axis: int | None = None,
    residual: float = 0.5,
    layout: str | None = None,
) -> jax.Array:
    """Attention rollout (Abnar & Zuidema, 2020).

    ``Â_l = residual · I + (1 - residual) · mean_heads(A_l)``, rows renormalised, and
    ``R = Â_L ⋯ Â_1``: row ``q`` of ``R`` says how much each input position contributes to
    position ``q`` after the last layer. A ``lax.scan`` over layers.

    Args:
      weights: ``[layer, head, q, k]`` with ``q == k`` for one example, or with more axes
        (e.g. ``[layer, batch, head, q, k]``); ``layout=`` says which axis is which.
      head_axis: the head axis of 4-D ``[layer, ...]`` weights (layer first), instead of
        ``layout=``; averaged out.
      residual: weight of the identity (the residual connection), in ``[0, 1]``.
      layout: one letter per axis, ``l`` the layer, ``h`` the head, ending in ``qk``:
        ``"lhqk"`` for one example, ``"lbhqk"`` for :func:`stack_layers`' output,
        ``"blhqk"`` for batch-first weights. Required (or ``head_axis=``): the shape cannot
        tell a batch axis from the layer axis, so a one-layer ``[batch, head, q, k]`` map
        would otherwise be rolled out over its batch.

    Returns:
      ``[..., q, k]`` rollout (the axes other than layer and head, in their order); rows sum
      to 1.

    Raises:
      TypeError, ValueError: wrong ranks, dtypes or shapes, or ``weights`` rows that are not
        attention distributions (module docstring). Under jit, such weights give NaN
        results; see ``jaxinterp.checked``.

    >>> a = jnp.broadcast_to(jnp.eye(3)[::-1], (2, 1, 3, 3))  # 2 layers, 1 head
    >>> rollout(a, residual=0.0, layout="lhqk")[0]  # swapping twice is the identity
    Array([1., 0., 0.], dtype=float32)
    >>> rollout(jnp.stack([a, a]), layout="blhqk").shape  # a batch of 2 in front
    (2, 3, 3)
    """
    if isinstance(residual, (bool, np.bool_)) or not isinstance(
        residual, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"residual: expected a float in [0, 1], got {type(residual).__name__}")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual: expected a weight in [0, 1], got {residual}")
    w, ok = _check_weights(weights, 4, allow_empty_rows=residual > 0)
    if w.shape[-1] != w.shape[-2]:
        raise ValueError(f"weights: rollout needs self-attention (q == k), got {w.shape}")
    layer_ax, ax = _rollout_layout(layout, w.ndim, head_axis)
    a = jnp.moveaxis(w.mean(axis=ax), layer_ax if layer_ax < ax else layer_ax - 1, 0)
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    a = residual * eye + (1.0 - residual) * a
    a = a / a.sum(-1, keepdims=True)

    def step(r, a_l):
        return jnp.einsum("...qk,...kj->...qj", a_l, r), None

    r0 = jnp.broadcast_to(eye, a.shape[1:])
    out, _ = jax.lax.scan(step, r0, a)
    return _finish(out, ok)
