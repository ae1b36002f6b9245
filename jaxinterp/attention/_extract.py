"""Per-layer, per-head attention weights from Flax models, without editing the model.

:func:`attention_weights` turns a model into ``f(*inputs) -> (output, {path: weights})`` where
each ``weights`` is ``[batch, head, q, k]`` (softmax probabilities, before dropout) and ``path``
is the canonical path of the module that computed them (``"block_0/attn"``). It is written once
on :func:`jaxinterp.capture.apply_with_hook`, which wraps every submodule call.

**How weights are found: the softmax.** Every attention computes its probabilities with a
softmax over the keys. While the hooked forward pass runs (it runs at trace time, so this costs
nothing under ``jit``), ``jax.nn.softmax`` — and its aliases ``flax.linen.softmax``,
``flax.nnx.softmax`` — is replaced by a recorder; each call is attributed to the *innermost*
module the hook has entered, and its output is kept when it is a 4-D array normalised over its
last axis (the key axis) and that module's path matches ``select``. This covers

* Flax's own ``nn.MultiHeadDotProductAttention`` / ``nnx.MultiHeadAttention`` and every model
  calling ``flax.linen.dot_product_attention_weights`` / ``dot_product_attention`` directly
  (Hugging Face's Flax BERT, GPT-2, ViT, ...): these are known to be ``[batch, head, q, k]``;
* hand-written attention (``jax.nn.softmax(q @ k.T + mask)``, Gemma-style ``[batch, q, head,
  k]``): the layout is read from the shapes, see below;
* ``jax.nn.dot_product_attention`` (which ``nnx.dot_product_attention`` calls without dropout),
  whose fused kernel never materialises the probabilities: the call is recorded too and its
  weights computed from its own arguments with the same steps as its XLA implementation
  (grouped-query heads, scale, bias, mask, causal, local window, sequence lengths). Its output
  is left as the kernel computed it. ``nnx.MultiHeadAttention`` is run with
  ``sow_weights=True``, which makes it compute through ``dot_product_attention_weights``.

The patch is scoped: it is installed for the duration of the forward pass only, reference
counted across threads, and a call from any other thread or context (a :mod:`contextvars`
variable holds the active recorder) goes straight to the original ``softmax``. Nothing is
recomputed: the recorded array is the one the forward pass uses, so masks (causal, padding) are
respected exactly as the model applies them.

**Layout.** A recorded ``[batch, a, b, k]`` tensor is either ``[batch, head, q, k]`` (``"bhqk"``,
Flax and Hugging Face) or ``[batch, q, head, k]`` (``"bqhk"``, Gemma's ``'BTNS'`` logits). The
output is always ``[batch, head, q, k]``. With ``layout="auto"`` (default) the layout of a softmax
called from Flax's ``dot_product_attention_weights`` is known; otherwise it is inferred from

* the number of heads of the innermost enclosing module that declares it (attribute or
  ``config`` field ``num_heads``, ``num_attention_heads``, ``n_head``, ``n_heads``,
  ``num_query_heads``, ``heads``), and
* the query length: the sequence axis of the innermost enclosing module's first ``[batch, seq,
  features]`` input;
* with neither, self-attention is assumed (query length = key length).

If both layouts fit (e.g. as many heads as tokens) or neither does, a ``ValueError`` starting
with ``layout:`` asks for ``layout="bhqk"`` or ``layout="bqhk"``. Nothing is guessed silently.

**weights_at.** ``weights_at="block_*/attn/probs"`` takes the *outputs* of those modules as
attention weights (softmax calls inside them are then not recorded twice). Their layout is
resolved as above and their rows are checked to be probabilities (entries >= 0, each row summing
to 1, or to 0 for a fully masked row), a value check: eager arrays raise, under ``jit`` the
offending rows become NaN (see :func:`jaxinterp.checked`).

**Where this does not reach.** A softmax computed in the root module's own ``__call__`` (it has
no path), one bound by name before jaxinterp was imported (``from jax.nn import softmax`` in
the model's file), custom kernels (Pallas/Splash flash attention) and 5-D grouped-query
softmaxes are not recorded; :func:`attention_from_qk` recomputes the weights from captured
query/key projections for those (same formula as ``nn.dot_product_attention_weights``). A
softmax inside a lifted transform (``nn.scan``, ``nn.remat``, ``nn.jit``) belongs to that
transform's trace and can only leave it the way the capture hook carries values out.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import flax.linen.activation as _linen_activation
import flax.linen.attention as _linen_attention
import flax.nnx.nn.activations as _nnx_activations
import flax.nnx.nn.attention as _nnx_attention
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxinterp._checks import check_array, is_traced, poison, value_check
from jaxinterp.capture import (
    LOST_PATTERNS,
    Selector,
    _patch,
    as_matcher,
    check_model,
    current_call,
    record,
    run_with_hook,
)
from jaxinterp.capture._paths import scan_hint

Maps = dict[str, jax.Array]

LAYOUTS = ("auto", "bhqk", "bqhk")

# ------------------------------------------------------------------ the scoped softmax recorder

_ORIG_SOFTMAX = jax.nn.softmax
_SOFTMAX_SITES = (jax.nn, nn, _linen_activation, nnx, _nnx_activations)
# softmaxes called from these functions are [batch..., head, q, k] by construction
_BHQK_CODES = frozenset(
    {
        _linen_attention.dot_product_attention_weights.__code__,
        _nnx_attention.dot_product_attention_weights.__code__,
    }
)
_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar(
    "jaxinterp_attention_recorder", default=None
)


def _recording_softmax(x: Any, *args: Any, **kwargs: Any) -> Any:
    out = _ORIG_SOFTMAX(x, *args, **kwargs)
    rec = _RECORDER.get()
    if rec is not None:
        axis = args[0] if args else kwargs.get("axis", -1)
        rec.softmax(out, axis, sys._getframe(1).f_code)
    return out


_ORIG_DPA = jax.nn.dot_product_attention
_DPA_SIGNATURE = inspect.signature(_ORIG_DPA)


def _recording_dpa(*args: Any, **kwargs: Any) -> Any:
    out = _ORIG_DPA(*args, **kwargs)
    rec = _RECORDER.get()
    if rec is not None:
        bound = _DPA_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        rec.fused(bound.arguments)
    return out


def _fused_weights(a: Mapping[str, Any]) -> jax.Array:
    """The probabilities ``jax.nn.dot_product_attention`` computes: ``[batch, head, q, k]``.

    The same steps as its XLA implementation (grouped-query heads, scale, bias, mask, causal,
    local window, sequence lengths, float32 softmax), which never returns them.
    """
    q, k = jnp.asarray(a["query"]), jnp.asarray(a["key"])
    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    acc = jnp.promote_types(q.dtype, jnp.float32)
    qg = q.reshape(b, t, kh, n // kh, h)
    logits = jnp.einsum("BTKGH,BSKH->BKGTS", qg, k, preferred_element_type=acc)
    logits = logits.reshape(b, n, t, s)
    scale = 1.0 / np.sqrt(h) if a["scale"] is None else a["scale"]
    logits = logits * jnp.asarray(scale, acc)
    if a["bias"] is not None:
        logits = (logits + jnp.asarray(a["bias"])).astype(acc)
    ok = jnp.ones((1, 1, t, s), bool)
    if a["mask"] is not None:
        ok = ok & jnp.asarray(a["mask"], bool)
    if a["is_causal"]:
        ok = ok & jnp.tril(jnp.ones((t, s), bool))
    window = a["local_window_size"]
    if window is not None:
        left, right = (window, window) if isinstance(window, int) else window
        qi, ki = jnp.arange(t)[:, None], jnp.arange(s)[None, :]
        ok = ok & (qi <= ki + left) & (qi >= ki - right)
    if a["query_seq_lengths"] is not None:
        q_len = jnp.asarray(a["query_seq_lengths"])[:, None, None, None]
        ok = ok & (jnp.arange(t)[None, None, :, None] < q_len)
    if a["key_value_seq_lengths"] is not None:
        kv_len = jnp.asarray(a["key_value_seq_lengths"])[:, None, None, None]
        ok = ok & (jnp.arange(s)[None, None, None, :] < kv_len)
    neg = -0.7 * float(jnp.finfo(jnp.float32).max)
    logits = jnp.where(ok, logits, jnp.asarray(neg, acc)).astype(jnp.float32)
    return _ORIG_SOFTMAX(logits, axis=-1).astype(k.dtype)


def _softmax_patched() -> contextlib.AbstractContextManager[None]:
    """Installs the recording softmax while the block runs (reference counted across threads).

    Only names that hold the original ``softmax`` are replaced; each gets back the very object
    it held (:func:`jaxinterp.capture._patch.scoped`, which also unbinds the recorder from
    modules imported meanwhile).
    """

    def sites() -> list[tuple[Any, str, Any]]:
        found = [(m, "softmax", _recording_softmax) for m in _SOFTMAX_SITES]
        found = [t for t in found if getattr(t[0], "softmax", None) is _ORIG_SOFTMAX]
        if jax.nn.dot_product_attention is _ORIG_DPA:
            found.append((jax.nn, "dot_product_attention", _recording_dpa))
        return found

    return _patch.scoped("softmax", sites)


def _binds_softmax(module: Any) -> str | None:
    """Where the file defining ``module``'s class binds the original softmax by name, if it does.

    A name bound at import (``from jax.nn import softmax``) keeps the original while the
    recorder is installed, so that module's softmax calls are never seen.
    """
    name = type(module).__module__
    if name.startswith(("jax.", "flax.", "jaxinterp.")) or name in ("jax", "flax"):
        return None
    mod = sys.modules.get(name)
    ns = getattr(mod, "__dict__", {})
    names = {k for k, v in ns.items() if v is _ORIG_SOFTMAX or v is _ORIG_DPA}
    names &= _names_used(type(module))
    if not names:
        return None
    names = sorted(names)
    return f"{getattr(mod, '__file__', name)} (module {name!r}, names {names})"


def _names_used(cls: type) -> set[str]:
    """Global names the methods of ``cls`` (and of its bases from the same file) refer to."""
    todo = [
        f.__code__
        for c in cls.__mro__
        if c.__module__ == cls.__module__
        for f in vars(c).values()
        if hasattr(f, "__code__")
    ]
    used: set[str] = set()
    while todo:
        code = todo.pop()
        used.update(code.co_names)
        todo.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return used


@dataclasses.dataclass
class _Frame:
    path: str
    module: Any
    args: tuple
    kwargs: dict
    weights_module: bool
    key: str = ""  # the call key (``path``, ``path@1``, ...)
    recorded: int = 0  # softmax calls recorded in this call so far


_HEAD_ATTRS = ("num_heads", "num_attention_heads", "n_head", "n_heads", "num_query_heads", "heads")


def _declared_heads(module: Any) -> int | None:
    for obj in (module, getattr(module, "config", None), getattr(module, "cfg", None)):
        if obj is None:
            continue
        for name in _HEAD_ATTRS:
            try:
                v = getattr(obj, name, None)
            except Exception:  # a linen module may refuse attribute access outside setup
                v = None
            if isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0:
                return int(v)
    return None


def _input_seq_len(frame: _Frame) -> int | None:
    for a in (*frame.args, *frame.kwargs.values()):
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            return int(a.shape[1]) if len(a.shape) == 3 else None
    return None


def _resolve_layout(shape: tuple[int, ...], frames: tuple[_Frame, ...], layout: str) -> str:
    if layout != "auto":
        return layout
    heads = next((h for f in reversed(frames) if (h := _declared_heads(f.module))), None)
    q_len = next((n for f in reversed(frames) if (n := _input_seq_len(f))), None)
    _, a, b, k = shape
    assumed = ""
    if heads is None and q_len is None:
        q_len, assumed = k, " (assumed self-attention: query length = key length)"

    def fits(head_size: int, q_size: int) -> bool:
        return (heads is None or head_size == heads) and (q_len is None or q_size == q_len)

    bhqk, bqhk = fits(a, b), fits(b, a)
    if bhqk != bqhk:
        return "bhqk" if bhqk else "bqhk"
    why = "both fit" if bhqk else "neither fits"
    raise ValueError(
        f"layout: cannot tell whether the attention weights of shape {shape} recorded at "
        f"{frames[-1].path!r} are [batch, head, q, k] or [batch, q, head, k] ({why}: heads "
        f"declared by the model: {heads}, query length{assumed}: {q_len}); pass "
        "layout='bhqk' or layout='bqhk'"
    )


def _verify_layout(shape: tuple[int, ...], frames: tuple[_Frame, ...], layout: str) -> None:
    """A ``weights_at`` output must fit ``layout`` where the model says how many heads it has.

    A 4-D array is not ``[batch, head, q, k]`` just because it is 4-D: an explicit ``layout``
    that puts another size on the head axis than the enclosing modules declare (or, with no
    heads declared, another size on the query axis than the module's input sequence) is an
    error rather than a silent transpose.
    """
    heads = next((h for f in reversed(frames) if (h := _declared_heads(f.module))), None)
    q_len = next((n for f in reversed(frames) if (n := _input_seq_len(f))), None)
    h_ax, q_ax = (1, 2) if layout == "bhqk" else (2, 1)
    names = {"bhqk": "[batch, head, q, k]", "bqhk": "[batch, q, head, k]"}
    if heads is not None and shape[h_ax] != heads:
        why = f"axis {h_ax} has {shape[h_ax]} entries but the model declares {heads} heads"
    elif heads is None and q_len is not None and shape[q_ax] != q_len:
        why = f"axis {q_ax} has {shape[q_ax]} entries but the query length is {q_len}"
    else:
        return
    raise ValueError(
        f"layout: the weights of shape {shape} at {frames[-1].path!r} are not "
        f"{names[layout]} ({why}); pass the layout they have (layout='bhqk' or 'bqhk')"
    )


def _to_bhqk(w: jax.Array, layout: str) -> jax.Array:
    return w if layout == "bhqk" else jnp.swapaxes(w, 1, 2)


class _Recorder:
    """The state of one traced forward pass: the module stack and the softmax sites seen.

    Weights are not kept here but handed to :func:`jaxinterp.capture.record`, which carries
    them out of ``nn.scan`` / ``nnx.scan`` bodies (stacked ``[layer, ...]``), ``remat`` and
    ``vmap`` like any captured activation.
    """

    def __init__(self, match: Callable[[str], bool], layout: str):
        self.match = match
        self.layout = layout
        self.frames: tuple[_Frame, ...] = ()
        self.seen: dict[str, tuple[int, ...]] = {}  # softmax sites seen -> shape
        self.skipped: dict[str, tuple[int, ...]] = {}  # softmax of other ranks/axes

    def _keep(self, frame: _Frame, w: jax.Array) -> None:
        j = frame.recorded
        frame.recorded += 1
        record(frame.key if j == 0 else f"{frame.key}#{j}", w)

    def softmax(self, out: Any, axis: Any, code: Any) -> None:
        if not self.frames or self.frames[-1].weights_module:
            return
        frame = self.frames[-1]
        shape = tuple(getattr(out, "shape", ()))
        nd = len(shape)
        last = isinstance(axis, (int, np.integer)) and nd and int(axis) % nd == nd - 1
        if nd != 4 or not last:
            self.skipped.setdefault(frame.path, shape)
            return
        self.seen.setdefault(frame.path, shape)
        if not self.match(frame.path):
            return
        layout = "bhqk" if code in _BHQK_CODES else _resolve_layout(shape, self.frames, self.layout)
        self._keep(frame, _to_bhqk(out, layout))

    def fused(self, arguments: Mapping[str, Any]) -> None:
        """A ``jax.nn.dot_product_attention`` call: its weights, known to be [b, h, q, k]."""
        if not self.frames or self.frames[-1].weights_module:
            return
        frame = self.frames[-1]
        shape = tuple(getattr(arguments["query"], "shape", ()))
        if len(shape) != 4:
            self.skipped.setdefault(frame.path, shape)
            return
        self.seen.setdefault(frame.path, shape)
        if self.match(frame.path):
            self._keep(frame, _fused_weights(arguments))

    def weights_output(self, out: Any) -> None:
        frame = self.frames[-1]
        w = _check_weights(frame.path, out)
        layout = _resolve_layout(tuple(w.shape), self.frames, self.layout)
        _verify_layout(tuple(w.shape), self.frames, layout)
        self._keep(frame, _check_rows(frame.path, _to_bhqk(w, layout)))


def _check_weights(path: str, w: Any) -> jax.Array:
    if not hasattr(w, "ndim") or w.ndim != 4:
        shape = getattr(w, "shape", type(w).__name__)
        raise ValueError(
            f"weights_at: module {path!r} should output attention weights [batch, head, q, k] "
            f"(or [batch, q, head, k]), got {shape}"
        )
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise ValueError(
            f"weights_at: module {path!r} should output floating-point attention weights, got "
            f"dtype {w.dtype}"
        )
    return w


def _row_tolerance(dtype: Any, k: int) -> float:
    """Bound on ``|sum(row) - 1|`` for a softmax row of ``k`` entries computed in ``dtype``.

    The softmax normalises by a sum of ``k`` terms (at most ``(k - 1)·eps`` relative error when
    accumulated naively), each output carries at most ``2·eps`` more (exp, divide), and this
    check sums the row again in float32 or wider (``(k - 1)·eps`` of that type): together at most
    ``2·(k + 2)·eps(dtype)``.
    """
    return 2.0 * (k + 2) * float(jnp.finfo(dtype).eps)


def _check_rows(path: str, w: jax.Array) -> jax.Array:
    acc = jnp.promote_types(w.dtype, jnp.float32)
    sums = w.astype(acc).sum(-1)
    tol = _row_tolerance(w.dtype, w.shape[-1])
    ok = ((jnp.abs(sums - 1) <= tol) | (jnp.abs(sums) <= tol)) & (w >= 0).all(-1)
    bad = jnp.where(ok, 0.0, jnp.abs(sums - 1)).max()
    value_check(
        ok.all(),
        f"weights_at: module {path!r} output is not attention probabilities: every row over "
        f"the last (key) axis must be >= 0 and sum to 1 (or 0 if fully masked) within {tol:.1e}; "
        f"{{}} rows of {ok.size} fail, largest |row sum - 1| = {{}}",
        (~ok).sum(),
        bad,
    )
    return poison(w, ok[..., None]) if is_traced(w) else w


def _call(module: Any, call_next: Callable[..., Any], a: tuple, k: dict) -> Any:
    """Runs one submodule call; ``nnx.MultiHeadAttention`` is asked to materialise its weights.

    Without ``sow_weights=True`` (and with no dropout) Flax's nnx attention calls the fused
    ``jax.nn.dot_product_attention``, which never exposes the probabilities; with it, the same
    output is computed through ``dot_product_attention_weights``. What it sows is collected by
    ``nnx.capture`` and dropped (the softmax recorder already has it), so no state changes.
    """
    if not isinstance(module, nnx.MultiHeadAttention) or "sow_weights" in k:
        return call_next(*a, **k)

    def run(m: nnx.Module) -> Any:
        return call_next(*a, **{**k, "sow_weights": True})

    out, _ = nnx.capture(run, nnx.Intermediate)(module)
    return out


def _matcher(select: Any, name: str) -> Callable[[str], bool]:
    try:
        return as_matcher(select)
    except TypeError:
        raise TypeError(
            f"{name}: expected a glob string, a sequence of glob strings or a predicate, got "
            f"{select!r}"
        ) from None


def attention_weights(
    model: Any,
    variables: Any = None,
    *,
    select: Selector | None = None,
    weights_at: Selector | None = None,
    layout: str = "auto",
    method: str | None = None,
    mutable: Any = False,
) -> Callable[..., tuple[Any, Maps]]:
    """Returns ``f(*args, **kwargs) -> (output, {path: weights [batch, head, q, k]})``.

    Args:
      model: a ``flax.linen.Module`` or ``flax.nnx.Module``; its code is not edited.
      variables: linen variables (``{"params": ...}``); ``None`` for nnx.
      select: which modules' softmax calls to record, as a glob / globs / predicate on the
        canonical path of the innermost module calling the softmax (see the module docs).
        Default: every module, or none when ``weights_at`` is given (pass both to get both).
      weights_at: paths of modules whose *output* is attention weights ``[batch, head, q, k]``
        or ``[batch, q, head, k]``; rows checked to be probabilities (under ``jit`` failing
        rows come out NaN; see ``jaxinterp.checked``).
      layout: ``"auto"`` (default: known for Flax's attention, else read from the model's
        declared head count and the query length), ``"bhqk"`` (``[batch, head, q, k]``) or
        ``"bqhk"`` (``[batch, q, head, k]``, e.g. Gemma) for weights whose layout is not known
        from the function that computed them.
      method: the model method to run (default ``__call__``).
      mutable: linen only, as in ``model.apply``: collections the call may update
        (``["cache"]``, ``["batch_stats"]``); the output is then ``(output, updated_variables)``.
        nnx state changes are written back into the module, as its own call does.

    Returns:
      A pure function composing with ``jit``/``vmap``/``grad``. Its second output maps the
      canonical path of each attention module (``"block_0/attn"``; a second softmax in the
      same module is ``"block_0/attn@1"``) to ``[batch, head, q, k]`` weights whose rows sum
      to 1 over the keys the model's mask allows (masked keys are 0).

    Raises:
      TypeError: a bad ``model``/``variables`` pair, ``select``/``weights_at``/``method`` of
        the wrong type.
      ValueError: an unknown ``layout``; (at trace time) a layout that cannot be told from the
        shapes, a ``weights_at`` module whose output is not 4-D weights, or (eagerly) whose
        rows are not probabilities.
      KeyError: (at trace time) nothing recorded, or a ``weights_at`` pattern matching no
        module; the message lists the softmax sites and the module paths seen.

    >>> from jaxinterp import models
    >>> tf = models.offset_transformer()
    >>> f = jax.jit(lambda v, x: attention_weights(tf.model, v)(x))  # weights as an argument
    >>> _, maps = f(tf.variables, jnp.zeros((2, 16), jnp.int32))
    >>> sorted(maps), maps["block_0/attn"].shape
    (['block_0/attn', 'block_1/attn'], (2, 4, 16, 16))
    """
    check_model(model, variables)
    if select is None:
        select = "**" if weights_at is None else ()
    match = _matcher(select, "select")
    match_w = None if weights_at is None else _matcher(weights_at, "weights_at")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout: expected one of {', '.join(map(repr, LAYOUTS))}, got {layout!r}")
    if method is not None and not isinstance(method, str):
        raise TypeError(f"method: expected a method name (str) or None, got {method!r}")

    def f(*args: Any, **kwargs: Any) -> tuple[Any, Maps]:
        rec = _Recorder(match, layout)
        all_seen: list[str] = []
        bound: dict[str, str] = {}  # path -> where its module binds softmax by name

        def around(path, module, call_next, a, k):
            all_seen.append(path)
            where = _binds_softmax(module)
            if where and match(path):
                bound.setdefault(path, where)
            is_w = match_w is not None and match_w(path)
            frame = _Frame(path, module, a, k, is_w, current_call().key)
            rec.frames = (*rec.frames, frame)
            try:
                out = _call(module, call_next, a, k)
                if is_w:
                    rec.weights_output(out)
            finally:
                rec.frames = rec.frames[:-1]
            return out

        token = _RECORDER.set(rec)
        try:
            with _softmax_patched():
                out, recs = run_with_hook(
                    model, variables, around, *args, method=method, mutable=mutable, **kwargs
                )
        finally:
            _RECORDER.reset(token)
        paths = list(dict.fromkeys(all_seen))
        listing = ", ".join(paths) or "(none)"
        if weights_at is not None and not callable(weights_at):
            for pattern in [weights_at] if isinstance(weights_at, str) else list(weights_at):
                if not any(as_matcher(pattern)(p) for p in paths):
                    raise KeyError(
                        f"weights_at: {pattern!r} matches no module"
                        f"{scan_hint(pattern, paths, False)}. Module paths: {listing}"
                    )
        if match_w is not None:
            for key, w in recs.items():  # eager inside a scan: rows were checked traced
                if match_w(key.split("@")[0].split("#")[0]) and not is_traced(w):
                    _check_rows(key, w)
        if recs.lost and recs.bypassed:
            raise ValueError(
                f"select: attention weights at {', '.join(map(repr, recs.lost))} cannot be "
                "recorded: " + " ".join(recs.bypassed)
            )
        if recs.lost:
            raise ValueError(
                f"select: attention weights at {', '.join(map(repr, recs.lost))} are computed "
                f"inside a JAX transform whose values jaxinterp cannot carry out: "
                f"{LOST_PATTERNS}. Use attention_from_qk on captured query/key projections "
                "of the enclosing module instead"
            )
        for path, where in bound.items():
            got = {key.split("@")[0].split("#")[0] for key in recs}
            if not any(g == path or g.startswith(path + "/") for g in got):
                raise ValueError(
                    f"select: the attention weights of {path!r} cannot be recorded: {where} "
                    "binds softmax by name before the hook (e.g. 'from jax.nn import softmax' "
                    "at import), and jaxinterp routes jax.nn.softmax only while the hook runs. "
                    "Call it as jax.nn.softmax(...) in the model, or compute the weights with "
                    "attention_from_qk from captured query/key projections"
                )
        if not recs:
            sites = ", ".join(f"{p!r} {s}" for p, s in rec.seen.items()) or "(none)"
            other = ", ".join(f"{p!r} {s}" for p, s in rec.skipped.items()) or "(none)"
            raise KeyError(
                f"select: no attention weights recorded (select={select!r}, "
                f"weights_at={weights_at!r}). Softmax over keys [batch, ., ., k] seen in: "
                f"{sites}; other softmax calls: {other}; module paths: {listing}"
            )
        return out, dict(recs)

    return f


def _natural_key(path: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def layer_order(maps: Mapping[str, Any]) -> list[str]:
    """The paths of ``maps`` in layer order (numbers compared as numbers: ``layer_2 < layer_10``).

    ``jax.jit`` returns dicts with sorted keys; this restores the model's order whatever the
    dict order is.

    Args:
      maps: ``{path: anything}``.

    Returns:
      The keys, in layer order.

    Raises:
      TypeError: ``maps`` is not a mapping with string keys.

    >>> layer_order({"layer_10/attn": 0, "layer_2/attn": 0})
    ['layer_2/attn', 'layer_10/attn']
    """
    if not isinstance(maps, Mapping) or not all(isinstance(p, str) for p in maps):
        raise TypeError(f"maps: expected a dict {{path: array}} with str paths, got {maps!r:.80}")
    return sorted(maps, key=_natural_key)


def stack_layers(maps: Mapping[str, jax.Array]) -> jax.Array:
    """Stacks ``{path: [batch, head, q, k]}`` into ``[layer, batch, head, q, k]``.

    Layers are ordered by :func:`layer_order`. A map recorded inside a scanned stack
    (``nn.scan`` / ``nnx.scan``) is already ``[layer, batch, head, q, k]``: its layers are
    taken in scan order at its place.

    Args:
      maps: the second output of :func:`attention_weights`: ``[batch, head, q, k]`` maps (one
        layer each) and/or ``[layer, batch, head, q, k]`` maps (a scanned stack), all of one
        ``[batch, head, q, k]`` shape.

    Returns:
      ``[layer, batch, head, q, k]``.

    Raises:
      TypeError: ``maps`` is not a dict of arrays.
      ValueError: ``maps`` is empty, a map is not 4-D or 5-D, or the shapes differ (listed).

    >>> stack_layers({"b_1": jnp.ones((1, 2, 3, 3)), "b_0": jnp.zeros((1, 2, 3, 3))})[:, 0, 0, 0, 0]
    Array([0., 1.], dtype=float32)
    >>> stack_layers({"layers": jnp.zeros((4, 1, 2, 3, 3))}).shape
    (4, 1, 2, 3, 3)
    """
    paths = layer_order(maps)
    if not paths:
        raise ValueError("maps: expected at least one attention map, got an empty dict")
    for p in paths:
        a = check_array(maps[p], f"maps[{p!r}]", kind="floating")
        if a.ndim not in (4, 5):
            raise ValueError(
                f"maps[{p!r}]: expected [batch, head, q, k] or [layer, batch, head, q, k], got "
                f"shape {tuple(a.shape)}"
            )
    shapes = {p: tuple(maps[p].shape[-4:]) for p in paths}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"maps: attention maps have different shapes, cannot stack: {shapes}")
    return jnp.concatenate([maps[p] if maps[p].ndim == 5 else maps[p][None] for p in paths])


def attention_from_qk(query: jax.Array, key: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Recomputes ``softmax(q kᵀ / √d)`` from captured query/key projections.

    For attention whose probabilities are never materialised by a softmax the recorder sees
    (fused kernels, grouped-query 5-D softmaxes): capture the ``query``/``key`` projections by
    path and recompute. Same formula and masking as ``nn.dot_product_attention_weights``.

    Args:
      query: ``[batch, q, head, d_head]``.
      key: ``[batch, k, head, d_head]``.
      mask: optional boolean, broadcastable to ``[batch, head, q, k]``; False = masked out.

    Returns:
      ``[batch, head, q, k]`` attention weights.

    Raises:
      TypeError: non-floating ``query``/``key``, non-boolean ``mask``.
      ValueError: wrong ranks, mismatched batch/head/d_head, a mask that does not broadcast.

    >>> q = k = jnp.zeros((1, 3, 2, 4))
    >>> attention_from_qk(q, k)[0, 0, 0]
    Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)
    """
    query = check_array(query, "query", ndim=4, kind="floating")
    key = check_array(key, "key", ndim=4, kind="floating")
    if query.shape[0] != key.shape[0] or query.shape[2:] != key.shape[2:]:
        raise ValueError(
            f"key: batch, head and d_head must match query's {tuple(query.shape)} "
            f"([batch, q, head, d_head]), got {tuple(key.shape)}"
        )
    if mask is not None:
        mask = check_array(mask, "mask", kind="bool")
        b, q, h, _ = query.shape
        target = (b, h, q, key.shape[1])
        try:
            ok = jnp.broadcast_shapes(mask.shape, target) == target
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"mask: expected a shape broadcastable to [batch, head, q, k] = {target}, got "
                f"{tuple(mask.shape)}"
            )
    return nn.dot_product_attention_weights(query, key, mask=mask)
