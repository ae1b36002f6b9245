"""Reference models, checked independently of the code that trained them.

The accuracies the training code writes into ``metrics`` are not evidence: here the trained
weights are run by a numpy re-implementation of each forward pass (MLP, CNN) on the held-out
split, and the offset transformer is evaluated on fresh sequences and probed for its mechanism
(the prediction at ``t`` follows the token at ``t - offset`` when only that token is edited; a
head's attention sits on that key).
"""

from __future__ import annotations

import json
import struct

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import checked, models
from jaxinterp.attention import attention_weights, stack_layers


def _np_mlp(params, x):
    h = np.asarray(x, np.float64).reshape(len(x), -1)
    i = 0
    while f"dense_{i}" in params:
        p = params[f"dense_{i}"]
        h = np.maximum(h @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"]), 0.0)
        i += 1
    p = params["logits"]
    return h @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"])


def _np_conv_same(x, kernel, bias):
    """3×3 'SAME' cross-correlation, ``x [n, h, w, c_in]``, ``kernel [3, 3, c_in, c_out]``."""
    n, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[:, i : i + h, j : j + w, :] @ kernel[i, j]
    return out + bias


def _np_cnn(params, x):
    h = np.asarray(x, np.float64)
    i = 0
    while f"conv_{i}" in params:
        p = params[f"conv_{i}"]
        h = np.maximum(_np_conv_same(h, np.asarray(p["kernel"], np.float64), p["bias"]), 0.0)
        i += 1
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean((2, 4)).reshape(n, -1)  # 2×2 avg pool
    p = params["dense"]
    h = np.maximum(h @ np.asarray(p["kernel"], np.float64) + p["bias"], 0.0)
    p = params["logits"]
    return h @ np.asarray(p["kernel"], np.float64) + p["bias"]


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_digits_models_independent_forward_and_held_out_accuracy(which, request, digits):
    trained = request.getfixturevalue(which)
    np_forward = _np_mlp if which == "mlp" else _np_cnn
    params = jax.device_get(trained.variables["params"])
    ref = np_forward(params, digits.test.x)  # float64 numpy, nothing shared with flax
    got = np.asarray(jax.jit(trained.model.apply)(trained.variables, jnp.asarray(digits.test.x)))
    # float32 vs float64 on logits of size O(10): a few ulps of float32 per layer
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    acc = float((ref.argmax(-1) == digits.test.y).mean())  # held-out: 450 unseen images
    assert acc > 0.95, acc
    # the number the training code reported is the same held-out accuracy (±1 image)
    assert abs(trained.metrics["test_accuracy"] - acc) <= 1 / len(digits.test.y) + 1e-9


def test_offset_transformer_on_fresh_sequences_and_its_mechanism(offset_tf):
    k = offset_tf.metrics["offset"]
    cfg = offset_tf.model.cfg
    b = models.offset_batch(jax.random.key(2024), 256, cfg.seq_len, cfg.vocab, k)
    toks = np.asarray(b.tokens)
    apply = jax.jit(offset_tf.model.apply)
    pred = np.asarray(apply(offset_tf.variables, b.tokens)).argmax(-1)
    acc = (pred[:, k:] == toks[:, :-k]).mean()  # targets computed here, not by offset_batch
    assert acc > 0.99, acc
    # mechanism 1: edit only the token at t - k; the prediction at t follows the edit
    t = 11
    edited = toks.copy()
    edited[:, t - k] = (toks[:, t - k] + 1 + np.arange(256) % (cfg.vocab - 1)) % cfg.vocab
    pred_e = np.asarray(apply(offset_tf.variables, jnp.asarray(edited))).argmax(-1)
    assert (pred_e[:, t] == edited[:, t - k]).mean() > 0.99
    # editing a token that is not k back leaves the prediction at t alone
    other = toks.copy()
    other[:, t - k - 1] = (toks[:, t - k - 1] + 1) % cfg.vocab
    pred_o = np.asarray(apply(offset_tf.variables, jnp.asarray(other))).argmax(-1)
    assert (pred_o[:, t] == pred[:, t]).mean() > 0.99
    # mechanism 2: some head puts > 0.9 of its attention on the key k back (numpy mean)
    _, maps = jax.jit(attention_weights(offset_tf.model, offset_tf.variables))(b.tokens)
    w = np.asarray(stack_layers(maps))  # [layer, batch, head, q, k]
    q = np.arange(k, cfg.seq_len)
    on_offset = w[:, :, :, q, q - k].mean(axis=(1, 3))  # [layer, head]
    assert on_offset.max() > 0.9, on_offset


def test_cached_models_reload_identically(mlp):
    again = models.digits_mlp()
    for a, b in zip(jax.tree.leaves(mlp.variables), jax.tree.leaves(again.variables)):
        np.testing.assert_array_equal(a, b)


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
    assert t.shape == (4, 10) and t.min() >= 0 and t.max() < 7
    np.testing.assert_array_equal(y[:, 2:], t[:, :-2])
    assert not m[:, :2].any() and m[:, 2:].all()


def test_digits_split():
    from sklearn.datasets import load_digits as sk_digits

    d = models.load_digits()
    assert d.train.x.shape[1:] == (8, 8, 1) and len(d.train.x) + len(d.test.x) == 1797
    assert 0.0 <= d.train.x.min() and d.train.x.max() <= 1.0
    assert set(np.unique(d.test.y)) == set(range(10))
    # every image is a sklearn image / 16 with its own label (independent check of the split)
    raw = sk_digits()
    table = {
        im.tobytes(): lab for im, lab in zip((raw.images / 16.0).astype(np.float32), raw.target)
    }
    for split in d:
        assert all(table[x[..., 0].tobytes()] == y for x, y in zip(split.x, split.y))
    other = models.load_digits(seed=1)
    assert not np.array_equal(other.test.y, d.test.y)


def test_causal_mask_blocks_future(offset_tf):
    b = models.offset_batch(jax.random.key(4), 2, 16, 16, 3)
    t2 = b.tokens.at[:, 10:].set(0)
    apply = jax.jit(offset_tf.model.apply)
    a = apply(offset_tf.variables, b.tokens)[:, :10]
    c = apply(offset_tf.variables, t2)[:, :10]
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)


def test_attention_mask_matches_numpy():
    pad = np.array([[1, 1, 0], [1, 1, 1]], bool)
    m = np.asarray(models.attention_mask(jnp.zeros((2, 3), jnp.int32), jnp.asarray(pad)))
    ref = np.tril(np.ones((3, 3), bool))[None] & pad[:, None, :] & pad[:, :, None]
    np.testing.assert_array_equal(m[:, 0].astype(bool), ref)


class TestTokenRange(chex.TestCase):
    """Token ids outside the vocabulary: eager error, NaN under jit, error via checked."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_in_range_tokens_unchanged(self):
        cfg = models.TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=8)
        tf = models.Transformer(cfg)
        v = tf.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
        toks = models.offset_batch(jax.random.key(1), 3, 16, 16, 2).tokens
        out = self.variant(tf.apply)(v, toks)
        assert out.shape == (3, 16, 16) and bool(jnp.isfinite(out).all())
        mask = self.variant(models.attention_mask)(toks, jnp.ones((3, 16), bool))
        assert mask.shape == (3, 1, 16, 16)

    def test_out_of_range_tokens(self):
        cfg = models.TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_mlp=8)
        tf = models.Transformer(cfg)
        v = tf.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
        toks = jnp.zeros((2, 16), jnp.int32).at[1, 3].set(-1)  # would wrap to the last row
        with pytest.raises(ValueError, match=r"^tokens: expected ids in \[0, 15\], got 1 ids"):
            tf.apply(v, toks)
        out = jax.jit(tf.apply)(v, toks)
        assert bool(jnp.isfinite(out[0]).all()) and bool(jnp.isnan(out[1]).all())
        with pytest.raises(ValueError, match=r"tokens: expected ids in \[0, 15\]"):
            checked(tf.apply)(v, toks)


def _write_safetensors(path, tensors, *, cut=0):
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = np.ascontiguousarray(arr, "<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    raw = struct.pack("<Q", len(head)) + head + b"".join(blobs)
    path.write_bytes(raw[: len(raw) - cut])


def test_safetensors_roundtrip_and_truncation(tmp_path):
    a = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    b = np.linspace(0, 1, 256 * 768, dtype=np.float32).reshape(256, 768)  # 786432 bytes
    p = tmp_path / "m.safetensors"
    _write_safetensors(p, {"a": a, "b": b})
    got = models.read_safetensors(p)
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    assert list(models.read_safetensors(p, ["a"])) == ["a"]
    _write_safetensors(p, {"a": a, "b": b}, cut=1000)
    # the old message said "spans 786432 bytes, expected 786432": now the real sizes
    with pytest.raises(
        ValueError,
        match=r"^path: .* is truncated: tensor 'b' .* needs data bytes "
        r"\[24, 786456\), but the file holds only 785456 data bytes",
    ):
        models.read_safetensors(p)
    assert models.read_safetensors(p, ["a"])["a"].shape == (2, 3)  # an intact tensor still reads
