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
same :class:`Sites` masks sum the product per site.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxinterp._checks import check_int, is_traced, poison, value_check
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
    """

    layer: jax.Array
    index: jax.Array
    paths: tuple[str, ...]
    axes: tuple[int, ...]
    grid: tuple[int, ...] = ()
    names: tuple[str, ...] = ()

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
    Sites, data_fields=["layer", "index"], meta_fields=["paths", "axes", "grid", "names"]
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

    The sites declare their head layout (see :mod:`jaxinterp.capture._sites`): by default
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
    return site_grid(paths, [(-2, n_heads)], ("layer", "head"))


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
    return site_grid(paths, [(-2, check_int(seq_len, "seq_len", lo=1))], ("layer", "position"))


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
    return site_grid(paths, [(-2, n_heads), (-3, seq_len)], ("layer", "head", "position"))


class PatchResult(NamedTuple):
    """Result of a sweep over sites.

    Per-site fields are flat ``[site]`` in the order of the :class:`Sites` used (layer-major);
    ``sites.unflatten(x)`` gives ``[*sites.grid]`` with axes named ``sites.names``, e.g.
    ``[layer, head]`` or ``[layer, head, position]``.

    Attributes:
      patched: ``[site]`` metric of the corrupted run with the site patched (for attribution
        patching: its first-order estimate).
      normalized: ``[site]`` ``(patched - corrupted) / (clean - corrupted)``.
      clean: scalar metric of the clean run.
      corrupted: scalar metric of the corrupted run.
    """

    patched: jax.Array
    normalized: jax.Array
    clean: jax.Array
    corrupted: jax.Array


def _as_args(name: str, inputs: Any) -> tuple:
    args = tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)
    if not args:
        raise ValueError(
            f"{name}: expected the model's input(s), got an empty {type(inputs).__name__}"
        )
    return args


def _check_pair(clean_args: tuple, corr_args: tuple) -> None:
    def layout(args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        return tree, [f"{jnp.result_type(x)}{list(jnp.shape(x))}" for x in leaves]

    (ta, a), (tb, b) = layout(clean_args), layout(corr_args)
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


def _scalar_metric(metric: Callable, out: Any, what: str) -> jax.Array:
    value = jnp.asarray(metric(out))
    if value.shape != ():
        raise ValueError(f"metric: must return a scalar, got shape {value.shape} on the {what} run")
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
    sizes = np.asarray([[acts[p].shape[ax] for ax in sites.axes] for p in sites.paths], np.int32)
    sizes = sizes.reshape(n_layers, len(sites.axes))
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
) -> PatchResult:
    """Activation patching clean → corrupted at every site, as one vmap over sites.

    For each site ``s`` the model runs on ``corrupted_inputs`` with the activation entries of
    ``s`` replaced by their values on ``clean_inputs``, and ``metric`` is taken of the output.
    (For noising instead of denoising, swap the two inputs.)

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      clean_inputs: the model's positional input(s) for the clean run, e.g. ``tokens
        [batch, seq]``, or a tuple of them.
      corrupted_inputs: the same for the corrupted run (same shapes).
      sites: :class:`Sites` (:func:`head_sites`, :func:`position_sites`, :func:`site_grid`).
      metric: ``metric(output) -> scalar`` for the whole batch, e.g.
        ``lambda logits: logit_diff(logits, answer, wrong, position)``.
      chunk_size: sites in flight at once (memory ≈ ``chunk_size`` forward passes on the
        batch); ``"auto"`` (default) picks a fast one from the shapes and the backend (module
        docstring), ``None`` vmaps all sites at once.
      mesh: optional device mesh; sites are split over all its axes.
      method: the model method to run.

    Returns:
      :class:`PatchResult` with ``patched, normalized: [site]``; ``sites.unflatten`` turns
      them into ``[*sites.grid]`` with axes ``sites.names`` (``[layer, head]`` etc.).

    Raises:
      TypeError, ValueError: bad ``sites`` (a layer or index outside the activations),
        ``corrupted_inputs`` of other shapes than ``clean_inputs``, a metric that is not
        callable or does not return a scalar, ``chunk_size`` not an int >= 1 (or None,
        ``"auto"``), or equal clean
        and corrupted metrics (normalization undefined).
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
    """
    _check_sites(sites)
    _check_call(metric, chunk_size)
    clean_args = _as_args("clean_inputs", clean_inputs)
    corr_args = _as_args("corrupted_inputs", corrupted_inputs)
    _check_pair(clean_args, corr_args)
    clean_out, clean_acts = _run(model, variables, {}, sites.paths, method, clean_args, {})
    ok = _sites_ok(sites, clean_acts)
    corr_out, corr_acts = _run(model, variables, {}, sites.paths, method, corr_args, {})
    for p in sites.paths:
        if clean_acts[p].shape != corr_acts[p].shape:
            raise ValueError(
                f"corrupted_inputs: activation {p!r} has shape {corr_acts[p].shape} on the "
                f"corrupted run but {clean_acts[p].shape} on the clean run"
            )
    clean_m = _scalar_metric(metric, clean_out, "clean")
    corr_m = _scalar_metric(metric, corr_out, "corrupted")
    normalize(clean_m, clean_m, corr_m)  # equal or non-finite metrics: raise before the sweep

    def one_site(site: Sites, src: dict, args: tuple) -> jax.Array:
        def make_edit(layer: int, path: str):
            return lambda a: jnp.where(_site_mask(site, layer, a.shape), src[path], a).astype(
                a.dtype
            )

        edits = {p: make_edit(i, p) for i, p in enumerate(site.paths)}
        out, _ = _run(model, variables, edits, (), method, args, {})
        return metric(out)

    if isinstance(chunk_size, str):
        n_sites = sites.layer.shape[0]
        if mesh is not None:
            n_sites = -(-n_sites // mesh.devices.size)
        chunk_size = _auto_chunk(n_sites, clean_acts, mesh)

    def batched(site_batch: Sites, src: dict, args: tuple) -> jax.Array:
        return chunked(lambda s: one_site(s, src, args), chunk_size)(site_batch)

    if mesh is not None:
        batched = shard_batched(batched, mesh, batch_argnums=0)
    patched = batched(sites, clean_acts, corr_args)
    if ok is not True:
        patched = poison(patched, ok)
    return PatchResult(patched, normalize(patched, clean_m, corr_m), clean_m, corr_m)


def attribution_patch(
    model: Any,
    variables: Any,
    clean_inputs: Any,
    corrupted_inputs: Any,
    sites: Sites,
    metric: Callable[[Any], jax.Array],
    *,
    method: str | None = None,
) -> PatchResult:
    """Attribution patching: the first-order estimate of :func:`patch_sweep` for all sites.

    ``effect(s) = Σ_{entries of s} ∂metric/∂a |_corrupted · (a_clean − a_corrupted)``, from one
    clean forward, one corrupted forward and one backward pass, whatever the number of sites.

    Args:
      model, variables, clean_inputs, corrupted_inputs, sites, metric, method: as in
        :func:`patch_sweep`.

    Returns:
      :class:`PatchResult` whose ``patched = corrupted + effect`` is the estimate ``[site]``
      (``sites.unflatten`` names the axes, as in :func:`patch_sweep`).

    Raises:
      As :func:`patch_sweep`; under jit, out-of-range traced sites give NaN likewise (see
      ``jaxinterp.checked``).

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
    """
    _check_sites(sites)
    _check_call(metric)
    clean_args = _as_args("clean_inputs", clean_inputs)
    corr_args = _as_args("corrupted_inputs", corrupted_inputs)
    _check_pair(clean_args, corr_args)
    clean_out, clean_acts = _run(model, variables, {}, sites.paths, method, clean_args, {})
    ok = _sites_ok(sites, clean_acts)
    clean_m = _scalar_metric(metric, clean_out, "clean")
    zeros = {p: jnp.zeros_like(a) for p, a in clean_acts.items()}

    def corrupted_metric(deltas: dict) -> tuple[jax.Array, dict]:
        edits = {p: (lambda a, p=p: a + deltas[p]) for p in sites.paths}
        out, acts = _run(model, variables, edits, sites.paths, method, corr_args, {})
        return _scalar_metric(metric, out, "corrupted"), acts

    (corr_m, corr_acts), grads = jax.value_and_grad(corrupted_metric, has_aux=True)(zeros)
    contrib = {p: grads[p] * (clean_acts[p] - corr_acts[p]) for p in sites.paths}

    def one_site(site: Sites) -> jax.Array:
        total = jnp.zeros((), jnp.float32)
        for i, p in enumerate(site.paths):
            c = contrib[p]
            total = total + jnp.sum(jnp.where(_site_mask(site, i, c.shape), c, 0.0))
        return total

    effect = jax.vmap(one_site)(sites)
    patched = corr_m + effect
    if ok is not True:
        patched = poison(patched, ok)
    return PatchResult(patched, normalize(patched, clean_m, corr_m), clean_m, corr_m)
