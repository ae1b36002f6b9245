"""Synthetic data with known sparse features (a superposition toy) and how well they are found.

``n_features`` random unit directions in ``d < n_features`` dimensions; each token switches on
every feature independently with probability ``p`` and gives it a coefficient uniform in
``[0, 1]``; the token is ``Σ_f c_f · feature_f``. A dictionary that found the features has,
for every true feature, a decoder row of cosine close to 1 (:func:`max_cosine`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxinterp._checks import check_array, check_int, check_key


def toy_features(key: jax.Array, n_features: int, d: int) -> jax.Array:
    """``[n_features, d]`` random unit-norm ground-truth directions.

    >>> toy_features(jax.random.key(0), 8, 4).shape
    (8, 4)
    """
    key = check_key(key)
    n_features = check_int(n_features, "n_features", lo=1)
    d = check_int(d, "d", lo=1)
    f = jax.random.normal(key, (n_features, d))
    return f / jnp.linalg.norm(f, axis=1, keepdims=True)


def toy_batch(key: jax.Array, features: jax.Array, n: int, p: float) -> jax.Array:
    """``[n, d]`` tokens: sparse nonnegative combinations of ``features``.

    Args:
      key: PRNG key.
      features: ``[n_features, d]``.
      n: number of tokens.
      p: probability that a feature is on in a token (coefficient uniform in ``[0, 1]``).

    Returns:
      ``[n, d]`` float32.

    >>> x = toy_batch(jax.random.key(1), toy_features(jax.random.key(0), 8, 4), 5, 0.2)
    >>> x.shape
    (5, 4)
    """
    key = check_key(key)
    features = check_array(features, "features", ndim=2, kind="floating")
    n = check_int(n, "n", lo=1)
    if not 0 < p <= 1:
        raise ValueError(f"p: expected a probability in (0, 1], got {p!r}")
    k1, k2 = jax.random.split(key)
    on = jax.random.bernoulli(k1, p, (n, features.shape[0]))
    return (on * jax.random.uniform(k2, on.shape)) @ features


def max_cosine(W_dec: jax.Array, features: jax.Array) -> jax.Array:
    """Mean over true features of the best cosine with a learned decoder row.

    Args:
      W_dec: ``[..., d_sae, d]`` learned decoder rows (a leading ``[dict]`` axis allowed).
      features: ``[n_features, d]`` true directions.

    Returns:
      ``[...]``: 1.0 when every true feature has an exactly parallel decoder row.

    >>> f = toy_features(jax.random.key(0), 8, 4)
    >>> round(float(max_cosine(f, f)), 4)
    1.0
    """
    W_dec = check_array(W_dec, "W_dec", kind="floating")
    features = check_array(features, "features", ndim=2, kind="floating")
    if W_dec.ndim < 2 or W_dec.shape[-1] != features.shape[-1]:
        raise ValueError(
            f"W_dec: expected [..., d_sae, d={features.shape[-1]}] (features' d), got shape "
            f"{tuple(W_dec.shape)}"
        )
    w = W_dec / jnp.maximum(jnp.linalg.norm(W_dec, axis=-1, keepdims=True), 1e-12)
    f = features / jnp.linalg.norm(features, axis=-1, keepdims=True)
    return jnp.einsum("...kd,td->...tk", w, f).max(-1).mean(-1)
