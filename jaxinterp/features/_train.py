"""Training many dictionaries in one compiled step: a vmap over stacked dictionaries.

Every dictionary of a stack has the same parameter shapes (same ``in_shape``, ``d_sae``,
``out_shape``); they may differ in everything a :class:`~jaxinterp.features.Setting` holds
(architecture, sparsity coefficient, ``k``) and in the site they read and reconstruct. One
training step is ``vmap`` over the stack of the single-dictionary step (loss, gradient, optax
Adam update, decoder-norm projection), and :func:`train_steps` runs ``lax.scan`` over a block
of batches under one ``jit``. So L sites × K settings train in one compiled program. Inside
it, dictionaries of one architecture are vmapped together (the stack is split by architecture
once, outside the scan), so no dictionary pays for another architecture's branch.

*Widths.* Dictionaries of different widths do not stack; either make one stack (one compiled
step) per width, or pad the narrow ones to the widest and pass ``latent_mask`` (padded latents
are masked out of the activations and never receive gradient). This module does both: pass a
``latent_mask`` to :func:`init_train`; :func:`jaxinterp.features.train` leaves grouping to
the caller.

*Data.* Each training batch is ``[batch, n_sites, d]`` (the same tokens at every site, e.g. the
residual stream of every layer), optionally with a second array of targets
``[batch, n_targets, d_out]`` (transcoders). Dictionary ``j`` reads ``xs[:, read[j]]`` and
reconstructs ``ys[:, write[j]]``; ``read[j]`` is one index (SAE, transcoder) or a list of
``n_sources`` indices (crosscoder). The host-side shuffling buffer (:class:`ShuffleBuffer`,
NumPy) mixes chunks of activations streamed from a model by
:func:`jaxinterp.features.activation_chunks` before they are cut into batches.

*Constraints.* With ``unit_decoder=True`` (default) the gradient's component parallel to each
decoder row is removed before the Adam update, and rows are renormalised to unit norm after it
(rows over all sources for a crosscoder). The learning rate warms up linearly over
``lr_warmup`` steps, the sparsity coefficient over ``sparsity_warmup`` steps. A latent is dead
once it has not fired for ``dead_tokens`` training tokens (the AuxK loss uses them).
BatchTopK's inference threshold is an exponential moving average of the batch thresholds.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp._checks import check_array, check_finite, check_int
from jaxinterp.features._arch import (
    ARCHS,
    Params,
    Setting,
    batch_topk_threshold,
    loss,
    pre_activations,
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Static training hyperparameters (shared by every dictionary of a stack).

    Attributes:
      lr: Adam learning rate after warm-up.
      lr_warmup: steps of linear learning-rate warm-up (0: none).
      sparsity_warmup: steps of linear sparsity-coefficient warm-up (0: none).
      b1: Adam's first-moment decay.
      b2: Adam's second-moment decay.
      unit_decoder: project decoder rows to unit norm (and their gradients orthogonal).
      max_k: static bound on every TopK ``k`` of the stack.
      k_aux: dead latents used by the AuxK loss.
      dead_tokens: a latent that has not fired for this many tokens is dead.
      threshold_decay: EMA decay of BatchTopK's inference threshold.
    """

    lr: float = 1e-3
    lr_warmup: int = 0
    sparsity_warmup: int = 0
    b1: float = 0.9
    b2: float = 0.999
    unit_decoder: bool = True
    max_k: int = 64
    k_aux: int = 64
    dead_tokens: int = 100_000
    threshold_decay: float = 0.99

    def __post_init__(self) -> None:
        for name in ("lr_warmup", "sparsity_warmup", "dead_tokens"):
            check_int(getattr(self, name), name, lo=0)
        for name in ("max_k", "k_aux"):
            check_int(getattr(self, name), name, lo=1)
        for name in ("lr", "b1", "b2", "threshold_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name}: expected a number > 0, got {v!r}")
        for name, hi in (("b1", 1.0), ("b2", 1.0), ("threshold_decay", 1.0 + 1e-12)):
            v = getattr(self, name)
            if not v < hi:  # b1 = 1 divides by 1 - b1^t = 0; a decay > 1 diverges
                want = "(0, 1)" if name != "threshold_decay" else "(0, 1]"
                raise ValueError(f"{name}: expected a number in {want}, got {v!r}")

    def optimizer(self) -> optax.GradientTransformation:
        """Adam with the linear learning-rate warm-up."""
        warm = max(self.lr_warmup, 1)
        sched = lambda step: self.lr * jnp.minimum(1.0, (step + 1) / warm)
        return optax.adam(sched, b1=self.b1, b2=self.b2)


class TrainState(NamedTuple):
    """The state of a stack of dictionaries in training (every leaf has a leading ``[dict]``).

    Attributes:
      params: stacked :class:`Params`.
      opt_state: stacked optax Adam state.
      since_fired: ``[dict, d_sae]`` int32 tokens since each latent last fired.
      latent_mask: ``[dict, d_sae]`` bool, False for padded latents (narrower dictionaries).
      dec_mask: ``[dict, d_sae, *out_shape[:-1]]`` float, 0 where a latent's decoder to a
        source is fixed at zero (crosscoder exclusive latents), else 1.
      step: ``[dict]`` int32 steps done.
    """

    params: Params
    opt_state: Any
    since_fired: jax.Array
    latent_mask: jax.Array
    dec_mask: jax.Array
    step: jax.Array


class StepMetrics(NamedTuple):
    """Per-step metrics, ``[dict]`` each (``[steps, dict]`` from :func:`train_steps`).

    Attributes:
      loss: mean total loss.
      mse: mean squared error summed over the output.
      fvu: fraction of variance unexplained on the batch.
      l0: mean active latents per token.
      aux: mean AuxK term.
      dead: fraction of (unpadded) latents that are dead.
    """

    loss: jax.Array
    mse: jax.Array
    fvu: jax.Array
    l0: jax.Array
    aux: jax.Array
    dead: jax.Array


def _unit_rows(w: jax.Array) -> jax.Array:
    flat = w.reshape(w.shape[0], -1)
    n = jnp.linalg.norm(flat, axis=-1, keepdims=True)
    return (flat / jnp.where(n > 0, n, 1.0)).reshape(w.shape)


def init_train(
    params: Params,
    config: TrainConfig = TrainConfig(),
    *,
    latent_mask: Any = None,
    dec_mask: Any = None,
) -> TrainState:
    """The training state of a stack of dictionaries.

    Args:
      params: stacked :class:`Params` (leading ``[dict]`` axis), e.g.
        ``jax.vmap(lambda k: init_params(k, d, d_sae))(keys)``.
      config: hyperparameters.
      latent_mask: ``[dict, d_sae]`` bool (default all True): pad+mask for several widths.
      dec_mask: ``[dict, d_sae, n_sources]`` (crosscoders) 0/1: exclusive latents decode to
        the sources marked 1 (default all 1: shared latents).

    Returns:
      A :class:`TrainState`; with ``unit_decoder`` the decoder rows are normalised and the
      masks applied.

    >>> from jaxinterp.features import init_params
    >>> ps = jax.vmap(lambda k: init_params(k, 4, 8))(jax.random.split(jax.random.key(0), 3))
    >>> init_train(ps).since_fired.shape
    (3, 8)
    """
    if not isinstance(params, Params):
        raise TypeError(f"params: expected stacked Params, got {type(params).__name__}")
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config: expected a TrainConfig, got {type(config).__name__}")
    n, d_sae = params.b_enc.shape if params.b_enc.ndim == 2 else (None, None)
    if n is None:
        raise ValueError(
            f"params: expected a leading [dict] axis (b_enc [dict, d_sae]), got b_enc of shape "
            f"{tuple(params.b_enc.shape)}"
        )
    lm = jnp.ones((n, d_sae), bool) if latent_mask is None else jnp.asarray(latent_mask, bool)
    if lm.shape != (n, d_sae):
        raise ValueError(f"latent_mask: expected shape {(n, d_sae)}, got {tuple(lm.shape)}")
    src_shape = (n, d_sae, *params.W_dec.shape[2:-1])
    dm = jnp.ones(src_shape) if dec_mask is None else jnp.asarray(dec_mask, jnp.float32)
    if dm.shape != src_shape:
        raise ValueError(f"dec_mask: expected shape {src_shape}, got {tuple(dm.shape)}")
    return _init_state(params, lm, dm, config)


@functools.partial(jax.jit, static_argnames=("config",))
def _init_state(params: Params, lm: jax.Array, dm: jax.Array, config: TrainConfig) -> TrainState:
    # one compiled call (eager vmaps would compile every primitive); new buffers, since
    # train_steps donates the state
    n, d_sae = lm.shape
    params = jax.vmap(_apply_masks)(params, lm, dm)
    if config.unit_decoder:
        params = params._replace(W_dec=jax.vmap(_unit_rows)(params.W_dec))
    opt_state = jax.vmap(config.optimizer().init)(params)
    return TrainState(
        params,
        opt_state,
        jnp.zeros((n, d_sae), jnp.int32),
        lm,
        dm,
        jnp.zeros((n,), jnp.int32),
    )


def _apply_masks(params: Params, lm: jax.Array, dm: jax.Array) -> Params:
    """Zeroes padded latents (encoder column, decoder row) and masked decoder sources.

    One dictionary: ``lm: [d_sae]``, ``dm: [d_sae, *out_shape[:-1]]``.
    """
    dmask = dm * lm.reshape(lm.shape + (1,) * (dm.ndim - 1))
    return params._replace(
        W_enc=params.W_enc * lm, W_dec=params.W_dec * dmask[..., None], b_enc=params.b_enc * lm
    )


def _take(data: jax.Array, index: jax.Array) -> jax.Array:
    """``data[:, index]`` for a scalar index (``[batch, d]``) or a vector (``[batch, n, d]``)."""
    return jnp.take(data, index, axis=1)


def _one_step(params, opt_state, since, lm, dm, step, setting, read, write, xs, ys, config, archs):
    x = _take(xs, read)
    y = _take(ys, write)
    batch = x.shape[0]
    dead = (since >= config.dead_tokens) & lm
    warm = max(config.sparsity_warmup, 1)
    scale = jnp.minimum(1.0, (step + 1) / warm).astype(jnp.float32)
    kw = dict(dead=dead, sparsity_scale=scale, max_k=config.max_k, k_aux=config.k_aux, archs=archs)

    def total(p):
        thr = None
        if "batch_topk" in archs:
            pre = jax.vmap(pre_activations, (None, 0))(p, x)
            pre = jnp.where(lm, pre, -jnp.inf)
            thr = jax.lax.stop_gradient(batch_topk_threshold(pre, setting.k, config.max_k))
        p = _apply_masks(p, lm, dm)
        terms, acts = jax.vmap(lambda xi, yi: loss(p, xi, yi, setting, batch_threshold=thr, **kw))(
            x, y
        )
        return terms.total.mean(), (terms, acts, thr)

    (_, (terms, acts, thr)), grads = jax.value_and_grad(total, has_aux=True)(params)
    if config.unit_decoder:
        w = _unit_rows(params.W_dec).reshape(params.W_dec.shape[0], -1)
        g = grads.W_dec.reshape(w.shape)
        g = g - jnp.sum(g * w, -1, keepdims=True) * w
        grads = grads._replace(W_dec=g.reshape(params.W_dec.shape))
    updates, opt_state = config.optimizer().update(grads, opt_state, params)
    new = optax.apply_updates(params, updates)
    new = _apply_masks(new, lm, dm)
    if config.unit_decoder:
        new = new._replace(W_dec=_unit_rows(new.W_dec))
    if thr is not None:
        ema = config.threshold_decay * params.threshold + (1 - config.threshold_decay) * thr
        is_btk = setting.arch == ARCHS.index("batch_topk")
        new = new._replace(threshold=jnp.where(is_btk, ema, new.threshold))
    fired = jnp.any(acts > 0, axis=0)
    since = jnp.where(fired, 0, since + batch)
    flat_y = y.reshape(batch, -1)
    var = jnp.sum((flat_y - flat_y.mean(0)) ** 2)
    metrics = StepMetrics(
        terms.total.mean(),
        terms.mse.mean(),
        terms.mse.sum() / var,
        terms.l0.mean(),
        terms.aux.mean(),
        jnp.sum(dead) / jnp.maximum(jnp.sum(lm), 1),
    )
    return (new, opt_state, since, step + 1), metrics


@functools.partial(jax.jit, static_argnames=("config", "groups"), donate_argnums=(0,))
def _scan(state, settings, read, write, xs, ys, config, groups):
    # One compiled program; inside it the stack is split by architecture (static index
    # groups), each group vmapped with only its own branch, and the scan carries the groups.
    def take(tree, idx):
        return jax.tree.map(lambda a: a[np.asarray(idx)], tree)

    carry = tuple(
        take((state.params, state.opt_state, state.since_fired, state.step), idx)
        for _, idx in groups
    )
    fixed = tuple(
        take((state.latent_mask, state.dec_mask, settings, read, write), idx) for _, idx in groups
    )

    def body(carry, batch):
        bx, by = batch
        new, mets = [], []
        for (arch, _), (p, o, since, step), (lm, dm, st, r, w) in zip(groups, carry, fixed):
            one = functools.partial(_one_step, xs=bx, ys=by, config=config, archs=(arch,))
            (p, o, since, step), m = jax.vmap(one)(p, o, since, lm, dm, step, st, r, w)
            new.append((p, o, since, step))
            mets.append(m)
        return tuple(new), tuple(mets)

    carry, mets = jax.lax.scan(body, carry, (xs, ys))
    inv = np.argsort(np.concatenate([np.asarray(idx) for _, idx in groups]))
    params, opt_state, since, step = jax.tree.map(
        lambda *parts: jnp.concatenate(parts)[inv], *carry
    )
    metrics = jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=1)[:, inv], *mets)
    return state._replace(params=params, opt_state=opt_state, since_fired=since, step=step), metrics


def _groups(settings: Setting) -> tuple[tuple[str, tuple[int, ...]], ...]:
    codes = np.asarray(settings.arch).reshape(-1)
    return tuple(
        (a, tuple(np.flatnonzero(codes == i).tolist()))
        for i, a in enumerate(ARCHS)
        if (codes == i).any()
    )


def archs_of(settings: Setting) -> tuple[str, ...]:
    """The architecture names present in a (concrete) stack of settings, in ``ARCHS`` order.

    >>> from jaxinterp.features import stack_settings, relu, topk
    >>> archs_of(stack_settings([topk(4), relu(1.0), topk(2)]))
    ('relu', 'topk')
    """
    codes = set(np.asarray(settings.arch).reshape(-1).tolist())
    return tuple(a for i, a in enumerate(ARCHS) if i in codes)


def _index(value: Any, n: int, name: str, n_sites: int) -> jax.Array:
    idx = np.zeros((n,), np.int32) if value is None else np.asarray(value)
    if not np.issubdtype(idx.dtype, np.integer) or idx.ndim not in (1, 2) or idx.shape[0] != n:
        raise ValueError(
            f"{name}: expected {n} int site indices (or [{n}, n_sources]), got {value!r}"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= n_sites):
        raise ValueError(f"{name}: expected indices in [0, {n_sites - 1}], got {idx.tolist()}")
    return jnp.asarray(idx, jnp.int32)


def train_steps(
    state: TrainState,
    settings: Setting,
    xs: Any,
    ys: Any = None,
    *,
    read: Any = None,
    write: Any = None,
    config: TrainConfig = TrainConfig(),
) -> tuple[TrainState, StepMetrics]:
    """Runs ``steps`` training steps of every dictionary of a stack in one compiled call.

    Args:
      state: from :func:`init_train` (donated: do not reuse it after the call).
      settings: stacked :class:`Setting` ``[dict]``.
      xs: ``[steps, batch, n_sites, d_in]`` inputs (``[steps, batch, d_in]``: one site).
      ys: ``[steps, batch, n_targets, d_out]`` targets (default ``xs``).
      read: ``[dict]`` site index per dictionary (default 0), or ``[dict, n_sources]``.
      write: the same for targets (default ``read``).
      config: hyperparameters (static: a new config compiles a new program).

    Returns:
      ``(state, metrics)`` with :class:`StepMetrics` fields ``[steps, dict]``.

    >>> from jaxinterp.features import init_params, topk, relu, stack_settings
    >>> keys = jax.random.split(jax.random.key(0), 2)
    >>> state = init_train(jax.vmap(lambda k: init_params(k, 8, 16))(keys))
    >>> xs = jax.random.normal(jax.random.key(1), (5, 32, 8))
    >>> state, m = train_steps(state, stack_settings([topk(2), relu(0.1)]), xs,
    ...                        config=TrainConfig(max_k=4))
    >>> m.l0.shape, state.step.tolist()
    ((5, 2), [5, 5])
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state: expected a TrainState, got {type(state).__name__}")
    if any(getattr(a, "is_deleted", lambda: False)() for a in jax.tree.leaves(state)):
        raise ValueError(
            "state: its arrays were donated to an earlier train_steps call; pass the state "
            "that call returned"
        )
    if not isinstance(settings, Setting):
        raise TypeError(f"settings: expected a stacked Setting, got {type(settings).__name__}")
    n = state.step.shape[0]
    if settings.arch.shape != (n,):
        raise ValueError(
            f"settings: expected {n} stacked settings (one per dictionary), got arch of shape "
            f"{tuple(settings.arch.shape)}"
        )
    if np.asarray(settings.k).max() > config.max_k:
        raise ValueError(
            f"settings: k={int(np.asarray(settings.k).max())} exceeds config.max_k={config.max_k}"
        )
    xs = jnp.asarray(xs)
    if xs.ndim == 3:
        xs = xs[:, :, None]
    if xs.ndim != 4:
        raise ValueError(f"xs: expected [steps, batch, n_sites, d], got shape {tuple(xs.shape)}")
    ys = xs if ys is None else jnp.asarray(ys)
    if ys.ndim == 3:
        ys = ys[:, :, None]
    if ys.ndim != 4 or ys.shape[:2] != xs.shape[:2]:
        raise ValueError(
            f"ys: expected [steps, batch, n_targets, d_out] with steps, batch = "
            f"{tuple(xs.shape[:2])}, got shape {tuple(ys.shape)}"
        )
    if xs.shape[1] == 0:
        raise ValueError(f"xs: expected a batch of at least one example, got shape {xs.shape}")
    d_sae = state.params.b_enc.shape[-1]
    ks, topk_like = (
        np.asarray(settings.k),
        np.isin(np.asarray(settings.arch), (ARCHS.index("topk"), ARCHS.index("batch_topk"))),
    )
    if (topk_like & ((ks < 1) | (ks > d_sae))).any():
        raise ValueError(
            f"settings: k={ks[topk_like].tolist()} latents per example, expected k in [1, "
            f"d_sae={d_sae}]"
        )
    for name, arr in (("xs", xs), ("ys", ys)):
        check_array(arr, name, kind="number")
        check_finite(arr, name)
    read = _index(read, n, "read", xs.shape[2])
    write = _index(read if write is None else write, n, "write", ys.shape[2])
    return _scan(state, settings, read, write, xs, ys, config, _groups(settings))
