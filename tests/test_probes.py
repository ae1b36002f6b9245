"""Probes on synthetic data, checked against scikit-learn and manual numpy computations."""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from jaxinterp import probes
from jaxinterp.plotting import probe_accuracy


def _data(seed=0, layers=2, n=1000, d=24, rank=6):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, rank))
    feats = np.stack(
        [
            (z @ rng.normal(size=(rank, d)) + (1.0 + i) * rng.normal(size=(n, d)))
            * np.exp(rng.normal(scale=0.5, size=d))
            + rng.normal(size=d)
            for i in range(layers)
        ]
    ).astype(np.float32)
    s = z @ rng.normal(size=(rank, 5)) + 0.5 * rng.normal(size=(n, 5))
    labels = np.stack(
        [
            s[:, 0] > 0,
            s[:, 1] > np.quantile(s[:, 1], 0.75),
            np.argmax(s[:, 2:5], 1) + 1,  # classes 1..3: class 0 never seen
        ]
    ).astype(np.int32)
    return feats, labels


def _sk_objective(x, y, coef, intercept, c):
    """scikit-learn's LogisticRegression objective (mean CE + ‖w‖²/(2Cn)) in numpy."""
    z = x.astype(np.float64) @ coef.T + intercept
    if z.shape[1] == 1:
        z = np.concatenate([np.zeros_like(z), z], 1)
        idx = (y == y.max()).astype(int)
    else:
        idx = np.searchsorted(np.unique(y), y)
    z = z - z.max(1, keepdims=True)
    lse = np.log(np.exp(z).sum(1))
    ce = np.mean(lse - z[np.arange(len(y)), idx])
    return ce + np.sum(coef.astype(np.float64) ** 2) / (2 * c * len(y))


@pytest.fixture(scope="module")
def fitted():
    feats, labels = _data()
    tr, te = slice(0, 600), slice(600, None)
    c = np.array([0.5, 2.0], np.float32)  # per-layer C
    probe, info = probes.fit_logistic(jnp.asarray(feats[:, tr]), jnp.asarray(labels[:, tr]), C=c)
    sk = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for li in range(feats.shape[0]):
            for ti in range(labels.shape[0]):
                m = LogisticRegression(C=float(c[li]), tol=1e-8, max_iter=5000)
                sk[li, ti] = m.fit(feats[li, tr], labels[ti, tr])
    return feats, labels, tr, te, c, probe, info, sk


def test_logistic_matches_sklearn(fitted):
    feats, labels, tr, te, c, probe, info, sk = fitted
    assert probe.weight.shape == (2, 3, 24, 4)
    assert bool(np.all(info.converged))
    acc = np.asarray(
        probes.evaluate(probe, jnp.asarray(feats[:, te]), jnp.asarray(labels[:, te]))["accuracy"]
    )
    for (li, ti), m in sk.items():
        sk_acc = m.score(feats[li, te], labels[ti, te])
        assert abs(acc[li, ti] - sk_acc) * 100 <= 0.5, (li, ti, acc[li, ti], sk_acc)
        # same optimum: our objective is not worse than scikit-learn's, weights agree
        w, b = np.asarray(probe.weight[li, ti]), np.asarray(probe.bias[li, ti])
        classes = np.unique(labels[ti, tr])
        if len(classes) == 2:
            coef, icpt = (w[:, classes[1]] - w[:, classes[0]])[None], b[classes[1]] - b[classes[0]]
        else:
            coef, icpt = w[:, classes].T, b[classes]
        x, y = feats[li, tr], labels[ti, tr]
        ours = _sk_objective(x, y, coef, icpt, c[li])
        theirs = _sk_objective(x, y, m.coef_, m.intercept_, c[li])
        assert ours <= theirs + 1e-5, (li, ti, ours, theirs)
        np.testing.assert_allclose(coef, m.coef_, atol=5e-3 * np.abs(m.coef_).max())
        proba = np.asarray(probes.predict_proba(probe, jnp.asarray(feats[:, te]))[li, ti])
        np.testing.assert_allclose(proba[:, classes], m.predict_proba(feats[li, te]), atol=2e-3)


def test_metrics_match_sklearn(fitted):
    feats, labels, tr, te, c, probe, info, sk = fitted
    xte, yte = jnp.asarray(feats[:, te]), jnp.asarray(labels[:, te])
    ev = probes.evaluate(probe, xte, yte)
    ev_jit = jax.jit(probes.evaluate)(probe, xte, yte)
    for k in ev:
        np.testing.assert_allclose(ev_jit[k], ev[k], rtol=1e-5)
    pred = jax.jit(probes.predict)(probe, xte)
    np.testing.assert_array_equal(pred, jnp.argmax(jax.jit(probes.decision)(probe, xte), -1))
    for (li, ti), m in sk.items():
        x, y = feats[li, te], labels[ti, te]
        pred = m.predict(x)
        np.testing.assert_allclose(
            ev["balanced_accuracy"][li, ti], skm.balanced_accuracy_score(y, pred), atol=0.01
        )
        np.testing.assert_allclose(
            ev["log_loss"][li, ti], skm.log_loss(y, m.predict_proba(x)), rtol=2e-3
        )
        if ti < 2:
            auc = skm.roc_auc_score(y, m.decision_function(x))
            np.testing.assert_allclose(ev["auroc"][li, ti], auc, atol=2e-3)
        else:
            assert np.isnan(ev["auroc"][li, ti])


def test_metric_functions_exact_under_jit():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(size=300) + y, 1)  # ties on purpose
    f = jax.jit(probes.auroc)
    np.testing.assert_allclose(
        f(jnp.asarray(y), jnp.asarray(s)), skm.roc_auc_score(y, s), rtol=1e-6
    )
    y3, p3 = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    ba = jax.jit(partial(probes.balanced_accuracy, num_classes=5))(jnp.asarray(y3), jnp.asarray(p3))
    np.testing.assert_allclose(ba, skm.balanced_accuracy_score(y3, p3), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(probes.accuracy)(y3, p3), (y3 == p3).mean(), rtol=1e-6)
    logits = rng.normal(size=(200, 4)).astype(np.float32)
    prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(
        jax.jit(probes.log_loss)(y3, logits), skm.log_loss(y3, prob, labels=range(4)), rtol=1e-5
    )
    t, p = rng.normal(size=100), rng.normal(size=100)
    np.testing.assert_allclose(jax.jit(probes.r2)(t, p), skm.r2_score(t, p), rtol=1e-5)
    # vmapped over probes
    aucs = jax.vmap(probes.auroc)(jnp.stack([y, 1 - y]), jnp.stack([s, s]))
    np.testing.assert_allclose(
        aucs, [skm.roc_auc_score(y, s), skm.roc_auc_score(1 - y, s)], rtol=1e-6
    )


def test_standardize_matches_scaler_pipeline():
    feats, labels = _data(seed=3, layers=1, n=500)
    x, y = feats[0], labels[0]
    probe, _ = probes.fit_logistic(
        jnp.asarray(feats), jnp.asarray(labels[:1]), standardize=True, C=0.3
    )
    scaler = StandardScaler().fit(x)
    m = LogisticRegression(C=0.3, tol=1e-8, max_iter=5000).fit(scaler.transform(x), y)
    # map sklearn's coefficients on standardised features back to raw features
    coef = m.coef_[0] / scaler.scale_
    icpt = m.intercept_[0] - scaler.mean_ @ coef
    w, b = np.asarray(probe.weight[0, 0]), np.asarray(probe.bias[0, 0])
    np.testing.assert_allclose(w[:, 1] - w[:, 0], coef, atol=3e-3 * np.abs(coef).max())
    np.testing.assert_allclose(b[1] - b[0], icpt, atol=1e-2)


def test_fit_under_jit_and_vmap(fitted):
    feats, labels, tr, te, c, probe, info, sk = fitted
    x, y = jnp.asarray(feats[:, tr]), jnp.asarray(labels[:, tr])
    fit = partial(probes.fit_logistic, num_classes=4, C=c)
    jitted, _ = jax.jit(fit)(x, y)
    np.testing.assert_allclose(jitted.weight, probe.weight, atol=1e-5)
    # vmap over feature sets equals fitting each separately (same optimum, within tol)
    (bprobe, binfo) = jax.vmap(lambda f: fit(f, y))(jnp.stack([x, x[::-1]]))
    np.testing.assert_allclose(binfo.loss[0], info.loss, rtol=1e-5)
    _, sinfo = probes.fit_logistic(x[::-1], y, C=c)
    np.testing.assert_allclose(binfo.loss[1], sinfo.loss, rtol=1e-5)
    xte = jnp.asarray(feats[:, te])
    same = probes.predict(jax.tree.map(lambda a: a[0], bprobe), xte) == probes.predict(probe, xte)
    assert float(jnp.mean(same)) > 0.99


def test_bf16_features_same_accuracy(fitted):
    feats, labels, tr, te, c, probe, info, sk = fitted
    x = jnp.asarray(feats[:, tr])
    pbf, _ = probes.fit_logistic(x.astype(jnp.bfloat16), jnp.asarray(labels[:, tr]), C=c)
    xte = jnp.asarray(feats[:, te])
    agree = np.mean(np.asarray(probes.predict(probe, xte) == probes.predict(pbf, xte)))
    assert agree > 0.97


def test_ridge_matches_sklearn():
    feats, _ = _data(seed=6, layers=2, n=400)
    rng = np.random.default_rng(0)
    targets = np.stack(
        [feats[0] @ rng.normal(size=24) + rng.normal(size=400), rng.normal(size=400)]
    )
    targets = targets.astype(np.float32)
    for std in (False, True):
        probe = jax.jit(partial(probes.fit_ridge, alpha=3.0, standardize=std))(
            jnp.asarray(feats), jnp.asarray(targets)
        )
        r2s = probes.evaluate_regression(probe, jnp.asarray(feats), jnp.asarray(targets))["r2"]
        for li in range(2):
            for ti in range(2):
                x = feats[li].astype(np.float64)
                sc = StandardScaler().fit(x) if std else None
                m = Ridge(alpha=3.0).fit(sc.transform(x) if std else x, targets[ti])
                coef = m.coef_ / sc.scale_ if std else m.coef_
                np.testing.assert_allclose(
                    probe.weight[li, ti, :, 0], coef, rtol=2e-3, atol=2e-3 * np.abs(coef).max()
                )
                pred = m.predict(sc.transform(x) if std else x)
                np.testing.assert_allclose(r2s[li, ti], skm.r2_score(targets[ti], pred), atol=1e-3)


def test_streaming_reaches_full_batch_solution(fitted):
    feats, labels, tr, te, c, probe, info, sk = fitted
    x, y = jnp.asarray(feats[:, tr]), jnp.asarray(labels[:, tr])

    def chunks():  # memory per step: one chunk of 200 examples
        for s in range(0, 600, 200):
            yield x[:, s : s + 200], y[:, s : s + 200]

    stream, sinfo = probes.fit_logistic_stream(chunks, num_classes=4, C=c)
    assert bool(np.all(sinfo.converged))
    scale = float(jnp.abs(probe.weight).max())
    np.testing.assert_allclose(stream.weight, probe.weight, atol=2e-2 * scale)
    np.testing.assert_allclose(sinfo.loss, info.loss, rtol=1e-4)
    xte = jnp.asarray(feats[:, te])
    agree = np.mean(np.asarray(probes.predict(stream, xte) == probes.predict(probe, xte)))
    assert agree > 0.99
    np.testing.assert_array_equal(stream.classes, probe.classes)
    with pytest.raises(ValueError, match="one class"):
        probes.fit_logistic_stream(lambda: [(x, jnp.zeros_like(y))], num_classes=2)


def test_control_labels_and_selectivity():
    key = jax.random.key(0)
    types = jnp.asarray(np.random.default_rng(0).integers(0, 30, 2000))
    labels = jnp.stack([types % 2, (types * 7) % 3])
    ctrl = jax.jit(partial(probes.control_labels, num_types=30))(key, types, labels)
    again = probes.control_labels(key, types, labels)
    np.testing.assert_array_equal(ctrl, again)  # same key -> same labels
    assert not np.array_equal(ctrl, probes.control_labels(jax.random.key(1), types, labels))
    ctrl, t = np.asarray(ctrl), np.asarray(types)
    for v in range(30):  # one label per type, drawn from the task's labels
        for task in range(2):
            assert np.unique(ctrl[task, t == v]).size == 1
    assert set(np.unique(ctrl[1])) <= {0, 1, 2}
    np.testing.assert_allclose(
        probes.selectivity(jnp.array([0.9, 0.8]), jnp.array([0.6, 0.8])), [0.3, 0.0], atol=1e-7
    )


def test_train_val_test_split():
    parts = jax.jit(lambda k: probes.train_val_test_split(k, 103, (0.7, 0.2, 0.1)))(
        jax.random.key(2)
    )
    sizes = [len(p) for p in parts]
    assert sizes == [72, 21, 10]
    allidx = np.sort(np.concatenate([np.asarray(p) for p in parts]))
    np.testing.assert_array_equal(allidx, np.arange(103))
    again = probes.train_val_test_split(jax.random.key(2), 103, (0.7, 0.2, 0.1))
    np.testing.assert_array_equal(parts[0], again[0])
    with pytest.raises(ValueError, match="fractions"):
        probes.train_val_test_split(jax.random.key(0), 10, (0.5, -0.1))


def test_bad_inputs_raise_clear_errors():
    x = jnp.ones((2, 10, 3))
    y = jnp.asarray(np.tile([0, 1], (1, 5)))
    with pytest.raises(ValueError, match="one class only"):
        probes.fit_logistic(x, jnp.zeros((1, 10), jnp.int32))
    with pytest.raises(ValueError, match="labels: expected length n=10"):
        probes.fit_logistic(x, y[:, :8])
    with pytest.raises(ValueError, match="NaN"):
        probes.fit_logistic(x.at[1, 3, 0].set(jnp.nan), y)
    with pytest.raises(ValueError, match=r"features: expected \[layer, n, d\]"):
        probes.fit_logistic(x[0], y)
    with pytest.raises(TypeError, match="integer class labels"):
        probes.fit_logistic(x, y.astype(jnp.float32))
    with pytest.raises(ValueError, match="num_classes: required"):
        jax.jit(probes.fit_logistic)(x, y)
    with pytest.raises(ValueError, match="C: expected > 0"):
        probes.fit_logistic(x, y, C=0.0)
    with pytest.raises(ValueError, match="targets: expected length"):
        probes.fit_ridge(x, jnp.ones((1, 9)))
    with pytest.raises(ValueError, match="targets: contain NaN"):
        probes.fit_ridge(x, jnp.full((1, 10), jnp.nan))


def test_probe_accuracy_plot():
    acc = np.array([[0.9, 0.6], [0.95, 0.7], [0.97, 0.8]])
    fig = probe_accuracy(
        acc,
        layer_names=["a", "b", "c"],
        task_names=["t1", "t2"],
        control=acc - 0.2,
        chance=[0.5, 0.1],
    )
    assert len(fig.axes) == 2
    sel = fig.axes[1].lines[0].get_ydata()
    np.testing.assert_allclose(sel, [0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="control: expected shape"):
        probe_accuracy(acc, control=acc[:2])
