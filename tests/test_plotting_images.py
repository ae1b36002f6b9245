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
        image_grid(np.zeros((2, 3, 3)), ["x"])


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
