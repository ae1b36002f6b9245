"""Interventions on Flax linen and nnx models by canonical path, without editing model code.

:func:`intervene` turns a model and a mapping ``{site: edit}`` into a pure function of the
model's inputs that returns the model output with the edits applied. It is one ``around`` hook
for :func:`jaxinterp.capture.apply_with_hook`, so it works identically on linen and nnx models
and composes with ``jit``, ``vmap`` and ``grad``.

A *site* names an activation by the canonical path of a submodule:

* ``"block_0/mlp"`` is the module's **output** (the edit returns the new output);
* ``"block_0/attn/out:input"`` is its first positional **input**: the edit changes the
  argument before the module runs. This is how per-head interventions are written: the input
  of the attention output projection is the per-head result ``[batch, seq, head, d_head]`` in
  both ``nn.MultiHeadDotProductAttention`` and ``nnx.MultiHeadAttention``.

The path part may be a glob (``"block_*/attn"``). A site that matches no submodule raises
``KeyError`` listing the available paths, and an edit that changes the shape or dtype raises
``ValueError`` naming the site, both at trace time.

:func:`capture_sites` records the activations at sites (inputs or outputs), optionally while
edits are applied; for output sites it returns what :func:`jaxinterp.capture.capture` returns.
It exists next to ``capture`` because ``capture`` records module outputs only, while per-head
patching needs the input of ``attn/out``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxinterp.capture import apply_with_hook, as_matcher
from jaxinterp.interventions._edits import Edit

INPUT_SUFFIX = ":input"


def split_site(site: str) -> tuple[str, bool]:
    """Splits ``"path:input"`` into ``("path", True)`` and ``"path"`` into ``("path", False)``.

    >>> split_site("block_0/attn/out:input")
    ('block_0/attn/out', True)
    """
    if not isinstance(site, str) or not site:
        raise TypeError(f"site: expected a non-empty path string, got {site!r}")
    if site.endswith(INPUT_SUFFIX):
        return site[: -len(INPUT_SUFFIX)], True
    if ":" in site:
        raise ValueError(f"site: {site!r}: the only suffix allowed is {INPUT_SUFFIX!r}")
    return site, False


def _run(
    model: Any,
    variables: Any,
    edits: Mapping[str, Edit],
    record: Sequence[str],
    method: str | None,
    args: tuple,
    kwargs: dict,
) -> tuple[Any, dict[str, jax.Array]]:
    parsed_edits = []
    for site, fn in edits.items():
        if not callable(fn):
            raise TypeError(
                f"edits: the edit for {site!r} must be callable, got {type(fn).__name__}"
            )
        path, is_input = split_site(site)
        parsed_edits.append((site, as_matcher(path), is_input, fn))
    parsed_rec = [(site, *split_site(site)) for site in record]
    rec_exact = {(p, i): s for s, p, i in parsed_rec}
    recorded: dict[str, jax.Array] = {}
    hits: set[str] = set()
    seen: list[str] = []

    def apply_edits(path: str, value: Any, want_input: bool) -> Any:
        for site, match, is_input, fn in parsed_edits:
            if is_input == want_input and match(path):
                hits.add(site)
                new = fn(value)
                old_shape, old_dtype = jnp.shape(value), jnp.result_type(value)
                if jnp.shape(new) != old_shape or jnp.result_type(new) != old_dtype:
                    raise ValueError(
                        f"edits: the edit for {site!r} returned shape {jnp.shape(new)} "
                        f"{jnp.result_type(new)}, expected {old_shape} {old_dtype}"
                    )
                value = new
        return value

    def around(path, module, call_next, a, k):
        if path not in seen:
            seen.append(path)
        if (path, True) in rec_exact or any(i and m(path) for _, m, i, _ in parsed_edits):
            if not a:
                raise ValueError(
                    f"site: {path + INPUT_SUFFIX!r}: the module was called without a "
                    "positional input"
                )
            first = apply_edits(path, a[0], True)
            a = (first, *a[1:])
            if (path, True) in rec_exact:
                recorded.setdefault(rec_exact[(path, True)], first)
        out = call_next(*a, **k)
        out = apply_edits(path, out, False)
        if (path, False) in rec_exact:
            recorded.setdefault(rec_exact[(path, False)], out)
        return out

    out = apply_with_hook(model, variables, around, *args, method=method, **kwargs)
    listing = ", ".join(repr(p) for p in seen)
    for site, _, _, _ in parsed_edits:
        if site not in hits:
            raise KeyError(f"edits: site {site!r} matches no submodule. Available paths: {listing}")
    for site in record:
        if site not in recorded:
            raise KeyError(f"sites: {site!r} is not a submodule path. Available paths: {listing}")
    return out, recorded


def intervene(
    model: Any,
    variables: Any,
    edits: Mapping[str, Edit],
    *,
    method: str | None = None,
) -> Callable[..., Any]:
    """Returns ``f(*args, **kwargs) -> output`` of the model with ``edits`` applied.

    Args:
      model: a ``flax.linen.Module`` (with ``variables``) or a ``flax.nnx.Module``
        (``variables=None``). Neither the model nor its variables are changed.
      variables: linen variables (``{"params": ...}``), or ``None`` for nnx.
      edits: ``{site: edit}``; a site is a canonical path (glob allowed) naming a module output,
        or ``"path:input"`` naming its first positional input; an edit is
        ``act -> new act`` of the same shape and dtype (see :func:`zero`, :func:`mean`,
        :func:`resample`, :func:`replace`, or any function). Several edits matching one
        activation are applied in mapping order.
      method: the model method to run (default ``__call__``).

    Returns:
      A pure function of the model's inputs (e.g. ``tokens: [batch, seq]``) returning the
      model's output (e.g. logits ``[batch, seq, vocab]``).

    Raises:
      KeyError: (when ``f`` is traced) a site matches no submodule; lists available paths.
      ValueError: (when ``f`` is traced) an edit changed its activation's shape or dtype.

    >>> import flax.linen as nn
    >>> from jaxinterp.interventions import zero
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> f = jax.jit(intervene(model, variables, {"layers_0": zero()}))
    >>> bias = variables["params"]["layers_2"]["bias"]
    >>> bool(jnp.allclose(f(jnp.ones((5, 4))), bias))
    True
    """
    edits = dict(edits)

    def f(*args: Any, **kwargs: Any) -> Any:
        return _run(model, variables, edits, (), method, args, kwargs)[0]

    return f


def capture_sites(
    model: Any,
    variables: Any,
    sites: Sequence[str],
    *,
    edits: Mapping[str, Edit] | None = None,
    method: str | None = None,
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """Returns ``f(*args) -> (output, {site: activation})`` recording inputs or outputs.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      sites: exact canonical paths (module outputs) or ``"path:input"`` (first positional
        input), e.g. ``["block_0/attn/out:input", "block_1"]``.
      edits: optional ``{site: edit}`` applied during the same run; recorded activations are
        the values after the edits at that site.
      method: the model method to run.

    Returns:
      A pure function; activations keep the shapes the model gives them (per-head results:
      ``[batch, seq, head, d_head]``; residual stream: ``[batch, seq, d_model]``). A module
      called several times is recorded at its first call.

    Raises:
      KeyError: a site is not a submodule path (lists available paths).
    """
    if isinstance(sites, str):
        sites = [sites]
    sites = list(sites)
    for s in sites:
        split_site(s)
    edits = dict(edits or {})

    def f(*args: Any, **kwargs: Any) -> tuple[Any, dict[str, jax.Array]]:
        return _run(model, variables, edits, sites, method, args, kwargs)

    return f
