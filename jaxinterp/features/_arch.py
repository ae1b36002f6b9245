"""Dictionary architectures as pure functions over one parameter pytree, written for ONE example.

A dictionary maps an input ``x`` of shape ``in_shape`` to ``d_sae`` latent activations and back
to a reconstruction of shape ``out_shape``:

* sparse autoencoder (SAE): ``in_shape == out_shape == (d,)`` and the target is ``x`` itself;
* transcoder: ``in_shape = (d_in,)``, ``out_shape = (d_out,)``, the target is another site
  (e.g. MLP input → MLP output), ``d_in != d_out`` allowed;
* crosscoder: ``in_shape = out_shape = (n_sources, d)`` (several layers, or one layer of two
  models), a per-source encoder and decoder and shared latents. ``pre = Σ_s x[s] @ W_enc[s]``,
  ``recon[s] = a @ W_dec[:, s] + b_dec[s]``. Exclusive latents (decoding to one source only,
  e.g. base-only / fine-tune-only features) are a decoder mask ``[d_sae, n_sources]`` given to
  :func:`jaxinterp.features.train`; shared latents decode to every source.

The activation function is chosen by a :class:`Setting` (traced numbers, so dictionaries with
*different* architectures and sparsities stack along a leading axis and train in one vmapped
step; the branches that are absent from a stack are not computed — see ``archs``):

====================  ==========================================================================
``relu``              ``a = relu(pre)``; penalty ``l1 · Σ_i a_i · ‖W_dec[i]‖`` (Anthropic 2024)
``topk``              keep the ``k`` largest ``relu(pre)`` (Gao et al. 2024); AuxK loss: the
                      ``k_aux`` largest *dead* latents reconstruct the residual error
``batch_topk``        training: keep the ``k · batch`` largest over the whole batch
                      (Bussmann et al. 2024); inference: ``a = relu(pre) · [pre > threshold]``
                      with the threshold estimated during training; AuxK loss as TopK
``jumprelu``          ``a = pre · H(pre − θ)`` (Rajamanoharan et al. 2024); penalty
                      ``l0 · Σ_i H(pre_i − θ_i)``; θ learned through the straight-through
                      estimator with a rectangle kernel of width ``bandwidth`` ε:
                      ``∂H(z−θ)/∂θ = −K((z−θ)/ε)/ε``, ``∂[z·H(z−θ)]/∂θ = −θ·K((z−θ)/ε)/ε``
====================  ==========================================================================

The decoder weight of latent ``i`` is ``Σ_s ‖W_dec[i, s]‖`` (the crosscoder paper's sum of
per-source norms; one source: the row norm). The encoder has no pre-encoder bias subtraction
(``x − b_dec`` is undefined for a transcoder): SAELens's ``apply_b_dec_to_input=False``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_int, check_key, is_traced, poison, value_check

ARCHS: tuple[str, ...] = ("relu", "topk", "batch_topk", "jumprelu")
"""Architecture names, in the order of their integer codes in :attr:`Setting.arch`."""


class Params(NamedTuple):
    """A dictionary's parameters (stack them along a leading ``[dict]`` axis to train many).

    Attributes:
      W_enc: ``[*in_shape, d_sae]`` encoder (``[d_in, d_sae]`` for an SAE or transcoder,
        ``[n_sources, d, d_sae]`` for a crosscoder).
      b_enc: ``[d_sae]``.
      W_dec: ``[d_sae, *out_shape]`` decoder, one row (direction) per latent.
      b_dec: ``[*out_shape]``.
      threshold: ``[d_sae]`` JumpReLU threshold θ (learned), or BatchTopK's inference threshold
        (estimated during training); unused by ``relu`` and ``topk``.
    """

    W_enc: jax.Array
    b_enc: jax.Array
    W_dec: jax.Array
    b_dec: jax.Array
    threshold: jax.Array


class Setting(NamedTuple):
    """Architecture and sparsity of one dictionary, as numbers (stackable along ``[dict]``).

    Make one with :func:`relu`, :func:`topk`, :func:`batch_topk` or :func:`jumprelu`; stack
    several with :func:`stack_settings`.

    Attributes:
      arch: int32 code, an index into ``ARCHS``.
      sparsity: ``l1`` coefficient (``relu``), ``l0`` coefficient (``jumprelu``), 0 otherwise.
      k: int32 active latents per example (``topk``, ``batch_topk``), 0 otherwise.
      bandwidth: the JumpReLU kernel width ε (1 otherwise).
      aux: AuxK loss coefficient (``topk``, ``batch_topk``), 0 otherwise.
    """

    arch: jax.Array
    sparsity: jax.Array
    k: jax.Array
    bandwidth: jax.Array
    aux: jax.Array


def _setting(arch: str, sparsity=0.0, k=0, bandwidth=1.0, aux=0.0) -> Setting:
    return Setting(
        jnp.asarray(ARCHS.index(arch), jnp.int32),
        jnp.asarray(sparsity, jnp.float32),
        jnp.asarray(k, jnp.int32),
        jnp.asarray(bandwidth, jnp.float32),
        jnp.asarray(aux, jnp.float32),
    )


def _positive(value, name: str, zero_ok: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    if not np.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
        want = ">= 0" if zero_ok else "> 0"
        raise ValueError(f"{name}: expected a finite number {want}, got {value!r}")
    return float(value)


def relu(l1: float) -> Setting:
    """A ReLU SAE with the decoder-norm-weighted L1 penalty ``l1 · Σ_i a_i ‖W_dec[i]‖``.

    >>> relu(5.0).sparsity.item()
    5.0
    """
    return _setting("relu", sparsity=_positive(l1, "l1"))


def topk(k: int, aux: float = 1 / 32) -> Setting:
    """A TopK SAE keeping ``k`` latents per example, with AuxK coefficient ``aux``.

    >>> int(topk(8).k), ARCHS[int(topk(8).arch)]
    (8, 'topk')
    """
    return _setting("topk", k=check_int(k, "k", lo=1), aux=_positive(aux, "aux"))


def batch_topk(k: int, aux: float = 1 / 32) -> Setting:
    """A BatchTopK SAE keeping ``k · batch`` latents per batch, with AuxK coefficient ``aux``.

    >>> ARCHS[int(batch_topk(8).arch)]
    'batch_topk'
    """
    return _setting("batch_topk", k=check_int(k, "k", lo=1), aux=_positive(aux, "aux"))


def jumprelu(l0: float, bandwidth: float = 1e-3) -> Setting:
    """A JumpReLU SAE with penalty ``l0 · L0`` and STE kernel width ``bandwidth``.

    >>> float(jumprelu(0.1, bandwidth=0.05).bandwidth)
    0.05000000074505806
    """
    return _setting(
        "jumprelu",
        sparsity=_positive(l0, "l0"),
        bandwidth=_positive(bandwidth, "bandwidth", zero_ok=False),
    )


def _check_params(params: Any, name: str = "params") -> Params:
    """``params`` is a :class:`Params` (one dictionary or a stack), else ``TypeError``."""
    if not isinstance(params, Params):
        raise TypeError(
            f"{name}: expected a jaxinterp.features.Params (init_params, load_saelens), got "
            f"{type(params).__name__}"
        )
    return params


def _check_one_setting(setting: Any, params: Params, max_k: Any, archs: tuple[str, ...]) -> Any:
    """Checks one :class:`Setting` against one dictionary; ``ok`` (True, or a traced flag).

    ``k`` above ``max_k`` or ``d_sae`` would keep fewer latents than asked (a clamp), and an
    architecture left out of ``archs`` would run another branch: concrete settings raise,
    traced ones give ``ok`` for ``poison`` and register the check.
    """
    if not isinstance(setting, Setting):
        raise TypeError(
            f"setting: expected a Setting (topk, relu, ...), got {type(setting).__name__}"
        )
    if jnp.ndim(setting.arch) != 0:
        raise ValueError(
            f"setting: expected one Setting (scalars) for one dictionary, got arch of shape "
            f"{tuple(jnp.shape(setting.arch))}; vmap over stacked settings and dictionaries"
        )
    max_k = check_int(max_k, "max_k", lo=1)
    d_sae = params.b_enc.shape[-1]
    codes = jnp.asarray([ARCHS.index(a) for a in archs])
    topk_like = (setting.arch == ARCHS.index("topk")) | (setting.arch == ARCHS.index("batch_topk"))
    limit = min(max_k, d_sae)
    k_ok = ~topk_like | ((setting.k >= 1) & (setting.k <= limit))
    arch_ok = jnp.any(setting.arch == codes)
    ok = k_ok & arch_ok
    if not is_traced(ok):
        if not bool(arch_ok):
            raise ValueError(
                f"archs: the setting's architecture {ARCHS[int(setting.arch)]!r} is not in "
                f"archs={list(archs)}; its branch would not be computed"
            )
        if not bool(k_ok):
            raise ValueError(
                f"setting: k={int(setting.k)} latents per example, expected k in [1, "
                f"{limit}] (max_k={max_k}, d_sae={d_sae})"
            )
        return True
    value_check(
        ok,
        f"setting: arch code {{}} with k={{}}: expected an architecture in {list(archs)} and "
        f"k in [1, {limit}] (max_k={max_k}, d_sae={d_sae})",
        setting.arch,
        setting.k,
    )
    return ok


def stack_settings(settings: list[Setting]) -> Setting:
    """Stacks settings along a leading ``[dict]`` axis.

    >>> stack_settings([relu(1.0), topk(4)]).arch.tolist()
    [0, 1]
    """
    if not settings or not all(isinstance(s, Setting) for s in settings):
        raise TypeError(f"settings: expected a non-empty list of Setting, got {settings!r}")
    return jax.tree.map(lambda *a: jnp.stack(a), *settings)


def init_params(
    key: jax.Array,
    in_shape: int | tuple[int, ...],
    d_sae: int,
    out_shape: int | tuple[int, ...] | None = None,
    *,
    threshold: float = 1e-3,
    scale: float = 1.0,
) -> Params:
    """Initial parameters: random unit-norm decoder rows, encoder = decoder transposed.

    The tied start of Gao et al. (2024) (also used for JumpReLU and crosscoders); biases zero,
    ``threshold`` filled with the given value. For a transcoder the encoder is an independent
    draw of the same scale.

    Args:
      key: PRNG key.
      in_shape: ``d_in`` or ``(n_sources, d)``.
      d_sae: number of latents.
      out_shape: ``d_out`` or ``(n_sources, d)``; default ``in_shape``.
      threshold: initial JumpReLU threshold.
      scale: norm of each decoder row.

    Returns:
      :class:`Params` with ``W_enc: [*in_shape, d_sae]``, ``W_dec: [d_sae, *out_shape]``.

    >>> p = init_params(jax.random.key(0), 8, 32)
    >>> p.W_enc.shape, p.W_dec.shape, p.b_dec.shape
    ((8, 32), (32, 8), (8,))
    >>> round(float(jnp.linalg.norm(p.W_dec[0])), 4)
    1.0
    """
    key = check_key(key)
    for name, shp in (("in_shape", in_shape), ("out_shape", out_shape)):
        if not isinstance(shp, (int, np.integer, tuple, list, type(None))) or isinstance(shp, bool):
            raise TypeError(f"{name}: expected d or (n_sources, d), got {shp!r}")
    for name, value, zero_ok in (("threshold", threshold, True), ("scale", scale, False)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
        if not np.isfinite(value) or (not zero_ok and value <= 0):
            want = "a finite number" if zero_ok else "a finite number > 0"
            raise ValueError(f"{name}: expected {want}, got {value!r}")
    if in_shape is None:
        raise TypeError("in_shape: expected d or (n_sources, d), got None")
    in_shape = (in_shape,) if isinstance(in_shape, (int, np.integer)) else tuple(in_shape)
    out_shape = in_shape if out_shape is None else out_shape
    out_shape = (out_shape,) if isinstance(out_shape, (int, np.integer)) else tuple(out_shape)
    for name, shp in (("in_shape", in_shape), ("out_shape", out_shape)):
        if len(shp) not in (1, 2) or not all(isinstance(s, (int, np.integer)) for s in shp):
            raise ValueError(f"{name}: expected d or (n_sources, d), got {shp!r}")
        for s in shp:
            check_int(s, name, lo=1)
    d_sae = check_int(d_sae, "d_sae", lo=1)
    k1, k2 = jax.random.split(key)
    dec = jax.random.normal(k1, (d_sae, int(np.prod(out_shape))))
    dec = scale * dec / jnp.linalg.norm(dec, axis=-1, keepdims=True)
    if in_shape == out_shape:
        enc = dec.T
    else:
        enc = jax.random.normal(k2, (int(np.prod(in_shape)), d_sae))
        enc = scale * enc / jnp.linalg.norm(enc, axis=0, keepdims=True)
    return Params(
        W_enc=enc.reshape(*in_shape, d_sae),
        b_enc=jnp.zeros((d_sae,)),
        W_dec=dec.reshape(d_sae, *out_shape),
        b_dec=jnp.zeros(out_shape),
        threshold=jnp.full((d_sae,), threshold, jnp.float32),
    )


def decoder_norms(params: Params) -> jax.Array:
    """Per-latent decoder weight ``Σ_s ‖W_dec[i, s]‖`` (one source: the row norm), ``[d_sae]``.

    >>> p = init_params(jax.random.key(0), (2, 4), 8)
    >>> decoder_norms(p).shape
    (8,)
    """
    _check_params(params)
    sq = jnp.sum(params.W_dec**2, axis=-1)
    pos = sq > 0  # masked (all-zero) rows: norm 0 with a zero gradient, not NaN
    norms = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
    return norms.reshape(norms.shape[0], -1).sum(-1)


def pre_activations(params: Params, x: jax.Array) -> jax.Array:
    """Encoder pre-activations ``x @ W_enc + b_enc`` for one example.

    Args:
      params: one dictionary.
      x: ``in_shape`` (``[d_in]`` or ``[n_sources, d]``).

    Returns:
      ``[d_sae]``.

    >>> p = init_params(jax.random.key(0), 4, 6)
    >>> pre_activations(p, jnp.ones(4)).shape
    (6,)
    """
    _check_params(params)
    x = check_array(x, "x", kind="number")
    nd = params.W_enc.ndim - 1
    if x.shape != params.W_enc.shape[:-1]:
        raise ValueError(
            f"x: expected one example of shape {tuple(params.W_enc.shape[:-1])}, got "
            f"{tuple(x.shape)} (vmap over a batch)"
        )
    return jnp.tensordot(x, params.W_enc, axes=nd) + params.b_enc


def _rect(u: jax.Array) -> jax.Array:
    return (jnp.abs(u) < 0.5).astype(u.dtype)


def _ste_inputs(z: Any, theta: Any, bandwidth: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Checks the three arguments and broadcasts them to one shape (the gradient of a broadcast
    ``theta`` or ``bandwidth`` is then summed back to its own shape by autodiff)."""
    z = check_array(z, "z", kind="floating")
    theta = check_array(theta, "theta", kind="number")
    bandwidth = check_array(bandwidth, "bandwidth", kind="number")
    try:
        shape = jnp.broadcast_shapes(z.shape, theta.shape, bandwidth.shape)
    except ValueError:
        raise ValueError(
            f"theta, bandwidth: expected shapes that broadcast against z {tuple(z.shape)}, got "
            f"theta {tuple(theta.shape)} and bandwidth {tuple(bandwidth.shape)}"
        ) from None
    value_check(
        jnp.all(jnp.isfinite(bandwidth) & (bandwidth > 0)),
        "bandwidth: expected positive values that are finite, got {}",
        bandwidth,
    )
    return tuple(jnp.broadcast_to(a, shape) for a in (z, theta, bandwidth))


def step_ste(z: jax.Array, theta: jax.Array, bandwidth: jax.Array) -> jax.Array:
    """Heaviside ``H(z − θ)`` with the straight-through pseudo-derivative in θ.

    Forward: ``[z > θ]``. Backward: no gradient to ``z``; ``∂/∂θ = −K((z−θ)/ε)/ε`` with the
    rectangle kernel ``K(u) = [|u| < 1/2]`` (Rajamanoharan et al. 2024, eq. 11).

    Args:
      z: pre-activations, any shape, floating.
      theta: thresholds, broadcastable against ``z`` (e.g. ``[d_sae]`` for ``z`` of
        ``[batch, d_sae]``; its gradient is summed over the broadcast axes).
      bandwidth: ε > 0, broadcastable against ``z`` (usually a scalar).

    Returns:
      ``H(z − θ)`` in ``z``'s dtype, of the broadcast shape.

    Raises:
      ValueError: the shapes do not broadcast, or ``bandwidth`` is not finite and positive
        (under ``jit`` through :func:`jaxinterp.checked`).

    >>> jax.grad(lambda t: step_ste(jnp.array(1.0), t, jnp.array(0.5)))(jnp.array(0.9)).item()
    -2.0
    >>> jax.grad(lambda t: step_ste(jnp.ones((3, 2)), t, 0.5).sum())(jnp.array([0.9, 0.0]))
    Array([-6.,  0.], dtype=float32)
    """
    return _step(*_ste_inputs(z, theta, bandwidth))


def jump_ste(z: jax.Array, theta: jax.Array, bandwidth: jax.Array) -> jax.Array:
    """JumpReLU ``z · H(z − θ)`` with the straight-through pseudo-derivative in θ.

    Backward: ``∂/∂z = H(z − θ)``; ``∂/∂θ = −θ · K((z−θ)/ε)/ε`` (Rajamanoharan et al. 2024,
    eq. 12).

    Args:
      z: pre-activations, any shape, floating.
      theta: thresholds, broadcastable against ``z`` (gradient summed over broadcast axes).
      bandwidth: ε > 0, broadcastable against ``z``.

    Returns:
      ``z · H(z − θ)``, of the broadcast shape.

    Raises:
      ValueError: the shapes do not broadcast, or ``bandwidth`` is not finite and positive
        (under ``jit`` through :func:`jaxinterp.checked`).

    >>> jax.grad(lambda t: jump_ste(jnp.array(1.0), t, jnp.array(0.5)))(jnp.array(0.9)).item()
    -1.7999999523162842
    """
    return _jump(*_ste_inputs(z, theta, bandwidth))


@jax.custom_vjp
def _step(z: jax.Array, theta: jax.Array, bandwidth: jax.Array) -> jax.Array:
    return (z > theta).astype(z.dtype)


def _step_fwd(z, theta, bandwidth):
    return _step(z, theta, bandwidth), (z, theta, bandwidth)


def _step_bwd(res, g):
    z, theta, eps = res
    g_theta = -g * _rect((z - theta) / eps) / eps
    return jnp.zeros_like(z), g_theta.astype(theta.dtype), jnp.zeros_like(eps)


_step.defvjp(_step_fwd, _step_bwd)


@jax.custom_vjp
def _jump(z: jax.Array, theta: jax.Array, bandwidth: jax.Array) -> jax.Array:
    return z * (z > theta).astype(z.dtype)


def _jump_fwd(z, theta, bandwidth):
    return _jump(z, theta, bandwidth), (z, theta, bandwidth)


def _jump_bwd(res, g):
    z, theta, eps = res
    gz = g * (z > theta).astype(z.dtype)
    g_theta = -g * theta * _rect((z - theta) / eps) / eps
    return gz.astype(z.dtype), g_theta.astype(theta.dtype), jnp.zeros_like(eps)


_jump.defvjp(_jump_fwd, _jump_bwd)


def _keep_top(values: jax.Array, k: jax.Array, max_k: int) -> jax.Array:
    """Mask of the ``k`` (traced, ``<= max_k``) largest entries of a vector."""
    max_k = min(max_k, values.shape[0])
    _, idx = jax.lax.top_k(values, max_k)
    keep = (jnp.arange(max_k) < k).astype(values.dtype)
    return jnp.zeros_like(values).at[idx].set(keep)


def _present(archs) -> tuple[str, ...]:
    archs = ARCHS if archs is None else tuple(archs)
    bad = [a for a in archs if a not in ARCHS]
    if bad or not archs:
        raise ValueError(f"archs: expected names from {list(ARCHS)}, got {list(archs)}")
    return archs


def _select(setting: Setting, branches: dict[str, jax.Array]) -> jax.Array:
    """The branch of ``setting.arch`` (only present branches are computed)."""
    names = list(branches)
    out = branches[names[0]]
    for name in names[1:]:
        out = jnp.where(setting.arch == ARCHS.index(name), branches[name], out)
    return out


def encode(
    params: Params,
    x: jax.Array,
    setting: Setting,
    *,
    max_k: int = 64,
    archs: tuple[str, ...] | None = None,
    batch_threshold: jax.Array | None = None,
) -> jax.Array:
    """Latent activations of one example.

    Args:
      params: one dictionary.
      x: ``in_shape``.
      setting: one :class:`Setting` (scalars).
      max_k: static bound on ``setting.k`` for TopK (``lax.top_k`` needs a static size).
      archs: the architectures that may occur (static; default all). Only these branches are
        computed, so a stack of TopK dictionaries pays nothing for the others.
      batch_threshold: BatchTopK during training: the batch's threshold (scalar); default the
        inference threshold ``params.threshold``.

    Returns:
      ``[d_sae]`` activations (``>= 0`` except JumpReLU with a negative threshold).

    >>> p = init_params(jax.random.key(0), 16, 64)
    >>> x = jax.random.normal(jax.random.key(1), (16,))
    >>> int((encode(p, x, topk(5), max_k=8) > 0).sum())
    5
    >>> acts = jax.vmap(encode, (None, 0, None))(p, jnp.ones((3, 16)), relu(1.0))
    >>> acts.shape
    (3, 64)
    """
    archs = _present(archs)
    ok = _check_one_setting(setting, _check_params(params), max_k, archs)
    pre = pre_activations(params, x)
    pos = jax.nn.relu(pre)
    branches = {}
    for name in archs:
        if name == "relu":
            branches[name] = pos
        elif name == "topk":
            branches[name] = pos * _keep_top(pre, setting.k, max_k)
        elif name == "batch_topk":
            if batch_threshold is None:  # inference: JumpReLU-like, strictly above
                keep = pre > params.threshold
            else:  # training: the k·batch largest, the threshold itself included
                keep = pre >= batch_threshold
            branches[name] = pos * keep.astype(pre.dtype)
        else:
            branches[name] = jump_ste(pre, params.threshold, setting.bandwidth)
    out = _select(setting, branches)
    return out if ok is True else poison(out, ok)


def decode(params: Params, acts: jax.Array) -> jax.Array:
    """Reconstruction ``acts @ W_dec + b_dec`` of one example.

    Args:
      params: one dictionary.
      acts: ``[d_sae]``.

    Returns:
      ``out_shape``.

    >>> p = init_params(jax.random.key(0), (2, 4), 8)
    >>> decode(p, jnp.ones(8)).shape
    (2, 4)
    """
    _check_params(params)
    acts = check_array(acts, "acts", kind="number")
    if acts.shape != params.W_dec.shape[:1]:
        raise ValueError(
            f"acts: expected one example's [d_sae={params.W_dec.shape[0]}] activations, got "
            f"shape {tuple(acts.shape)} (vmap over a batch)"
        )
    return jnp.tensordot(acts, params.W_dec, axes=1) + params.b_dec


def batch_topk_threshold(pre: jax.Array, k: jax.Array, max_k: int) -> jax.Array:
    """BatchTopK's threshold: the ``k · batch``-th largest of ``relu(pre)`` over a batch.

    Args:
      pre: ``[batch, d_sae]`` pre-activations.
      k: active latents per example (traced, ``<= max_k``).
      max_k: static bound on ``k``.

    Returns:
      ``[]`` the threshold; latents with ``pre >= threshold`` are kept (ties may keep a few
      more).

    >>> pre = jnp.array([[3.0, 1.0, 0.5], [2.0, 0.1, 0.2]])
    >>> batch_topk_threshold(pre, jnp.array(1), 2).item()
    2.0
    """
    pre = check_array(pre, "pre", ndim=2, kind="floating")
    max_k = check_int(max_k, "max_k", lo=1)
    batch, d_sae = pre.shape
    if batch == 0 or d_sae == 0:
        raise ValueError(f"pre: expected a non-empty [batch, d_sae] array, got {pre.shape}")
    k = check_array(k, "k", ndim=0, kind="integer")
    limit = min(max_k, d_sae)
    ok = (k >= 1) & (k <= limit)
    value_check(ok, f"k: expected k in [1, {limit}] (max_k={max_k}, d_sae={d_sae}), got {{}}", k)
    n = min(max_k * batch, pre.size)
    vals, _ = jax.lax.top_k(jax.nn.relu(pre).reshape(-1), n)
    idx = jnp.clip(k * batch - 1, 0, n - 1)  # in range whenever ok (else poisoned below)
    return vals[idx] if not is_traced(ok) else poison(vals[idx], ok)


class Loss(NamedTuple):
    """Loss terms of one example (a vmap over the batch gives ``[batch]`` each).

    Attributes:
      total: ``mse + sparsity + aux`` with the sparsity coefficient scaled by the warm-up.
      mse: ``Σ (recon − target)²`` over the output.
      sparsity: the weighted L1 (``relu``) or L0 (``jumprelu``) penalty, coefficient included.
      aux: the AuxK term, coefficient included (TopK, BatchTopK).
      l0: number of active latents.
    """

    total: jax.Array
    mse: jax.Array
    sparsity: jax.Array
    aux: jax.Array
    l0: jax.Array


def loss(
    params: Params,
    x: jax.Array,
    target: jax.Array,
    setting: Setting,
    *,
    dead: jax.Array | None = None,
    sparsity_scale: jax.Array | float = 1.0,
    max_k: int = 64,
    k_aux: int = 32,
    archs: tuple[str, ...] | None = None,
    batch_threshold: jax.Array | None = None,
) -> tuple[Loss, jax.Array]:
    """Training loss of one example.

    ``mse = ‖decode(encode(x)) − target‖²``; ``relu``: ``+ l1 · s · Σ_i a_i ‖W_dec[i]‖``;
    ``jumprelu``: ``+ l0 · s · Σ_i H(pre_i − θ_i)`` (STE in θ); ``topk``/``batch_topk``:
    ``+ aux · ‖e − ê‖²`` where ``e = target − recon`` (no gradient) and ``ê`` decodes (without
    ``b_dec``) the ``k_aux`` largest pre-activations among ``dead`` latents (Gao et al.
    2024, AuxK; zero when no latent is dead). ``s`` is ``sparsity_scale`` (warm-up).

    Args:
      params: one dictionary.
      x: ``in_shape``.
      target: ``out_shape`` (``x`` for an SAE or crosscoder).
      setting: one :class:`Setting`.
      dead: ``[d_sae]`` bool, latents that have not fired for a while (default none).
      sparsity_scale: multiplies the sparsity coefficient (sparsity warm-up).
      max_k: static bound on ``setting.k``.
      k_aux: static number of dead latents used by AuxK.
      archs: architectures present (static), as in :func:`encode`.
      batch_threshold: BatchTopK's batch threshold during training.

    Returns:
      ``(Loss, acts)`` with ``acts: [d_sae]``.

    >>> p = init_params(jax.random.key(0), 4, 8)
    >>> terms, acts = loss(p, jnp.ones(4), jnp.ones(4), relu(0.0))
    >>> bool(terms.total >= 0), acts.shape
    (True, (8,))
    """
    archs = _present(archs)
    _check_params(params)
    target = check_array(target, "target", kind="number")
    if dead is not None:
        dead = check_array(dead, "dead", kind="bool", shape=(params.b_enc.shape[-1],))
    k_aux = check_int(k_aux, "k_aux", lo=0)
    if not is_traced(sparsity_scale) and not (
        np.all(np.isfinite(np.asarray(sparsity_scale))) and np.all(np.asarray(sparsity_scale) >= 0)
    ):
        raise ValueError(f"sparsity_scale: expected a finite number >= 0, got {sparsity_scale!r}")
    if target.shape != params.b_dec.shape:
        raise ValueError(
            f"target: expected one example of shape {tuple(params.b_dec.shape)}, got "
            f"{tuple(target.shape)}"
        )
    acts = encode(params, x, setting, max_k=max_k, archs=archs, batch_threshold=batch_threshold)
    recon = decode(params, acts)
    err = recon - target
    mse = jnp.sum(err**2)
    zero = jnp.zeros((), mse.dtype)
    pen = {}
    if "relu" in archs:
        pen["relu"] = setting.sparsity * jnp.sum(acts * decoder_norms(params))
    if "jumprelu" in archs:
        pre = pre_activations(params, x)
        pen["jumprelu"] = setting.sparsity * jnp.sum(
            step_ste(pre, params.threshold, setting.bandwidth)
        )
    sparsity = sparsity_scale * _select(setting, {a: pen.get(a, zero) for a in archs})
    aux = zero
    if dead is not None and ("topk" in archs or "batch_topk" in archs):
        pre = pre_activations(params, x)
        d_sae = pre.shape[0]
        ka = min(k_aux, d_sae)
        masked = jnp.where(dead, pre, -jnp.inf)
        vals, idx = jax.lax.top_k(masked, ka)
        a_aux = jnp.zeros_like(pre).at[idx].set(jnp.where(vals > 0, vals, 0.0))
        e_hat = jnp.tensordot(a_aux, params.W_dec, axes=1)
        e = jax.lax.stop_gradient(target - recon)
        aux_term = jnp.where(jnp.any(dead), jnp.sum((e - e_hat) ** 2), 0.0)
        aux = _select(
            setting,
            {a: (setting.aux * aux_term if a in ("topk", "batch_topk") else zero) for a in archs},
        )
    l0 = jnp.sum(acts != 0).astype(mse.dtype)
    return Loss(mse + sparsity + aux, mse, sparsity, aux, l0), acts
