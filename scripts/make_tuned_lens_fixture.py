"""Reference outputs of the ``tuned-lens`` package (Belrose et al. 2023) on a tiny Llama.

Run in a venv with ``torch``, ``transformers`` and ``tuned-lens`` (its own dependencies clash
with the library's venv; ``pip install --no-deps tuned-lens`` next to torch + transformers is
enough for ``tuned_lens.nn``)::

    python scripts/make_tuned_lens_fixture.py

Loads ``tests/fixtures/decoders/llama`` (the random-weight HF Llama of
``make_decoder_fixtures.py``) into ``LlamaForCausalLM``, builds the package's
``TunedLens.from_model`` and ``LogitLens.from_model``, gives every translator random weights
(seed 0, scale 0.1: the package adds the translator residually, ``h + W h + b``), and writes
``tests/fixtures/tuned_lens/reference.npz``: ``input_ids [batch, seq]``, ``weight [layer,
d_out, d_in]`` and ``bias [layer, d]`` (torch ``Linear`` layout), ``tuned [layer, batch, seq,
vocab]`` = ``lens(hidden_states[l], l)``, ``logit [layer, batch, seq, vocab]`` (the logit
lens), for ``l`` in ``0 .. num_hidden_layers - 1`` (HF's ``hidden_states[l]`` is the stream
entering layer ``l``; the package has no translator for the last layer's output), and
``kl [layer]``: ``KL(p_final || p_lens)`` of the tuned lens (computed in torch,
``sum p (log p - log q)`` averaged over positions).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from tuned_lens.nn.lenses import LogitLens, TunedLens

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def main() -> None:
    src = ROOT / "decoders" / "llama"
    model = transformers.LlamaForCausalLM.from_pretrained(src, torch_dtype=torch.float32).eval()
    ids = torch.tensor(np.load(src / "reference.npz")["input_ids"][:2], dtype=torch.long)
    lens = TunedLens.from_model(model, bias=True)
    logit_lens = LogitLens.from_model(model)
    g = torch.Generator().manual_seed(0)
    for tr in lens:
        tr.weight.data = 0.1 * torch.randn(tr.weight.shape, generator=g)
        tr.bias.data = 0.1 * torch.randn(tr.bias.shape, generator=g)
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        n = model.config.num_hidden_layers
        hs = out.hidden_states
        tuned = torch.stack([lens(hs[i], i) for i in range(n)])
        logit = torch.stack([logit_lens(hs[i], i) for i in range(n)])
        logp = out.logits.log_softmax(-1)
        logq = tuned.log_softmax(-1)
        kl = (logp.exp() * (logp - logq)).sum(-1).mean((1, 2))
    dest = ROOT / "tuned_lens"
    dest.mkdir(exist_ok=True)
    np.savez(
        dest / "reference.npz",
        input_ids=ids.numpy().astype(np.int32),
        weight=torch.stack([t.weight for t in lens]).detach().numpy(),
        bias=torch.stack([t.bias for t in lens]).detach().numpy(),
        tuned=tuned.numpy(),
        logit=logit.numpy(),
        kl=kl.numpy(),
    )
    print(f"wrote {dest / 'reference.npz'}: tuned {tuple(tuned.shape)}, kl {kl.numpy()}")


if __name__ == "__main__":
    main()
