"""Canonical module paths and path selectors.

One naming is shared by Flax linen and nnx so that every analysis in jaxinterp can name a layer
the same way whichever API built the model:

* A path is the chain of submodule names from the root, joined with ``/``:
  ``"block_0/attn"``.
* linen names come from the module scope (``Module.path``): explicit ``name=`` arguments,
  attribute names in ``setup`` (a list attribute ``blocks`` gives ``blocks_0``, ``blocks_1``),
  or the automatic ``Dense_0`` names of ``@nn.compact``.
* nnx names come from the attribute path (``nnx.iter_modules``). An integer index into a list
  of modules is appended to the attribute with ``_`` (``("blocks", 0, "attn")`` becomes
  ``"blocks_0/attn"``), which is exactly the name linen gives the same list in ``setup``.
* The root module itself has the empty path and is never selected: its output is the model's
  output, returned separately.
* A module called more than once in one forward pass records its later calls as
  ``"path@1"``, ``"path@2"``, ...

A *selector* picks paths: a glob string, a sequence of globs (a path is selected if any
matches), or a predicate ``str -> bool``. In a glob ``*`` and ``?`` stay inside one path
segment and ``**`` crosses segments: ``"block_*"`` selects ``block_0`` but not
``block_0/attn``; ``"block_*/**"`` selects everything inside the blocks; ``"**"`` selects all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Union

Selector = Union[str, Sequence[str], Callable[[str], bool]]

_GLOB_CHARS = set("*?[")


def canonical_path(parts: Iterable[object]) -> str:
    """Joins raw module path parts into a canonical ``"a/b_0/c"`` path.

    Args:
      parts: strings (submodule names) and integers (list indices), root first.

    Returns:
      The canonical path string; ``""`` for the root.

    >>> canonical_path(("blocks", 0, "attn"))
    'blocks_0/attn'
    """
    out: list[str] = []
    for p in parts:
        if isinstance(p, int) and out:
            out[-1] = f"{out[-1]}_{p}"
        else:
            out.append(str(p))
    return "/".join(out)


@functools.lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                out.append(pattern[i : j + 1].replace("[!", "[^"))
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(path: str, pattern: str) -> bool:
    """Whether canonical ``path`` matches ``pattern`` (``*`` within a segment, ``**`` across).

    >>> glob_match("block_0/attn", "block_*"), glob_match("block_0/attn", "block_*/**")
    (False, True)
    """
    return _glob_regex(pattern).match(path) is not None


def record_key(recorded: Mapping[str, object], path: str) -> str:
    """The key under which a new call of the module at ``path`` is recorded.

    The first call is ``path``; later calls of the same module in one forward pass are
    ``path@1``, ``path@2``, ...

    >>> record_key({"a": 0, "a@1": 0}, "a")
    'a@2'
    """
    if path not in recorded:
        return path
    k = 1
    while f"{path}@{k}" in recorded:
        k += 1
    return f"{path}@{k}"


def as_matcher(select: Selector) -> Callable[[str], bool]:
    """Turns a selector into a predicate on canonical paths.

    Args:
      select: a glob, a sequence of globs, or a predicate.

    Returns:
      ``match(path) -> bool``.

    >>> as_matcher("block_*/mlp")("block_1/mlp")
    True
    """
    if callable(select):
        return select
    if isinstance(select, str):
        pattern = select
        return lambda path: glob_match(path, pattern)
    patterns = tuple(select)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"select: expected a glob string, a sequence of glob strings or a predicate, "
            f"got {select!r}"
        )
    return lambda path: any(glob_match(path, p) for p in patterns)


def check_selection(select: Selector, selected: Sequence[str], available: Sequence[str]) -> None:
    """Raises a clear error when a selector picked nothing, or an exact name is unknown.

    Args:
      select: the selector the caller passed.
      selected: the paths it matched during a forward pass.
      available: every path seen during that forward pass.

    Raises:
      KeyError: naming the pattern that matched nothing and listing the available paths.
    """
    listing = ", ".join(repr(p) for p in available) or "(none: the model has no submodules)"
    if callable(select):
        if not selected:
            raise KeyError(f"select: the predicate matched no module path. Available: {listing}")
        return
    patterns = [select] if isinstance(select, str) else list(select)
    for pattern in patterns:
        if not any(glob_match(p, pattern) for p in available):
            kind = "pattern" if set(pattern) & _GLOB_CHARS else "path"
            raise KeyError(f"select: {kind} {pattern!r} matches no module. Available: {listing}")
