"""Per-dictionary metrics: sparsity, reconstruction, latent firing, and the spliced-in loss.

:func:`evaluate` streams activations through a stack of dictionaries (one compiled call per
chunk, vmapped over the stack) and sums what the metrics need, so the dataset can be larger
than memory: L0 (mean active latents per token), FVU (fraction of variance unexplained,
``Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` over the whole dataset), firing frequency per latent, dead latents
(never fired) and dense latents (firing on more than ``dense`` of the tokens).

:func:`spliced_loss` measures what matters downstream: the model's loss when the activation at
a site is replaced by the dictionary's reconstruction (a :func:`jaxinterp.interventions.replace`
edit with the reconstruction of the clean activation), against the clean loss and the loss with
the site zero-ablated; ``recovered = (L_zero − L_splice) / (L_zero − L_clean)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_finite
from jaxinterp.features._arch import Params, Setting, decode, encode
from jaxinterp.features._train import archs_of
from jaxinterp.interventions import capture_sites, intervene, replace, zero


class Metrics(NamedTuple):
    """Dataset metrics of a stack of dictionaries (``[dict]`` unless noted).

    Attributes:
      l0: mean number of active latents per token.
      fvu: fraction of variance unexplained.
      mse: mean squared error per token (summed over the output).
      frequency: ``[dict, d_sae]`` fraction of tokens on which each latent fires.
      dead: fraction of latents that never fired.
      dense: fraction of latents firing on more than ``dense`` of the tokens.
      tokens: number of tokens evaluated (int).
    """

    l0: np.ndarray
    fvu: np.ndarray
    mse: np.ndarray
    frequency: np.ndarray
    dead: np.ndarray
    dense: np.ndarray
    tokens: int


def _recon_batch(params: Params, setting: Setting, x: jax.Array, max_k: int, archs):
    """``(acts [batch, d_sae], recon [batch, *out_shape])`` of one dictionary."""

    def one(xi):
        a = encode(params, xi, setting, max_k=max_k, archs=archs)
        return a, decode(params, a)

    return jax.vmap(one)(x)


@functools.partial(jax.jit, static_argnames=("max_k", "archs"))
def _sums(params, settings, read, write, xs, ys, max_k, archs):
    def per_dict(p, s, r, w):
        x, y = jnp.take(xs, r, axis=1), jnp.take(ys, w, axis=1)
        acts, recon = _recon_batch(p, s, x, max_k, archs)
        y2 = y.reshape(y.shape[0], -1)
        return (
            jnp.sum(acts != 0),
            jnp.sum((recon - y).reshape(y.shape[0], -1) ** 2),
            y2.sum(0),
            jnp.sum(y2**2),
            jnp.sum(acts != 0, axis=0),
        )

    return jax.vmap(per_dict)(params, settings, read, write)


def evaluate(
    params: Params,
    settings: Setting,
    chunks: Iterable[Any],
    *,
    read: Any = None,
    write: Any = None,
    max_k: int = 64,
    dense: float = 0.1,
) -> Metrics:
    """L0, FVU, firing frequencies, dead and dense latents of a stack over a dataset.

    Args:
      params: stacked :class:`Params` ``[dict, ...]``.
      settings: stacked :class:`Setting` ``[dict]``.
      chunks: iterable of ``[tokens, n_sites, d]`` arrays, or ``(inputs, targets)`` pairs.
      read, write: site indices per dictionary (as in
        :func:`jaxinterp.features.train_steps`; default 0 and ``read``).
      max_k: static bound on the settings' ``k``.
      dense: frequency above which a latent counts as dense.

    Returns:
      :class:`Metrics` (NumPy).

    >>> from jaxinterp.features import init_params, topk, stack_settings
    >>> p = jax.vmap(lambda k: init_params(k, 4, 8))(jax.random.split(jax.random.key(0), 1))
    >>> x = np.random.default_rng(0).normal(size=(100, 1, 4))
    >>> m = evaluate(p, stack_settings([topk(2)]), [x], max_k=2)
    >>> m.frequency.shape, m.tokens, bool(m.l0[0] <= 2)
    ((1, 8), 100, True)
    """
    if not isinstance(params, Params) or params.b_enc.ndim != 2:
        got = params.b_enc.shape if isinstance(params, Params) else type(params).__name__
        raise ValueError(
            f"params: expected a stack of dictionaries (b_enc [dict, d_sae]; one dictionary: "
            f"jax.tree.map(lambda a: a[None], params)), got {got}"
        )
    if not isinstance(settings, Setting) or jnp.shape(settings.arch) != params.b_enc.shape[:1]:
        got = jnp.shape(settings.arch) if isinstance(settings, Setting) else type(settings)
        raise ValueError(
            f"settings: expected {params.b_enc.shape[0]} stacked settings (stack_settings), "
            f"got {got}"
        )
    n = settings.arch.shape[0]
    read = np.zeros((n,), np.int32) if read is None else np.asarray(read)
    write = read if write is None else np.asarray(write)
    for name, idx in (("read", read), ("write", write)):
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim not in (1, 2) or len(idx) != n:
            raise ValueError(f"{name}: expected {n} int site indices, got {idx.tolist()}")
    read, write = read.astype(np.int32), write.astype(np.int32)
    archs = archs_of(settings)
    tot = None
    count = 0
    for chunk in chunks:
        xs, ys = chunk if isinstance(chunk, tuple) else (chunk, chunk)
        xs = jnp.asarray(xs, jnp.float32)
        ys = jnp.asarray(ys, jnp.float32)
        if xs.ndim == 2:
            xs, ys = xs[:, None], (ys[:, None] if ys.ndim == 2 else ys)
        if xs.ndim != 3 or ys.ndim != 3 or ys.shape[0] != xs.shape[0]:
            raise ValueError(
                f"chunks: expected [tokens, n_sites, d] arrays (or [tokens, d]; pairs for "
                f"targets), got shapes {tuple(xs.shape)} and {tuple(ys.shape)}"
            )
        for name, idx, arr in (("read", read, xs), ("write", write, ys)):
            if idx.size and (idx.min() < 0 or idx.max() >= arr.shape[1]):
                raise ValueError(
                    f"{name}: expected site indices in [0, {arr.shape[1] - 1}] (the chunks' "
                    f"site axis), got {idx.tolist()}"
                )
        check_finite(xs, "chunks")
        check_finite(ys, "chunks")
        s = _sums(params, settings, jnp.asarray(read), jnp.asarray(write), xs, ys, max_k, archs)
        s = [np.asarray(a, np.float64) for a in s]
        tot = s if tot is None else [a + b for a, b in zip(tot, s)]
        count += xs.shape[0]
    if tot is None:
        raise ValueError("chunks: expected at least one chunk, got none")
    nnz, sse, ysum, ysq, fired = tot
    var = ysq - (ysum**2).sum(-1) / count
    freq = fired / count
    return Metrics(
        l0=nnz / count,
        fvu=sse / var,
        mse=sse / count,
        frequency=freq,
        dead=(freq == 0).mean(-1),
        dense=(freq > dense).mean(-1),
        tokens=count,
    )


def reconstruct(params: Params, setting: Setting, acts: jax.Array, *, max_k: int = 64) -> jax.Array:
    """Reconstruction of activations with any leading axes (``[..., *in_shape]``).

    Args:
      params: one dictionary.
      setting: its :class:`Setting`.
      acts: ``[..., *in_shape]`` (e.g. ``[batch, seq, d_model]``).
      max_k: static bound on ``setting.k``.

    Returns:
      ``[..., *out_shape]``.

    >>> from jaxinterp.features import init_params, relu
    >>> reconstruct(init_params(jax.random.key(0), 4, 8), relu(0.0), jnp.ones((2, 3, 4))).shape
    (2, 3, 4)
    """
    if not isinstance(params, Params):
        raise TypeError(
            f"params: expected a jaxinterp.features.Params, got {type(params).__name__}"
        )
    acts = check_array(acts, "acts", kind="number")
    in_nd = params.W_enc.ndim - 1
    if acts.shape[acts.ndim - in_nd :] != params.W_enc.shape[:-1] or acts.ndim < in_nd:
        raise ValueError(
            f"acts: expected [..., {', '.join(map(str, params.W_enc.shape[:-1]))}] (the "
            f"dictionary's input shape last), got shape {tuple(acts.shape)}"
        )
    lead = acts.shape[: acts.ndim - in_nd]
    flat = acts.reshape(-1, *acts.shape[acts.ndim - in_nd :])
    _, recon = _recon_batch(params, setting, flat, max_k, None)
    return recon.reshape(*lead, *recon.shape[1:]).astype(acts.dtype)


class SplicedLoss(NamedTuple):
    """Downstream loss with a dictionary spliced in (scalars, or ``[dict]`` when stacked).

    Attributes:
      clean: the model's loss.
      spliced: the loss with the site replaced by the reconstruction.
      zero: the loss with the site zero-ablated.
      recovered: ``(zero − spliced) / (zero − clean)``.
    """

    clean: jax.Array
    spliced: jax.Array
    zero: jax.Array
    recovered: jax.Array


def spliced_loss(
    model: Any,
    variables: Any,
    params: Params,
    settings: Setting,
    site: str,
    inputs: Any,
    loss_fn: Callable[[Any, Any], jax.Array],
    *,
    write_site: str | None = None,
    max_k: int = 64,
    where: Any = None,
) -> SplicedLoss:
    """The model's loss with the reconstruction at ``site``, vs clean and zero-ablation.

    The clean activation at ``site`` is recorded, encoded and decoded, and the result replaces
    the activation at ``write_site`` (default ``site``: an SAE; another site: a transcoder)
    through :func:`jaxinterp.interventions.intervene` with a
    :func:`~jaxinterp.interventions.replace` edit. A stack of dictionaries for the same site
    (leading ``[dict]`` axis on ``params`` and ``settings``) is a vmap over the stack.

    Args:
      model: a linen module (with ``variables``) or nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      params: one dictionary, or a stack ``[dict, ...]``.
      settings: its :class:`Setting`, or a stack ``[dict]``.
      site: the site read (e.g. ``"block_0"``, the residual stream after block 0).
      inputs: the model's input batch (e.g. ``tokens [batch, seq]``).
      loss_fn: ``(model output, inputs) -> scalar`` loss.
      write_site: the site replaced (default ``site``).
      max_k: static bound on ``k``.
      where: optional bool mask of the activation's leading axes (e.g. ``[batch, seq]``):
        only these positions are spliced, and only these are zero-ablated for the reference
        (e.g. ``positions > 0``, to leave the first token's outsized residual stream alone, as
        is usual for language models); default every position.

    Returns:
      :class:`SplicedLoss` (scalars, or ``[dict]`` for a stack).

    >>> import flax.linen as nn
    >>> from jaxinterp.features import Params, relu
    >>> model = nn.Sequential([nn.Dense(3), nn.Dense(2)])
    >>> v = model.init(jax.random.key(0), jnp.ones((1, 4)))
    >>> eye = jnp.eye(3)  # an exact dictionary: relu(x) - relu(-x) = x
    >>> p = Params(jnp.concatenate([eye, -eye], 1), jnp.zeros(6),
    ...            jnp.concatenate([eye, -eye]), jnp.zeros(3), jnp.zeros(6))
    >>> out = spliced_loss(model, v, p, relu(0.0), "layers_0", jnp.ones((5, 4)),
    ...                    lambda y, x: jnp.mean(y ** 2))
    >>> bool(jnp.allclose(out.spliced, out.clean)), round(float(out.recovered), 4)
    (True, 1.0)
    """
    write_site = site if write_site is None else write_site
    if not isinstance(params, Params) or not isinstance(settings, Setting):
        raise TypeError(
            f"params, settings: expected Params and Setting, got {type(params).__name__} and "
            f"{type(settings).__name__}"
        )
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected (output, inputs) -> scalar, got {type(loss_fn)}")
    stacked = params.b_enc.ndim == 2
    mask = None if where is None else jnp.asarray(where)
    if mask is not None and mask.dtype != jnp.bool_:
        raise TypeError(f"where: expected a bool mask, got dtype {mask.dtype}")
    want = params.b_enc.shape[:1] if stacked else ()
    if jnp.shape(settings.arch) != want:
        raise ValueError(
            f"settings: expected {'a stack of ' + str(want[0]) if stacked else 'one Setting'} "
            f"(as params), got arch of shape {jnp.shape(settings.arch)}"
        )
    return _spliced(
        model, variables, params, settings, site, write_site, inputs, loss_fn, max_k, stacked, mask
    )


def _leading(mask: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a mask of shape ``mask`` broadcasts to the leading axes of ``shape``."""
    if len(mask) >= len(shape):
        return False
    lead = tuple(shape[: len(mask)])
    try:
        return np.broadcast_shapes(mask, lead) == lead
    except ValueError:
        return False


def _spliced(
    model, variables, params, settings, site, write_site, inputs, loss_fn, max_k, stk, mask
):
    @jax.jit
    def run(variables, params, settings, inputs, mask):
        sites = [site] if write_site == site else [site, write_site]
        out, acts = capture_sites(model, variables, sites)(inputs)
        clean = loss_fn(out, inputs)
        if jnp.ndim(clean) != 0:
            raise ValueError(
                f"loss_fn: expected a scalar loss (e.g. the mean over the batch), got shape "
                f"{jnp.shape(clean)}"
            )
        shape = acts[write_site].shape
        if mask is not None and not _leading(mask.shape, shape):
            raise ValueError(
                f"where: expected a mask of the leading axes of the activation {tuple(shape)}, "
                f"got shape {tuple(mask.shape)}"
            )
        sel = None if mask is None else mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))
        ablated = loss_fn(
            intervene(model, variables, {write_site: zero(where=sel)})(inputs), inputs
        )

        def one(p, s):
            recon = reconstruct(p, s, acts[site], max_k=max_k)
            if recon.shape != acts[write_site].shape:
                raise ValueError(
                    f"write_site: the reconstruction has shape {recon.shape}, the activation at "
                    f"{write_site!r} {acts[write_site].shape}"
                )
            edit = replace(recon.astype(acts[write_site].dtype), where=sel)
            return loss_fn(intervene(model, variables, {write_site: edit})(inputs), inputs)

        spliced = jax.vmap(one)(params, settings) if stk else one(params, settings)
        rec = (ablated - spliced) / (ablated - clean)
        bc = lambda a: jnp.broadcast_to(a, jnp.shape(spliced))
        return SplicedLoss(bc(clean), spliced, bc(ablated), rec)

    return run(variables, params, settings, inputs, mask)
