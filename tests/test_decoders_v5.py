"""Checkpoints saved by transformers 5.x, and the rule that no maths-changing config key is
ignored.

The fixtures (tests/fixtures/decoders/*_v5/) are made by scripts/make_decoder_fixtures_v5.py
with transformers 5.25 / torch 2.13 (eager attention, float32): 5.x writes RoPE settings under
``rope_parameters`` (per layer type for Gemma 3). Before it was read, these loaded silently
wrong (max logit error 7.0 for Llama, 0.93 for Gemma 3, 3.7 for GPT-2 with
``scale_attn_weights=False``). Tolerance as in test_decoders.py: 1e-5 relative to
max(1, max |reference|) (measured <= 6.4e-6).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.models import DecoderConfig, load_decoder

FIX = Path(__file__).parent / "fixtures" / "decoders"
V5 = ["llama", "qwen2", "gemma3", "gpt2"]


def close(a, ref, tol=1e-5):
    err = float(np.abs(np.asarray(a, np.float32) - ref).max())
    assert err <= tol * max(1.0, float(np.abs(ref).max())), err
    return err


@pytest.fixture(scope="module", params=V5)
def v5(request):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 5.x config.json raises no unknown-key warning
        d = load_decoder(FIX / f"{request.param}_v5")
    return request.param, d, dict(np.load(FIX / f"{request.param}_v5" / "reference.npz"))


def test_v5_logits_equal_transformers(v5):
    _, d, ref = v5
    out = jax.jit(d.model.apply)(d.variables, jnp.asarray(ref["input_ids"]))
    close(out, ref["logits"])


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma3"])
def test_v4_and_v5_configs_read_the_same(name):
    """The same model written by 4.57 (rope_theta/rope_scaling) and 5.x (rope_parameters)."""
    c4 = json.loads((FIX / name / "config.json").read_text())
    c5 = json.loads((FIX / f"{name}_v5" / "config.json").read_text())
    assert "rope_parameters" in c5 and "rope_theta" not in c5 and "rope_theta" in c4
    a, b = DecoderConfig.from_hf(c4), DecoderConfig.from_hf(c5)
    assert a == b
    assert a.rope_scaling or name == "qwen2"  # scaling present, not dropped to the default


def test_gpt2_unscaled_scores_and_untied_head():
    """scale_attn_weights=False and an untied lm_head are read (both were ignored before)."""
    cfg = json.loads((FIX / "gpt2_v5" / "config.json").read_text())
    c = DecoderConfig.from_hf(cfg)
    assert not c.scale_scores and not c.tie_embeddings
    d = load_decoder(FIX / "gpt2_v5")
    assert "unembed" in d.variables["params"]


_LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "vocab_size": 128,
    "rms_norm_eps": 1e-5,
}
_GPT2 = {
    "model_type": "gpt2",
    "n_embd": 64,
    "n_head": 4,
    "n_layer": 2,
    "vocab_size": 128,
    "n_positions": 32,
    "layer_norm_epsilon": 1e-5,
}
_G3 = {"model_type": "gemma3_text", "hidden_size": 64, "intermediate_size": 96,
       "num_hidden_layers": 2}  # fmt: skip

REFUSED = [
    ("yarn", {**_LLAMA, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, "yarn"),
    ("dynamic 4.x", {**_LLAMA, "rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
    (
        "partial rotary",
        {
            **_LLAMA,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1e4,
                "partial_rotary_factor": 0.5,
            },
        },
        "partial_rotary_factor",
    ),
    (
        "rope extra key",
        {
            **_LLAMA,
            "rope_parameters": {"rope_type": "linear", "factor": 2.0, "attention_factor": 0.5},
        },
        "attention_factor",
    ),
    (
        "llama3 lacks keys",
        {**_LLAMA, "rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
        "low_freq_factor",
    ),
    (
        "both layouts disagree",
        {
            **_LLAMA,
            "rope_theta": 10.0,
            "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
        },
        "disagree",
    ),
    (
        "gemma3 local scaling",
        {
            **_G3,
            "rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
            },
        },
        "sliding_attention",
    ),
    (
        "gpt2 inverse layer idx",
        {**_GPT2, "scale_attn_by_inverse_layer_idx": True},
        "scale_attn_by_inverse_layer_idx",
    ),
    ("gpt2 cross attention", {**_GPT2, "add_cross_attention": True}, "add_cross_attention"),
    ("gpt2 relu", {**_GPT2, "activation_function": "relu"}, "activation_function"),
    ("llama relu", {**_LLAMA, "hidden_act": "relu"}, "hidden_act"),
    ("interleaved rope", {**_LLAMA, "rope_interleaved": True}, "rope_interleaved"),
]


@pytest.mark.parametrize("case", REFUSED, ids=[c[0] for c in REFUSED])
def test_maths_keys_refused_by_name(case):
    _, cfg, name = case
    with pytest.raises(ValueError, match=f"^config: .*{name}"):
        DecoderConfig.from_hf(cfg)


def test_unknown_key_warns_by_name_and_known_keys_do_not():
    with pytest.warns(UserWarning, match="rope_pairs"):
        DecoderConfig.from_hf({**_LLAMA, "rope_pairs": "interleaved"})
    with pytest.warns(UserWarning, match="attn_logit_softcapping"):  # Llama has no soft-cap
        DecoderConfig.from_hf({**_LLAMA, "attn_logit_softcapping": 30.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"]:
            DecoderConfig.from_hf(json.loads((FIX / name / "config.json").read_text()))
        # SmolLM2's own config.json keys (the project's real model)
        smol = {"is_llama_config": True, "rope_interleaved": False, "pretraining_tp": 1,
                "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16"}}}  # fmt: skip
        DecoderConfig.from_hf({**_LLAMA, **smol})


def test_implemented_variants_change_the_config():
    """Keys read, not dropped: each changes the DecoderConfig the way transformers builds it."""
    assert DecoderConfig.from_hf({**_LLAMA, "hidden_act": "gelu"}).mlp_act == "gelu"
    assert DecoderConfig.from_hf({**_LLAMA, "mlp_bias": True}).mlp_bias
    mistral = {**_LLAMA, "model_type": "mistral", "attention_bias": True, "mlp_bias": True}
    with pytest.warns(UserWarning, match="attention_bias"):  # MistralForCausalLM ignores them
        c = DecoderConfig.from_hf(mistral)
    assert not (c.qkv_bias or c.o_bias or c.mlp_bias)
    old = DecoderConfig.from_hf({**_LLAMA, "rope_scaling": {"type": "linear", "factor": 4.0}})
    new = DecoderConfig.from_hf(
        {**_LLAMA, "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}}
    )
    assert old == new and dict(new.rope_scaling)["factor"] == 4.0
    g3 = DecoderConfig.from_hf({**_G3, "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 5e5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}})  # fmt: skip
    assert (g3.rope_theta, g3.rope_local_theta) == (5e5, 50.0)
