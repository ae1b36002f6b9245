"""Analyses over a stack of checkpoints: equal to a loop, and the induction phase change."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.circuits import logit_lens, over_checkpoints, stack_checkpoints
from jaxinterp.circuits._toys import (
    induction_metrics,
    repeated_batch,
    train_induction_checkpoints,
)
from jaxinterp.models import Decoder, DecoderConfig

CFG = DecoderConfig(
    vocab_size=16, d_model=16, n_layers=2, n_heads=2, n_kv_heads=2, d_head=8, d_mlp=16
)


@pytest.fixture(scope="module")
def run():
    return train_induction_checkpoints(
        jax.random.key(0),
        n_checkpoints=20,
        steps_per_checkpoint=20,
        half=8,
        vocab=32,
        d_model=32,
        n_heads=2,
        learning_rate=1e-2,
    )


def _lens(model, v, t):
    return logit_lens(model, v, t)[0]


def test_lens_over_checkpoints_equals_a_loop():
    m = Decoder(CFG)
    cks = [m.init(jax.random.key(i), jnp.zeros((1, 6), jnp.int32)) for i in range(4)]
    toks = jax.random.randint(jax.random.key(9), (2, 6), 0, 16)
    fn = partial(_lens, m)
    out = over_checkpoints(fn, stack_checkpoints(cks), toks)
    assert out.shape == (4, 3, 2, 6, 16)
    for i, v in enumerate(cks):
        np.testing.assert_allclose(out[i], logit_lens(m, v, toks)[0], atol=1e-5)
        np.testing.assert_allclose(out[i, -1], m.apply(v, toks), atol=1e-5)
    chunked = over_checkpoints(fn, stack_checkpoints(cks), toks, chunk_size=3)
    np.testing.assert_allclose(chunked, out, atol=1e-6)


def test_induction_phase_change_in_one_call(run):
    toks = repeated_batch(jax.random.key(9), 64, run.half, 32)
    out = over_checkpoints(partial(induction_metrics, run.model), run.stacked, toks)
    icl = np.asarray(out["icl_loss"])
    ind = np.asarray(out["induction"]).reshape(len(icl), -1).max(-1)  # best head
    assert out["induction"].shape == (20, 2, 2)
    # before: no in-context learning (loss near log 32) and no induction head
    assert icl[0] > 3.0 and ind[0] < 0.2
    # after: the repeated half is predicted and a head attends to the token after the
    # previous occurrence
    assert icl[-1] < 0.3 and ind[-1] > 0.6
    # the first (unpredictable) half stays near log 32 throughout: a control
    np.testing.assert_allclose(out["first_half_loss"], np.log(32), atol=0.6)
    # the two change together: the steepest loss drop and steepest score rise coincide
    assert abs(int(np.argmin(np.diff(icl))) - int(np.argmax(np.diff(ind)))) <= 1
    # a checkpoint's values are those of a direct call on that checkpoint
    k = int(np.argmax(np.diff(ind))) + 1
    one = jax.tree.map(lambda x: x[k], run.stacked)
    direct = jax.jit(partial(induction_metrics, run.model))(one, toks)
    np.testing.assert_allclose(out["icl_loss"][k], direct["icl_loss"], rtol=1e-5)
    np.testing.assert_allclose(out["induction"][k], direct["induction"], atol=1e-5)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"leading \[checkpoint\] axis, got .*'a'.* has 3"):
        over_checkpoints(lambda v: v, {"a": jnp.zeros((3, 2)), "b": jnp.zeros((4,))})
    with pytest.raises(ValueError, match="leaf .*'w'.* is a scalar"):
        over_checkpoints(lambda v: v, {"w": jnp.float32(1)})
    with pytest.raises(TypeError, match="fn"):
        over_checkpoints(3, {"w": jnp.zeros((2, 1))})
    with pytest.raises(ValueError, match="chunk_size"):
        over_checkpoints(lambda v: v, {"w": jnp.zeros((2, 1))}, chunk_size=3)
    with pytest.raises(ValueError, match=r"leaf \['w'\] of checkpoint 1"):
        stack_checkpoints([{"w": jnp.zeros(2)}, {"w": jnp.zeros(3)}])
    with pytest.raises(ValueError, match="checkpoint 1 has another tree structure"):
        stack_checkpoints([{"w": jnp.zeros(2)}, {"v": jnp.zeros(2)}])
    with pytest.raises(TypeError, match="checkpoints"):
        stack_checkpoints([])
