"""Looking at features: top-activating tokens, activation histograms, logit effects, steering.

* :func:`top_activations` streams a dataset of model inputs (token batches) through the model
  (recording one site) and a dictionary, and keeps, for each requested latent, the ``k``
  tokens (example, position) where it is largest — a running ``lax.top_k`` merge per chunk in
  one compiled step, memory ``O(chunk + features · k)``.
* :func:`activation_histogram` counts a latent's nonzero activations in bins.
* :func:`logit_effects` reads a decoder direction through the unembedding:
  ``W_dec[i] @ W_U`` (the direct effect on the logits of adding the feature to the residual
  stream, ignoring the final LayerNorm's scale).
* :func:`steer` is an :func:`jaxinterp.interventions.intervene` edit adding
  ``scale · W_dec[i]`` at a site (every position, or where a mask says).
* :func:`feature_objective` is a :func:`jaxinterp.actmax.maximize` objective: a latent's
  pre-activation ``x · W_enc[:, i] + b_enc[i]`` at the site the dictionary reads. The
  pre-activation, not the activation: TopK's selection and JumpReLU's threshold have zero
  gradient where the latent is off, and every architecture's activation is a non-decreasing
  function of the pre-activation where it is on, so both share their maximizers. It is
  :func:`jaxinterp.actmax.direction` plus the bias, so it is built from traced numbers (a
  ``[target]`` axis of latents vmaps, and new weights reuse the compiled program).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_int, is_traced, value_check
from jaxinterp.actmax import Objective, direction
from jaxinterp.features._arch import (
    ARCHS,
    Params,
    Setting,
    _check_one_setting,
    _check_params,
    encode,
)
from jaxinterp.interventions import capture_sites


class TopActivations(NamedTuple):
    """The largest activations of each feature, best first.

    Attributes:
      values: ``[feature, k]`` activations (``-inf`` where fewer than ``k`` tokens were seen).
      example: ``[feature, k]`` int32 index of the input in the dataset (``-1`` if missing).
      position: ``[feature, k]`` int32 index of the token within its input.
    """

    values: np.ndarray
    example: np.ndarray
    position: np.ndarray


def top_activations(
    model: Any,
    variables: Any,
    params: Params,
    setting: Setting,
    site: str,
    inputs: Iterable[Any],
    features: Any,
    *,
    k: int = 10,
    max_k: int = 64,
) -> TopActivations:
    """The ``k`` tokens on which each of ``features`` is most active, streamed over inputs.

    Args:
      model: a linen module (with ``variables``) or nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      params: one dictionary reading ``site``.
      setting: its :class:`Setting`.
      site: the site the dictionary reads (activations ``[batch, seq, d]``).
      inputs: iterable of input batches (e.g. ``tokens [batch, seq]``), all of one shape.
      features: ``[feature]`` latent indices.
      k: tokens kept per feature.
      max_k: static bound on ``setting.k``.

    Returns:
      :class:`TopActivations` (NumPy).

    >>> import flax.linen as nn
    >>> from jaxinterp.features import init_params, relu
    >>> model = nn.Sequential([nn.Dense(4)])
    >>> v = model.init(jax.random.key(0), jnp.ones((1, 3, 2)))
    >>> p = init_params(jax.random.key(1), 4, 8)
    >>> xs = [jax.random.normal(jax.random.key(i), (2, 3, 2)) for i in range(3)]
    >>> top = top_activations(model, v, p, relu(0.0), "layers_0", xs, [0, 5], k=4)
    >>> top.values.shape, top.example.shape
    ((2, 4), (2, 4))
    """
    k = check_int(k, "k", lo=1)
    _check_one_setting(setting, _check_params(params), max_k, ARCHS)  # raise now, not NaN
    feats = check_array(features, "features", ndim=1, kind="integer")
    d_sae = params.b_enc.shape[-1]
    if feats.size and (int(feats.min()) < 0 or int(feats.max()) >= d_sae):
        raise ValueError(f"features: expected indices in [0, {d_sae - 1}], got {feats.tolist()}")

    @jax.jit
    def step(state, variables, params, x, offset):
        best_v, best_i = state
        _, acts = capture_sites(model, variables, [site])(x)
        a = acts[site]
        batch, seq = a.shape[0], a.shape[1]
        flat = a.reshape(batch * seq, *a.shape[2:])
        lat = jax.vmap(lambda xi: encode(params, xi, setting, max_k=max_k))(flat)[:, feats].T
        ids = offset * seq + jnp.arange(batch * seq, dtype=jnp.int32)
        vals = jnp.concatenate([best_v, lat], axis=1)
        idx = jnp.concatenate([best_i, jnp.broadcast_to(ids, lat.shape)], axis=1)
        top, where = jax.lax.top_k(vals, k)
        return (top, jnp.take_along_axis(idx, where, axis=1)), seq

    state = (
        jnp.full((feats.shape[0], k), -jnp.inf),
        jnp.full((feats.shape[0], k), -1, jnp.int32),
    )
    offset, seq = 0, 1
    for x in inputs:
        state, seq = step(state, variables, params, x, jnp.asarray(offset, jnp.int32))
        offset += int(np.shape(x)[0])
    if offset == 0:
        raise ValueError("inputs: expected at least one batch, got none")
    vals, ids = np.asarray(state[0]), np.asarray(state[1])
    ok = ids >= 0
    return TopActivations(vals, np.where(ok, ids // seq, -1), np.where(ok, ids % seq, -1))


def activation_histogram(
    acts: Any, *, bins: int = 30, log10: bool = True
) -> tuple[np.ndarray, np.ndarray, float]:
    """Histogram of a feature's nonzero activations.

    Args:
      acts: ``[tokens]`` activations of one latent.
      bins: number of bins.
      log10: bin ``log10(activation)`` (the usual view: activations span decades).

    Returns:
      ``(counts [bins], edges [bins + 1], firing_fraction)``.

    >>> counts, edges, frac = activation_histogram(np.array([0.0, 1.0, 10.0, 100.0]), bins=3)
    >>> counts.tolist(), edges.tolist(), frac
    ([1, 1, 1], [0.0, 0.6666666666666666, 1.3333333333333333, 2.0], 0.75)
    """
    try:
        a = np.asarray(acts)
    except (TypeError, ValueError):
        raise TypeError(f"acts: expected an array, got {type(acts).__name__}") from None
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"acts: expected a numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64).reshape(-1)  # float64 as given: no rounding to float32 first
    bins = check_int(bins, "bins", lo=1)
    if a.size == 0:
        raise ValueError("acts: expected at least one activation, got an empty array")
    if not np.isfinite(a).all():
        raise ValueError(
            f"acts: expected finite values, got {int((~np.isfinite(a)).sum())} NaN/inf entries "
            f"of {a.size}"
        )
    on = a[a > 0]
    vals = np.log10(on) if log10 else on
    if vals.size == 0:
        return np.zeros(bins, np.int64), np.linspace(0.0, 1.0, bins + 1), 0.0
    counts, edges = np.histogram(vals, bins=bins)
    return counts, edges, float(on.size / max(a.size, 1))


def logit_effects(params: Params, W_U: Any, features: Any = None) -> jax.Array:
    """Direct logit effects ``W_dec[i] @ W_U`` of decoder directions.

    Args:
      params: one dictionary writing to the residual stream (``W_dec [d_sae, d_model]``).
      W_U: ``[d_model, vocab]`` unembedding.
      features: ``[feature]`` latent indices (default all).

    Returns:
      ``[feature, vocab]``; ``jax.lax.top_k`` of a row gives the tokens a feature promotes.

    >>> from jaxinterp.features import init_params
    >>> p = init_params(jax.random.key(0), 4, 8)
    >>> logit_effects(p, jnp.ones((4, 5)), [1, 2]).shape
    (2, 5)
    """
    W_U = check_array(W_U, "W_U", ndim=2, kind="floating")
    if W_U.shape[0] != params.W_dec.shape[-1] or params.W_dec.ndim != 2:
        raise ValueError(
            f"W_U: expected [d_model={params.W_dec.shape[-1]}, vocab], got {tuple(W_U.shape)}"
        )
    dec = params.W_dec if features is None else params.W_dec[_features(features, params)]
    return dec @ W_U


def _features(features: Any, params: Params) -> jax.Array:
    """``features`` as ``[feature]`` latent indices, checked to lie in ``[0, d_sae)``."""
    feats = check_array(features, "features", ndim=1, kind="integer")
    d_sae = params.W_dec.shape[0]
    if not is_traced(feats) and feats.size and (feats.min() < 0 or feats.max() >= d_sae):
        raise ValueError(f"features: expected indices in [0, {d_sae - 1}], got {feats.tolist()}")
    return feats


def steer(params: Params, feature: Any, scale: Any, *, where: Any = None):
    """An :func:`~jaxinterp.interventions.intervene` edit adding ``scale · W_dec[feature]``.

    Args:
      params: one dictionary (``W_dec [d_sae, d_model]``).
      feature: latent index (int or traced int).
      scale: multiplier (traced allowed, so a sweep over scales can be vmapped).
      where: optional bool mask broadcastable to the activation's leading axes
        (e.g. ``[batch, seq]``: positions to steer); default everywhere.

    Returns:
      ``edit(act [..., d_model]) -> act + scale · W_dec[feature]``.

    >>> from jaxinterp.features import init_params
    >>> p = init_params(jax.random.key(0), 4, 8)
    >>> out = steer(p, 3, 2.0)(jnp.zeros((1, 2, 4)))
    >>> bool(jnp.allclose(out[0, 1], 2.0 * p.W_dec[3]))
    True
    """
    if not isinstance(params, Params):
        raise TypeError(
            f"params: expected a jaxinterp.features.Params, got {type(params).__name__}"
        )
    if params.W_dec.ndim != 2:
        raise ValueError("params: steering needs one SAE decoder W_dec [d_sae, d_model]")
    d_sae, d_model = params.W_dec.shape
    feature = check_array(feature, "feature", ndim=0, kind="integer")
    scale_arr = check_array(scale, "scale", kind="number")
    ok = (feature >= 0) & (feature < d_sae) & jnp.isfinite(scale_arr).all()
    value_check(
        ok,
        f"feature, scale: expected a feature in [0, {d_sae - 1}] and a finite scale, got "
        "feature {} and scale {}",
        feature,
        scale_arr,
    )
    direction = params.W_dec[jnp.clip(feature, 0, d_sae - 1)]
    if is_traced(ok):  # never a clamped row: out of range gives NaN (the package policy)
        direction = jnp.where(ok, direction, jnp.nan)

    def edit(act):
        if not hasattr(act, "shape") or act.ndim < 1 or act.shape[-1] != d_model:
            raise ValueError(
                f"act: steer adds a [d_model={d_model}] direction, but the activation at the "
                f"site has shape {getattr(act, 'shape', type(act).__name__)}"
            )
        add = jnp.asarray(scale, act.dtype) * direction.astype(act.dtype)
        if where is None:
            return act + add
        mask = jnp.asarray(where, bool)[..., None]
        return act + jnp.where(mask, add, 0)

    return edit


def feature_objective(path: str, params: Params, latent: Any) -> Objective:
    """An activation-maximization objective: latent ``latent``'s pre-activation at ``path``.

    ``x · W_enc[:, latent] + b_enc[latent]`` with ``x = acts[path] [batch, ..., d_in]``,
    averaged over the batch and every position (:func:`jaxinterp.actmax.direction` plus the
    bias). Use it with :func:`jaxinterp.actmax.maximize` and any input parameterization (an
    image, :func:`~jaxinterp.actmax.soft_prompt` for a text model); for many latents pass a
    factory ``lambda i: feature_objective(path, params, i)`` and ``targets=latents``.

    Args:
      path: the site the dictionary reads (an SAE or transcoder: ``W_enc [d_in, d_sae]``).
      params: one dictionary (no leading ``[dict]`` axis).
      latent: int index in ``[0, d_sae)`` (a traced int under ``vmap``/``jit``).

    Returns:
      A :class:`jaxinterp.actmax.Objective` (scalar).

    >>> from jaxinterp.features import init_params
    >>> p = init_params(jax.random.key(0), 3, 8)
    >>> x = jnp.ones((2, 5, 3))  # [batch, seq, d_in]
    >>> obj = feature_objective("blocks_0", p, 4)
    >>> bool(jnp.allclose(obj({"blocks_0": x}), (x @ p.W_enc[:, 4] + p.b_enc[4]).mean()))
    True
    """
    if not isinstance(params, Params):
        raise TypeError(f"params: expected Params, got {type(params).__name__}")
    if params.W_enc.ndim != 2 or params.b_enc.ndim != 1:
        raise ValueError(
            f"params: expected one SAE or transcoder (W_enc [d_in, d_sae], b_enc [d_sae]), got "
            f"W_enc {tuple(params.W_enc.shape)}, b_enc {tuple(params.b_enc.shape)}"
        )
    d_sae = params.b_enc.shape[0]
    latent = jnp.asarray(latent)
    if latent.ndim != 0 or not jnp.issubdtype(latent.dtype, jnp.integer):
        raise TypeError(f"latent: expected an int index, got {latent.dtype}{list(latent.shape)}")
    if not is_traced(latent) and not 0 <= int(latent) < d_sae:
        raise ValueError(f"latent: expected an index in [0, {d_sae - 1}], got {int(latent)}")
    return direction(path, params.W_enc[:, latent]) + params.b_enc[latent]


def feature_dashboard(
    model: Any,
    variables: Any,
    params: Params,
    setting: Setting,
    site: str,
    inputs: Any,
    features: Any,
    *,
    k: int = 6,
    token_str: Any = None,
    W_U: Any = None,
    max_k: int = 64,
    title: str = "Dictionary features",
):
    """An interactive page (:func:`jaxinterp.viz.feature_gallery`) of features' top examples.

    For each feature: its top-``k`` input sequences, every token coloured by the feature's
    activation, the activation at the top token as the value; the card label gives the
    feature's firing frequency on ``inputs`` and, with ``W_U``, the tokens its decoder direction
    promotes most (:func:`logit_effects`).

    Args:
      model, variables: the model (linen with variables, or nnx with ``None``).
      params, setting: one dictionary reading ``site`` (``[batch, seq, d]`` activations).
      site: the site the dictionary reads.
      inputs: ``tokens [n, seq]`` (one array; evaluated in one call).
      features: ``[feature]`` latent indices.
      k: examples per feature.
      token_str: ``token id -> str`` for display (default ``str``).
      W_U: optional ``[d_model, vocab]`` unembedding for the promoted tokens.
      max_k: static bound on ``setting.k``.
      title: the page heading.

    Returns:
      A :class:`jaxinterp.viz.View` (``save(path)``; ``data["items"]`` holds the numbers).

    >>> import flax.linen as nn
    >>> from jaxinterp.features import init_params, relu
    >>> model = nn.Sequential([nn.Embed(5, 4)])
    >>> v = model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
    >>> p = init_params(jax.random.key(1), 4, 8)
    >>> toks = jax.random.randint(jax.random.key(2), (6, 3), 0, 5)
    >>> view = feature_dashboard(model, v, p, relu(0.0), "layers_0", toks, [0, 1], k=2)
    >>> len(view.data["items"])
    2
    """
    from jaxinterp.viz import feature_gallery

    if token_str is not None and not callable(token_str):
        raise TypeError(f"token_str: expected a function token id -> str, got {type(token_str)}")

    toks = np.asarray(inputs)
    if toks.ndim != 2:
        raise ValueError(f"inputs: expected tokens [n, seq], got shape {toks.shape}")
    feats = np.asarray(check_array(features, "features", ndim=1, kind="integer"))
    top = top_activations(model, variables, params, setting, site, [toks], feats, k=k, max_k=max_k)

    @jax.jit
    def latents(variables, params, x):
        _, acts = capture_sites(model, variables, [site])(x)
        a = acts[site]
        flat = a.reshape(-1, *a.shape[2:])
        lat = jax.vmap(lambda xi: encode(params, xi, setting, max_k=max_k))(flat)
        return lat.reshape(a.shape[0], a.shape[1], -1)[..., feats]

    lat = np.asarray(latents(variables, params, jnp.asarray(toks)))  # [n, seq, feature]
    freq = (lat > 0).mean(axis=(0, 1))
    show = token_str or str
    promoted = None
    if W_U is not None:
        promoted = np.asarray(jax.lax.top_k(logit_effects(params, W_U, feats), 3)[1])
    labels, examples, ex_acts = [], [], []
    for row, f in enumerate(feats.tolist()):
        label = f"latent {f} · fires on {freq[row]:.1%}"
        if promoted is not None:
            label += " · promotes " + ", ".join(show(int(t)) for t in promoted[row])
        labels.append(label)
        ex = np.maximum(top.example[row], 0)
        examples.append([[show(int(t)) for t in toks[e]] for e in ex])
        ex_acts.append([lat[e, :, row] for e in ex])
    return feature_gallery(
        labels,
        np.where(np.isfinite(top.values[:, 0]), top.values[:, 0], 0.0),
        examples=examples,
        example_values=np.where(np.isfinite(top.values), top.values, 0.0),
        example_indices=top.example,
        example_activations=ex_acts,
        title=title,
    )
