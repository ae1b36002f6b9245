"""Bad inputs to every public function of jaxinterp.actmax: each raises a clear error whose
message starts with the argument's name (the value-check policy in jaxinterp._checks), and the
silent wrong answers reported in issue 10 stay fixed."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxinterp
from jaxinterp import actmax, models
from jaxinterp.actmax import INPUT, OUTPUT

KEY = jax.random.key(0)
MLP = models.MLP(hidden=(4,), num_classes=3)
MLP_V = models.init_vision(MLP, KEY, (3,))
CNN = models.CNN(channels=(2,), hidden=4, num_classes=3)
CNN_V = models.init_vision(CNN, KEY, (8, 8, 1))
P3 = actmax.pixel((3,))
P8 = actmax.pixel((8, 8, 1))
DENSE = {"d": jnp.ones((2, 4)), "c": jnp.ones((2, 8, 8, 3)), OUTPUT: jnp.ones((2, 3))}
IMG = jnp.ones((1, 6, 6, 1))
DATA = np.random.RandomState(0).rand(10, 3).astype(np.float32)
UNIT = lambda u: actmax.neuron("act_0", u)  # noqa: E731


def _max(**kw):
    args = dict(key=KEY, model=MLP, variables=MLP_V, objective=UNIT, targets=jnp.arange(2))
    args.update(param=P3, steps=2)
    args.update(kw)
    return lambda: actmax.maximize(**args)


def _top(**kw):
    args = dict(model=MLP, variables=MLP_V, objective=UNIT, targets=jnp.arange(2), data=DATA)
    args.update(kw)
    return lambda: actmax.top_k_examples(**args)


class _ScanBlock(nnx.Module):
    def __init__(self, rngs):
        self.lin = nnx.Linear(3, 3, rngs=rngs)

    def __call__(self, x):
        return jax.nn.relu(self.lin(x))


class _ScanNet(nnx.Module):
    """Two layers under nnx.scan over weights stacked by nnx.vmap."""

    def __init__(self, rngs):
        @nnx.split_rngs(splits=2)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return _ScanBlock(rngs)

        self.layers = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, layer):
            return layer(x)

        return body(x, self.layers)


def _max_scan(objective):
    net = _ScanNet(nnx.Rngs(0))
    return lambda: actmax.maximize(KEY, net, None, objective, jnp.arange(2), param=P3, steps=2)


def _nan_data():
    d = DATA.copy()
    d[4, 1] = np.nan
    return d


CASES = [
    # maximize
    ("maximize int key", _max(key=0), TypeError, "key"),
    ("maximize float key", _max(key=jnp.zeros(2)), TypeError, "key"),
    ("maximize 3 keys for 2 targets", _max(key=jax.random.split(KEY, 3)), ValueError, "key"),
    ("maximize steps 0", _max(steps=0), ValueError, "steps"),
    ("maximize steps float", _max(steps=2.5), TypeError, "steps"),
    ("maximize param None", _max(param=None), TypeError, "param"),
    ("maximize objective int", _max(objective=3), TypeError, "objective"),
    ("maximize factory returns float", _max(objective=lambda t: 1.0), TypeError, "objective"),
    ("maximize no targets", _max(targets=None), ValueError, "targets"),
    ("maximize empty targets", _max(targets=jnp.arange(0)), ValueError, "targets"),
    ("maximize unit out of range", _max(targets=jnp.array([0, 4])), ValueError, "unit"),
    ("maximize negative unit", _max(targets=jnp.array([-1, 0])), ValueError, "unit"),
    (
        "maximize position outside an 8x8 map",
        _max(
            model=CNN,
            variables=CNN_V,
            param=P8,
            objective=lambda u: actmax.neuron("act_0", u, position=(20, 20)),
            targets=jnp.arange(2),
        ),
        ValueError,
        "position",
    ),  # fmt: skip
    ("maximize init shape", _max(init=jnp.zeros((2, 3))), ValueError, "init"),
    ("maximize init NaN", _max(init=jnp.full((2, 1, 3), jnp.nan)), ValueError, "init"),
    ("maximize chunk_size 0", _max(chunk_size=0), ValueError, "chunk_size"),
    ("maximize optimizer str", _max(optimizer="adam"), TypeError, "optimizer"),
    ("maximize regularizers int", _max(regularizers=[5]), TypeError, "regularizers"),
    ("maximize redirect_relu -1", _max(redirect_relu=-1), ValueError, "redirect_relu"),
    ("maximize transforms str", _max(transforms="pad"), TypeError, "transforms"),
    (
        "maximize unknown path",
        _max(objective=lambda u: actmax.neuron("nope", u)),
        KeyError,
        "[\"']?objective",
    ),  # fmt: skip
    # objectives
    ("neuron path int", lambda: actmax.neuron(3, 0), TypeError, "path"),
    ("neuron unit float", lambda: actmax.neuron("d", 1.5), TypeError, "unit"),
    ("neuron unit negative", lambda: actmax.neuron("d", -1), ValueError, "unit"),
    ("neuron unit too large", lambda: actmax.neuron("d", 4)(DENSE), ValueError, "unit"),
    (
        "neuron unit array too large",
        lambda: actmax.neuron("d", jnp.int32(9))(DENSE),
        ValueError,
        "unit",
    ),  # fmt: skip
    (
        "neuron position float",
        lambda: actmax.neuron("c", 0, position=(1.5, 2)),
        TypeError,
        "position",
    ),  # fmt: skip
    (
        "neuron position (20, 20) on 8x8",
        lambda: actmax.neuron("c", 0, position=(20, 20))(DENSE),
        ValueError,
        "position",
    ),  # fmt: skip
    (
        "neuron position rank",
        lambda: actmax.neuron("c", 0, position=3)(DENSE),
        ValueError,
        "position",
    ),  # fmt: skip
    ("neuron missing path", lambda: actmax.neuron("zz", 0)(DENSE), KeyError, "[\"']?acts"),
    ("channel unit bool", lambda: actmax.channel("c", True), TypeError, "unit"),
    ("channel unit too large", lambda: actmax.channel("c", 3)(DENSE), ValueError, "unit"),
    (
        "direction 2-D vector",
        lambda: actmax.direction("d", jnp.ones((2, 4))),
        ValueError,
        "vector",
    ),  # fmt: skip
    (
        "direction NaN vector",
        lambda: actmax.direction("d", jnp.array([1.0, jnp.nan, 0, 0])),
        ValueError,
        "vector",
    ),  # fmt: skip
    (
        "direction wrong size",
        lambda: actmax.direction("d", jnp.ones(3))(DENSE),
        ValueError,
        "vector",
    ),  # fmt: skip
    ("class_logit negative", lambda: actmax.class_logit(-1), ValueError, "cls"),
    ("class_logit too large", lambda: actmax.class_logit(3)(DENSE), ValueError, "unit"),
    ("class_logit float", lambda: actmax.class_logit(1.0), TypeError, "cls"),
    ("deepdream path", lambda: actmax.deepdream(None), TypeError, "path"),
    ("diversity path", lambda: actmax.diversity(["c"]), TypeError, "path"),
    ("diversity 1-D", lambda: actmax.diversity("v")({"v": jnp.ones(3)}), ValueError, "path"),
    ("l1 center NaN", lambda: actmax.l1(float("nan")), ValueError, "center"),
    ("l2 center str", lambda: actmax.l2("a"), TypeError, "center"),
    (
        "total_variation on vectors",
        lambda: actmax.total_variation()({INPUT: jnp.ones((1, 3))}),
        ValueError,
        "acts",
    ),  # fmt: skip
    ("blur on vectors", lambda: actmax.blur()({INPUT: jnp.ones((1, 3))}), ValueError, "acts"),
    ("Objective fn int", lambda: actmax.Objective(3, ("d",)), TypeError, "fn"),
    ("Objective paths str", lambda: actmax.Objective(lambda a: 0.0, "d"), TypeError, "paths"),
    (
        "Objective non-scalar",
        lambda: actmax.Objective(lambda a: a["d"], ("d",))(DENSE),
        ValueError,
        "objective",
    ),  # fmt: skip
    ("Objective times str", lambda: actmax.neuron("d", 0) * "x", TypeError, "c"),
    ("Objective times NaN", lambda: actmax.neuron("d", 0) * float("nan"), ValueError, "c"),
    ("Objective divided by 0", lambda: actmax.neuron("d", 0) / 0, ValueError, "c"),
    ("Objective plus inf", lambda: actmax.neuron("d", 0) + float("inf"), ValueError, "other"),
    # parameterizations
    ("pixel zero size", lambda: actmax.pixel((0, 3)), ValueError, "shape"),
    ("pixel shape str", lambda: actmax.pixel("ab"), TypeError, "shape"),
    ("pixel batch 0", lambda: actmax.pixel((3,), batch=0), ValueError, "batch"),
    ("pixel sd negative", lambda: actmax.pixel((3,), sd=-1.0), ValueError, "sd"),
    (
        "pixel range reversed",
        lambda: actmax.pixel((3,), value_range=(1, 0)),
        ValueError,
        "value_range",
    ),  # fmt: skip
    (
        "pixel decorrelate matrix",
        lambda: actmax.pixel((4, 3), decorrelate=np.eye(2)),
        ValueError,
        "decorrelate",
    ),  # fmt: skip
    ("fourier 2-D shape", lambda: actmax.fourier((8, 8)), ValueError, "shape"),
    (
        "fourier decay NaN",
        lambda: actmax.fourier((8, 8, 3), decay_power=float("nan")),
        ValueError,
        "decay_power",
    ),  # fmt: skip
    ("norm_ball radius 0", lambda: actmax.norm_ball((3,), 0.0), ValueError, "radius"),
    ("norm_ball radius str", lambda: actmax.norm_ball((3,), "1"), TypeError, "radius"),
    ("soft_prompt 1-D table", lambda: actmax.soft_prompt(jnp.ones(3), 4), ValueError, "embedding"),
    ("soft_prompt seq_len 0", lambda: actmax.soft_prompt(jnp.eye(3), 0), ValueError, "seq_len"),
    ("soft_prompt site int", lambda: actmax.soft_prompt(jnp.eye(3), 2, site=3), TypeError, "site"),
    (
        "soft_prompt site and argname",
        lambda: actmax.soft_prompt(jnp.eye(3), 2, site="embed", argname="embeddings"),
        ValueError,
        "argname",
    ),  # fmt: skip
    (
        "soft_prompt model_kwargs key",
        lambda: actmax.soft_prompt(jnp.eye(3), 2, site="e", model_kwargs={1: jnp.ones(2)}),
        TypeError,
        "model_kwargs",
    ),  # fmt: skip
    (
        "soft_prompt NaN table",
        lambda: actmax.soft_prompt(jnp.full((3, 2), jnp.nan), 2),
        ValueError,
        "embedding",
    ),  # fmt: skip
    (
        "nearest_tokens NaN",
        lambda: actmax.nearest_tokens(jnp.full((2, 3), jnp.nan), jnp.eye(3)),
        ValueError,
        "embeddings",
    ),  # fmt: skip
    (
        "nearest_tokens metric",
        lambda: actmax.nearest_tokens(jnp.ones((2, 3)), jnp.eye(3), metric="dot"),
        ValueError,
        "metric",
    ),  # fmt: skip
    (  # issue 20: the arguments swapped read [vocab] ids into the prompt, plausible ones
        "nearest_tokens swapped",
        lambda: actmax.nearest_tokens(jnp.eye(6, 3), jnp.ones((2, 3))),
        ValueError,
        "embedding",
    ),  # fmt: skip
    (
        "nearest_tokens table width",
        lambda: actmax.nearest_tokens(jnp.ones((2, 3)), jnp.eye(4)),
        ValueError,
        "embedding",
    ),  # fmt: skip
    # transforms
    ("pad width negative", lambda: actmax.pad(-1), ValueError, "width"),
    ("pad width float", lambda: actmax.pad(1.5), TypeError, "width"),
    ("pad mode", lambda: actmax.pad(1, mode="bogus"), ValueError, "mode"),
    ("pad on vectors", lambda: actmax.pad(1)(KEY, jnp.ones((2, 3))), ValueError, "x"),
    ("jitter negative", lambda: actmax.jitter(-2), ValueError, "d"),
    ("jitter float", lambda: actmax.jitter(1.0), TypeError, "d"),
    ("jitter larger than image", lambda: actmax.jitter(6)(KEY, IMG), ValueError, "d"),
    ("random_scale empty", lambda: actmax.random_scale([]), ValueError, "scales"),
    ("random_scale zero", lambda: actmax.random_scale([0.0, 1.0]), ValueError, "scales"),
    (
        "random_scale fill NaN",
        lambda: actmax.random_scale([1.0], fill=float("nan")),
        ValueError,
        "fill",
    ),  # fmt: skip
    ("random_rotate NaN", lambda: actmax.random_rotate([float("nan")]), ValueError, "angles"),
    ("random_rotate strings", lambda: actmax.random_rotate(["a"]), TypeError, "angles"),
    ("compose non-callable", lambda: actmax.compose(actmax.pad(1), 5), TypeError, "transforms"),
    # issue 20: deep errors with a clear cause
    ("neuron glob path", lambda: actmax.neuron("act_*", 0), ValueError, "path"),
    ("channel glob path", lambda: actmax.channel("a?t_0", 0), ValueError, "path"),
    (
        "maximize glob objective",
        _max(objective=lambda u: actmax.neuron("act*", u)),
        ValueError,
        "path",
    ),  # fmt: skip
    (
        "Objective glob paths",
        lambda: actmax.Objective(lambda a: a["x"].sum(), ("block_*",)),
        ValueError,
        "paths",
    ),
    (
        "maximize factory returns a function",
        _max(objective=lambda u: lambda acts: acts["act_0"][0, u]),
        TypeError,
        "objective: the factory returned function",
    ),
    (
        "soft_prompt model_kwargs object",
        lambda: actmax.soft_prompt(jnp.eye(3), 2, site="e", model_kwargs={"m": object()}),
        TypeError,
        "model_kwargs",
    ),  # fmt: skip
    (
        "soft_prompt token_id past vocab",
        lambda: actmax.soft_prompt(jnp.eye(3), 2, token_id=3),
        ValueError,
        "token_id",
    ),  # fmt: skip
    ("maximize methods str", _max(methods="encode"), TypeError, "methods"),
    (
        "maximize scanned path",
        _max_scan(lambda u: actmax.neuron("layers", u)),
        ValueError,
        "objective: 'layers' has shape",
    ),  # fmt: skip
    (
        "maximize scan step past",
        _max_scan(lambda u: actmax.neuron("layers[3]", u)),
        ValueError,
        "path",
    ),  # fmt: skip
    # top_k_examples
    ("top_k k 0", _top(k=0), ValueError, "k"),
    ("top_k k float", _top(k=2.0), TypeError, "k"),
    ("top_k chunk_size 0", _top(chunk_size=0), ValueError, "chunk_size"),
    ("top_k NaN example", _top(data=_nan_data()), ValueError, "data"),
    ("top_k empty data", _top(data=DATA[:0]), ValueError, "data"),
    ("top_k unit out of range", _top(targets=jnp.array([0, 7])), ValueError, "unit"),
    ("top_k factory returns float", _top(objective=lambda t: 0.0), TypeError, "objective"),
    ("top_k no targets", _top(targets=None), ValueError, "targets"),
    ("top_k feed int", _top(feed=3), TypeError, "feed"),
    ("top_k string data", _top(data=np.array([["a", "b", "c"]])), TypeError, "data"),
]


@pytest.mark.parametrize("name,call,exc,arg", CASES, ids=[c[0] for c in CASES])
def test_bad_input(name, call, exc, arg):
    with pytest.raises(exc, match=f"^{arg}"):
        call()


def test_traced_unit_out_of_range_is_nan_and_checked():
    """Under jit an out-of-range traced unit gives NaN (never a clamped index), and
    jaxinterp.checked raises the eager message."""
    f = lambda u: actmax.neuron("d", u)(DENSE)  # noqa: E731
    assert float(jax.jit(f)(jnp.int32(1))) == 1.0
    assert np.isnan(float(jax.jit(f)(jnp.int32(4))))
    assert np.isnan(float(jax.jit(f)(jnp.int32(-1))))
    with pytest.raises(ValueError, match=r"^unit: expected indices in \[0, 4\)"):
        jaxinterp.checked(f)(jnp.int32(4))


def test_maximize_traced_units_out_of_range_is_nan():
    run = jax.jit(lambda t: actmax.maximize(KEY, MLP, MLP_V, UNIT, t, param=P3, steps=2).values)
    vals = np.asarray(run(jnp.array([1, 4])))
    assert np.isfinite(vals[0]) and np.isnan(vals[1])


def test_top_k_never_ranks_nan_scores():
    # a finite dataset whose objective is NaN on one example: an error, not a ranked value
    d = DATA.copy()
    d[3] = 1e38  # overflows to inf in the first layer, NaN after inf - inf
    obj = actmax.Objective(lambda a: (a[INPUT][:, 0] * 1e10 - a[INPUT][:, 0] * 1e10).mean(),
                           (INPUT,))  # fmt: skip
    with pytest.raises(ValueError, match="^objective: NaN for 1"):
        actmax.top_k_examples(MLP, MLP_V, obj, None, d)


def test_nonfinite_ascent_keeps_the_last_finite_parameters():
    """NaN from step 3 on: results hold the parameters after step 2 (whose loss was finite),
    under jit and in the eager error's promise alike."""
    obj = actmax.Objective(
        lambda a: jnp.where(a[INPUT].sum() > 1.0, jnp.nan, a[INPUT].sum()), (INPUT,), "grow"
    )
    p = actmax.pixel((3,), sigmoid=False, sd=0.0)
    kw = dict(param=p, steps=6, optimizer=optax.sgd(0.1))
    res = jax.jit(lambda k: actmax.maximize(k, MLP, MLP_V, obj, **kw))(KEY)
    # sgd on sum(x): x_t = 0.1 * t per entry, sum 0.3 t; sum > 1 first at t = 4
    assert int(res.nonfinite_step[0]) == 4
    np.testing.assert_allclose(res.inputs[0, 0], np.full(3, 0.3), rtol=1e-6)
    assert np.isfinite(float(res.values[0]))
    with pytest.raises(FloatingPointError, match=r"^objective: .*step 4 .*last finite"):
        actmax.maximize(KEY, MLP, MLP_V, obj, **kw)
    with pytest.raises(ValueError, match=r"^objective: the loss or gradient became NaN/inf"):
        jaxinterp.checked(lambda k: actmax.maximize(k, MLP, MLP_V, obj, **kw))(KEY)
