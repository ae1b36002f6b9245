"""Scatter of one estimate against another, with the identity line."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def effect_scatter(
    x: np.ndarray,
    y: np.ndarray,
    *,
    xlabel: str = "x",
    ylabel: str = "y",
    title: str | None = None,
) -> Figure:
    """Scatter ``y`` against ``x`` (e.g. attribution vs real patching effects per site).

    Args:
      x: ``[site]`` reference values.
      y: ``[site]`` values compared with them.
      xlabel, ylabel: axis labels.
      title: optional title.

    Returns:
      A matplotlib ``Figure`` with the points and the dashed ``y = x`` line (over the range of
      the finite values; NaN points are not drawn).

    Raises:
      ValueError: ``x`` is empty or has no finite value, or ``y`` has another length.

    >>> effect_scatter(np.array([0.0, 1.0]), np.array([0.1, 0.9])).axes[0].get_xlabel()
    'x'
    """
    x, y = np.ravel(np.asarray(x, np.float64)), np.ravel(np.asarray(y, np.float64))
    if x.size == 0:
        raise ValueError("x: expected at least one value, got none")
    if x.shape != y.shape:
        raise ValueError(f"y: expected {x.shape[0]} values like x, got {y.shape[0]}")
    both = np.isfinite(x) & np.isfinite(y)
    if not both.any():
        raise ValueError(f"x: expected at least one finite (x, y) pair, got none of {x.size}")
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.subplots()
    ax.scatter(x, y, s=12)
    xf, yf = x[both], y[both]
    lo, hi = float(min(xf.min(), yf.min())), float(max(xf.max(), yf.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
