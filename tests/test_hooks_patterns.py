"""capture / intervene / capture_sites on models written the way other people write them.

Scanned + rematerialized linen and nnx stacks (checked against an unrolled loop over the same
stacked weights, under jit and grad), tuple outputs, modules called with keyword arguments or
with a leading non-array argument, nnx BatchNorm + Dropout state, repeated calls, methods
other than ``__call__``, and transforms values cannot leave.
"""

from __future__ import annotations

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxinterp.capture import capture, list_paths
from jaxinterp.interventions import capture_sites, intervene

L, D, B = 3, 4, 2
X = jax.random.normal(jax.random.key(1), (B, D))

# ------------------------------------------------------------------ linen nn.scan + nn.remat


class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        h = nn.Dense(D, name="mlp")(x)
        return x + jnp.tanh(h), None


class ScanStack(nn.Module):
    """One scanned, rematerialized block for all layers, as large JAX models are written."""

    remat: bool = True

    @nn.compact
    def __call__(self, x):
        stack = nn.scan(
            nn.remat(Block) if self.remat else Block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=L,
        )
        x, _ = stack(name="layers")(x, None)
        return nn.Dense(2, name="head")(x)


def _linen_stack(remat=True):
    m = ScanStack(remat=remat)
    return m, m.init(jax.random.key(0), X)


def _unrolled(kernel, bias, head_k, head_b, x, edit=None):
    """Manual loop over the stacked weights: (output, [layer] pre-activations)."""
    hs = []
    for i in range(L):
        h = x @ kernel[i] + bias[i]
        if edit is not None:
            h = edit(i, h)
        hs.append(h)
        x = x + jnp.tanh(h)
    return x @ head_k + head_b, jnp.stack(hs)


def _linen_ref(v, x, edit=None):
    p = v["params"]
    return _unrolled(
        p["layers"]["mlp"]["kernel"],
        p["layers"]["mlp"]["bias"],
        p["head"]["kernel"],
        p["head"]["bias"],
        x,
        edit,
    )


# ------------------------------------------------------------------------- nnx.scan stack


class NBlock(nnx.Module):
    def __init__(self, rngs):
        self.mlp = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, x):
        return x + jnp.tanh(self.mlp(x))


class NScanStack(nnx.Module):
    """Stacked weights from nnx.vmap, a forward pass with nnx.scan over nnx.remat."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=L)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return NBlock(rngs)

        self.layers = make(rngs)
        self.head = nnx.Linear(D, 2, rngs=rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        @nnx.remat
        def body(x, layer):
            return layer(x)

        return self.head(body(x, self.layers))


def _nnx_ref(m, x, edit=None):
    return _unrolled(
        m.layers.mlp.kernel[...],
        m.layers.mlp.bias[...],
        m.head.kernel[...],
        m.head.bias[...],
        x,
        edit,
    )


def _models():
    m, v = _linen_stack()
    m2, v2 = _linen_stack(remat=False)
    nm = NScanStack(nnx.Rngs(0))
    return [
        ("linen", m, v, lambda e=None: _linen_ref(v, X, e)),
        ("linen-scan-only", m2, v2, lambda e=None: _linen_ref(v2, X, e)),
        ("nnx", nm, None, lambda e=None: _nnx_ref(nm, X, e)),
    ]


class TestScannedStacks(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_capture_inside_scan_is_stacked_per_layer(self):
        for name, model, variables, ref in _models():
            out, acts = self.variant(capture(model, variables, select="layers/**"))(X)
            want_out, want_h = ref()
            assert list(acts) == ["layers/mlp"], name
            assert acts["layers/mlp"].shape == (L, B, D), name
            np.testing.assert_allclose(acts["layers/mlp"], want_h, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(out, want_out, rtol=1e-6, atol=1e-6)
            _, whole = self.variant(capture(model, variables, select="layers"))(X)
            layer_out = whole["layers"] if name == "nnx" else whole["layers"][0]
            assert layer_out.shape == (L, B, D)
            np.testing.assert_allclose(layer_out[0], X + jnp.tanh(want_h[0]), rtol=1e-6, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_edit_one_layer_inside_scan(self):
        for name, model, variables, ref in _models():
            f = self.variant(intervene(model, variables, {"layers/mlp[1]": jnp.zeros_like}))
            want, _ = ref(lambda i, h: jnp.zeros_like(h) if i == 1 else h)
            np.testing.assert_allclose(f(X), want, rtol=1e-6, atol=1e-6, err_msg=name)
            every = self.variant(intervene(model, variables, {"layers/mlp": lambda a: 2 * a}))
            want, _ = ref(lambda i, h: 2 * h)
            np.testing.assert_allclose(every(X), want, rtol=1e-6, atol=1e-6, err_msg=name)

    @chex.variants(with_jit=True, without_jit=True)
    def test_capture_sites_per_layer(self):
        for name, model, variables, ref in _models():
            sites = ["layers/mlp[2]", "layers/mlp", "layers/mlp:input"]
            _, acts = self.variant(capture_sites(model, variables, sites))(X)
            _, want_h = ref()
            np.testing.assert_allclose(acts["layers/mlp[2]"], want_h[2], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(acts["layers/mlp"], want_h, rtol=1e-6, atol=1e-6)
            assert acts["layers/mlp:input"].shape == (L, B, D), name
            np.testing.assert_allclose(acts["layers/mlp:input"][0], X, rtol=1e-6)


@pytest.mark.parametrize("kind", ["linen", "nnx"])
def test_grad_through_scan_capture_equals_unrolled(kind):
    _, model, variables, _ = dict((m[0], m) for m in _models())[kind]

    def via_capture(x):
        _, acts = capture(model, variables, select="layers/mlp")(x)
        return jnp.sum(acts["layers/mlp"] ** 2)

    def via_loop(x):
        ref = _linen_ref(variables, x) if kind == "linen" else _nnx_ref(model, x)
        return jnp.sum(ref[1] ** 2)

    np.testing.assert_allclose(
        jax.jit(jax.grad(via_capture))(X), jax.grad(via_loop)(X), rtol=1e-5, atol=1e-6
    )


def test_scan_step_out_of_range_and_unscanned_step():
    model, variables = _linen_stack()
    with pytest.raises(ValueError, match=r"^site: 'layers/mlp\[3\]': step 3 .*\[0, 2\]"):
        intervene(model, variables, {"layers/mlp[3]": jnp.zeros_like})(X)
    with pytest.raises(ValueError, match=r"^site: 'layers/mlp\[5\]': step 5"):
        capture_sites(model, variables, ["layers/mlp[5]"])(X)
    with pytest.raises(ValueError, match=r"^site: 'head\[0\]' names 1 scan step"):
        intervene(model, variables, {"head[0]": jnp.zeros_like})(X)


# ------------------------------------------------------------------------- tuple outputs


class CacheBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(D, name="proj")(x)
        return {"k": h * 2}, x + h  # (cache, x), as decoder layers return them


class CacheModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        cache, x = CacheBlock(name="block_0")(x)
        return nn.Dense(2, name="head")(x) + cache["k"].sum()


class TestTupleOutputs(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_capture_and_element_sites(self):
        m = CacheModel()
        v = m.init(jax.random.key(0), X)
        p = v["params"]
        h = X @ p["block_0"]["proj"]["kernel"] + p["block_0"]["proj"]["bias"]
        head = lambda x: x @ p["head"]["kernel"] + p["head"]["bias"]  # noqa: E731
        _, acts = self.variant(capture(m, v, select="block_0"))(X)
        cache, x = acts["block_0"]
        np.testing.assert_allclose(cache["k"], 2 * h, rtol=1e-6)
        np.testing.assert_allclose(x, X + h, rtol=1e-6)
        f = self.variant(intervene(m, v, {"block_0:output[1]": jnp.zeros_like}))
        np.testing.assert_allclose(f(X), head(0 * X) + (2 * h).sum(), rtol=1e-5)
        g = self.variant(intervene(m, v, {"block_0:output[0]['k']": jnp.zeros_like}))
        np.testing.assert_allclose(g(X), head(X + h), rtol=1e-5)
        whole = self.variant(intervene(m, v, {"block_0": lambda o: (o[0], 0 * o[1])}))
        np.testing.assert_allclose(whole(X), head(0 * X) + (2 * h).sum(), rtol=1e-5)
        _, got = self.variant(capture_sites(m, v, ["block_0:output[1]"]))(X)
        np.testing.assert_allclose(got["block_0:output[1]"], X + h, rtol=1e-6)

    def test_element_errors(self):
        m = CacheModel()
        v = m.init(jax.random.key(0), X)
        with pytest.raises(ValueError, match=r"^site: 'block_0:output\[2\]'.*no element \[2\]"):
            intervene(m, v, {"block_0:output[2]": jnp.zeros_like})(X)
        with pytest.raises(ValueError, match=r"^edits: the edit for 'block_0' returned"):
            intervene(m, v, {"block_0": lambda o: o[1]})(X)


# -------------------------------------------------------- keyword and non-array arguments


class Einsum(nn.Module):
    """Gemma-style: the equation string comes first, the array second."""

    @nn.compact
    def __call__(self, eqn, x):
        w = self.param("w", nn.initializers.normal(1.0), (D, D))
        return jnp.einsum(eqn, x, w)


class KwModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = Einsum(name="ein")("bd,de->be", x)
        return nn.Dense(2, name="out")(inputs=h)  # called with a keyword argument


class TestArguments(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_input_is_first_array_or_named(self):
        m = KwModel()
        v = m.init(jax.random.key(0), X)
        p = v["params"]
        out = lambda h: h @ p["out"]["kernel"] + p["out"]["bias"]  # noqa: E731
        h = X @ p["ein"]["w"]
        sites = ["ein:input", "ein:input.x", "ein:input[1]", "out:input", "out:input.inputs"]
        _, acts = self.variant(capture_sites(m, v, sites))(X)
        for s in sites[:3]:
            np.testing.assert_allclose(acts[s], X, rtol=1e-6, err_msg=s)
        for s in sites[3:]:
            np.testing.assert_allclose(acts[s], h, rtol=1e-5, err_msg=s)
        f = self.variant(intervene(m, v, {"out:input": jnp.zeros_like}))
        np.testing.assert_allclose(f(X), out(0 * h), rtol=1e-6)
        g = self.variant(intervene(m, v, {"ein:input.x": lambda x: 2 * x}))
        np.testing.assert_allclose(g(X), out(2 * h), rtol=1e-5)

    def test_missing_argument(self):
        m = KwModel()
        v = m.init(jax.random.key(0), X)
        with pytest.raises(ValueError, match=r"^site: 'ein:input.y': no argument named 'y'"):
            capture_sites(m, v, ["ein:input.y"])(X)
        with pytest.raises(ValueError, match=r"^site: 'ein:input\[4\]': expected a positional"):
            capture_sites(m, v, ["ein:input[4]"])(X)


# --------------------------------------- nnx state changes as the model's own call changes it


class BNDrop(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(D, D, rngs=rngs)
        self.bn = nnx.BatchNorm(D, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.bn(self.lin(x)))


def _state_leaves(model):
    return [
        np.asarray(jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x)
        for x in jax.tree.leaves(nnx.state(model))
    ]


@pytest.mark.parametrize("use_jit", [False, True])
def test_nnx_batchnorm_dropout_state_changes_as_its_own_call(use_jit):
    """BatchNorm statistics and Dropout RNG counts change exactly as the model's own call
    changes them (eagerly, or through nnx.jit); ``update_model=False`` leaves the model as it
    is, and the result is the same step run on a copy."""
    from jaxinterp.capture import run_with_hook

    model = BNDrop(nnx.Rngs(0))  # train mode: BatchNorm updates stats, Dropout draws masks
    before = _state_leaves(model)
    reference = nnx.clone(model)
    f = capture(model, select="bn")
    if use_jit:
        out, acts = nnx.jit(lambda m, x: capture(m, select="bn")(x))(model, X)
    else:
        out, acts = f(X)
    want = reference(X)  # the same step run by the model itself
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    for a, b in zip(_state_leaves(model), _state_leaves(reference)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(before, _state_leaves(model)))
    lin = X @ model.lin.kernel[...] + model.lin.bias[...]
    mu, var = lin.mean(0), lin.var(0)
    bn = (lin - mu) / jnp.sqrt(var + 1e-5) * model.bn.scale[...] + model.bn.bias[...]
    np.testing.assert_allclose(acts["bn"], bn, rtol=1e-4, atol=1e-5)
    # update_model=False: a pure function of inputs and state, the model untouched
    now = _state_leaves(model)
    around = lambda p, m, nxt, a, k: nxt(*a, **k)  # noqa: E731
    o1, _ = run_with_hook(model, None, around, X, update_model=False)
    o2, _ = run_with_hook(model, None, around, X, update_model=False)
    np.testing.assert_array_equal(o1, o2)
    for a, b in zip(now, _state_leaves(model)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------- repeated calls


class Thrice(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = nn.Dense(D, name="mlp")
        return d(jnp.tanh(d(jnp.tanh(d(x)))))


def test_repeated_calls_one_rule():
    m = Thrice()
    v = m.init(jax.random.key(0), X)
    k, b = v["params"]["mlp"]["kernel"], v["params"]["mlp"]["bias"]
    h0 = X @ k + b
    h1 = jnp.tanh(h0) @ k + b
    h2 = jnp.tanh(h1) @ k + b
    _, cap = capture(m, v, select="mlp")(X)
    assert list(cap) == ["mlp", "mlp@1", "mlp@2"]
    _, sites = jax.jit(capture_sites(m, v, ["mlp", "mlp@1", "mlp@2"]))(X)
    for key, want in zip(["mlp", "mlp@1", "mlp@2"], [h0, h1, h2]):
        np.testing.assert_allclose(cap[key], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(sites[key], want, rtol=1e-5, atol=1e-6)
    _, only = capture(m, v, select="mlp@2")(X)
    assert list(only) == ["mlp@2"]
    out = intervene(m, v, {"mlp@1": jnp.zeros_like})(X)
    np.testing.assert_allclose(out, jnp.tanh(0 * h1) @ k + b, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="^edits: site 'mlp' names a module that runs several"):
        intervene(m, v, {"mlp": jnp.zeros_like})(X)
    first = intervene(m, v, {"mlp@0": jnp.zeros_like})(X)
    want = jnp.tanh(jnp.tanh(0 * h0) @ k + b) @ k + b
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-6)
    every = intervene(m, v, {"mlp@*": jnp.zeros_like})(X)
    np.testing.assert_allclose(every, 0 * h2, atol=0)
    with pytest.raises(KeyError, match=r"^\"sites: 'mlp@3' is not a submodule path"):
        capture_sites(m, v, ["mlp@3"])(X)


class Order(nn.Module):
    @nn.compact
    def __call__(self, x):
        # defined z, a, m but called m, z, a: call order is neither sorted nor definition order
        z, a, mid = nn.Dense(D, name="z"), nn.Dense(D, name="a"), nn.Dense(D, name="m")
        return a(z(mid(x)))


def test_list_paths_in_call_order_and_errors_propagate():
    m = Order()
    v = m.init(jax.random.key(0), X)
    calls = []

    def spy(next_fun, args, kwargs, context):
        if context.module.path:
            calls.append("/".join(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(spy):
        m.apply(v, X)
    paths = list_paths(m, v, X)
    assert list(paths) == calls == ["m", "z", "a"]
    assert paths["a"].shape == (B, D)

    class Raises(nn.Module):
        @nn.compact
        def __call__(self, x):
            return {"a": nn.Dense(2)(x)}["missing"]

    r = Raises()
    rv = {"params": {"Dense_0": {"kernel": jnp.ones((D, 2)), "bias": jnp.zeros(2)}}}
    with pytest.raises(KeyError, match="missing"):
        list_paths(r, rv, X)


# ------------------------------------------------------------- methods other than __call__


class Embedder(nnx.Module):
    def __init__(self, rngs):
        self.table = nnx.Param(jax.random.normal(rngs.params(), (5, D)))

    def encode(self, ids):
        return self.table[...][ids]

    def decode(self, x):
        return x @ self.table[...].T


class Tied(nnx.Module):
    def __init__(self, rngs):
        self.embedder = Embedder(rngs)
        self.mlp = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, ids):
        return self.embedder.decode(self.mlp(self.embedder.encode(ids)))

    def features(self, ids):
        return self.mlp(self.embedder.encode(ids))


def test_methods_hooked_and_method_callable_on_nnx():
    model = Tied(nnx.Rngs(0))
    model.mlp.bias[...] = jnp.arange(1.0, D + 1.0)
    ids = jnp.array([[0, 3, 4]])
    table = model.embedder.table[...]
    _, acts = jax.jit(capture(model, select="embedder.*", methods=("encode", "decode")))(ids)
    assert sorted(acts) == ["embedder.decode", "embedder.encode"]
    np.testing.assert_allclose(acts["embedder.encode"], table[ids], rtol=1e-6)
    with pytest.raises(KeyError, match="embedder.encode"):  # hooked only where asked
        intervene(model, None, {"embedder.encode": jnp.zeros_like})(ids)
    f = intervene(model, None, {"embedder.encode": jnp.zeros_like}, methods=["encode"])
    want = jnp.broadcast_to(model.mlp.bias[...] @ table.T, (1, 3, 5))
    np.testing.assert_allclose(f(ids), want, rtol=1e-5, atol=1e-6)
    _, got = capture_sites(model, None, ["embedder.decode:input"], methods=["decode"])(ids)
    np.testing.assert_allclose(got["embedder.decode:input"], model.mlp(table[ids]), rtol=1e-5)
    feats, _ = capture(model, select="mlp", method=Tied.features)(ids)
    np.testing.assert_allclose(feats, model.features(ids), rtol=1e-6)
    feats2, _ = capture(model, select="mlp", method=lambda m, i: m.features(i))(ids)
    np.testing.assert_allclose(feats2, feats, rtol=1e-6)


# ------------------------------------------------------ transforms values cannot leave


class Branchy(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = nn.Dense(D, name="inner")
        if self.is_initializing():
            d(x)
        return nn.cond(x.sum() > -1e9, lambda m, x: m(x), lambda m, x: x, d, x)


def test_site_inside_cond_is_named_and_edits_still_apply():
    m = Branchy()
    v = m.init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"^select: 'inner' picks 'inner'.*lax.cond"):
        capture(m, v, select="inner")(X)
    with pytest.raises(ValueError, match=r"^sites: 'inner' is called inside"):
        capture_sites(m, v, ["inner"])(X)
    out = jax.jit(intervene(m, v, {"inner": lambda a: 0 * a + 1.0}))(X)
    np.testing.assert_array_equal(out, jnp.ones((B, D)))


# ------------------------------------------- nnx decorators applied at class definition


class DocsMLP(nnx.Module):
    """The Flax docs' scan-over-layers pattern: nnx.scan(nnx.remat(__call__)) on the class."""

    def __init__(self, rngs):
        self.lin = nnx.Linear(D, D, rngs=rngs)

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    @nnx.remat
    def __call__(self, x):
        return x + jnp.tanh(self.lin(x))


class DocsModel(nnx.Module):
    def __init__(self, rngs):
        @nnx.split_rngs(splits=L)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make(rngs):
            return DocsMLP(rngs)

        self.mlp = make(rngs)

    def __call__(self, x):
        return self.mlp(x)


def test_definition_time_remat_edits_apply_and_records_are_refused():
    model = DocsModel(nnx.Rngs(0))
    k, b = model.mlp.lin.kernel[...], model.mlp.lin.bias[...]

    def ref(edit_layer):
        x = X
        for i in range(L):
            h = x @ k[i] + b[i]
            x = x + jnp.tanh(0 * h if i == edit_layer else h)
        return x

    for _ in range(2):  # the second run must not reuse a cached trace without its hooks
        out = jax.jit(intervene(model, None, {"mlp/lin[1]": jnp.zeros_like}))(X)
        np.testing.assert_allclose(out, ref(1), rtol=1e-6, atol=1e-6)
    out, acts = capture(model, select="mlp")(X)
    np.testing.assert_allclose(acts["mlp"], ref(-1), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"^select: 'mlp/lin' picks 'mlp/lin'.*nnx.remat"):
        capture(model, select="mlp/lin")(X)


# ---------------------------------------------------- linen methods, vmap in the forward


class LEmbed(nn.Module):
    def setup(self):
        self.table = self.param("table", nn.initializers.normal(1.0), (5, D))

    def encode(self, ids):
        return self.table[ids]

    def decode(self, x):
        return x @ self.table.T


class LTied(nn.Module):
    def setup(self):
        self.embedder = LEmbed()
        self.mlp = nn.Dense(D, bias_init=nn.initializers.ones)

    def __call__(self, ids):
        return self.embedder.decode(self.mlp(self.embedder.encode(ids)))


def test_linen_methods_hooked_where_asked():
    m = LTied()
    ids = jnp.array([[0, 3, 4]])
    v = m.init(jax.random.key(0), ids)
    table = v["params"]["embedder"]["table"]
    _, acts = jax.jit(capture(m, v, select="embedder.*", methods=["encode", "decode"]))(ids)
    assert sorted(acts) == ["embedder.decode", "embedder.encode"]
    np.testing.assert_allclose(acts["embedder.encode"], table[ids], rtol=1e-6)
    f = intervene(m, v, {"embedder.encode": jnp.zeros_like}, methods=["encode"])
    want = jnp.broadcast_to(v["params"]["mlp"]["bias"] @ table.T, (1, 3, 5))
    np.testing.assert_allclose(f(ids), want, rtol=1e-5, atol=1e-6)


class Ensemble(nnx.Module):
    def __init__(self, rngs):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make(rngs):
            return nnx.Linear(D, 2, rngs=rngs)

        self.heads = make(rngs)

    def __call__(self, x):
        @nnx.vmap(in_axes=(0, None), out_axes=0)
        def run(head, x):
            return head(x)

        return run(self.heads, x).mean(0)


def test_nnx_vmap_in_forward_records_with_mapped_axis():
    model = Ensemble(nnx.Rngs(0))
    k, b = model.heads.kernel[...], model.heads.bias[...]
    want = jnp.einsum("bd,hde->hbe", X, k) + b[:, None]
    _, acts = jax.jit(capture(model, select="heads"))(X)
    np.testing.assert_allclose(acts["heads"], want, rtol=1e-5, atol=1e-6)
    out = intervene(model, None, {"heads": lambda a: 2 * a})(X)
    np.testing.assert_allclose(out, 2 * want.mean(0), rtol=1e-5, atol=1e-6)


def test_patch_sweep_over_scanned_layers_matches_unrolled_patching():
    from jaxinterp.interventions import patch_sweep, site_grid

    model, variables = _linen_stack()
    clean, corrupt = X, jax.random.normal(jax.random.key(7), (B, D))
    sites = site_grid([f"layers/mlp[{i}]" for i in range(L)], [(-1, D)], ("layer", "neuron"))
    metric = lambda out: out[:, 0].sum()  # noqa: E731
    res = patch_sweep(model, variables, clean, corrupt, sites, metric)
    _, clean_h = _linen_ref(variables, clean)
    want = np.zeros((L, D))
    for i in range(L):
        for j in range(D):

            def edit(layer, h, i=i, j=j):
                return h.at[:, j].set(clean_h[i][:, j]) if layer == i else h

            want[i, j] = metric(_linen_ref(variables, corrupt, edit)[0])
    np.testing.assert_allclose(sites.unflatten(res.patched), want, rtol=1e-5, atol=1e-5)


@flax.struct.dataclass
class Output:
    hidden: jax.Array
    logits: jax.Array


class DataclassBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(D, name="proj")(x)
        return Output(hidden=h, logits=h.sum(-1))


class DataclassModel(nn.Module):
    @nn.compact
    def __call__(self, x):
        o = DataclassBlock(name="block")(x)
        return o.hidden * 2 + o.logits[:, None]


def test_dataclass_output_attribute_site():
    m = DataclassModel()
    v = m.init(jax.random.key(0), X)
    p = v["params"]["block"]["proj"]
    h = X @ p["kernel"] + p["bias"]
    _, acts = jax.jit(capture_sites(m, v, ["block:output.hidden", "block"]))(X)
    np.testing.assert_allclose(acts["block:output.hidden"], h, rtol=1e-6)
    assert isinstance(acts["block"], Output)
    out = jax.jit(intervene(m, v, {"block:output.logits": jnp.zeros_like}))(X)
    np.testing.assert_allclose(out, 2 * h, rtol=1e-6)


def test_attribution_patch_over_scanned_layers_matches_unrolled_gradient():
    from jaxinterp.interventions import attribution_patch, site_grid

    model, variables = _linen_stack()
    clean, corrupt = X, jax.random.normal(jax.random.key(7), (B, D))
    sites = site_grid([f"layers/mlp[{i}]" for i in range(L)], [(-1, D)], ("layer", "neuron"))
    metric = lambda out: out[:, 0].sum()  # noqa: E731
    res = attribution_patch(model, variables, clean, corrupt, sites, metric)
    _, clean_h = _linen_ref(variables, clean)
    _, corr_h = _linen_ref(variables, corrupt)

    def patched(deltas):  # deltas [layer, batch, d] added to the corrupted pre-activations
        return metric(_linen_ref(variables, corrupt, lambda i, h: h + deltas[i])[0])

    grads = jax.grad(patched)(jnp.zeros_like(corr_h))
    effect = (grads * (clean_h - corr_h)).sum(1)  # [layer, neuron]
    want = patched(jnp.zeros_like(corr_h)) + effect
    np.testing.assert_allclose(sites.unflatten(res.patched), want, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- nn.jit-decorated methods


class JitInner(nn.Module):
    @functools.partial(nn.jit, static_argnames=("self",))
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, name="d")(x)


class JitOuter(nn.Module):
    """``__call__`` under ``nn.jit``, as Google's ``gemma`` package writes its Transformer."""

    @functools.partial(nn.jit, static_argnames=("self",))
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="out")(JitInner(name="inner")(x))


def test_nn_jit_methods_hooked_after_a_plain_forward():
    m = JitOuter()
    v = m.init(jax.random.key(0), X)
    want = m.apply(v, X)  # fills nn.jit's trace cache: a cached trace would skip the hooks
    p = v["params"]
    hidden = X @ p["inner"]["d"]["kernel"] + p["inner"]["d"]["bias"]
    for f in (capture(m, v), jax.jit(capture(m, v))):
        out, acts = f(X)
        assert list(acts) == ["inner", "inner/d", "out"]
        np.testing.assert_allclose(acts["inner/d"], hidden, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    edited = intervene(m, v, {"inner": lambda a: 0 * a})(X)
    np.testing.assert_allclose(edited, jnp.broadcast_to(p["out"]["bias"], want.shape))
    assert list(list_paths(m, v, X)) == ["inner", "inner/d", "out"]
    np.testing.assert_allclose(m.apply(v, X), want)  # nn.jit works as before afterwards


# ------------------------------------------------------------------------------ nnx.bridge


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="d2")(nn.relu(nn.Dense(3, name="d1")(x)))


class NnxOverLinen(nnx.Module):
    """A linen model inside an nnx one (``nnx.bridge.ToNNX``)."""

    def __init__(self, rngs):
        self.inner = nnx.bridge.ToNNX(LinenMLP(), rngs=rngs)
        nnx.bridge.lazy_init(self.inner, X)
        self.out = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.inner(x))


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(D, 3, rngs=rngs)

    def __call__(self, x):
        return self.a(x)


class LinenOverNnx(nn.Module):
    """An nnx model inside a linen one (``nnx.bridge.ToLinen``)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="out")(nnx.bridge.ToLinen(NnxMLP, name="inner")(x))


def test_bridge_to_nnx_linen_submodules_are_named_under_the_wrapper():
    m = NnxOverLinen(nnx.Rngs(0))
    d1 = m.inner.d1
    want = X @ d1["kernel"][...] + d1["bias"][...]
    for f in (capture(m), jax.jit(capture(m))):
        out, acts = f(X)
        assert list(acts) == ["inner", "inner/d1", "inner/d2", "out"]
        np.testing.assert_allclose(acts["inner/d1"], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out, m(X), rtol=1e-6, atol=1e-6)
    edited = intervene(m, None, {"inner/d2": lambda a: 0 * a})(X)
    np.testing.assert_allclose(edited, jnp.broadcast_to(m.out.bias[...], edited.shape))


def test_bridge_to_linen_names_the_pattern_and_the_route():
    m = LinenOverNnx()
    v = m.init(jax.random.key(0), X)
    _, acts = capture(m, v)(X)
    assert list(acts) == ["inner", "out"]
    with pytest.raises(KeyError, match="^.select: path 'inner/a'.*nnx.bridge.ToLinen.*capture"):
        capture(m, v, select="inner/a")(X)
