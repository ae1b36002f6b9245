"""Padded-batch reference logits for the transformers 4.x decoder fixtures.

Run with ``torch`` and ``transformers==4.57.6`` (the version that wrote the fixtures)::

    python scripts/make_decoder_padded_refs.py [name ...]   # default: all seven

Loads each ``tests/fixtures/decoders/<name>/`` checkpoint with transformers (eager attention,
float32) and writes ``padded.npz`` beside it: ``left_ids`` / ``right_ids [3, 10]`` with
``mask_left`` / ``mask_right`` (rows of 10, 7 and 4 real tokens, padded with id 0) and
``logits_left`` / ``logits_right`` (forward with that ``attention_mask`` and ``position_ids =
cumsum(mask) - 1``, as ``generate`` makes them), plus ``continuation_left [3, 6]`` (greedy
``generate`` on the left-padded batch).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_decoder_fixtures_v5 import N_NEW, padded, positions  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "decoders"
NAMES = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"]


def main(names: list[str]) -> None:
    g = torch.Generator().manual_seed(2)
    rows = torch.randint(1, 128, (3, 10), generator=g)
    lengths = [10, 7, 4]
    left_ids, mask_left = padded(rows, lengths, left=True)
    right_ids, mask_right = padded(rows, lengths, left=False)
    for name in names or NAMES:
        folder = OUT / name
        m = transformers.AutoModelForCausalLM.from_pretrained(
            folder, attn_implementation="eager", torch_dtype=torch.float32
        ).eval()
        with torch.no_grad():
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
        np.savez_compressed(
            folder / "padded.npz",
            left_ids=left_ids.numpy().astype(np.int32),
            right_ids=right_ids.numpy().astype(np.int32),
            mask_left=mask_left.numpy().astype(np.int32),
            mask_right=mask_right.numpy().astype(np.int32),
            logits_left=logits_left.numpy().astype(np.float32),
            logits_right=logits_right.numpy().astype(np.float32),
            continuation_left=cont.numpy().astype(np.int32),
        )
        print(name, transformers.__version__, torch.__version__, "->", folder / "padded.npz")


if __name__ == "__main__":
    main(sys.argv[1:])
