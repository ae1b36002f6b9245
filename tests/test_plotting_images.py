"""image_grid: layout, titles, per-image vs shared scaling, errors."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from jaxinterp.plotting import image_grid


def test_grid_layout_titles_and_scaling():
    imgs = np.stack([np.full((4, 4), 1.0), np.arange(16.0).reshape(4, 4), 3 * np.eye(4)])
    fig = image_grid(imgs, ["a", "b", "c"], ncols=2, suptitle="t")
    assert isinstance(fig, Figure)
    axes = fig.axes
    assert len(axes) == 4  # 2 × 2 grid, last one empty
    assert [ax.get_title() for ax in axes[:3]] == ["a", "b", "c"]
    assert not axes[3].images
    shown = np.asarray(axes[1].images[0].get_array())
    np.testing.assert_allclose(shown, np.arange(16.0).reshape(4, 4) / 15.0)
    np.testing.assert_allclose(np.asarray(axes[0].images[0].get_array()), 0.0)  # constant image


def test_shared_range_keeps_brightness_comparable():
    imgs = np.stack([np.full((2, 2), 1.0), np.full((2, 2), 3.0), np.zeros((2, 2))])
    fig = image_grid(imgs, shared_range=True)
    vals = [float(np.asarray(ax.images[0].get_array()).mean()) for ax in fig.axes[:3]]
    np.testing.assert_allclose(vals, [1 / 3, 1.0, 0.0])


def test_channel_axis_handling_and_errors():
    fig = image_grid(np.random.default_rng(0).random((2, 5, 5, 1)))
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (5, 5)
    fig = image_grid(np.random.default_rng(0).random((1, 5, 5, 3)))
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (5, 5, 3)
    with pytest.raises(ValueError, match=r"images: expected \[n, h, w\].*got shape \(5, 5\)"):
        image_grid(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="titles: expected 2 labels, got 1"):
        image_grid(np.zeros((2, 4, 4)), ["x"])  # (2, 3, 3) is ambiguous: raises first


def test_effect_scatter_points_and_identity_line():
    from jaxinterp.plotting import effect_scatter

    x, y = np.array([0.0, 0.5, 1.0]), np.array([0.1, 0.4, 0.7])
    fig = effect_scatter(x, y, xlabel="real", ylabel="estimate", title="t")
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), np.stack([x, y], 1))
    np.testing.assert_allclose(ax.lines[0].get_xdata(), [0.0, 1.0])
    assert ax.get_xlabel() == "real" and ax.get_title() == "t"
    with pytest.raises(ValueError, match="y: expected 3 values like x, got 2"):
        effect_scatter(x, y[:2])


# ------------------------------------------------------------------ content of the other plots


def _ticklabels(labels):
    return [t.get_text() for t in labels]


def test_attention_grid_panels_equal_weights_and_labels():
    from jaxinterp.plotting import attention_grid

    rng = np.random.default_rng(0)
    w = rng.random((2, 3, 4, 4)).astype(np.float32)
    toks = ["a", "b", "c", "d"]
    fig = attention_grid(w, toks, layer_names=["L0", "L1"], suptitle="s")
    assert len(fig.axes) == 6
    for li in range(2):
        for hi in range(3):
            ax = fig.axes[li * 3 + hi]
            np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), w[li, hi])
            assert ax.images[0].get_clim() == (0.0, 1.0)
            assert ax.get_title() == (f"head {hi}" if li == 0 else "")
    assert [fig.axes[0].get_ylabel(), fig.axes[3].get_ylabel()] == ["L0", "L1"]
    assert _ticklabels(fig.axes[0].get_yticklabels()) == toks
    assert _ticklabels(fig.axes[3].get_xticklabels()) == toks  # keys on the bottom row
    assert fig.get_suptitle() == "s"


def test_attention_heatmap_image_colorbar_and_ticks():
    from jaxinterp.plotting import attention_heatmap

    w = np.array([[0.2, 0.8, 0.0], [0.5, 0.25, 0.25]], np.float32)
    fig = attention_heatmap(w, ["q0", "q1"], key_tokens=["k0", "k1", "k2"], title="t")
    ax, cbar = fig.axes  # the heatmap and its colour bar
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), w)
    assert ax.images[0].get_clim() == (0.0, pytest.approx(0.8))
    assert cbar.get_ylim() == (0.0, pytest.approx(0.8))
    assert _ticklabels(ax.get_yticklabels()) == ["q0", "q1"]
    assert _ticklabels(ax.get_xticklabels()) == ["k0", "k1", "k2"]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("key", "query", "t")


def test_head_score_map_values_and_annotations():
    from jaxinterp.plotting import head_score_map

    s = np.array([[0.1, 0.9], [0.4, -0.3], [1.5, 0.0]], np.float32)
    fig = head_score_map(s, title="offset", fmt="{:.1f}")
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), s)
    assert len(fig.axes) == 2  # heatmap + colour bar
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert texts == {((h, li), f"{s[li, h]:.1f}") for li in range(3) for h in range(2)}
    assert list(ax.get_xticks()) == [0, 1] and list(ax.get_yticks()) == [0, 1, 2]
    assert ax.get_title() == "offset"
    assert not head_score_map(s, annotate=False).axes[0].texts


def test_patching_heatmap_symmetric_limits_and_labels():
    from jaxinterp.plotting import patching_heatmap

    e = np.array([[0.5, -2.0, 0.1], [np.nan, 1.0, 0.0]], np.float32)
    fig = patching_heatmap(e, row_labels=["r0", "r1"], col_labels=["c0", "c1", "c2"], title="t")
    ax, cbar = fig.axes
    np.testing.assert_array_equal(np.ma.filled(ax.images[0].get_array(), np.nan), e)
    assert ax.images[0].get_clim() == (-2.0, 2.0)  # max |finite effect|, symmetric
    assert cbar.get_ylabel() == "normalized effect"
    assert _ticklabels(ax.get_yticklabels()) == ["r0", "r1"]
    assert _ticklabels(ax.get_xticklabels()) == ["c0", "c1", "c2"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2f}" for v in e.ravel())
    fig = patching_heatmap(np.ones((2, 2)), limit=5.0)
    assert fig.axes[0].images[0].get_clim() == (-5.0, 5.0)
    assert _ticklabels(fig.axes[0].get_yticklabels()) == ["layer 0", "layer 1"]


def test_probe_accuracy_lines_and_selectivity():
    from jaxinterp.plotting import probe_accuracy

    acc = np.array([[0.5, 0.9], [0.7, 0.95], [0.8, 0.99]])
    ctrl = np.array([[0.4, 0.5], [0.4, 0.6], [0.5, 0.6]])
    fig = probe_accuracy(
        acc, layer_names=["a", "b", "c"], task_names=["x", "y"], control=ctrl, chance=[0.1, 0.5]
    )
    ax, ax2 = fig.axes
    solid = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    dotted = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    for t in range(2):
        np.testing.assert_allclose(solid[t].get_ydata(), acc[:, t])
        np.testing.assert_allclose(dashed[t].get_ydata(), ctrl[:, t])
        np.testing.assert_allclose(dotted[t].get_ydata(), [[0.1, 0.5][t]] * 2)
        np.testing.assert_allclose(ax2.lines[t].get_ydata(), acc[:, t] - ctrl[:, t])
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["x", "x control"]
    assert _ticklabels(ax.get_xticklabels()) == ["a", "b", "c"]
    assert len(probe_accuracy(acc).axes) == 1  # no control: one panel


def test_actmax_traces_smoothing_and_dataset_lines():
    from jaxinterp.plotting import actmax_traces

    tr = np.array([[0.0, 1.0, 2.0, 3.0, 10.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    fig = actmax_traces(tr, ["u0", "u1"], dataset_best=np.array([2.5, np.nan]), smooth=2)
    ax = fig.axes[0]
    lines = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    # a 2-step moving average, computed independently
    np.testing.assert_allclose(lines[0].get_ydata(), [0.5, 1.5, 2.5, 6.5])
    np.testing.assert_allclose(lines[0].get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(lines[1].get_ydata(), [5.0] * 4)
    dotted = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert len(dotted) == 1 and dotted[0].get_ydata()[0] == 2.5  # the NaN reference is skipped
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["u0", "u1"]
    assert ax.get_ylabel() == "objective (2-step mean)"
