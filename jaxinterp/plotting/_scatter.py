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
      A matplotlib ``Figure`` with the points and the dashed ``y = x`` line.
    """
    x, y = np.ravel(np.asarray(x, np.float64)), np.ravel(np.asarray(y, np.float64))
    if x.shape != y.shape:
        raise ValueError(f"y: expected {x.shape[0]} values like x, got {y.shape[0]}")
    fig = Figure(figsize=(4.2, 3.8))
    ax = fig.subplots()
    ax.scatter(x, y, s=12)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
