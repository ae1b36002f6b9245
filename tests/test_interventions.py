"""Edits and intervene on linen and nnx, checked against manual computations and weight edits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy.stats import spearmanr

import jaxinterp
from jaxinterp import interventions as iv
from jaxinterp.capture import capture
from jaxinterp.models import offset_batch
from jaxinterp.plotting import patching_heatmap


@pytest.fixture(scope="module")
def tokens():
    return offset_batch(jax.random.key(0), 6, 16, 16, 3).tokens


# Model outputs compared below come from the same float32 computation reached two ways (an
# edit vs an edited weight, linen vs nnx, vmap vs batch): they differ only by summation order
# in matmuls of <= 128 terms, i.e. a few ulps of |logits| <= ~20 (~1e-6 relative after two
# blocks). rtol=atol=1e-5 leaves a margin of 10x over that on any vector ISA.


def _with_param(variables, path, fn):
    params = jax.tree_util.tree_map(lambda x: x, variables["params"])
    node = params
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = fn(np.asarray(node[path[-1]]).copy())
    return {"params": params}


# ------------------------------------------------------------------------------------ edits


@pytest.mark.parametrize("use_jit", [False, True])
def test_edits_match_numpy(use_jit):
    x = jax.random.normal(jax.random.key(0), (3, 5, 4, 2))
    vals = jax.random.normal(jax.random.key(1), (3, 5, 4, 2))
    pool = jnp.clip(jax.random.normal(jax.random.key(2), (7, 5, 4, 2)), -4.0, 4.0)
    wrap = jax.jit if use_jit else (lambda f: f)
    xn, vn, pn = map(np.asarray, (x, vals, pool))

    got = wrap(iv.zero(at={-3: 1, -2: jnp.array([0, 3])}))(x)
    ref = xn.copy()
    ref[:, 1, [0, 3]] = 0.0
    np.testing.assert_array_equal(got, ref)

    got = wrap(iv.replace(vals, at={-2: 2}))(x)
    ref = xn.copy()
    ref[:, :, 2] = vn[:, :, 2]
    np.testing.assert_array_equal(got, ref)

    got = wrap(iv.mean(pool, at={-1: 1}))(x)
    ref = xn.copy()
    ref[..., 1] = pn.astype(np.float64).mean(0)[..., 1]
    # a float32 mean of 7 values is within 7 eps max|pool| of the exact (float64) mean
    np.testing.assert_allclose(got, ref, rtol=0, atol=7 * np.finfo(np.float32).eps * 4.0)
    np.testing.assert_array_equal(np.delete(np.asarray(got), 1, -1), np.delete(xn, 1, -1))

    where = np.zeros((5, 1, 1), bool)
    where[[0, 4]] = True
    got = wrap(iv.replace(vals, where=where))(x)
    np.testing.assert_array_equal(got, np.where(where, vn, xn))

    # boolean axis mask equals the index list
    a = wrap(iv.zero(at={-2: jnp.array([True, False, True, False])}))(x)
    b = wrap(iv.zero(at={-2: jnp.array([0, 2])}))(x)
    np.testing.assert_array_equal(a, b)


def test_resample_is_deterministic_and_draws_from_pool():
    x = jnp.zeros((16, 3))
    pool = jnp.arange(10.0)[:, None] * jnp.ones((1, 3))
    e1 = jax.jit(iv.resample(jax.random.key(5), pool))(x)
    e2 = iv.resample(jax.random.key(5), pool)(x)
    e3 = iv.resample(jax.random.key(6), pool)(x)
    np.testing.assert_array_equal(e1, e2)
    assert not np.array_equal(e1, e3)
    idx = np.asarray(jax.random.randint(jax.random.key(5), (16,), 0, 10))
    np.testing.assert_array_equal(e1, np.asarray(pool)[idx])


def test_edit_under_vmap_with_traced_index():
    x = jnp.ones((2, 4, 3))
    out = jax.vmap(lambda h: iv.zero(at={-2: h})(x))(jnp.arange(4))
    for h in range(4):
        ref = np.ones((2, 4, 3))
        ref[:, h] = 0
        np.testing.assert_array_equal(out[h], ref)
    # a negative traced index counts from the end, as a Python int does
    neg = jax.jit(lambda h: iv.zero(at={-2: h})(x))(jnp.int32(-1))
    np.testing.assert_array_equal(neg, iv.zero(at={-2: 3})(x))
    # a traced index outside the axis is never wrapped or clamped: the edit is all NaN ...
    for bad in (4, 7, -5):
        out = jax.jit(lambda h: iv.zero(at={-2: h})(x))(jnp.int32(bad))
        assert np.isnan(out).all(), bad
    # ... and jaxinterp.checked raises the eager message
    with pytest.raises(ValueError, match="^at: index 7 is out of range for axis -2 of size 4"):
        jaxinterp.checked(lambda h: iv.zero(at={-2: h})(x))(jnp.int32(7))
    # under vmap only the out-of-range members are poisoned
    out = jax.vmap(lambda h: iv.zero(at={-2: h})(x))(jnp.array([1, 9]))
    np.testing.assert_array_equal(out[0], iv.zero(at={-2: 1})(x))
    assert np.isnan(out[1]).all()


def test_edit_errors_are_clear():
    x = jnp.ones((2, 4, 3))
    with pytest.raises(ValueError, match="out of range for axis -2 of size 4"):
        iv.zero(at={-2: 4})(x)
    with pytest.raises(ValueError, match="axis 5 is out of range"):
        iv.zero(at={5: 0})(x)
    with pytest.raises(ValueError, match=r"values: values of shape \(2, 5, 3\)"):
        iv.replace(jnp.ones((2, 5, 3)))(x)
    with pytest.raises(ValueError, match="pool: items of shape"):
        iv.resample(jax.random.key(0), jnp.ones((3, 5, 3)))(x)
    with pytest.raises(ValueError, match="boolean mask for axis -1 must have shape"):
        iv.zero(at={-1: jnp.array([True, False])})(x)
    with pytest.raises(ValueError, match="where: mask of shape"):
        iv.zero(where=jnp.ones((5,), bool))(x)
    with pytest.raises(ValueError, match="values: expected a non-empty"):
        iv.mean(jnp.ones((0, 3)))


# -------------------------------------------------------------------------------- intervene


def test_zero_neuron_equals_zeroed_weight_row(offset_tf, tokens):
    """Zeroing MLP hidden unit n equals a forward with row n of fc_out's kernel set to 0."""
    n = 17
    f = jax.jit(
        iv.intervene(offset_tf.model, offset_tf.variables, {"block_0/mlp/act": iv.zero(at={-1: n})})
    )
    ref_vars = _with_param(
        offset_tf.variables, ("block_0", "mlp", "fc_out", "kernel"), lambda k: _zero_row(k, n)
    )
    np.testing.assert_allclose(
        f(tokens), offset_tf.model.apply(ref_vars, tokens), rtol=1e-5, atol=1e-5
    )


def _zero_row(k, n):
    k[n] = 0.0
    return k


@pytest.mark.parametrize("api", ["linen", "nnx"])
def test_zero_head_equals_zeroed_out_kernel(offset_tf, offset_nnx, tokens, api):
    """Zeroing head h's result equals a forward with the out-projection kernel[h] set to 0."""
    h = 2
    edits = {"block_1/attn/out:input": iv.zero(at={-2: h})}
    if api == "linen":
        got = jax.jit(iv.intervene(offset_tf.model, offset_tf.variables, edits))(tokens)
    else:
        got = jax.jit(iv.intervene(offset_nnx, None, edits))(tokens)
    ref_vars = _with_param(
        offset_tf.variables, ("block_1", "attn", "out", "kernel"), lambda k: _zero_row(k, h)
    )
    np.testing.assert_allclose(got, offset_tf.model.apply(ref_vars, tokens), rtol=1e-5, atol=1e-5)


def test_linen_and_nnx_interventions_agree(offset_tf, offset_nnx, tokens):
    other = offset_batch(jax.random.key(9), 6, 16, 16, 3).tokens
    sites = ["block_0/attn/out:input", "block_1", "block_1/mlp/act"]
    _, src = iv.capture_sites(offset_tf.model, offset_tf.variables, sites)(other)
    edits = {
        "block_0/attn/out:input": iv.replace(src["block_0/attn/out:input"], at={-3: 5, -2: 1}),
        "block_1/mlp/act": iv.mean(src["block_1/mlp/act"], at={-1: jnp.arange(0, 128, 3)}),
        "block_1": iv.resample(jax.random.key(3), src["block_1"], at={-2: 7}),
    }
    out_l = jax.jit(iv.intervene(offset_tf.model, offset_tf.variables, edits))(tokens)
    out_n = jax.jit(iv.intervene(offset_nnx, None, edits))(tokens)
    np.testing.assert_allclose(out_l, out_n, rtol=1e-5, atol=1e-5)
    assert not np.allclose(out_l, offset_tf.model.apply(offset_tf.variables, tokens), atol=1e-3)


def test_replace_everything_with_other_run_gives_other_output(offset_tf, tokens):
    """Patching the residual stream after the last block gives the other input's output."""
    other = offset_batch(jax.random.key(9), 6, 16, 16, 3).tokens
    _, src = iv.capture_sites(offset_tf.model, offset_tf.variables, ["block_1"])(other)
    f = iv.intervene(offset_tf.model, offset_tf.variables, {"block_1": iv.replace(src["block_1"])})
    np.testing.assert_allclose(
        jax.jit(f)(tokens), offset_tf.model.apply(offset_tf.variables, other), rtol=1e-5, atol=1e-5
    )


def test_intervene_under_vmap(offset_tf):
    toks = offset_batch(jax.random.key(4), 6, 16, 16, 3).tokens.reshape(3, 2, 16)
    f = iv.intervene(offset_tf.model, offset_tf.variables, {"block_0/mlp": iv.zero(at={-2: 4})})
    batched = jax.jit(jax.vmap(f))(toks)
    np.testing.assert_allclose(batched.reshape(6, 16, 16), f(toks.reshape(6, 16)), atol=1e-5)


def test_capture_sites_outputs_equal_capture(offset_tf, tokens):
    out, acts = jax.jit(
        iv.capture_sites(offset_tf.model, offset_tf.variables, ["block_0/attn", "block_1/mlp"])
    )(tokens)
    ref_out, ref = capture(
        offset_tf.model, offset_tf.variables, select=["block_0/attn", "block_1/mlp"]
    )(tokens)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    for k in ref:
        np.testing.assert_allclose(acts[k], ref[k], rtol=1e-5, atol=1e-5)


def test_per_head_input_reproduces_attention_output(offset_tf, tokens):
    """The recorded input of attn/out, projected by its kernel, equals the attention output."""
    _, acts = iv.capture_sites(
        offset_tf.model, offset_tf.variables, ["block_0/attn/out:input", "block_0/attn"]
    )(tokens)
    p = offset_tf.variables["params"]["block_0"]["attn"]["out"]
    heads = np.asarray(acts["block_0/attn/out:input"])
    assert heads.shape == (6, 16, 4, 16)
    ref = np.einsum("bshd,hdm->bsm", heads, np.asarray(p["kernel"])) + np.asarray(p["bias"])
    np.testing.assert_allclose(acts["block_0/attn"], ref, rtol=1e-4, atol=1e-5)


def test_intervene_errors(offset_tf, tokens):
    with pytest.raises(KeyError, match=r"'block_9/attn' matches no submodule.*block_0/attn"):
        iv.intervene(offset_tf.model, offset_tf.variables, {"block_9/attn": iv.zero()})(tokens)
    with pytest.raises(ValueError, match="returned shape"):
        iv.intervene(offset_tf.model, offset_tf.variables, {"block_0": lambda a: a[:, :3]})(tokens)
    with pytest.raises(TypeError, match="must be callable"):
        iv.intervene(offset_tf.model, offset_tf.variables, {"block_0": 3.0})(tokens)
    with pytest.raises(ValueError, match="only suffixes allowed"):
        iv.capture_sites(offset_tf.model, offset_tf.variables, ["block_0:weights"])
    with pytest.raises(KeyError, match="is not a submodule path"):
        iv.capture_sites(offset_tf.model, offset_tf.variables, ["block_7"])(tokens)


# ---------------------------------------------------------------------------------- metrics


def test_logit_diff_and_normalize_match_numpy():
    logits = jnp.clip(jax.random.normal(jax.random.key(0), (4, 6, 5)), -5.0, 5.0)
    ans, wrong, pos = jnp.array([0, 1, 2, 3]), jnp.array([4, 4, 0, 1]), jnp.array([5, 0, 2, -1])
    ln = np.asarray(logits)
    ln = ln.astype(np.float64)
    ref = np.mean([ln[b, pos[b], ans[b]] - ln[b, pos[b], wrong[b]] for b in range(4)])
    got = jax.jit(iv.logit_diff)(logits, ans, wrong, pos)
    # 4 float32 differences and their mean: error <= ~8 eps max|logits|
    np.testing.assert_allclose(got, ref, rtol=0, atol=8 * np.finfo(np.float32).eps * 5.0)
    np.testing.assert_allclose(
        jax.jit(iv.normalize)(jnp.array([1.0, 3.0, 2.5]), 3.0, 1.0), [0.0, 1.0, 0.75]
    )
    with pytest.raises(ValueError, match=r"position: expected a scalar or shape \(4,\)"):
        iv.logit_diff(logits, ans, wrong, jnp.array([1, 2]))
    with pytest.raises(TypeError, match="answer: expected integer"):
        iv.logit_diff(logits, 1.0, wrong)


def test_spearman_matches_scipy_including_ties():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    y[:10] = 0.0  # ties
    x[5:15] = 1.0
    np.testing.assert_allclose(jax.jit(iv.spearman)(x, y), spearmanr(x, y)[0], rtol=1e-5)


def test_patching_heatmap_returns_figure():
    fig = patching_heatmap(np.array([[0.1, -0.5], [0.9, 0.0]]), title="t")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["layer 0", "layer 1"]
    np.testing.assert_allclose(ax.images[0].get_clim(), (-0.9, 0.9), rtol=1e-6)
    np.testing.assert_array_equal(ax.images[0].get_array(), np.float32([[0.1, -0.5], [0.9, 0.0]]))
    with pytest.raises(ValueError, match=r"effects: expected a non-empty \[row, col\]"):
        patching_heatmap(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="row_labels: expected 2 labels"):
        patching_heatmap(np.zeros((2, 3)), row_labels=["a"])
