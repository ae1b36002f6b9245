"""Patch sweeps and attribution patching on the offset-3 transformer (known mechanism)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import interventions as iv
from jaxinterp.capture import capture


def offset_attention(model, variables, tokens, offset):
    """Mean attention weight on the key ``offset`` positions back, per ``[layer, head]``.

    Computed from captured queries and keys (``softmax(q·k/√d)`` with the causal mask), so
    it does not depend on any attention-extraction helper.
    """
    cfg = model.cfg
    sel = [f"block_{i}/attn/{n}" for i in range(cfg.n_layers) for n in ("query", "key")]
    _, acts = capture(model, variables, select=sel)(tokens)
    seq = tokens.shape[1]
    causal = jnp.tril(jnp.ones((seq, seq), bool))
    out = []
    for i in range(cfg.n_layers):
        q, k = acts[f"block_{i}/attn/query"], acts[f"block_{i}/attn/key"]
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
        w = jax.nn.softmax(jnp.where(causal, s, -jnp.inf), axis=-1)
        out.append(jnp.diagonal(w, -offset, axis1=-2, axis2=-1).mean((0, 2)))
    return jnp.stack(out)


@pytest.fixture(scope="module")
def task(offset_tf):
    return iv.offset_patching_task(jax.random.key(0), 32, offset_tf.model.cfg, offset=3)


@pytest.fixture(scope="module")
def head_result(offset_tf, task):
    sites = iv.head_sites(2, 4)
    f = jax.jit(
        lambda t: iv.patch_sweep(
            offset_tf.model, offset_tf.variables, t.clean, t.corrupted, sites, t.metric
        )
    )
    return sites, f(task)


def _manual_patch(model, variables, task, path, at):
    _, src = iv.capture_sites(model, variables, [path])(task.clean)
    edit = iv.replace(src[path], at=at)
    return task.metric(iv.intervene(model, variables, {path: edit})(task.corrupted))


def test_sites_layout():
    s = iv.head_position_sites(2, 4, 16)
    assert s.layer.shape == (128,) and s.index.shape == (128, 2) and s.grid == (2, 4, 16)
    np.testing.assert_array_equal(s.unflatten(s.layer)[:, 0, 0], [0, 1])
    np.testing.assert_array_equal(s.unflatten(s.index[:, 0])[1, :, 5], [0, 1, 2, 3])
    np.testing.assert_array_equal(s.unflatten(s.index[:, 1])[1, 2], np.arange(16))


def test_head_sweep_matches_manual_patching(offset_tf, task, head_result):
    sites, res = head_result
    ref_clean = task.metric(offset_tf.model.apply(offset_tf.variables, task.clean))
    ref_corr = task.metric(offset_tf.model.apply(offset_tf.variables, task.corrupted))
    np.testing.assert_allclose(res.clean, ref_clean, rtol=1e-5)
    np.testing.assert_allclose(res.corrupted, ref_corr, rtol=1e-5)
    manual = jax.jit(
        lambda t: jnp.stack(
            [
                _manual_patch(offset_tf.model, offset_tf.variables, t, sites.paths[li], {-2: h})
                for li, h in [(0, 2), (1, 3)]
            ]
        )
    )(task)
    np.testing.assert_allclose(res.patched[jnp.array([2, 7])], manual, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        res.normalized, (res.patched - ref_corr) / (ref_clean - ref_corr), rtol=1e-4, atol=1e-5
    )


def test_chunked_and_nnx_sweeps_equal(offset_tf, offset_nnx, task, head_result):
    sites, res = head_result
    chunked = jax.jit(
        lambda t: iv.patch_sweep(
            offset_nnx, None, t.clean, t.corrupted, sites, t.metric, chunk_size=3
        )
    )(task)
    np.testing.assert_allclose(chunked.patched, res.patched, rtol=1e-4, atol=1e-4)


def test_ground_truth_mechanism_heads(offset_tf, task, head_result):
    """Heads that attend to offset 3 are the ones whose patching restores the answer."""
    sites, res = head_result
    effect = np.asarray(sites.unflatten(res.normalized))
    attn = np.asarray(offset_attention(offset_tf.model, offset_tf.variables, task.clean, 3))
    mech = attn > 0.5
    assert mech.any() and not mech.all()
    # the mechanism heads are exactly the top-ranked patching sites
    k = int(mech.sum())
    top = np.zeros_like(mech)
    top.flat[np.argsort(-effect.ravel())[:k]] = True
    np.testing.assert_array_equal(top, mech)
    assert effect[mech].min() > 0.1 and np.abs(effect[~mech]).max() < 0.1
    assert np.unravel_index(effect.argmax(), effect.shape) in set(map(tuple, np.argwhere(mech)))
    # patched together, only at each pair's read-out position, they restore the behaviour
    _, src = iv.capture_sites(offset_tf.model, offset_tf.variables, sites.paths)(task.clean)
    pos_mask = (np.arange(16)[None, :] == np.asarray(task.position)[:, None])[:, :, None, None]
    edits = {
        sites.paths[layer]: iv.replace(
            src[sites.paths[layer]], where=pos_mask & mech[layer][None, None, :, None]
        )
        for layer in range(2)
        if mech[layer].any()
    }
    out = jax.jit(iv.intervene(offset_tf.model, offset_tf.variables, edits))(task.corrupted)
    restored = float(iv.normalize(task.metric(out), res.clean, res.corrupted))
    assert restored >= 0.8, restored


def test_position_sweep_localizes_read_out(offset_tf):
    cfg = offset_tf.model.cfg
    fixed = iv.offset_patching_task(jax.random.key(1), 16, cfg, 3, position=10)
    sites = iv.position_sites(2, 16)
    res = jax.jit(
        lambda t: iv.patch_sweep(
            offset_tf.model, offset_tf.variables, t.clean, t.corrupted, sites, t.metric
        )
    )(fixed)
    eff = np.asarray(sites.unflatten(res.normalized))
    np.testing.assert_allclose(eff[:, 10], 1.0, atol=1e-3)  # whole residual at read-out
    assert np.abs(np.delete(eff, 10, axis=1)).max() < 0.05


def test_attribution_equals_directional_derivative(offset_tf, task):
    """Attribution = d/dε metric(corrupted with site ← corrupted + ε (clean − corrupted)) at 0."""
    sites = iv.head_position_sites(2, 4, 16)
    res = jax.jit(
        lambda t: iv.attribution_patch(
            offset_tf.model, offset_tf.variables, t.clean, t.corrupted, sites, t.metric
        )
    )(task)
    model, variables = offset_tf.model, offset_tf.variables
    picks = [(0, 2, 9), (1, 0, 12), (0, 1, 4)]

    @jax.jit
    def derivatives(t):
        _, c = iv.capture_sites(model, variables, sites.paths)(t.clean)
        _, x = iv.capture_sites(model, variables, sites.paths)(t.corrupted)
        out = []
        for layer, head, pos in picks:
            p = sites.paths[layer]
            mask = iv.selection_mask(c[p].shape, at={-3: pos, -2: head})

            def g(eps, p=p, mask=mask):
                edit = lambda a: a + eps * jnp.where(mask, c[p] - x[p], 0.0)
                return t.metric(iv.intervene(model, variables, {p: edit})(t.corrupted))

            out.append(jax.jvp(g, (0.0,), (1.0,))[1])
        return jnp.stack(out)

    idx = [layer * 64 + head * 16 + pos for layer, head, pos in picks]
    np.testing.assert_allclose(
        res.patched[jnp.array(idx)] - res.corrupted, derivatives(task), rtol=1e-3, atol=1e-5
    )


def test_attribution_ranks_sites_like_patching(offset_tf, task, head_result):
    """Spearman(attribution, patching) over all (layer × head) sites; observed 1.0."""
    sites, res = head_result
    est = jax.jit(
        lambda t: iv.attribution_patch(
            offset_tf.model, offset_tf.variables, t.clean, t.corrupted, sites, t.metric
        )
    )(task)
    np.testing.assert_allclose(est.clean, res.clean, rtol=1e-5)
    np.testing.assert_allclose(est.corrupted, res.corrupted, rtol=1e-5)
    rho = float(iv.spearman(res.normalized, est.normalized))
    assert rho > 0.9, rho
    # first order underestimates here (saturating softmax / LayerNorm) but keeps the sign
    assert np.all(np.sign(est.normalized) == np.sign(res.normalized))


def test_sweep_errors(offset_tf, task):
    """Bad arguments fail at trace time with messages naming the argument."""
    m, v = offset_tf.model, offset_tf.variables

    def trace(clean, corrupted, sites, metric):
        return jax.eval_shape(lambda: iv.patch_sweep(m, v, clean, corrupted, sites, metric))

    with pytest.raises(TypeError, match="sites: expected a Sites"):
        trace(task.clean, task.corrupted, [(0, 1)], task.metric)
    with pytest.raises(ValueError, match="metric: must return a scalar"):
        trace(task.clean, task.corrupted, iv.head_sites(2, 4), lambda o: o[:, 0])
    with pytest.raises(ValueError, match="^corrupted_inputs: expected the shapes"):
        trace(task.clean, task.corrupted[:, :8], iv.head_sites(2, 4), task.metric)
    missing = r"'block_2/attn/out:input\|per_head' is not a submodule path"
    with pytest.raises(KeyError, match=missing):
        trace(task.clean, task.corrupted, iv.head_sites(6, 4), task.metric)
    with pytest.raises(ValueError, match="axes must be distinct and negative"):
        iv.site_grid(["block_0"], [(2, 4)])
