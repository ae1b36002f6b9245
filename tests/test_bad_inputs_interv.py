"""Bad inputs to jaxinterp.interventions and the attention analysis functions.

Each row calls one public function with one realistic mistake and asserts the exception type
and that the message starts with the argument's name. Rows marked ``checked`` pass a traced
value under ``jax.jit`` through :func:`jaxinterp.checked`; :func:`test_traced_bad_values_poison`
checks that the same calls under a plain ``jit`` give NaN instead of a clamped or wrapped
answer (the value-check policy). Regression rows for the silent wrong answers of issue 10
are marked ``regression``; those of issue 11 (head idioms on other layouts, edits on shared
modules, array edits on tuple outputs) ``regression-11``. Issue 14 added globs in
``capture_sites``, per-example metrics and compiled plain sweeps (whose value checks still
raise).
"""

from __future__ import annotations

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp
from jaxinterp import attention as at
from jaxinterp import interventions as iv
from jaxinterp.models import Transformer, TransformerConfig

CFG = TransformerConfig()  # 2 layers, 4 heads, seq 16, vocab 16
X = jnp.ones((2, 4, 3))
W = jax.nn.softmax(jax.random.normal(jax.random.key(0), (2, 4, 6, 6)), -1)  # [layer, head, q, k]


class _TupleLayer(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, name="d")(x), x


class _TupleNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        h, _ = _TupleLayer(name="two")(x)
        return nn.Dense(2, name="out")(h)


def _tuple_sweep(site):
    x = jnp.ones((2, 3))
    m = _TupleNet()
    v = m.init(jax.random.key(0), x)
    sites = iv.site_grid([site], [(-1, 4)])
    return lambda t: iv.patch_sweep(m, v, x, 2 * x, sites, lambda o: o.sum())


@pytest.fixture(scope="module")
def tiny():
    """A randomly initialised 2-layer, 4-head transformer and a patching task (batch 2)."""
    model = Transformer(CFG)
    task = iv.offset_patching_task(jax.random.key(0), 2, CFG, position=8)
    variables = model.init(jax.random.key(1), task.clean)
    return model, variables, task


def _sweep(sites, metric=None, n=None, **kw):
    """patch_sweep on the task's first ``n`` examples (all: None) with ``metric`` (the task's
    scalar metric: None)."""

    def call(t):
        m, v, task = t
        metric_ = task.metric if metric is None else metric
        return iv.patch_sweep(m, v, task.clean[:n], task.corrupted[:n], sites, metric_, **kw)

    return call


def _attrib(sites, metric=None, **kw):
    """attribution_patch with ``metric`` (the task's scalar metric: None)."""

    def call(t):
        m, v, task = t
        metric_ = task.metric if metric is None else metric
        return iv.attribution_patch(m, v, task.clean, task.corrupted, sites, metric_, **kw)

    return call


def _checked_sweep(sites_fn):
    """patch_sweep under jit with the sites traced, through jaxinterp.checked."""

    def call(t):
        m, v, task = t
        f = lambda s: iv.patch_sweep(m, v, task.clean, task.corrupted, s, task.metric).patched
        return jaxinterp.checked(f)(sites_fn())

    return call


class _Twice(nn.Module):
    """One Dense called twice: a shared module."""

    @nn.compact
    def __call__(self, x):
        d = nn.Dense(3, name="mlp")
        return d(jnp.tanh(d(x)))


class _Cache(nn.Module):
    """A layer returning ``(cache, x)``."""

    @nn.compact
    def __call__(self, x):
        _, h = _CacheLayer(name="layer")(x)
        return h


class _CacheLayer(nn.Module):
    @nn.compact
    def __call__(self, x, cache=None):
        return cache, nn.Dense(3)(x)


def _small(model, edits):
    x = jnp.ones((2, 3))
    return iv.intervene(model, model.init(jax.random.key(0), x), edits)(x)


def _rows():
    # (id, call(tiny) -> anything, exception type, argument name the message starts with)
    key = jax.random.key(0)
    nan3 = jnp.array([1.0, np.nan, 3.0])
    logits = jnp.zeros((2, 16, 5))
    m = lambda t: t[0]
    v = lambda t: t[1]
    task = lambda t: t[2]
    return [
        # ----------------------------------------------- head layouts (regression-11)
        # the head idiom on the residual stream [batch, seq, d_model] selected position h
        (
            "regression-11-zero-head-on-3d",
            lambda t: iv.intervene(m(t), v(t), {"block_0": iv.zero(head=1)})(task(t).clean),
            ValueError,
            "head",
        ),
        ("regression-11-head-on-3d-direct", lambda t: iv.zero(head=1)(X), ValueError, "head"),
        # head_sites on a 3-axis activation patched sequence positions
        (
            "regression-11-head-sites-on-3d",
            _sweep(iv.head_sites(2, 4, template="block_{layer}")),
            ValueError,
            "sites",
        ),
        (
            "regression-11-head-sites-on-3d-attribution",
            _attrib(iv.head_sites(2, 4, template="block_{layer}")),
            ValueError,
            "sites",
        ),
        (
            "regression-11-head-sites-on-3d-capture",
            lambda t: iv.capture_sites(m(t), v(t), ["block_0|per_head"])(task(t).clean),
            ValueError,
            "sites",
        ),
        (
            "merged-site-on-per-head",
            lambda t: iv.intervene(m(t), v(t), {"block_0/attn/out:input|heads=4": iv.zero(head=0)})(
                task(t).clean
            ),
            ValueError,
            "edits",
        ),
        (
            "merged-edit-on-per-head",
            lambda t: iv.intervene(
                m(t), v(t), {"block_0/attn/out:input": iv.zero(head=0, heads=4)}
            )(task(t).clean),
            ValueError,
            "heads",
        ),
        ("heads-not-dividing", lambda t: iv.zero(heads=2)(X), ValueError, "heads"),
        ("heads-zero", lambda t: iv.zero(heads=0), ValueError, "heads"),
        ("heads-float", lambda t: iv.replace(X, heads=2.0), TypeError, "heads"),
        ("head-and-at-axis", lambda t: iv.zero(head=0, at={-2: 1}), ValueError, "head"),
        (
            "head-and-at-positive-axis",
            lambda t: iv.zero(head=0, at={2: 1})(jnp.ones((1, 2, 3, 4))),
            ValueError,
            "head",
        ),
        (
            "layout-suffix-unknown",
            lambda t: iv.intervene(m(t), v(t), {"block_0|heads=x": iv.zero()}),
            ValueError,
            "site",
        ),
        (
            "layout-suffix-zero-heads",
            lambda t: iv.capture_sites(m(t), v(t), ["block_0|heads=0"]),
            ValueError,
            "site",
        ),
        ("head_sites-merged-str", lambda t: iv.head_sites(2, 4, merged="yes"), TypeError, "merged"),
        (
            "head_sites-merged-and-suffix",
            lambda t: iv.head_sites(2, 4, template="b_{layer}:input|per_head", merged=True),
            ValueError,
            "merged",
        ),
        # ------------------------------------- shared modules, tuples (regression-11)
        # an edit without @K on a module called twice changed its first call only
        (
            "regression-11-shared-module-no-call",
            lambda t: _small(_Twice(), {"mlp": iv.zero(at={-1: 0})}),
            ValueError,
            "edits",
        ),
        (
            "regression-11-shared-module-glob-no-call",
            lambda t: _small(_Twice(), {"ml?": iv.zero(at={-1: 0})}),
            ValueError,
            "edits",
        ),
        # an array edit on (cache, x) failed with "None is not a valid value for jnp.array"
        (
            "regression-11-array-edit-on-tuple",
            lambda t: _small(_Cache(), {"layer": iv.zero()}),
            ValueError,
            "edits",
        ),
        (
            "array-edit-on-tuple-direct",
            lambda t: iv.zero()((None, jnp.ones(3))),
            TypeError,
            "act",
        ),
        (
            "tuple-element-missing",
            lambda t: _small(_Cache(), {"layer:output[2]": iv.zero()}),
            ValueError,
            "site",
        ),
        # ------------------------------------------------------------------ edits
        ("zero-int-out-of-range", lambda t: iv.zero(at={-2: 4})(X), ValueError, "at"),
        ("zero-negative-out-of-range", lambda t: iv.zero(at={-2: -5})(X), ValueError, "at"),
        ("zero-axis-out-of-range", lambda t: iv.zero(at={5: 0})(X), ValueError, "at"),
        ("zero-float-index", lambda t: iv.zero(at={-1: 1.5})(X), TypeError, "at"),
        ("zero-bool-index", lambda t: iv.zero(at={-1: True})(X), TypeError, "at"),
        ("zero-at-not-mapping", lambda t: iv.zero(at=2), TypeError, "at"),
        (
            "zero-array-index-out-of-range",
            lambda t: iv.zero(at={-2: jnp.array([1, 5])})(X),
            ValueError,
            "at",
        ),
        ("zero-2d-index", lambda t: iv.zero(at={-2: jnp.zeros((2, 2), int)})(X), ValueError, "at"),
        (
            "zero-bool-mask-wrong-length",
            lambda t: iv.zero(at={-1: jnp.array([True, False])})(X),
            ValueError,
            "at",
        ),
        ("zero-where-float", lambda t: iv.zero(where=jnp.ones((4, 1))), TypeError, "where"),
        (
            "zero-where-not-broadcast",
            lambda t: iv.zero(where=jnp.ones(5, bool))(X),
            ValueError,
            "where",
        ),
        (
            "zero-checked-traced-index",  # regression: a traced index used to select nothing
            lambda t: jaxinterp.checked(lambda h: iv.zero(at={-2: h})(X))(jnp.int32(7)),
            ValueError,
            "at",
        ),
        (
            "selection_mask-int-out-of-range",
            lambda t: iv.selection_mask((2, 4), at={-1: 4}),
            ValueError,
            "at",
        ),
        (
            "selection_mask-checked-traced",
            lambda t: jaxinterp.checked(lambda h: iv.selection_mask((2, 4), at={-1: h}))(
                jnp.int32(-9)
            ),
            ValueError,
            "at",
        ),
        (
            "selection_mask-where-bad-shape",
            lambda t: iv.selection_mask((2, 4), where=jnp.ones((3,), bool)),
            ValueError,
            "where",
        ),
        ("mean-empty", lambda t: iv.mean(jnp.ones((0, 3))), ValueError, "values"),
        ("mean-scalar", lambda t: iv.mean(1.0), ValueError, "values"),
        ("mean-strings", lambda t: iv.mean(["a", "b"]), TypeError, "values"),
        ("mean-not-broadcast", lambda t: iv.mean(jnp.ones((5, 7)))(X), ValueError, "values"),
        # issue 20: a tuple-valued site failed with "'tuple' object has no attribute 'shape'"
        ("patch_sweep-tuple-site", _tuple_sweep("two"), ValueError, "sites: 'two' is a tuple"),
        # issue 20, layouts: one [seq, d] reference was averaged over its positions
        (
            "mean-reference-without-n-axis",
            lambda t: iv.mean(jnp.arange(12.0).reshape(4, 3))(X),
            ValueError,
            "values: expected references",
        ),
        (
            "mean-reference-n-d-on-3d",
            lambda t: iv.mean(jnp.ones((7, 3)), at={-1: 0})(X),
            ValueError,
            "values: expected references",
        ),
        ("resample-int-key", lambda t: iv.resample(0, jnp.ones((3, 4, 3))), TypeError, "key"),
        (
            "resample-batch-of-keys",
            lambda t: iv.resample(jax.random.split(key, 2), jnp.ones((3, 4, 3))),
            TypeError,
            "key",
        ),
        (
            "resample-empty-pool",
            lambda t: iv.resample(key, jnp.ones((0, 4, 3))),
            ValueError,
            "pool",
        ),
        (
            "resample-pool-mismatch",
            lambda t: iv.resample(key, jnp.ones((3, 5, 3)))(X),
            ValueError,
            "pool",
        ),
        (
            "replace-not-broadcast",
            lambda t: iv.replace(jnp.ones((2, 5, 3)))(X),
            ValueError,
            "values",
        ),
        ("replace-strings", lambda t: iv.replace("abc"), TypeError, "values"),
        ("replace-bad-at", lambda t: iv.replace(X, at=[0]), TypeError, "at"),
        # ---------------------------------------------------------------- metrics
        # issue 20, layouts: one example's [seq, vocab] was read as [batch, vocab] and the
        # position ignored
        (
            "logit_diff-position-with-2d-logits",
            lambda t: iv.logit_diff(logits[0], 1, 2, 3),
            ValueError,
            "position",
        ),
        (
            "logit_diff-position-20-of-16",  # regression: used to become position 4
            lambda t: iv.logit_diff(logits, 1, 2, 20),
            ValueError,
            "position",
        ),
        (
            "logit_diff-position-minus-17",
            lambda t: iv.logit_diff(logits, 1, 2, -17),
            ValueError,
            "position",
        ),
        (
            "logit_diff-answer-out-of-vocab",
            lambda t: iv.logit_diff(logits, 5, 2),
            ValueError,
            "answer",
        ),
        (
            "logit_diff-wrong-negative",
            lambda t: iv.logit_diff(logits, 1, jnp.array([0, -1])),
            ValueError,
            "wrong",
        ),
        ("logit_diff-float-answer", lambda t: iv.logit_diff(logits, 1.0, 2), TypeError, "answer"),
        (
            "logit_diff-position-shape",
            lambda t: iv.logit_diff(logits, 1, 2, jnp.array([1, 2, 3])),
            ValueError,
            "position",
        ),
        (
            "logit_diff-logits-rank",
            lambda t: iv.logit_diff(jnp.zeros((2, 3, 4, 5)), 1, 2),
            ValueError,
            "logits",
        ),
        (
            "logit_diff-int-logits",
            lambda t: iv.logit_diff(jnp.zeros((2, 5), int), 1, 2),
            TypeError,
            "logits",
        ),
        (
            "logit_diff-checked-traced-position",
            lambda t: jaxinterp.checked(lambda p: iv.logit_diff(logits, 1, 2, p))(jnp.int32(20)),
            ValueError,
            "position",
        ),
        (
            "normalize-clean-equals-corrupted",
            lambda t: iv.normalize(jnp.ones(3), 1.0, 1.0),
            ValueError,
            "corrupted",
        ),
        (
            "normalize-nan-clean",
            lambda t: iv.normalize(jnp.ones(3), jnp.nan, 1.0),
            ValueError,
            "clean",
        ),
        (
            "normalize-clean-shape",
            lambda t: iv.normalize(jnp.ones(3), jnp.ones(4), 0.0),
            ValueError,
            "clean",
        ),
        (
            "normalize-checked-traced-equal",
            lambda t: jaxinterp.checked(iv.normalize)(jnp.ones(3), 2.0, 2.0),
            ValueError,
            "corrupted",
        ),
        (
            "spearman-nan-x",  # regression: used to return 0.4
            lambda t: iv.spearman(nan3, jnp.array([3.0, 1.0, 2.0])),
            ValueError,
            "x",
        ),
        (
            "spearman-inf-y",
            lambda t: iv.spearman(jnp.arange(3.0), jnp.array([1.0, jnp.inf, 0.0])),
            ValueError,
            "y",
        ),
        (
            "spearman-constant-x",
            lambda t: iv.spearman(jnp.ones(4), jnp.arange(4.0)),
            ValueError,
            "x",
        ),
        (
            "spearman-shape-mismatch",
            lambda t: iv.spearman(jnp.ones((2, 4)), jnp.ones((4, 2))),
            ValueError,
            "y",
        ),
        ("spearman-one-value", lambda t: iv.spearman(jnp.ones(1), jnp.ones(1)), ValueError, "x"),
        (
            "spearman-checked-traced-nan",
            lambda t: jaxinterp.checked(iv.spearman)(nan3, jnp.array([3.0, 1.0, 2.0])),
            ValueError,
            "x",
        ),
        # ------------------------------------------------------------------ tasks
        (
            "task-position-below-offset",  # regression: used to corrupt a wrapped position
            lambda t: iv.offset_patching_task(key, 4, CFG, offset=3, position=1),
            ValueError,
            "position",
        ),
        (
            "task-position-past-seq",
            lambda t: iv.offset_patching_task(key, 4, CFG, position=16),
            ValueError,
            "position",
        ),
        (
            "task-offset-past-seq",
            lambda t: iv.offset_patching_task(key, 4, CFG, offset=16),
            ValueError,
            "offset",
        ),
        ("task-int-key", lambda t: iv.offset_patching_task(0, 4, CFG), TypeError, "key"),
        ("task-zero-batch", lambda t: iv.offset_patching_task(key, 0, CFG), ValueError, "batch"),
        ("task-float-batch", lambda t: iv.offset_patching_task(key, 2.0, CFG), TypeError, "batch"),
        (
            "task-cfg-dict",
            lambda t: iv.offset_patching_task(key, 2, {"seq_len": 16}),
            TypeError,
            "cfg",
        ),
        # ------------------------------------------------------------------ sites
        (
            "site_grid-repeated-paths",
            lambda t: iv.site_grid(["a", "a"], [(-2, 3)]),
            ValueError,
            "paths",
        ),
        (
            "site_grid-string-paths",
            lambda t: iv.site_grid("block_0", [(-2, 3)]),
            TypeError,
            "paths",
        ),
        (
            "site_grid-bad-suffix",
            lambda t: iv.site_grid(["block_0:weights"], [(-2, 3)]),
            ValueError,
            "paths",
        ),
        ("site_grid-positive-axis", lambda t: iv.site_grid(["b"], [(2, 3)]), ValueError, "sizes"),
        ("site_grid-zero-size", lambda t: iv.site_grid(["b"], [(-2, 0)]), ValueError, "sizes"),
        ("site_grid-not-pairs", lambda t: iv.site_grid(["b"], [3]), TypeError, "sizes"),
        (
            "site_grid-names-count",
            lambda t: iv.site_grid(["b"], [(-2, 3)], ("layer",)),
            ValueError,
            "names",
        ),
        ("head_sites-negative-layers", lambda t: iv.head_sites(-1, 4), ValueError, "n_layers"),
        ("head_sites-zero-heads", lambda t: iv.head_sites(2, 0), ValueError, "n_heads"),
        ("head_sites-float-heads", lambda t: iv.head_sites(2, 4.0), TypeError, "n_heads"),
        (
            "head_sites-template-without-layer",
            lambda t: iv.head_sites(2, 4, template="block_0/attn/out:input"),
            ValueError,
            "template",
        ),
        (
            "head_sites-template-other-field",
            lambda t: iv.head_sites(2, 4, template="block_{layer}/{name}"),
            ValueError,
            "template",
        ),
        ("position_sites-negative-seq", lambda t: iv.position_sites(2, -16), ValueError, "seq_len"),
        (
            "head_position_sites-zero-seq",
            lambda t: iv.head_position_sites(2, 4, 0),
            ValueError,
            "seq_len",
        ),
        (
            "unflatten-wrong-length",
            lambda t: iv.head_sites(2, 4).unflatten(jnp.ones(7)),
            ValueError,
            "values",
        ),
        ("unflatten-scalar", lambda t: iv.head_sites(2, 4).unflatten(1.0), ValueError, "values"),
        (
            "unflatten-no-grid",
            lambda t: iv.Sites(jnp.array([0]), jnp.array([[0]]), ("b",), (-2,)).unflatten(
                jnp.ones(1)
            ),
            ValueError,
            "sites",
        ),
        # ---------------------------------------------------------- patch_sweep
        (
            "sweep-heads-4-7-of-4",  # regression: heads 4-7 of a 4-head model
            _sweep(iv.head_sites(2, 8)),
            ValueError,
            "sites",
        ),
        (
            "sweep-checked-traced-heads-4-7",  # regression: under jit they reported 0
            _checked_sweep(
                lambda: iv.site_grid(iv.head_sites(2, 8).paths, [(-2, 8)], ("layer", "head"))
            ),
            ValueError,
            "sites",
        ),
        ("sweep-position-out-of-range", _sweep(iv.position_sites(2, 20)), ValueError, "sites"),
        # issue 20 round 2: a grid that claims every head or position but has fewer entries
        # patched part of the axis in silence (heads 0-2 of 4, positions 0-7 of 16)
        ("sweep-head_sites-fewer-than-heads", _sweep(iv.head_sites(2, 3)), ValueError, "sites"),
        (
            "sweep-position_sites-fewer-than-positions",
            _sweep(iv.position_sites(2, 8)),
            ValueError,
            "sites",
        ),
        (
            "sweep-head_position_sites-fewer-positions",
            _sweep(iv.head_position_sites(2, 4, 8)),
            ValueError,
            "sites",
        ),
        ("attrib-head_sites-fewer-than-heads", _attrib(iv.head_sites(2, 3)), ValueError, "sites"),
        (
            "sweep-checked-traced-layer-out-of-range",
            _checked_sweep(
                lambda: iv.Sites(
                    jnp.array([0, 5]), jnp.array([[0], [1]]), iv.head_sites(2, 4).paths, (-2,)
                )
            ),
            ValueError,
            "sites",
        ),
        ("sweep-sites-list", _sweep([(0, 1)]), TypeError, "sites"),
        (
            "sweep-sites-float-index",
            _sweep(iv.Sites(jnp.array([0]), jnp.array([[0.5]]), ("block_0",), (-2,))),
            TypeError,
            "sites",
        ),
        ("sweep-unknown-path", _sweep(iv.head_sites(3, 4)), KeyError, "sites"),
        (
            "sweep-metric-not-scalar",
            _sweep(iv.head_sites(2, 4), lambda o: o[:, 0]),
            ValueError,
            "metric",
        ),
        ("sweep-metric-not-callable", _sweep(iv.head_sites(2, 4), 3.0), TypeError, "metric"),
        (
            "sweep-corrupted-shape",
            lambda t: iv.patch_sweep(
                m(t),
                v(t),
                task(t).clean,
                task(t).corrupted[:, :8],
                iv.head_sites(2, 4),
                task(t).metric,
            ),
            ValueError,
            "corrupted_inputs",
        ),
        (
            "sweep-corrupted-dtype",
            lambda t: iv.patch_sweep(
                m(t),
                v(t),
                task(t).clean,
                task(t).corrupted.astype(float),
                iv.head_sites(2, 4),
                task(t).metric,
            ),
            ValueError,
            "corrupted_inputs",
        ),
        (
            "sweep-clean-empty",
            lambda t: iv.patch_sweep(
                m(t), v(t), (), task(t).corrupted, iv.head_sites(2, 4), task(t).metric
            ),
            ValueError,
            "clean_inputs",
        ),
        (
            "sweep-chunk-size-zero",
            _sweep(iv.head_sites(2, 4), chunk_size=0),
            ValueError,
            "chunk_size",
        ),
        (
            "sweep-chunk-size-float",
            _sweep(iv.head_sites(2, 4), chunk_size=2.5),
            TypeError,
            "chunk_size",
        ),
        (
            "sweep-same-clean-and-corrupted",
            lambda t: iv.patch_sweep(
                m(t), v(t), task(t).clean, task(t).clean, iv.head_sites(2, 4), task(t).metric
            ),
            ValueError,
            "corrupted",
        ),
        ("attribution-heads-4-7-of-4", _attrib(iv.head_sites(2, 8)), ValueError, "sites"),
        (
            "attribution-metric-not-scalar",
            _attrib(iv.head_sites(2, 4), lambda o: o.sum(-1)),
            ValueError,
            "metric",
        ),
        (
            "attribution-corrupted-shape",
            lambda t: iv.attribution_patch(
                m(t),
                v(t),
                task(t).clean,
                task(t).corrupted[:1],
                iv.head_sites(2, 4),
                task(t).metric,
            ),
            ValueError,
            "corrupted_inputs",
        ),
        ("attribution-sites-dict", _attrib({"layer": 0}), TypeError, "sites"),
        # ------------------------------------- intervene / capture_sites (argument errors)
        (
            "intervene-unknown-path",
            lambda t: iv.intervene(m(t), v(t), {"block_9/attn": iv.zero()})(task(t).clean),
            KeyError,
            "edits",
        ),
        (
            "intervene-edit-not-callable",
            lambda t: iv.intervene(m(t), v(t), {"block_0": 3.0})(task(t).clean),
            TypeError,
            "edits",
        ),
        (
            "intervene-edit-bad-at",
            lambda t: iv.intervene(m(t), v(t), {"block_0": iv.zero(at={-2: 99})})(task(t).clean),
            ValueError,
            "at",
        ),
        (
            "capture_sites-bad-suffix",
            lambda t: iv.capture_sites(m(t), v(t), ["block_0:weights"]),
            ValueError,
            "site",
        ),
        (
            "capture_sites-unknown-path",
            lambda t: iv.capture_sites(m(t), v(t), ["block_7"])(task(t).clean),
            KeyError,
            "sites",
        ),
        # ------------------------------------------- issue 14: globs, per-example metrics
        (
            "capture_sites-glob-matches-nothing",
            lambda t: iv.capture_sites(m(t), v(t), ["blocks_*:input"])(task(t).clean),
            KeyError,
            "sites",
        ),
        (
            "capture_sites-glob-every-call",
            lambda t: iv.capture_sites(m(t), v(t), ["block_*@*:input"]),
            ValueError,
            "sites",
        ),
        (
            "logit_diff-reduce-sum",
            lambda t: iv.logit_diff(logits, 1, 2, reduce="sum"),
            ValueError,
            "reduce",
        ),
        (
            "sweep-per-example-not-batch",  # [seq] values, not [batch]
            _sweep(iv.head_sites(2, 4), lambda o: o[0, :, 0]),
            ValueError,
            "metric",
        ),
        (
            "sweep-per-example-one-example",  # no standard error from one example
            _sweep(iv.head_sites(2, 4), lambda o: o[:, 0, 0], n=1),
            ValueError,
            "metric",
        ),
        (
            "attribution-per-example-not-batch",
            _attrib(iv.head_sites(2, 4), lambda o: o[0, :, 0]),
            ValueError,
            "metric",
        ),
        (
            "sweep-per-example-position-out-of-range",  # a plain (compiled) call still raises
            _sweep(
                iv.head_sites(2, 4),
                lambda o: iv.logit_diff(o, 1, 2, jnp.array([3, 20]), reduce="none"),
            ),
            ValueError,
            "position",
        ),
        (
            "attribution-same-clean-and-corrupted",  # a plain (compiled) call still raises
            lambda t: iv.attribution_patch(
                m(t), v(t), task(t).clean, task(t).clean, iv.head_sites(2, 4), task(t).metric
            ),
            ValueError,
            "corrupted",
        ),
        (
            "sweep-checked-traced-per-example-heads-4-7",
            lambda t: jaxinterp.checked(
                lambda s: (
                    iv.patch_sweep(
                        m(t), v(t), task(t).clean, task(t).corrupted, s, task(t).per_example_metric
                    ).per_example
                )
            )(iv.head_sites(2, 8)),
            ValueError,
            "sites",
        ),
        # ------------------------------------------------------ attention analysis
        ("head_entropy-rank-1", lambda t: at.head_entropy(jnp.ones(3)), ValueError, "weights"),
        (
            "head_entropy-int-weights",
            lambda t: at.head_entropy(jnp.eye(3, dtype=int)),
            TypeError,
            "weights",
        ),
        ("head_entropy-logits", lambda t: at.head_entropy(jnp.log(W)), ValueError, "weights"),
        ("head_entropy-unnormalised", lambda t: at.head_entropy(2 * W), ValueError, "weights"),
        (
            "head_entropy-nan",
            lambda t: at.head_entropy(W.at[0, 0, 0, 0].set(jnp.nan)),
            ValueError,
            "weights",
        ),
        (
            "head_entropy-query-mask-shape",
            lambda t: at.head_entropy(W, jnp.ones(4, bool)),
            ValueError,
            "query_mask",
        ),
        (
            "head_entropy-query-mask-float",
            lambda t: at.head_entropy(W, jnp.full(6, 0.5)),
            TypeError,
            "query_mask",
        ),
        (
            "head_entropy-checked-traced-logits",
            lambda t: jaxinterp.checked(at.head_entropy)(jnp.log(W)),
            ValueError,
            "weights",
        ),
        (
            "mean_attention_distance-rank-1",
            lambda t: at.mean_attention_distance(jnp.ones(4)),
            ValueError,
            "weights",
        ),
        (
            "mean_attention_distance-negative",
            lambda t: at.mean_attention_distance(W - W.mean(-1, keepdims=True)),
            ValueError,
            "weights",
        ),
        (
            "attention_to-int-key-ids",
            lambda t: at.attention_to(W, jnp.arange(6)),
            TypeError,
            "key_selected",
        ),
        (
            "attention_to-key-length",
            lambda t: at.attention_to(W, jnp.ones(4, bool)),
            ValueError,
            "key_selected",
        ),
        (
            "attention_to-key-batch",
            lambda t: at.attention_to(W, jnp.ones((3, 6), bool)),
            ValueError,
            "key_selected",
        ),
        (
            "attention_to-unnormalised",
            lambda t: at.attention_to(W * 3, jnp.ones(6, bool)),
            ValueError,
            "weights",
        ),
        ("offset_score-offset-past-seq", lambda t: at.offset_score(W, 6), ValueError, "offset"),
        (
            "offset_score-offset-before-start",
            lambda t: at.offset_score(W, -6),
            ValueError,
            "offset",
        ),
        ("offset_score-float-offset", lambda t: at.offset_score(W, 1.5), TypeError, "offset"),
        (
            "offset_score-query-mask-shape",
            lambda t: at.offset_score(W, 1, jnp.ones(5, bool)),
            ValueError,
            "query_mask",
        ),
        (
            "prev_token_score-one-query",
            lambda t: at.prev_token_score(jnp.ones((2, 1, 3)) / 3),
            ValueError,
            "weights",
        ),
        (
            "prev_token_score-logits",
            lambda t: at.prev_token_score(jnp.log(W)),
            ValueError,
            "weights",
        ),
        (
            "induction_score-non-square",
            lambda t: at.induction_score(W[..., :5, :], jnp.arange(6)),
            ValueError,
            "weights",
        ),
        (
            "induction_score-tokens-length",
            lambda t: at.induction_score(W, jnp.arange(4)),
            ValueError,
            "tokens",
        ),
        (
            "induction_score-float-tokens",
            lambda t: at.induction_score(W, jnp.ones(6)),
            TypeError,
            "tokens",
        ),
        (
            "induction_score-tokens-batch",
            lambda t: at.induction_score(W, jnp.ones((3, 6), int)),
            ValueError,
            "tokens",
        ),
        ("rollout-rank-3", lambda t: at.rollout(W[0]), ValueError, "weights"),
        ("rollout-non-square", lambda t: at.rollout(W[..., :5]), ValueError, "weights"),
        ("rollout-residual-2", lambda t: at.rollout(W, residual=2.0), ValueError, "residual"),
        (
            "rollout-residual-nan",
            lambda t: at.rollout(W, residual=float("nan")),
            ValueError,
            "residual",
        ),
        ("rollout-residual-str", lambda t: at.rollout(W, residual="0.5"), TypeError, "residual"),
        ("rollout-head-axis-layer", lambda t: at.rollout(W, head_axis=0), ValueError, "head_axis"),
        ("rollout-head-axis-out", lambda t: at.rollout(W, head_axis=7), ValueError, "head_axis"),
        ("rollout-unnormalised", lambda t: at.rollout(W * 2), ValueError, "weights"),
        # issue 20, layouts: a one-layer [batch, head, q, k] map was rolled out over its batch
        ("rollout-4d-without-layout", lambda t: at.rollout(W), ValueError, "layout"),
        # issue 20, layouts: batch-first weights were rolled out over the batch
        (
            "rollout-5d-without-layout",
            lambda t: at.rollout(jnp.stack([W, W, W])),
            ValueError,
            "layout",
        ),
        (
            "rollout-layout-wrong-rank",
            lambda t: at.rollout(W, layout="lbhqk"),
            ValueError,
            "layout",
        ),
        ("rollout-layout-no-head", lambda t: at.rollout(W, layout="lbqk"), ValueError, "layout"),
        (
            "rollout-layout-and-head_axis",
            lambda t: at.rollout(W, layout="lhqk", head_axis=1),
            ValueError,
            "head_axis",
        ),
        (
            "rollout-checked-traced-unnormalised",
            lambda t: jaxinterp.checked(functools.partial(at.rollout, layout="lhqk"))(W * 2),
            ValueError,
            "weights",
        ),
        ("stack_layers-empty", lambda t: at.stack_layers({}), ValueError, "maps"),
        (
            "stack_layers-shapes",
            lambda t: at.stack_layers({"a": W[0], "b": W[0, :2]}),
            ValueError,
            "maps",
        ),
        (
            "attention_from_qk-rank",
            lambda t: at.attention_from_qk(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4))),
            ValueError,
            "query",
        ),
        (
            "attention_from_qk-heads",
            lambda t: at.attention_from_qk(jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 3, 4))),
            ValueError,
            "key",
        ),
    ]


ROWS = _rows()


@pytest.mark.parametrize("call, exc, name", [pytest.param(c, e, n, id=i) for i, c, e, n in ROWS])
def test_bad_input(tiny, call, exc, name):
    with pytest.raises(exc) as info:
        call(tiny)
    msg = str(info.value.args[0]) if info.value.args else ""
    assert re.match(rf"{re.escape(name)}\b", msg), msg


# The same traced mistakes under a plain jit: NaN results, never a clamped or wrapped answer.


def test_traced_bad_values_poison(tiny):
    m, v, task = tiny
    logits = jax.random.normal(jax.random.key(0), (2, 16, 5))
    for p in (16, 20, -17):
        assert np.isnan(jax.jit(iv.logit_diff)(logits, 1, 2, jnp.int32(p))), p
    assert np.isnan(jax.jit(iv.logit_diff)(logits, 5, 2, jnp.int32(3)))
    ok = jax.jit(iv.logit_diff)(logits, 1, 2, jnp.int32(-16))
    np.testing.assert_array_equal(ok, iv.logit_diff(logits, 1, 2, 0))
    x = jnp.array([3.0, np.nan, 1.0])
    assert np.isnan(jax.jit(iv.spearman)(x, jnp.arange(3.0)))
    assert np.isnan(jax.jit(iv.spearman)(jnp.ones(3), jnp.arange(3.0)))
    assert np.isnan(jax.jit(iv.normalize)(jnp.ones(3), 2.0, 2.0)).all()

    def rollout(w):
        return at.rollout(w, layout="lhqk")

    for fn in (at.head_entropy, at.mean_attention_distance, at.prev_token_score, rollout):
        assert np.isnan(jax.jit(fn)(jnp.log(W))).all(), fn.__name__
        assert not np.isnan(jax.jit(fn)(W)).any(), fn.__name__

    # patch_sweep with traced sites: the out-of-range heads are NaN, the valid ones are exact
    sweep = jax.jit(
        lambda s: iv.patch_sweep(m, v, task.clean, task.corrupted, s, task.metric).patched
    )
    # (site_grid: head_sites(2, 8) claims all heads and raises at trace time, shapes known)
    eight = iv.site_grid(iv.head_sites(2, 8).paths, [(-2, 8)], ("layer", "head"))
    got = eight.unflatten(sweep(eight))
    ref = iv.head_sites(2, 4).unflatten(sweep(iv.head_sites(2, 4)))
    assert np.isnan(got[:, 4:]).all()
    np.testing.assert_array_equal(got[:, :4], ref)
    attrib = jax.jit(
        lambda s: iv.attribution_patch(m, v, task.clean, task.corrupted, s, task.metric).patched
    )
    got = eight.unflatten(attrib(eight))
    assert np.isnan(got[:, 4:]).all() and not np.isnan(got[:, :4]).any()
    # per-example values (issue 14): the out-of-range heads are NaN for every example
    for fn in (iv.patch_sweep, iv.attribution_patch):
        per = jax.jit(
            lambda s, fn=fn: fn(m, v, task.clean, task.corrupted, s, task.per_example_metric)
        )(eight)
        grid = eight.unflatten(per.per_example)  # [layer, head, batch]
        assert np.isnan(grid[:, 4:]).all() and not np.isnan(grid[:, :4]).any(), fn.__name__
        se = eight.unflatten(per.normalized_se)
        assert np.isnan(se[:, 4:]).all() and not np.isnan(se[:, :4]).any(), fn.__name__
