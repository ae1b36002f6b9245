"""Lucid's redirected ReLU gradient, for the first steps of ``maximize(redirect_relu=...)``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


@jax.custom_vjp
def _relu_redirect(x: jax.Array) -> jax.Array:
    return jnp.maximum(x, 0)


def _relu_redirect_fwd(x):
    return jnp.maximum(x, 0), x


def _relu_redirect_bwd(x, g):
    # Lucid's redirected ReLU: the plain gradient where active; where inactive, pass the
    # cotangent of the loss (which the ascent minimizes) when it is negative, i.e. when a
    # larger input would lower the loss, so the step pushes the unit towards activity.
    return (jnp.where((x > 0) | (g < 0), g, 0.0),)


_relu_redirect.defvjp(_relu_redirect_fwd, _relu_redirect_bwd)


class redirected_relu:
    """Within the block, ``jax.nn.relu`` (and flax's ``nn.relu``, ``nnx.relu``) are
    :func:`_relu_redirect`: a model that looks ``relu`` up when it is traced (``nn.relu(x)``)
    gets the redirected gradient; one that bound the function earlier keeps plain gradients.
    Only the forward pass of the first ``redirect_relu`` steps is traced inside the block."""

    def __enter__(self):
        import flax.linen as linen

        self._saved = (jax.nn.relu, linen.relu, nnx.relu)
        jax.nn.relu = linen.relu = nnx.relu = _relu_redirect
        return self

    def __exit__(self, *exc):
        import flax.linen as linen

        jax.nn.relu, linen.relu, nnx.relu = self._saved
        return False
