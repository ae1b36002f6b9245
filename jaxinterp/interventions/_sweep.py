"""Patch sweeps: every (layer × head) or (layer × position) site in one vmapped, jitted call.

Design. A sweep patches one *site* at a time: the run on the corrupted input gets the clean
activation at that site only, and a metric of the output is recorded. Sites live in different
layers, and layers differ in their module path, which a ``vmap`` cannot index. Instead of a
Python loop or a ``switch`` over layers, every site carries a *layer one-hot*: the single-site
core installs one edit per layer path, and the edit at layer ``l`` replaces the entries

    mask = (site.layer == l) & selection(site.index)   # e.g. head h at every position

with the clean values, leaving everything else untouched. For the layers the site is not in,
the mask is all False, so the edit is the identity. The whole site set is therefore a plain
array pytree (:class:`Sites`: ``layer [site]``, ``index [site, axis]``) and the sweep is ONE
``vmap`` of the single-site core over it, chunked with :func:`jaxinterp.sharding.chunked` to
bound memory (``chunk_size`` sites are in flight at once, each a full forward pass on the
batch) and sharded over a mesh with :func:`jaxinterp.sharding.shard_batched`. The cost of the
masks is a ``where`` per layer per site, negligible next to the forward pass.

Choosing ``chunk_size`` (default ``"auto"``, from the shapes): on a CPU small chunks are much
faster, because a chunk's activations then stay in cache. Measured on 2 shared cores for the
reference transformer, 128 (layer, head, position) sites: at batch 16 all sites at once took
~0.27 s and ``chunk_size=2`` ~0.03 s; at batch 64, 1.4–1.9 s against 0.13 s (chunk 1–2).
The best chunks kept ``chunk_size × (bytes of one site's activation)`` near 128 KiB, so on
a CPU "auto" picks ``chunk_size = clip(128 KiB // site bytes, 1, n_sites)``. On an
accelerator it vmaps all sites at once unless their activations (estimated as 64 × the site
activation per layer) would pass 4 GiB, then the largest chunk under that. ``None`` vmaps
all sites at once.

Attribution patching (Nanda 2023; Syed et al. 2023) replaces the per-site forward passes by a
first-order Taylor expansion around the corrupted run:

    metric(patched at s) - metric(corrupted) ≈ Σ_{entries of s} ∂metric/∂a · (a_clean - a_corr)

which costs one clean forward, one corrupted forward and one backward pass for all sites. The
product is formed once per site path and summed over the axes the sites do not select (a
``[head, position]`` table per layer for (layer, head, position) sites), which the sites then
index: no per-site mask, so memory stays O(activations + sites) (4,608 sites of a
GPT-2-small-shaped model need no more than the backward pass).

Prefix reuse. Most models are a chain of blocks (``blocks_{i}`` of
:class:`jaxinterp.models.Decoder`, ``block_{i}`` of the reference transformer). When every
site lies inside such a block, :func:`patch_sweep` records the corrupted run's input to each
block once, and a site in block ``L`` runs block ``L`` with the patch, then blocks
``L+1..end`` as a ``fori_loop`` over their stacked variables, then the model's head: about
half the FLOPs of a full forward on average, and ONE compiled program for all layers (a
``lax.map`` over layers, the layer's variables and inputs indexed dynamically) instead of one
unrolled forward per site. The chain is checked, not assumed (:func:`_find_chain`: each block
called once with the previous block's output object, equal configurations and variable
shapes, and the model output depending on the block outputs only through the last);
otherwise every site runs the full forward with the layer one-hot above.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core
from jax.sharding import Mesh

from jaxinterp._checks import check_int, is_traced, poison, value_check
from jaxinterp.capture import current_call, run_sites, run_with_hook
from jaxinterp.interventions import _compiled
from jaxinterp.interventions._edits import _selection
from jaxinterp.interventions._intervene import _run, split_site
from jaxinterp.interventions._metrics import normalize
from jaxinterp.sharding import chunked, shard_batched


@dataclasses.dataclass(frozen=True)
class Sites:
    """A set of patch sites: a vmappable array pytree plus static layout.

    Attributes:
      layer: ``[site]`` int, which entry of ``paths`` each site lies in.
      index: ``[site, len(axes)]`` int, the index along each of ``axes`` (e.g. head, position).
      paths: static, one site string per layer, e.g. ``"block_0/attn/out:input"``.
      axes: static, the activation axes that ``index`` selects on (negative, from the end).
      grid: static, the shape results reshape to, ``(len(paths), *sizes)``, or ``()``.
      names: static, axis names of ``grid``, e.g. ``("layer", "head")``.
      whole: static, whether the grid claims every index of its axes (:func:`head_sites`,
        :func:`position_sites`, :func:`head_position_sites`): a sweep then refuses an axis
        longer than the grid, so ``head_sites(L, 3)`` on a model with 4 heads raises instead
        of patching heads 0-2 only (a shorter axis fails the index range check).
        :func:`site_grid` builds subsets (``False``).
    """

    layer: jax.Array
    index: jax.Array
    paths: tuple[str, ...]
    axes: tuple[int, ...]
    grid: tuple[int, ...] = ()
    names: tuple[str, ...] = ()
    whole: bool = False

    def unflatten(self, values: jax.Array) -> jax.Array:
        """Reshapes per-site ``values [site, ...]`` to ``[*grid, ...]``, axes named ``names``.

        E.g. ``[layer, head]`` for :func:`head_sites` and ``[layer, head, position]`` for
        :func:`head_position_sites` (TransformerLens orders the latter ``[layer, pos, head]``:
        ``jnp.moveaxis(x, 2, 1)`` converts).

        Raises:
          ValueError: the site set has no grid, or ``values`` is not ``[site, ...]``.

        >>> s = head_sites(2, 3)
        >>> s.names, s.unflatten(jnp.arange(6)).tolist()
        (('layer', 'head'), [[0, 1, 2], [3, 4, 5]])
        """
        if not self.grid:
            raise ValueError("sites: this site set has no grid layout; use the flat [site] values")
        values = jnp.asarray(values)
        n = int(np.prod(self.grid))
        if values.ndim < 1 or values.shape[0] != n:
            raise ValueError(
                f"values: expected [site, ...] with site={n} (grid {self.grid}), got shape "
                f"{values.shape}"
            )
        return values.reshape(self.grid + values.shape[1:])


jax.tree_util.register_dataclass(
    Sites,
    data_fields=["layer", "index"],
    meta_fields=["paths", "axes", "grid", "names", "whole"],
)


def site_grid(
    paths: Sequence[str], sizes: Sequence[tuple[int, int]], names: Sequence[str] = ()
) -> Sites:
    """All combinations of a layer path and one index per axis, layer-major.

    Args:
      paths: one site per layer (``"block_0/attn/out:input"``, ...).
      sizes: ``[(axis, size), ...]``: the activation axis (negative) and how many indices.
      names: names of the grid axes, ``("layer", ...)``: empty, or one per grid axis.

    Returns:
      :class:`Sites` with ``len(paths) * prod(sizes)`` sites, ``grid = (len(paths), *sizes)``.

    Raises:
      TypeError: a path is not a string, a size is not an int.
      ValueError: repeated paths, bad ``sizes`` (axes must be distinct and negative, sizes
        >= 1), or the wrong number of ``names``.

    >>> s = site_grid(["block_0", "block_1"], [(-2, 3)], ("layer", "position"))
    >>> s.layer.tolist(), s.index[:, 0].tolist()
    ([0, 0, 0, 1, 1, 1], [0, 1, 2, 0, 1, 2])
    """
    if isinstance(paths, str):
        raise TypeError(f"paths: expected a sequence of site strings, got the string {paths!r}")
    paths = tuple(paths)
    if not paths or len(set(paths)) != len(paths):
        raise ValueError(f"paths: expected distinct site paths, got {paths}")
    for p in paths:
        if not isinstance(p, str):
            raise TypeError(f"paths: expected site strings, got {p!r}")
        try:
            split_site(p)
        except (TypeError, ValueError) as e:
            raise type(e)(f"paths: {e}") from None
    sizes = list(sizes)
    for pair in sizes:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"sizes: expected (axis, size) pairs, got {pair!r}")
    axes = tuple(check_int(a, "sizes: axis") for a, _ in sizes)
    if any(a >= 0 for a in axes) or len(set(axes)) != len(axes):
        raise ValueError(f"sizes: axes must be distinct and negative (from the end), got {axes}")
    dims = [check_int(n, "sizes: size", lo=1) for _, n in sizes]
    names = tuple(names)
    if names and len(names) != 1 + len(dims):
        raise ValueError(
            f"names: expected {1 + len(dims)} names (layer, then one per axis), got {names}"
        )
    combos = list(itertools.product(range(len(paths)), *[range(n) for n in dims]))
    arr = np.asarray(combos, np.int32).reshape(len(combos), 1 + len(dims))
    return Sites(
        jnp.asarray(arr[:, 0]),
        jnp.asarray(arr[:, 1:]),
        paths,
        axes,
        (len(paths), *dims),
        names,
    )


def _layer_paths(template: str, n_layers: int) -> list[str]:
    n_layers = check_int(n_layers, "n_layers", lo=1)
    if not isinstance(template, str) or "{layer}" not in template:
        raise ValueError(f"template: expected a string with a {{layer}} field, got {template!r}")
    try:
        return [template.format(layer=i) for i in range(n_layers)]
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"template: expected only a {{layer}} field, got {template!r} ({e!r})"
        ) from None


def _head_paths(template: str, n_layers: int, n_heads: int, merged: Any) -> list[str]:
    """Layer paths with the head layout appended (``|per_head`` or ``|heads=N``)."""
    if not isinstance(merged, (bool, np.bool_)):
        raise TypeError(f"merged: expected a bool, got {type(merged).__name__}")
    paths = _layer_paths(template, n_layers)
    if "|" in template:  # the template names its layout itself
        if merged:
            raise ValueError(
                f"merged: the template {template!r} already names a head layout after '|'; "
                "drop merged=True or the '|...' suffix"
            )
        return paths
    layout = f"|heads={n_heads}" if merged else "|per_head"
    return [p + layout for p in paths]


def head_sites(
    n_layers: int,
    n_heads: int,
    *,
    template: str = "block_{layer}/attn/out:input",
    merged: bool = False,
) -> Sites:
    """(layer × head) sites on the per-head attention results; each site is one head at every
    position.

    The sites declare their head layout (see ``jaxinterp.capture``): by default
    ``[batch, seq, head, d_head]`` (``|per_head``: the input of the ``out`` projection of
    Flax's attention modules), and an activation with fewer than 4 axes raises
    ``ValueError`` instead of patching positions. With ``merged=True`` the heads are merged
    into the last axis, ``[batch, seq, head·d_head]`` (``|heads=n_heads``: e.g. the input of
    Hugging Face Flax GPT-2's ``attn/c_proj``), which is viewed as
    ``[batch, seq, n_heads, d_head]`` for recording and patching.

    Args:
      n_layers, n_heads: grid sizes.
      template: site path with a ``{layer}`` field (default: input of ``block_i/attn/out``);
        one ending in a layout (``"...:input|heads=12"``) is used as it is.
      merged: whether the heads are merged into the last axis of the activation.

    Returns:
      :class:`Sites`; results unflatten to ``[layer, head]``.

    Raises:
      TypeError, ValueError: counts that are not ints >= 1, a template without ``{layer}``,
        ``merged`` not a bool (or True with a template that names a layout).

    >>> head_sites(2, 4).grid
    (2, 4)
    >>> head_sites(1, 12, template="transformer/h/{layer}/attn/c_proj:input", merged=True).paths
    ('transformer/h/0/attn/c_proj:input|heads=12',)
    """
    n_heads = check_int(n_heads, "n_heads", lo=1)
    paths = _head_paths(template, n_layers, n_heads, merged)
    return dataclasses.replace(site_grid(paths, [(-2, n_heads)], ("layer", "head")), whole=True)


def position_sites(n_layers: int, seq_len: int, *, template: str = "block_{layer}") -> Sites:
    """(layer × position) sites on the residual stream ``[batch, seq, d_model]`` after each block.

    Args:
      n_layers, seq_len: grid sizes.
      template: site path with a ``{layer}`` field (default: the output of ``block_i``).

    Returns:
      :class:`Sites`; results unflatten to ``[layer, position]``.

    Raises:
      TypeError, ValueError: counts that are not ints >= 1, a template without ``{layer}``.

    >>> position_sites(2, 16).names
    ('layer', 'position')
    """
    paths = _layer_paths(template, n_layers)
    seq_len = check_int(seq_len, "seq_len", lo=1)
    return dataclasses.replace(site_grid(paths, [(-2, seq_len)], ("layer", "position")), whole=True)


def head_position_sites(
    n_layers: int,
    n_heads: int,
    seq_len: int,
    *,
    template: str = "block_{layer}/attn/out:input",
    merged: bool = False,
) -> Sites:
    """(layer × head × position) sites on per-head results ``[batch, seq, head, d_head]``.

    Head layouts as in :func:`head_sites` (``merged=True``: ``[batch, seq, head·d_head]``).

    Args:
      n_layers, n_heads, seq_len: grid sizes.
      template: site path with a ``{layer}`` field.
      merged: whether the heads are merged into the last axis of the activation.

    Returns:
      :class:`Sites`; results unflatten to ``[layer, head, position]`` (TransformerLens
      orders ``[layer, pos, head]``: ``jnp.moveaxis(x, 2, 1)`` converts).

    Raises:
      TypeError, ValueError: counts that are not ints >= 1, a template without ``{layer}``,
        ``merged`` not a bool.

    >>> head_position_sites(2, 4, 16).grid
    (2, 4, 16)
    """
    n_heads = check_int(n_heads, "n_heads", lo=1)
    seq_len = check_int(seq_len, "seq_len", lo=1)
    paths = _head_paths(template, n_layers, n_heads, merged)
    grid = site_grid(paths, [(-2, n_heads), (-3, seq_len)], ("layer", "head", "position"))
    return dataclasses.replace(grid, whole=True)


class PatchResult(NamedTuple):
    """Result of a sweep over sites, with per-example values when the metric gives them.

    **Axes.** Per-site fields are flat ``[site]`` in the order of the :class:`Sites` used
    (layer-major); ``sites.unflatten(x)`` gives ``[*sites.grid]`` with axes named
    ``sites.names``: ``[layer, head]`` (:func:`head_sites`), ``[layer, position]``
    (:func:`position_sites`), ``[layer, head, position]`` (:func:`head_position_sites`).
    TransformerLens orders the last ``[layer, pos, head]``: ``jnp.moveaxis(x, 2, 1)``
    converts (on ``[site, batch]`` fields, ``sites.unflatten(x)`` gives
    ``[layer, head, position, batch]``).

    **Per-example values.** A metric returning a scalar for the whole batch fills the first
    four fields only. A metric returning a ``[batch]`` vector of per-example values
    ``m_i`` (e.g. ``logit_diff(..., reduce="none")``, :meth:`PatchTask.per_example_metric`)
    fills all of them; the scalar fields are then batch means, ``D = clean - corrupted``, and
    with ``d_i = per_example[s, i] - corrupted_per_example[i]`` (the paired per-example
    effect)::

        normalized[s]    = mean_i(d_i) / D
        normalized_se[s] = std_i(d_i, ddof=1) / sqrt(batch) / |D|

    the standard error of the mean effect, scaled like ``normalized`` (``D`` held fixed), so
    ``normalized ± 1.96 · normalized_se`` is the usual normal-approximation 95% interval over
    examples.

    Attributes:
      patched: ``[site]`` metric of the corrupted run with the site patched (for attribution
        patching: its first-order estimate); the batch mean for a per-example metric.
      normalized: ``[site]`` ``(patched - corrupted) / (clean - corrupted)``.
      clean: scalar metric of the clean run (batch mean for a per-example metric).
      corrupted: scalar metric of the corrupted run (likewise).
      per_example: ``[site, batch]`` patched metric of each example, or ``None``.
      normalized_se: ``[site]`` standard error of ``normalized`` (above), or ``None``.
      clean_per_example: ``[batch]`` clean metric of each example, or ``None``.
      corrupted_per_example: ``[batch]`` corrupted metric of each example, or ``None``.
    """

    patched: jax.Array
    normalized: jax.Array
    clean: jax.Array
    corrupted: jax.Array
    per_example: jax.Array | None = None
    normalized_se: jax.Array | None = None
    clean_per_example: jax.Array | None = None
    corrupted_per_example: jax.Array | None = None


def _result(patched: jax.Array, clean: jax.Array, corrupted: jax.Array) -> PatchResult:
    """The :class:`PatchResult` of patched metrics ``[site]`` or ``[site, batch]``."""
    if clean.ndim == 0:
        return PatchResult(patched, normalize(patched, clean, corrupted), clean, corrupted)
    n = clean.shape[0]
    clean_m, corr_m = clean.mean(), corrupted.mean()
    mean = patched.mean(-1)
    se = (patched - corrupted).std(-1, ddof=1) / np.sqrt(n)
    denom = jnp.abs(clean_m - corr_m)
    nse = se / jnp.where(denom > 0, denom, jnp.nan)
    normalized = normalize(mean, clean_m, corr_m)
    return PatchResult(mean, normalized, clean_m, corr_m, patched, nse, clean, corrupted)


def _as_args(name: str, inputs: Any, kwargs: Any = None) -> tuple[tuple, dict]:
    """``(args, kwargs)`` of one run: a tuple/list is positional inputs, a dict keyword inputs,
    anything else one positional input; ``kwargs`` (shared by both runs) is added."""
    if isinstance(inputs, Mapping):
        args, kw = (), dict(inputs)
        for k in kw:
            if not isinstance(k, str):
                raise TypeError(f"{name}: keyword inputs need string keys, got {k!r}")
    else:
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
        kw = {}
    if kwargs is not None:
        if not isinstance(kwargs, Mapping):
            raise TypeError(f"kwargs: expected a mapping of keyword arguments, got {kwargs!r}")
        both = sorted(set(kw) & set(kwargs))
        if both:
            raise ValueError(f"kwargs: {both} are also given in {name}")
        kw.update(kwargs)
    if not args and not kw:
        raise ValueError(
            f"{name}: expected the model's input(s), got an empty {type(inputs).__name__}"
        )
    return args, kw


def _check_pair(clean: tuple, corrupted: tuple) -> None:
    def layout(run):
        leaves, tree = jax.tree_util.tree_flatten(run)
        return tree, [f"{jnp.result_type(x)}{list(jnp.shape(x))}" for x in leaves]

    (ta, a), (tb, b) = layout(clean), layout(corrupted)
    if ta != tb or a != b:
        raise ValueError(
            f"corrupted_inputs: expected the shapes and dtypes of clean_inputs "
            f"{', '.join(a)}, got {', '.join(b)}"
        )


def _check_sites(sites: Any) -> None:
    if not isinstance(sites, Sites):
        raise TypeError(
            f"sites: expected a Sites (see site_grid, head_sites), got {type(sites).__name__}"
        )
    if sites.layer.ndim != 1 or sites.index.shape != (sites.layer.shape[0], len(sites.axes)):
        raise ValueError(
            f"sites: expected layer [site] and index [site, {len(sites.axes)}], got "
            f"{sites.layer.shape} and {sites.index.shape}"
        )
    for name, x in (("layer", sites.layer), ("index", sites.index)):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"sites: expected integer {name}, got dtype {x.dtype}")


def _check_call(metric: Any, chunk_size: Any = None) -> None:
    if not callable(metric):
        raise TypeError(
            f"metric: expected a callable metric(output) -> scalar, got {type(metric).__name__}"
        )
    if isinstance(chunk_size, str):
        if chunk_size != "auto":
            raise ValueError(
                f'chunk_size: expected an int >= 1, None or "auto", got {chunk_size!r}'
            )
    elif chunk_size is not None:
        check_int(chunk_size, "chunk_size", lo=1)


_CPU_CHUNK_BYTES = 128 * 1024  # in-flight site activations per chunk on a CPU (see module doc)
_ACCEL_BYTES = 4 * 1024**3  # estimated in-flight activations on an accelerator


def _auto_chunk(n_sites: int, acts: dict, mesh: Mesh | None) -> int | None:
    """The default ``chunk_size`` from the activation shapes and the backend."""
    site_bytes = max(int(a.size) * a.dtype.itemsize for a in acts.values())
    site_bytes = max(site_bytes, 1)
    platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
    if platform == "cpu":
        return int(min(n_sites, max(1, _CPU_CHUNK_BYTES // site_bytes)))
    per_site = 64 * site_bytes * len(acts)
    if n_sites * per_site <= _ACCEL_BYTES:
        return None
    return int(max(1, _ACCEL_BYTES // per_site))


def _batch_size(run: tuple) -> int | None:
    """The common leading size of the input arrays of one run, or None if they disagree."""
    sizes = {jnp.shape(x)[0] for x in jax.tree_util.tree_leaves(run) if jnp.ndim(x) >= 1}
    return sizes.pop() if len(sizes) == 1 else None


def _metric_value(metric: Callable, out: Any, what: str, batch: int | None) -> jax.Array:
    """``metric(out)``: a scalar, or ``[batch]`` per-example values (at least 2)."""
    value = jnp.asarray(metric(out))
    if value.ndim > 1:
        raise ValueError(
            f"metric: must return a scalar or a [batch] vector of per-example values, got "
            f"shape {value.shape} on the {what} run"
        )
    if value.ndim == 1 and batch is not None and value.shape[0] != batch:
        raise ValueError(
            f"metric: a per-example metric must return [batch] = ({batch},) values (the "
            f"inputs' leading axis), got shape {value.shape} on the {what} run"
        )
    if value.ndim == 1 and value.shape[0] < 2:
        raise ValueError(
            f"metric: per-example values need at least 2 examples for a standard error, got "
            f"shape {value.shape} on the {what} run; return a scalar instead"
        )
    if not jnp.issubdtype(value.dtype, jnp.number):
        raise TypeError(f"metric: must return a number, got dtype {value.dtype} on the {what} run")
    return value


def _site_mask(site: Sites, layer: int, shape: tuple[int, ...]) -> jax.Array:
    at = {ax: site.index[j] for j, ax in enumerate(site.axes)}
    return (site.layer == layer) & _selection(shape, at, None, check=False)[0]


def _sites_ok(sites: Sites, acts: dict) -> Any:
    """Range checks of site layers and indices: raise if concrete, else ``ok [site]``.

    An out-of-range site would select nothing (patched == corrupted), a silent wrong answer;
    under jit those sites come out NaN instead and the check is registered.
    """
    n_layers = len(sites.paths)
    for p in sites.paths:
        value = acts[p]
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            first = (
                next((i for i, v in enumerate(value) if hasattr(v, "shape")), 0)
                if isinstance(value, (tuple, list))
                else 0
            )
            example = f"{p}[{first}]" if ":" in p else f"{p}:output[{first}]"
            raise ValueError(
                f"sites: {p!r} is a {type(value).__name__}, not one array; name one element "
                f"of it in the site paths, e.g. {example!r}"
            )
    sizes = np.asarray([[acts[p].shape[ax] for ax in sites.axes] for p in sites.paths], np.int32)
    sizes = sizes.reshape(n_layers, len(sites.axes))
    if sites.whole and len(sites.grid) == 1 + len(sites.axes):
        for i, p in enumerate(sites.paths):
            for j, ax in enumerate(sites.axes):
                want, size = sites.grid[1 + j], int(sizes[i, j])
                if want < size:  # (more entries than the axis: the index range check below)
                    what = sites.names[1 + j] if len(sites.names) > 1 + j else f"axis {ax}"
                    raise ValueError(
                        f"sites: the grid has {want} {what} entries (axis {ax}) but {p!r} has "
                        f"{size} there (activation shape {acts[p].shape}); build the sites "
                        f"with {size} (or use site_grid for a subset of the indices)"
                    )
    if not is_traced((sites.layer, sites.index)):
        index, layer = np.asarray(sites.index), np.asarray(sites.layer)
        bad = layer[(layer < 0) | (layer >= n_layers)]
        if bad.size:
            raise ValueError(
                f"sites: layer {int(bad[0])} is out of range; expected one of the "
                f"{n_layers} paths [0, {n_layers})"
            )
        for i, p in enumerate(sites.paths):
            rows = index[layer == i]
            for j, ax in enumerate(sites.axes):
                size = int(sizes[i, j])
                bad = rows[:, j][(rows[:, j] < -size) | (rows[:, j] >= size)]
                if bad.size:
                    raise ValueError(
                        f"sites: index {int(bad[0])} on axis {ax} of {p!r} is out of range; "
                        f"that axis has size {size} (activation shape {acts[p].shape})"
                    )
        return True
    layer_ok = (sites.layer >= 0) & (sites.layer < n_layers)
    sz = jnp.asarray(sizes)[jnp.clip(sites.layer, 0, n_layers - 1)]  # [site, axis]
    ok = layer_ok & ((sites.index >= -sz) & (sites.index < sz)).all(-1)
    first = jnp.argmin(ok)
    value_check(
        ok.all(),
        f"sites: site {{}} (layer {{}}, index {{}}) is out of range for the activations "
        f"(sizes along axes {sites.axes} per layer: {sizes.tolist()})",
        first,
        sites.layer[first],
        sites.index[first],
    )
    return ok


class _Chain(NamedTuple):
    """Layers that form a chain of addressable blocks (see :func:`_find_chain`).

    ``block`` is one unbound linen block; ``names [n]`` the chained top-level submodules;
    ``stacked`` their variables stacked ``[n, ...]``; ``inputs [n, ...]`` the stream entering
    each on the corrupted run; ``rest``/``kw`` the other arguments every block receives.
    """

    block: Any
    names: tuple[str, ...]
    stacked: Any
    inputs: jax.Array
    rest: tuple
    kw: dict


def _block_of(path: str) -> tuple[str, str] | None:
    """``"blocks_3/attn/z:input"`` -> ``("blocks_3", "attn/z:input")``; None if not inside one."""
    head, _ = split_site(path)
    first, sep, _ = head.partition("/")
    if not sep or any(c in first for c in "@[*?"):
        return None
    return first, path[len(first) + 1 :]


def _same(a: Any, b: Any) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(x is y or (not hasattr(x, "shape") and x == y) for x, y in zip(la, lb))


def _config(module: Any) -> tuple:
    skip = ("parent", "name")
    fields = dataclasses.fields(module)
    return type(module), tuple(
        (f.name, getattr(module, f.name)) for f in fields if f.name not in skip
    )


def _find_chain(
    model: Any, variables: Any, sites: Sites, method: Any, args: tuple, kwargs: dict
) -> _Chain | None:
    """The model's layers as a chain of blocks ``x -> block_i(x, *rest)``, or None.

    Found by running the (corrupted) model once with a hook on its top-level submodules: every
    site path must lie inside a top-level linen block (``"blocks_3/attn/z"``), all at the same
    relative path; from the first site's block on, each block must be called once, receive the
    previous block's output object as its first argument (so nothing else flows between them),
    share the module configuration, variable shapes and other arguments. Anything else (nnx,
    scanned stacks, skip connections across blocks, sites outside blocks) returns None and the
    sweep runs full forward passes.
    """
    if not isinstance(model, nn.Module) or not isinstance(variables, Mapping):
        return None
    where = [_block_of(p) for p in sites.paths]
    if any(w is None for w in where) or len({w[1] for w in where}) != 1:
        return None
    calls: list[tuple] = []

    def around(path, module, call_next, a, k):
        out = call_next(*a, **k)
        if "/" not in path and "." not in path:
            calls.append((path, current_call().index, module, a, k, out))
        return out

    run_with_hook(model, variables, around, *args, method=method, **kwargs)
    names = [c[0] for c in calls]
    wanted = {w[0] for w in where}
    if any(names.count(n) != 1 or c[1] != 0 for n, c in zip(names, calls) if n in wanted):
        return None
    if not wanted <= set(names):
        return None
    start = min(names.index(n) for n in wanted)
    first = calls[start]
    if not first[3] or not hasattr(first[3][0], "shape"):
        return None
    chain = [first]
    for c in calls[start + 1 :]:
        prev = chain[-1]
        if not c[3] or c[3][0] is not prev[5] or _config(c[2]) != _config(first[2]):
            break
        if not _same(c[3][1:], first[3][1:]) or not _same(c[4], first[4]):
            break
        chain.append(c)
    chained = [c[0] for c in chain]
    if not wanted <= set(chained):
        return None

    def block_vars(name):
        return {col: tree[name] for col, tree in variables.items() if name in tree}

    per = [block_vars(n) for n in chained]
    shapes = [jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), v) for v in per]
    if any(s != shapes[0] for s in shapes[1:]) or not per[0]:
        return None
    if any(jnp.shape(c[5]) != jnp.shape(first[3][0]) for c in chain):
        return None
    if not _only_last_flows(model, variables, chained, chain[-1][5], method, args, kwargs):
        return None
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per)
    inputs = jnp.stack([c[3][0] for c in chain])
    block = first[2].clone(parent=None, name=None)
    return _Chain(block, tuple(chained), stacked, inputs, tuple(first[3][1:]), dict(first[4]))


def _only_last_flows(
    model: Any, variables: Any, names: list[str], out: Any, method: Any, args: tuple, kw: dict
) -> bool:
    """Whether the model's output depends on the chain's block outputs only through the last.

    Each block output is replaced by an independent input and the traced program is walked
    back from the output (conservatively: an equation uses all its inputs). A value taken from
    an earlier block around the chain (a skip connection, a sum of layer outputs) fails it.
    """
    spec = jax.ShapeDtypeStruct(jnp.shape(out), jnp.result_type(out))

    def f(hs):
        edits = {n: (lambda _, i=i: hs[i]) for i, n in enumerate(names)}
        return run_sites(model, variables, *args, edits=edits, method=method, **kw)[0]

    closed = jax.make_jaxpr(f)([spec] * len(names))
    jaxpr = closed.jaxpr
    used = {v for v in jax.tree_util.tree_leaves(jaxpr.outvars) if isinstance(v, jex_core.Var)}
    for eqn in reversed(jaxpr.eqns):
        if any(v in used for v in eqn.outvars):
            used.update(v for v in eqn.invars if isinstance(v, jex_core.Var))
    return not any(v in used for v in jaxpr.invars[:-1])


def _chain_sweep(
    chain: _Chain,
    model: Any,
    variables: Any,
    sites: Sites,
    clean_acts: dict,
    corr: tuple[tuple, dict],
    metric: Callable,
    method: Any,
    chunk_size: int | None,
) -> jax.Array:
    """Patched metrics ``[site]`` (``[site, batch]`` per example) running only blocks ``L..end``.

    Sites are grouped by layer (padded to equal groups); ONE program maps over the groups: the
    patched block ``L`` (variables, corrupted input and clean source indexed by ``L``), then a
    ``fori_loop`` over the stacked variables of blocks ``L+1..end``, then the model's head (the
    full model with the last block's output replaced, so everything before it is dead code).
    """
    n = len(chain.names)
    pos = {name: i for i, name in enumerate(chain.names)}
    rel = _block_of(sites.paths[0])[1]
    layer = np.asarray(sites.layer)
    groups = [(i, np.flatnonzero(layer == i)) for i in range(len(sites.paths))]
    groups = [(i, g) for i, g in groups if g.size]
    size = max(g.size for _, g in groups)
    idx = np.stack([np.pad(g, (0, size - g.size), mode="edge") for _, g in groups])
    grouped = Sites(sites.layer[idx], sites.index[idx], sites.paths, sites.axes)
    path_i = jnp.asarray([i for i, _ in groups], jnp.int32)
    block_i = jnp.asarray([pos[_block_of(sites.paths[i])[0]] for i, _ in groups], jnp.int32)
    src = jnp.stack([clean_acts[p] for p in sites.paths])
    corr_args, corr_kw = corr
    last = chain.names[-1]

    def run_block(v, x, edits):
        return run_sites(chain.block, v, x, *chain.rest, edits=edits, **chain.kw)[0]

    def group(item):
        p, b, gsites = item
        x_in = chain.inputs[b]
        v_b = jax.tree.map(lambda s: s[b], chain.stacked)
        source = src[p]

        def one_site(site: Sites) -> jax.Array:
            def edit(a):
                at = {ax: site.index[j] for j, ax in enumerate(site.axes)}
                mask = _selection(a.shape, at, None, check=False)[0]
                return jnp.where(mask, source, a).astype(a.dtype)

            h = run_block(v_b, x_in, {rel: edit})

            def step(j, h):
                return run_block(jax.tree.map(lambda s: s[j], chain.stacked), h, {})

            h = jax.lax.fori_loop(b + 1, n, step, h)
            out = run_sites(
                model, variables, *corr_args, edits={last: lambda _: h}, method=method, **corr_kw
            )[0]
            return metric(out)

        return chunked(one_site, chunk_size)(gsites)

    vals = jax.lax.map(group, (path_i, block_i, grouped))  # [group, size] (+ [batch])
    rest = vals.shape[2:]
    flat = jnp.zeros((layer.shape[0], *rest), vals.dtype)
    return flat.at[idx.ravel()].set(vals.reshape(-1, *rest))


def patch_sweep(
    model: Any,
    variables: Any,
    clean_inputs: Any,
    corrupted_inputs: Any,
    sites: Sites,
    metric: Callable[[Any], jax.Array],
    *,
    chunk_size: int | str | None = "auto",
    mesh: Mesh | None = None,
    method: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    reuse_prefix: bool = True,
) -> PatchResult:
    """Activation patching clean → corrupted at every site, as one vmap over sites.

    For each site ``s`` the model runs on ``corrupted_inputs`` with the activation entries of
    ``s`` replaced by their values on ``clean_inputs``, and ``metric`` is taken of the output.
    (For noising instead of denoising, swap the two inputs.)

    **Prefix reuse.** When the sites lie inside top-level blocks that form a chain (each block
    takes the previous one's output, as the layers of :class:`jaxinterp.models.Decoder`
    ``blocks_{i}`` or the reference transformer's ``block_{i}``), the corrupted run's input to
    each block is recorded once and a site in block ``L`` runs only blocks ``L..end`` and the
    model's head: on average about half the FLOPs of a full forward per site, compiled as one
    program for all layers. Otherwise (nnx models, scanned stacks, a ``mesh``, sites given as
    traced arrays, ``reuse_prefix=False``) each site runs a full forward pass. Both give the
    same effects up to float32 rounding (operations fused in another order).

    **Compiled once.** A plain call (concrete inputs) runs as one program cached on the
    model, sites, metric structure, options and input shapes (the rules are in the
    docstring of the private module ``jaxinterp.interventions._compiled``): repeated calls
    with new data of the same shapes compile nothing, a new batch shape compiles once.
    Inside your own ``jit``, pass the data as arguments
    (``jax.jit(lambda v, task: patch_sweep(model, v, task.clean, ...))``), not as
    closed-over constants. Value checks of a plain call still raise ``ValueError``.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      clean_inputs: the model's input(s) for the clean run: one array (e.g. ``tokens
        [batch, seq]``), a tuple of positional inputs, or a dict of keyword inputs.
      corrupted_inputs: the same for the corrupted run (same shapes).
      sites: :class:`Sites` (:func:`head_sites`, :func:`position_sites`, :func:`site_grid`).
      metric: ``metric(output) -> scalar`` for the whole batch, e.g.
        ``lambda logits: logit_diff(logits, answer, wrong, position)``, or ``-> [batch]``
        per-example values (``logit_diff(..., reduce="none")``,
        :meth:`PatchTask.per_example_metric`; at least 2 examples), which adds per-example
        effects and standard errors to the result.
      chunk_size: sites in flight at once (memory ≈ ``chunk_size`` forward passes on the
        batch); ``"auto"`` (default) picks a fast one from the shapes and the backend (module
        docstring), ``None`` vmaps all sites at once.
      mesh: optional device mesh; sites are split over all its axes.
      method: the model method to run.
      kwargs: keyword arguments passed to the model on every run (e.g. ``{"train": False}``).
      reuse_prefix: reuse the corrupted run's layers before each site's block (see above).

    Returns:
      :class:`PatchResult` with ``patched, normalized: [site]`` (batch means), and for a
      per-example metric ``per_example: [site, batch]``, ``normalized_se: [site]``,
      ``clean_per_example, corrupted_per_example: [batch]``. ``sites.unflatten`` turns
      ``[site, ...]`` into ``[*sites.grid, ...]`` with axes ``sites.names``: ``[layer, head]``,
      ``[layer, position]``, ``[layer, head, position]`` (TransformerLens:
      ``[layer, pos, head]``, ``jnp.moveaxis(x, 2, 1)``).

    Raises:
      TypeError, ValueError: bad ``sites`` (a layer or index outside the activations),
        ``corrupted_inputs`` of other shapes than ``clean_inputs``, a metric that is not
        callable or does not return a scalar or ``[batch]`` values (at least 2), ``chunk_size``
        not an int >= 1 (or None,
        ``"auto"``), ``kwargs`` not a mapping or repeating a keyword input, ``reuse_prefix``
        not a bool, or equal clean and corrupted metrics (normalization undefined).
      KeyError: a site path is not in the model.

    Under jit with traced ``sites``, a site outside the activations gives NaN in ``patched``
    and ``normalized`` (it is never clamped), and equal clean/corrupted metrics give NaN
    ``normalized``; see ``jaxinterp.checked``.

    >>> import jaxinterp.models as zoo
    >>> from jaxinterp.interventions import offset_patching_task
    >>> cfg = zoo.TransformerConfig(n_layers=1)
    >>> model = zoo.Transformer(cfg)
    >>> task = offset_patching_task(jax.random.key(0), 4, cfg, position=8)
    >>> variables = model.init(jax.random.key(1), task.clean)
    >>> f = jax.jit(lambda c, x: patch_sweep(model, variables, c, x,
    ...                                      position_sites(1, 16), task.metric))
    >>> res = f(task.clean, task.corrupted)
    >>> round(float(res.normalized[8]), 4)  # the whole residual at the read-out position
    1.0
    >>> per = patch_sweep(model, variables, task.clean, task.corrupted, position_sites(1, 16),
    ...                   task.per_example_metric)  # plain call: compiled once, cached
    >>> per.per_example.shape, per.normalized_se.shape  # [site, batch], [site]
    ((16, 4), (16,))
    >>> bool(jnp.allclose(per.normalized, res.normalized, atol=1e-5))
    True
    """
    _check_sites(sites)
    _check_call(metric, chunk_size)
    if not isinstance(reuse_prefix, (bool, np.bool_)):
        raise TypeError(f"reuse_prefix: expected a bool, got {reuse_prefix!r}")
    clean = _as_args("clean_inputs", clean_inputs, kwargs)
    corr = _as_args("corrupted_inputs", corrupted_inputs, kwargs)
    _check_pair(clean, corr)
    options = {
        "chunk_size": chunk_size,
        "mesh": mesh,
        "method": method,
        "reuse_prefix": bool(reuse_prefix),
        "batch": _batch_size((clean_inputs,)),
    }
    return _compiled.run(_patch_sweep, model, variables, (clean, corr, metric), sites, options)


def _patch_sweep(
    model: Any,
    variables: Any,
    clean: tuple[tuple, dict],
    corr: tuple[tuple, dict],
    metric: Callable,
    sites: Sites,
    *,
    chunk_size: int | str | None,
    mesh: Mesh | None,
    method: Any,
    reuse_prefix: bool,
    batch: int | None,
) -> PatchResult:
    """:func:`patch_sweep` on checked arguments (traced inline or compiled by ``_compiled``)."""
    clean_out, clean_acts = _run(model, variables, {}, sites.paths, method, *clean)
    ok = _sites_ok(sites, clean_acts)
    corr_out, corr_acts = _run(model, variables, {}, sites.paths, method, *corr)
    for p in sites.paths:
        if clean_acts[p].shape != corr_acts[p].shape:
            raise ValueError(
                f"corrupted_inputs: activation {p!r} has shape {corr_acts[p].shape} on the "
                f"corrupted run but {clean_acts[p].shape} on the clean run"
            )
    clean_m = _metric_value(metric, clean_out, "clean", batch)
    corr_m = _metric_value(metric, corr_out, "corrupted", batch)
    normalize(clean_m.mean(), clean_m.mean(), corr_m.mean())  # equal or non-finite: raise now

    chain = None
    if reuse_prefix and mesh is None and ok is True:
        chain = _find_chain(model, variables, sites, method, *corr)

    def one_site(site: Sites, src: dict, run: tuple) -> jax.Array:
        def make_edit(layer: int, path: str):
            return lambda a: jnp.where(_site_mask(site, layer, a.shape), src[path], a).astype(
                a.dtype
            )

        edits = {p: make_edit(i, p) for i, p in enumerate(site.paths)}
        out, _ = _run(model, variables, edits, (), method, *run)
        return jnp.asarray(metric(out))

    if isinstance(chunk_size, str):
        n_sites = sites.layer.shape[0]
        if chain is not None:
            n_sites = int(np.bincount(np.asarray(sites.layer)).max())
        if mesh is not None:
            n_sites = -(-n_sites // mesh.devices.size)
        chunk_size = _auto_chunk(n_sites, clean_acts, mesh)

    if chain is not None:
        patched = _chain_sweep(
            chain, model, variables, sites, clean_acts, corr, metric, method, chunk_size
        )
        return _result(patched, clean_m, corr_m)

    def batched(site_batch: Sites, src: dict, run: tuple) -> jax.Array:
        return chunked(lambda s: one_site(s, src, run), chunk_size)(site_batch)

    if mesh is not None:
        batched = shard_batched(batched, mesh, batch_argnums=0)
    patched = batched(sites, clean_acts, corr)
    if ok is not True:
        patched = poison(patched, ok)
    return _result(patched, clean_m, corr_m)


def _reduce_to_grid(contrib: jax.Array, axes: tuple[int, ...], batch: bool = False) -> jax.Array:
    """Sums ``contrib`` over every axis but ``axes`` (and axis 0 if ``batch``); the result's
    axes are ``[batch]`` first if kept, then ``axes`` in order."""
    nd = contrib.ndim
    keep = ([0] if batch else []) + [a % nd for a in axes]
    r = contrib.sum(tuple(i for i in range(nd) if i not in keep))
    order = sorted(keep)
    return jnp.transpose(r, [order.index(k) for k in keep])


def attribution_patch(
    model: Any,
    variables: Any,
    clean_inputs: Any,
    corrupted_inputs: Any,
    sites: Sites,
    metric: Callable[[Any], jax.Array],
    *,
    method: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> PatchResult:
    """Attribution patching: the first-order estimate of :func:`patch_sweep` for all sites.

    ``effect(s) = Σ_{entries of s} ∂metric/∂a |_corrupted · (a_clean − a_corrupted)``, from one
    clean forward, one corrupted forward and one backward pass, whatever the number of sites.
    The product is formed once per site path and summed over the axes the sites do not select
    (e.g. batch and ``d_head`` for (head, position) sites), giving a small ``[*site axes]``
    table per layer that the sites index: memory and time O(activations + sites), not
    O(activations × sites).

    With a per-example metric (``[batch]`` values) the gradient of their sum is taken: each
    example's gradient lies in its own slice of the activations as long as examples do not
    interact (no batch statistics, e.g. BatchNorm in training mode), and the tables keep the
    batch axis (the activations' leading axis), ``[batch, *site axes]``. Compiled once per
    configuration like :func:`patch_sweep`.

    Args:
      model, variables, clean_inputs, corrupted_inputs, sites, metric, method, kwargs: as in
        :func:`patch_sweep`.

    Returns:
      :class:`PatchResult` whose ``patched = corrupted + effect`` is the estimate ``[site]``
      (for a per-example metric also ``per_example [site, batch]``, ``normalized_se [site]``;
      ``sites.unflatten`` names the axes, as in :func:`patch_sweep`).

    Raises:
      As :func:`patch_sweep`, and ``ValueError`` for a per-example metric when a site
      activation has no leading ``[batch]`` axis; under jit, out-of-range traced sites give
      NaN likewise (see ``jaxinterp.checked``).

    >>> import jaxinterp.models as zoo
    >>> from jaxinterp.interventions import offset_patching_task
    >>> cfg = zoo.TransformerConfig(n_layers=1)
    >>> model = zoo.Transformer(cfg)
    >>> task = offset_patching_task(jax.random.key(0), 4, cfg, position=8)
    >>> variables = model.init(jax.random.key(1), task.clean)
    >>> f = jax.jit(lambda c, x: attribution_patch(model, variables, c, x,
    ...                                            position_sites(1, 16), task.metric))
    >>> res = f(task.clean, task.corrupted)
    >>> sites_after_8 = res.patched[9:] - res.corrupted  # causal: later positions do nothing
    >>> float(jnp.abs(sites_after_8).max())
    0.0
    >>> per = attribution_patch(model, variables, task.clean, task.corrupted,
    ...                         position_sites(1, 16), task.per_example_metric)
    >>> per.per_example.shape, bool(jnp.allclose(per.patched, res.patched, atol=1e-5))
    ((16, 4), True)
    """
    _check_sites(sites)
    _check_call(metric)
    clean = _as_args("clean_inputs", clean_inputs, kwargs)
    corr = _as_args("corrupted_inputs", corrupted_inputs, kwargs)
    _check_pair(clean, corr)
    options = {"method": method, "batch": _batch_size((clean_inputs,))}
    return _compiled.run(
        _attribution_patch, model, variables, (clean, corr, metric), sites, options
    )


def _attribution_patch(
    model: Any,
    variables: Any,
    clean: tuple[tuple, dict],
    corr: tuple[tuple, dict],
    metric: Callable,
    sites: Sites,
    *,
    method: Any,
    batch: int | None,
) -> PatchResult:
    """:func:`attribution_patch` on checked arguments (traced inline or compiled)."""
    clean_out, clean_acts = _run(model, variables, {}, sites.paths, method, *clean)
    ok = _sites_ok(sites, clean_acts)
    clean_m = _metric_value(metric, clean_out, "clean", batch)
    per_example = clean_m.ndim == 1
    if per_example:
        n = clean_m.shape[0]
        for p, a in clean_acts.items():
            lead = [ax % a.ndim for ax in sites.axes]
            if a.ndim < 1 or a.shape[0] != n or 0 in lead:
                raise ValueError(
                    f"metric: per-example attribution needs site activations with a leading "
                    f"[batch] = ({n},) axis that the sites do not select; {p!r} has shape "
                    f"{a.shape} and the sites select axes {sites.axes}"
                )
    zeros = {p: jnp.zeros_like(a) for p, a in clean_acts.items()}

    def corrupted_metric(deltas: dict) -> tuple[jax.Array, tuple]:
        edits = {p: (lambda a, p=p: a + deltas[p]) for p in sites.paths}
        out, acts = _run(model, variables, edits, sites.paths, method, *corr)
        value = _metric_value(metric, out, "corrupted", batch)
        if value.shape != clean_m.shape:
            raise ValueError(
                f"metric: returned shape {value.shape} on the corrupted run but "
                f"{clean_m.shape} on the clean run"
            )
        # per example: the gradient of the sum is each example's own gradient, in its slice
        return value.sum(), (value, acts)

    grads, (corr_m, corr_acts) = jax.grad(corrupted_metric, has_aux=True)(zeros)
    shape = sites.layer.shape + clean_m.shape  # [site] or [site, batch]
    effect = jnp.zeros(shape, jnp.result_type(corr_m, jnp.float32))
    for i, p in enumerate(sites.paths):
        contrib = grads[p] * (clean_acts[p] - corr_acts[p])
        table = _reduce_to_grid(contrib, sites.axes, batch=per_example)
        grid = table.shape[1:] if per_example else table.shape
        idx = tuple(
            jnp.where(sites.index[:, j] < 0, sites.index[:, j] + grid[j], sites.index[:, j])
            for j in range(len(sites.axes))
        )
        if per_example:
            picked = table.at[(slice(None), *idx)].get(mode="fill", fill_value=0).T
            mask = (sites.layer == i)[:, None]
        else:
            picked = table.at[idx].get(mode="fill", fill_value=0)
            mask = sites.layer == i
        effect = effect + jnp.where(mask, picked, 0).astype(effect.dtype)
    patched = corr_m + effect
    if ok is not True:
        patched = poison(patched, ok)
    return _result(patched, clean_m, corr_m)
