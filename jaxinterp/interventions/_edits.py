"""Edits: pure functions ``activation -> new activation`` that an intervention applies at a site.

An edit never mutates anything; it returns a new array of the same shape and dtype. Each
factory closes over what it needs (the replacement values, a PRNG key) and over a *selection*
of the activation's entries to change, so one mechanism covers whole-layer, per-head,
per-position and per-neuron interventions:

* ``at={axis: index}`` picks entries along named axes of the activation. Axes count as in
  NumPy (negative axes count from the end, which stays correct under ``vmap``). An index is a
  Python int, a traced integer scalar (so a sweep can ``vmap`` over it), an integer array of
  several indices, or a boolean mask of the axis length. Per-head results of attention are
  ``[batch, seq, head, d_head]``, so ``at={-2: h}`` is head ``h`` and ``at={-3: t, -2: h}`` is
  head ``h`` at position ``t``; on the residual stream ``[batch, seq, d_model]`` ``at={-2: t}``
  is position ``t``; on MLP hidden units ``[batch, seq, d_mlp]`` ``at={-1: n}`` is neuron ``n``.
* ``where=mask`` is any boolean array that broadcasts against the activation.
* ``head=h`` selects head ``h`` and says so: it is axis -2 of the per-head layout
  ``[batch, seq, head, d_head]`` (Flax's attention modules, the input of their ``out``
  projection), and an activation with fewer than 4 axes raises ``ValueError`` rather than
  selecting a position. Models that merge the heads into one axis before the output
  projection (``[batch, seq, head·d_head]``: Hugging Face Flax GPT-2's ``c_proj``, BERT's and
  ViT's ``attention/output/dense``) take ``heads=n_heads`` too: the activation is viewed as
  ``[batch, seq, n_heads, d_head]``, ``head``, ``at`` and ``where`` apply to that view, and the
  result is merged back (``heads=`` on an activation that already has a head axis raises).
  ``at={-2: h}`` stays a plain axis selection (position ``h`` on a 3-axis activation).

Both may be given (the selection is their intersection); with neither the whole activation
is replaced. Entries outside the selection pass through unchanged, bit for bit.

Indices are never clamped or wrapped: an index must lie in ``[-size, size)`` of its axis
(negative counts from the end, as in NumPy). A Python int or a concrete array outside that
range raises ``ValueError`` when the edit runs (at trace time under ``jit``). A *traced* index
(under ``jit``/``vmap``) cannot raise: the edit then returns an all-NaN activation (float
activations; -1 for integer ones) and registers the check, so ``jaxinterp.checked`` raises the
same message. :func:`selection_mask` registers the check too, but a boolean mask has no NaN:
an out-of-range traced index selects nothing there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_int, check_key, is_traced, poison, value_check

Edit = Callable[[jax.Array], jax.Array]
Index = Any  # int | integer scalar/array | bool [size] array
At = Mapping[int, Index]


def _axis_mask(index: Index, size: int, axis: int, check: bool) -> tuple[jax.Array, Any]:
    """``(mask [size], ok)``: the entries ``index`` selects and whether it lies in the axis.

    ``ok`` is ``True`` for checked (concrete) indices; for a traced index it is a traced bool,
    registered with ``value_check`` when ``check``.
    """
    if isinstance(index, (bool, np.bool_)):
        raise TypeError(
            f"at: index for axis {axis} must be an int, int array or bool mask, got bool"
        )
    if isinstance(index, (int, np.integer)):
        if not -size <= int(index) < size:
            raise ValueError(
                f"at: index {int(index)} is out of range for axis {axis} of size {size}"
            )
        return jnp.arange(size) == (int(index) % size), True
    try:
        idx = jnp.asarray(index)
    except (TypeError, ValueError):
        raise TypeError(
            f"at: index for axis {axis} must be an int, int array or bool mask, got "
            f"{type(index).__name__}"
        ) from None
    if idx.dtype == jnp.bool_:
        if idx.shape != (size,):
            raise ValueError(
                f"at: boolean mask for axis {axis} must have shape ({size},), got {idx.shape}"
            )
        return idx, True
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise TypeError(f"at: index for axis {axis} must be integer or boolean, got {idx.dtype}")
    if idx.ndim > 1:
        raise ValueError(
            f"at: index for axis {axis} must be a scalar or 1-D, got shape {idx.shape}"
        )
    if not is_traced(idx):
        concrete = np.asarray(idx)
        bad = concrete[(concrete < -size) | (concrete >= size)]
        if bad.size:
            raise ValueError(
                f"at: index {int(bad.ravel()[0])} is out of range for axis {axis} of size {size}"
            )
        ok = True
    else:
        in_range = (idx >= -size) & (idx < size)
        ok = in_range.all()
        if check:
            first_bad = idx.ravel()[jnp.argmin(in_range.ravel())]
            value_check(
                ok, f"at: index {{}} is out of range for axis {axis} of size {size}", first_bad
            )
    idx = jnp.where(idx < 0, idx + size, idx)  # NumPy's negative indices, not a wrap
    if idx.ndim == 0:
        return jnp.arange(size) == idx, ok
    return (jnp.arange(size)[:, None] == idx[None, :]).any(-1), ok


def _selection(
    shape: tuple[int, ...], at: At | None, where: Any, check: bool = True
) -> tuple[jax.Array, Any]:
    """``(mask, ok)`` with ``ok`` False where a traced index is out of range."""
    ndim = len(shape)
    mask = jnp.ones((1,) * ndim, bool)
    ok: Any = True
    if at is not None and not isinstance(at, Mapping):
        raise TypeError(f"at: expected a mapping {{axis: index}}, got {type(at).__name__}")
    for axis, index in (at or {}).items():
        if (
            isinstance(axis, (bool, np.bool_))
            or not isinstance(axis, (int, np.integer))
            or not -ndim <= axis < ndim
        ):
            raise ValueError(
                f"at: axis {axis!r} is out of range for an activation of shape {tuple(shape)}"
            )
        ax = int(axis) % ndim
        m, ok_ax = _axis_mask(index, shape[ax], int(axis), check)
        ok = ok_ax if ok is True else ok & ok_ax
        mask = mask & m.reshape((1,) * ax + (shape[ax],) + (1,) * (ndim - ax - 1))
    if where is not None:
        try:
            w = jnp.asarray(where)
        except (TypeError, ValueError):
            raise TypeError(
                f"where: expected a boolean array, got {type(where).__name__}"
            ) from None
        if w.dtype != jnp.bool_:
            raise TypeError(f"where: expected a boolean array, got dtype {w.dtype}")
        if w.ndim > ndim:
            raise ValueError(f"where: mask of shape {w.shape} has more axes than {tuple(shape)}")
        try:
            np.broadcast_shapes(w.shape, tuple(shape))
        except ValueError:
            raise ValueError(
                f"where: mask of shape {w.shape} does not broadcast to the activation shape "
                f"{tuple(shape)}"
            ) from None
        mask = mask & w.reshape((1,) * (ndim - w.ndim) + w.shape)
    return mask, ok


def selection_mask(shape: tuple[int, ...], at: At | None = None, where: Any = None) -> jax.Array:
    """Boolean mask, broadcastable to ``shape``, of the entries an edit changes.

    Args:
      shape: the activation's shape, e.g. ``[batch, seq, head, d_head]``.
      at: ``{axis: index}`` (see the module docstring); ``None`` selects every entry.
      where: a boolean array broadcastable to ``shape``; ``None`` selects every entry.

    Returns:
      A boolean array with ``len(shape)`` dimensions (size 1 on axes not selected on).

    Raises:
      TypeError: ``at`` is not a mapping, an index is neither integer nor boolean, ``where``
        is not boolean.
      ValueError: an axis is out of range, a concrete index is out of range, or ``where`` does
        not broadcast to ``shape``. Under jit, a traced out-of-range index selects nothing and
        its check is registered; see ``jaxinterp.checked``.

    >>> selection_mask((2, 3, 4), at={-1: 1}).astype(int)[0, 0].tolist()
    [0, 1, 0, 0]
    """
    shape = tuple(shape)
    return _selection(shape, at, where)[0]


def _check_broadcast(name: str, values: jax.Array, shape: tuple[int, ...]) -> None:
    try:
        ok = np.broadcast_shapes(values.shape, shape) == tuple(shape)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(
            f"{name}: values of shape {values.shape} do not broadcast to the activation "
            f"shape {shape}"
        )


_PER_HEAD = "per-head activations [batch, seq, head, d_head] (4 axes)"
_MERGED_HINT = (
    "if the heads are merged into the last axis ([batch, seq, head·d_head], as Hugging Face "
    "Flax GPT-2/BERT/ViT keep them before the attention output projection), pass "
    "heads=n_heads"
)


def _check_heads(at: At | None, head: Index | None, heads: int | None) -> int | None:
    if heads is not None:
        heads = check_int(heads, "heads", lo=1)
    if head is not None and at is not None and isinstance(at, Mapping) and -2 in at:
        raise ValueError("head: the head is also selected by at={-2: ...}; give one of them")
    return heads


def _head_view(act: jax.Array, head: Index | None, heads: int | None) -> tuple[int, ...]:
    """The shape the selection is made on: ``act``'s, or ``[..., heads, d_head]``; checked."""
    shape = tuple(act.shape)
    if heads is not None:
        if len(shape) > 3:
            raise ValueError(
                f"heads: expected heads merged into the last axis [batch, seq, head·d_head] "
                f"(at most 3 axes), got an activation of shape {shape}, which already has a "
                "head axis; drop heads= (head= selects axis -2 of [batch, seq, head, d_head])"
            )
        if len(shape) < 1 or shape[-1] % heads:
            raise ValueError(
                f"heads: the last axis of the activation {shape} does not split into {heads} "
                f"heads (expected [batch, seq, head·d_head] with a multiple of {heads} last)"
            )
        return shape[:-1] + (heads, shape[-1] // heads)
    if head is not None and len(shape) < 4:
        raise ValueError(
            f"head: expected {_PER_HEAD}, got an activation of shape {shape}; {_MERGED_HINT}"
        )
    return shape


def _masked(
    new: Callable[[jax.Array], jax.Array],
    at: At | None,
    where: Any,
    head: Index | None = None,
    heads: int | None = None,
) -> Edit:
    if at is not None and not isinstance(at, Mapping):
        raise TypeError(f"at: expected a mapping {{axis: index}}, got {type(at).__name__}")
    if where is not None and jnp.asarray(where).dtype != jnp.bool_:
        raise TypeError(f"where: expected a boolean array, got dtype {jnp.asarray(where).dtype}")
    heads = _check_heads(at, head, heads)

    def edit(act: jax.Array) -> jax.Array:
        if isinstance(act, (tuple, list, Mapping)) or act is None:
            raise TypeError(
                f"act: this edit takes one array, got a {type(act).__name__}; for a module "
                "returning a tuple, name one element in the site (':output[1]')"
            )
        act = jnp.asarray(act)
        value = new(act)
        view = _head_view(act, head, heads)
        sel = dict(at or {})
        if head is not None:
            if any(int(a) % len(view) == len(view) - 2 for a in sel if isinstance(a, int)):
                raise ValueError(
                    "head: the head is also selected by at= on the same axis; give one of them"
                )
            sel[-2] = head
        if not sel and where is None:
            return jnp.broadcast_to(value, act.shape).astype(act.dtype)
        if view != act.shape:
            value = jnp.broadcast_to(value, act.shape).reshape(view)
        mask, ok = _selection(view, sel, where)
        out = jnp.where(mask, value, act.reshape(view)).astype(act.dtype).reshape(act.shape)
        return out if ok is True else poison(out, ok)

    edit.array_edit = True  # run_sites names the site when it is not one array
    return edit


def zero(
    *, at: At | None = None, where: Any = None, head: Index | None = None, heads: int | None = None
) -> Edit:
    """Zero ablation: the selected entries become 0.

    Args:
      at: ``{axis: index}`` selection (module docstring); default everything.
      where: boolean mask broadcastable to the activation; default everything.
      head: head index (int, traced int, int array or bool mask), selecting axis -2 of the
        per-head layout ``[batch, seq, head, d_head]``; an activation with fewer than 4 axes
        raises ``ValueError`` (pass ``heads=`` for merged heads).
      heads: the number of heads merged into the last axis (``[batch, seq, head·d_head]``):
        the activation is viewed as ``[batch, seq, heads, d_head]``, ``at``, ``where`` and
        ``head`` apply to that view, and the result is merged back.

    Returns:
      ``edit(act) -> act'`` with the same shape and dtype.

    Raises:
      TypeError, ValueError: a bad ``at``, ``where``, ``head`` or ``heads`` (when the edit is
        first applied): ``head`` on fewer than 4 axes without ``heads``, ``heads`` on more than
        3 axes or a last axis it does not divide.

    Under jit, a traced ``at`` index outside its axis makes the edited activation all NaN
    instead of clamping or wrapping; see ``jaxinterp.checked``.

    >>> zero(at={-1: 0})(jnp.ones((1, 3))).tolist()
    [[0.0, 1.0, 1.0]]
    >>> zero(head=1, heads=2)(jnp.ones((1, 1, 4))).tolist()  # 2 heads of 2 merged: [b, s, 4]
    [[[1.0, 1.0, 0.0, 0.0]]]
    """
    return _masked(lambda a: jnp.zeros((), a.dtype), at, where, head, heads)


def mean(
    values: jax.Array,
    *,
    at: At | None = None,
    where: Any = None,
    head: Index | None = None,
    heads: int | None = None,
) -> Edit:
    """Mean ablation: the selected entries become their mean over a reference set.

    Args:
      values: reference activations ``[n, ...]`` with as many axes as the activation (e.g.
        ``[n, seq, d_model]`` captured on ``n`` other inputs, against ``[batch, seq,
        d_model]``); their mean over axis 0 must broadcast to the activation. Fewer axes
        raise (``[seq, d_model]`` would be averaged over positions); size-1 axes broadcast.
      at: ``{axis: index}`` selection; default everything.
      where: boolean mask broadcastable to the activation; default everything.
      head: head index (int, traced int, int array or bool mask), selecting axis -2 of the
        per-head layout ``[batch, seq, head, d_head]``; an activation with fewer than 4 axes
        raises ``ValueError`` (pass ``heads=`` for merged heads).
      heads: the number of heads merged into the last axis (``[batch, seq, head·d_head]``):
        the activation is viewed as ``[batch, seq, heads, d_head]``, ``at``, ``where`` and
        ``head`` apply to that view, and the result is merged back.

    Returns:
      ``edit(act) -> act'``.

    Raises:
      TypeError: ``values`` is not a numeric array.
      ValueError: ``values`` is empty, has another number of axes than the activation, or
        its mean does not broadcast to the activation.

    Under jit, a traced ``at`` index outside its axis makes the edited activation all NaN
    instead of clamping or wrapping; see ``jaxinterp.checked``.

    >>> mean(jnp.array([[2.0, 4.0], [4.0, 8.0]]), at={-1: 1})(jnp.zeros((1, 2))).tolist()
    [[0.0, 6.0]]
    """
    values = check_array(values, "values", kind="number")
    if values.ndim < 1 or values.shape[0] == 0:
        raise ValueError(f"values: expected a non-empty [n, ...] array, got shape {values.shape}")
    m = values.mean(0)

    def new(act):
        if values.ndim != act.ndim:
            # [seq, d] against [batch, seq, d] would average over positions without a word
            want = ", ".join(str(d) for d in act.shape[1:])
            raise ValueError(
                f"values: expected references [n, {want}] with the activation's axes (shape "
                f"{tuple(act.shape)}) after a leading n axis, got shape {values.shape}: the "
                "mean over axis 0 would be taken over another axis. Pass values[None] for one "
                "reference; size-1 axes broadcast (e.g. [n, 1, d] averages tokens of any "
                "position)"
            )
        _check_broadcast("values", m, act.shape)
        return m

    return _masked(new, at, where, head, heads)


def resample(
    key: jax.Array,
    pool: jax.Array,
    *,
    at: At | None = None,
    where: Any = None,
    head: Index | None = None,
    heads: int | None = None,
) -> Edit:
    """Resample ablation: each batch item's selected entries come from a random pool member.

    Args:
      key: PRNG key; the same key draws the same pool members.
      pool: activations ``[n, ...]`` recorded on other inputs; ``pool.shape[1:]`` must equal the
        activation's shape without its batch axis.
      at: ``{axis: index}`` selection; default everything.
      where: boolean mask broadcastable to the activation; default everything.
      head: head index (int, traced int, int array or bool mask), selecting axis -2 of the
        per-head layout ``[batch, seq, head, d_head]``; an activation with fewer than 4 axes
        raises ``ValueError`` (pass ``heads=`` for merged heads).
      heads: the number of heads merged into the last axis (``[batch, seq, head·d_head]``):
        the activation is viewed as ``[batch, seq, heads, d_head]``, ``at``, ``where`` and
        ``head`` apply to that view, and the result is merged back.

    Returns:
      ``edit(act: [batch, ...]) -> act'``: item ``b`` takes ``pool[i_b]`` with
      ``i_b ~ uniform{0..n-1}`` drawn independently per item.

    Raises:
      TypeError: ``key`` is not a PRNG key, ``pool`` is not a numeric array.
      ValueError: ``pool`` is empty or its items do not match the activation.

    Under jit, a traced ``at`` index outside its axis makes the edited activation all NaN
    instead of clamping or wrapping; see ``jaxinterp.checked``.

    >>> pool = jnp.array([[1.0, 1.0], [2.0, 2.0]])
    >>> out = resample(jax.random.key(0), pool)(jnp.zeros((3, 2)))
    >>> bool(((out == 1.0) | (out == 2.0)).all())
    True
    """
    key = check_key(key, "key")
    pool = check_array(pool, "pool", kind="number")
    if pool.ndim < 1 or pool.shape[0] == 0:
        raise ValueError(f"pool: expected a non-empty [n, ...] array, got shape {pool.shape}")

    def new(act):
        if act.ndim < 1 or pool.shape[1:] != act.shape[1:]:
            raise ValueError(
                f"pool: items of shape {pool.shape[1:]} do not match the activation "
                f"{act.shape} without its batch axis"
            )
        idx = jax.random.randint(key, (act.shape[0],), 0, pool.shape[0])
        return pool[idx]

    return _masked(new, at, where, head, heads)


def replace(
    values: jax.Array,
    *,
    at: At | None = None,
    where: Any = None,
    head: Index | None = None,
    heads: int | None = None,
) -> Edit:
    """Activation patching: the selected entries are taken from ``values``.

    Args:
      values: activations recorded on another input (e.g. the clean run), broadcastable to the
        activation, normally of the same shape ``[batch, ...]``.
      at: ``{axis: index}`` selection; default everything.
      where: boolean mask broadcastable to the activation; default everything.
      head: head index (int, traced int, int array or bool mask), selecting axis -2 of the
        per-head layout ``[batch, seq, head, d_head]``; an activation with fewer than 4 axes
        raises ``ValueError`` (pass ``heads=`` for merged heads).
      heads: the number of heads merged into the last axis (``[batch, seq, head·d_head]``):
        the activation is viewed as ``[batch, seq, heads, d_head]``, ``at``, ``where`` and
        ``head`` apply to that view, and the result is merged back.

    Returns:
      ``edit(act) -> act'``.

    Raises:
      TypeError: ``values`` is not a numeric array.
      ValueError: ``values`` does not broadcast to the activation.

    Under jit, a traced ``at`` index outside its axis makes the edited activation all NaN
    instead of clamping or wrapping; see ``jaxinterp.checked``.

    >>> replace(jnp.full((1, 3), 7.0), at={-1: 2})(jnp.zeros((1, 3))).tolist()
    [[0.0, 0.0, 7.0]]
    """
    values = check_array(values, "values", kind="number")

    def new(act):
        _check_broadcast("values", values, act.shape)
        return values

    return _masked(new, at, where, head, heads)
