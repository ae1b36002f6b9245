"""Our SAELens-layout files, as SAELens itself loads and encodes them (fixture made by
scripts/make_saelens_fixture.py with sae-lens 6.54.12; no torch here)."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxinterp import features as F

FIX = Path(__file__).parent / "fixtures" / "saelens"
NAMES = ["relu", "topk", "jumprelu", "batch_topk", "relu_transcoder", "jumprelu_transcoder"]
CLASSES = {
    "relu": "StandardSAE",
    "topk": "TopKSAE",
    "jumprelu": "JumpReLUSAE",
    "batch_topk": "JumpReLUSAE",
    "relu_transcoder": "Transcoder",
    "jumprelu_transcoder": "JumpReLUTranscoder",
}


@pytest.fixture(scope="module")
def ref():
    with np.load(FIX / "saelens_outputs.npz") as z:
        return dict(z)


@pytest.mark.parametrize("name", NAMES + ["saelens_standard"])
def test_encodings_match_saelens(name, ref):
    x = np.load(FIX / "inputs.npz")["x"]
    params, setting, cfg = F.load_saelens(FIX / name)
    if name in CLASSES:
        assert str(ref[f"{name}/class"]) == CLASSES[name]
    else:
        assert cfg["apply_b_dec_to_input"] is True  # SAELens's own file: folded into b_enc

    @jax.jit
    def run(p, s, x):
        acts = jax.vmap(lambda xi: F.encode(p, xi, s, max_k=8))(x)
        return acts, jax.vmap(lambda a: F.decode(p, a))(acts)

    acts, recon = run(params, setting, x)
    np.testing.assert_allclose(acts, ref[f"{name}/acts"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(recon, ref[f"{name}/recon"], rtol=1e-5, atol=1e-5)
    assert (np.asarray(acts) > 0).any()


def test_save_writes_the_committed_layout(tmp_path):
    for name in ("topk", "jumprelu_transcoder"):
        params, setting, cfg = F.load_saelens(FIX / name)
        F.save_saelens(tmp_path / name, params, setting, hook_name="block_0", model_name="toy")
        again = json.loads((tmp_path / name / "cfg.json").read_text())
        assert again == cfg
        assert cfg["metadata"]["hook_name"] == "block_0"
        back, _, _ = F.load_saelens(tmp_path / name)
        for a, b in zip(back, params):
            np.testing.assert_array_equal(a, b)


def test_save_refuses_what_saelens_cannot_hold(tmp_path):
    cross = F.init_params(jax.random.key(0), (2, 4), 8)
    with pytest.raises(ValueError, match="params: expected one SAE or transcoder"):
        F.save_saelens(tmp_path, cross, F.relu(1.0), hook_name="x")
    p = F.init_params(jax.random.key(0), 4, 8, threshold=-0.1)
    with pytest.raises(ValueError, match="thresholds >= 0"):
        F.save_saelens(tmp_path, p, F.jumprelu(0.1), hook_name="x")
    with pytest.raises(FileNotFoundError, match="cfg.json"):
        F.load_saelens(tmp_path / "missing")
