"""Fixture: our SAELens-layout files loaded by SAELens itself, and SAELens's encodings.

Two steps, two environments (the test then needs neither torch nor SAELens):

1. ``python scripts/make_saelens_fixture.py write`` (the project's venv, with jax): saves one
   dictionary per architecture with :func:`jaxinterp.features.save_saelens` under
   ``tests/fixtures/saelens/<name>/`` and fixed inputs in ``inputs.npz``.
2. ``/tmp/sae-venv/bin/python scripts/make_saelens_fixture.py encode`` (a venv with torch and
   ``sae-lens``: ``pip install torch sae-lens``; no jax needed): loads every folder with
   ``SAE.load_from_disk``, writes its ``encode`` / ``decode`` of the inputs to
   ``saelens_outputs.npz``; also saves a SAELens ``StandardSAE`` with random weights and
   ``apply_b_dec_to_input=True`` (SAELens's default) under ``saelens_standard/`` with its
   encodings, so loading SAELens's own files is checked too.

Measured with sae-lens 6.54.12 and torch 2.13.0 (CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "saelens"
D_IN, D_SAE, D_OUT, N = 8, 16, 6, 12
NAMES = ["relu", "topk", "jumprelu", "batch_topk", "relu_transcoder", "jumprelu_transcoder"]


def write() -> None:
    import jax
    import jax.numpy as jnp

    from jaxinterp import features as F

    settings = {
        "relu": F.relu(1.0),
        "topk": F.topk(3),
        "jumprelu": F.jumprelu(0.1),
        "batch_topk": F.batch_topk(3),
        "relu_transcoder": F.relu(1.0),
        "jumprelu_transcoder": F.jumprelu(0.1),
    }
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        d_out = D_OUT if name.endswith("transcoder") else D_IN
        p = F.init_params(jax.random.key(i), D_IN, D_SAE, d_out)
        p = p._replace(
            b_enc=jnp.asarray(rng.normal(size=D_SAE) * 0.3, jnp.float32),
            b_dec=jnp.asarray(rng.normal(size=d_out) * 0.1, jnp.float32),
            threshold=jnp.asarray(rng.uniform(0.05, 0.6, size=D_SAE), jnp.float32),
        )
        F.save_saelens(OUT / name, p, settings[name], hook_name="block_0", model_name="toy")
    x = rng.normal(size=(N, D_IN)).astype(np.float32)
    np.savez(OUT / "inputs.npz", x=x)
    print(f"wrote {len(NAMES)} folders and inputs.npz to {OUT}")


def encode() -> None:
    import sae_lens
    import torch
    from sae_lens import SAE, StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    x = torch.from_numpy(np.load(OUT / "inputs.npz")["x"])
    out = {}
    for name in NAMES:
        sae = SAE.load_from_disk(str(OUT / name), device="cpu")
        with torch.no_grad():
            acts = sae.encode(x)
            out[f"{name}/acts"] = acts.numpy()
            out[f"{name}/recon"] = sae.decode(acts).numpy()
        out[f"{name}/class"] = np.array(type(sae).__name__)
    cfg = StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, apply_b_dec_to_input=True)
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec, sae.b_enc, sae.b_dec):
            p.copy_(torch.randn_like(p) * 0.5)
    sae.save_model(str(OUT / "saelens_standard"))
    with torch.no_grad():
        acts = sae.encode(x)
        out["saelens_standard/acts"] = acts.numpy()
        out["saelens_standard/recon"] = sae.decode(acts).numpy()
    out["versions"] = np.array(f"sae-lens {sae_lens.__version__}, torch {torch.__version__}")
    np.savez(OUT / "saelens_outputs.npz", **out)
    print(f"wrote saelens_outputs.npz ({out['versions']})")


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("write", "encode"):
        sys.exit("usage: make_saelens_fixture.py write|encode")
    write() if sys.argv[1] == "write" else encode()
