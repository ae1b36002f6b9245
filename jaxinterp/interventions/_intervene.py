"""Interventions on Flax linen and nnx models by site, without editing model code.

:func:`intervene` turns a model and a mapping ``{site: edit}`` into a pure function of the
model's inputs that returns the model output with the edits applied. It is built on
:func:`jaxinterp.capture.run_sites` (one ``around`` hook for
:func:`jaxinterp.capture.run_with_hook`), so it works identically on linen and nnx models and
composes with ``jit``, ``vmap`` and ``grad``.

A *site* names one activation (full syntax in :mod:`jaxinterp.capture._paths`):

* ``"block_0/mlp"`` is the module's **output** (the edit returns the new output); for a module
  returning a tuple or other pytree, ``"block_0:output[1]"`` names one element of it;
* ``"block_0/attn/out:input"`` is its first **array argument** (positional, else keyword):
  the edit changes the argument before the module runs. ``":input.x"`` names the argument
  ``x`` (by keyword or position), ``":input[1]"`` the second positional one. Per-head
  interventions are written on the input of the attention output projection, the per-head
  result ``[batch, seq, head, d_head]`` in ``nn.MultiHeadDotProductAttention`` and
  ``nnx.MultiHeadAttention``;
* ``"mlp@2"`` is the third call of a module called several times (``"mlp"`` is the first,
  ``"mlp@*"`` every call) -- the same keys :func:`jaxinterp.capture.capture` records;
* inside ``nn.scan`` / ``nnx.scan`` stacks, ``"layers/attn"`` edits every layer (the edit sees
  one layer's activation) and ``"layers/attn[3]"`` layer 3 only;
* a head layout may follow after ``|``: ``"block_0/attn/out:input|per_head"`` checks the
  per-head layout ``[batch, seq, head, d_head]``, and
  ``"transformer/h/0/attn/c_proj:input|heads=12"`` views heads merged into the last axis
  (Hugging Face Flax GPT-2/BERT/ViT) as ``[batch, seq, 12, d_head]`` for the edit (see
  :mod:`jaxinterp.capture._sites`). Per-head edits on merged layouts can also be written
  ``zero(head=h, heads=12)``.

A site without ``@K`` on a module that runs several times in one forward pass (a shared
module, one reached under several names) is ambiguous for an edit: it raises ``ValueError``
asking for ``@K`` or ``@*`` instead of editing the first call only.

The path part may be a glob (``"block_*/attn"``). A site that matches no submodule raises
``KeyError`` listing the available calls, and an edit that changes the structure, shape or
dtype raises ``ValueError`` naming the site, both at trace time.

:func:`capture_sites` records the activations at sites (inputs, outputs, elements, single
layers of a scan), optionally while edits are applied.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp  # noqa: F401  (doctests)

from jaxinterp.capture import check_model, check_sites, parse_site, run_sites, split_layout
from jaxinterp.interventions._edits import Edit

INPUT_SUFFIX = ":input"


def split_site(site: str) -> tuple[str, bool]:
    """Splits a site into its path (with any ``@k`` / ``[step]``) and whether it is an input.

    Raises:
      TypeError, ValueError: the site cannot be read (see :func:`jaxinterp.capture.parse_site`).

    >>> split_site("block_0/attn/out:input")
    ('block_0/attn/out', True)
    >>> split_site("transformer/h/0/attn/c_proj:input|heads=12")
    ('transformer/h/0/attn/c_proj', True)
    """
    base, _ = split_layout(site)
    parsed = parse_site(base)
    head = base.split(":", 1)[0]
    return head, parsed.part == "input"


def _run(
    model: Any,
    variables: Any,
    edits: Mapping[str, Edit],
    record: Sequence[str],
    method: str | Callable[..., Any] | None,
    args: tuple,
    kwargs: dict,
) -> tuple[Any, dict[str, jax.Array]]:
    return run_sites(model, variables, *args, edits=edits, sites=record, method=method, **kwargs)


def intervene(
    model: Any,
    variables: Any,
    edits: Mapping[str, Edit],
    *,
    method: str | Callable[..., Any] | None = None,
    methods: Collection[str] | None = None,
    mutable: Any = False,
) -> Callable[..., Any]:
    """Returns ``f(*args, **kwargs) -> output`` of the model with ``edits`` applied.

    Args:
      model: a ``flax.linen.Module`` (with ``variables``) or a ``flax.nnx.Module``
        (``variables=None``). Neither the model nor its variables (nor nnx state such as
        BatchNorm statistics) are changed.
      variables: linen variables (``{"params": ...}``), or ``None`` for nnx.
      edits: ``{site: edit}``; a site names a module output, an element of it, or an input
        (see the module docstring; the path may be a glob); an edit is ``act -> new act`` of
        the same structure, shapes and dtypes (see :func:`zero`, :func:`mean`,
        :func:`resample`, :func:`replace`, or any function). Several edits matching one
        activation are applied in mapping order.
      method: the model method to run: a name or a callable (default ``__call__``).
      methods: submodule methods hooked besides ``__call__`` (``("encode", "decode")``);
        their sites are ``"path.method"`` (``"embedder.encode:input"``).
      mutable: linen only, as in ``model.apply``: collections the call may update
        (``["cache"]``, ``["batch_stats"]``); the output is then ``(output, updated_variables)``.
        nnx state changes are written back into the module, as its own call does.

    Returns:
      A pure function of the model's inputs (e.g. ``tokens: [batch, seq]``) returning the
      model's output (e.g. logits ``[batch, seq, vocab]``).

    Raises:
      TypeError: a bad ``model``/``variables`` pair, ``edits`` not a mapping of callables.
      KeyError: (when ``f`` is traced) a site matches no submodule call; lists the calls.
      ValueError: a site that cannot be read; (when ``f`` is traced) an edit changed its
        activation's structure, shape or dtype, or a scan step is out of range.

    >>> import flax.linen as nn
    >>> from jaxinterp.interventions import zero
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> f = jax.jit(intervene(model, variables, {"layers_0": zero()}))
    >>> bias = variables["params"]["layers_2"]["bias"]
    >>> bool(jnp.allclose(f(jnp.ones((5, 4))), bias))
    True
    """
    check_model(model, variables)
    if not isinstance(edits, Mapping):
        raise TypeError(f"edits: expected a mapping {{site: edit}}, got {type(edits).__name__}")
    edits = dict(edits)
    for site, fn in edits.items():
        parse_site(split_layout(site)[0])
        if not callable(fn):
            raise TypeError(
                f"edits: the edit for {site!r} must be callable, got {type(fn).__name__}"
            )

    def f(*args: Any, **kwargs: Any) -> Any:
        return run_sites(
            model,
            variables,
            *args,
            edits=edits,
            method=method,
            methods=methods,
            mutable=mutable,
            **kwargs,
        )[0]

    return f


def capture_sites(
    model: Any,
    variables: Any,
    sites: Sequence[str],
    *,
    edits: Mapping[str, Edit] | None = None,
    method: str | Callable[..., Any] | None = None,
    methods: Collection[str] | None = None,
    mutable: Any = False,
) -> Callable[..., tuple[Any, dict[str, jax.Array]]]:
    """Returns ``f(*args, **kwargs) -> (output, {site: activation})`` recording sites.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      sites: sites: module outputs, elements (``"block_0:output[1]"``), inputs
        (``"block_0/attn/out:input"``), later calls (``"mlp@2"``), single scan layers
        (``"layers/attn[3]"``). The path may be a glob, as in :func:`intervene` and
        :func:`jaxinterp.capture.capture`: ``"block_*:input"`` (the residual stream entering
        every block), ``"block_*/ln_2:input"`` (between attention and MLP),
        ``"block_*/attn/out:input|per_head"``; it expands to every matching module call
        (``@K``, default the first call of each) in call order.
      edits: optional ``{site: edit}`` applied during the same run; recorded activations are
        the values after the edits at that site.
      method: the model method to run.
      methods: submodule methods hooked besides ``__call__`` (sites ``"path.method"``).
      mutable: linen only, as in ``model.apply``: collections the call may update
        (``["cache"]``, ``["batch_stats"]``); the output is then ``(output, updated_variables)``.
        nnx state changes are written back into the module, as its own call does.

    Returns:
      A pure function; activations keep the shapes the model gives them (per-head results are
      ``[batch, seq, head, d_head]``; residual stream: ``[batch, seq, d_model]``; inside a
      scan ``[layer, ...]`` unless the site names a layer). Keys are the concrete sites: a
      glob's matches appear as ``"block_0:input"``, ``"block_1:input"``, ... (the keys the
      exact sites would have), in call order (``jax.jit`` sorts dict keys). ``"path"`` is
      the module's first call, ``"path@k"`` its call ``k``: the same keys as
      :func:`jaxinterp.capture.capture`.

    Raises:
      TypeError, ValueError: a site that cannot be read, or ``@*`` (name one call).
      KeyError: (when ``f`` is traced) a site, or a glob, matches no submodule call (lists
        the calls).

    >>> import flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(2)])
    >>> variables = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> _, acts = capture_sites(model, variables, ["layers_2:input"])(jnp.ones((5, 4)))
    >>> acts["layers_2:input"].shape
    (5, 3)
    >>> _, acts = capture_sites(model, variables, ["layers_*:input"])(jnp.ones((5, 4)))
    >>> {site: a.shape for site, a in acts.items()}
    {'layers_0:input': (5, 4), 'layers_2:input': (5, 3)}
    """
    check_model(model, variables)
    sites = [sites] if isinstance(sites, str) else sites
    check_sites(sites)
    sites = list(sites)
    edits = dict(edits or {})

    def f(*args: Any, **kwargs: Any) -> tuple[Any, dict[str, jax.Array]]:
        return run_sites(
            model,
            variables,
            *args,
            edits=edits,
            sites=sites,
            method=method,
            methods=methods,
            mutable=mutable,
            **kwargs,
        )

    return f
