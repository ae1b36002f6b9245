"""Bad inputs to every public probes function: the exception type and a message that starts
with the argument's name. Rows marked "regression" were silent wrong answers before (issue 10).
Also checks the policy under jit: NaN/-1 outputs and jaxinterp.checked raising the message."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp
from jaxinterp import probes

RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(2, 40, 3)).astype(np.float32))
Y = jnp.asarray(np.stack([(np.asarray(X[0, :, 0]) > 0), (np.asarray(X[0, :, 1]) > 0)]), jnp.int32)
PROBE, _ = probes.fit_logistic(X, Y)
RIDGE = probes.fit_ridge(X, jnp.asarray(X[0, :, :2].T))
KEY = jax.random.key(0)
NAN_X = X.at[1, 3, 0].set(jnp.nan)
BA, FS = probes.balanced_accuracy, probes.fit_logistic_stream

CASES = [
    # fit_logistic
    ("fit_logistic", lambda: probes.fit_logistic(X[0], Y), ValueError, "features"),
    ("fit_logistic", lambda: probes.fit_logistic(X.astype(jnp.int32), Y), TypeError, "features"),
    ("fit_logistic", lambda: probes.fit_logistic(NAN_X, Y), ValueError, "features"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y[:, :30]), ValueError, "labels"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y.astype(float)), TypeError, "labels"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y - 1), ValueError, "labels"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y, num_classes=1), ValueError, "num_classes"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y * 3, num_classes=2), ValueError, "labels"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y, C=-1.0), ValueError, "C"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y, C=jnp.nan), ValueError, "C"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y, C=[1.0, 2.0, 3.0]), ValueError, "C"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y, tol=0.0), ValueError, "tol"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y, max_iter=-1), ValueError, "max_iter"),
    ("fit_logistic", lambda: probes.fit_logistic(X, Y, memory=0), ValueError, "memory"),
    ("fit_logistic", lambda: probes.fit_logistic(X[:, :0], Y[:, :0]), ValueError, "features"),
    # fit_ridge
    ("fit_ridge", lambda: probes.fit_ridge(X, jnp.ones((1, 39))), ValueError, "targets"),
    ("fit_ridge", lambda: probes.fit_ridge(X, jnp.full((1, 40), jnp.nan)), ValueError, "targets"),
    ("fit_ridge", lambda: probes.fit_ridge(NAN_X, jnp.ones((1, 40))), ValueError, "features"),
    ("fit_ridge", lambda: probes.fit_ridge(X, jnp.ones((1, 40)), alpha=-1.0), ValueError, "alpha"),
    ("fit_ridge", lambda: probes.fit_ridge(X, jnp.ones(40)), ValueError, "targets"),
    # decision / predict / predict_proba
    ("decision", lambda: probes.decision(PROBE, X[:, :, :2]), ValueError, "features"),
    ("decision", lambda: probes.decision(PROBE, X[:1]), ValueError, "features"),
    ("decision", lambda: probes.decision(PROBE, NAN_X), ValueError, "features"),
    ("decision", lambda: probes.decision((1, 2, 3), X), TypeError, "probe"),
    ("predict", lambda: probes.predict(PROBE, X[0]), ValueError, "features"),
    ("predict", lambda: probes.predict(PROBE, X.astype(jnp.int32)), TypeError, "features"),
    # regression: predict_proba of a ridge probe returned all ones
    ("predict_proba", lambda: probes.predict_proba(RIDGE, X), ValueError, "probe"),
    ("predict_proba", lambda: probes.predict_proba(PROBE, NAN_X), ValueError, "features"),
    # accuracy
    ("accuracy", lambda: probes.accuracy(Y[0], Y[0, :5]), ValueError, "pred"),
    ("accuracy", lambda: probes.accuracy(Y[0, :0], Y[0, :0]), ValueError, "labels"),
    ("accuracy", lambda: probes.accuracy(Y, Y), ValueError, "labels"),
    ("accuracy", lambda: probes.accuracy(Y[0], Y[0] - 1), ValueError, "pred"),
    # balanced_accuracy; regression: num_classes too small returned 1.0
    (
        "balanced_accuracy",
        lambda: probes.balanced_accuracy(Y[0] * 2, Y[0], 2),
        ValueError,
        "labels",
    ),
    ("balanced_accuracy", lambda: BA(Y[0], Y[0] + 5, 2), ValueError, "pred"),
    (
        "balanced_accuracy",
        lambda: probes.balanced_accuracy(Y[0], Y[0], 0),
        ValueError,
        "num_classes",
    ),
    (
        "balanced_accuracy",
        lambda: probes.balanced_accuracy(Y[0], Y[0], 2.0),
        TypeError,
        "num_classes",
    ),
    ("balanced_accuracy", lambda: BA(Y[0], Y[1, :3], 2), ValueError, "pred"),
    # log_loss
    ("log_loss", lambda: probes.log_loss(Y[0] + 2, jnp.zeros((40, 2))), ValueError, "labels"),
    ("log_loss", lambda: probes.log_loss(Y[0], jnp.zeros((39, 2))), ValueError, "logits"),
    ("log_loss", lambda: probes.log_loss(Y[0], jnp.full((40, 2), jnp.nan)), ValueError, "logits"),
    # auroc; regressions: NaN scores and 3-class labels returned 1.0
    ("auroc", lambda: probes.auroc(Y[0], jnp.full(40, jnp.nan)), ValueError, "scores"),
    ("auroc", lambda: probes.auroc(Y[0] + Y[1] * 2, X[0, :, 0]), ValueError, "labels"),
    ("auroc", lambda: probes.auroc(Y[0], X[0, :5, 0]), ValueError, "scores"),
    ("auroc", lambda: probes.auroc(X[0, :, 0], X[0, :, 0]), TypeError, "labels"),
    # r2
    ("r2", lambda: probes.r2(jnp.ones(5), jnp.arange(5.0)), ValueError, "targets"),
    ("r2", lambda: probes.r2(jnp.arange(5.0), jnp.arange(4.0)), ValueError, "pred"),
    ("r2", lambda: probes.r2(jnp.arange(5.0), jnp.full(5, jnp.nan)), ValueError, "pred"),
    # selectivity
    ("selectivity", lambda: probes.selectivity(jnp.ones(3), jnp.ones(2)), ValueError, "control"),
    ("selectivity", lambda: probes.selectivity("a", jnp.ones(2)), TypeError, "task_accuracy"),
    # evaluate / evaluate_regression
    ("evaluate", lambda: probes.evaluate(PROBE, X, Y[:1]), ValueError, "labels"),
    ("evaluate", lambda: probes.evaluate(PROBE, X, Y + 2), ValueError, "labels"),
    ("evaluate", lambda: probes.evaluate(RIDGE, X, Y), ValueError, "probe"),
    ("evaluate", lambda: probes.evaluate(PROBE, NAN_X, Y), ValueError, "features"),
    ("evaluate_regression", lambda: probes.evaluate_regression(PROBE, X, Y), ValueError, "probe"),
    (
        "evaluate_regression",
        lambda: probes.evaluate_regression(RIDGE, X, jnp.ones((2, 40))),
        ValueError,
        "targets",
    ),
    (
        "evaluate_regression",
        lambda: probes.evaluate_regression(RIDGE, X, jnp.ones((2, 39))),
        ValueError,
        "targets",
    ),
    # control_labels
    ("control_labels", lambda: probes.control_labels(0, Y[0], Y), TypeError, "key"),
    ("control_labels", lambda: probes.control_labels(KEY, Y[0, :5], Y), ValueError, "labels"),
    (
        "control_labels",
        lambda: probes.control_labels(KEY, Y[0] + 5, Y, num_types=2),
        ValueError,
        "types",
    ),
    ("control_labels", lambda: probes.control_labels(KEY, X[0, :, 0], Y), TypeError, "types"),
    # train_val_test_split
    ("train_val_test_split", lambda: probes.train_val_test_split(0, 10), TypeError, "key"),
    ("train_val_test_split", lambda: probes.train_val_test_split(KEY, 0), ValueError, "n"),
    ("train_val_test_split", lambda: probes.train_val_test_split(KEY, 10.0), TypeError, "n"),
    (
        "train_val_test_split",
        lambda: probes.train_val_test_split(KEY, 10, (0.5, float("nan"))),
        ValueError,
        "fractions",
    ),
    (
        "train_val_test_split",
        lambda: probes.train_val_test_split(KEY, 10, (0.0, 0.0)),
        ValueError,
        "fractions",
    ),
    # fit_logistic_stream; regression: classes >= num_classes were dropped silently
    (
        "fit_logistic_stream",
        lambda: probes.fit_logistic_stream(lambda: [(X, Y * 2)], num_classes=2),
        ValueError,
        "chunks",
    ),
    (
        "fit_logistic_stream",
        lambda: probes.fit_logistic_stream([(X, Y)], num_classes=2),
        TypeError,
        "chunks",
    ),
    (
        "fit_logistic_stream",
        lambda: probes.fit_logistic_stream(lambda: [], num_classes=2),
        ValueError,
        "chunks",
    ),
    (
        "fit_logistic_stream",
        lambda: probes.fit_logistic_stream(lambda: None, num_classes=2),
        TypeError,
        "chunks",
    ),
    (
        "fit_logistic_stream",
        lambda: probes.fit_logistic_stream(lambda: [(X, Y), (X[:1], Y)], num_classes=2),
        ValueError,
        "chunks",
    ),
    (
        "fit_logistic_stream",
        lambda: probes.fit_logistic_stream(lambda: [(X, Y)], num_classes=1),
        ValueError,
        "num_classes",
    ),
]


@pytest.mark.parametrize(
    "fn, call, exc, name", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_bad_input(fn, call, exc, name):
    with pytest.raises(exc, match=f"^{name}"):
        call()


def test_non_restartable_stream():
    gen = iter([(X, Y)])
    with pytest.raises(ValueError, match="^chunks: a call yielded no chunks"):
        probes.fit_logistic_stream(lambda: gen, num_classes=2)


def test_paths_string_refused(mlp, digits):
    x = jnp.asarray(digits.test.x[:4])
    with pytest.raises(TypeError, match="^paths"):
        probes.layer_features(mlp.model, mlp.variables, x, "act_0")
    with pytest.raises(ValueError, match="^chunk_size"):
        probes.layer_features(mlp.model, mlp.variables, x, ["act_0"], chunk_size=0)
    with pytest.raises(ValueError, match="^pool"):
        probes.layer_features(mlp.model, mlp.variables, x, ["act_0"], pool="max")


def test_large_offset_and_scale_fit_like_sklearn():
    """Regression: offset 3000 (sd 1) or magnitude 1e19 gave NaN / chance accuracy."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    z = rng.normal(size=(400, 5)).astype(np.float32)
    y = (z @ rng.normal(size=5) > 0).astype(np.int32)
    sk = LogisticRegression(max_iter=5000).fit(z.astype(np.float64), y).predict(z)
    for x in (z + 3000.0, z * np.float32(1e19)):
        x = jnp.asarray(x.astype(np.float32))[None]
        for std in (False, True):
            probe, info = probes.fit_logistic(x, jnp.asarray(y)[None], standardize=std)
            assert bool(info.converged.all())
            assert np.all(np.isfinite(np.asarray(probe.weight)))
            pred = np.asarray(probes.predict(probe, x))[0, 0]
            # the same classifier as sklearn on centred data, except near its boundary
            assert np.mean(pred == sk) >= 0.98, np.mean(pred == sk)
            ridge = probes.fit_ridge(x, jnp.asarray(y, jnp.float32)[None], standardize=std)
            assert np.mean((np.asarray(probes.predict(ridge, x))[0, 0] > 0.5) == y) > 0.9


class JitPolicyTest(chex.TestCase):
    """Under jit, value errors give NaN / -1 and jaxinterp.checked raises the message."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_fit_logistic_nan_features(self):
        fit = self.variant(lambda x, y: probes.fit_logistic(x, y, num_classes=2))
        if "__with_jit" not in self._testMethodName:
            with pytest.raises(ValueError, match="^features"):
                fit(NAN_X, Y)
            return
        probe, info = fit(NAN_X, Y)
        assert np.all(np.isnan(np.asarray(probe.weight[1])))
        assert np.all(np.isfinite(np.asarray(probe.weight[0])))
        assert np.all(np.asarray(info.iterations[1]) == -1)
        # checkify cannot enter fit_logistic's vmapped while loop; fit_ridge has none
        t = jnp.ones((1, 40))
        with pytest.raises(ValueError, match="^features"):
            jaxinterp.checked(probes.fit_ridge)(NAN_X, t)
        ridge = jax.jit(probes.fit_ridge)(NAN_X, t)
        assert np.all(np.isnan(np.asarray(ridge.weight[1])))

    @chex.variants(with_jit=True, without_jit=True)
    def test_auroc_and_balanced_accuracy(self):
        three = Y[0] + Y[1] * 2
        auroc = self.variant(probes.auroc)
        bacc = self.variant(lambda a, b: probes.balanced_accuracy(a, b, 2))
        if "__with_jit" not in self._testMethodName:
            with pytest.raises(ValueError, match="^labels"):
                auroc(three, X[0, :, 0])
            with pytest.raises(ValueError, match="^labels"):
                bacc(three, three)
            return
        assert np.isnan(auroc(three, X[0, :, 0]))
        assert np.isnan(auroc(Y[0], jnp.full(40, jnp.nan)))
        assert np.isnan(bacc(three, three))
        with pytest.raises(ValueError, match="^labels"):
            jaxinterp.checked(probes.auroc)(three, X[0, :, 0])

    @chex.variants(with_jit=True, without_jit=True)
    def test_predict_nan_rows(self):
        predict = self.variant(probes.predict)
        if "__with_jit" not in self._testMethodName:
            with pytest.raises(ValueError, match="^features"):
                predict(PROBE, NAN_X)
            return
        pred = np.asarray(predict(PROBE, NAN_X))
        assert np.all(pred[1, :, 3] == -1) and np.all(pred[0] >= 0)
        np.testing.assert_array_equal(
            pred[1, :, :3], np.asarray(probes.predict(PROBE, X))[1, :, :3]
        )


class _CacheModel(nn.Module):
    """A layer returning a ``(cache, x)`` tuple, as decoders with a KV cache do."""

    @nn.compact
    def __call__(self, x):
        _, h = _CacheLayer(name="layer")(x)
        return nn.Dense(2, name="head")(h)


class _CacheLayer(nn.Module):
    @nn.compact
    def __call__(self, x, cache=None):
        return cache, nn.Dense(4)(x)


_XC = jnp.ones((3, 5))
_MC = _CacheModel()
_VC = _MC.init(KEY, _XC)
_LF_ROWS = [
    # regression (issue 11): a tuple output failed with "'tuple' object has no attribute 'ndim'"
    ("tuple-output", lambda: probes.layer_features(_MC, _VC, _XC, ["layer"]), ValueError, "paths"),
    ("bad-site", lambda: probes.layer_features(_MC, _VC, _XC, ["layer:foo"]), ValueError, "paths"),
    ("unknown-path", lambda: probes.layer_features(_MC, _VC, _XC, ["nope"]), KeyError, "paths"),
    (
        "missing-element",
        lambda: probes.layer_features(_MC, _VC, _XC, ["layer:output[5]"]),
        ValueError,
        "paths",
    ),
    (
        "model-kwargs-not-mapping",
        lambda: probes.layer_features(_MC, _VC, _XC, ["head"], model_kwargs=[("train", False)]),
        TypeError,
        "model_kwargs",
    ),
    (
        "unknown-method",
        lambda: probes.layer_features(_MC, _VC, _XC, ["head"], method="encode"),
        ValueError,
        "method",
    ),
    (
        "variables-none",
        lambda: probes.layer_features(_MC, None, _XC, ["head"]),
        TypeError,
        "variables",
    ),
    # issue 20: a glob gave a bare KeyError('h*')
    ("glob", lambda: probes.layer_features(_MC, _VC, _XC, ["h*"]), ValueError, "paths"),
    ("glob-question", lambda: probes.layer_features(_MC, _VC, _XC, ["hea?"]), ValueError, "paths"),
]


@pytest.mark.parametrize("call, exc, name", [pytest.param(*r[1:], id=r[0]) for r in _LF_ROWS])
def test_layer_features_bad_sites(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value.args[0]) if info.value.args else ""
    assert msg.startswith(f"{name}:"), msg


def test_layer_features_tuple_element_is_the_dense_output():
    got = probes.layer_features(_MC, _VC, _XC, ["layer:output[1]"], pool="flatten")
    p = _VC["params"]["layer"]["Dense_0"]
    np.testing.assert_allclose(got[0], _XC @ p["kernel"] + p["bias"], rtol=1e-6, atol=1e-6)
