"""The stacked decoder layout (``Decoder(cfg, scan_layers=True)``) against the unrolled one.

Every check runs the same weights through both layouts: the unrolled model is the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import interventions as iv
from jaxinterp.attention import attention_weights
from jaxinterp.capture import capture
from jaxinterp.circuits import decoder_layout, logit_lens, rewired_forward
from jaxinterp.circuits._lens import default_sites
from jaxinterp.models import (
    Decoder,
    DecoderConfig,
    generate,
    stack_layers,
    stacked_site,
    unstack_layers,
)

CFG = DecoderConfig(
    vocab_size=64, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, d_head=8, d_mlp=48
)
IDS = jnp.array([[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 6, 2]])
CORRUPTED = jnp.array([[1, 5, 9, 2, 7, 11], [4, 4, 8, 1, 6, 30]])


@jax.jit
def _init(key):
    v = Decoder(CFG).init(key, IDS)
    # larger weights than the init's, so the layers matter to the logits
    v = jax.tree.map(lambda a: a * 3.0 if a.ndim > 1 else a, v)
    return v, stack_layers(v)


@pytest.fixture(scope="module")
def pair():
    v, s = _init(jax.random.key(0))  # one program, not one per eager op
    return Decoder(CFG), v, Decoder(CFG, scan_layers=True), s


def _metric(logits):
    return (logits[:, -1, 3] - logits[:, -1, 7]).mean()


def test_params_round_trip_and_jit(pair):
    _, v, _, s = pair
    assert s["params"]["blocks"]["mlp"]["gate"]["kernel"].shape == (3, 32, 48)
    back = jax.jit(unstack_layers)(s)
    jax.tree.map(np.testing.assert_array_equal, back, v)  # exact, same tree
    # stacking by hand (numpy), leaf by leaf
    q = [np.asarray(v["params"][f"blocks_{i}"]["attn"]["q"]["kernel"]) for i in range(3)]
    np.testing.assert_array_equal(s["params"]["blocks"]["attn"]["q"]["kernel"], np.stack(q))
    # the stacked init has the same tree and shapes as stack_layers gives
    init = jax.eval_shape(Decoder(CFG, scan_layers=True).init, jax.random.key(0), IDS)
    assert jax.tree.map(lambda a: a.shape, init) == jax.tree.map(lambda a: a.shape, s)
    with pytest.raises(ValueError, match="expected a 'blocks' key"):
        unstack_layers(v)
    with pytest.raises(ValueError, match="expected keys 'blocks_0'"):
        stack_layers(s)


def test_logits_and_captures_equal(pair):
    flat, v, stacked, s = pair
    f = jax.jit(lambda v, x: capture(flat, v, select=["blocks_*", "blocks_*/attn/z"])(x))
    g = jax.jit(lambda s, x: capture(stacked, s, select=["blocks/out", "blocks/attn/z"])(x))
    (y0, a0), (y1, a1) = f(v, IDS), g(s, IDS)
    tol = {"rtol": 1e-5, "atol": 1e-4}  # float rounding of differently fused programs
    np.testing.assert_allclose(y1, y0, **tol)
    assert a1["blocks/out"].shape == (3, 2, 6, 32)
    for i in range(3):
        np.testing.assert_allclose(a1["blocks/out"][i], a0[f"blocks_{i}"], **tol)
        np.testing.assert_allclose(a1["blocks/attn/z"][i], a0[f"blocks_{i}/attn/z"], **tol)
    # vmap over examples: each row alone
    rows = jax.jit(jax.vmap(lambda s, x: stacked.apply(s, x[None])[0], (None, 0)))(s, IDS)
    np.testing.assert_allclose(rows, y0, **tol)


def test_edit_sweep_and_attribution_equal(pair):
    flat, v, stacked, s = pair

    def edited(model, site):
        return jax.jit(lambda v, x: iv.intervene(model, v, {site: iv.zero(head=2)})(x))

    e0 = edited(flat, "blocks_1/attn/z")(v, IDS)
    e1 = edited(stacked, "blocks/attn/z[1]")(s, IDS)
    assert float(jnp.abs(e0 - jax.jit(flat.apply)(v, IDS)).max()) > 1e-2  # the edit acts
    np.testing.assert_allclose(e1, e0, rtol=1e-5, atol=1e-4)

    def grid(names):
        return iv.site_grid(names, [(-2, 4)], ("layer", "head"))

    g0 = grid([f"blocks_{i}/attn/z" for i in range(3)])
    g1 = grid([stacked_site(f"blocks_{i}/attn/z") for i in range(3)])
    for f in (iv.patch_sweep, iv.attribution_patch):
        r0 = f(flat, v, IDS, CORRUPTED, g0, _metric)
        r1 = f(stacked, s, IDS, CORRUPTED, g1, _metric)
        assert float(jnp.abs(r0.normalized).max()) > 0.05
        np.testing.assert_allclose(r1.normalized, r0.normalized, rtol=1e-5, atol=1e-4)
    # the residual stream per (layer, position)
    p0 = iv.site_grid([f"blocks_{i}" for i in range(3)], [(-2, 6)], ("layer", "position"))
    p1 = iv.site_grid([f"blocks/out[{i}]" for i in range(3)], [(-2, 6)], ("layer", "position"))
    r0 = iv.patch_sweep(flat, v, IDS, CORRUPTED, p0, _metric)
    r1 = iv.patch_sweep(stacked, s, IDS, CORRUPTED, p1, _metric)
    np.testing.assert_allclose(r1.normalized, r0.normalized, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(p1.unflatten(r1.normalized)[-1, -1], 1.0, atol=1e-4)


def test_generate_with_cache_and_left_padding(pair):
    flat, v, stacked, s = pair
    prompt = jnp.array([[0, 0, 5, 9, 2], [4, 8, 1, 6, 2]])
    mask = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    t0 = generate(flat, v, prompt, 5, attention_mask=mask)
    t1 = generate(stacked, s, prompt, 5, attention_mask=mask)
    np.testing.assert_array_equal(t1, t0)
    # the padded row continues as if alone
    np.testing.assert_array_equal(t1[0], generate(stacked, s, prompt[:1, 2:], 5)[0])


def test_lens_and_layout_errors(pair):
    flat, v, stacked, s = pair
    assert default_sites(stacked)[1:] == ("blocks/out[0]", "blocks/out[1]", "blocks/out[2]")
    (lens0, out0), (lens1, out1) = logit_lens(flat, v, IDS), logit_lens(stacked, s, IDS)
    assert lens1.shape == (4, 2, 6, 64)
    np.testing.assert_allclose(lens1, lens0, atol=1e-4)
    np.testing.assert_allclose(out1, out0, atol=1e-4)
    with pytest.raises(KeyError, match=r"layer 1 is 'blocks/attn/z\[1\]'"):
        iv.intervene(stacked, s, {"blocks_1/attn/z": iv.zero(head=0)})(IDS)
    with pytest.raises(KeyError, match=r"layer 2 is index 2 of 'blocks/out'"):
        capture(stacked, s, select="blocks_2")(IDS)
    with pytest.raises(KeyError, match=r"use 'blocks/attn/probs'"):
        attention_weights(stacked, s, weights_at="blocks_*/attn/probs")(IDS)
    with pytest.raises(ValueError, match="scan_layers=True.*unstack_layers"):
        rewired_forward(stacked, s, decoder_layout(CFG), IDS)
    with pytest.raises(ValueError, match="layout .*'blocks'"):
        stacked.apply(s, IDS, 0, True, mutable="cache")
    mixed = DecoderConfig(n_layers=3, sliding_window=4, local_layers=(0, 2))
    with pytest.raises(ValueError, match=r"scan_layers: .*sliding-window layers \[0, 2\]"):
        Decoder(mixed, scan_layers=True).init(jax.random.key(0), IDS)
