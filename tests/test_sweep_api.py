"""The sweep API a researcher coming from TransformerLens meets (issue 14).

* per-example effects and standard errors (``PatchResult.per_example``, ``normalized_se``)
  against patching each example alone by hand and numpy's standard error;
* globs in ``capture_sites`` against the exact sites;
* compile reuse: plain calls with the same shapes compile nothing new, the README's jitted
  idiom compiles once per batch shape (counted with jax's trace events, never timed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _traces import traced_names

from jaxinterp import interventions as iv
from jaxinterp.interventions import _compiled

BATCH = 6


@pytest.fixture(scope="module")
def setup(offset_tf):
    task = iv.offset_patching_task(jax.random.key(3), BATCH, offset_tf.model.cfg, offset=3)
    return offset_tf.model, offset_tf.variables, task


def _example(task, i):
    """Example ``i`` alone, as a batch of one."""
    return jax.tree.map(lambda x: x[i : i + 1], task)


def _manual_per_example(model, variables, task, sites):
    """``[site, batch]``: each example patched alone, one head at a time, with ``intervene``."""
    out = np.zeros((sites.layer.shape[0], BATCH))
    for layer, path in enumerate(sites.paths):

        @jax.jit
        def one(t, head, path=path):
            _, src = iv.capture_sites(model, variables, [path])(t.clean)
            edit = iv.replace(src[path], at={-2: head})
            logits = iv.intervene(model, variables, {path: edit})(t.corrupted)
            return t.metric(logits)

        for s in np.flatnonzero(np.asarray(sites.layer) == layer):
            head = sites.index[s, 0]
            for i in range(BATCH):
                out[s, i] = float(one(_example(task, i), head))
    return out


def _numpy_se(per_example, corrupted, clean):
    d = np.asarray(per_example, np.float64) - np.asarray(corrupted, np.float64)[None]
    denom = abs(np.mean(clean) - np.mean(corrupted))
    return d.std(axis=1, ddof=1) / np.sqrt(d.shape[1]) / denom


@pytest.fixture(scope="module")
def manual(setup):
    model, variables, task = setup
    sites = iv.head_sites(2, 4)
    per = _manual_per_example(model, variables, task, sites)
    clean = np.asarray(task.per_example_metric(model.apply(variables, task.clean)))
    corr = np.asarray(task.per_example_metric(model.apply(variables, task.corrupted)))
    return sites, per, clean, corr


SWEEPS = {
    "plain": lambda m, v, t, s: iv.patch_sweep(m, v, t.clean, t.corrupted, s, t.per_example_metric),
    "jit": lambda m, v, t, s: jax.jit(
        lambda v, t: iv.patch_sweep(m, v, t.clean, t.corrupted, s, t.per_example_metric)
    )(v, t),
    "full-forward-chunk-1": lambda m, v, t, s: iv.patch_sweep(
        m, v, t.clean, t.corrupted, s, t.per_example_metric, chunk_size=1, reuse_prefix=False
    ),
    "mesh-jit": lambda m, v, t, s: jax.jit(
        lambda v, t: iv.patch_sweep(
            m, v, t.clean, t.corrupted, s, t.per_example_metric, mesh=jax.make_mesh((1,), ("s",))
        )
    )(v, t),
}


@pytest.mark.parametrize("how", list(SWEEPS))
def test_per_example_effects_equal_patching_each_example_alone(setup, manual, how):
    model, variables, task = setup
    sites, per, clean, corr = manual
    res = SWEEPS[how](model, variables, task, sites)
    assert res.per_example.shape == (8, BATCH) and res.normalized_se.shape == (8,)
    np.testing.assert_allclose(res.per_example, per, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.clean_per_example, clean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.corrupted_per_example, corr, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.normalized_se, _numpy_se(per, corr, clean), rtol=1e-3)
    # the scalar fields are the batch means: what the scalar metric gives
    np.testing.assert_allclose(res.patched, per.mean(1), rtol=1e-4, atol=1e-4)
    scalar = iv.patch_sweep(model, variables, task.clean, task.corrupted, sites, task.metric)
    assert scalar.per_example is None and scalar.normalized_se is None
    np.testing.assert_allclose(res.normalized, scalar.normalized, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(res.clean, scalar.clean, rtol=1e-5)
    # the layer-0 heads carry the answer: their effect is clearly above its standard error
    assert float(res.normalized[:4].max() / res.normalized_se[:4].max()) > 2


@pytest.mark.parametrize("jit", [False, True])
def test_per_example_attribution_equals_attribution_of_each_example(setup, jit):
    model, variables, task = setup
    sites = iv.head_position_sites(2, 4, 16)

    def attrib(v, t, metric):
        return iv.attribution_patch(model, v, t.clean, t.corrupted, sites, metric)

    f = jax.jit(attrib, static_argnums=2) if jit else attrib
    res = f(variables, task, task.per_example_metric)
    assert res.per_example.shape == (128, BATCH)
    effect = np.asarray(res.per_example) - np.asarray(res.corrupted_per_example)[None]
    for i in range(BATCH):
        one = _example(task, i)
        ref = attrib(variables, one, one.metric)
        np.testing.assert_allclose(effect[:, i], ref.patched - ref.corrupted, atol=1e-4)
    scalar = attrib(variables, task, task.metric)
    np.testing.assert_allclose(res.patched, scalar.patched, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(res.normalized, scalar.normalized, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        res.normalized_se,
        _numpy_se(res.per_example, res.corrupted_per_example, res.clean_per_example),
        rtol=1e-3,
        atol=1e-7,
    )


def test_logit_diff_per_example_is_the_mean_s_terms():
    logits = jax.random.normal(jax.random.key(0), (5, 7, 11))
    answer, wrong, pos = jnp.arange(5), jnp.arange(5) + 3, jnp.array([0, 6, -1, 2, 3])
    per = iv.logit_diff(logits, answer, wrong, pos, reduce="none")
    rows = np.asarray(logits)[np.arange(5), np.asarray(pos)]
    ref = rows[np.arange(5), np.asarray(answer)] - rows[np.arange(5), np.asarray(wrong)]
    np.testing.assert_allclose(per, ref, rtol=1e-6)
    np.testing.assert_allclose(iv.logit_diff(logits, answer, wrong, pos), ref.mean(), rtol=1e-6)


# ---------------------------------------------------------------- globs in capture_sites

GLOBS = [
    ("block_*:input", ["block_0:input", "block_1:input"]),
    ("block_*/ln_2:input", ["block_0/ln_2:input", "block_1/ln_2:input"]),
    (
        "block_*/attn/out:input|per_head",
        ["block_0/attn/out:input|per_head", "block_1/attn/out:input|per_head"],
    ),
    ("block_?/mlp", ["block_0/mlp", "block_1/mlp"]),
    ("**/fc_in:input", ["block_0/mlp/fc_in:input", "block_1/mlp/fc_in:input"]),
]


@pytest.mark.parametrize("glob, exact", GLOBS)
def test_capture_sites_glob_equals_exact_sites(setup, variant, glob, exact):
    model, variables, task = setup
    _, got = variant(iv.capture_sites(model, variables, [glob]))(task.clean)
    _, ref = iv.capture_sites(model, variables, exact)(task.clean)
    assert sorted(got) == sorted(exact)
    for k in exact:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)


def test_capture_sites_glob_call_order_and_edits(setup):
    model, variables, task = setup
    _, got = iv.capture_sites(model, variables, ["block_*/ln_*:input", "ln_f"])(task.clean)
    order = ["block_0/ln_1:input", "block_0/ln_2:input", "block_1/ln_1:input"]
    assert list(got) == [*order, "block_1/ln_2:input", "ln_f"]  # call order, not sorted
    # recorded after edits, like exact sites: zeroing block_1's input shows in the glob
    edits = {"block_*:input": iv.zero()}
    _, acts = iv.capture_sites(model, variables, ["block_*:input"], edits=edits)(task.clean)
    assert float(jnp.abs(acts["block_1:input"]).max()) == 0.0


# ------------------------------------------------------------------------ compile reuse


def test_plain_calls_reuse_the_compiled_program(setup):
    model, variables, task = setup
    sites = iv.head_sites(2, 4)
    other = iv.offset_patching_task(jax.random.key(9), BATCH, model.cfg, offset=3)
    bigger = iv.offset_patching_task(jax.random.key(9), BATCH + 2, model.cfg, offset=3)
    for fn in (iv.patch_sweep, iv.attribution_patch):
        first = fn(model, variables, task.clean, task.corrupted, sites, task.metric)
        n = _compiled.cache_size()
        # new data of the same shapes and the bound method of another task: no new program
        again = fn(model, variables, other.clean, other.corrupted, sites, other.metric)
        assert _compiled.cache_size() == n, fn.__name__
        assert not np.allclose(again.patched, first.patched)  # the new data was used
        # a metric written anew at each call (a lambda closing over new arrays): one program
        got = [
            fn(model, variables, t.clean, t.corrupted, sites, lambda o: t.metric(o))  # noqa: B023
            for t in (task, other)
        ]
        assert _compiled.cache_size() == n + 1, fn.__name__
        np.testing.assert_allclose(got[1].patched, again.patched, rtol=1e-6)  # not stale
        # a new batch shape compiles once, then is reused
        fn(model, variables, bigger.clean, bigger.corrupted, sites, bigger.metric)
        k = _compiled.cache_size()
        assert k == n + 2, fn.__name__
        fn(model, variables, bigger.corrupted, bigger.clean, sites, bigger.metric)
        fn(model, variables, task.clean, task.corrupted, sites, task.metric)
        assert _compiled.cache_size() == k, fn.__name__
        # the compiled result equals the sweep traced inline under the caller's jit
        inline = jax.jit(lambda v, t, fn=fn: fn(model, v, t.clean, t.corrupted, sites, t.metric))(
            variables, task
        )
        np.testing.assert_allclose(first.patched, inline.patched, rtol=1e-5, atol=1e-5)


def test_nnx_reuses_and_traces_run_inline(setup, offset_nnx):
    model, variables, task = setup
    sites = iv.head_sites(2, 4)
    other = iv.offset_patching_task(jax.random.key(9), BATCH, model.cfg, offset=3)
    ref = iv.patch_sweep(model, variables, other.clean, other.corrupted, sites, other.metric)
    iv.patch_sweep(offset_nnx, None, task.clean, task.corrupted, sites, task.metric)
    n = _compiled.cache_size()
    got = iv.patch_sweep(offset_nnx, None, other.clean, other.corrupted, sites, other.metric)
    assert _compiled.cache_size() == n  # the nnx state is traced, the graph is the key
    np.testing.assert_allclose(got.patched, ref.patched, rtol=1e-5, atol=1e-5)
    # under a trace with closed-over data (eval_shape, the caller's jit) it runs inline
    shape = jax.eval_shape(
        lambda: iv.patch_sweep(model, variables, task.clean, task.corrupted, sites, task.metric)
    )
    assert shape.patched.shape == (8,) and _compiled.cache_size() == n


def test_readme_jit_idiom_compiles_once_per_batch_shape(setup):
    model, variables, _ = setup
    sites = iv.head_sites(2, 4)
    sweep = jax.jit(
        lambda v, task: iv.patch_sweep(model, v, task.clean, task.corrupted, sites, task.metric)
    )
    traced = []  # jax's own trace events (the C++ dispatch-cache size once read 0 in CI)
    for seed, batch in [(0, 4), (1, 4), (2, 8), (3, 4), (4, 8)]:
        task = iv.offset_patching_task(jax.random.key(seed), batch, model.cfg, offset=3)
        if "<lambda>" in traced_names(lambda task=task: sweep(variables, task)):
            traced.append(seed)
    assert traced == [0, 2]  # batch 4 and batch 8, each traced once


def test_compiled_call_still_raises_value_errors_eagerly(setup):
    model, variables, task = setup
    sites = iv.head_sites(2, 4)
    bad = lambda o: iv.logit_diff(o, 1, 2, jnp.array([3, 20, 3, 3, 3, 3]), reduce="none")
    with pytest.raises(ValueError, match=r"^position: expected indices in \[-16, 16\), got 20"):
        iv.patch_sweep(model, variables, task.clean, task.corrupted, sites, bad)
    with pytest.raises(ValueError, match="^corrupted: equals clean"):
        iv.attribution_patch(model, variables, task.clean, task.clean, sites, task.metric)


def test_result_axis_names_convert_to_transformerlens_order(setup):
    model, variables, task = setup
    sites = iv.head_position_sites(2, 4, 16)
    res = iv.attribution_patch(
        model, variables, task.clean, task.corrupted, sites, task.per_example_metric
    )
    assert sites.names == ("layer", "head", "position")
    grid = sites.unflatten(res.normalized)  # [layer, head, position]
    tl = jnp.moveaxis(grid, 2, 1)  # TransformerLens: [layer, pos, head]
    s = int(np.flatnonzero((np.asarray(sites.layer) == 1) & (np.asarray(sites.index[:, 0]) == 2)
                           & (np.asarray(sites.index[:, 1]) == 7))[0])  # fmt: skip
    assert float(tl[1, 7, 2]) == float(res.normalized[s])
    assert sites.unflatten(res.per_example).shape == (2, 4, 16, BATCH)


_TASK = None  # read by the metric below as a global


def test_metric_reading_a_global_sees_its_new_value(setup):
    """A metric keyed on its code must not keep the arrays of the first call's globals."""
    global _TASK
    model, variables, _ = setup
    sites = iv.head_sites(2, 4)
    for seed in (5, 6):
        _TASK = iv.offset_patching_task(jax.random.key(seed), BATCH, model.cfg, offset=3)
        t = _TASK
        got = iv.attribution_patch(
            model,
            variables,
            t.clean,
            t.corrupted,
            sites,
            lambda o: _TASK.metric(o),  # noqa: B023
        )
        ref = iv.attribution_patch(model, variables, t.clean, t.corrupted, sites, t.metric)
        np.testing.assert_allclose(got.patched, ref.patched, rtol=1e-6)


class _Metric:
    """A metric object of one's own class, hashed by identity and mutated between calls."""

    def __init__(self, task):
        self.task = task

    def __call__(self, logits):
        return self.task.metric(logits)


def test_metric_object_mutated_between_calls_is_not_stale(setup):
    model, variables, task = setup
    sites = iv.head_sites(2, 4)
    other = iv.offset_patching_task(jax.random.key(9), BATCH, model.cfg, offset=3)
    metric = _Metric(task)
    for fn in (metric, metric.__call__):
        metric.task = task
        iv.attribution_patch(model, variables, task.clean, task.corrupted, sites, fn)
        n = _compiled.cache_size()
        metric.task = other  # same object, new arrays: the program is reused, not its values
        got = iv.attribution_patch(model, variables, task.clean, task.corrupted, sites, fn)
        assert _compiled.cache_size() == n
        ref = iv.attribution_patch(
            model, variables, task.clean, task.corrupted, sites, other.metric
        )
        np.testing.assert_allclose(got.patched, ref.patched, rtol=1e-6)
