"""Reading and replacing the activation a site names inside one module call.

Shared by :func:`jaxinterp.capture.capture` and :mod:`jaxinterp.interventions`: the argument
of ``:input`` sites (first array argument, by name, by position), elements of output pytrees
(``[1]``, ``['key']``, ``.name``), the step selection of sites inside scans, and the *head
layout* of a site.

**Head layouts.** Attention implementations keep the per-head results in one of two layouts:
``[batch, seq, head, d_head]`` (Flax's ``MultiHeadDotProductAttention``/``MultiHeadAttention``,
the input of their ``out`` projection) or merged ``[batch, seq, head·d_head]`` (Hugging Face
Flax GPT-2/BERT/ViT merge the heads before their output projection ``c_proj`` / ``output/dense``).
An index on axis ``-2`` means *head* in the first and *position* in the second, so a per-head
site says which layout it expects, after a ``|``:

* ``"block_0/attn/out:input|per_head"``: the activation must be ``[batch, seq, head, d_head]``
  (at least 4 axes); a 3-axis activation raises ``ValueError`` instead of silently selecting
  positions (under an outer ``jax.vmap`` over examples the batch axis is invisible: write the
  site without ``|per_head`` there).
* ``"transformer/h/0/attn/c_proj:input|heads=12"``: the last axis merges 12 heads; the site
  is *viewed* as ``[batch, seq, 12, d_head]``: recorded in that shape, and an edit receives and
  returns that view, which is merged back before the module runs. It must have at most 3 axes
  (a 4-axis activation already has a head axis and raises).

**Ambiguous edits.** A module called several times in one forward pass (a shared module, one
reached under several names, a loop) has one site per call (``mlp``, ``mlp@1``, ...). An edit
whose site has no ``@K`` would change the first call only, so it raises ``ValueError`` asking
for ``@K`` (one call) or ``@*`` (every call). (Inside a scan calls are counted per step, so a
module called once per layer is not ambiguous.)
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxinterp.capture._hooks import (
    LOST_PATTERNS,
    Call,
    current_call,
    on_mapped,
    record,
    run_with_hook,
)
from jaxinterp.capture._paths import _GLOB_CHARS, Site, as_matcher, parse_site, scan_hint


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type)


def _method_params(module: Any, path: str) -> list[str]:
    name = path.rsplit("/", 1)[-1]
    method = name.split(".", 1)[1] if "." in name else "__call__"
    fn = getattr(type(module), method, None)
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    params = list(sig.parameters.values())[1:]  # drop self
    return [
        p.name
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]


def find_input(site: Site, module: Any, path: str, args: Sequence, kwargs: Mapping) -> tuple:
    """Where the argument of an ``:input`` site is: ``("pos", i)`` or ``("kw", name)``.

    Raises:
      ValueError: no such argument; the message starts with ``site:`` and lists the call's
        arguments.
    """
    listing = (
        f"the call of {path!r} got {len(args)} positional argument(s) "
        f"({', '.join(type(a).__name__ for a in args) or 'none'}) and keyword arguments "
        f"{sorted(kwargs) or 'none'}"
    )
    if site.arg is None:
        for i, a in enumerate(args):
            if _is_array(a):
                return ("pos", i)
        for k, v in kwargs.items():
            if _is_array(v):
                return ("kw", k)
        raise ValueError(f"site: {site.text!r}: no array argument; {listing}")
    if isinstance(site.arg, int):
        if site.arg >= len(args):
            raise ValueError(
                f"site: {site.text!r}: expected a positional argument {site.arg}; {listing}"
            )
        return ("pos", site.arg)
    if site.arg in kwargs:
        return ("kw", site.arg)
    params = _method_params(module, path)
    if site.arg in params and params.index(site.arg) < len(args):
        return ("pos", params.index(site.arg))
    raise ValueError(
        f"site: {site.text!r}: no argument named {site.arg!r}; {listing}"
        + (f" (parameters: {params})" if params else "")
    )


def get_input(where: tuple, args: Sequence, kwargs: Mapping) -> Any:
    return args[where[1]] if where[0] == "pos" else kwargs[where[1]]


def set_input(where: tuple, args: Sequence, kwargs: Mapping, value: Any) -> tuple[tuple, dict]:
    args, kwargs = list(args), dict(kwargs)
    if where[0] == "pos":
        args[where[1]] = value
    else:
        kwargs[where[1]] = value
    return tuple(args), kwargs


def _describe_key(key: object) -> str:
    if isinstance(key, tuple):
        return f".{key[1]}"
    return f"[{key!r}]"


def get_element(tree: Any, element: tuple, site: Site) -> Any:
    """``tree[e0][e1]...`` (attributes for ``("attr", name)`` keys).

    Raises:
      ValueError: a key does not exist; the message starts with ``site:``.
    """
    x = tree
    for i, key in enumerate(element):
        try:
            if isinstance(key, tuple):
                x = getattr(x, key[1])
            elif isinstance(key, str):
                x = x[key]
            else:
                if isinstance(x, Mapping) and not hasattr(x, "to_tuple"):
                    raise TypeError("a mapping")
                n = getattr(x, "shape", (None,))[:1]
                if n and n[0] is not None and not -n[0] <= key < n[0]:  # jnp would clamp
                    raise IndexError(f"index {key} is out of range for axis 0 of size {n[0]}")
                x = x[_output_key(x, key)] if hasattr(x, "to_tuple") else x[key]
        except (KeyError, IndexError, AttributeError, TypeError) as err:
            done = "".join(_describe_key(k) for k in element[:i])
            raise ValueError(
                f"site: {site.text!r}: the {site.part}{done} is a {type(x).__name__} with no "
                f"element {_describe_key(key)} ({type(err).__name__}: {err})"
            ) from None
    return x


def _output_key(x: Any, index: int) -> str:
    """The field name of element ``index`` of a Hugging Face ``ModelOutput``.

    Its ``to_tuple()`` and integer indexing skip the fields that are ``None``, so ``[1]`` is the
    second field that is set, not the second declared field.
    """
    names = list(x.keys())
    try:
        return names[index]
    except IndexError:
        raise IndexError(f"{type(x).__name__} has {len(names)} set fields {names}") from None


def _replace_one(x: Any, key: object, value: Any) -> Any:
    if hasattr(x, "to_tuple") and dataclasses.is_dataclass(x) and isinstance(key, int):
        key = _output_key(x, key)
    if (
        isinstance(key, str)
        and dataclasses.is_dataclass(x)
        and key in {f.name for f in dataclasses.fields(x)}
    ):
        return dataclasses.replace(x, **{key: value})  # HF ModelOutput: a dataclass and a dict
    if isinstance(key, tuple):
        name = key[1]
        if hasattr(x, "replace") and callable(x.replace) and not isinstance(x, str):
            try:
                return x.replace(**{name: value})  # flax.struct dataclasses
            except TypeError:
                pass
        if dataclasses.is_dataclass(x):
            return dataclasses.replace(x, **{name: value})
        raise TypeError(f"cannot replace attribute {name!r} of a {type(x).__name__}")
    if isinstance(key, str):
        if isinstance(x, Mapping):
            new = dict(x)
            new[key] = value
            try:
                return type(x)(new)
            except TypeError:
                return new
        raise TypeError(f"cannot replace key {key!r} of a {type(x).__name__}")
    if hasattr(x, "_fields"):  # namedtuple
        return x._replace(**{x._fields[key]: value})
    if isinstance(x, (tuple, list)):
        items = list(x)
        items[key] = value
        return type(x)(items)
    if dataclasses.is_dataclass(x):
        fields = [f.name for f in dataclasses.fields(x)]
        return dataclasses.replace(x, **{fields[key]: value})
    raise TypeError(f"cannot replace element {key} of a {type(x).__name__}")


def set_element(tree: Any, element: tuple, value: Any, site: Site) -> Any:
    """A copy of ``tree`` with ``tree[e0][e1]...`` replaced by ``value``."""
    if not element:
        return value
    inner = get_element(tree, element[:1], site)
    new_inner = set_element(inner, element[1:], value, site)
    try:
        return _replace_one(tree, element[0], new_inner)
    except (TypeError, AttributeError, ValueError) as err:  # frozen dataclasses: AttributeError
        raise ValueError(
            f"site: {site.text!r}: cannot put the edited element back into the "
            f"{type(tree).__name__} ({type(err).__name__}: {err})"
        ) from None


def check_same(site: str, old: Any, new: Any, what: str = "edits") -> None:
    """Raises ``ValueError`` unless ``new`` has ``old``'s tree structure, shapes and dtypes."""
    t_old, t_new = jax.tree.structure(old), jax.tree.structure(new)
    if t_old != t_new:
        raise ValueError(
            f"{what}: the edit for {site!r} returned a {t_new}, expected the structure {t_old}"
        )
    for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)):
        if jnp.shape(a) != jnp.shape(b) or jnp.result_type(a) != jnp.result_type(b):
            raise ValueError(
                f"{what}: the edit for {site!r} returned shape {jnp.shape(b)} "
                f"{jnp.result_type(b)}, expected {jnp.shape(a)} {jnp.result_type(a)}"
            )


def step_mask(site: Site, call: Call) -> jax.Array | None:
    """``True`` at the scan steps ``site`` names (``None``: every step); checks the ranges.

    Raises:
      ValueError: more step indices than enclosing scans, or an index past a scan's length.
    """
    if not site.steps:
        return None
    if len(site.steps) > len(call.steps):
        raise ValueError(
            f"site: {site.text!r} names {len(site.steps)} scan step(s), but {call.key!r} runs "
            f"inside {len(call.steps)} scan(s)"
        )
    ok = jnp.asarray(True)
    for j, (want, size) in enumerate(zip(site.steps, call.sizes)):
        if want >= size:
            raise ValueError(
                f"site: {site.text!r}: step {want} of scan {j} is out of range: expected an "
                f"int in [0, {size - 1}]"
            )
        ok = ok & (call.steps[j] == want)
    return ok


def select_steps(site: Site, value: Any, axes: tuple[str, ...]) -> Any:
    """The slice of a stacked record a site names.

    ``axes`` are the record's leading axes (:attr:`Call.axes`: ``"scan"`` / ``"vmap"``,
    outermost first); ``[STEP]`` indices pick the ``"scan"`` axes in order, the ``"vmap"``
    axes (members of ``nn.vmap``) stay.
    """
    if not site.steps:
        return value
    scans = [i for i, kind in enumerate(axes) if kind == "scan"]
    if len(site.steps) > len(scans):
        raise ValueError(
            f"site: {site.text!r} names {len(site.steps)} scan step(s), but it runs inside "
            f"{len(scans)} scan(s)"
        )

    def take(leaf):
        for j, want in enumerate(site.steps):
            axis = scans[j] - j  # the scan axes before it are gone
            size = jnp.shape(leaf)[axis]
            if want >= size:
                raise ValueError(
                    f"site: {site.text!r}: step {want} of scan {j} is out of range: expected "
                    f"an int in [0, {size - 1}]"
                )
            leaf = jnp.take(leaf, want, axis=axis)
        return leaf

    return jax.tree.map(take, value)


class Layout(NamedTuple):
    """The head layout a site declares after ``|`` (module docstring).

    Attributes:
      heads: ``0`` for ``|per_head`` (the activation must already be ``[..., head, d_head]``
        with at least 4 axes); ``N >= 1`` for ``|heads=N`` (the last axis merges ``N`` heads and
        is viewed as ``[..., N, d_head]``).
    """

    heads: int

    def suffix(self) -> str:
        return "|per_head" if self.heads == 0 else f"|heads={self.heads}"


_LAYOUT_RE = re.compile(r"\|(?:(?P<per>per_head)|heads=(?P<n>\d+))\Z")


def split_layout(text: Any) -> tuple[Any, Layout | None]:
    """Splits ``"SITE|per_head"`` / ``"SITE|heads=N"`` into the site and its :class:`Layout`.

    Raises:
      ValueError: a ``|`` suffix that is neither; the message starts with ``site:``.

    >>> split_layout("h/0/attn/c_proj:input|heads=12")
    ('h/0/attn/c_proj:input', Layout(heads=12))
    >>> split_layout("block_0/attn/out:input")
    ('block_0/attn/out:input', None)
    """
    if not isinstance(text, str) or "|" not in text:
        return text, None
    base, _, _ = text.partition("|")
    m = _LAYOUT_RE.match(text, len(base))
    if m is None or (m["n"] is not None and int(m["n"]) < 1):
        raise ValueError(
            f"site: {text!r}: after '|' expected the head layout 'per_head' or 'heads=N' "
            f"(N >= 1 heads merged into the last axis), got {text[len(base) :]!r}"
        )
    return base, Layout(0 if m["per"] else int(m["n"]))


def parse_layout_site(text: Any) -> tuple[Site, Layout | None]:
    """:func:`jaxinterp.capture.parse_site` for a site that may carry a head layout."""
    base, layout = split_layout(text)
    return parse_site(base), layout


def _shape_str(x: Any) -> str:
    return f"{jnp.result_type(x)}{list(jnp.shape(x))}"


def describe(value: Any) -> str:
    """A short description of a pytree: ``"tuple (None, float32[2, 4])"``."""
    if _is_array(value):
        return _shape_str(value)
    if isinstance(value, (tuple, list)):
        items = ", ".join("None" if v is None else describe(v) for v in value)
        return f"{type(value).__name__} ({items})"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} with keys {list(value)}"
    if dataclasses.is_dataclass(value):
        return f"{type(value).__name__} with fields {[f.name for f in dataclasses.fields(value)]}"
    return type(value).__name__


_PER_HEAD_HINT = (
    "if the heads are merged into the last axis ([batch, seq, head·d_head], as Hugging Face "
    "Flax GPT-2/BERT/ViT keep them before the attention output projection), write the site "
    "with '|heads=N' (head_sites(..., merged=True)), or the edit with heads=N"
)


def to_view(value: Any, layout: Layout | None, text: str, what: str) -> Any:
    """The activation as the site's layout shows it (checked; merged heads split).

    Raises:
      ValueError: the activation does not have the declared layout; the message starts
        with ``what`` (the caller's argument: ``edits`` or ``sites``).
    """
    if layout is None:
        return value
    if not _is_array(value):
        raise ValueError(
            f"{what}: {text!r}: a head layout needs one array, but the site is a "
            f"{describe(value)}; name one element of it (':output[0]')"
        )
    shape = tuple(value.shape)
    if layout.heads == 0:
        if len(shape) < 4:
            raise ValueError(
                f"{what}: {text!r} expects per-head activations [batch, seq, head, d_head] "
                f"(4 axes), got shape {shape}; {_PER_HEAD_HINT}"
            )
        return value
    n = layout.heads
    if len(shape) > 3:
        raise ValueError(
            f"{what}: {text!r} expects heads merged into the last axis [batch, seq, "
            f"head·d_head] (at most 3 axes), got shape {shape}, which already has a head axis; "
            "write the site with '|per_head' instead of '|heads=N'"
        )
    if len(shape) < 1 or shape[-1] % n:
        raise ValueError(
            f"{what}: {text!r}: the last axis of shape {shape} does not split into {n} heads "
            f"(expected [batch, seq, head·d_head] with a multiple of {n} last)"
        )
    return value.reshape(shape[:-1] + (n, shape[-1] // n))


def _view_like(layout: Layout | None) -> Callable[[Any], Any]:
    """One member's :func:`to_view` shapes, unchecked (see :func:`on_mapped`'s ``like``)."""

    def like(value):
        if layout is None or layout.heads == 0 or not _is_array(value):
            return value
        shape = tuple(value.shape)
        if len(shape) < 1 or shape[-1] % layout.heads:
            return value  # to_view raises with the site named
        return value.reshape(shape[:-1] + (layout.heads, shape[-1] // layout.heads))

    return like


def from_view(view: Any, old: Any, layout: Layout | None) -> Any:
    """Merges a view made by :func:`to_view` back into ``old``'s shape."""
    if layout is None or layout.heads == 0:
        return view
    return view.reshape(old.shape)


def _explicit_call(site: Site) -> bool:
    """Whether the site names its call (``@K`` or ``@*``) rather than defaulting to ``@0``."""
    return site.text[len(site.path) :].startswith("@")


class _Edit(NamedTuple):
    text: str
    site: Site
    layout: Layout | None
    match: Callable[[str], bool]
    fn: Any


class _Rec(NamedTuple):
    text: str
    site: Site
    layout: Layout | None
    match: Callable[[str], bool] | None = None  # for a glob path: matches concrete paths

    def hits(self, path: str, call: Call) -> bool:
        if self.site.call != call.index:
            return False
        return self.site.path == path if self.match is None else self.match(path)

    def concrete(self, path: str) -> str:
        """The site text with the glob path replaced by the concrete ``path``."""
        return path + self.text[len(self.site.path) :]


def _check_edits(edits: Mapping[str, Any]) -> list[_Edit]:
    if not isinstance(edits, Mapping):
        raise TypeError(f"edits: expected a mapping {{site: edit}}, got {type(edits).__name__}")
    parsed = []
    for text, fn in edits.items():
        site, layout = parse_layout_site(text)
        if not callable(fn):
            raise TypeError(
                f"edits: the edit for {text!r} must be callable, got {type(fn).__name__}"
            )
        parsed.append(_Edit(text, site, layout, as_matcher(site.path), fn))
    return parsed


def _check_rec(sites: Any) -> list[_Rec]:
    if isinstance(sites, str):
        sites = [sites]
    try:
        sites = list(sites)
    except TypeError:
        raise TypeError(
            f"sites: expected a sequence of site strings, got {type(sites).__name__}"
        ) from None
    parsed = []
    for t in sites:
        site, layout = parse_layout_site(t)
        if site.call is None:
            raise ValueError(f"sites: {t!r}: name one call ('@0', '@1', ...), not '@*'")
        glob = bool(set(site.path) & _GLOB_CHARS)
        parsed.append(_Rec(t, site, layout, as_matcher(site.path) if glob else None))
    return parsed


def check_sites(sites: Any) -> list[Site]:
    """Parses the sites to record (paths or globs, one call each; a head layout is allowed).

    Returns:
      The parsed sites, without their head layouts.

    Raises:
      TypeError: not a sequence of strings.
      ValueError: a site that cannot be read, or ``@*``.
    """
    return [r.site for r in _check_rec(sites)]


def _base_key(site: Site, layout: Layout | None = None) -> str:
    arg = "" if site.arg is None else f".{site.arg}"
    view = "" if layout is None else layout.suffix()
    return f"{site.key}:{site.part}{arg}{site.element!r}{view}"


def _array_edit_error(text: str, site: Site, value: Any) -> ValueError:
    hint = ""
    if isinstance(value, (tuple, list)):
        first = next((i for i, v in enumerate(value) if _is_array(v)), None)
        if first is not None:
            base = text.partition("|")[0]
            example = f"{base}[{first}]" if ":" in base else f"{base}:{site.part}[{first}]"
            hint = f", e.g. {example!r}"
    return ValueError(
        f"edits: the edit for {text!r} (zero/mean/resample/replace) takes one array, but the "
        f"site is a {describe(value)}; name one element of it in the site{hint}"
    )


def run_sites(
    model: Any,
    variables: Any,
    *args: Any,
    edits: Mapping[str, Callable[[Any], Any]] | None = None,
    sites: Sequence[str] = (),
    method: str | Callable[..., Any] | None = None,
    methods: Collection[str] | None = None,
    mutable: Any = False,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Runs the model once, applying ``edits`` and recording ``sites``; the core of interventions.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      *args: the model's positional inputs.
      edits: ``{site: act -> new act}``; a site's path may be a glob; the edit receives the
        activation the site names (for a site inside a scan: one step's activation; for a
        ``|heads=N`` site the ``[..., N, d_head]`` view) and must return the same pytree
        structure, shapes and dtypes. A site without ``@K`` on a module called several times
        raises (name ``@K`` or ``@*``).
      sites: sites to record (see :mod:`jaxinterp.capture._paths` for the syntax; a
        head layout ``|per_head`` / ``|heads=N`` may follow, see the module docstring). The
        path may be a glob (``"block_*:input"``): it expands to every matching module's call
        (``@K``, default the first) in call order, recorded under the concrete site
        (``"block_0:input"``, ...).
      method: the model method to run.
      methods: submodule methods hooked besides ``__call__``.
      mutable: linen only, as in ``model.apply``: collections the call may update
        (``["cache"]``, ``["batch_stats"]``); the output is then ``(output, updated_variables)``.
        nnx state changes are written back into the module, as its own call does.
      **kwargs: the model's keyword inputs.

    Returns:
      ``(output, {site: activation})``, concrete sites in the order given (a glob's matches
      in call order); an activation is taken after the edits at that site; inside a scan it
      is stacked ``[step, ...]`` unless the site names a step.

    Raises:
      KeyError: a site (or glob) matches no module call; the message lists the available
        call keys.
      ValueError: a bad site suffix, an edit that changes structure/shape/dtype, a step out of
        range, a recorded site inside a transform values cannot leave (``lax.cond``), an
        activation without the head layout its site declares, an edit without ``@K`` on a
        module called several times, or an array edit (``zero``, ...) on a tuple output.

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> out, acts = run_sites(model, variables, jnp.ones((5, 4)),
    ...                       edits={"layers_0": jnp.zeros_like}, sites=["layers_2:input"])
    >>> float(jnp.abs(acts["layers_2:input"]).max())
    0.0
    """
    parsed_edits = _check_edits(edits or {})
    parsed_rec = _check_rec(sites)
    hits: set[str] = set()
    unstepped: set[str] = set()
    seen: list[str] = []
    depth: dict[str, tuple[str, ...]] = {}  # record key -> Call.axes
    ambiguous: dict[str, list[str]] = {}
    expanded: dict[str, dict[str, str]] = {}  # glob site -> {concrete site: record key}

    def wanted(e: _Edit, call) -> bool:
        if e.site.call is not None and e.site.call != call.index:
            if (
                e.site.call == 0
                and call.index > 0
                and not _explicit_call(e.site)
                and e.match(call.path)
            ):
                ambiguous.setdefault(e.text, []).append(call.key)
            return False
        return e.match(call.path)

    def edit(e: _Edit, value, call):
        if len(e.site.steps) > len(call.steps) and not call.carried:
            # a trace jaxinterp does not route (Flax's constancy check of nn.scan traces the
            # body once outside lax.scan; a fori_loop): no step index to select with here.
            unstepped.add(e.text)
            return value
        mask = step_mask(e.site, call)

        def apply(value):  # on the value as capture reports it (routed vmaps: members first)
            view = to_view(value, e.layout, e.text, "edits")
            if getattr(e.fn, "array_edit", False) and not _is_array(view):
                raise _array_edit_error(e.text, e.site, view)
            new = e.fn(view)
            check_same(e.text, view, new)
            return from_view(new, value, e.layout)

        new = on_mapped(apply, call)(value)
        hits.add(e.text)
        if mask is not None:
            new = jax.tree.map(lambda n, o: jnp.where(mask, n, o), new, value)
        return new

    def rec(r: _Rec, value, call):
        site = r.site if r.match is None else r.site._replace(path=call.path)
        key = _base_key(site, r.layout)
        if r.match is not None:
            expanded.setdefault(r.text, {}).setdefault(r.concrete(call.path), key)
        depth[key] = call.axes
        el = get_element(value, r.site.element, r.site)
        view = on_mapped(
            lambda v: to_view(v, r.layout, r.text, "sites"), call, _view_like(r.layout)
        )
        record(key, view(el))

    def around(path, module, call_next, a, k):
        call = current_call()
        seen.append(call.key)
        mine = [e for e in parsed_edits if wanted(e, call)]
        for e in mine:
            if e.site.part != "input":
                continue
            where = find_input(e.site, module, path, a, k)
            old = get_input(where, a, k)
            el = get_element(old, e.site.element, e.site)
            a, k = set_input(
                where, a, k, set_element(old, e.site.element, edit(e, el, call), e.site)
            )
        for r in parsed_rec:
            if r.site.part == "input" and r.hits(path, call):
                rec(r, get_input(find_input(r.site, module, path, a, k), a, k), call)
        out = call_next(*a, **k)
        for e in mine:
            if e.site.part == "output":
                old = get_element(out, e.site.element, e.site)
                out = set_element(out, e.site.element, edit(e, old, call), e.site)
        for r in parsed_rec:
            if r.site.part == "output" and r.hits(path, call):
                rec(r, out, call)
        return out

    out, recs = run_with_hook(
        model, variables, around, *args, method=method, methods=methods, mutable=mutable, **kwargs
    )
    listing = ", ".join(repr(p) for p in dict.fromkeys(seen)) or "(none: no submodule calls)"
    for e in parsed_edits:
        text = e.text
        if text not in hits and text in unstepped:
            raise ValueError(
                f"site: {text!r} names a scan step, but the module runs inside a loop jaxinterp "
                "does not route (lax.fori_loop, lax.while_loop, lax.map); write the loop with "
                "lax.scan, nn.scan or nnx.scan, or edit every step (no [step])"
            )
        if text not in hits:
            raise KeyError(
                f"edits: site {text!r} matches no submodule call{scan_hint(text, seen)}. "
                f"Available paths: {listing}"
            )
        if text in ambiguous:
            later = list(dict.fromkeys(ambiguous[text]))
            first = [k.rsplit("@", 1)[0] for k in later]
            keys = ", ".join(repr(k) for k in dict.fromkeys([*first, *later]))
            base = e.site.path
            raise ValueError(
                f"edits: site {text!r} names a module that runs several times in one forward "
                f"pass ({keys}: a shared module, one reached under several names, or a loop); "
                f"without '@K' the edit would change the first call only. Name the call "
                f"({base + '@0'!r}, {base + '@1'!r}, ...) or every call ({base + '@*'!r})"
            )
    result = {}
    for r in parsed_rec:
        if r.match is None:
            found = {r.text: _base_key(r.site, r.layout)}
        else:
            found = expanded.get(r.text, {})
            if not found:
                raise KeyError(
                    f"sites: pattern {r.text!r} matches no submodule call"
                    f"{scan_hint(r.text, seen)}. Available paths: {listing}"
                )
        for text, key in found.items():
            if key in recs.lost and recs.bypassed:
                raise ValueError(f"sites: {text!r} cannot be recorded: " + " ".join(recs.bypassed))
            if key in recs.lost:
                raise ValueError(
                    f"sites: {text!r} is called inside a JAX transform whose values jaxinterp "
                    f"cannot carry out: {LOST_PATTERNS}. Record the enclosing module instead "
                    "(edits at this site still apply)"
                )
            if key not in recs:
                raise KeyError(
                    f"sites: {text!r} is not a submodule path. Available paths: {listing}"
                )
            result[text] = select_steps(r.site, recs[key], depth[key])
    return out, result
