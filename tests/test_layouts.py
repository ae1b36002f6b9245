"""Layouts other people's models use: merged heads, shared modules, tuple outputs, eval mode.

Each check compares against something independent of jaxinterp's edit machinery: the model
with the matching weights zeroed (Hugging Face Flax GPT-2's ``c_proj`` rows of head ``h``),
the model's own outputs on another input (``output_hidden_states``), or a hand-written
slice assignment. The silent wrong answers these layouts used to give are rows in
``tests/test_bad_inputs_interv.py`` and ``tests/test_bad_inputs_probes.py`` that now raise.
"""

from __future__ import annotations

import functools
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxinterp import interventions as iv
from jaxinterp.probes import layer_features

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import transformers
    from transformers import FlaxGPT2LMHeadModel, FlaxResNetModel, GPT2Config, ResNetConfig

transformers.logging.set_verbosity_error()

EPS = float(jnp.finfo(jnp.float32).eps)
N_HEADS, D_HEAD = 4, 4


def _tol(ref) -> float:
    """64 ulps of the largest entry: the two sides run the same float32 ops, but XLA may fuse
    the jitted and the vmapped versions differently (a few ulps per op, ~30 ops per layer)."""
    return 64 * EPS * max(1.0, float(jnp.abs(ref).max()))


@functools.cache
def _gpt2():
    cfg = GPT2Config(
        vocab_size=64, n_embd=N_HEADS * D_HEAD, n_layer=2, n_head=N_HEADS, n_positions=16
    )
    m = FlaxGPT2LMHeadModel(cfg, seed=0)
    ids = jax.random.randint(jax.random.key(1), (3, 7), 0, 64)
    ids_b = jax.random.randint(jax.random.key(2), (3, 7), 0, 64)
    mask = jnp.ones_like(ids)
    pos = jnp.broadcast_to(jnp.arange(7), ids.shape)
    return m, {"params": m.params}, (ids, mask, pos), (ids_b, mask, pos)


def _c_proj(layer: int) -> str:
    return f"transformer/h/{layer}/attn/c_proj"


# ------------------------------------------------------------------------ merged heads


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("route", ["edit", "site"])
def test_merged_head_ablation_equals_zeroed_c_proj_rows(jit, route):
    # HF GPT-2 merges the heads before c_proj: its input is [batch, seq, head·d_head], and
    # c_proj's kernel is stored [out, in], so head h owns the columns h·d_head:(h+1)·d_head.
    m, v, args, _ = _gpt2()
    layer, h = 1, 2
    if route == "edit":
        edits = {f"{_c_proj(layer)}:input": iv.zero(head=h, heads=N_HEADS)}
    else:
        edits = {f"{_c_proj(layer)}:input|heads={N_HEADS}": iv.zero(head=h)}
    f = iv.intervene(m.module, v, edits)
    got = (jax.jit(f) if jit else f)(*args).logits
    params = jax.tree.map(lambda x: x, m.params)
    k = params["transformer"]["h"][str(layer)]["attn"]["c_proj"]["kernel"]
    params["transformer"]["h"][str(layer)]["attn"]["c_proj"]["kernel"] = k.at[
        :, h * D_HEAD : (h + 1) * D_HEAD
    ].set(0.0)
    want = m.module.apply({"params": params}, *args).logits
    plain = m.module.apply(v, *args).logits
    assert float(jnp.abs(want - plain).max()) > 1e-3  # the head matters
    np.testing.assert_allclose(got, want, rtol=0, atol=_tol(want))


def test_merged_head_sweep_equals_hand_patching():
    m, v, clean, corrupted = _gpt2()
    sites = iv.head_sites(2, N_HEADS, template=_c_proj("{layer}") + ":input", merged=True)
    assert sites.paths[0] == f"{_c_proj(0)}:input|heads={N_HEADS}"

    def metric(out):
        return out.logits[:, -1, 3].mean() - out.logits[:, -1, 5].mean()

    res = jax.jit(lambda c, x: iv.patch_sweep(m.module, v, c, x, sites, metric, chunk_size=3))(
        clean, corrupted
    )
    got = sites.unflatten(res.patched)  # [layer, head]
    want = np.zeros((2, N_HEADS))
    for layer in range(2):
        _, src = iv.capture_sites(m.module, v, [f"{_c_proj(layer)}:input"])(*clean)
        src = src[f"{_c_proj(layer)}:input"]  # [batch, seq, head·d_head]
        for h in range(N_HEADS):
            cols = slice(h * D_HEAD, (h + 1) * D_HEAD)

            def put(a, src=src, cols=cols):
                return a.at[..., cols].set(src[..., cols])

            out = iv.intervene(m.module, v, {f"{_c_proj(layer)}:input": put})(*corrupted)
            want[layer, h] = float(metric(out))
    spread = float(np.abs(want - float(res.corrupted)).max())
    assert spread > 1e-4  # the heads move the metric
    np.testing.assert_allclose(got, want, rtol=0, atol=64 * EPS * max(1.0, np.abs(want).max()))


def _clean_input(m, v, inputs, layer):
    key = f"{_c_proj(layer)}:input"
    return iv.capture_sites(m.module, v, [key])(*inputs)[1][key]


def test_merged_sites_record_the_head_view():
    m, v, args, _ = _gpt2()
    key = f"{_c_proj(0)}:input"
    _, acts = iv.capture_sites(m.module, v, [key, f"{key}|heads={N_HEADS}"])(*args)
    merged, view = acts[key], acts[f"{key}|heads={N_HEADS}"]
    assert merged.shape == (3, 7, N_HEADS * D_HEAD) and view.shape == (3, 7, N_HEADS, D_HEAD)
    np.testing.assert_array_equal(view[:, :, 1], merged[:, :, D_HEAD : 2 * D_HEAD])


def test_attribution_patch_on_merged_heads_equals_the_gradient_slices():
    # effect(layer, head) = sum over head h's columns of d metric / d input * (clean - corr)
    m, v, clean, corrupted = _gpt2()

    def metric(out):
        return out.logits[:, -1, 3].mean()

    heads = iv.head_sites(2, N_HEADS, template=_c_proj("{layer}") + ":input", merged=True)
    res = jax.jit(lambda c, x: iv.attribution_patch(m.module, v, c, x, heads, metric))(
        clean, corrupted
    )
    effect = heads.unflatten(res.patched - res.corrupted)
    for i in range(2):
        key = f"{_c_proj(i)}:input"
        src, cor = _clean_input(m, v, clean, i), _clean_input(m, v, corrupted, i)

        def f(delta, key=key):
            return metric(iv.intervene(m.module, v, {key: lambda a: a + delta})(*corrupted))

        g = jax.grad(f)(jnp.zeros_like(cor))
        for h in range(N_HEADS):
            cols = slice(h * D_HEAD, (h + 1) * D_HEAD)
            want = float(jnp.sum(g[..., cols] * (src - cor)[..., cols]))
            assert float(effect[i, h]) == pytest.approx(want, rel=1e-4, abs=1e-6)


# ------------------------------------------------------------------ shared modules


class Thrice(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = nn.Dense(3, name="mlp")
        return d(jnp.tanh(d(jnp.tanh(d(x)))))


class Aliased(nnx.Module):
    """One Linear reached under two attribute names: one module, two calls."""

    def __init__(self):
        self.a = nnx.Linear(3, 3, rngs=nnx.Rngs(0))
        self.b = self.a

    def __call__(self, x):
        return self.b(jnp.tanh(self.a(x)))


X = jnp.linspace(-1.0, 1.0, 6).reshape(2, 3)


def test_neuron_edit_on_a_shared_module_names_its_call():
    m = Thrice()
    v = m.init(jax.random.key(0), X)
    k, b = v["params"]["mlp"]["kernel"], v["params"]["mlp"]["bias"]
    h0 = X @ k + b
    h1 = jnp.tanh(h0) @ k + b
    with pytest.raises(ValueError, match=r"^edits: site 'mlp' names a module that runs several"):
        iv.intervene(m, v, {"mlp": iv.zero(at={-1: 1})})(X)
    got = jax.jit(iv.intervene(m, v, {"mlp@1": iv.zero(at={-1: 1})}))(X)
    want = jnp.tanh(h1.at[:, 1].set(0.0)) @ k + b
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    first = iv.intervene(m, v, {"mlp@0": iv.zero(at={-1: 1})})(X)
    want0 = jnp.tanh(jnp.tanh(h0.at[:, 1].set(0.0)) @ k + b) @ k + b
    np.testing.assert_allclose(first, want0, rtol=1e-6, atol=1e-6)
    every = iv.intervene(m, v, {"mlp@*": iv.zero(at={-1: 1})})(X)
    assert float(jnp.abs(every[:, 1]).max()) == 0.0


def test_neuron_edit_on_an_aliased_nnx_module_names_its_call():
    m = Aliased()
    k, b = m.a.kernel[...], m.a.bias[...]
    with pytest.raises(ValueError, match=r"^edits: site 'a' names a module .*'a@1'"):
        iv.intervene(m, None, {"a": iv.zero(at={-1: 0})})(X)
    got = iv.intervene(m, None, {"a@1": iv.zero(at={-1: 0})})(X)
    want = (jnp.tanh(X @ k + b) @ k + b).at[:, 0].set(0.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------- tuple outputs


class CacheLayer(nn.Module):
    @nn.compact
    def __call__(self, x, cache=None):
        return cache, nn.Dense(4)(x)


class WithCache(nn.Module):
    @nn.compact
    def __call__(self, x):
        _, h = CacheLayer(name="layer")(x)
        return nn.Dense(2, name="head")(h)


def test_cache_tuple_output_element_edit():
    m = WithCache()
    v = m.init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"^edits: the edit for 'layer' .*'layer:output\[1\]'"):
        iv.intervene(m, v, {"layer": iv.zero()})(X)
    got = jax.jit(iv.intervene(m, v, {"layer:output[1]": iv.zero(at={-1: 2})}))(X)
    p = v["params"]
    h = X @ p["layer"]["Dense_0"]["kernel"] + p["layer"]["Dense_0"]["bias"]
    want = h.at[:, 2].set(0.0) @ p["head"]["kernel"] + p["head"]["bias"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "site",
    [
        "transformer/h/0:output[0]",  # a block's tuple (hidden, ...)
        "transformer:output.last_hidden_state",  # the body's ModelOutput, by attribute
        "transformer:output['last_hidden_state']",  # ... by key
        "transformer:output[0]",  # ... by position among the fields that are set
    ],
)
def test_hf_tuple_and_dataclass_sites_patch_like_the_model_itself(site):
    # Patching the whole hidden state of input B into the run on input A at a site gives the
    # model's own output on B (everything after the site depends on A only through it).
    m, v, a, b = _gpt2()
    ref_b = m(b[0], attention_mask=b[1], output_hidden_states=True)
    _, acts = iv.capture_sites(m.module, v, [site])(*b)
    if site.startswith("transformer/h/0"):
        np.testing.assert_allclose(
            acts[site], ref_b.hidden_states[1], atol=_tol(ref_b.hidden_states[1])
        )
    f = jax.jit(iv.intervene(m.module, v, {site: iv.replace(acts[site])}))
    got = f(*a).logits
    np.testing.assert_allclose(got, ref_b.logits, rtol=0, atol=_tol(ref_b.logits))
    assert float(jnp.abs(got - m(a[0]).logits).max()) > 1e-3


# -------------------------------------------------------------- layer_features


@functools.cache
def _resnet():
    cfg = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"
    )
    m = FlaxResNetModel(cfg, seed=0)
    keys = iter(jax.random.split(jax.random.key(3), 64))

    def stats(path, x):  # running statistics far from the batch's own
        name = path[-1].key
        r = jax.random.uniform(next(keys), x.shape, minval=0.5, maxval=2.0)
        return r if name == "var" else r - 1.25

    params = dict(m.params)
    params["batch_stats"] = jax.tree_util.tree_map_with_path(stats, params["batch_stats"])
    px = jax.random.normal(jax.random.key(4), (5, 3, 16, 16))  # the wrapper takes NCHW
    return m, params, px


def test_layer_features_resnet_eval_mode_equals_hidden_states():
    m, params, px = _resnet()
    ref = m(px, params=params, output_hidden_states=True, train=False)
    paths = ["embedder", "encoder/stages/0", "encoder:output.last_hidden_state"]
    got = layer_features(
        m.module,
        params,
        jnp.transpose(px, (0, 2, 3, 1)),  # the module takes NHWC
        paths,
        pool="flatten",
        chunk_size=2,
        model_kwargs={"deterministic": True},
    )
    for i, h in enumerate(ref.hidden_states):
        want = jnp.transpose(h, (0, 2, 3, 1)).reshape(5, -1)
        np.testing.assert_allclose(got[i, :, : want.shape[1]], want, rtol=0, atol=_tol(want))
    # in training mode BatchNorm would update its statistics: the error names model_kwargs
    with pytest.raises(ValueError, match="^model_kwargs: .*eval flag"):
        layer_features(
            m.module,
            params,
            jnp.transpose(px, (0, 2, 3, 1)),
            paths,
            model_kwargs={"deterministic": False},
        )


def test_layer_features_method_and_tuple_elements():
    m, v, args, _ = _gpt2()
    ref = m(args[0], attention_mask=args[1], output_hidden_states=True)
    got = layer_features(
        m.module,
        v,
        args,
        ["transformer/h/0:output[0]", "transformer/ln_f"],  # GPT-2's hidden_states[1:]
        pool="tokens",
        chunk_size=2,
        model_kwargs={"deterministic": True},
    )
    for i in range(2):
        want = ref.hidden_states[i + 1].reshape(-1, N_HEADS * D_HEAD)
        np.testing.assert_allclose(got[i], want, rtol=0, atol=_tol(want))

    class Enc(nn.Module):  # a model probed through another method (as Gemma's encode)
        def setup(self):
            self.proj = nn.Dense(3)

        def __call__(self, x):
            return self.encode(x) * 0.0

        def encode(self, x):
            return self.proj(x)

    enc = Enc()
    ve = enc.init(jax.random.key(0), X, method="encode")
    feats = layer_features(enc, ve, X, ["proj"], method="encode")
    p = ve["params"]["proj"]
    np.testing.assert_allclose(feats[0], X @ p["kernel"] + p["bias"], rtol=1e-6, atol=1e-6)
