"""Issue 20, classes 2-5: the hook machinery gives no silent wrong answer and leaves no trace.

Each class is a table of parametrized rows; every row failed before its fix.

* class 2, edits on vectorised modules: an edit at a site inside ``nn.vmap`` / ``nnx.vmap``
  addresses the axes capture reports (``[expert, batch, ...]``), checked against zeroing that
  expert's weights;
* class 3, state the caller expects to change: decode caches and BatchNorm statistics change
  through ``capture`` exactly as through the model's own call;
* class 4, names bound before the hook (``from jax.lax import scan``): an error that says so,
  never a path dropped without a word;
* class 5, global state: every name the hook replaces is the very original object after the
  call (normal return, exception, two threads at once, a module imported meanwhile).
"""

from __future__ import annotations

import importlib
import re
import sys
import threading

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxinterp.attention import attention_weights
from jaxinterp.capture import capture, list_paths
from jaxinterp.interventions import capture_sites, intervene, patch_sweep, site_grid, zero

# ------------------------------------------------------------------------ class 5: globals

# (owner, name, the module and name that define the original)
_PATCHED = [
    (jax.lax, "scan", "jax._src.lax.control_flow.loops", "scan"),
    (jax, "checkpoint", "jax._src.ad_checkpoint", "checkpoint"),
    (jax, "remat", "jax._src.ad_checkpoint", "remat"),
    (jax, "vmap", "jax._src.api", "vmap"),
    (jax.nn, "softmax", "jax._src.nn.functions", "softmax"),
    (jax.nn, "dot_product_attention", "jax._src.nn.functions", "dot_product_attention"),
    (nn, "softmax", "jax._src.nn.functions", "softmax"),
    (nnx, "softmax", "jax._src.nn.functions", "softmax"),
]


def _changed():
    """Names that do not hold the object their defining module has (the ground truth: an
    earlier hooked call in this process may have changed a snapshot taken now)."""
    return sorted(
        f"{o.__name__}.{n}"
        for o, n, home, name in _PATCHED
        if getattr(o, n) is not getattr(importlib.import_module(home), name)
    )


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return jnp.tanh(nn.Dense(4, name="mlp")(x)), None


class _Everything(nn.Module):
    """Scan, remat, vmap and a softmax: every routed name is used."""

    fail: bool = False
    barrier: object = None

    @nn.compact
    def __call__(self, x):
        x, _ = nn.scan(
            nn.remat(_Block), variable_axes={"params": 0}, split_rngs={"params": True}, length=2
        )(name="layers")(x, None)
        ens = nn.vmap(
            nn.Dense,
            in_axes=None,
            out_axes=0,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            axis_size=2,
        )(4, name="ens")
        x = jax.nn.softmax(ens(x).sum(0))
        if self.barrier is not None:
            self.barrier.wait(timeout=60)  # both threads are inside a hooked trace
        if self.fail:
            raise RuntimeError("model failed")
        return x


_X5 = jnp.ones((2, 4))
_V5 = _Everything().init(jax.random.key(0), _X5)


_ATTN = nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4)
_XA = jnp.ones((1, 3, 4))
_VA = _ATTN.init(jax.random.key(0), _XA)


def _run_return():
    capture(_Everything(), _V5)(_X5)
    _, maps = attention_weights(nn.Sequential([_ATTN]), {"params": {"layers_0": _VA["params"]}})(
        _XA
    )
    assert maps, "no attention recorded"


def _run_exception():
    with pytest.raises(RuntimeError, match="model failed"):
        capture(_Everything(fail=True), _V5)(_X5)


def _run_threads():
    barrier = threading.Barrier(2)
    errors = []

    def work():
        try:
            capture(_Everything(barrier=barrier), _V5)(_X5)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def _run_nested_jit():
    jax.jit(capture(_Everything(), _V5))(_X5)


@pytest.mark.parametrize(
    "run",
    [_run_return, _run_exception, _run_threads, _run_nested_jit],
    ids=["return", "exception", "threads", "jit"],
)
def test_class5_every_patched_name_is_the_original_after_the_call(run):
    run()
    assert _changed() == []


_LATE_MODULE = """
from jax.lax import scan
from jax import checkpoint, remat, vmap
from jax.nn import softmax

class Holder:
    scan = scan
"""


@pytest.mark.parametrize("hook", ["capture", "attention"])
def test_class5_module_imported_during_a_hooked_trace_keeps_no_wrapper(hook, tmp_path):
    name = f"_jaxinterp_late_{hook}"
    (tmp_path / f"{name}.py").write_text(_LATE_MODULE)
    sys.path.insert(0, str(tmp_path))

    class Importer(nn.Module):
        @nn.compact
        def __call__(self, x):
            importlib.import_module(name)  # first imported while the hook is installed
            return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=4, name="attn")(x)

    try:
        v = Importer().init(jax.random.key(0), _XA)
        sys.modules.pop(name, None)
        if hook == "capture":
            capture(Importer(), v)(_XA)
        else:
            attention_weights(Importer(), v)(_XA)
        late = sys.modules[name]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)
    assert _changed() == []
    assert late.scan is jax.lax.scan and late.Holder.scan is jax.lax.scan
    assert late.checkpoint is jax.checkpoint and late.remat is jax.remat
    assert late.vmap is jax.vmap and late.softmax is jax.nn.softmax


# ------------------------------------------------------------- class 2: vectorised modules

E, B2, D2, H2 = 3, 2, 4, 5
_X2 = jax.random.normal(jax.random.key(1), (B2, D2))
_X2C = jax.random.normal(jax.random.key(2), (B2, D2))


class _Expert(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(D2, name="out")(nn.relu(nn.Dense(H2, name="hid")(x)))


class _LinenMoE(nn.Module):
    """Dense mixture of experts: ``nn.vmap`` over experts, outputs ``[expert, batch, d]``."""

    @nn.compact
    def __call__(self, x):
        experts = nn.vmap(
            _Expert,
            in_axes=None,
            out_axes=0,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            axis_size=E,
        )(name="experts")
        gate = jax.nn.softmax(nn.Dense(E, name="gate")(x))
        return jnp.einsum("ebd,be->bd", experts(x), gate)


class _NnxExpert(nnx.Module):
    def __init__(self, rngs):
        self.hid = nnx.Linear(D2, H2, rngs=rngs)
        self.out = nnx.Linear(H2, D2, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hid(x)))


class _NnxMoE(nnx.Module):
    """The same with ``nnx.vmap``: stacked expert weights, experts run in the forward pass."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=E)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return _NnxExpert(rngs)

        self.experts = make(rngs)
        self.gate = nnx.Linear(D2, E, rngs=rngs)

    def __call__(self, x):
        @nnx.vmap(in_axes=(0, None), out_axes=0)
        def run(expert, x):
            return expert(x)

        return jnp.einsum("ebd,be->bd", run(self.experts, x), jax.nn.softmax(self.gate(x)))


_LMOE = _LinenMoE()
_LV = _LMOE.init(jax.random.key(0), _X2)
_NMOE = _NnxMoE(nnx.Rngs(0))


def _zero_expert_weights(api, module, e):
    """The independent reference: the model's own call with expert ``e``'s weights of
    ``module`` (``"hid"`` or ``"out"``) set to zero."""
    if api == "linen":
        params = jax.tree.map(lambda a: a, _LV["params"])
        for name in ("kernel", "bias"):
            leaf = params["experts"][module][name]
            params["experts"][module][name] = leaf.at[e].set(0.0)
        return _LMOE.apply({"params": params}, _X2)
    graphdef, state = nnx.split(_NMOE)
    model = nnx.merge(graphdef, state, copy=True)
    layer = getattr(model.experts, module)
    layer.kernel.value = layer.kernel.value.at[e].set(0.0)
    layer.bias.value = layer.bias.value.at[e].set(0.0)
    return model(_X2)


@pytest.mark.parametrize("api", ["linen", "nnx"])
@pytest.mark.parametrize(
    ("site", "module"), [("experts", "out"), ("experts/hid", "hid"), ("experts/out", "out")]
)
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_class2_zero_one_expert_matches_zeroing_its_weights(api, site, module, jit):
    model, variables = (_LMOE, _LV) if api == "linen" else (_NMOE, None)
    acts = capture(model, variables, select=site)(_X2)[1]
    assert acts[site].shape[0] == E  # capture reports [expert, batch, ...]
    e = 1

    def run(e):
        return intervene(model, variables, {site: zero(at={0: e})})(_X2)

    got = jax.jit(run)(e) if jit else run(e)
    want = _zero_expert_weights(api, module, e)
    if site == "experts":  # the whole expert's output is zero: out weights zero as well
        want = _zero_expert_weights(api, "out", e)
    np.testing.assert_allclose(got, want, atol=1e-6)
    # and it is not the same as zeroing batch item e of every expert (the old behaviour)
    assert not np.allclose(got, _LMOE.apply(_LV, _X2) if api == "linen" else _NMOE(_X2))


def _moe_by_hand(params, x, patched=None):
    """The linen MoE computed from its parameters; ``patched = (e, y_e)`` replaces expert
    ``e``'s output by ``y_e``."""
    ex = params["experts"]
    ys = []
    for i in range(E):
        h = jax.nn.relu(x @ ex["hid"]["kernel"][i] + ex["hid"]["bias"][i])
        ys.append(h @ ex["out"]["kernel"][i] + ex["out"]["bias"][i])
    if patched is not None:
        ys[patched[0]] = patched[1]
    gate = jax.nn.softmax(x @ params["gate"]["kernel"] + params["gate"]["bias"])
    return sum(ys[i] * gate[:, i : i + 1] for i in range(E))


def test_class2_patch_sweep_over_experts_matches_patching_by_hand():
    sites = site_grid(["experts"], [(-3, E)], ("layer", "expert"))
    res = patch_sweep(_LMOE, _LV, (_X2,), (_X2C,), sites, lambda out: out.sum())
    p = _LV["params"]
    np.testing.assert_allclose(_moe_by_hand(p, _X2C), _LMOE.apply(_LV, _X2C), atol=1e-5)
    clean_ys = capture(_LMOE, _LV, select="experts")(_X2)[1]["experts"]
    want = [_moe_by_hand(p, _X2C, (e, clean_ys[e])).sum() for e in range(E)]
    np.testing.assert_allclose(np.asarray(res.patched).ravel(), want, atol=1e-5)


# ------------------------------------------------------------------ class 3: model state

T3, D3 = 3, 4
_SEQ = jax.random.normal(jax.random.key(3), (1, T3, D3))


class _NnxDecoder(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(
            num_heads=2, in_features=D3, qkv_features=D3, decode=True, rngs=rngs
        )

    def __call__(self, x):
        return self.attn(x)


class _LinenDecoder(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.MultiHeadDotProductAttention(
            num_heads=2, qkv_features=D3, decode=True, name="attn"
        )(x)


def _nnx_decode_rows(how):
    model = _NnxDecoder(nnx.Rngs(0))
    model.attn.init_cache(_SEQ.shape)
    reference = nnx.clone(model)
    rows, want = [], []
    for t in range(T3):
        x_t = _SEQ[:, t : t + 1]
        if how == "capture":
            out, acts = capture(model, select="attn")(x_t)
            np.testing.assert_array_equal(acts["attn"], out)
        elif how == "attention":
            out, _ = attention_weights(model)(x_t)
        else:
            out = intervene(model, None, {"attn": lambda a: a})(x_t)
        rows.append(out)
        want.append(reference(x_t))
    return jnp.concatenate(rows, 1), jnp.concatenate(want, 1)


def _linen_decode_rows(how):
    model = _LinenDecoder()
    variables = model.init(jax.random.key(0), _SEQ)  # the cache, sized for T3 positions
    params, cache, ref_cache = variables["params"], variables["cache"], variables["cache"]
    rows, want = [], []
    for t in range(T3):
        x_t = _SEQ[:, t : t + 1]
        v = {"params": params, "cache": cache}
        if how == "capture":
            (out, upd), acts = capture(model, v, select="attn", mutable=["cache"])(x_t)
            np.testing.assert_array_equal(acts["attn"], out)
        elif how == "attention":
            (out, upd), _ = attention_weights(model, v, mutable=["cache"])(x_t)
        else:
            out, upd = intervene(model, v, {"attn": lambda a: a}, mutable=["cache"])(x_t)
        cache = upd["cache"]
        rows.append(out)
        ref, upd = model.apply({"params": params, "cache": ref_cache}, x_t, mutable=["cache"])
        ref_cache = upd["cache"]
        want.append(ref)
    return jnp.concatenate(rows, 1), jnp.concatenate(want, 1)


@pytest.mark.parametrize("api", ["nnx", "linen"])
@pytest.mark.parametrize("how", ["capture", "attention", "intervene"])
def test_class3_decode_loop_through_the_hook_matches_the_models_own_loop(api, how):
    got, want = (_nnx_decode_rows if api == "nnx" else _linen_decode_rows)(how)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class _BNNet(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(D3, D3, rngs=rngs)
        self.bn = nnx.BatchNorm(D3, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.lin(x))


class _LinenBN(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.BatchNorm(use_running_average=False, name="bn")(nn.Dense(D3, name="lin")(x))


def test_class3_batchnorm_training_updates_as_the_models_own_call():
    x = _SEQ[0]
    model = _BNNet(nnx.Rngs(0))  # training mode: the call updates the running statistics
    reference = nnx.clone(model)
    out, _ = capture(model, select="bn")(x)
    want = reference(x)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(model.bn.mean[...], reference.bn.mean[...], rtol=1e-6)
    np.testing.assert_allclose(model.bn.var[...], reference.bn.var[...], rtol=1e-6)
    assert not np.allclose(model.bn.mean[...], 0.0)

    lm = _LinenBN()
    v = lm.init(jax.random.key(0), x)
    (out, upd), acts = capture(lm, v, select="bn", mutable=["batch_stats"])(x)
    want, want_upd = lm.apply(v, x, mutable=["batch_stats"])
    np.testing.assert_allclose(out, want, rtol=1e-6)
    chex_leaves = zip(jax.tree.leaves(upd), jax.tree.leaves(want_upd))
    for a, b in chex_leaves:
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_class3_state_change_inside_jit_closure_raises_naming_model():
    model = _BNNet(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"^model: this call changes the nnx model's state \(bn/"):
        jax.jit(capture(model, select="bn"))(_SEQ[0])
    model.eval()  # nothing changes: fine anywhere
    jax.jit(capture(model, select="bn"))(_SEQ[0])

    @nnx.jit
    def step(m, x):
        return capture(m, select="bn")(x)

    train = _BNNet(nnx.Rngs(0))
    reference = nnx.clone(train)
    step(train, _SEQ[0])
    reference(_SEQ[0])
    np.testing.assert_allclose(train.bn.mean[...], reference.bn.mean[...], rtol=1e-6)


# ---------------------------------------------------- class 4: names bound before the hook

_BOUND_MODULE = """
import jax.numpy as jnp
from flax import nnx
from jax.lax import scan
from jax import vmap
from jax.nn import softmax


class ScanStack(nnx.Module):
    def __init__(self, rngs):
        self.layer = nnx.Linear(4, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        def body(h, _):
            return jnp.tanh(self.layer(h)), None

        h, _ = scan(body, x, None, length=3)  # LINE_SCAN
        return self.head(h)


class VmapEnsemble(nnx.Module):
    def __init__(self, rngs):
        self.layer = nnx.Linear(4, 4, rngs=rngs)
        self.head = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        hs = vmap(lambda s: self.layer(x * s))(jnp.arange(3.0))  # LINE_VMAP
        return self.head(hs.sum(0))


class BoundSoftmax(nnx.Module):
    def __init__(self, rngs):
        self.q = nnx.Linear(4, 4, rngs=rngs)
        self.k = nnx.Linear(4, 4, rngs=rngs)

    def __call__(self, x):
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, 2, 2)
        k = self.k(x).reshape(b, t, 2, 2)
        w = softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
        return jnp.einsum("bhqk,bkhd->bqhd", w, k).reshape(b, t, 4)


class TwoAttentions(nnx.Module):
    def __init__(self, rngs):
        self.bound = BoundSoftmax(rngs)
        self.ok = nnx.MultiHeadAttention(
            num_heads=2, in_features=4, qkv_features=4, decode=False, rngs=rngs
        )

    def __call__(self, x):
        return self.ok(self.bound(x))
"""


@pytest.fixture(scope="module")
def bound_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bound")
    (folder / "_jaxinterp_bound_names.py").write_text(_BOUND_MODULE)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module("_jaxinterp_bound_names")  # imported before any hook
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("_jaxinterp_bound_names", None)


def _line(module, tag):
    return next(i for i, t in enumerate(_BOUND_MODULE.splitlines(), 1) if tag in t)


_CALLS = {
    "list_paths": lambda m, x: list_paths(m, None, x),
    "capture": lambda m, x: capture(m, select="layer")(x),
    "capture_sites": lambda m, x: capture_sites(m, None, ["layer"])(x),
    "jit-capture": lambda m, x: jax.jit(capture(m, select="layer"))(x),
}


@pytest.mark.parametrize("call", list(_CALLS))
@pytest.mark.parametrize(
    ("cls", "tag", "what"),
    [
        ("ScanStack", "LINE_SCAN", "from jax.lax import scan"),
        ("VmapEnsemble", "LINE_VMAP", "from jax import vmap"),
    ],
    ids=["scan", "vmap"],
)
def test_class4_names_bound_before_the_hook_are_named(bound_module, call, cls, tag, what):
    model = getattr(bound_module, cls)(nnx.Rngs(0))
    where = f"_jaxinterp_bound_names.py:{_line(bound_module, tag)}"
    with pytest.raises(ValueError, match=rf"{re.escape(where)}.*{re.escape(what)}"):
        _CALLS[call](model, jnp.ones((2, 4)))


def test_class4_softmax_bound_before_the_hook_is_named_not_dropped(bound_module):
    """Before: the weights of 'ok' came back and those of 'bound' were silently missing."""
    model = bound_module.TwoAttentions(nnx.Rngs(0))
    x = jnp.ones((1, 3, 4))
    with pytest.raises(
        ValueError,
        match=r"^select: the attention weights of 'bound' cannot be recorded: .*"
        r"_jaxinterp_bound_names\.py.*'softmax'.*from jax\.nn import softmax",
    ):
        attention_weights(model)(x)
    _, maps = attention_weights(model, select="ok")(x)  # the rest is still reachable
    assert list(maps) == ["ok"]


# -------------------------------- class 5 again: the packages built on capture and intervene


class _TinyLM(nn.Module):
    """tokens [batch, seq] -> logits [batch, seq, 5]: the cheapest causal model to compile
    (a module class, hashable, as generate's static model argument needs)."""

    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="out")(nn.Embed(5, 4, name="embed")(x))


def _tiny_lm():
    model = _TinyLM()
    return model, model.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))


def _run_circuits():
    from jaxinterp import circuits

    model, v = _tiny_lm()
    toks = jnp.array([[1, 2, 3], [3, 2, 1]])
    # generate: intervene inside a lax.scan under jit; contrastive_direction: capture
    edits = {"embed": circuits.add(jnp.ones(4))}
    circuits.generate(None, model, v, toks, 1, temperature=0, edits=edits)
    circuits.contrastive_direction(model, v, "embed", toks, toks[::-1])


def _run_features():
    from jaxinterp import features

    model, v = _tiny_lm()
    p = features.init_params(jax.random.key(1), 4, 8)
    toks = jnp.array([[1, 2, 3]])
    # capture + intervene under jit; capture under jit with a vmapped encoder
    features.spliced_loss(model, v, p, features.relu(0.0), "embed", toks, lambda y, x: y.mean())
    features.top_activations(model, v, p, features.relu(0.0), "embed", [toks], [0], k=2)


def _run_circuits_exception():
    from jaxinterp import circuits

    model, v = _tiny_lm()
    with pytest.raises(KeyError, match="edits"):  # raised inside the hooked trace
        circuits.steering_sweep(
            None, model, v, jnp.array([[1, 2]]), jnp.ones((1, 4)), jnp.ones(1), ["nope"], 1
        )


@pytest.mark.parametrize(
    "run",
    [_run_circuits, _run_features, _run_circuits_exception],
    ids=["circuits", "features", "circuits-exception"],
)
def test_class5_no_patched_name_left_after_features_and_circuits(run):
    run()
    assert _changed() == []
