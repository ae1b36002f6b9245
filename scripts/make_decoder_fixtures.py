"""Builds tiny random-weight Hugging Face decoders and their reference outputs for the tests.

Run (needs ``torch`` and ``transformers``; the tests and the library never import torch)::

    python scripts/make_decoder_fixtures.py [name ...]   # default: all

Writes, for each model (``gpt2``, ``llama``, ``mistral``, ``qwen2``, ``qwen3``, ``gemma2``,
``gemma3``), ``tests/fixtures/decoders/<name>/`` with
``config.json`` + ``model.safetensors`` (float32) and ``reference.npz``: ``input_ids``
``[batch, seq]``, ``logits`` ``[batch, seq, vocab]``, ``hidden`` ``[n_layers + 1, batch, seq,
d_model]`` (HF ``hidden_states``; the last one is after the final norm), ``attn``
``[n_layers, batch, head, seq, seq]`` and ``continuation`` ``[batch, n_new]`` (greedy
``generate``), all float32 / int32.

The input has 10 tokens and every model with a sliding window uses a window of 4, so local
layers differ from global ones (and from 6 generated tokens on). Gemma 2 uses small soft-caps
(attention 2, logits 2) and ``query_pre_attn_scalar`` != ``head_dim`` so each feature changes
the outputs; Gemma 3 has QK-norm and a local RoPE base distinct from the global base with
linear scaling. ``head_dim * n_heads != hidden_size`` in the new models to pin the layouts.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "decoders"
N_NEW = 6


def models() -> dict[str, torch.nn.Module]:
    gpt2 = transformers.GPT2Config(
        vocab_size=128,
        n_positions=32,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    llama = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        attention_bias=True,
        tie_word_embeddings=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    )
    small = dict(
        vocab_size=128,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    mistral = transformers.MistralConfig(
        **small, sliding_window=4, rope_theta=10000.0, tie_word_embeddings=False
    )
    qwen2 = transformers.Qwen2Config(  # q/k/v bias without o bias; layer 1 local; tied
        **small,
        use_sliding_window=True,
        sliding_window=4,
        max_window_layers=1,
        tie_word_embeddings=True,
    )
    qwen3 = transformers.Qwen3Config(**small, tie_word_embeddings=False)  # QK-norm
    gemma2 = transformers.Gemma2Config(
        **small,
        sliding_window=4,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=2.0,
        layer_types=["sliding_attention", "full_attention"],
    )
    gemma3 = transformers.Gemma3TextConfig(
        **small,
        sliding_window=4,
        query_pre_attn_scalar=24,
        rope_theta=1000000.0,
        rope_local_base_freq=100.0,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        layer_types=["sliding_attention", "full_attention"],
    )
    out = {}
    for name, cfg, cls in (
        ("gpt2", gpt2, transformers.GPT2LMHeadModel),
        ("llama", llama, transformers.LlamaForCausalLM),
        ("mistral", mistral, transformers.MistralForCausalLM),
        ("qwen2", qwen2, transformers.Qwen2ForCausalLM),
        ("qwen3", qwen3, transformers.Qwen3ForCausalLM),
        ("gemma2", gemma2, transformers.Gemma2ForCausalLM),
        ("gemma3", gemma3, transformers.Gemma3ForCausalLM),
    ):
        torch.manual_seed(0)
        cfg._attn_implementation = "eager"
        m = cls(cfg).eval()
        with torch.no_grad():  # larger than the default 0.02 init so outputs are not ~uniform
            for p in m.parameters():
                if p.ndim == 2:
                    p.normal_(0.0, 0.2)
                else:
                    p.add_(0.1 * torch.randn_like(p))
        out[name] = m
    return out


def main(names: list[str]) -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 10), generator=g)
    for name, m in models().items():
        if names and name not in names:
            continue
        folder = OUT / name
        folder.mkdir(parents=True, exist_ok=True)
        m.save_pretrained(folder, safe_serialization=True)
        (folder / "generation_config.json").unlink(missing_ok=True)
        with torch.no_grad():
            r = m(ids, output_hidden_states=True, output_attentions=True)
            cont = m.generate(
                ids,
                max_new_tokens=N_NEW,
                do_sample=False,
                min_new_tokens=N_NEW,
                pad_token_id=0,
                eos_token_id=None,
            )[:, ids.shape[1] :]
        np.savez_compressed(
            folder / "reference.npz",
            input_ids=ids.numpy().astype(np.int32),
            logits=r.logits.numpy().astype(np.float32),
            hidden=torch.stack(r.hidden_states).numpy().astype(np.float32),
            attn=torch.stack(r.attentions).numpy().astype(np.float32),
            continuation=cont.numpy().astype(np.int32),
        )
        print(name, transformers.__version__, torch.__version__, "->", folder)


if __name__ == "__main__":
    main(sys.argv[1:])
