"""GPT-2 and Llama-family decoders against Hugging Face reference outputs (no torch needed).

The fixtures (tests/fixtures/decoders/) are made by scripts/make_decoder_fixtures.py with
transformers 4.57.6 / torch 2.13 (eager attention, float32). Tolerance: both sides compute in
float32 with the same operations in possibly different order/fusion; each output is a few
dot products of length <= 96 deep (2 layers), so the rounding error is a small multiple of
eps_f32 (1.2e-7) times the magnitude of the values (logits <= 6, hidden <= 17 here): below 1e-5
relative to max(1, max |reference|), the bound asserted (measured: logits 6.2e-6, hidden
9.2e-6, probs 1.3e-6 absolute, also under XLA_FLAGS=--xla_cpu_max_isa=AVX2 / SSE4_2).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp
from jaxinterp.attention import attention_weights
from jaxinterp.capture import capture
from jaxinterp.models import DecoderConfig, generate, load_decoder, read_safetensors

FIX = Path(__file__).parent / "fixtures" / "decoders"
FAMILIES = ["gpt2", "llama"]


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request):
    d = load_decoder(FIX / request.param)
    ref = dict(np.load(FIX / request.param / "reference.npz"))
    return request.param, d, ref


def close(a, ref):
    err = float(np.abs(np.asarray(a, np.float32) - ref).max())
    assert err <= 1e-5 * max(1.0, float(np.abs(ref).max())), err
    return err


def test_parity_logits_hidden_attention(fam):
    name, d, ref = fam
    ids = jnp.asarray(ref["input_ids"])
    n = d.config.n_layers
    out, acts = capture(d.model, d.variables, select=["embed", "blocks_*", "ln_f"])(ids)
    close(out, ref["logits"])
    hidden = [acts["embed"]] + [acts[f"blocks_{i}"] for i in range(n - 1)] + [acts["ln_f"]]
    for i, h in enumerate(hidden):
        close(h, ref["hidden"][i])
    out2, w = attention_weights(d.model, d.variables, weights_at="blocks_*/attn/probs")(ids)
    np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))
    assert sorted(w) == [f"blocks_{i}/attn/probs" for i in range(n)]
    for i in range(n):
        close(w[f"blocks_{i}/attn/probs"], ref["attn"][i])


def test_paths_and_shapes(fam):
    _, d, ref = fam
    c = d.config
    ids = jnp.asarray(ref["input_ids"])
    b, s = ids.shape
    _, acts = capture(d.model, d.variables, select="blocks_1/**")(ids)
    assert acts["blocks_1/attn/q"].shape == (b, s, c.n_heads, c.d_head)
    assert acts["blocks_1/attn/k"].shape == (b, s, c.n_kv_heads, c.d_head)
    assert acts["blocks_1/attn/v"].shape == (b, s, c.n_kv_heads, c.d_head)
    assert acts["blocks_1/attn/z"].shape == (b, s, c.n_heads, c.d_head)
    assert acts["blocks_1/mlp/hidden"].shape == (b, s, c.d_mlp)
    # z is probs @ v with kv heads repeated (an independent numpy computation)
    p = np.asarray(acts["blocks_1/attn/probs"])
    v = np.repeat(np.asarray(acts["blocks_1/attn/v"]), c.n_heads // c.n_kv_heads, axis=2)
    np.testing.assert_allclose(
        np.asarray(acts["blocks_1/attn/z"]), np.einsum("bhqk,bkhd->bqhd", p, v), atol=1e-5
    )
    # causal: no weight on future keys
    assert np.abs(np.triu(p, 1)).max() == 0.0


def test_generate_matches_reference_and_full_forward(fam):
    _, d, ref = fam
    ids = jnp.asarray(ref["input_ids"])
    n_new = ref["continuation"].shape[1]
    got = np.asarray(generate(d.model, d.variables, ids, n_new))
    np.testing.assert_array_equal(got, ref["continuation"])
    seq = ids
    for _ in range(n_new):  # greedy with full forwards, no cache
        nxt = jnp.argmax(d.model.apply(d.variables, seq)[:, -1], -1)
        seq = jnp.concatenate([seq, nxt[:, None].astype(seq.dtype)], 1)
    np.testing.assert_array_equal(got, np.asarray(seq[:, ids.shape[1] :]))


class DecoderJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_forward(self):
        for name in FAMILIES:
            d = load_decoder(FIX / name)
            ref = np.load(FIX / name / "reference.npz")
            f = self.variant(d.model.apply)
            close(f(d.variables, jnp.asarray(ref["input_ids"])), ref["logits"])


def test_bf16_loading(fam):
    name, _, ref = fam
    d = load_decoder(FIX / name, dtype=jnp.bfloat16)
    assert d.variables["params"]["embed"]["tok"]["embedding"].dtype == jnp.bfloat16
    out = np.asarray(d.model.apply(d.variables, jnp.asarray(ref["input_ids"])), np.float32)
    # bf16 keeps 8 mantissa bits: a loose but meaningful bound (logits up to ~6)
    assert np.abs(out - ref["logits"]).max() < 0.5
    assert (out.argmax(-1) == ref["logits"].argmax(-1)).mean() > 0.8


def _write_safetensors(path, tensors):
    header, off, blobs = {}, 0, []
    for k, v in tensors.items():
        v = np.ascontiguousarray(v, np.float32)
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + v.nbytes]}
        off += v.nbytes
        blobs.append(v.tobytes())
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_sharded_checkpoint(tmp_path):
    src = FIX / "llama"
    t = read_safetensors(src / "model.safetensors")
    names = sorted(t)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for f, ks in shards.items():
        _write_safetensors(tmp_path / f, {k: t[k] for k in ks})
    index = {"weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((src / "config.json").read_text())
    a, b = load_decoder(tmp_path), load_decoder(src)
    ids = jnp.arange(8)[None] % 128
    np.testing.assert_array_equal(a.model.apply(a.variables, ids), b.model.apply(b.variables, ids))


def test_bad_token_ids_under_jit_poison_and_checked():
    d = load_decoder(FIX / "gpt2")
    ids = jnp.array([[1, 2, 3], [4, 500, 6]])
    out = jax.jit(d.model.apply)(d.variables, ids)
    assert np.isfinite(np.asarray(out[0])).all() and np.isnan(np.asarray(out[1])).all()
    with pytest.raises(ValueError, match="^input_ids: expected ids in \\[0, 128\\), got 500"):
        jaxinterp.checked(d.model.apply)(d.variables, ids)


def _gpt2():
    return load_decoder(FIX / "gpt2")


BAD = [
    (
        "ids out of range",
        lambda d: d.model.apply(d.variables, jnp.array([[1, 128]])),
        ValueError,
        "^input_ids",
    ),
    (
        "negative id",
        lambda d: d.model.apply(d.variables, jnp.array([[-1, 2]])),
        ValueError,
        "^input_ids",
    ),
    (
        "too long for gpt2",
        lambda d: d.model.apply(d.variables, jnp.zeros((1, 33), int)),
        ValueError,
        "^input_ids",
    ),
    ("float ids", lambda d: d.model.apply(d.variables, jnp.zeros((1, 3))), TypeError, "^input_ids"),
    ("1-D ids", lambda d: d.model.apply(d.variables, jnp.zeros(3, int)), ValueError, "^input_ids"),
    (
        "generate past max positions",
        lambda d: generate(d.model, d.variables, jnp.zeros((1, 30), int), 5),
        ValueError,
        "^n_new",
    ),
    (
        "n_new 0",
        lambda d: generate(d.model, d.variables, jnp.zeros((1, 3), int), 0),
        ValueError,
        "^n_new",
    ),
    (
        "bad model_type",
        lambda d: DecoderConfig.from_hf({"model_type": "bert"}),
        ValueError,
        "^config",
    ),
    (
        "gelu variant",
        lambda d: DecoderConfig.from_hf({"model_type": "llama", "hidden_act": "gelu"}),
        ValueError,
        "^config",
    ),
    ("missing folder", lambda d: load_decoder("/nonexistent"), FileNotFoundError, "^path"),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_inputs(case):
    _, fn, exc, match = case
    with pytest.raises(exc, match=match):
        fn(_gpt2())
