"""Small reference vision models (linen): an MLP and a CNN for 8×8 digits.

Paths (for :func:`jaxinterp.capture`):

* ``MLP``: ``dense_0``, ``dense_1``, ... (pre-activation), ``act_0``, ``act_1``, ... (post-ReLU
  hidden units) and ``logits``.
* ``CNN``: ``conv_0``, ``act_0`` (``[batch, h, w, channels]``), ``conv_1``, ``act_1``,
  ``dense`` and ``act_2`` (``[batch, hidden]``), ``logits`` (``[batch, classes]``).

Activations live in small named modules so a neuron or channel after the nonlinearity can be
named by path, which is how feature visualization usually targets units.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class ReLU(nn.Module):
    """``jax.nn.relu`` as a module, so its output has a path of its own."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(x)


class MLP(nn.Module):
    """Multilayer perceptron ``[batch, features] -> [batch, num_classes]``.

    Attributes:
      hidden: widths of the hidden layers.
      num_classes: output width.
    """

    hidden: Sequence[int] = (128, 128)
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0], -1) if x.ndim > 2 else x
        for i, width in enumerate(self.hidden):
            x = nn.Dense(width, name=f"dense_{i}")(x)
            x = ReLU(name=f"act_{i}")(x)
        return nn.Dense(self.num_classes, name="logits")(x)


class CNN(nn.Module):
    """Two 3×3 conv layers, average pool and a dense head: ``[batch, h, w, c] -> [batch, classes]``.

    Attributes:
      channels: output channels of the two conv layers.
      hidden: width of the dense layer.
      num_classes: output width.
    """

    channels: Sequence[int] = (8, 16)
    hidden: int = 64
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{i}")(x)
            x = ReLU(name=f"act_{i}")(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.hidden, name="dense")(x)
        x = ReLU(name=f"act_{len(self.channels)}")(x)
        return nn.Dense(self.num_classes, name="logits")(x)


def init_vision(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
    """Initializes a vision model's variables for inputs of ``input_shape`` (no batch axis)."""
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32))
