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

from jaxinterp._checks import check_key


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
        if jnp.ndim(x) < 2:
            raise ValueError(f"x: expected [batch, features] or [batch, ...], got {jnp.shape(x)}")
        x = x.reshape(x.shape[0], -1) if x.ndim > 2 else x
        if self.has_variable("params", "dense_0") or self.has_variable("params", "logits"):
            first = "dense_0" if self.hidden else "logits"
            d_in = self.get_variable("params", first)["kernel"].shape[0]
            if x.shape[1] != d_in:
                raise ValueError(
                    f"x: these variables expect {d_in} features per example, got {x.shape[1]} "
                    f"(input shape {x.shape})"
                )
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
        if jnp.ndim(x) != 4:
            raise ValueError(f"x: expected [batch, h, w, channels], got shape {jnp.shape(x)}")
        if self.has_variable("params", "conv_0") and self.has_variable("params", "dense"):
            c_in = self.get_variable("params", "conv_0")["kernel"].shape[2]
            d_in = self.get_variable("params", "dense")["kernel"].shape[0]
            flat = (x.shape[1] // 2) * (x.shape[2] // 2) * self.channels[-1]
            if x.shape[3] != c_in or flat != d_in:
                raise ValueError(
                    f"x: these variables expect images with {c_in} channels and "
                    f"{d_in // self.channels[-1]} pooled pixels, got shape {x.shape}"
                )
        for i, c in enumerate(self.channels):
            x = nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{i}")(x)
            x = ReLU(name=f"act_{i}")(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.Dense(self.hidden, name="dense")(x)
        x = ReLU(name=f"act_{len(self.channels)}")(x)
        return nn.Dense(self.num_classes, name="logits")(x)


def init_vision(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
    """Initializes a vision model's variables for inputs of ``input_shape`` (no batch axis).

    Args:
      model: a linen module such as :class:`MLP` or :class:`CNN`.
      key: PRNG key.
      input_shape: one input's shape, e.g. ``(8, 8, 1)``.

    Returns:
      The variables ``{"params": ...}``.

    Raises:
      TypeError: ``model`` is not a linen module, ``key`` not a PRNG key, or ``input_shape``
        not a tuple of ints.
      ValueError: ``input_shape`` has a size below 1, or a :class:`CNN` gets other than
        ``(h, w, c)``.

    >>> v = init_vision(MLP(hidden=(4,)), jax.random.key(0), (8, 8, 1))
    >>> v["params"]["dense_0"]["kernel"].shape
    (64, 4)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a flax.linen Module, got {type(model).__name__}")
    check_key(key, "key")
    if not isinstance(input_shape, (tuple, list)) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in input_shape
    ):
        raise TypeError(f"input_shape: expected a tuple of ints, got {input_shape!r}")
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(f"input_shape: expected positive sizes, got {tuple(input_shape)}")
    if isinstance(model, CNN) and len(input_shape) != 3:
        raise ValueError(f"input_shape: CNN expects (h, w, channels), got {tuple(input_shape)}")
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32))
