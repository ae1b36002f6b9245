"""Reference models: trained accuracy, linen ↔ nnx equality, task data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import models


def test_trained_accuracies(mlp, cnn, offset_tf):
    assert mlp.metrics["test_accuracy"] > 0.95
    assert cnn.metrics["test_accuracy"] > 0.95
    assert offset_tf.metrics["task_accuracy"] > 0.99


def test_cached_models_reload_identically(mlp):
    again = models.digits_mlp()
    for a, b in zip(jax.tree.leaves(mlp.variables), jax.tree.leaves(again.variables)):
        np.testing.assert_array_equal(a, b)


def test_held_out_accuracy_recomputed(cnn, digits):
    pred = jax.jit(cnn.model.apply)(cnn.variables, jnp.asarray(digits.test.x)).argmax(-1)
    assert (
        abs(float((np.asarray(pred) == digits.test.y).mean()) - cnn.metrics["test_accuracy"]) < 1e-6
    )


def test_linen_to_nnx_equal_outputs(offset_tf, offset_nnx):
    b = models.offset_batch(jax.random.key(3), 8, 16, 16, 3)
    pad = jnp.arange(16)[None, :] < jnp.array([16, 12, 9, 16, 5, 16, 16, 10])[:, None]
    a = offset_tf.model.apply(offset_tf.variables, b.tokens, pad)
    n = offset_nnx(b.tokens, pad)
    np.testing.assert_allclose(a, n, rtol=1e-5, atol=1e-5)


def test_linen_to_nnx_shape_mismatch(offset_tf):
    bad = jax.tree.map(lambda x: x, offset_tf.variables["params"])
    bad["unembed"] = {"kernel": jnp.zeros((3, 3)), "bias": jnp.zeros(3)}
    with pytest.raises(ValueError, match=r"params: unembed/(kernel|bias) has shape"):
        models.linen_to_nnx(offset_tf.model.cfg, bad)


def test_offset_batch_mechanism():
    b = models.offset_batch(jax.random.key(0), 4, 10, 7, 2)
    t, y, m = map(np.asarray, b)
    assert t.shape == (4, 10) and t.max() < 7
    np.testing.assert_array_equal(y[:, 2:], t[:, :-2])
    assert not m[:, :2].any() and m[:, 2:].all()


def test_digits_split():
    d = models.load_digits()
    assert d.train.x.shape[1:] == (8, 8, 1) and len(d.train.x) + len(d.test.x) == 1797
    assert 0.0 <= d.train.x.min() and d.train.x.max() <= 1.0
    assert set(np.unique(d.test.y)) == set(range(10))


def test_causal_mask_blocks_future(offset_tf):
    b = models.offset_batch(jax.random.key(4), 2, 16, 16, 3)
    t2 = b.tokens.at[:, 10:].set(0)
    a = offset_tf.model.apply(offset_tf.variables, b.tokens)[:, :10]
    c = offset_tf.model.apply(offset_tf.variables, t2)[:, :10]
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
