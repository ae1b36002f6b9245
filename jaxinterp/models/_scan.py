"""The stacked layout of :class:`jaxinterp.models.Decoder` (``scan_layers=True``).

By default the decoder's blocks are separate modules, ``blocks_0 ... blocks_{L-1}``, built in
a Python loop: XLA then compiles ``L`` copies of the block, so the first call of every
analysis grows with depth. With ``Decoder(cfg, scan_layers=True)`` the blocks are one
``nn.scan`` over a stack of weights (the ``scan_layers`` option of MaxText and of Hugging
Face's Flax models): one block is compiled whatever the depth, and the outputs are those of
the unrolled model (up to float rounding: XLA fuses the scanned body differently, ~1e-7
relative in float32).

Names in the stacked layout (the hook records a scanned module per layer, ``[layer, ...]``,
and ``[i]`` picks one layer; see the README's "How paths are named"):

=================================  ==========================================================
unrolled                           stacked
=================================  ==========================================================
``blocks_{i}`` (residual stream)   ``blocks/out[i]`` (``blocks/out``: ``[layer, batch, seq,
                                   d_model]``)
``blocks_{i}/attn/z``              ``blocks/attn/z[i]`` (every other submodule alike)
params ``blocks_{i}/...``          params ``blocks/...`` with a leading ``[layer]`` axis
cache ``blocks_{i}/attn/k_cache``  cache ``blocks/attn/k_cache`` ``[layer, batch, len, ...]``
=================================  ==========================================================

:func:`stack_layers` / :func:`unstack_layers` convert variables between the layouts and
:func:`stacked_site` converts a site name. A config mixing sliding-window and global layers
(Gemma 2/3, Qwen's ``layer_types``) has no stacked layout: ``scan_layers=True`` raises.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

_BLOCK = re.compile(r"^blocks_(\d+)$")
_SITE = re.compile(r"^blocks_(\d+)(/[^:\[|@]*)?(.*)$")


def _layers(tree: dict, where: str) -> int:
    idx = sorted(int(m.group(1)) for k in tree if (m := _BLOCK.match(k)))
    if not idx:
        raise ValueError(
            f"{where}: expected keys 'blocks_0' ... (unrolled layout), got {sorted(tree)}"
        )
    if idx != list(range(len(idx))):
        raise ValueError(f"{where}: expected blocks_0 ... blocks_{len(idx) - 1}, got {idx}")
    return len(idx)


def stack_layers(variables: dict) -> dict:
    """Variables of the unrolled decoder -> those of ``Decoder(cfg, scan_layers=True)``.

    Every collection (``params``, ``cache``) has its ``blocks_{i}`` subtrees replaced by one
    ``blocks`` subtree whose leaves are stacked on a new leading ``[layer]`` axis.

    Args:
      variables: ``{"params": {"embed": ..., "blocks_0": ..., ..., "ln_f": ...}, ...}``.

    Returns:
      The same collections with ``"blocks"`` leaves ``[layer, ...]``.

    Raises:
      ValueError: a collection has no ``blocks_{i}`` keys or a gap in them.

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> cfg = DecoderConfig(n_layers=3)
    >>> v = jax.jit(Decoder(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> s = jax.jit(stack_layers)(v)
    >>> s["params"]["blocks"]["attn"]["q"]["kernel"].shape
    (3, 64, 4, 16)
    >>> x = jnp.array([[1, 2, 3]])
    >>> y = jax.jit(Decoder(cfg).apply)(v, x)
    >>> y_stacked = jax.jit(Decoder(cfg, scan_layers=True).apply)(s, x)
    >>> bool(jnp.allclose(y, y_stacked, atol=1e-5))
    True
    """
    out = {}
    for col, tree in variables.items():
        n = _layers(tree, f"variables[{col!r}]")
        rest = {k: v for k, v in tree.items() if not _BLOCK.match(k)}
        blocks = [tree[f"blocks_{i}"] for i in range(n)]
        out[col] = {**rest, "blocks": jax.tree.map(lambda *a: jnp.stack(a), *blocks)}
    return out


def unstack_layers(variables: dict) -> dict:
    """Variables of ``Decoder(cfg, scan_layers=True)`` -> those of the unrolled decoder.

    The inverse of :func:`stack_layers`: each collection's ``blocks`` subtree (leaves
    ``[layer, ...]``) becomes ``blocks_0 ... blocks_{L-1}``.

    Raises:
      ValueError: a collection has no ``blocks`` key, or its leaves disagree on the number
        of layers.

    >>> v = {"params": {"blocks": {"w": jnp.zeros((2, 3))}, "ln_f": {"s": jnp.ones(3)}}}
    >>> sorted(unstack_layers(v)["params"])
    ['blocks_0', 'blocks_1', 'ln_f']
    """
    out = {}
    for col, tree in variables.items():
        if "blocks" not in tree:
            raise ValueError(
                f"variables[{col!r}]: expected a 'blocks' key (stacked layout), got {sorted(tree)}"
            )
        sizes = {a.shape[0] for a in jax.tree.leaves(tree["blocks"])}
        if len(sizes) != 1:
            raise ValueError(
                f"variables[{col!r}]['blocks']: expected leaves with one leading layer count, "
                f"got {sorted(sizes)}"
            )
        (n,) = sizes
        rest = {k: v for k, v in tree.items() if k != "blocks"}
        stack = tree["blocks"]
        layers = {f"blocks_{i}": jax.tree.map(lambda a, i=i: a[i], stack) for i in range(n)}
        out[col] = {**rest, **layers}
    return out


def stacked_site(site: str) -> str:
    """The name in the stacked layout of an unrolled decoder's site.

    ``blocks_{i}`` (the residual stream) becomes ``blocks/out[i]``, ``blocks_{i}/sub`` becomes
    ``blocks/sub[i]``; the site's suffix (``:input``, ``|per_head``, ``@K``) is kept. Other
    names (``embed``, ``ln_f``, ``unembed``) are unchanged.

    >>> stacked_site("blocks_3/attn/z"), stacked_site("blocks_0"), stacked_site("ln_f")
    ('blocks/attn/z[3]', 'blocks/out[0]', 'ln_f')
    >>> stacked_site("blocks_2/attn/o:input|per_head")
    'blocks/attn/o[2]:input|per_head'
    """
    m = _SITE.match(site)
    if m is None:
        return site
    i, sub, rest = m.group(1), m.group(2) or "/out", m.group(3)
    return f"blocks{sub}[{i}]{rest}"


def require_unrolled(model: object, what: str) -> None:
    """Raises ``ValueError`` for a ``Decoder(cfg, scan_layers=True)`` given to an analysis
    that follows the residual stream layer by layer in Python (edge graphs, attribution
    graphs), naming the conversion to the unrolled layout."""
    if getattr(model, "scan_layers", False):
        raise ValueError(
            f"model: {what} needs the unrolled layout (blocks_0 ...); this Decoder has "
            "scan_layers=True. Use Decoder(cfg) with jaxinterp.models.unstack_layers(variables)"
        )
