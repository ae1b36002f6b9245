"""maximize and top_k_examples: analytic optima, batched == one-at-a-time, real models."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp import actmax
from jaxinterp.capture import capture


def _unit_factory(path):
    return lambda u: actmax.neuron(path, u)


def test_linear_unit_reaches_analytic_optimum(mlp):
    # dense_0 (pre-activation) is linear in the input: w . x + b, maximal on the ball of
    # radius r at x = r w / ||w||, with value r ||w|| + b.
    r, units = 2.0, jnp.asarray([0, 3, 17, 64, 127])
    res = jax.jit(
        lambda k, u: actmax.maximize(
            k, mlp.model, mlp.variables, _unit_factory("dense_0"), u,
            param=actmax.norm_ball((64,), r),
        )
    )(jax.random.key(0), units)  # fmt: skip
    w = np.asarray(mlp.variables["params"]["dense_0"]["kernel"])[:, units]
    b = np.asarray(mlp.variables["params"]["dense_0"]["bias"])[units]
    optimum = r * w.T / np.linalg.norm(w, axis=0)[:, None]
    assert res.inputs.shape == (5, 1, 64) and res.traces.shape == (5, 512)
    np.testing.assert_allclose(res.inputs[:, 0], optimum, atol=1e-5)
    np.testing.assert_allclose(res.values, r * np.linalg.norm(w, axis=0) + b, rtol=1e-5)
    assert np.all(np.asarray(res.nonfinite_step) == -1)
    # the trace is the objective during the ascent: it ends at the optimum value
    np.testing.assert_allclose(res.traces[:, -1], res.values, rtol=1e-4)


@pytest.fixture(scope="module")
def cnn_runs(cnn):
    """Class logits and hidden units of the digits CNN, batched and in chunks."""
    kw = dict(
        param=actmax.fourier((8, 8, 1)),
        steps=60,
        transforms=(actmax.pad(1), actmax.jitter(2)),
        regularizers=(1e-3 * actmax.total_variation(),),
    )
    keys = jax.random.split(jax.random.key(1), 6)
    units = jnp.asarray([0, 5, 9, 20, 33, 41])
    f = jax.jit(
        lambda k, u, cs: actmax.maximize(
            k, cnn.model, cnn.variables, _unit_factory("act_2"), u, chunk_size=cs, **kw
        ),
        static_argnums=2,
    )
    return kw, keys, units, f(keys, units, None), f(keys, units, 3), f


def test_batched_equals_one_at_a_time_and_chunked(cnn_runs):
    kw, keys, units, full, chunked, f = cnn_runs
    for name in ("inputs", "traces", "values"):
        got, want = getattr(chunked, name), getattr(full, name)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for i in (0, 4):
        one = f(keys[i : i + 1], units[i : i + 1], None)
        np.testing.assert_allclose(one.inputs[0], full.inputs[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one.traces[0], full.traces[i], rtol=1e-5, atol=1e-5)
    again = f(keys, units, None)  # same keys -> same result
    np.testing.assert_array_equal(again.inputs, full.inputs)
    other = f(jax.random.split(jax.random.key(2), 6), units, None)
    assert not np.allclose(other.inputs, full.inputs)


def test_values_are_the_models_own_activations(cnn, cnn_runs):
    _, _, units, full, _, _ = cnn_runs
    x = full.inputs[:, 0]  # [target, 8, 8, 1]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    _, acts = cnn.model.apply(cnn.variables, x, capture_intermediates=True)
    hidden = acts["intermediates"]["act_2"]["__call__"][0]
    np.testing.assert_allclose(full.values, hidden[np.arange(6), units], rtol=1e-5, atol=1e-5)


def test_optimized_inputs_beat_every_dataset_example(cnn, digits):
    data = np.concatenate([digits.train.x, digits.test.x])
    cases = [
        (lambda c: actmax.class_logit(c), jnp.arange(10)),
        (_unit_factory("act_2"), jnp.arange(0, 64, 4)),
        (lambda c: actmax.channel("act_1", c), jnp.arange(16)),
    ]
    for fac, targets in cases:
        res = jax.jit(
            lambda k, t, fac=fac: actmax.maximize(
                k, cnn.model, cnn.variables, fac, t, param=actmax.pixel((8, 8, 1)), steps=150
            )
        )(jax.random.key(0), targets)
        top = actmax.top_k_examples(cnn.model, cnn.variables, fac, targets, data, k=1)
        alive = np.asarray(top.values[:, 0]) > 0
        assert alive.sum() >= len(targets) // 2
        best_data = np.asarray(top.values[:, 0])[alive]
        assert np.all(np.asarray(res.values)[alive] > best_data), (res.values, top.values)


def test_top_k_matches_brute_force(cnn, digits):
    data = digits.test.x[:300]
    units = jnp.asarray([1, 7, 30])
    top = actmax.top_k_examples(
        cnn.model, cnn.variables, _unit_factory("act_2"), units, data, k=5, chunk_size=64
    )
    _, acts = cnn.model.apply(cnn.variables, data, capture_intermediates=True)
    hidden = np.asarray(acts["intermediates"]["act_2"]["__call__"][0])[:, units].T  # [t, n]
    order = np.argsort(-hidden, axis=1, kind="stable")[:, :5]
    np.testing.assert_allclose(top.values, np.take_along_axis(hidden, order, 1), rtol=1e-5)
    np.testing.assert_allclose(
        np.take_along_axis(hidden, np.asarray(top.indices), 1), top.values, rtol=1e-5
    )
    # streaming an iterable of chunks gives the same answer; k larger than the data pads
    chunks = (data[i : i + 50] for i in range(0, 300, 50))
    top2 = actmax.top_k_examples(
        cnn.model, cnn.variables, _unit_factory("act_2"), units, chunks, k=5, chunk_size=64
    )
    np.testing.assert_allclose(top2.values, top.values, rtol=1e-6)
    small = actmax.top_k_examples(cnn.model, cnn.variables, actmax.neuron("act_2", 1), None,
                                  data[:3], k=5)  # fmt: skip
    assert np.isneginf(small.values[0, 3:]).all() and (small.indices[0, 3:] == -1).all()


def test_soft_prompt_recovers_the_offset_mechanism(offset_tf, offset_nnx):
    # offset-3 copy model: the logit of token v at the last position is largest when the token
    # three positions back is v. Maximizing it over soft prompts must put v there.
    cfg = offset_tf.model.cfg
    table = offset_tf.variables["params"]["embed"]["embedding"]
    kw = dict(param=actmax.soft_prompt(table, cfg.seq_len), steps=50)
    fac = lambda v: actmax.class_logit(v, position=cfg.seq_len - 1)
    targets = jnp.arange(cfg.vocab)
    res = actmax.maximize(
        jax.random.key(0), offset_tf.model, offset_tf.variables, fac, targets, **kw
    )
    ids = actmax.nearest_tokens(res.inputs[:, 0], table)  # [target, seq]
    np.testing.assert_array_equal(ids[:, -1 - 3], np.arange(cfg.vocab))
    logits = offset_tf.model.apply(offset_tf.variables, ids)
    np.testing.assert_array_equal(logits[:, -1].argmax(-1), np.arange(cfg.vocab))
    res_nnx = actmax.maximize(jax.random.key(0), offset_nnx, None, fac, targets, **kw)
    np.testing.assert_allclose(res_nnx.inputs, res.inputs, rtol=1e-4, atol=1e-4)


def test_init_from_inputs_and_fixed_objective(cnn, digits):
    x0 = jnp.asarray(digits.test.x[:3])[:, None]  # [target=3, batch=1, 8, 8, 1]
    x0 = jnp.clip(x0, 0.02, 0.98)
    obj = actmax.class_logit(4)
    res = actmax.maximize(
        jax.random.split(jax.random.key(0), 3), cnn.model, cnn.variables, obj,
        param=actmax.pixel((8, 8, 1)), steps=3, init=x0, optimizer=optax.sgd(0.0),
    )  # fmt: skip
    np.testing.assert_allclose(res.inputs, x0, atol=1e-4)
    logits = cnn.model.apply(cnn.variables, x0[:, 0])[:, 4]
    np.testing.assert_allclose(res.traces[:, 0], logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.values, logits, rtol=1e-4, atol=1e-4)


def test_diversity_spreads_a_batch(cnn):
    div = actmax.diversity("act_1")
    kw = dict(param=actmax.pixel((8, 8, 1), batch=3, sd=0.5), steps=60, optimizer=optax.adam(0.05))
    obj = actmax.channel("act_1", 2)
    plain = actmax.maximize(jax.random.key(3), cnn.model, cnn.variables, obj, **kw)
    diverse = actmax.maximize(jax.random.key(3), cnn.model, cnn.variables, obj + 5.0 * div, **kw)
    cap = capture(cnn.model, cnn.variables, select="act_1")
    sims = [float(-div(cap(r.inputs[0])[1])) for r in (plain, diverse)]
    assert sims[1] < sims[0] - 0.1, sims


def test_nonfinite_ascent_raises(cnn):
    bad = actmax.Objective(lambda a: jnp.log(a["act_2"][:, 0] - 1e6).mean(), ("act_2",), "bad")
    kw = dict(param=actmax.pixel((8, 8, 1)), steps=5)
    with pytest.raises(FloatingPointError, match="^objective: .*NaN/inf for targets \\[0\\]"):
        actmax.maximize(jax.random.key(0), cnn.model, cnn.variables, bad, **kw)
    res = jax.jit(lambda k: actmax.maximize(k, cnn.model, cnn.variables, bad, **kw))(
        jax.random.key(0)
    )
    assert int(res.nonfinite_step[0]) == 0


def test_argument_errors(cnn):
    m, v = cnn.model, cnn.variables
    p = actmax.pixel((8, 8, 1))
    fac = _unit_factory("act_2")
    with pytest.raises(TypeError, match="param"):
        actmax.maximize(jax.random.key(0), m, v, fac, jnp.arange(2), param=None)
    with pytest.raises(ValueError, match="leading \\[target\\] axis"):
        actmax.maximize(jax.random.key(0), m, v, fac, {"a": jnp.arange(2), "b": jnp.arange(3)},
                        param=p)  # fmt: skip
    with pytest.raises(ValueError, match="^key: expected 2 keys"):
        actmax.maximize(jax.random.split(jax.random.key(0), 3), m, v, fac, jnp.arange(2), param=p)
    with pytest.raises(ValueError, match="init: expected"):
        actmax.maximize(jax.random.key(0), m, v, fac, jnp.arange(2), param=p,
                        init=jnp.zeros((2, 8, 8, 1)))  # fmt: skip
    with pytest.raises(ValueError, match="targets: an objective factory needs targets"):
        actmax.maximize(jax.random.key(0), m, v, fac, param=p)
    with pytest.raises(KeyError, match="Available"):
        actmax.maximize(jax.random.key(0), m, v, _unit_factory("nope"), jnp.arange(2), param=p,
                        steps=2)  # fmt: skip
    with pytest.raises(ValueError, match=r"^unit: expected an index in \[0, 64\)"):
        actmax.maximize(jax.random.key(0), m, v, actmax.neuron("act_2", 99), param=p, steps=2)


def test_size_changing_transforms_and_values(cnn):
    # a 4x4 input grows to the CNN's 8x8 through pad(3) + jitter(2); the final value is
    # measured on the edge-padded 8x8 image, checked against the model itself.
    res = actmax.maximize(
        jax.random.key(0), cnn.model, cnn.variables, actmax.class_logit(3),
        param=actmax.pixel((4, 4, 1)), steps=20, transforms=(actmax.pad(3), actmax.jitter(2)),
    )  # fmt: skip
    x = np.pad(np.asarray(res.inputs[:, 0]), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="edge")
    logit = cnn.model.apply(cnn.variables, x)[:, 3]
    np.testing.assert_allclose(res.values, logit, rtol=1e-5, atol=1e-5)


def test_direction_targets_pytree_reach_analytic_optimum(mlp):
    # direction v in dense_0 space: (x W + b) . v is linear in x with weight W v.
    vs = jax.random.normal(jax.random.key(5), (3, 128))
    res = actmax.maximize(
        jax.random.key(0), mlp.model, mlp.variables,
        lambda t: actmax.direction("dense_0", t["v"]), {"v": vs},
        param=actmax.norm_ball((64,), 1.5), steps=300,
    )  # fmt: skip
    wv = np.asarray(mlp.variables["params"]["dense_0"]["kernel"]) @ np.asarray(vs).T  # [64, 3]
    np.testing.assert_allclose(
        res.inputs[:, 0], 1.5 * (wv / np.linalg.norm(wv, axis=0)).T, atol=1e-4
    )


def test_redirected_relu_revives_a_unit_that_starts_inactive(cnn, digits):
    """A unit of act_2 that is 0 on a black image but active on some digit: plain gradient
    ascent from the black image never moves (ReLU gradient 0); with redirect_relu it does."""
    cap = capture(cnn.model, cnn.variables, select="act_2")
    black = jnp.zeros((1, 8, 8, 1))
    at_black = np.asarray(cap(black)[1]["act_2"][0])
    on_data = np.asarray(cap(jnp.asarray(digits.train.x[:500]))[1]["act_2"]).max(0)
    units = np.flatnonzero((at_black == 0) & (on_data > 0))[:3]
    assert len(units) >= 1, "no unit inactive on black but active on a digit"
    init = jnp.broadcast_to(black, (len(units), 1, 8, 8, 1))
    # no sigmoid: from a black image the input gets the gradient as is (not squashed by 1e-4)
    kw = dict(param=actmax.pixel((8, 8, 1), sigmoid=False), steps=40, init=init)
    run = lambda r: actmax.maximize(  # noqa: E731
        jax.random.key(0), cnn.model, cnn.variables, _unit_factory("act_2"),
        jnp.asarray(units), redirect_relu=r, **kw,
    )  # fmt: skip
    plain, redirected = run(0), run(20)
    np.testing.assert_array_equal(plain.values, 0.0)
    np.testing.assert_array_equal(plain.traces, 0.0)  # no gradient ever reached the input
    assert np.all(np.asarray(redirected.values) > 0), redirected.values
    # the values are the model's own activations of the returned inputs
    acts = np.asarray(jax.vmap(lambda x: cap(x)[1]["act_2"][0])(redirected.inputs))
    np.testing.assert_allclose(redirected.values, acts[np.arange(len(units)), units], rtol=1e-5)


def test_same_configuration_compiles_once(cnn):
    """A second call with freshly built (equal) objective factory, parameterization,
    transforms, regularizers and optimizer reuses the compiled program; other units, weights
    and keys are traced arguments."""
    from jaxinterp.actmax._maximize import _run_jit, _run_jit_cpu

    def call(units, tv, seed):
        return actmax.maximize(
            jax.random.key(seed), cnn.model, cnn.variables,
            lambda u: actmax.neuron("act_2", u), units,
            param=actmax.pixel((8, 8, 1)), steps=3, optimizer=optax.adam(0.05),
            transforms=[actmax.pad(1), actmax.jitter(1)],
            regularizers=[tv * actmax.total_variation()],
        )  # fmt: skip

    size = lambda: _run_jit._cache_size() + _run_jit_cpu._cache_size()  # noqa: E731
    first = call(jnp.arange(4), 0.01, 0)
    before = size()
    second = call(jnp.arange(4, 8), 0.02, 1)
    assert size() == before
    # and the cached program computes the second configuration, not the first
    ref = jax.jit(lambda k: actmax.maximize(
        k, cnn.model, cnn.variables, lambda u: actmax.neuron("act_2", u + 4), jnp.arange(4),
        param=actmax.pixel((8, 8, 1)), steps=3, optimizer=optax.sgd(1.0) if False else
        optax.adam(0.05), transforms=[actmax.pad(1), actmax.jitter(1)],
        regularizers=[0.02 * actmax.total_variation()]))(jax.random.key(1))  # fmt: skip
    np.testing.assert_allclose(second.values, ref.values, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first.values, second.values)
    # a different structure compiles anew
    call3 = actmax.maximize(
        jax.random.key(0), cnn.model, cnn.variables, lambda u: actmax.channel("act_1", u),
        jnp.arange(4), param=actmax.pixel((8, 8, 1)), steps=3,
    )  # fmt: skip
    assert call3.values.shape == (4,) and size() == before + 1


def test_automatic_chunks_on_cpu_for_small_models_with_large_activations(cnn):
    """``chunk_size=None`` on CPU: a small model whose targets' activations together pass
    8 MB runs them a few at a time (the largest divisor of the target count with at most 1 MB
    of its largest activation per chunk), with the results of running them all at once; the
    digits CNN (5 KB per target) and models over 16 MB are not chunked."""
    import flax.linen as nn

    from jaxinterp._keys import static
    from jaxinterp.actmax import _maximize

    class Wide(nn.Module):
        @nn.compact
        def __call__(self, x):
            a = nn.relu(nn.Conv(32, (3, 3), name="conv")(x))  # [1, 64, 64, 32]: 512 KB
            self.sow("intermediates", "a", a)
            return a.mean((1, 2))

    model = Wide()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    param = actmax.pixel((64, 64, 3))
    seen = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)

    def auto(n, model=model, variables=variables, param=param, seen=seen):
        return _maximize._auto_chunk(static(model), variables, None, param, seen, n)

    assert auto(12) is None  # 12 x 512 KB = 6 MB: all at once
    assert auto(24) == 2  # 12 MB: 2 per chunk (1 MB)
    assert auto(17) == 1  # 8.5 MB, 17 is prime: one at a time, no remainder program
    big = {"params": {"w": jnp.zeros((5 << 20,), jnp.float32)}}  # 20 MB of variables
    assert _maximize._auto_chunk(static(model), big, None, param, seen, 24) is None
    scalar = {**variables, "consts": {"s": 2.0}}  # a Python scalar leaf: read by value
    assert _maximize._auto_chunk(static(model), scalar, None, param, seen, 24) == 2
    digits = jax.ShapeDtypeStruct((1, 9, 9, 1), jnp.float32)
    assert auto(64, cnn.model, cnn.variables, actmax.pixel((8, 8, 1)), digits) is None

    def job(**kw):
        return actmax.maximize(
            jax.random.key(1), model, variables, lambda c: actmax.channel("conv", c),
            jnp.arange(24) % 32, param=param, steps=3, **kw,
        )  # fmt: skip

    ref = job(chunk_size=24)  # one chunk: all at once
    calls, real = [], _maximize.chunked
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_maximize, "chunked", lambda f, c: calls.append(c) or real(f, c))
        got = job()
    assert calls == [2]
    np.testing.assert_allclose(got.values, ref.values, rtol=1e-5)
    np.testing.assert_allclose(got.inputs, ref.inputs, rtol=1e-5, atol=1e-6)


def test_automatic_chunks_for_an_nnx_model_with_rng_streams():
    """An nnx model holding PRNG-key state (``nnx.Dropout(rngs=...)``) is sized and chunked
    like any other, with the results of one chunk of all targets."""
    from flax import nnx

    from jaxinterp.actmax import _maximize

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv = nnx.Conv(3, 32, (3, 3), rngs=rngs)
            self.drop = nnx.Dropout(0.0, rngs=rngs)

        def __call__(self, x):
            return self.drop(jax.nn.relu(self.conv(x))).mean((1, 2))

    net = Net(nnx.Rngs(0))
    graphdef, state = nnx.split(net)
    seen = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    param = actmax.pixel((64, 64, 3))
    assert _maximize._auto_chunk(("nnx", graphdef), state, None, param, seen, 24) == 2

    def job(**kw):
        return actmax.maximize(
            jax.random.key(1), net, None, lambda c: actmax.channel("conv", c),
            jnp.arange(24) % 32, param=param, steps=2, **kw,
        )  # fmt: skip

    np.testing.assert_allclose(job().values, job(chunk_size=24).values, rtol=1e-5)
