"""Demo section: the reference models and what capture sees in them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import models
from jaxinterp._demo._context import DemoContext
from jaxinterp.capture import capture, list_paths
from jaxinterp.plotting import image_grid


def run(ctx: DemoContext) -> None:
    """Trains (or loads) the reference models, reports accuracy and capture output."""
    ctx.section("Reference models")
    mlp, cnn, tf = models.digits_mlp(), models.digits_cnn(), models.offset_transformer()
    ctx.text(f"- digits MLP held-out accuracy: {mlp.metrics['test_accuracy']:.3f}")
    ctx.text(f"- digits CNN held-out accuracy: {cnn.metrics['test_accuracy']:.3f}")
    ctx.text(
        f"- offset-{tf.metrics['offset']} transformer task accuracy: "
        f"{tf.metrics['task_accuracy']:.3f}"
    )
    ctx.record("models", {"mlp": mlp.metrics, "cnn": cnn.metrics, "transformer": tf.metrics})

    tokens = jnp.zeros((1, tf.model.cfg.seq_len), jnp.int32)
    paths = list_paths(tf.model, tf.variables, tokens)
    ctx.text("\nCapturable paths of the transformer (same in linen and nnx):\n")
    ctx.text("`" + "`, `".join(paths) + "`\n")

    digits = models.load_digits()
    x = jnp.asarray(digits.test.x[:1])
    _, acts = jax.jit(capture(cnn.model, cnn.variables, select="act_0"))(x)
    maps = np.moveaxis(np.asarray(acts["act_0"][0]), -1, 0)
    fig = image_grid(
        np.concatenate([np.asarray(x[:, :, :, 0]), maps]),
        ["input"] + [f"act_0 ch {c}" for c in range(maps.shape[0])],
        ncols=9,
        cmap="viridis",
    )
    ctx.figure("capture_cnn_act0", fig, "CNN first-layer feature maps captured for one digit")
