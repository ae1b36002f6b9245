"""Padded batches: ``attention_mask`` through the decoder, generation and the analyses.

Two independent references: transformers 5.25 (tests/fixtures/decoders/*_v5, made by
scripts/make_decoder_fixtures_v5.py: left- and right-padded batches run with the same mask and
``position_ids = cumsum(mask) - 1``, and a greedy ``generate`` on the left-padded batch), and
each row run alone without padding (no torch needed; in one call: right-padded rows without
a mask, which a causal model computes at the real positions exactly as the rows alone).
Every forward is jitted with the weights as arguments (eager op-by-op runs are slow on a
loaded 2-core machine). Tolerance 1e-5 relative as in
test_decoders.py (measured vs HF: <= 5.4e-6; vs the unpadded rows: <= 4e-6).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import interventions as iv
from jaxinterp.attention import attention_weights
from jaxinterp.capture import capture
from jaxinterp.models import generate, last_token_index, load_decoder
from jaxinterp.probes import layer_features

FIX = Path(__file__).parent / "fixtures" / "decoders"
V5 = ["llama", "qwen2", "gemma3", "gpt2"]


def close(a, ref, tol=1e-5):
    a, ref = np.asarray(a, np.float32), np.asarray(ref, np.float32)
    err = float(np.abs(a - ref).max())
    assert err <= tol * max(1.0, float(np.abs(ref).max())), err
    return err


@pytest.fixture(scope="module", params=V5)
def v5(request):
    d = load_decoder(FIX / f"{request.param}_v5")
    return request.param, d, dict(np.load(FIX / f"{request.param}_v5" / "reference.npz"))


@partial(jax.jit, static_argnums=0)
def _apply(model, v, ids, mask):
    return model.apply(v, ids, attention_mask=mask)


def forward(d, ids, mask=None):
    """Jitted forward, compiled once per model, shape and mask presence."""
    m = None if mask is None else jnp.asarray(mask)
    return np.asarray(_apply(d.model, d.variables, jnp.asarray(ids), m))


def rows_alone(d, ref):
    """Logits of each row run alone, ``[batch, seq, vocab]`` (valid at the real positions of
    the right-padded layout)."""
    return forward(d, ref["right_ids"])


def test_padded_logits_equal_transformers_and_unpadded_rows(v5):
    name, d, ref = v5
    if name != "gemma3":  # the others are covered by the 4.x fixtures (same configurations)
        pytest.skip("covered by test_padded_logits_equal_transformers_4x")
    alone = rows_alone(d, ref)
    for side in ("left", "right"):
        ids, mask = ref[f"{side}_ids"], ref[f"mask_{side}"]
        out = forward(d, ids, mask)
        real = mask.astype(bool)
        assert np.isfinite(out).all()  # padded query rows too
        close(out[real], ref[f"logits_{side}"][real])
        close(out[real], alone[ref["mask_right"].astype(bool)])


def test_generate_left_padded_equals_transformers_and_rows_alone(v5):
    name, d, ref = v5
    if name not in ("llama", "gpt2"):  # RoPE and learned positions; 4.x: Mistral, Gemma 2
        pytest.skip("one RoPE and one learned-position family suffice")
    ids, mask = jnp.asarray(ref["left_ids"]), jnp.asarray(ref["mask_left"])
    out = generate(d.model, d.variables, ids, 6, attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(out), ref["continuation_left"])
    right = generate(
        d.model, d.variables, jnp.asarray(ref["right_ids"]), 6,
        attention_mask=jnp.asarray(ref["mask_right"]),
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(right), np.asarray(out))
    if name == "llama":  # the shortest row alone (a reference that needs no torch)
        alone = generate(d.model, d.variables, ids[2:3, -4:], 6)
        np.testing.assert_array_equal(np.asarray(alone)[0], np.asarray(out)[2])


def test_padded_keys_get_no_attention_and_positions_count_real_tokens():
    d = load_decoder(FIX / "gemma3_v5")  # sliding window 4 on layer 0: positions matter
    ref = dict(np.load(FIX / "gemma3_v5" / "reference.npz"))
    ids, mask = ref["left_ids"], ref["mask_left"]
    f = jax.jit(
        lambda v, i, m: attention_weights(d.model, v, weights_at="blocks_*/attn/probs")(
            i, attention_mask=m
        )
    )
    _, w = f(d.variables, ids, mask)
    for p in w.values():
        p = np.asarray(p)  # [batch, head, q, k]
        pad_k = ~mask.astype(bool)[:, None, None, :]
        real_q = mask.astype(bool)[:, None, :, None]
        assert np.abs(np.where(pad_k & real_q, p, 0)).max() == 0.0
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(last_token_index(mask), [9, 9, 9])
    np.testing.assert_array_equal(last_token_index(ref["mask_right"]), [9, 6, 3])


def test_capture_and_intervene_take_the_mask():
    """A padded row's activations and edits equal the row's own at its real positions."""
    d = load_decoder(FIX / "llama_v5")
    ref = dict(np.load(FIX / "llama_v5" / "reference.npz"))
    ids, mask = ref["left_ids"], ref["mask_left"]
    n = int(mask[2].sum())
    cap = jax.jit(lambda v, i, m: capture(d.model, v, select=["blocks_1"])(i, attention_mask=m))
    out, acts = cap(d.variables, ids, mask)
    _, alone = cap(d.variables, ids[2:3, -n:], None)
    close(np.asarray(acts["blocks_1"])[2, -n:], np.asarray(alone["blocks_1"])[0])
    edit = {"blocks_0/attn/z": iv.zero(at={-2: 1})}  # head 1 of layer 0
    run = jax.jit(lambda v, i, m: iv.intervene(d.model, v, edit)(i, attention_mask=m))
    pad, one = run(d.variables, ids, mask), run(d.variables, ids[2:3, -n:], None)
    close(np.asarray(pad)[2, -n:], np.asarray(one)[0])
    assert float(np.abs(np.asarray(pad)[2, -n:] - np.asarray(out)[2, -n:]).max()) > 1e-2


def test_patch_sweep_and_attribution_read_each_rows_last_token():
    """(layer, head) patching of a left-padded batch, metric at each row's last real token:
    per-example effects equal the sweep of each row alone."""
    d = load_decoder(FIX / "llama_v5")
    ref = dict(np.load(FIX / "llama_v5" / "reference.npz"))
    ids, mask = jnp.asarray(ref["left_ids"]), jnp.asarray(ref["mask_left"])
    corrupted = jnp.where(mask == 1, (ids + 5) % 128, ids)
    sites = iv.head_sites(2, 4, template="blocks_{layer}/attn/z")
    last = last_token_index(mask)

    def metric(logits, pos=last):
        return iv.logit_diff(logits, 3, 7, position=pos, reduce="none")

    kw = {"attention_mask": mask}
    res = iv.patch_sweep(d.model, d.variables, ids, corrupted, sites, metric, kwargs=kw)
    att = iv.attribution_patch(d.model, d.variables, ids, corrupted, sites, metric, kwargs=kw)
    # reference: the rows right-padded without a mask (a causal model
    # computes each row's real positions as if alone), read at position n_i - 1
    n = np.asarray(mask.sum(1))
    right = jnp.asarray(ref["right_ids"])
    right_corr = jnp.where(jnp.asarray(ref["mask_right"]) == 1, (right + 5) % 128, right)

    def metric_r(logits, pos=jnp.asarray(n - 1)):
        return iv.logit_diff(logits, 3, 7, position=pos, reduce="none")

    r1 = iv.patch_sweep(d.model, d.variables, right, right_corr, sites, metric_r)
    a1 = iv.attribution_patch(d.model, d.variables, right, right_corr, sites, metric_r)
    close(res.per_example, r1.per_example)  # [site, batch]
    close(res.corrupted_per_example, r1.corrupted_per_example)
    close(att.per_example, a1.per_example, tol=1e-4)
    assert float(np.abs(np.asarray(res.patched) - np.asarray(res.corrupted)).max()) > 1e-3


def test_layer_features_with_a_mask():
    d = load_decoder(FIX / "qwen2_v5")
    ref = dict(np.load(FIX / "qwen2_v5" / "reference.npz"))
    ids, mask = ref["right_ids"], ref["mask_right"]
    feats = layer_features(
        d.model, d.variables, (ids, mask), ["blocks_0", "blocks_1"], pool="last",
        token_mask=mask, method=lambda m, i, a: m(i, attention_mask=a), chunk_size=2,
    )  # fmt: skip
    cap = jax.jit(lambda v, i: capture(d.model, v, select=["blocks_1"])(i)[1]["blocks_1"])
    alone = np.asarray(cap(d.variables, ids))  # right padding, no mask: the rows alone
    for i, n in enumerate(mask.sum(1)):
        close(feats[1, i], alone[i, n - 1])


def test_mask_bad_inputs():
    d = load_decoder(FIX / "llama_v5")
    ids = jnp.ones((2, 5), jnp.int32)
    with pytest.raises(ValueError, match="^attention_mask: expected shape"):
        d.model.apply(d.variables, ids, attention_mask=jnp.ones((2, 4), jnp.int32))
    with pytest.raises(ValueError, match="^attention_mask: expected 0/1"):
        d.model.apply(d.variables, ids, attention_mask=jnp.full((2, 5), 2))
    with pytest.raises(TypeError, match="^attention_mask"):
        d.model.apply(d.variables, ids, attention_mask=jnp.ones((2, 5)))
    # a pad id outside the vocabulary is fine where the mask is 0, refused where it is 1
    mask = jnp.array([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    a, b = forward(d, ids.at[0, 0].set(-1), mask), forward(d, ids, mask)
    close(a[0, 1:], b[0, 1:])
    with pytest.raises(ValueError, match="^input_ids: expected ids in"):
        d.model.apply(d.variables, ids.at[0, 1].set(-1), attention_mask=mask)
    with pytest.raises(ValueError, match="^attention_mask: expected a real token"):
        last_token_index(jnp.zeros((1, 3), int))


V4 = ["gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3"]


@pytest.mark.parametrize("name", V4)
def test_padded_logits_equal_transformers_4x(name):
    """The 4.57-written fixtures (every family: Mistral's window, Gemma 2's soft-caps, Qwen3's
    QK-norm) on padded batches, against transformers 4.57.6 (padded.npz, made by
    scripts/make_decoder_padded_refs.py) and against the rows alone."""
    d = load_decoder(FIX / name)
    ref = dict(np.load(FIX / name / "padded.npz"))
    alone = rows_alone(d, ref)
    for side in ("left", "right"):
        mask = ref[f"mask_{side}"]
        out = forward(d, ref[f"{side}_ids"], mask)
        real = mask.astype(bool)
        assert np.isfinite(out).all()
        close(out[real], ref[f"logits_{side}"][real])
        close(out[real], alone[ref["mask_right"].astype(bool)])
    if name in ("mistral", "gemma2"):
        ids, mask = jnp.asarray(ref["left_ids"]), jnp.asarray(ref["mask_left"])
        out = generate(d.model, d.variables, ids, 6, attention_mask=mask)
        np.testing.assert_array_equal(np.asarray(out), ref["continuation_left"])
