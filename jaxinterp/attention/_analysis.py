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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _check_weights(weights: jax.Array, min_ndim: int = 2) -> jax.Array:
    weights = jnp.asarray(weights)
    if weights.ndim < min_ndim:
        raise ValueError(
            f"weights: expected at least {min_ndim} axes [..., q, k], got shape {weights.shape}"
        )
    return weights


def _query_mean(values: jax.Array, query_mask: jax.Array | None) -> jax.Array:
    """Mean of ``values [..., q]`` over (unmasked) queries."""
    if query_mask is None:
        return values.mean(-1)
    m = jnp.asarray(query_mask)
    try:
        m = jnp.broadcast_to(m, values.shape).astype(values.dtype)
    except ValueError as e:
        raise ValueError(
            f"query_mask: shape {jnp.shape(query_mask)} does not broadcast to the queries "
            f"{values.shape} ([..., q])"
        ) from e
    return (values * m).sum(-1) / jnp.maximum(m.sum(-1), 1.0)


def head_entropy(weights: jax.Array, query_mask: jax.Array | None = None) -> jax.Array:
    """Mean entropy (nats) of the attention rows.

    Args:
      weights: ``[..., q, k]`` attention weights.
      query_mask: optional, broadcastable to ``[..., q]``; False/0 drops a query.

    Returns:
      ``[...]`` mean over queries of ``-Σ_k p log p``.

    >>> head_entropy(jnp.full((4, 4), 0.25))
    Array(1.3862944, dtype=float32)
    """
    w = _check_weights(weights)
    ent = -jnp.sum(jnp.where(w > 0, w * jnp.log(jnp.where(w > 0, w, 1.0)), 0.0), axis=-1)
    return _query_mean(ent, query_mask)


def mean_attention_distance(weights: jax.Array, query_mask: jax.Array | None = None) -> jax.Array:
    """Mean distance ``|q - k|`` (in positions) between a query and the keys it attends to.

    Args:
      weights: ``[..., q, k]``.
      query_mask: optional, broadcastable to ``[..., q]``.

    Returns:
      ``[...]``.

    >>> mean_attention_distance(jnp.eye(3)[::-1])  # rows attend to keys 2, 1, 0
    Array(1.3333334, dtype=float32)
    """
    w = _check_weights(weights)
    nq, nk = w.shape[-2:]
    dist = jnp.abs(jnp.arange(nq)[:, None] - jnp.arange(nk)[None, :]).astype(w.dtype)
    return _query_mean((w * dist).sum(-1), query_mask)


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
    """
    w = _check_weights(weights)
    sel = jnp.asarray(key_selected)
    if sel.ndim == 0 or sel.shape[-1] != w.shape[-1]:
        raise ValueError(
            f"key_selected: expected [..., k] with k={w.shape[-1]}, got shape {sel.shape}"
        )
    mass = jnp.einsum("...qk,...k->...q", w, sel.astype(w.dtype))
    return _query_mean(mass, query_mask)


def offset_score(weights: jax.Array, offset: int, query_mask: jax.Array | None = None) -> jax.Array:
    """Mean attention mass at key ``q - offset`` (``offset=1``: previous-token score).

    Only queries with ``q - offset`` in range (and unmasked) are averaged.

    Args:
      weights: ``[..., q, k]``.
      offset: positions back (negative looks ahead).
      query_mask: optional, broadcastable to ``[..., q]``.

    Returns:
      ``[...]``.

    >>> offset_score(jnp.eye(5, k=-1), 1)  # every row looks one back
    Array(1., dtype=float32)
    """
    w = _check_weights(weights)
    if not isinstance(offset, int):
        raise TypeError(f"offset: expected a Python int, got {type(offset).__name__}")
    nq, nk = w.shape[-2:]
    q = jnp.arange(nq)
    valid = (q - offset >= 0) & (q - offset < nk)
    target = jnp.arange(nk)[None, :] == (q - offset)[:, None]
    mass = (w * target.astype(w.dtype)).sum(-1)
    mask = valid if query_mask is None else valid & jnp.asarray(query_mask).astype(bool)
    return _query_mean(mass, mask)


def prev_token_score(weights: jax.Array, query_mask: jax.Array | None = None) -> jax.Array:
    """Mean attention to the previous token: :func:`offset_score` with ``offset=1``."""
    return offset_score(weights, 1, query_mask)


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

    >>> toks = jnp.array([5, 6, 7, 5, 6, 7])
    >>> w = jnp.eye(6, k=-2)  # from the 2nd copy, every query looks at key q - 2
    >>> induction_score(w, toks)
    Array(1., dtype=float32)
    """
    w = _check_weights(weights)
    tokens = jnp.asarray(tokens)
    seq = w.shape[-1]
    if w.shape[-2] != seq or tokens.ndim == 0 or tokens.shape[-1] != seq:
        raise ValueError(
            f"weights/tokens: expected [..., seq, seq] and [..., seq], got {w.shape} and "
            f"{tokens.shape}"
        )
    prev = jnp.concatenate([jnp.full_like(tokens[..., :1], -1), tokens[..., :-1]], axis=-1)
    same = prev[..., None, :] == tokens[..., :, None]  # [..., q, k]: tokens[k-1] == tokens[q]
    qi, ki = jnp.arange(seq)[:, None], jnp.arange(seq)[None, :]
    target = same & (ki >= 1) & (ki < qi)
    has = target.any(-1)
    mass = (w * target.astype(w.dtype)).sum(-1)
    mask = has if query_mask is None else has & jnp.asarray(query_mask).astype(bool)
    return _query_mean(mass, mask)


def rollout(weights: jax.Array, *, head_axis: int = -3, residual: float = 0.5) -> jax.Array:
    """Attention rollout (Abnar & Zuidema, 2020).

    ``Â_l = residual · I + (1 - residual) · mean_heads(A_l)``, rows renormalised, and
    ``R = Â_L ⋯ Â_1``: row ``q`` of ``R`` says how much each input position contributes to
    position ``q`` after the last layer. A ``lax.scan`` over layers.

    Args:
      weights: ``[layer, ..., head, q, k]`` with ``q == k`` (e.g. ``[layer, head, q, k]``
        for one example or ``[layer, batch, head, q, k]``).
      head_axis: the head axis (default ``-3``); averaged out.
      residual: weight of the identity (the residual connection), in ``[0, 1]``.

    Returns:
      ``[..., q, k]`` rollout; rows sum to 1.

    >>> a = jnp.broadcast_to(jnp.eye(3)[::-1], (2, 1, 3, 3))  # 2 layers, 1 head
    >>> rollout(a, residual=0.0)[0]  # swapping twice is the identity
    Array([1., 0., 0.], dtype=float32)
    """
    w = _check_weights(weights, 4)
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual: expected a weight in [0, 1], got {residual}")
    if w.shape[-1] != w.shape[-2]:
        raise ValueError(f"weights: rollout needs self-attention (q == k), got {w.shape}")
    ax = head_axis % w.ndim
    if ax in (0, w.ndim - 1, w.ndim - 2):
        raise ValueError(f"head_axis: {head_axis} must not be the layer, q or k axis")
    a = w.mean(axis=ax)  # [layer, ..., q, k]
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    a = residual * eye + (1.0 - residual) * a
    a = a / a.sum(-1, keepdims=True)

    def step(r, a_l):
        return jnp.einsum("...qk,...kj->...qj", a_l, r), None

    r0 = jnp.broadcast_to(eye, a.shape[1:])
    out, _ = jax.lax.scan(step, r0, a)
    return out
