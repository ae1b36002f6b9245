"""capture / list_paths / apply_with_hook on linen and nnx, checked against manual forwards."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxinterp.capture import apply_with_hook, as_matcher, canonical_path, capture, list_paths
from jaxinterp.models import offset_batch


def _np_mlp_hidden(params, x):
    h = np.asarray(x)
    outs = []
    for i in range(2):
        p = params[f"dense_{i}"]
        h = np.maximum(h @ np.asarray(p["kernel"]) + np.asarray(p["bias"]), 0.0)
        outs.append(h)
    return outs


@pytest.mark.parametrize("use_jit", [False, True])
def test_capture_matches_manual_forward(mlp, digits, use_jit):
    x = jnp.asarray(digits.test.x[:7].reshape(7, -1))
    f = capture(mlp.model, mlp.variables, select="act_*")
    f = jax.jit(f) if use_jit else f
    out, acts = f(x)
    assert sorted(acts) == ["act_0", "act_1"]
    h0, h1 = _np_mlp_hidden(mlp.variables["params"], x)
    np.testing.assert_allclose(acts["act_0"], h0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(acts["act_1"], h1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out, mlp.model.apply(mlp.variables, x), rtol=1e-6)


def test_capture_under_vmap_adds_leading_axis(mlp, digits):
    x = jnp.asarray(digits.test.x[:12].reshape(3, 4, -1))
    f = capture(mlp.model, mlp.variables, select="act_1")
    out, acts = jax.jit(jax.vmap(f))(x)
    assert acts["act_1"].shape == (3, 4, 128)
    _, flat = f(x.reshape(12, -1))
    np.testing.assert_allclose(acts["act_1"].reshape(12, -1), flat["act_1"], rtol=1e-5, atol=1e-6)


def test_capture_keeps_only_selection(offset_tf):
    tokens = offset_batch(jax.random.key(0), 2, 16, 16, 3).tokens
    _, acts = capture(offset_tf.model, offset_tf.variables, select=["block_1", "embed"])(tokens)
    assert set(acts) == {"block_1", "embed"}
    assert acts["block_1"].shape == (2, 16, 64)


def test_linen_and_nnx_share_paths_and_values(offset_tf, offset_nnx):
    tokens = offset_batch(jax.random.key(1), 3, 16, 16, 3).tokens
    sel = "block_*/**"
    out_l, acts_l = jax.jit(capture(offset_tf.model, offset_tf.variables, select=sel))(tokens)
    out_n, acts_n = jax.jit(capture(offset_nnx, select=sel))(tokens)
    assert sorted(acts_l) == sorted(acts_n)
    for k in acts_l:
        np.testing.assert_allclose(acts_l[k], acts_n[k], rtol=1e-5, atol=1e-5, err_msg=k)
    np.testing.assert_allclose(out_l, out_n, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_n, offset_nnx(tokens), rtol=1e-5, atol=1e-5)


def test_nnx_model_is_left_untouched(offset_nnx):
    tokens = jnp.zeros((1, 16), jnp.int32)
    before = type(offset_nnx.block_0.attn)
    capture(offset_nnx, select="block_0/attn")(tokens)
    assert type(offset_nnx.block_0.attn) is before is nnx.MultiHeadAttention


def test_unknown_path_lists_available(mlp):
    f = capture(mlp.model, mlp.variables, select="act_9")
    with pytest.raises(KeyError, match=r"act_9.*Available.*'act_0'"):
        f(jnp.ones((1, 64)))
    with pytest.raises(KeyError, match="pattern 'conv_\\*' matches no module"):
        capture(mlp.model, mlp.variables, select=["act_0", "conv_*"])(jnp.ones((1, 64)))


def test_bad_model_and_variables():
    with pytest.raises(TypeError, match="model: expected a flax.linen.Module"):
        capture(lambda x: x, None)
    with pytest.raises(TypeError, match="variables: a linen model needs"):
        capture(nn.Dense(3), None)
    with pytest.raises(TypeError, match="variables: an nnx module"):
        capture(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), {"params": {}})


def test_repeated_calls_are_numbered():
    class Twice(nn.Module):
        @nn.compact
        def __call__(self, x):
            d = nn.Dense(2, name="d")
            return d(d(x))

    m = Twice()
    v = m.init(jax.random.key(0), jnp.ones((1, 2)))
    _, acts = capture(m, v, select="d")(jnp.ones((1, 2)))
    assert set(acts) == {"d", "d@1"}
    k, b = v["params"]["d"]["kernel"], v["params"]["d"]["bias"]
    np.testing.assert_allclose(acts["d@1"], (jnp.ones((1, 2)) @ k + b) @ k + b, rtol=1e-6)


def test_grad_through_capture_equals_analytic():
    m = nn.Dense(1, name="d")
    w = jnp.array([[1.0], [-2.0], [3.0]])
    v = {"params": {"kernel": w, "bias": jnp.zeros(1)}}

    class Wrap(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(1, name="d")(x)

    wrap = Wrap()
    g = jax.grad(
        lambda x: capture(wrap, {"params": {"d": v["params"]}}, select="d")(x)[1]["d"].sum()
    )
    np.testing.assert_allclose(g(jnp.ones((1, 3))), w.T, rtol=1e-6)
    del m


def test_list_paths_shapes(cnn):
    paths = list_paths(cnn.model, cnn.variables, jnp.zeros((2, 8, 8, 1)))
    # the call order of the CNN (models/_vision.py), which is not the sorted order
    order = ["conv_0", "act_0", "conv_1", "act_1", "dense", "act_2", "logits"]
    assert list(paths) == order != sorted(order)
    assert paths["act_0"].shape == (2, 8, 8, 8)
    assert paths["logits"].shape == (2, 10)


def test_apply_with_hook_edits_output(mlp):
    x = jnp.ones((2, 64))

    def around(path, module, call_next, args, kwargs):
        out = call_next(*args, **kwargs)
        return jnp.zeros_like(out) if path == "act_1" else out

    out = jax.jit(lambda x: apply_with_hook(mlp.model, mlp.variables, around, x))(x)
    np.testing.assert_allclose(
        out, jnp.broadcast_to(mlp.variables["params"]["logits"]["bias"], out.shape), rtol=1e-6
    )


def test_paths_and_globs():
    assert canonical_path(("blocks", 0, "attn")) == "blocks_0/attn"
    assert canonical_path(()) == ""
    m = as_matcher("block_*")
    assert m("block_1") and not m("block_1/attn")
    assert as_matcher("block_*/**")("block_1/attn/out")
    assert as_matcher("**")("a/b/c")
    assert as_matcher(["x", "y?"])("y1") and not as_matcher(["x", "y?"])("y12")
    with pytest.raises(TypeError, match="select"):
        as_matcher([1, 2])
