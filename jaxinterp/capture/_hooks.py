"""One hook for Flax linen and nnx: run a model with a function around each submodule call.

Everything that looks inside a model (capture, attention extraction, interventions) is written
once against :func:`run_with_hook` (or :func:`apply_with_hook`, which drops the records). A hook
receives the canonical path of the submodule being called, the module, the continuation and its
arguments, and returns the call's output::

    def around(path, module, call_next, args, kwargs):
        out = call_next(*args, **kwargs)   # run the submodule (args may be changed first)
        record(current_call().key, out)    # keep it: carried out of scans, remat, vmap
        return out                         # or a replacement: that is an intervention

* linen: :func:`flax.linen.intercept_methods` wraps every ``__call__`` of a bound submodule
  (and the methods named in ``methods=``).
* nnx: the model is copied (``nnx.split`` / ``nnx.merge(copy=True)``), and in the copy each
  submodule's class is swapped for a cached subclass whose ``__call__`` goes through the hook;
  each submodule also carries its path as a static attribute, so modules rebuilt inside
  ``nnx.scan`` / ``nnx.vmap`` / ``nnx.remat`` keep their names.

**State the model changes.** A hooked call changes the model's state exactly where the
model's own call would, and returns it the same way. linen: ``mutable=`` is passed to
``apply``, so ``mutable=["cache"]`` returns ``(output, updated_variables)`` (without it, a model
that writes a collection raises, naming ``mutable``). nnx: the copy's changed variables (a
decode cache of ``nnx.MultiHeadAttention(decode=True)``, BatchNorm statistics in training
mode, RNG counts, ``sow``) are written back into the caller's module after the call, so a
decode loop through :func:`jaxinterp.capture.capture` advances the cache as the model's own
loop does. Like nnx's own call, that needs the model to belong to the current trace: eagerly,
or passed through ``nnx.jit`` as an argument; inside ``jax.jit`` of a function closing over
the model a call that changes a cache or statistics raises (``model:``), RNG counts and
``sow`` values are left as they were there, and a call that changes nothing works anywhere.
``update_model=False`` keeps the old copy-only behaviour.

**Recording through lifted transforms.** A value kept in a Python dict inside ``lax.scan``,
``jax.checkpoint`` (``nn.remat``/``nnx.remat``) or ``jax.vmap`` is a tracer of that transform
and leaks (``UnexpectedTracerError``). :func:`record` instead writes into a *frame*: while a
hooked forward runs, ``jax.lax.scan``, ``jax.checkpoint``/``jax.remat`` and ``jax.vmap`` (the
functions Flax's ``nn.scan``, ``nnx.scan``, ``nn.remat``, ``nnx.remat``, ``nn.vmap`` and
``nnx.vmap`` call) are routed through wrappers that open a frame for the transformed function
and return its records as extra outputs. So a value recorded inside a scan over ``L`` layers
comes out stacked, ``[L, ...]``, exactly like the scan's own outputs; inside ``remat`` it comes
out unchanged; inside ``vmap`` it gains the mapped axis in front. The wrappers are installed
only for the duration of a hooked forward and call the originals unchanged when no hooked
forward is active in the calling context; afterwards every name holds the very object it held
before, also after exceptions and with several threads hooking at once, and a module imported
meanwhile is unbound from them (:mod:`jaxinterp.capture._patch`). Inside a scan,
:func:`current_call` also gives the step indices (``Call.steps``, outermost scan first), so an
edit can act on one layer only. Inside a routed ``vmap`` (``nn.vmap``/``nnx.vmap`` over
experts or ensemble members) ``on_mapped`` applies an edit to the stacked
``[member, ...]`` value, the axes its record has (``Call.axes``).

**Names bound before the hook.** A model file that did ``from jax.lax import scan`` (or
``from jax import vmap``) at import calls the original, which is not routed: the values of the
modules called inside cannot be carried out. The hook finds such a call on the Python stack
when a module call lands in an unrouted trace and reports it (``Records.bypassed``: file, line
and fix), and every entry point raises with it instead of dropping the paths.

Transforms that are not routed (``lax.cond`` branches, ``jax.jit`` or ``lax.map`` /
``fori_loop`` inside the model, and ``nnx.remat`` / ``nnx.vmap`` / ``jax.checkpoint`` applied
at class definition, as in ``@nnx.remat def __call__``, which call ``jax.checkpoint`` before
any hook is active) still run hooks, so edits apply there; a value recorded in one of them
cannot be carried out, and the caller (e.g. :func:`jaxinterp.capture.capture`) reports which
site it was and why. (The nnx copy carries a per-run static attribute so that JAX's trace
caches of such definition-time transforms never skip a run's hooks.)

**nn.jit.** A linen method decorated with ``nn.jit`` (Google's ``gemma`` package jits its
``Transformer.__call__``) runs un-jitted during a hooked forward: ``nn.jit`` reuses its cached
trace, which would skip every hook after the first run. Jit the hooked forward instead.

**Repeated calls.** One rule for every consumer: the ``k``-th call (from 0) of the module at
``path`` in one forward pass has the key ``path`` for ``k = 0`` and ``path@k`` after
(:attr:`Call.key`). Inside a scan the count is per step, so a module called once per layer keeps
the key ``path`` and its record is stacked over layers.

Hooks run at trace time, so all of this composes with ``jit``, ``vmap`` and ``grad``.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import re
import sys
import threading
from collections.abc import Callable, Collection, Mapping
from typing import Any, NamedTuple

import flax.errors as ferr
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import lift as _flax_lift
from jax.extend import core as jex_core

from jaxinterp.capture import _patch
from jaxinterp.capture._paths import canonical_path

Around = Callable[[str, Any, Callable[..., Any], tuple, dict], Any]

LOST_PATTERNS = (
    "a lax.cond/lax.switch branch (nn.cond, nnx.cond), jax.jit/nnx.jit, lax.map, "
    "lax.fori_loop or lax.while_loop inside the model, or nnx.remat/nnx.vmap/jax.checkpoint "
    "applied when the class was defined rather than inside the forward pass (nn.scan, "
    "nnx.scan, lax.scan, nn.remat, nn.vmap, and remat/vmap applied in the forward pass are "
    "supported)"
)
_PATH_ATTR = "_jaxinterp_path"
_RUN_ATTR = "_jaxinterp_run"
_RUNS = itertools.count()
_HOOKED_CLASSES: dict[tuple[type, frozenset[str]], type] = {}
_BRIDGE_PATHS: dict[int, str] = {}  # id of a hooked nnx.bridge.ToNNX copy -> its path
_LOCK = threading.Lock()


def is_linen(model: Any) -> bool:
    """Whether ``model`` is a Flax linen module."""
    return isinstance(model, nn.Module)


def is_nnx(model: Any) -> bool:
    """Whether ``model`` is a Flax nnx module."""
    return isinstance(model, nnx.Module)


def check_model(model: Any, variables: Any) -> None:
    """Validates the (model, variables) pair every public entry point takes.

    Raises:
      TypeError: ``model`` is neither linen nor nnx, or ``variables`` does not fit it.
    """
    if is_linen(model):
        if variables is None:
            raise TypeError(
                "variables: a linen model needs its variables (e.g. {'params': ...}); got None"
            )
        if not isinstance(variables, Mapping):
            raise TypeError(
                "variables: expected the linen variables dict ({'params': ...}), got "
                f"{type(variables).__name__}"
            )
    elif is_nnx(model):
        if isinstance(model, nnx.bridge.ToNNX):  # issue 20: was "the model has no submodules"
            raise TypeError(
                "model: an nnx.bridge.ToNNX wraps a linen module, whose submodules the nnx hook "
                "cannot see; pass the linen module and its variables instead: "
                "(model.to_nnx__module, {'params': nnx.state(model, nnx.Param).to_pure_dict()})"
            )
        if variables is not None:
            raise TypeError(
                "variables: an nnx module carries its own state; pass variables=None, "
                f"got {type(variables).__name__}"
            )
    else:
        raise TypeError(
            f"model: expected a flax.linen.Module or a flax.nnx.Module, got {type(model).__name__}"
        )


# ----------------------------------------------------------------------------------- frames


def _trace_now() -> Any:
    return jex_core.get_opaque_trace_state(convention="flax")


@dataclasses.dataclass
class _Frame:
    """Records of one traced function: the forward pass itself, or one scan/remat/vmap body."""

    trace: Any
    counts: dict[str, int]
    steps: tuple[jax.Array, ...]
    sizes: tuple[int, ...] = ()
    axes: tuple[str, ...] = ()  # "scan" / "vmap" per routed transform around, outermost first
    records: dict[str, Any] = dataclasses.field(default_factory=dict)
    order: list[str] = dataclasses.field(default_factory=list)  # call keys as calls start
    carried: bool = True  # False: a transform we do not route; records cannot get out
    foreign: list[_Frame] = dataclasses.field(default_factory=list)
    lost: list[str] = dataclasses.field(default_factory=list)


class Call(NamedTuple):
    """The submodule call a hook is running around (see :func:`current_call`).

    Attributes:
      path: canonical module path (``"block_0/mlp"``); ``"path.method"`` for a hooked method
        other than ``__call__``.
      index: which call of this module in the forward pass (0 for the first; per step inside
        a scan).
      key: the record key, ``path`` for the first call and ``path@index`` after.
      steps: the step index of each enclosing scan, outermost first (traced int32 scalars);
        ``()`` outside scans.
      sizes: the length of each enclosing scan (static ints), matching ``steps``.
      carried: whether :func:`record` can carry values out of where this call runs (False
        inside ``lax.cond`` branches, ``jax.jit`` or other transforms that are not routed).
      axes: the routed transforms around the call that give its records a leading axis,
        outermost first: ``"scan"`` (one step per call, see ``steps``) or ``"vmap"`` (the
        mapped axis, e.g. the experts of ``nn.vmap``); a value recorded here comes out with
        one leading axis per entry, in this order. ``on_mapped`` applies a function to a
        value the way it comes out of the ``"vmap"`` axes.
    """

    path: str
    index: int
    key: str
    steps: tuple[jax.Array, ...]
    carried: bool
    sizes: tuple[int, ...] = ()
    axes: tuple[str, ...] = ()


class Records(dict):
    """``{key: value}`` recorded during one forward pass (see :func:`record`).

    Attributes:
      lost: keys recorded where values cannot be carried out (``lax.cond`` branches,
        ``jax.jit`` or ``lax.map`` inside the model); they are not in the dict.
      opaque: paths of ``nnx.bridge.ToLinen`` modules called: the nnx module inside builds
        its own submodules on each call, which the hook does not enter.
      bypassed: why some keys were lost, when the model enters ``jax.lax.scan``,
        ``jax.vmap`` or ``jax.checkpoint`` through a name bound before the hook (``from
        jax.lax import scan`` at import): one message per place, naming file and line.
    """

    def __init__(
        self,
        items: Mapping[str, Any] = (),
        lost: tuple[str, ...] = (),
        opaque: tuple[str, ...] = (),
        bypassed: tuple[str, ...] = (),
    ) -> None:
        super().__init__(items)
        self.lost = lost
        self.opaque = opaque
        self.bypassed = bypassed

    def lost_reason(self) -> str:
        """Why ``lost`` keys could not be carried out, for an error message."""
        if self.bypassed:
            return " ".join(self.bypassed)
        return (
            "called inside a JAX transform whose values jaxinterp cannot carry out: "
            + LOST_PATTERNS
        )


class _State:
    def __init__(self) -> None:
        self.stack: list[_Frame] = []
        self.call: Call | None = None
        self.module: Any = None  # the module of ``call``
        self.linen_prefix: list[str] = []  # paths of the nnx.bridge.ToNNX calls running
        self.opaque: list[str] = []  # paths of nnx.bridge.ToLinen modules called
        self.bypassed: list[str] = []  # transforms entered through names bound before


_STATE: contextvars.ContextVar[_State | None] = contextvars.ContextVar(
    "jaxinterp_hook_state", default=None
)
_AROUND: contextvars.ContextVar[tuple[Around, frozenset[str]] | None] = contextvars.ContextVar(
    "jaxinterp_hook_around", default=None
)


def _frame(state: _State) -> _Frame:
    """The frame that values traced right now belong to (a throwaway one in foreign traces)."""
    top = state.stack[-1]
    now = _trace_now()
    if now == top.trace:
        return top
    for f in top.foreign:
        if f.trace == now:
            return f
    f = _Frame(now, dict(top.counts), top.steps, top.sizes, top.axes, carried=False)
    top.foreign.append(f)
    cause = _bypass_cause()
    if cause and cause not in state.bypassed:
        state.bypassed.append(cause)
    return f


def _entry_codes() -> dict[Any, str]:
    """Code objects of the functions a bypassed transform enters, and the name to report."""
    import inspect

    from jax._src import ad_checkpoint, api

    codes: dict[Any, str] = {inspect.unwrap(_IMPORTED["scan"]).__code__: "jax.lax.scan"}
    for mod, name, what in (
        (api, "vmap_f", "jax.vmap"),
        (ad_checkpoint, "fun_remat", "jax.checkpoint"),
    ):
        for const in _nested_codes(mod):
            if const.co_name == name:
                codes[const] = what
    return codes


def _nested_codes(mod: Any) -> list[Any]:
    import inspect

    funcs = []
    for v in list(vars(mod).values()):
        try:
            funcs.append(inspect.unwrap(v))
        except (TypeError, ValueError):  # not a function, or a cycle of __wrapped__
            pass
    out, todo = [], [f.__code__ for f in funcs if hasattr(f, "__code__")]
    while todo:
        code = todo.pop()
        out.append(code)
        todo.extend(c for c in code.co_consts if hasattr(c, "co_consts"))
    return out


_ENTRY_CODES: dict[Any, str] = {}
_OURS = ("jax.", "flax.", "jaxinterp.")
_JAX_WRAPPERS = ("jax._src.traceback_util", "jax._src.api_util", "jax._src.linear_util")


def _bypass_cause() -> str | None:
    """Why values cannot leave the trace now, when it is a name bound before the hook.

    Walks the Python stack to the innermost entry of ``jax.lax.scan`` / ``jax.vmap`` /
    ``jax.checkpoint``; if user code (not jax, flax or the hook's routing) called the
    original there, a name was bound to it before the hook was installed (``from jax.lax
    import scan`` at import) or the transform was applied before (at class definition).
    """
    if not _ENTRY_CODES:
        _ENTRY_CODES.update(_entry_codes())
    frame = sys._getframe(2)
    while frame is not None:
        what = _ENTRY_CODES.get(frame.f_code)
        if what is not None:
            caller = frame.f_back  # the routed wrappers, jax or flax: not a bypass
            while caller is not None and caller.f_globals.get("__name__") in _JAX_WRAPPERS:
                caller = caller.f_back  # jax's own decorators around the entry
            mod = "" if caller is None else str(caller.f_globals.get("__name__", ""))
            if caller is None or mod.startswith(_OURS) or mod == "jax":
                return None
            where = f"{caller.f_code.co_filename}:{caller.f_lineno} (module {mod!r})"
            if what == "jax.lax.scan":
                return (
                    f"{where} calls {what} through a name bound before the hook was installed "
                    f"(e.g. 'from jax.lax import scan' at import): jaxinterp routes {what} only "
                    "while a hooked forward pass runs, so values of the modules called inside "
                    f"this scan cannot be carried out. Call it as {what}(...) (looked up when "
                    "it runs), or use nn.scan / nnx.scan"
                )
            return (
                f"{where} calls a function transformed by {what} before the hook was "
                f"installed (a name bound at import, e.g. 'from jax import "
                f"{what.split('.')[-1]}', or a decorator applied when the class was defined), "
                f"so values of the modules called inside cannot be carried out. Apply "
                f"{what}(...) inside the forward pass, or use the flax transform (nn.vmap / "
                "nnx.vmap, nn.remat / nnx.remat)"
            )
        frame = frame.f_back
    return None


def current_call() -> Call:
    """The call the innermost running hook is around.

    Raises:
      RuntimeError: called outside a hook.
    """
    state = _STATE.get()
    if state is None or state.call is None:
        raise RuntimeError("current_call: only valid inside a hook run by run_with_hook")
    return state.call


def record(key: str, value: Any) -> None:
    """Keeps ``value`` (any pytree of arrays) under ``key`` for :func:`run_with_hook` to return.

    Safe inside scans, remat and vmap (see the module docstring): values recorded inside a scan
    over ``L`` steps come back stacked ``[L, ...]``. A key recorded twice in one frame keeps
    the first value.

    Raises:
      RuntimeError: called outside a hook.
    """
    state = _STATE.get()
    if state is None or not state.stack:
        raise RuntimeError("record: only valid inside a hook run by run_with_hook")
    f = _frame(state)
    if not f.carried:
        f.lost.append(key)
        state.stack[-1].lost.append(key)
        return
    f.records.setdefault(key, value)


def _enter_call(path: str) -> tuple[_State, Call | None]:
    state = _STATE.get()
    assert state is not None
    f = _frame(state)
    k = f.counts.get(path, 0)
    f.counts[path] = k + 1
    prev = state.call
    key = path if k == 0 else f"{path}@{k}"
    state.call = Call(path, k, key, f.steps, f.carried, f.sizes, f.axes)
    if f.carried:
        f.order.append(state.call.key)
    return state, prev


# ------------------------------------------------------------------- routed JAX transforms

_IMPORTED = {
    "scan": jax.lax.scan,
    "checkpoint": jax.checkpoint,
    "remat": jax.remat,
    "vmap": jax.vmap,
}
_OWNERS = {"scan": jax.lax, "checkpoint": jax, "remat": jax, "vmap": jax}


class _Originals:
    """``_ORIG[name]``: what ``jax.lax.scan`` / ``jax.checkpoint`` / ``jax.vmap`` held before
    the routing was installed (the objects imported with jaxinterp when it is not)."""

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return _patch.original("routed", _OWNERS[name], name, _IMPORTED[name])


_ORIG = _Originals()


def _child(
    parent: _Frame,
    steps: tuple[jax.Array, ...] = (),
    sizes: tuple[int, ...] = (),
    kind: str | None = None,
) -> _Frame:
    """A frame for a transformed function, opened inside its trace; ``parent`` is outside."""
    return _Frame(
        _trace_now(),
        dict(parent.counts),
        parent.steps + steps,
        parent.sizes + sizes,
        parent.axes + ((kind,) if kind else ()),
        carried=parent.carried,
    )


def _merge(parent: _Frame, child: _Frame, records: Mapping[str, Any]) -> None:
    parent.counts.update(child.counts)
    for k in child.records:  # in call order; ``records`` came back through jax with keys sorted
        parent.records.setdefault(k, records[k])
    parent.order.extend(child.order)
    parent.lost.extend(child.lost)


def _leading_size(xs: Any) -> int | None:
    leaves = jax.tree_util.tree_leaves(xs)
    return int(jnp.shape(leaves[0])[0]) if leaves else None


def _scan(f, init, xs=None, length=None, reverse=False, unroll=1, **kw):
    state = _STATE.get()
    if state is None or not state.stack:
        return _ORIG["scan"](f, init, xs, length, reverse, unroll, **kw)
    n = length if length is not None else _leading_size(xs)
    if n is None:
        raise ValueError("lax.scan: length is required when xs is None")
    parent = _frame(state)
    box: list[_Frame] = []

    def body(c, x_i):
        x, i = x_i
        child = _child(parent, (i,), (int(n),), "scan")
        state.stack.append(child)
        try:
            c2, y = f(c, x)
        finally:
            state.stack.pop()
        box[:] = [child]
        return c2, (y, child.records)

    idx = jnp.arange(n, dtype=jnp.int32)
    c, (ys, recs) = _ORIG["scan"](body, init, (xs, idx), length, reverse, unroll, **kw)
    _merge(parent, box[-1], recs)
    return c, ys


def _wrap_transform(
    transform: Callable[[Callable], Callable], fun: Callable, kind: str | None = None
) -> Callable:
    """``transform(fun)`` whose records come out as extra outputs, merged into the caller."""
    box: list[_Frame] = []

    def wrapped(*a, **k):
        state = _STATE.get()
        if state is None or not box:
            return fun(*a, **k), {}
        child = _child(box[0], kind=kind)
        state.stack.append(child)
        try:
            out = fun(*a, **k)
        finally:
            state.stack.pop()
        box[1:] = [child]
        return out, child.records

    inner = transform(wrapped)

    def call(*a, **k):
        state = _STATE.get()
        if state is None or not state.stack:
            box[:] = []
            return inner(*a, **k)[0]
        box[:] = [_frame(state)]
        out, recs = inner(*a, **k)
        _merge(box[0], box[-1], recs)
        return out

    return call


def _checkpoint(fun=None, **kw):
    if fun is None:
        return lambda g: _checkpoint(g, **kw)
    if _STATE.get() is None:
        return _ORIG["checkpoint"](fun, **kw)
    return _wrap_transform(lambda g: _ORIG["checkpoint"](g, **kw), fun)


def _vmap(fun, in_axes=0, out_axes=0, *args, **kw):
    state = _STATE.get()
    if state is None:
        return _ORIG["vmap"](fun, in_axes, out_axes, *args, **kw)
    return _wrap_transform(
        lambda g: _ORIG["vmap"](g, in_axes, (out_axes, 0), *args, **kw), fun, "vmap"
    )


def on_mapped(
    fn: Callable[[Any], Any], call: Call, like: Callable[[Any], Any] | None = None
) -> Callable[[Any], Any]:
    """``fn`` applied to a value of ``call`` as its record comes out of the routed vmaps.

    A module under ``nn.vmap`` / ``nnx.vmap`` (mixture-of-experts experts, ensembles) runs once
    per member, and inside the hook a value is one member's slice ``[batch, ...]``; its record
    comes out ``[member, batch, ...]``. The returned function takes the slice (as the hook sees
    it) and runs ``fn`` on the stacked ``[member, ..., batch, ...]`` value (one leading axis
    per ``"vmap"`` in ``call.axes``, outermost first, as records have them; values the vmap
    does not map are broadcast), handing each member its slice of the result. So an edit at
    such a site addresses the same axes as its capture: ``zero(at={0: e})`` is member ``e``.
    Built on :func:`jax.custom_batching.custom_vmap`, so it composes with ``jit``, ``grad``
    and an outer ``vmap`` (which stays invisible, as everywhere). ``fn`` must keep the leading
    axes; with no routed vmap around ``call`` it is ``fn`` itself. ``like`` maps one member's
    value to a value shaped like one member's result (default: the same shapes, as edits
    return); it is only traced for shapes.
    """
    levels = call.axes.count("vmap")
    if levels == 0:
        return fn
    return _lift(fn, levels, like or (lambda v: v))


def _lift(fn: Callable[[Any], Any], levels: int, like: Callable[[Any], Any]) -> Callable:
    if levels == 0:
        return fn

    @jax.custom_batching.custom_vmap
    def lifted(x):  # one member's result shapes: traced for abstract evaluation only
        return like(x)

    @lifted.def_vmap
    def _rule(axis_size, in_batched, x):
        x = jax.tree.map(
            lambda v, b: v if b else jnp.broadcast_to(v, (axis_size, *jnp.shape(v))),
            x,
            in_batched,
        )
        out = _lift(fn, levels - 1, like)(x)
        return out, jax.tree.map(lambda _: True, out)

    return lifted


def _remat(fun=None, **kw):
    # ``jax.remat`` gets its own replacement object, so that a name bound to it while routed
    # is set back to ``jax.remat`` itself (not to ``jax.checkpoint``)
    if fun is None:
        return lambda g: _remat(g, **kw)
    if _STATE.get() is None:
        return _ORIG["remat"](fun, **kw)
    return _checkpoint(fun, **kw)


def _routed_transforms():
    """Routes jax.lax.scan / jax.checkpoint / jax.remat / jax.vmap through the frame wrappers.

    Scoped and restored exactly (:func:`jaxinterp.capture._patch.scoped`): after the last
    hooked forward each name holds the very object it held before.
    """
    return _patch.scoped(
        "routed",
        [
            (jax.lax, "scan", _scan),
            (jax, "checkpoint", _checkpoint),
            (jax, "remat", _remat),
            (jax, "vmap", _vmap),
        ],
    )


# ------------------------------------------------------------------------------ the hook


def _run_around(around: Around, path: str, module: Any, call_next, args, kwargs):
    state = _STATE.get()
    assert state is not None
    if state.module is module and state.call is not None and state.call.path == path:
        # the method calling itself on a parent class (``super().__call__(x)`` in a subclass):
        # one call of the module, not two
        return call_next(*args, **kwargs)
    state, prev = _enter_call(path)
    prev_module, state.module = state.module, module
    try:
        return around(path, module, call_next, tuple(args), dict(kwargs))
    finally:
        state.call, state.module = prev, prev_module


def _unjitted_lift(fn: Callable[..., Any], variables: Any = True, rngs: Any = True, **_: Any):
    """``flax.core.lift.jit`` without ``jax.jit``: the same scope handling, run in place."""

    def inner(scope_fn, repack_fn, variable_groups, rng_groups, module_hash_key, *args, **kw):
        scope = scope_fn(variable_groups, rng_groups)
        return fn(scope, module_hash_key, *args, **kw), repack_fn(scope)

    return _flax_lift.pack(
        inner, (variables,), (variables,), (rngs,), name="jit", enable_kwargs=True
    )


def _linen_jit_methods() -> list[Any]:
    """The closures of every method decorated with ``nn.jit`` in the linen classes defined."""
    found, todo, seen = [], [nn.Module], set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        for fn in list(vars(cls).values()):
            code = getattr(fn, "__code__", None)
            if code is None or code.co_name != "wrapped_fn" or "transform" not in code.co_freevars:
                continue
            cells = dict(zip(code.co_freevars, fn.__closure__))
            if cells["transform"].cell_contents is _flax_lift.jit and "trafo_fn" in cells:
                found.append(cells)
    return found


@contextlib.contextmanager
def _unjitted_linen_methods():
    """Runs ``nn.jit``-decorated linen methods un-jitted while the block runs.

    ``nn.jit`` keeps one jitted function per decorated method and reuses its cached trace on
    the next call with the same shapes, so a second hooked forward would run none of the hooks
    inside, and values recorded inside ``jax.jit`` cannot be carried out. Google's ``gemma``
    package jits its ``Transformer.__call__`` this way. The same scope handling runs without
    ``jax.jit`` instead (jit the hooked forward itself); reference counted like the routed
    transforms, and restored afterwards.
    """
    global _UNJITTED, _SAVED_JIT
    with _LOCK:
        if _UNJITTED == 0:
            _SAVED_JIT = []
            for cells in _linen_jit_methods():
                saved = (cells["transform"].cell_contents, cells["trafo_fn"].cell_contents)
                _SAVED_JIT.append((cells, saved))
                cells["transform"].cell_contents = _unjitted_lift
                cells["trafo_fn"].cell_contents = None
        _UNJITTED += 1
    try:
        yield
    finally:
        with _LOCK:
            _UNJITTED -= 1
            if _UNJITTED == 0:
                for cells, (transform, trafo) in _SAVED_JIT:
                    cells["transform"].cell_contents = transform
                    cells["trafo_fn"].cell_contents = trafo
                _SAVED_JIT = []


_UNJITTED = 0
_SAVED_JIT: list[Any] = []


def _is_lift_wrapper(mod: Any, name: str) -> bool:
    """Whether this call is the outer wrapper of a lifted module *class* (``nn.remat(Block)``).

    The wrapped class's own method is called (and hooked) inside it. A method decorated with a
    lifted transform (``@nn.jit``, ``@nn.remat`` on ``__call__``) is a different case: only
    its body's call is intercepted, on a module of the same class, so it is hooked.
    """
    fn = type(mod).__dict__.get(name)
    code = getattr(fn, "__code__", None)
    return (
        code is not None
        and code.co_filename.endswith("linen/transforms.py")
        and "prewrapped_fns" not in code.co_freevars
    )


def _hooked_class(cls: type, methods: frozenset[str]) -> type:
    with _LOCK:
        sub = _HOOKED_CLASSES.get((cls, methods))
        if sub is not None:
            return sub

        def make(name: str):
            orig = getattr(cls, name)

            def method(self, *args, **kwargs):
                hook = _AROUND.get()
                path = self.__dict__.get(_PATH_ATTR, _BRIDGE_PATHS.get(id(self)))
                if hook is None or path is None or name not in hook[1]:
                    return orig(self, *args, **kwargs)
                full = path if name == "__call__" else f"{path}.{name}"

                def call_next(*a, **k):
                    if not isinstance(self, nnx.bridge.ToNNX):
                        return orig(self, *a, **k)
                    state = _STATE.get()
                    state.linen_prefix.append(path)  # its linen submodules: "path/..."
                    try:
                        return orig(self, *a, **k)
                    finally:
                        state.linen_prefix.pop()

                return _run_around(hook[0], full, self, call_next, args, kwargs)

            method.__name__ = name
            method.__wrapped__ = orig
            method.__qualname__ = f"{cls.__qualname__}.{name}"
            return method

        ns = {m: make(m) for m in methods if callable(getattr(cls, m, None))}
        ns["__module__"] = cls.__module__
        sub = type(cls.__name__, (cls,), ns)
        _HOOKED_CLASSES[(cls, methods)] = sub
        _HOOKED_CLASSES[(sub, methods)] = sub
    return sub


def _check_methods(methods: Collection[str] | str | None) -> frozenset[str]:
    if methods is None:
        return frozenset({"__call__"})
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(methods)
    if not all(isinstance(m, str) and m.isidentifier() for m in methods):
        raise TypeError(f"methods: expected method names (strings), got {methods!r}")
    return frozenset(("__call__", *methods))


def _raw_state(state: Any) -> dict[tuple, Any]:
    return {path: var.get_raw_value() for path, var in nnx.to_flat_state(state)}


_NEW = object()


def _differs(new: Any, old: Any) -> bool:
    if new is old:
        return False
    if old is _NEW:
        return True
    leaves_new, leaves_old = jax.tree.leaves(new), jax.tree.leaves(old)
    if jax.tree.structure(new) != jax.tree.structure(old):
        return True
    for a, b in zip(leaves_new, leaves_old):
        if a is b:
            continue
        if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
            return True
        if not hasattr(a, "dtype") or not hasattr(b, "dtype"):
            if a != b:
                return True
            continue
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        if a.shape != b.shape or a.dtype != b.dtype or not bool(jnp.array_equal(a, b)):
            return True
    return False


def _write_back(model: Any, before: dict[tuple, Any], copy: Any) -> None:
    """Puts the state the hooked copy changed into ``model``, as the model's own call would.

    Parameters (``nnx.Param``) are never written: a forward pass does not change them (lifted
    transforms such as ``nnx.scan`` hand them back as new arrays of the same values). Other
    variables are written when their value is neither the same object as before nor, both
    being concrete, equal to it; so a call that changes nothing writes nothing (and works
    anywhere, also under ``jax.jit`` of a function closing over the model). RNG streams
    (``nnx.RngState``) and ``sow`` intermediates are written where the model belongs to the
    current trace and left as they were where it does not (inside ``jax.jit`` of a closure the
    call is then a pure function of the model's RNG state); any other change (a decode cache,
    BatchNorm statistics) must be written.

    Raises:
      ValueError: the call changed a cache, statistics or other state that cannot be written
        into ``model`` from this trace (the model's own call raises ``TraceContextError``
        there too).
    """
    changed = [
        (path, var)
        for path, var in nnx.to_flat_state(nnx.state(copy))
        if not isinstance(var, nnx.Param) and _differs(var.get_raw_value(), before.get(path, _NEW))
    ]
    soft = [(p, v) for p, v in changed if isinstance(v, (nnx.RngState, nnx.Intermediate))]
    hard = [(p, v) for p, v in changed if not isinstance(v, (nnx.RngState, nnx.Intermediate))]
    for item in soft:
        try:
            nnx.update(model, nnx.from_flat_state([item]))
        except ferr.TraceContextError:
            pass  # documented above: RNG counts and sow stay where they cannot be written
    if not hard:
        return
    try:
        nnx.update(model, nnx.from_flat_state(hard))
    except ferr.TraceContextError as err:
        names = ", ".join("/".join(map(str, p)) for p, _ in hard[:6])
        more = f" and {len(hard) - 6} more" if len(hard) > 6 else ""
        raise ValueError(
            f"model: this call changes the nnx model's state ({names}{more}: e.g. a decode "
            "cache or BatchNorm statistics), as the model's own call would, "
            "but the change cannot be written into the model from inside this trace (jax.jit, "
            "jax.vmap or jax.grad of a function that closes over the model; calling the model "
            "itself there raises flax's TraceContextError). Pass the model as an argument "
            "through nnx.jit (nnx.jit(lambda m, x: capture(m, ...)(x))(model, x)), run the "
            "call eagerly, or put the model in eval mode (model.eval(), deterministic=True, "
            "use_running_average=True) so that the call changes nothing"
        ) from err


def _nnx_copy(model: Any, methods: frozenset[str]) -> Any:
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state, copy=True)
    run = next(_RUNS)
    for raw, sub in nnx.iter_modules(copy):
        if isinstance(sub, nnx.bridge.ToNNX):
            # ToNNX turns every attribute into linen variables: keep the path aside
            if raw:
                _BRIDGE_PATHS[id(sub)] = canonical_path(raw)
                object.__setattr__(sub, "__class__", _hooked_class(type(sub), methods))
            continue
        # A static attribute unique to this run: JAX caches traces of functions transformed
        # once at class definition (``@nnx.remat``) keyed on the graph definition, and a
        # cache hit would skip this run's hooks.
        object.__setattr__(sub, _RUN_ATTR, run)
        if not raw:
            continue
        object.__setattr__(sub, _PATH_ATTR, canonical_path(raw))
        object.__setattr__(sub, "__class__", _hooked_class(type(sub), methods))
    return copy


_SHAPE_RE = re.compile(
    r'For parameter "(?P<name>[^"]+)" in "(?P<scope>[^"]*)", the given initializer is expected '
    r"to generate shape (?P<want>\([^)]*\)), but the existing parameter it received has shape "
    r"(?P<got>\([^)]*\))"
)


def _flax_message(err: Exception) -> str:
    msg = str(err).strip()
    return re.sub(r"\s*\(https://flax[^)]*\)\s*$", "", msg)


def _translate_linen_error(err: Exception) -> Exception | None:
    """A clear error for the flax Scope* errors a wrong ``variables`` or input gives."""
    msg = _flax_message(err)
    if isinstance(err, ferr.ScopeParamShapeError):
        m = _SHAPE_RE.search(msg)
        if m:
            where = "/".join(p for p in (m["scope"].strip("/"), m["name"]) if p)
            return ValueError(
                f"variables: parameter {where!r} has shape {m['got']}, but the model called on "
                f"these inputs expects {m['want']}: the variables come from another model, or "
                "the inputs have a different shape than the model was initialized with"
            )
        return ValueError(f"variables: they do not fit the model on these inputs ({msg})")
    if isinstance(err, (ferr.ScopeParamNotFoundError, ferr.ScopeVariableNotFoundError)):
        return ValueError(
            f"variables: missing a variable the model needs ({msg}); pass the variables this "
            "model was initialized with"
        )
    if isinstance(err, ferr.ScopeCollectionNotFound):
        return ValueError(
            f"variables: missing a collection the model needs ({msg}); pass every collection "
            "of model.init(...) (e.g. 'params' and 'batch_stats')"
        )
    if isinstance(
        err,
        (ferr.ApplyScopeInvalidVariablesTypeError, ferr.ApplyScopeInvalidVariablesStructureError),
    ):
        return TypeError(f"variables: expected {{'params': ...}} as model.init returns ({msg})")
    if isinstance(err, ferr.ModifyScopeVariableError):
        return ValueError(
            f"mutable: the model tried to update a variable ({msg}). The model probably runs "
            "in training mode (e.g. BatchNorm with use_running_average=False): pass its eval "
            "flag (e.g. train=False / deterministic=True) as a model input, or pass "
            "mutable=['batch_stats'] to allow the update"
        )
    return None


def _call_method(model: Any, method: Any) -> Callable[..., Any]:
    if method is None:
        return model
    if callable(method):
        return lambda *a, **k: method(model, *a, **k)
    if not isinstance(method, str):
        raise TypeError(f"method: expected a method name or a callable, got {method!r}")
    fn = getattr(model, method, None)
    if fn is None or not callable(fn):
        raise ValueError(f"method: {type(model).__name__} has no method {method!r}")
    return fn


def run_with_hook(
    model: Any,
    variables: Any,
    around: Around,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    mutable: Any = False,
    rngs: Any = None,
    methods: Collection[str] | None = None,
    update_model: bool = True,
    **kwargs: Any,
) -> tuple[Any, Records]:
    """Runs ``model`` with ``around`` wrapped about every submodule call; returns the records.

    Args:
      model: a ``flax.linen.Module`` (with ``variables``) or a ``flax.nnx.Module``.
      variables: the linen variables dict; ``None`` for nnx.
      around: ``around(path, module, call_next, args, kwargs) -> output``; inside it,
        :func:`current_call` describes the call and :func:`record` keeps values.
      *args: positional inputs of the model.
      method: the model method to run: a name or a callable taking the model first
        (default ``__call__``).
      mutable: linen ``mutable`` collections (the output is then ``(out, updates)``).
      rngs: linen ``rngs`` dict.
      methods: names of submodule methods hooked besides ``__call__`` (e.g.
        ``("encode", "decode")``); their calls have the path ``"path.method"``.
      update_model: nnx only: write the state the call changes (decode caches, BatchNorm
        statistics, RNG counts, ``sow``) into ``model``, as the model's own call does
        (default); ``False`` leaves ``model`` untouched (the hooked forward runs on a copy).
      **kwargs: keyword inputs of the model.

    Returns:
      ``(output, records)``: whatever the model method returns, and ``{key: value}`` from
      :func:`record` (values recorded inside a scan stacked ``[step, ...]``).

    Raises:
      TypeError, ValueError: bad ``model``/``variables``/``method``; variables that do not fit
        the model or the inputs (named ``variables``, with expected and actual shapes); a
        linen model that updates an immutable collection (named ``mutable``); an nnx model
        whose changed state cannot be written back from inside ``jax.jit`` (named ``model``).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> def around(path, module, call_next, args, kwargs):
    ...     out = call_next(*args, **kwargs)
    ...     record(current_call().key, out)
    ...     return out
    >>> out, recs = run_with_hook(model, variables, around, jnp.ones((5, 4)))
    >>> sorted(recs), recs["layers_2"].shape
    (['layers_0', 'layers_2'], (5, 2))
    """
    check_model(model, variables)
    hooked = _check_methods(methods)
    if not callable(around):
        raise TypeError(
            f"around: expected a function (path, module, call_next, args, kwargs) -> output, "
            f"got {type(around).__name__}"
        )
    _call_method(model, method)  # checks the method before anything runs
    state = _State()
    root = _Frame(_trace_now(), {}, ())
    state.stack.append(root)
    tok_s = _STATE.set(state)
    tok_a = _AROUND.set((around, hooked))
    try:
        with _routed_transforms():

            def interceptor(next_fun, a, k, context):
                mod = context.module
                name = context.method_name
                if name not in hooked or not mod.path or _is_lift_wrapper(mod, name):
                    return next_fun(*a, **k)
                path = canonical_path(mod.path)
                if not is_linen(model):  # a linen module inside nnx.bridge.ToNNX
                    if not state.linen_prefix:
                        return next_fun(*a, **k)
                    path = f"{state.linen_prefix[-1]}/{path}"
                full = path if name == "__call__" else f"{path}.{name}"
                if isinstance(mod, nnx.bridge.ToLinen):
                    state.opaque.append(full)
                return _run_around(around, full, mod, next_fun, a, k)

            if is_linen(model):
                with nn.intercept_methods(interceptor), _unjitted_linen_methods():
                    try:
                        out = model.apply(
                            variables, *args, method=method, mutable=mutable, rngs=rngs, **kwargs
                        )
                    except ferr.FlaxError as err:
                        new = _translate_linen_error(err)
                        if new is None:
                            raise
                        raise new from err
            else:
                before = _raw_state(nnx.state(model))
                copy = _nnx_copy(model, hooked)
                try:
                    with nn.intercept_methods(interceptor), _unjitted_linen_methods():
                        out = _call_method(copy, method)(*args, **kwargs)
                finally:
                    for _, sub in nnx.iter_modules(copy):
                        _BRIDGE_PATHS.pop(id(sub), None)  # ids are reused once the copy dies
                if update_model:
                    _write_back(model, before, copy)
    finally:
        _STATE.reset(tok_s)
        _AROUND.reset(tok_a)
    rank = {k: i for i, k in enumerate(dict.fromkeys(root.order))}
    keys = sorted(root.records, key=lambda k: rank.get(k, len(rank)))
    # A key both lost and recorded was traced once where values cannot leave (Flax's
    # constancy check of nn.scan traces the body outside lax.scan) and once where they can.
    lost = tuple(k for k in dict.fromkeys(root.lost) if k not in root.records)
    opaque = tuple(dict.fromkeys(state.opaque))
    bypassed = tuple(state.bypassed) if lost else ()
    records = Records(
        {k: root.records[k] for k in keys}, lost=lost, opaque=opaque, bypassed=bypassed
    )
    return out, records


def apply_with_hook(
    model: Any,
    variables: Any,
    around: Around,
    *args: Any,
    method: str | Callable[..., Any] | None = None,
    mutable: Any = False,
    rngs: Any = None,
    methods: Collection[str] | None = None,
    update_model: bool = True,
    **kwargs: Any,
) -> Any:
    """Runs ``model`` on ``args`` with ``around`` wrapped about every submodule call.

    Same as :func:`run_with_hook` without the records.

    Args:
      model: a ``flax.linen.Module`` (with ``variables``) or a ``flax.nnx.Module``.
      variables: the linen variables dict; ``None`` for nnx.
      around: ``around(path, module, call_next, args, kwargs) -> output``.
      *args: positional inputs of the model.
      method: the model method to run: a name or a callable (default ``__call__``).
      mutable: linen ``mutable`` collections (returned as ``(out, updates)`` when set).
      rngs: linen ``rngs`` dict.
      methods: submodule methods hooked besides ``__call__`` (path ``"path.method"``).
      update_model: nnx only: write the state the call changes back into ``model`` (see
        :func:`run_with_hook`).
      **kwargs: keyword inputs of the model.

    Returns:
      Whatever the model method returns.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> zero_hidden = lambda p, m, nxt, a, k: 0 * nxt(*a, **k) if p == "layers_0" else nxt(*a, **k)
    >>> out = apply_with_hook(model, variables, zero_hidden, jnp.ones((5, 4)))
    >>> bool(jnp.allclose(out, variables["params"]["layers_2"]["bias"]))
    True
    """
    return run_with_hook(
        model,
        variables,
        around,
        *args,
        method=method,
        mutable=mutable,
        rngs=rngs,
        methods=methods,
        update_model=update_model,
        **kwargs,
    )[0]


def _records_flatten(r: Records):
    keys = tuple(r)
    return [r[k] for k in keys], (keys, r.lost, r.opaque, r.bypassed)


jax.tree_util.register_pytree_node(
    Records,
    _records_flatten,
    lambda aux, vals: Records(dict(zip(aux[0], vals)), lost=aux[1], opaque=aux[2], bypassed=aux[3]),
)
