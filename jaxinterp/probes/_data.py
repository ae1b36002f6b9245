"""Probe data: splits of examples and features from any captured layer.

:func:`layer_features` runs a model through :func:`jaxinterp.capture.capture` chunk by chunk
(one jitted call per chunk, so peak memory is one chunk's activations) and pools each selected
activation into one feature vector per example, giving the ``[layer, n, d]`` array the fitting
functions take.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_int, check_key
from jaxinterp.capture import check_model, check_sites, parse_site, run_sites
from jaxinterp.sharding import iter_chunks

Array = jax.Array


def train_val_test_split(
    key: Array, n: int, fractions: Sequence[float] = (0.6, 0.2, 0.2)
) -> tuple[Array, ...]:
    """Random disjoint index arrays covering ``range(n)``, one per fraction.

    Args:
      key: PRNG key (``jax.random.key``); plain ints are refused.
      n: number of examples (a static int; works under ``jit`` with a traced key).
      fractions: split sizes (normalised to sum to 1), e.g. ``(train, val, test)``.

    Returns:
      A tuple of ``[n_i]`` int32 index arrays, sizes rounded so they sum to ``n``.

    Raises:
      TypeError: a plain int ``key``, non-int ``n``.
      ValueError: ``n < 1``; negative, NaN or all-zero ``fractions``.

    >>> tr, va, te = train_val_test_split(jax.random.key(0), 10, (0.6, 0.2, 0.2))
    >>> (len(tr), len(va), len(te))
    (6, 2, 2)
    """
    key = check_key(key, "key")
    n = check_int(n, "n", lo=1)
    try:
        fr = np.asarray(fractions, float)
    except (TypeError, ValueError):
        raise TypeError(f"fractions: expected a sequence of numbers, got {fractions!r}") from None
    if fr.ndim != 1 or fr.size == 0 or not np.all(np.isfinite(fr)) or np.any(fr < 0):
        raise ValueError(f"fractions: expected finite non-negative numbers, got {fractions}")
    if fr.sum() <= 0:
        raise ValueError(f"fractions: expected a positive sum, got {fractions}")
    edges = np.round(np.cumsum(fr / fr.sum()) * n).astype(int)
    edges[-1] = n
    perm = jax.random.permutation(key, n).astype(jnp.int32)
    starts = np.concatenate([[0], edges[:-1]])
    return tuple(perm[s:e] for s, e in zip(starts, edges))


def _pool(act: Array, pool: str | Callable[[Array], Array], mask: Array | None) -> Array:
    if callable(pool):
        return pool(act)
    if act.ndim == 2 or pool == "flatten":
        return act.reshape(act.shape[0], -1)
    if pool == "tokens":
        return act.reshape(-1, act.shape[-1])
    if pool not in ("mean", "last"):
        raise ValueError(
            f"pool: expected 'mean', 'last', 'flatten', 'tokens' or a callable, got {pool!r}"
        )
    if mask is None:
        if pool == "mean":
            return act.mean(axis=tuple(range(1, act.ndim - 1)))
        return act[:, -1].reshape(act.shape[0], -1)
    if act.ndim != 3 or mask.shape != act.shape[:2]:
        raise ValueError(
            f"token_mask: expected [batch, seq] = {act.shape[:2]} for a [batch, seq, d] "
            f"activation, got mask {mask.shape} and activation {act.shape}"
        )
    m = mask.astype(jnp.float32)
    if pool == "mean":
        return (act * m[..., None]).sum(1) / jnp.maximum(m.sum(1), 1.0)[:, None]
    last = jnp.maximum(m.sum(1).astype(jnp.int32) - 1, 0)
    return jnp.take_along_axis(act, last[:, None, None], axis=1)[:, 0]


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _as_paths_error(err: Exception) -> Exception:
    """A site error from :func:`run_sites` (``sites:``/``site:``) renamed to this ``paths``."""
    msg = str(err.args[0]) if err.args else str(err)
    if msg.startswith("mutable: "):  # a BatchNorm model in training mode
        return type(err)(
            "model_kwargs: " + msg[len("mutable: ") :].split(" The model probably")[0] + " The "
            "model probably runs in training mode (BatchNorm, dropout): pass its eval flag in "
            "model_kwargs, e.g. {'train': False} or {'deterministic': True}"
        )
    for prefix in ("sites: ", "site: "):
        if msg.startswith(prefix):
            return type(err)("paths: " + msg[len(prefix) :])
    return err


def layer_features(
    model: Any,
    variables: Any,
    inputs: Any,
    paths: Sequence[str],
    *,
    pool: str | Callable[[Array], Array] = "mean",
    token_mask: Array | None = None,
    chunk_size: int = 256,
    dtype: Any = jnp.float32,
    method: str | Callable[..., Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> Array:
    """Features ``[layer, n, d]`` from the activations at ``paths``, one row per example.

    Args:
      model: linen module (with ``variables``) or nnx module (``variables=None``).
      variables: linen variables (every collection, e.g. ``params`` and ``batch_stats``) or
        ``None``.
      inputs: the model's input ``[batch, ...]``, or a tuple of positional inputs that all
        have a leading batch axis (e.g. ``(input_ids, attention_mask)``).
      paths: exact sites, one per layer: module paths (``"block_0"``: its first call), or
        any site of :func:`jaxinterp.capture.run_sites`: an element of a tuple or dataclass
        output (``"encoder/layer/0:output[0]"``, ``"block:output.hidden"``), an input
        (``"head:input"``), a later call (``"mlp@1"``), one layer of a scan
        (``"layers/mlp[2]"``). Each must name one array.
      pool: how an activation becomes rows: ``"mean"`` over positions (``[batch, seq, d]``;
        real tokens only when ``token_mask`` is given), ``"last"`` (last real) position,
        ``"flatten"`` all non-batch axes, ``"tokens"`` one row per position
        (``n = batch · seq``), or a callable ``act -> [rows, d]``. ``[batch, d]`` activations
        are used as they are.
      token_mask: ``[batch, seq]``, 1/True for real tokens, for ``"mean"`` and ``"last"``.
      chunk_size: examples per jitted call (peak memory is one chunk's activations).
      dtype: output dtype (``jnp.bfloat16`` halves memory and probe fitting traffic).
      method: the model method to run: a name or a callable taking the model first (default
        ``__call__``).
      model_kwargs: keyword arguments of every model call, not chunked (e.g.
        ``{"train": False}`` for a BatchNorm model in eval mode, ``{"deterministic": True}``);
        array values are passed to the jitted call, other values are static.

    Returns:
      ``[layer, n, d]`` where ``d`` is the widest layer; narrower layers are zero-padded on the
      right (zero columns change neither logistic nor ridge probes).

    Raises:
      KeyError: a path matches nothing (lists the available paths).
      ValueError: bad ``pool``, ``token_mask``, ``chunk_size`` or empty ``inputs``; a path
        that names a tuple or other pytree instead of one array (name an element).
      TypeError: ``paths`` is a single string or holds non-strings; ``model_kwargs`` is not a
        mapping with string keys.

    >>> from jaxinterp import models
    >>> mlp = models.digits_mlp()
    >>> x = jnp.asarray(models.load_digits().test.x[:5])
    >>> layer_features(mlp.model, mlp.variables, x, ["act_0", "act_1"]).shape[:2]
    (2, 5)
    """
    check_model(model, variables)
    if isinstance(paths, str) or not all(isinstance(p, str) for p in paths):
        raise TypeError(f"paths: expected a list of path strings, got {paths!r}")
    paths = list(paths)
    if not paths:
        raise ValueError("paths: expected at least one path")
    try:
        check_sites(paths)
    except (TypeError, ValueError) as err:
        raise _as_paths_error(err) from None
    for p in paths:
        if any(c in parse_site(p).path for c in "*?["):
            raise ValueError(
                f"paths: {p!r} is a glob; layer_features takes one exact site per layer (one "
                "row of features each): name the paths, e.g. from jaxinterp.capture.list_paths"
            )
    chunk_size = check_int(chunk_size, "chunk_size", lo=1)
    if not (isinstance(pool, str) or callable(pool)):
        raise TypeError(f"pool: expected a string or a callable, got {type(pool).__name__}")
    if isinstance(pool, str) and pool not in ("mean", "last", "flatten", "tokens"):
        raise ValueError(
            f"pool: expected 'mean', 'last', 'flatten', 'tokens' or a callable, got {pool!r}"
        )
    if model_kwargs is None:
        model_kwargs = {}
    if not isinstance(model_kwargs, Mapping) or not all(isinstance(k, str) for k in model_kwargs):
        raise TypeError(
            f"model_kwargs: expected a mapping of keyword names to values, got {model_kwargs!r:.80}"
        )
    dynamic = {k: v for k, v in model_kwargs.items() if _is_array(v)}
    static = {k: v for k, v in model_kwargs.items() if k not in dynamic}
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    leaves = jax.tree.leaves(args)
    if not leaves or any(getattr(a, "ndim", 0) < 1 for a in leaves):
        raise ValueError("inputs: expected arrays with a leading batch axis")
    n = leaves[0].shape[0]
    if any(a.shape[0] != n for a in leaves):
        raise ValueError(
            f"inputs: expected the same batch size in every input, got "
            f"{[a.shape[0] for a in leaves]}"
        )
    if n < 1:
        raise ValueError(f"inputs: expected at least one example, got batch size {n}")
    if token_mask is not None:
        token_mask = check_array(token_mask, "token_mask", ndim=2)
        if token_mask.shape[0] != n:
            raise ValueError(f"token_mask: expected {n} rows (batch), got shape {token_mask.shape}")

    # variables are an argument, not a closure: closed-over arrays would be baked into the
    # compiled program as constants (a second copy of the weights, replicated when sharded)
    @jax.jit
    def run(vs, chunk, mask, dyn):
        try:
            _, acts = run_sites(model, vs, *chunk, sites=paths, method=method, **static, **dyn)
        except (KeyError, ValueError) as err:
            raise _as_paths_error(err) from None
        for p in paths:
            if not _is_array(acts[p]):
                raise ValueError(
                    f"paths: {p!r} is a {type(acts[p]).__name__}, not one array; name one "
                    f"element of it: {p + '[0]' if ':' in p else p + ':output[0]'!r}, "
                    "':output.name' for a dataclass field"
                )
        return [_pool(acts[p], pool, mask).astype(dtype) for p in paths]

    parts = [
        run(variables, chunk, mask, dynamic)
        for chunk, mask in iter_chunks((args, token_mask), chunk_size)
    ]
    per_layer = [jnp.concatenate([p[i] for p in parts]) for i in range(len(paths))]
    d = max(a.shape[-1] for a in per_layer)
    return jnp.stack([jnp.pad(a, ((0, 0), (0, d - a.shape[-1]))) for a in per_layer])
