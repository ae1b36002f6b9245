"""Training many dictionaries at once: recovery on a superposition toy, constraints, masks,
checkpoints, the shuffling buffer and the dataset metrics."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import features as F

NF, D, DSAE, STEPS, BATCH = 64, 32, 64, 800, 128
TOY = [
    ("relu", F.relu(0.3), 0.85),
    ("topk", F.topk(3), 0.90),
    ("batch_topk", F.batch_topk(3), 0.80),
    ("jumprelu", F.jumprelu(0.1, bandwidth=0.05), 0.82),
]
TOY_CFG = F.TrainConfig(
    lr=3e-3, max_k=4, k_aux=16, dead_tokens=5000, lr_warmup=20, sparsity_warmup=100
)


@pytest.fixture(scope="module")
def toy():
    feats = F.toy_features(jax.random.key(0), NF, D)
    xs = F.toy_batch(jax.random.key(1), feats, STEPS * BATCH, 3 / NF).reshape(STEPS, BATCH, D)
    settings = F.stack_settings([s for _, s, _ in TOY])
    keys = jax.random.split(jax.random.key(2), len(TOY))
    ps = jax.vmap(lambda k: F.init_params(k, D, DSAE, threshold=0.1))(keys)
    state = F.init_train(ps, TOY_CFG)
    init = np.asarray(F.max_cosine(state.params.W_dec, feats))
    state, metrics = F.train_steps(state, settings, xs, config=TOY_CFG)
    return feats, settings, state, metrics, init


def test_every_architecture_recovers_the_true_features(toy):
    """Measured (800 steps): relu 0.95, topk 0.97, batch_topk 0.90, jumprelu 0.92; init 0.40."""
    feats, _, state, _, init = toy
    mmcs = np.asarray(F.max_cosine(state.params.W_dec, feats))
    for (name, _, floor), got, start in zip(TOY, mmcs, init):
        assert got > floor, (name, got)
        assert start < 0.45, (name, start)  # a random decoder is far from the features


def test_dataset_metrics_match_numpy(toy):
    feats, settings, state, metrics, _ = toy
    x = np.asarray(F.toy_batch(jax.random.key(9), feats, 1000, 3 / NF))
    m = F.evaluate(state.params, settings, [x[:600, None], x[600:, None]], max_k=4)
    assert m.tokens == 1000
    for j, (name, s, _) in enumerate(TOY):
        p = jax.tree.map(lambda a, j=j: a[j], state.params)
        acts = jax.vmap(lambda xi, p=p, s=s: F.encode(p, xi, s, max_k=4))(x)
        recon = np.asarray(acts) @ np.asarray(p.W_dec) + np.asarray(p.b_dec)
        fvu = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
        np.testing.assert_allclose(m.fvu[j], fvu, rtol=1e-3, err_msg=name)
        np.testing.assert_allclose(m.l0[j], (np.asarray(acts) > 0).sum(1).mean(), rtol=1e-6)
        freq = (np.asarray(acts) > 0).mean(0)
        np.testing.assert_allclose(m.frequency[j], freq)
        assert m.dead[j] == (freq == 0).mean() and m.dense[j] == (freq > 0.1).mean()
    assert np.all(m.fvu < 0.3)
    # the training metrics tell the same story at the end of training
    assert np.all(np.abs(np.asarray(metrics.fvu[-50:]).mean(0) - m.fvu) < 0.1)


CFG = F.TrainConfig(lr=1e-2, max_k=4, k_aux=4, dead_tokens=64)
# One stack shape and one set of architectures, so most tests share one compiled step.
# Not in ARCHS order, so splitting the stack by architecture permutes it.
SMALL = [F.topk(2), F.jumprelu(0.1, bandwidth=0.5), F.relu(0.5)]


def _small(n=3, in_shape=8, d_sae=12, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(lambda k: F.init_params(k, in_shape, d_sae)))(keys)


def _xs(seed=1, steps=3):
    return jax.random.normal(jax.random.key(seed), (steps, 16, 2, 8))


def test_stacked_step_equals_single_training_and_keeps_unit_decoders():
    """Site × setting in one vmapped call gives the numbers of a dictionary trained alone."""
    read = [1, 0, 1]
    ps = _small()
    xs = _xs()
    stacked, m = F.train_steps(
        F.init_train(ps, CFG), F.stack_settings(SMALL), xs, read=read, config=CFG
    )
    w = np.asarray(stacked.params.W_dec)
    np.testing.assert_allclose(np.linalg.norm(w, axis=-1), 1.0, rtol=1e-5)
    assert np.abs(w - np.asarray(ps.W_dec)).max() > 1e-3  # it trained
    assert m.l0.shape == (3, 3) and np.all(np.asarray(m.l0[:, 0]) <= 2)
    one = jax.tree.map(lambda a: a[1:2], ps)
    alone, _ = F.train_steps(
        F.init_train(one, CFG), F.stack_settings([SMALL[1]]), xs[:, :, 0], config=CFG
    )
    for a, b in zip(alone.params, stacked.params):
        np.testing.assert_allclose(a[0], b[1], rtol=2e-4, atol=2e-5)


def test_masks_pad_narrow_dictionaries_and_keep_exclusive_latents_exclusive():
    # crosscoder over 2 sources; latents 0-3 decode to source 0 only, 4-7 to source 1 only
    ps = _small(3, (2, 8), 12)
    dec_mask = np.ones((3, 12, 2), np.float32)
    dec_mask[:, :4, 1] = 0
    dec_mask[:, 4:8, 0] = 0
    latent_mask = np.ones((3, 12), bool)
    latent_mask[1, 6:] = False  # dictionary 1 has width 6, padded to 12
    state = F.init_train(ps, CFG, latent_mask=latent_mask, dec_mask=dec_mask)
    state, _ = F.train_steps(state, F.stack_settings(SMALL), _xs(), read=[[0, 1]] * 3, config=CFG)
    w = np.asarray(state.params.W_dec)
    assert np.isfinite(w).all()
    assert np.all(w[:, :4, 1] == 0) and np.all(w[:, 4:8, 0] == 0)
    assert np.abs(w[0, 8:]).min(axis=-1).max() > 0  # shared latents use both sources
    assert np.all(w[1, 6:] == 0) and np.all(np.asarray(state.params.W_enc)[1, ..., 6:] == 0)
    p1 = jax.tree.map(lambda a: a[1], state.params)
    acts = jax.vmap(lambda x: F.encode(p1, x, SMALL[1], max_k=4))(_xs()[0])
    assert np.all(np.asarray(acts)[:, 6:] == 0)
    with pytest.raises(ValueError, match=r"dec_mask: expected shape \(3, 12, 2\)"):
        F.init_train(ps, CFG, dec_mask=np.ones((3, 12)))


def test_checkpoint_round_trip_resumes_identically(tmp_path):
    settings = F.stack_settings(SMALL)
    state, _ = F.train_steps(F.init_train(_small(), CFG), settings, _xs(), config=CFG)
    path = F.save_checkpoint(tmp_path / "ck.npz", state)
    back = F.load_checkpoint(path, CFG)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(back)):
        np.testing.assert_array_equal(a, b)
    copy = jax.tree.map(jnp.array, state)
    s1, _ = F.train_steps(copy, settings, _xs(2), config=CFG)
    s2, _ = F.train_steps(back, settings, _xs(2), config=CFG)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s2)):
        np.testing.assert_array_equal(a, b)


def test_shuffle_buffer_emits_every_row_once_in_mixed_order():
    buf = F.ShuffleBuffer(40, seed=3)
    out = []
    for i in range(10):
        out += buf.add(np.arange(i * 13, (i + 1) * 13))
    out.append(buf.flush())
    rows = np.concatenate(out)
    assert sorted(rows.tolist()) == list(range(130))
    assert not np.array_equal(rows, np.arange(130))
    assert buf.flush() is None


def test_train_streams_chunks_from_a_model_and_checkpoints(tmp_path):
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(8)])
    v = model.init(jax.random.key(0), jnp.ones((1, 4)))
    inputs = [jax.random.normal(jax.random.key(i), (48, 4)) for i in range(5)]
    chunks = F.activation_chunks(model, v, ["layers_0", "layers_2"], inputs)
    state = F.init_train(_small(), CFG)
    settings = F.stack_settings(SMALL)
    state, info = F.train(
        state,
        settings,
        chunks,
        batch_size=16,
        steps_per_call=3,
        buffer_size=64,
        read=[0, 1, 1],
        config=CFG,
        checkpoint=tmp_path / "ck.npz",
    )
    assert info["tokens"] + info["tokens_dropped"] == 5 * 48
    assert info["steps"] == info["tokens"] // 16 and info["metrics"].l0.shape[1] == 3
    back = F.load_checkpoint(tmp_path / "ck.npz", CFG)
    np.testing.assert_array_equal(back.params.W_enc, state.params.W_enc)
    with pytest.raises(ValueError, match=r"read: expected indices in \[0, 1\]"):
        F.train_steps(state, settings, np.zeros((1, 4, 2, 8)), read=[0, 2, 0], config=CFG)
