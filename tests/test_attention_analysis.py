"""Attention scores and rollout against plain numpy loops; plots return figures."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matplotlib.figure import Figure

from jaxinterp.attention import (
    attention_to,
    head_entropy,
    induction_score,
    mean_attention_distance,
    offset_score,
    prev_token_score,
    rollout,
)
from jaxinterp.plotting import attention_grid, attention_heatmap, head_score_map

L, H, S = 3, 2, 6


@pytest.fixture(scope="module")
def weights():
    """Random causal attention [layer, head, q, k] (rows sum to 1 over k <= q)."""
    logits = jax.random.normal(jax.random.key(0), (L, H, S, S)) * 2
    causal = jnp.tril(jnp.ones((S, S), bool))
    return np.asarray(jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), -1), np.float64)


QMASK = np.array([1, 1, 1, 1, 1, 0], bool)


def _qmean(v, mask):
    return np.array([v[i][mask].mean() if mask.any() else 0.0 for i in range(len(v))])


def _loop(w, fn, mask=QMASK):
    """numpy reference: per (layer, head), fn(row q) averaged over masked queries."""
    out = np.zeros(w.shape[:2])
    for li in range(w.shape[0]):
        for h in range(w.shape[1]):
            vals = np.array([fn(w[li, h, q], q) for q in range(S)])
            ok = mask & ~np.isnan(vals)
            out[li, h] = vals[ok].mean() if ok.any() else 0.0
    return out


# Tolerances: every score is a mean of sums of S nonnegative float32 terms (weights >= 0,
# -p log p >= 0, distances >= 0), so its relative error against the float64 loop is at most
# about (S + 2) eps ~ 1e-6 whatever the summation order or vector ISA; rtol=1e-5 is 10x that.


@pytest.mark.parametrize("use_jit", [False, True])
def test_scores_match_numpy_loops(weights, use_jit):
    j = jax.jit if use_jit else (lambda f, **_: f)
    w = jnp.asarray(weights, jnp.float32)
    cls = np.array([1, 0, 0, 1, 0, 0], bool)

    def ent(row, q):
        p = row[row > 0]
        return -(p * np.log(p)).sum()

    np.testing.assert_allclose(j(head_entropy)(w, QMASK), _loop(weights, ent), rtol=1e-5)
    dist = _loop(weights, lambda row, q: sum(row[k] * abs(q - k) for k in range(S)))
    np.testing.assert_allclose(j(mean_attention_distance)(w, QMASK), dist, rtol=1e-5)
    to = _loop(weights, lambda row, q: row[cls].sum())
    np.testing.assert_allclose(j(attention_to)(w, cls, QMASK), to, rtol=1e-5)
    for off in (1, 2):
        ref = _loop(weights, lambda row, q, off=off: row[q - off] if q >= off else np.nan)
        got = jax.jit(offset_score, static_argnums=1)(w, off, QMASK) if use_jit else None
        got = offset_score(w, off, QMASK) if got is None else got
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    np.testing.assert_allclose(prev_token_score(w, QMASK), offset_score(w, 1, QMASK))


def test_induction_score_matches_numpy(weights):
    toks = np.array([3, 4, 3, 4, 5, 3])
    w = jnp.asarray(weights, jnp.float32)

    def ind(row, q):
        keys = [j + 1 for j in range(q - 1) if toks[j] == toks[q]]
        return row[keys].sum() if keys else np.nan

    ref = _loop(weights, ind, np.ones(S, bool))
    np.testing.assert_allclose(jax.jit(induction_score)(w, toks), ref, rtol=1e-5)
    # an ideal induction head on a repeated sequence scores 1, a previous-token head 0
    rep = jnp.array([1, 2, 3, 4, 1, 2, 3, 4])
    ideal = jnp.eye(8, k=-3)  # query q looks at q - 3 = the token after its earlier copy
    assert float(induction_score(ideal, rep)) == pytest.approx(1.0)
    assert float(induction_score(jnp.eye(8, k=-1), rep)) == pytest.approx(0.0)


def test_scores_vmap_over_batch(weights):
    w = jnp.asarray(np.stack([weights, weights[::-1]]), jnp.float32)  # [batch, layer, head, q, k]
    got = jax.vmap(head_entropy, in_axes=(0, None))(w, QMASK)
    # the same sums of S nonnegative terms, perhaps in another order: each is within
    # ~S eps (relative) of the exact value, so they agree to 2 S eps (+ log's rounding)
    rtol = 4 * S * np.finfo(np.float32).eps
    np.testing.assert_allclose(got[1], head_entropy(w[1], QMASK), rtol=rtol)
    np.testing.assert_allclose(head_entropy(w, QMASK), got, rtol=rtol)  # broadcasting too


def _np_rollout(w, residual=0.5):
    a = w.mean(1)  # [layer, q, k]
    r = np.eye(S)
    for li in range(a.shape[0]):
        al = residual * np.eye(S) + (1 - residual) * a[li]
        al = al / al.sum(-1, keepdims=True)
        r = al @ r
    return r


@pytest.mark.parametrize("residual", [0.0, 0.5, 0.9])
def test_rollout_matches_numpy(weights, residual):
    w = jnp.asarray(weights, jnp.float32)
    got = jax.jit(rollout, static_argnames=("residual", "layout"))(
        w, residual=residual, layout="lhqk"
    )
    np.testing.assert_allclose(got, _np_rollout(weights, residual), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-5)
    batched = jnp.stack([w, w[:, ::-1]], axis=1)  # [layer, batch, head, q, k]
    np.testing.assert_allclose(
        rollout(batched, residual=residual, layout="lbhqk")[0], got, atol=1e-6
    )
    first = jnp.moveaxis(batched, 1, 0)  # [batch, layer, head, q, k]
    np.testing.assert_allclose(rollout(first, residual=residual, layout="blhqk")[0], got, atol=1e-6)


def test_bad_inputs_raise(weights):
    w = jnp.asarray(weights)
    with pytest.raises(ValueError, match="weights"):
        head_entropy(jnp.ones(3))
    with pytest.raises(ValueError, match="query_mask"):
        head_entropy(w, jnp.ones(4, bool))
    with pytest.raises(ValueError, match="key_selected"):
        attention_to(w, jnp.ones(4, bool))
    with pytest.raises(TypeError, match="offset"):
        offset_score(w, 1.5)
    with pytest.raises(ValueError, match="residual"):
        rollout(w, residual=2.0, layout="lhqk")
    with pytest.raises(ValueError, match="head_axis"):
        rollout(w, head_axis=0)
    with pytest.raises(ValueError, match="tokens"):
        induction_score(w, jnp.zeros(4, jnp.int32))


def _f32(x):
    return np.asarray(x, np.float32)  # the plots draw float32 images


def test_plots_show_the_data(weights):
    toks = [f"t{i}" for i in range(S)]
    fig = attention_grid(weights, toks, suptitle="grid")
    assert isinstance(fig, Figure) and len(fig.axes) == L * H
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == toks
    for i, ax in enumerate(fig.axes):  # panel i is (layer, head) = divmod(i, H)
        np.testing.assert_array_equal(ax.images[0].get_array(), _f32(weights[divmod(i, H)]))
    ro = _np_rollout(weights)
    fig = attention_heatmap(ro, toks, title="rollout")
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), _f32(ro))
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == toks
    scores = weights[..., 0, 1] + weights[..., 2, 0]
    fig = head_score_map(scores, title="scores")
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), _f32(scores))
    with pytest.raises(ValueError, match="tokens"):
        attention_grid(weights, toks[:3])
    with pytest.raises(ValueError, match="layer, head"):
        attention_grid(weights[0])
    with pytest.raises(ValueError, match="scores"):
        head_score_map(weights)
