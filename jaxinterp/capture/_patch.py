"""Scoped replacement of module attributes, restored exactly (the hook's only global change).

The hook routes ``jax.lax.scan``, ``jax.checkpoint``/``jax.remat`` and ``jax.vmap`` (and the
attention extractor routes ``jax.nn.softmax``) through recorders while a hooked forward pass
runs. :func:`scoped` installs such replacements and guarantees that nothing outlives the
call:

* each ``(module, name)`` keeps the object it held when the first scope opened, and gets that
  very object back (``jax.remat is`` the original ``jax.remat``, not ``jax.checkpoint``);
* scopes are reference counted under a lock, so threads hooking at once share one installation
  and the last one out restores it; the replacements themselves are contextvar-gated and call
  the original in any context that is not hooking;
* a module imported while a scope was open (``from jax.lax import scan`` at its top) has bound
  the replacement; when the last scope closes, every name in such a module (and in the classes
  it defines) that holds a replacement is set back to the original.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any


class _Group:
    def __init__(self) -> None:
        self.count = 0
        self.saved: list[tuple[Any, str, Any]] = []  # (owner, name, original object)
        self.undo: dict[int, Any] = {}  # id(replacement) -> original
        self.keep: list[Any] = []  # the replacements, alive while ``undo`` holds their ids
        self.modules: set[str] = set()


_LOCK = threading.Lock()
_GROUPS: dict[str, _Group] = {}


def original(group: str, owner: Any, name: str, default: Any) -> Any:
    """The object ``owner.name`` held before ``group`` was installed (``default`` if not)."""
    g = _GROUPS.get(group)
    if g is not None:
        for o, n, orig in g.saved:
            if o is owner and n == name:
                return orig
    return default


def _unbind(namespace: dict[str, Any], undo: dict[int, Any]) -> None:
    for key, value in list(namespace.items()):
        orig = undo.get(id(value))
        if orig is not None and value is not orig:
            namespace[key] = orig


def _restore_imported(g: _Group) -> None:
    for mod_name in set(sys.modules) - g.modules:
        mod = sys.modules.get(mod_name)
        ns = getattr(mod, "__dict__", None)
        if not isinstance(ns, dict):
            continue
        _unbind(ns, g.undo)
        for value in list(ns.values()):
            if isinstance(value, type) and getattr(value, "__module__", None) == mod_name:
                for key, attr in list(vars(value).items()):
                    orig = g.undo.get(id(attr))
                    if orig is not None and attr is not orig:
                        try:
                            setattr(value, key, orig)
                        except (AttributeError, TypeError):
                            pass


@contextlib.contextmanager
def scoped(
    group: str,
    replace: Sequence[tuple[Any, str, Any]] | Callable[[], Sequence[tuple[Any, str, Any]]],
) -> Iterator[None]:
    """Sets ``owner.name = replacement`` for each triple while the block runs (see module doc).

    Args:
      group: a name for this set of replacements; nested or concurrent scopes of one group
        share one installation.
      replace: ``(owner, name, replacement)`` triples, or a function returning them (called
        under the lock when the first scope opens). Each replacement must be its own object.
    """
    with _LOCK:
        g = _GROUPS.setdefault(group, _Group())
        if g.count == 0:
            g.modules = set(sys.modules)
            for owner, name, new in replace() if callable(replace) else replace:
                orig = getattr(owner, name)
                g.saved.append((owner, name, orig))
                g.undo[id(new)] = orig
                g.keep.append(new)
                setattr(owner, name, new)
        g.count += 1
    try:
        yield
    finally:
        with _LOCK:
            g.count -= 1
            if g.count == 0:
                for owner, name, orig in reversed(g.saved):
                    setattr(owner, name, orig)
                _restore_imported(g)
                g.saved, g.undo, g.keep, g.modules = [], {}, [], set()
