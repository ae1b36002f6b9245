"""Reading and replacing the activation a site names inside one module call.

Shared by :func:`jaxinterp.capture.capture` and :mod:`jaxinterp.interventions`: the argument
of ``:input`` sites (first array argument, by name, by position), elements of output pytrees
(``[1]``, ``['key']``, ``.name``), and the step selection of sites inside scans.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.capture._hooks import LOST_PATTERNS, Call, current_call, record, run_with_hook
from jaxinterp.capture._paths import Site, as_matcher, parse_site


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
                x = x.to_tuple()[key] if hasattr(x, "to_tuple") else x[key]
        except (KeyError, IndexError, AttributeError, TypeError) as err:
            done = "".join(_describe_key(k) for k in element[:i])
            raise ValueError(
                f"site: {site.text!r}: the {site.part}{done} is a {type(x).__name__} with no "
                f"element {_describe_key(key)} ({type(err).__name__}: {err})"
            ) from None
    return x


def _replace_one(x: Any, key: object, value: Any) -> Any:
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
    except TypeError as err:
        raise ValueError(f"site: {site.text!r}: {err}") from None


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


def select_steps(site: Site, value: Any, depth: int) -> Any:
    """The slice of a stacked record (``[step_0, ..., step_{depth-1}, ...]``) a site names."""
    if not site.steps:
        return value
    if len(site.steps) > depth:
        raise ValueError(
            f"site: {site.text!r} names {len(site.steps)} scan step(s), but it runs inside "
            f"{depth} scan(s)"
        )

    def take(leaf):
        for j, want in enumerate(site.steps):
            size = jnp.shape(leaf)[0]
            if want >= size:
                raise ValueError(
                    f"site: {site.text!r}: step {want} of scan {j} is out of range: expected "
                    f"an int in [0, {size - 1}]"
                )
            leaf = leaf[want]
        return leaf

    return jax.tree.map(take, value)


def _check_edits(edits: Mapping[str, Any]) -> list[tuple[str, Site, Callable[[str], bool], Any]]:
    if not isinstance(edits, Mapping):
        raise TypeError(f"edits: expected a mapping {{site: edit}}, got {type(edits).__name__}")
    parsed = []
    for text, fn in edits.items():
        site = parse_site(text)
        if not callable(fn):
            raise TypeError(
                f"edits: the edit for {text!r} must be callable, got {type(fn).__name__}"
            )
        parsed.append((text, site, as_matcher(site.path), fn))
    return parsed


def check_sites(sites: Any) -> list[Site]:
    """Parses the sites to record (exact paths, one call each).

    Raises:
      TypeError: not a sequence of strings.
      ValueError: a site that cannot be read, or ``@*``.
    """
    if isinstance(sites, str):
        sites = [sites]
    try:
        sites = list(sites)
    except TypeError:
        raise TypeError(
            f"sites: expected a sequence of site strings, got {type(sites).__name__}"
        ) from None
    parsed = [parse_site(s) for s in sites]
    for s in parsed:
        if s.call is None:
            raise ValueError(f"sites: {s.text!r}: name one call ('@0', '@1', ...), not '@*'")
    return parsed


def _base_key(site: Site) -> str:
    arg = "" if site.arg is None else f".{site.arg}"
    return f"{site.key}:{site.part}{arg}{site.element!r}"


def run_sites(
    model: Any,
    variables: Any,
    *args: Any,
    edits: Mapping[str, Callable[[Any], Any]] | None = None,
    sites: Sequence[str] = (),
    method: str | Callable[..., Any] | None = None,
    methods: Collection[str] | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Runs the model once, applying ``edits`` and recording ``sites``; the core of interventions.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      *args: the model's positional inputs.
      edits: ``{site: act -> new act}``; a site's path may be a glob; the edit receives the
        activation the site names (for a site inside a scan: one step's activation) and must
        return the same pytree structure, shapes and dtypes.
      sites: exact sites to record (see :mod:`jaxinterp.capture._paths` for the syntax).
      method: the model method to run.
      methods: submodule methods hooked besides ``__call__``.
      **kwargs: the model's keyword inputs.

    Returns:
      ``(output, {site: activation})``; an activation is taken after the edits at that site;
      inside a scan it is stacked ``[step, ...]`` unless the site names a step.

    Raises:
      KeyError: a site matches no module call; the message lists the available call keys.
      ValueError: a bad site suffix, an edit that changes structure/shape/dtype, a step out of
        range, or a recorded site inside a transform values cannot leave (``lax.cond``).

    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> out, acts = run_sites(model, variables, jnp.ones((5, 4)),
    ...                       edits={"layers_0": jnp.zeros_like}, sites=["layers_2:input"])
    >>> float(jnp.abs(acts["layers_2:input"]).max())
    0.0
    """
    parsed_edits = _check_edits(edits or {})
    parsed_rec = check_sites(sites)
    hits: set[str] = set()
    unstepped: set[str] = set()
    seen: list[str] = []
    depth: dict[str, int] = {}

    def wanted(site: Site, match, call) -> bool:
        if site.call is not None and site.call != call.index:
            return False
        return match(call.path)

    def edit(text, site, fn, value, call):
        if len(site.steps) > len(call.steps) and not call.carried:
            # a trace jaxinterp does not route (Flax's constancy check of nn.scan traces the
            # body once outside lax.scan; a fori_loop): no step index to select with here.
            unstepped.add(text)
            return value
        mask = step_mask(site, call)
        new = fn(value)
        check_same(text, value, new)
        hits.add(text)
        if mask is not None:
            new = jax.tree.map(lambda n, o: jnp.where(mask, n, o), new, value)
        return new

    def around(path, module, call_next, a, k):
        call = current_call()
        seen.append(call.key)
        e_in = [
            (t, s, fn) for t, s, m, fn in parsed_edits if s.part == "input" and wanted(s, m, call)
        ]
        r_in = [
            s for s in parsed_rec if s.part == "input" and s.path == path and s.call == call.index
        ]
        for text, site, fn in e_in:
            where = find_input(site, module, path, a, k)
            old = get_input(where, a, k)
            new = set_element(
                old,
                site.element,
                edit(text, site, fn, get_element(old, site.element, site), call),
                site,
            )
            a, k = set_input(where, a, k, new)
        for site in r_in:
            where = find_input(site, module, path, a, k)
            depth[_base_key(site)] = len(call.steps)
            record(_base_key(site), get_element(get_input(where, a, k), site.element, site))
        out = call_next(*a, **k)
        for text, site, match, fn in parsed_edits:
            if site.part == "output" and wanted(site, match, call):
                old = get_element(out, site.element, site)
                out = set_element(out, site.element, edit(text, site, fn, old, call), site)
        for site in parsed_rec:
            if site.part == "output" and site.path == path and site.call == call.index:
                depth[_base_key(site)] = len(call.steps)
                record(_base_key(site), get_element(out, site.element, site))
        return out

    out, recs = run_with_hook(
        model, variables, around, *args, method=method, methods=methods, **kwargs
    )
    listing = ", ".join(repr(p) for p in dict.fromkeys(seen)) or "(none: no submodule calls)"
    for text, _, _, _ in parsed_edits:
        if text not in hits and text in unstepped:
            raise ValueError(
                f"site: {text!r} names a scan step, but the module runs inside a loop jaxinterp "
                "does not route (lax.fori_loop, lax.while_loop, lax.map); write the loop with "
                "lax.scan, nn.scan or nnx.scan, or edit every step (no [step])"
            )
        if text not in hits:
            raise KeyError(
                f"edits: site {text!r} matches no submodule call. Available paths: {listing}"
            )
    result = {}
    for site in parsed_rec:
        key = _base_key(site)
        if key in recs.lost:
            raise ValueError(
                f"sites: {site.text!r} is called inside a JAX transform whose values jaxinterp "
                f"cannot carry out: {LOST_PATTERNS}. Record the enclosing module instead "
                "(edits at this site still apply)"
            )
        if key not in recs:
            raise KeyError(
                f"sites: {site.text!r} is not a submodule path. Available paths: {listing}"
            )
        result[site.text] = select_steps(site, recs[key], depth[key])
    return out, result
