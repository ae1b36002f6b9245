"""Probes on real features (digits CNN layers, MiniLM layers) against scikit-learn."""

from __future__ import annotations

import itertools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from jaxinterp import models, probes
from jaxinterp.capture import capture


def _sk_accuracy(xtr, ytr, xte, yte, c):
    # one BLAS thread: small problems, and spinning BLAS threads stall on a busy 2-core box
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        m = LogisticRegression(C=c, tol=1e-6, max_iter=3000).fit(xtr, ytr)
    return m.score(xte, yte)


@pytest.fixture(scope="module")
def cnn_features():
    cnn = models.digits_cnn()
    data = models.load_digits()
    x = jnp.asarray(np.concatenate([data.train.x, data.test.x]))
    paths = ["act_0", "act_1", "act_2"]
    feats = probes.layer_features(
        cnn.model, cnn.variables, x, paths, pool="flatten", chunk_size=512
    )
    return cnn, x, paths, feats, data


def test_layer_features_match_capture(cnn_features):
    cnn, x, paths, feats, _ = cnn_features
    assert feats.shape == (3, x.shape[0], 8 * 8 * 16)  # widest layer: act_1 flattened
    _, acts = capture(cnn.model, cnn.variables, select=paths)(x[:50])
    for i, p in enumerate(paths):
        ref = np.asarray(acts[p]).reshape(50, -1)
        np.testing.assert_allclose(feats[i, :50, : ref.shape[1]], ref, rtol=1e-5, atol=1e-6)
        assert not np.any(np.asarray(feats[i, :, ref.shape[1] :]))  # zero padding
    mean = probes.layer_features(cnn.model, cnn.variables, x[:10], ["act_0"], pool="mean")
    np.testing.assert_allclose(mean[0], np.asarray(acts["act_0"][:10]).mean((1, 2)), atol=1e-6)
    with pytest.raises(KeyError):
        probes.layer_features(cnn.model, cnn.variables, x[:4], ["nope"])


def test_layer_features_sequence_pools():
    tf = models.offset_transformer()
    tokens = models.offset_batch(jax.random.key(0), 4, 16, 16, 3).tokens
    _, acts = capture(tf.model, tf.variables, select="block_0")(tokens)
    ref = np.asarray(acts["block_0"])  # [4, 16, 64]
    rows = probes.layer_features(tf.model, tf.variables, tokens, ["block_0"], pool="tokens")
    np.testing.assert_allclose(rows[0], ref.reshape(64, 64), rtol=1e-5, atol=1e-6)
    mask = jnp.asarray(np.arange(16)[None] < np.array([[16], [9], [5], [1]]))
    last = probes.layer_features(
        tf.model, tf.variables, tokens, ["block_0"], pool="last", token_mask=mask, chunk_size=3
    )
    np.testing.assert_allclose(last[0], ref[np.arange(4), [15, 8, 4, 0]], rtol=1e-5, atol=1e-6)
    mean = probes.layer_features(
        tf.model, tf.variables, tokens, ["block_0"], pool="mean", token_mask=mask
    )
    np.testing.assert_allclose(mean[0, 1], ref[1, :9].mean(0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="token_mask"):
        probes.layer_features(tf.model, tf.variables, tokens, ["block_0"], token_mask=mask[:2])


def test_digits_cnn_layers_match_sklearn(cnn_features):
    _, _, paths, feats, data = cnn_features
    ntr = data.train.x.shape[0]
    y = jnp.asarray(np.concatenate([data.train.y, data.test.y]))[None]
    ctrl = probes.control_labels(jax.random.key(0), jnp.arange(y.shape[1]) % 50, y)
    labels = jnp.concatenate([y, ctrl])  # digit class and a control task
    c = 0.01
    probe, info = probes.fit_logistic(feats[:, :ntr], labels[:, :ntr], C=c, tol=1e-5)
    acc = np.asarray(probes.evaluate(probe, feats[:, ntr:], labels[:, ntr:])["accuracy"])
    widths = [8 * 8 * 8, 8 * 8 * 16, 64]
    for li in range(3):
        f = np.asarray(feats[li, :, : widths[li]])  # scikit-learn sees the unpadded features
        sk = _sk_accuracy(f[:ntr], data.train.y, f[ntr:], data.test.y, c)
        assert abs(acc[li, 0] - sk) * 100 <= 0.5, (paths[li], acc[li, 0], sk)
    assert np.all(acc[:, 0] > 0.9)
    assert np.all(acc[:, 1] < 0.3)  # control labels by example id are not learnable
    assert np.all(probes.selectivity(acc[:, 0], acc[:, 1]) > 0.6)


def _sentences():
    animals = ["dog", "cat", "horse", "bird", "cow", "rabbit", "fox", "sheep"]
    things = ["car", "lamp", "chair", "book", "phone", "table", "cup", "clock"]
    phrases = [
        ("sits near the door", "sat near the door"),
        ("stays in the garden", "stayed in the garden"),
        ("is very old", "was very old"),
        ("looks clean", "looked clean"),
        ("belongs to my sister", "belonged to my sister"),
        ("is in the kitchen", "was in the kitchen"),
    ]
    rows = []
    for (subj, animal), (pres, past), past_tense in itertools.product(
        [(s, 1) for s in animals] + [(s, 0) for s in things], phrases, [0, 1]
    ):
        rows.append((f"The {subj} {past if past_tense else pres}.", animal, past_tense))
    return rows


def test_minilm_layers_match_sklearn():
    try:
        minilm = models.load_minilm()
    except ImportError as e:
        pytest.skip(str(e))
    rows = _sentences()
    tok = models.tokenize_sentences(minilm, [r[0] for r in rows])
    ids, mask = jnp.asarray(tok.input_ids), jnp.asarray(tok.attention_mask)
    paths = ["embeddings"] + [f"layer_{i}" for i in range(minilm.config.n_layers)]
    feats = probes.layer_features(
        minilm.model, minilm.variables, (ids, mask), paths, pool="mean", token_mask=mask
    )
    labels = jnp.asarray(np.array([[r[1] for r in rows], [r[2] for r in rows]], np.int32))
    tr, _, te = probes.train_val_test_split(jax.random.key(0), len(rows), (0.5, 0.0, 0.5))
    c = 0.5
    probe, _ = probes.fit_logistic(feats[:, tr], labels[:, tr], C=c, tol=1e-6)
    acc = np.asarray(probes.evaluate(probe, feats[:, te], labels[:, te])["accuracy"])
    f, y = np.asarray(feats), np.asarray(labels)
    tr, te = np.asarray(tr), np.asarray(te)
    for li in range(len(paths)):
        for ti in range(2):
            sk = _sk_accuracy(f[li][tr], y[ti][tr], f[li][te], y[ti][te], c)
            assert abs(acc[li, ti] - sk) * 100 <= 0.5, (paths[li], ti, acc[li, ti], sk)
    assert acc[-1].min() > 0.9  # both properties are linearly readable at the last layer
