"""Bad inputs to the model zoo, model loaders and plotting functions: each row asserts the
exception type and that the message starts with the argument's name (``args[0]``, so a
``KeyError``'s quoting does not matter). Rows marked "regression" were silent wrong answers or
deep jax/flax/MLIR errors before."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import models
from jaxinterp.plotting import (
    actmax_traces,
    attention_grid,
    attention_heatmap,
    effect_scatter,
    head_score_map,
    image_grid,
    patching_heatmap,
    probe_accuracy,
)

KEY = jax.random.key(0)
CFG = models.TransformerConfig(n_layers=1, n_heads=2, d_model=8, d_mlp=8)
TF = models.Transformer(CFG)
TF_VARS = TF.init(KEY, jnp.zeros((1, 16), jnp.int32))
TOKS = jnp.zeros((2, 16), jnp.int32)
MLP = models.MLP(hidden=(4,))
MLP_VARS = models.init_vision(MLP, KEY, (8, 8, 1))
CNN = models.CNN(channels=(2, 2), hidden=4)
CNN_VARS = models.init_vision(CNN, KEY, (8, 8, 1))
BCFG = models.BertConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_mlp=8)
BERT = models.Bert(BCFG)
BERT_VARS = BERT.init(KEY, jnp.zeros((1, 3), jnp.int32))
IDS = jnp.ones((2, 3), jnp.int32)


class FakeTokenizer:
    def encode_batch(self, sentences):  # pragma: no cover - never reached by the bad rows
        raise AssertionError("should have been refused before encoding")


def _nnx():
    from flax import nnx

    return models.NNXTransformer(CFG, rngs=nnx.Rngs(0))


MODELS = [
    # regression: negative steps reached XLA as an MLIRError
    ("mlp steps negative", lambda: models.digits_mlp(steps=-1), ValueError, "steps"),
    ("mlp steps float", lambda: models.digits_mlp(steps=1.5), TypeError, "steps"),
    ("cnn seed negative", lambda: models.digits_cnn(seed=-1), ValueError, "seed"),
    ("offset tf steps", lambda: models.offset_transformer(steps=-3), ValueError, "steps"),
    ("offset tf offset", lambda: models.offset_transformer(offset=16), ValueError, "offset"),
    ("offset tf cfg", lambda: models.offset_transformer(cfg={}), TypeError, "cfg"),
    ("load_digits seed", lambda: models.load_digits(seed=-1), ValueError, "seed"),
    ("load_digits seed str", lambda: models.load_digits(seed="0"), TypeError, "seed"),
    # regression: an int key gave jax's "invalid PRNG key"
    ("offset_batch int key", lambda: models.offset_batch(0, 2, 16, 16, 3), TypeError, "key"),
    ("offset_batch batch", lambda: models.offset_batch(KEY, 0, 16, 16, 3), ValueError, "batch"),
    (
        "offset_batch batch float",
        lambda: models.offset_batch(KEY, 2.0, 16, 16, 3),
        TypeError,
        "batch",
    ),
    ("offset_batch seq_len", lambda: models.offset_batch(KEY, 2, 0, 16, 0), ValueError, "seq_len"),
    ("offset_batch vocab", lambda: models.offset_batch(KEY, 2, 16, 0, 3), ValueError, "vocab"),
    ("offset_batch offset", lambda: models.offset_batch(KEY, 2, 16, 16, 16), ValueError, "offset"),
    (
        "offset_batch offset neg",
        lambda: models.offset_batch(KEY, 2, 16, 16, -1),
        ValueError,
        "offset",
    ),
    ("attention_mask 1-D", lambda: models.attention_mask(jnp.zeros(3), None), ValueError, "tokens"),
    (
        "attention_mask pad shape",
        lambda: models.attention_mask(TOKS, jnp.ones((2, 4), bool)),
        ValueError,
        "pad_mask",
    ),
    (
        "attention_mask pad float",
        lambda: models.attention_mask(TOKS, jnp.ones((2, 16))),
        TypeError,
        "pad_mask",
    ),
    ("config heads", lambda: models.TransformerConfig(n_heads=5), ValueError, "n_heads"),
    ("config vocab", lambda: models.TransformerConfig(vocab=0), ValueError, "vocab"),
    # regression: a wrong pad_mask shape surfaced as a broadcasting error
    (
        "transformer pad_mask",
        lambda: TF.apply(TF_VARS, TOKS, jnp.ones((2, 8), bool)),
        ValueError,
        "pad_mask",
    ),
    ("nnx pad_mask", lambda: _nnx()(TOKS, jnp.ones((3, 16), bool)), ValueError, "pad_mask"),
    (
        "transformer long",
        lambda: TF.apply(TF_VARS, jnp.zeros((2, 40), jnp.int32)),
        ValueError,
        "tokens",
    ),
    (
        "transformer empty",
        lambda: TF.apply(TF_VARS, jnp.zeros((0, 16), jnp.int32)),
        ValueError,
        "tokens",
    ),
    # regression: -1 wrapped to the last embedding row
    ("transformer id -1", lambda: TF.apply(TF_VARS, TOKS.at[0, 0].set(-1)), ValueError, "tokens"),
    (
        "transformer embeddings int",
        lambda: TF.apply(TF_VARS, TOKS, embeddings=jnp.zeros((2, 16, 8), jnp.int32)),
        TypeError,
        "embeddings",
    ),
    ("linen_to_nnx variables", lambda: models.linen_to_nnx(CFG, TF_VARS), KeyError, "params"),
    ("linen_to_nnx cfg", lambda: models.linen_to_nnx("cfg", TF_VARS["params"]), TypeError, "cfg"),
    ("linen_to_nnx params", lambda: models.linen_to_nnx(CFG, 3), TypeError, "params"),
    ("init_vision int key", lambda: models.init_vision(MLP, 0, (8, 8, 1)), TypeError, "key"),
    ("init_vision model", lambda: models.init_vision("mlp", KEY, (8, 8, 1)), TypeError, "model"),
    ("init_vision shape int", lambda: models.init_vision(MLP, KEY, 64), TypeError, "input_shape"),
    (
        "init_vision shape zero",
        lambda: models.init_vision(MLP, KEY, (8, 0)),
        ValueError,
        "input_shape",
    ),
    (
        "init_vision cnn rank",
        lambda: models.init_vision(CNN, KEY, (64,)),
        ValueError,
        "input_shape",
    ),
    # regression: a wrong input size gave flax's ScopeParamShapeError
    ("mlp wrong features", lambda: MLP.apply(MLP_VARS, jnp.zeros((2, 5))), ValueError, "x"),
    ("cnn wrong channels", lambda: CNN.apply(CNN_VARS, jnp.zeros((2, 8, 8, 3))), ValueError, "x"),
    ("cnn rank", lambda: CNN.apply(CNN_VARS, jnp.zeros((2, 64))), ValueError, "x"),
    ("tokenize tokenizer", lambda: models.tokenize(None, ["a"]), TypeError, "tokenizer"),
    (
        "tokenize single string",
        lambda: models.tokenize(FakeTokenizer(), "abc"),
        TypeError,
        "sentences",
    ),
    ("tokenize empty", lambda: models.tokenize(FakeTokenizer(), []), ValueError, "sentences"),
    (
        "tokenize max_length",
        lambda: models.tokenize(FakeTokenizer(), ["a"], max_length=0),
        ValueError,
        "max_length",
    ),
    (
        "tokenize pad_id",
        lambda: models.tokenize(FakeTokenizer(), ["a"], pad_id=-1),
        ValueError,
        "pad_id",
    ),
    ("load_tokenizer path type", lambda: models.load_tokenizer(3), TypeError, "path"),
    (
        "load_tokenizer missing",
        lambda: models.load_tokenizer("/no/tokenizer.json"),
        FileNotFoundError,
        "path",
    ),
    (
        "embed_sentences minilm",
        lambda: models.embed_sentences("minilm", ["a"]),
        TypeError,
        "minilm",
    ),
    (
        "tokenize_sentences minilm",
        lambda: models.tokenize_sentences(None, ["a"]),
        TypeError,
        "minilm",
    ),
    (
        "mean_pool hidden",
        lambda: models.mean_pool(jnp.zeros((2, 3)), jnp.ones((2, 3))),
        ValueError,
        "hidden",
    ),
    (
        "mean_pool mask",
        lambda: models.mean_pool(jnp.zeros((2, 3, 4)), jnp.ones((2, 4))),
        ValueError,
        "attention_mask",
    ),
    (
        "bert float ids",
        lambda: BERT.apply(BERT_VARS, IDS.astype(jnp.float32)),
        TypeError,
        "input_ids",
    ),
    ("bert ids range", lambda: BERT.apply(BERT_VARS, IDS * 10), ValueError, "input_ids"),
    (
        "bert mask shape",
        lambda: BERT.apply(BERT_VARS, IDS, jnp.ones((2, 4))),
        ValueError,
        "attention_mask",
    ),
    (
        "bert token types",
        lambda: BERT.apply(BERT_VARS, IDS, None, jnp.zeros((2, 4), jnp.int32)),
        ValueError,
        "token_type_ids",
    ),
    (
        "bert config",
        lambda: models.BertConfig.from_hf({"hidden_act": "relu"}),
        ValueError,
        "config",
    ),
]


@pytest.mark.parametrize("call, exc, name", [r[1:] for r in MODELS], ids=[r[0] for r in MODELS])
def test_models_bad_inputs(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    assert str(info.value.args[0]).startswith(f"{name}:"), info.value.args[0]


def _safetensors(tmp_path, kind):
    p = tmp_path / f"{kind}.safetensors"
    a = np.zeros((256, 768), np.float32)
    head = json.dumps({"w": {"dtype": "F32", "shape": [256, 768], "data_offsets": [0, a.nbytes]}})
    raw = struct.pack("<Q", len(head)) + head.encode() + a.tobytes()
    if kind == "truncated":
        raw = raw[:-4096]
    elif kind == "short":
        raw = raw[:5]
    elif kind == "header":
        raw = struct.pack("<Q", 5) + b"{nope" + a.tobytes()
    elif kind == "huge_header":
        raw = struct.pack("<Q", 10**9) + head.encode()
    p.write_bytes(raw)
    return p


SAFETENSORS = [
    # regression: "spans 786432 bytes, expected 786432"
    ("truncated", {}, ValueError, "path", "786432"),
    ("short", {}, ValueError, "path", "5 bytes"),
    ("header", {}, ValueError, "path", "malformed"),
    ("huge_header", {}, ValueError, "path", "1000000000"),
    ("ok", {"names": "w"}, TypeError, "names", "single string"),
    ("ok", {"names": ["v"]}, KeyError, "names", "available"),
]


@pytest.mark.parametrize(
    "kind, kw, exc, name, detail", SAFETENSORS, ids=[f"{r[0]}-{r[3]}" for r in SAFETENSORS]
)
def test_read_safetensors_bad_inputs(tmp_path, kind, kw, exc, name, detail):
    p = _safetensors(tmp_path, kind)
    with pytest.raises(exc) as info:
        models.read_safetensors(p, **kw)
    msg = str(info.value.args[0])
    assert msg.startswith(f"{name}:") and detail in msg, msg
    if kind == "truncated":  # the real sizes: needed vs present
        assert "needs data bytes [0, 786432)" in msg and "only 782336 data bytes" in msg


def test_read_safetensors_path_type():
    with pytest.raises(TypeError, match="^path:"):
        models.read_safetensors(3)
    with pytest.raises(FileNotFoundError, match="^path:"):
        models.read_safetensors("/no/such.safetensors")


def test_load_tokenizer_invalid_file(tmp_path):
    pytest.importorskip("tokenizers")
    p = tmp_path / "tokenizer.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="^path: .* is not a valid tokenizer.json"):
        models.load_tokenizer(p)


TOKFIX = Path(__file__).parent / "fixtures" / "tokenizers" / "gpt2.json"
DECFIX = Path(__file__).parent / "fixtures" / "decoders" / "gemma2"


def _bpe(spec_edit):
    spec = json.loads(TOKFIX.read_text(encoding="utf-8"))
    spec_edit(spec)
    return models.BPETokenizer(spec)


def _gemma2_apply(**kw):
    d = models.load_decoder(DECFIX)
    return d.model.apply(d.variables, jnp.zeros((1, 3), jnp.int32), **kw)


BPE_ROWS = [
    ("bpe path type", lambda: models.BPETokenizer.from_file(3), TypeError, "path"),
    ("bpe missing", lambda: models.BPETokenizer.from_file("/no/t.json"), FileNotFoundError, "path"),
    ("bpe not a dict", lambda: models.BPETokenizer([]), ValueError, "path"),
    (
        "bpe wordpiece",
        lambda: _bpe(lambda s: s["model"].update(type="WordPiece")),
        ValueError,
        "path",
    ),
    (
        "bpe subword prefix",
        lambda: _bpe(lambda s: s["model"].update(continuing_subword_prefix="##")),
        ValueError,
        "path",
    ),
    (
        "bpe unknown normalizer",
        lambda: _bpe(lambda s: s.update(normalizer={"type": "BertNormalizer"})),
        ValueError,
        "path",
    ),
    (
        "bpe unknown decoder",
        lambda: _bpe(lambda s: s.update(decoder={"type": "WordPiece"})),
        ValueError,
        "path",
    ),
    ("bpe encode int", lambda: models.BPETokenizer.from_file(TOKFIX).encode(3), TypeError, "text"),
    (
        "bpe decode unknown id",
        lambda: models.BPETokenizer.from_file(TOKFIX).decode([1, 99999]),
        ValueError,
        "ids",
    ),
    (
        "decoder embeddings shape",
        lambda: _gemma2_apply(embeddings=jnp.zeros((1, 3, 7))),
        ValueError,
        "embeddings",
    ),
    (
        "decoder embeddings int",
        lambda: _gemma2_apply(embeddings=jnp.zeros((1, 3, 48), jnp.int32)),
        TypeError,
        "embeddings",
    ),
    (
        "gemma3 softcap is ignored like HF, bad rope type is not",
        lambda: models.DecoderConfig.from_hf(
            {
                "model_type": "gemma3",
                "text_config": {
                    "hidden_size": 8,
                    "intermediate_size": 8,
                    "num_hidden_layers": 1,
                    "rope_scaling": {"rope_type": "dynamic"},
                },
            }
        ),  # fmt: skip
        ValueError,
        "config",
    ),
    # ---------------------------------------- issue 20 round 2: generate, masks, load_gguf
    ("generate key int", lambda: _dec_generate(key=0), TypeError, "key"),  # deep before
    ("generate not a Decoder", lambda: models.generate(TF, TF_VARS, IDS, 2), TypeError, "model"),
    ("generate empty prompt", lambda: _dec_generate(prompt=IDS[:, :0]), ValueError, "prompt"),
    (
        "generate temperature 0 with a key",
        lambda: _dec_generate(key=KEY, temperature=0.0),
        ValueError,
        "temperature",
    ),
    # regression: a float mask and a mask of 2s were read as real tokens
    (
        "last_token_index float",
        lambda: models.last_token_index(jnp.ones((2, 3))),
        TypeError,
        "attention_mask",
    ),
    (
        "last_token_index 2s",
        lambda: models.last_token_index(jnp.full((2, 3), 2)),
        ValueError,
        "attention_mask",
    ),
    # regression: a row of padding only ran without a word
    (
        "decoder mask row all 0",
        lambda: _gemma2_apply(attention_mask=jnp.zeros((1, 3), jnp.int32)),
        ValueError,
        "attention_mask",
    ),
    ("load_gguf dtype name", lambda: models.load_gguf("/no/m.gguf", "float33"), TypeError, "dtype"),
]


def _dec_generate(key=None, prompt=IDS, **kw):
    d = models.load_decoder(DECFIX)
    return models.generate(d.model, d.variables, prompt, 2, key=key, **kw)


def test_generate_temperature_0_without_key_is_greedy():
    d = models.load_decoder(DECFIX)
    greedy = models.generate(d.model, d.variables, IDS, 3)
    np.testing.assert_array_equal(
        models.generate(d.model, d.variables, IDS, 3, temperature=0.0), greedy
    )
    logits = d.model.apply(d.variables, IDS)[:, -1]  # the first new token by hand
    np.testing.assert_array_equal(greedy[:, 0], np.argmax(np.asarray(logits), -1))


@pytest.mark.parametrize("call, exc, name", [r[1:] for r in BPE_ROWS], ids=[r[0] for r in BPE_ROWS])
def test_bpe_and_decoder_bad_inputs(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    assert str(info.value.args[0]).startswith(f"{name}:"), info.value.args[0]


def test_bpe_invalid_json(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="^path: .* is not a valid tokenizer.json"):
        models.BPETokenizer.from_file(p)


A2 = np.full((2, 2), 0.5)
PLOTS = [
    ("image_grid 2-D", lambda: image_grid(np.zeros((5, 5))), ValueError, "images"),
    # issue 20: one [h, w, 3] image was drawn as h grey strips
    ("image_grid one RGB image", lambda: image_grid(np.zeros((5, 6, 3))), ValueError, "images"),
    ("image_grid none", lambda: image_grid(np.zeros((0, 4, 4))), ValueError, "images"),
    ("image_grid nan", lambda: image_grid(np.full((1, 2, 2), np.nan)), ValueError, "images"),
    ("image_grid titles", lambda: image_grid(np.zeros((2, 4, 4)), ["x"]), ValueError, "titles"),
    # regression: ncols=0 was clamped to 1 silently
    ("image_grid ncols", lambda: image_grid(np.zeros((2, 4, 4)), ncols=0), ValueError, "ncols"),
    ("image_grid size", lambda: image_grid(np.zeros((2, 4, 4)), size=0), ValueError, "size"),
    ("attention_grid 3-D", lambda: attention_grid(np.zeros((2, 2, 2))), ValueError, "weights"),
    (
        "attention_grid tokens",
        lambda: attention_grid(np.zeros((1, 1, 2, 2)), ["a"]),
        ValueError,
        "tokens",
    ),
    (
        "attention_grid key_tokens",
        lambda: attention_grid(np.zeros((1, 1, 2, 3)), ["a", "b"], key_tokens=["k"]),
        ValueError,
        "key_tokens",
    ),
    (
        "attention_grid layer_names",
        lambda: attention_grid(np.zeros((2, 1, 2, 2)), layer_names=["L0"]),
        ValueError,
        "layer_names",
    ),
    (
        "attention_grid size",
        lambda: attention_grid(np.zeros((1, 1, 2, 2)), size=-1),
        ValueError,
        "size",
    ),
    ("attention_heatmap 1-D", lambda: attention_heatmap(np.zeros(3)), ValueError, "weights"),
    ("attention_heatmap empty", lambda: attention_heatmap(np.zeros((0, 3))), ValueError, "weights"),
    (
        "attention_heatmap tokens",
        lambda: attention_heatmap(A2, ["a", "b", "c"]),
        ValueError,
        "tokens",
    ),
    ("head_score_map 1-D", lambda: head_score_map(np.zeros(3)), ValueError, "scores"),
    ("head_score_map fmt", lambda: head_score_map(A2, fmt="{:q}"), TypeError, "fmt"),
    ("head_score_map fmt int", lambda: head_score_map(A2, fmt=3), TypeError, "fmt"),
    ("patching empty", lambda: patching_heatmap(np.zeros((0, 2))), ValueError, "effects"),
    ("patching rows", lambda: patching_heatmap(A2, row_labels=["a"]), ValueError, "row_labels"),
    ("patching cols", lambda: patching_heatmap(A2, col_labels=["a"]), ValueError, "col_labels"),
    ("patching limit zero", lambda: patching_heatmap(A2, limit=0.0), ValueError, "limit"),
    ("patching limit nan", lambda: patching_heatmap(A2, limit=float("nan")), ValueError, "limit"),
    ("probe 1-D", lambda: probe_accuracy(np.zeros(3)), ValueError, "accuracy"),
    ("probe layer_names", lambda: probe_accuracy(A2, layer_names=["a"]), ValueError, "layer_names"),
    ("probe task_names", lambda: probe_accuracy(A2, task_names=["a"]), ValueError, "task_names"),
    ("probe control", lambda: probe_accuracy(A2, control=np.zeros((3, 2))), ValueError, "control"),
    ("probe chance", lambda: probe_accuracy(A2, chance=[0.5]), ValueError, "chance"),
    ("traces 1-D", lambda: actmax_traces(np.zeros(3)), ValueError, "traces"),
    ("traces smooth zero", lambda: actmax_traces(np.zeros((2, 5)), smooth=0), ValueError, "smooth"),
    # regression: a window longer than the trace drew empty lines
    ("traces smooth long", lambda: actmax_traces(np.zeros((2, 5)), smooth=6), ValueError, "smooth"),
    (
        "traces smooth float",
        lambda: actmax_traces(np.zeros((2, 5)), smooth=1.5),
        ValueError,
        "smooth",
    ),
    ("traces labels", lambda: actmax_traces(np.zeros((2, 5)), ["a"]), ValueError, "labels"),
    (
        "traces dataset_best",
        lambda: actmax_traces(np.zeros((2, 5)), dataset_best=np.zeros(3)),
        ValueError,
        "dataset_best",
    ),
    ("scatter lengths", lambda: effect_scatter(np.zeros(3), np.zeros(2)), ValueError, "y"),
    ("scatter empty", lambda: effect_scatter(np.zeros(0), np.zeros(0)), ValueError, "x"),
    ("scatter all nan", lambda: effect_scatter(np.full(2, np.nan), np.zeros(2)), ValueError, "x"),
]


@pytest.mark.parametrize("call, exc, name", [r[1:] for r in PLOTS], ids=[r[0] for r in PLOTS])
def test_plotting_bad_inputs(call, exc, name):
    with pytest.raises(exc, match=f"^{name}:"):
        call()
