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


CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 10:45 and I'll be there by 11.",
    "Don't stop: 3.14159, 2.71828 and 1,000,000 are numbers; 42 is an answer.",
    "  Leading spaces, trailing spaces   and\ttabs\t\there.\nNew lines\n\nand more lines.",
    "Café, naïve, façade, résumé, Zürich, São Paulo, Kraków, Ελληνικά, русский язык.",
    "def f(x):\n    return x ** 2 + 1  # a comment\nprint(f(12345))",
    "Tokenizers split text into pieces; pieces are merged by rank. THE END? the end!",
] * 3


def tokenizer_jsons() -> dict[str, str]:
    """Four tokenizer.json files: GPT-2 and Llama 3 byte-level BPE, Llama 2 and Gemma
    SentencePiece-style BPE (byte fallback), trained on CORPUS with ``tokenizers``."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    out = {}
    llama3_split = (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
        r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )
    for name in ("gpt2", "llama3"):
        tok = Tokenizer(models.BPE(ignore_merges=name == "llama3"))
        if name == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            special = ["<|endoftext|>"]
        else:
            from tokenizers import Regex, processors

            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(llama3_split), "isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
            special = ["<|begin_of_text|>", "<|end_of_text|>"]
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=special,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(CORPUS, trainer)
        if name == "llama3":
            tok.post_processor = processors.TemplateProcessing(
                single="<|begin_of_text|> $A",
                special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))],
            )
        out[name] = tok.to_str(pretty=False)
    # SentencePiece-style: train on "▁"-joined text, then rebuild the vocab as Llama 2 lays it
    # out (specials, the 256 byte tokens <0x00>..<0xFF>, then the pieces)
    for name in ("llama2", "gemma"):
        tok = Tokenizer(models.BPE())
        tok.normalizer = normalizers.Replace(" ", "▁")
        trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False, limit_alphabet=60)
        tok.train_from_iterator(CORPUS, trainer)
        trained = json.loads(tok.to_str())
        specials = (
            ["<unk>", "<s>", "</s>"] if name == "llama2" else ["<pad>", "<eos>", "<bos>", "<unk>"]
        )
        vocab = {t: i for i, t in enumerate(specials)}
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
        for t, _ in sorted(trained["model"]["vocab"].items(), key=lambda kv: kv[1]):
            vocab.setdefault(t, len(vocab))
        bos = "<s>" if name == "llama2" else "<bos>"
        norm = [{"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]
        dec = [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]
        if name == "llama2":
            norm.insert(0, {"type": "Prepend", "prepend": "▁"})
            dec.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
        cfg = {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [
                {
                    "id": vocab[t],
                    "content": t,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
                for t in specials
            ],  # fmt: skip
            "normalizer": {"type": "Sequence", "normalizers": norm},
            "pre_tokenizer": None,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ],
                "pair": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}},
            },
            "decoder": {"type": "Sequence", "decoders": dec},
            "model": {
                **trained["model"],
                "unk_token": "<unk>",
                "fuse_unk": True,
                "byte_fallback": True,
                "vocab": vocab,
            },
        }
        text = json.dumps(cfg, ensure_ascii=False)
        Tokenizer.from_str(text)  # valid for the tokenizers package
        out[name] = text
    return out


def main(names: list[str]) -> None:
    if "tokenizers" in names or not names:
        folder = OUT.parent / "tokenizers"
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in tokenizer_jsons().items():
            (folder / f"{name}.json").write_text(text, encoding="utf-8")
            print(name, "->", folder / f"{name}.json")
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
