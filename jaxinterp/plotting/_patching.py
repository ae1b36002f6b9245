"""Patching plots: a heatmap of per-site effects (layer × head, layer × position, ...)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def patching_heatmap(
    effects: np.ndarray,
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    row_name: str = "layer",
    col_name: str = "head",
    title: str | None = None,
    annotate: bool | None = None,
    cmap: str = "RdBu_r",
    limit: float | None = None,
    colorbar_label: str = "normalized effect",
) -> Figure:
    """A heatmap of patching effects, diverging around 0 (blue negative, red positive).

    Args:
      effects: ``[row, col]`` effects, e.g. ``[layer, head]`` or ``[layer, position]`` from
        ``Sites.unflatten(result.normalized)``; for ``[layer, head, position]`` reshape to
        ``[layer * head, position]`` and pass ``row_labels``.
      row_labels: ``row`` tick labels (default ``"{row_name} i"``).
      col_labels: ``col`` tick labels (default ``0..col-1``).
      row_name, col_name: axis titles.
      title: figure title.
      annotate: write the value in each cell (default: when there are at most 200 cells).
      cmap: a diverging colormap.
      limit: the colour range is ``[-limit, limit]`` (default ``max(|effects|)``, at least 1e-6).
      colorbar_label: label of the colour bar.

    Returns:
      A matplotlib ``Figure``.

    Raises:
      ValueError: ``effects`` is not a non-empty ``[row, col]``, a label list has another
        length, or ``limit`` is not a positive finite number.

    >>> patching_heatmap(np.array([[0.5, -1.0]])).axes[0].images[0].get_clim()
    (-1.0, 1.0)
    """
    e = np.asarray(effects, dtype=np.float32)
    if e.ndim != 2 or 0 in e.shape:
        raise ValueError(f"effects: expected a non-empty [row, col] array, got shape {e.shape}")
    n_row, n_col = e.shape
    if row_labels is not None and len(row_labels) != n_row:
        raise ValueError(f"row_labels: expected {n_row} labels, got {len(row_labels)}")
    if col_labels is not None and len(col_labels) != n_col:
        raise ValueError(f"col_labels: expected {n_col} labels, got {len(col_labels)}")
    if limit is not None and not (np.isfinite(limit) and limit > 0):
        raise ValueError(f"limit: expected a positive finite colour limit, got {limit!r}")
    finite = e[np.isfinite(e)]
    lim = float(limit) if limit is not None else max(float(np.abs(finite).max(initial=0)), 1e-6)
    if annotate is None:
        annotate = e.size <= 200
    fig = Figure(figsize=(min(1.0 + 0.55 * n_col, 14), 1.2 + 0.45 * n_row))
    ax = fig.subplots()
    im = ax.imshow(e, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(n_col), list(col_labels) if col_labels is not None else range(n_col))
    rows = row_labels if row_labels is not None else [f"{row_name} {i}" for i in range(n_row)]
    ax.set_yticks(range(n_row), list(rows))
    ax.set_xlabel(col_name)
    ax.set_ylabel(row_name)
    if annotate:
        for (i, j), v in np.ndenumerate(e):
            color = "white" if abs(v) > 0.6 * lim else "black"
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(im, ax=ax, label=colorbar_label)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
