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
  ``"path@1"``, ``"path@2"``, ... (the *call key*; the first call's key is the path itself).
* A method other than ``__call__`` that the caller asked to hook (``methods=("encode",)``) is
  named ``"path.method"``: ``"embedder.encode"``.

Paths per pattern (how other people write models):

* **Scanned layers** (linen ``nn.scan``, nnx ``nnx.scan`` over a module with stacked weights):
  the scanned module keeps its own path (``"layers"``), and so do its submodules
  (``"layers/attn"``); their activations come out stacked over the scan, ``[layer, ...]``. A
  site names one layer with a step index in brackets after the path: ``"layers/attn[3]"``
  (nested scans: ``"outer/inner[1][2]"``, outermost first).
* **Rematerialized layers** (``nn.remat``, ``nnx.remat``, ``jax.checkpoint``): no trace in the
  path: ``nn.remat(Block)(name="block_0")`` is ``"block_0"``.
* **vmapped modules** (``nn.vmap``, ``nnx.vmap`` in the forward pass): the path of the
  module; activations gain the mapped axis in front (``[expert, batch, ...]`` for the
  experts of a mixture), and an edit at the same site sees that same stacked value, so
  ``zero(at={0: e})`` is expert ``e``.
* **Tuple / pytree outputs**: the path names the whole output, as the module returns it.

A *site* (used by interventions and :func:`jaxinterp.interventions.capture_sites`) names one
activation: ``PATH[@K][[STEP]...][:PART]`` where

* ``PATH`` is a module path (a glob where the caller allows one);
* ``@K`` picks the ``K``-th call (``@0`` is the first and the default; ``@*`` every call);
* ``[STEP]`` picks one step of the enclosing scans (default: every step);
* ``:PART`` is ``:output`` (the default) or ``:input``, optionally followed by an element of
  that pytree: ``[1]`` (sequence index), ``['key']`` (mapping key) or ``.name`` (attribute),
  repeatable: ``"block_0:output[1]"`` is the second element of a ``(cache, x)`` output.
  ``:input`` alone is the first argument that is an array (positional first, then keyword:
  so ``Einsum("...", x)`` gives ``x``); ``:input.x`` is the argument named ``x`` (passed by
  keyword or by position) and ``:input[2]`` the third positional argument, each optionally
  followed by element keys.

A digits-only bracket right after the path is a step index, so glob character classes
must not be a single number (``"block_[0-3]"`` is a glob, ``"block_[3]"`` is step 3).

A *selector* picks paths: a glob string, a sequence of globs (a path is selected if any
matches), or a predicate ``str -> bool``. In a glob ``*`` and ``?`` stay inside one path
segment and ``**`` crosses segments: ``"block_*"`` selects ``block_0`` but not
``block_0/attn``; ``"block_*/**"`` selects everything inside the blocks; ``"**"`` selects all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Union

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


def check_selection(
    select: Selector,
    selected: Sequence[str],
    available: Sequence[str],
    opaque: Sequence[str] = (),
) -> None:
    """Raises a clear error when a selector picked nothing, or an exact name is unknown.

    Args:
      select: the selector the caller passed.
      selected: the paths it matched during a forward pass.
      available: every path seen during that forward pass.
      opaque: paths of ``nnx.bridge.ToLinen`` wrappers seen, whose nnx submodules the hook
        cannot enter (named in the error with the route that works).

    Raises:
      KeyError: naming the pattern that matched nothing and listing the available paths.
    """
    listing = ", ".join(repr(p) for p in available) or "(none: the model has no submodules)"
    if opaque:
        listing += (
            f". {', '.join(map(repr, opaque))}: an nnx module wrapped in nnx.bridge.ToLinen, "
            "whose submodules are rebuilt inside each call and not visible to the hook; select "
            "the wrapper itself, or run capture on the nnx module (capture(nnx_module)), or "
            "wrap a linen model the other way (nnx.bridge.ToNNX, whose linen submodules are "
            "named 'wrapper/sub')"
        )
    if callable(select):
        if not selected:
            raise KeyError(f"select: the predicate matched no module path. Available: {listing}")
        return
    patterns = [select] if isinstance(select, str) else list(select)
    for pattern in patterns:
        if not any(glob_match(p, pattern) for p in available):
            kind = "pattern" if set(pattern) & _GLOB_CHARS else "path"
            raise KeyError(
                f"select: {kind} {pattern!r} matches no module"
                f"{scan_hint(pattern, available, False)}. Available: {listing}"
            )


_LIST_ITEM = re.compile(r"^([A-Za-z_][\w.]*?)_(\d+|\*)(/[^:\[|@]*)?(.*)$")


def scan_hint(name: str, available: Sequence[str], indexed: bool = True) -> str:
    """A sentence for a "matches no module" error: where a name of list layout (``blocks_3/
    attn/z``) is given to a model whose layers are one scanned stack (``blocks/attn/z``), the
    name of the same layer there (``blocks/attn/z[3]``); else ``""``.

    >>> "layer 3 is 'blocks/attn/z[3]'" in scan_hint("blocks_3/attn/z", ["blocks/attn/z"])
    True
    >>> "use 'blocks/attn/probs'" in scan_hint("blocks_*/attn/probs", ["blocks/attn/probs"])
    True
    >>> scan_hint("blocks_3/attn/z", ["blocks_3/attn/z"])
    ''
    """
    m = _LIST_ITEM.match(name)
    if m is None:
        return ""
    base, i, sub, rest = m.group(1), m.group(2), m.group(3), m.group(4)
    avail = set(available)
    if sub is None:  # the block's own output: a Decoder names its residual stream 'out'
        sub = "/out" if f"{base}/out" in avail else ""
    if f"{base}{sub}" not in avail:
        return ""
    head = f" ({name!r}: the model stacks its layers with a scan under {base!r}, where layer {i} "
    if i == "*":  # every layer: the stacked path itself
        stacked = f"{base}{sub}"
        return f" ({name!r}: the model stacks its layers with a scan: use {stacked!r}, [layer, ..])"
    if not indexed:
        return head + f"is index {i} of {f'{base}{sub}'!r}, recorded [layer, ...])"
    return head + f"is {f'{base}{sub}[{i}]{rest}'!r})"


class Site(NamedTuple):
    """A parsed site (see the module docstring for the syntax).

    Attributes:
      text: the site as written.
      path: module path or glob, without call, step or part.
      call: the call index (``None`` for ``@*``: every call).
      steps: step indices into the enclosing scans, outermost first (``()``: every step).
      part: ``"output"`` or ``"input"``.
      arg: for inputs: ``None`` (first array argument), an int (positional index) or a name.
      element: keys into the output/argument pytree: ints, strings (mapping keys) and
        ``("attr", name)`` pairs for attributes.
    """

    text: str
    path: str
    call: int | None
    steps: tuple[int, ...]
    part: str
    arg: int | str | None
    element: tuple[object, ...]

    @property
    def key(self) -> str:
        """The record key of the named call (``path`` or ``path@k``)."""
        return self.path if not self.call else f"{self.path}@{self.call}"


_SITE_RE = re.compile(
    r"(?P<path>.*?)(?:@(?P<call>\d+|\*))?(?P<steps>(?:\[\d+\])*)"
    r"(?::(?P<part>input|output)(?P<rest>.*))?\Z",
    re.S,
)
_ELEM_RE = re.compile(r"\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]|\.([A-Za-z_]\w*)")


def _parse_elements(rest: str, site: str) -> tuple[object, ...]:
    out: list[object] = []
    i = 0
    while i < len(rest):
        m = _ELEM_RE.match(rest, i)
        if m is None:
            raise ValueError(
                f"site: {site!r}: cannot read {rest[i:]!r}; element keys are [int], ['key'] "
                "or .name"
            )
        if m.group(1) is not None:
            out.append(int(m.group(1)))
        elif m.group(2) is not None or m.group(3) is not None:
            out.append(m.group(2) if m.group(2) is not None else m.group(3))
        else:
            out.append(("attr", m.group(4)))
        i = m.end()
    return tuple(out)


@functools.lru_cache(maxsize=1024)
def parse_site(site: str) -> Site:
    """Parses ``PATH[@K][[STEP]...][:PART]`` (see the module docstring).

    Raises:
      TypeError: ``site`` is not a non-empty string.
      ValueError: the suffix cannot be read; the message starts with ``site:``.

    >>> s = parse_site("layers/attn@1[3]:input.x[0]")
    >>> s.path, s.call, s.steps, s.part, s.arg, s.element
    ('layers/attn', 1, (3,), 'input', 'x', (0,))
    >>> parse_site("block_0:output[1]").element
    (1,)
    """
    if not isinstance(site, str) or not site:
        raise TypeError(f"site: expected a non-empty path string, got {site!r}")
    m = _SITE_RE.match(site)
    if m is None or not m["path"] or (":" in m["path"]):
        raise ValueError(
            f"site: {site!r}: the only suffixes allowed are ':output' and ':input'; expected "
            "PATH[@K][[STEP]...][:output|:input][element keys], "
            "e.g. 'block_0/mlp', 'block_0/attn/out:input', 'layers/attn[3]', 'block_0:output[1]'"
        )
    call = None if m["call"] == "*" else int(m["call"] or 0)
    steps = tuple(int(t) for t in re.findall(r"\d+", m["steps"] or ""))
    part = m["part"] or "output"
    rest = m["rest"] or ""
    arg: int | str | None = None
    if part == "input" and rest:
        a = re.match(r"\.([A-Za-z_]\w*)|\[(\d+)\]", rest)
        if a is None:
            raise ValueError(
                f"site: {site!r}: after ':input' expected '.name' or '[index]', got {rest!r}"
            )
        arg = a.group(1) if a.group(1) is not None else int(a.group(2))
        rest = rest[a.end() :]
    return Site(site, m["path"], call, steps, part, arg, _parse_elements(rest, site))
