"""Tiny random-weight decoders saved by transformers 5.x, with reference outputs, for the tests.

Run in a separate environment with ``torch`` and ``transformers>=5`` (the tests and the
library never import torch)::

    python -m venv /tmp/dec5-venv
    /tmp/dec5-venv/bin/pip install torch "transformers>=5" safetensors numpy
    /tmp/dec5-venv/bin/python scripts/make_decoder_fixtures_v5.py [name ...]

Writes ``tests/fixtures/decoders/<name>_v5/`` for ``llama`` (llama3 RoPE scaling), ``qwen2``
(a sliding-window layer, ``layer_types``), ``gemma3`` (per-layer-type ``rope_parameters``
with linear scaling on the global layers and a separate local base) and ``gpt2``
(``scale_attn_weights=False``, untied unembedding): ``config.json`` exactly as 5.x writes it
(RoPE settings under ``rope_parameters``), ``model.safetensors`` and ``reference.npz`` with

* ``input_ids [2, 10]`` and ``logits [2, 10, vocab]`` (unpadded batch);
* ``left_ids`` / ``right_ids [3, 10]`` with ``mask_left`` / ``mask_right`` (rows of 10, 7 and
  4 real tokens, padded with id 0), ``logits_left`` / ``logits_right`` (HF forward
  with that ``attention_mask`` and ``position_ids = cumsum(mask) - 1``, as ``generate`` makes
  them), and ``continuation_left [3, 6]`` (greedy ``generate`` on the left-padded batch).

The model definitions are those of ``make_decoder_fixtures.py`` (4.x keyword arguments, which
5.x converts), so the 4.x and 5.x fixtures of a family hold the same configuration.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_decoder_fixtures import OUT, models  # noqa: E402

N_NEW = 6
NAMES = ["llama", "qwen2", "gemma3", "gpt2"]


def gpt2_variant() -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=128,
        n_positions=32,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        scale_attn_weights=False,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    m = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2:
                p.normal_(0.0, 0.1)  # unscaled scores: smaller weights keep softmax soft
            else:
                p.add_(0.1 * torch.randn_like(p))
    return m


def padded(ids: torch.Tensor, lengths: list[int], left: bool):
    out = torch.zeros_like(ids)
    mask = torch.zeros_like(ids)
    s = ids.shape[1]
    for i, n in enumerate(lengths):
        sl = slice(s - n, s) if left else slice(0, n)
        out[i, sl] = ids[i, :n]
        mask[i, sl] = 1
    return out, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)  # as transformers' generate


def main(names: list[str]) -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 128, (2, 10), generator=g)
    rows = torch.randint(1, 128, (3, 10), generator=g)
    lengths = [10, 7, 4]
    all_models = models()
    all_models["gpt2"] = gpt2_variant()
    for name in names or NAMES:
        m = all_models[name]
        folder = OUT / f"{name}_v5"
        folder.mkdir(parents=True, exist_ok=True)
        m.save_pretrained(folder, safe_serialization=True)
        (folder / "generation_config.json").unlink(missing_ok=True)
        left_ids, mask_left = padded(rows, lengths, left=True)
        right_ids, mask_right = padded(rows, lengths, left=False)
        with torch.no_grad():
            logits = m(ids).logits
            kw = dict(use_cache=False)
            logits_left = m(
                left_ids, attention_mask=mask_left, position_ids=positions(mask_left), **kw
            ).logits
            logits_right = m(
                right_ids, attention_mask=mask_right, position_ids=positions(mask_right), **kw
            ).logits
            cont = m.generate(
                left_ids,
                attention_mask=mask_left,
                max_new_tokens=N_NEW,
                min_new_tokens=N_NEW,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=None,
            )[:, left_ids.shape[1] :]
            # HF's own consistency: each padded row equals that row run alone
            for i, n in enumerate(lengths):
                alone = m(rows[i : i + 1, :n]).logits[0]
                err_l = (alone - logits_left[i, -n:]).abs().max().item()
                err_r = (alone - logits_right[i, :n]).abs().max().item()
                print(f"  {name} row {i}: |left - alone| {err_l:.2e}, |right - alone| {err_r:.2e}")
        np.savez_compressed(
            folder / "reference.npz",
            input_ids=ids.numpy().astype(np.int32),
            logits=logits.numpy().astype(np.float32),
            left_ids=left_ids.numpy().astype(np.int32),
            right_ids=right_ids.numpy().astype(np.int32),
            mask_left=mask_left.numpy().astype(np.int32),
            mask_right=mask_right.numpy().astype(np.int32),
            logits_left=logits_left.numpy().astype(np.float32),
            logits_right=logits_right.numpy().astype(np.float32),
            continuation_left=cont.numpy().astype(np.int32),
        )
        print(name, transformers.__version__, torch.__version__, "->", folder)


if __name__ == "__main__":
    main(sys.argv[1:])
