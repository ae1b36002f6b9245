"""Every library analysis on the Hugging Face decoders (Gemma 2/3, Llama): capture under vmap,
interventions, patch sweeps, attribution patching, soft prompts and probes.

Attention weights against HF's probabilities are in test_decoders.py (parity test). The
references here are independent of the code under test: edited parameters instead of an
edit of activations, a per-site loop of plain interventions instead of the vmapped sweep,
central finite differences instead of autodiff, scikit-learn instead of our probes, and the
model's own forward pass. Tolerances: f32 round-off of the same 2-layer computation in a
different order (<= 1e-5 relative, as in test_decoders.py), or the stated truncation error.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from jaxinterp import actmax, probes
from jaxinterp.capture import capture
from jaxinterp.interventions import (
    attribution_patch,
    head_sites,
    intervene,
    logit_diff,
    patch_sweep,
    position_sites,
    replace,
    zero,
)
from jaxinterp.models import load_decoder

FIX = Path(__file__).parent / "fixtures" / "decoders"


@pytest.fixture(scope="module")
def g2():
    return load_decoder(FIX / "gemma2")


@pytest.fixture(scope="module")
def g3():
    return load_decoder(FIX / "gemma3")


def _task(d):
    """Clean / corrupted prompts differing in one token (position 3) and a logit-diff metric."""
    ref = np.load(FIX / "gemma2" / "reference.npz")
    clean = jnp.asarray(ref["input_ids"])
    corrupted = clean.at[:, 3].set((clean[:, 3] + 17) % 128)
    f = jax.jit(d.model.apply)
    answer = jnp.argmax(f(d.variables, clean)[:, -1], -1)
    wrong = jnp.argmax(f(d.variables, corrupted)[:, -1], -1)
    wrong = jnp.where(wrong == answer, (answer + 1) % 128, wrong)
    return clean, corrupted, lambda logits: logit_diff(logits, answer, wrong)


def test_capture_under_jit_and_vmap(g3):
    dec = g3
    ids = jnp.asarray(np.load(FIX / "gemma2" / "reference.npz")["input_ids"])
    f = capture(dec.model, dec.variables, select=["blocks_*/post_ln_1", "blocks_0/mlp/hidden"])
    out, acts = jax.jit(f)(ids)
    out_v, acts_v = jax.jit(jax.vmap(lambda x: f(x[None])))(ids)  # one example at a time
    np.testing.assert_allclose(out_v[:, 0], out, rtol=1e-5, atol=1e-5)
    for k in acts:
        np.testing.assert_allclose(acts_v[k][:, 0], acts[k], rtol=1e-5, atol=1e-5)
    # Gemma's residual stream: blocks_0 = embed + post_ln_1 + post_ln_2 (the added terms)
    sel = ["embed", "blocks_0", "blocks_0/post_ln_1", "blocks_0/post_ln_2"]
    _, a = jax.jit(capture(dec.model, dec.variables, select=sel))(ids)
    np.testing.assert_allclose(
        a["blocks_0"], a["embed"] + a["blocks_0/post_ln_1"] + a["blocks_0/post_ln_2"], atol=1e-5
    )


def test_head_ablation_equals_zeroed_o_rows(g2):
    dec = g2
    ids = jnp.asarray(np.load(FIX / "gemma2" / "reference.npz")["input_ids"])
    for layer, head in ((1, 3),):
        f = intervene(dec.model, dec.variables, {f"blocks_{layer}/attn/z": zero(at={-2: head})})
        got = np.asarray(jax.jit(f)(ids))
        p = jax.tree.map(lambda a: a, dec.variables)  # a copy to edit
        o = p["params"][f"blocks_{layer}"]["attn"]["o"]
        o["kernel"] = o["kernel"].at[head].set(0.0)  # the o_proj input rows of that head
        want = np.asarray(jax.jit(dec.model.apply)(p, ids))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.abs(got - np.asarray(dec.model.apply(dec.variables, ids))).max() > 1e-2


def test_patch_sweep_matches_a_loop_of_interventions(g3):
    dec = g3
    clean, corrupted, metric = _task(dec)
    n, h = dec.config.n_layers, dec.config.n_heads
    sites = head_sites(n, h, template="blocks_{layer}/attn/z")
    res = jax.jit(
        lambda c, x: patch_sweep(dec.model, dec.variables, c, x, sites, metric, chunk_size=4)
    )(clean, corrupted)
    _, src = capture(dec.model, dec.variables, select="blocks_*/attn/z")(clean)
    for layer, head in ((0, 2), (1, 0), (1, 3)):  # a plain intervention per site, eagerly
        path = f"blocks_{layer}/attn/z"
        f = intervene(dec.model, dec.variables, {path: replace(src[path], at={-2: head})})
        want = metric(f(corrupted))
        np.testing.assert_allclose(res.patched[layer * h + head], want, rtol=1e-5, atol=1e-5)
    assert sites.unflatten(res.normalized).shape == (n, h)  # [layer, head]
    # the residual stream: patching the last layer at the read-out position restores the clean
    # run (normalized 1); positions before the corrupted token are unchanged (normalized 0)
    pos = position_sites(n, clean.shape[1], template="blocks_{layer}")
    r = patch_sweep(dec.model, dec.variables, clean, corrupted, pos, metric)
    grid = np.asarray(pos.unflatten(r.normalized))  # [layer, position]
    np.testing.assert_allclose(grid[-1, -1], 1.0, atol=1e-5)
    np.testing.assert_allclose(grid[:, :3], 0.0, atol=1e-5)


def test_attribution_patch_matches_finite_differences(g2):
    dec = g2
    clean, corrupted, metric = _task(dec)
    n, h = dec.config.n_layers, dec.config.n_heads
    sites = head_sites(n, h, template="blocks_{layer}/attn/z")
    res = jax.jit(lambda c, x: attribution_patch(dec.model, dec.variables, c, x, sites, metric))(
        clean, corrupted
    )
    effect = np.asarray(sites.unflatten(res.patched - res.corrupted))  # [layer, head]
    _, zc = capture(dec.model, dec.variables, select="blocks_*/attn/z")(clean)
    _, zx = capture(dec.model, dec.variables, select="blocks_*/attn/z")(corrupted)
    eps = 1e-2

    def moved(layer, head, t):  # metric with head (layer, head) moved t of the way to clean
        path = f"blocks_{layer}/attn/z"
        delta = (zc[path] - zx[path]).at[..., :head, :].set(0).at[..., head + 1 :, :].set(0)
        return metric(intervene(dec.model, dec.variables, {path: lambda a: a + t * delta})(
            corrupted
        ))  # fmt: skip

    fd = np.array(
        [[(moved(i, j, eps) - moved(i, j, -eps)) / (2 * eps) for j in range(h)] for i in range(n)]
    )
    # central differences: O(eps^2) truncation plus f32 round-off / eps; the effects are O(1)
    np.testing.assert_allclose(effect, fd, rtol=2e-3, atol=2e-3)
    assert np.abs(effect).max() > 0.05


def test_soft_prompt_on_a_decoder(g3):
    d = g3
    table = d.variables["params"]["embed"]["tok"]["embedding"]
    ids = jnp.asarray(np.load(FIX / "gemma3" / "reference.npz")["input_ids"])
    # embeddings= is the table lookup: same stream (with Gemma's sqrt(d) scale), same logits
    f = capture(d.model, d.variables, select="embed")
    out_e, a_e = f(jnp.zeros_like(ids), embeddings=table[ids])
    out_i, a_i = f(ids)
    np.testing.assert_array_equal(a_e["embed"], a_i["embed"])
    np.testing.assert_array_equal(out_e, out_i)
    targets = jnp.array([5, 77])
    res = actmax.maximize(
        jax.random.key(0), d.model, d.variables,
        lambda v: actmax.class_logit(v, position=5), targets,
        param=actmax.soft_prompt(table, 6, argname="embeddings"), steps=20,
    )  # fmt: skip
    assert res.inputs.shape == (2, 1, 6, d.config.d_model)
    logits = jax.vmap(lambda e: d.model.apply(d.variables, jnp.zeros((1, 6), int), embeddings=e))(
        res.inputs
    )
    np.testing.assert_allclose(res.values, logits[np.arange(2), 0, 5, targets], rtol=1e-4)
    assert (res.values > res.traces[:, 0] + 1.0).all()  # the ascent raised each target logit


def test_probes_on_the_residual_stream(g2):
    d = g2
    ids = jax.random.randint(jax.random.key(0), (64, 8), 0, 128)
    feats = probes.layer_features(
        d.model, d.variables, ids, ["embed", "blocks_0", "blocks_1"], pool="last"
    )
    assert feats.shape == (3, 64, d.config.d_model)
    _, acts = capture(d.model, d.variables, select=["blocks_1"])(ids)
    np.testing.assert_allclose(feats[2], acts["blocks_1"][:, -1], rtol=1e-5, atol=1e-5)
    labels = (ids[:, -1] % 2)[None]  # parity of the last token: [task=1, n]
    probe, info = probes.fit_logistic(feats, labels, C=1.0, max_iter=200, tol=1e-5)
    assert bool(info.converged.all())
    for layer in range(3):
        x = np.asarray(feats[layer], np.float64)
        sk = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(x, labels[0])
        ours = np.asarray(probes.decision(probe, feats)[layer, 0])  # [n, classes=2]
        ours = ours[:, 1] - ours[:, 0]
        np.testing.assert_allclose(ours, sk.decision_function(x), rtol=2e-3, atol=2e-3)
