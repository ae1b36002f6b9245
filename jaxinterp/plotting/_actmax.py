"""Activation-maximization traces: the objective over the ascent, against dataset references."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def actmax_traces(
    traces: np.ndarray,
    labels: Sequence[str] | None = None,
    *,
    dataset_best: np.ndarray | None = None,
    smooth: int = 1,
    title: str | None = None,
    size: tuple[float, float] = (5.0, 3.2),
) -> Figure:
    """The objective at each ascent step, one line per target.

    Args:
      traces: ``[target, steps]`` objective values (``maximize(...).traces``).
      labels: ``target`` legend labels (legend drawn for up to 12 targets).
      dataset_best: ``[target]`` best value over a dataset (``top_k_examples(...).values[:, 0]``),
        drawn as dotted horizontal lines in the same colours.
      smooth: moving-average window in steps (traces taken under random transforms are noisy);
        1 draws the raw values.
      title: axes title.
      size: figure size in inches.

    Returns:
      A matplotlib ``Figure`` (never shown).

    Raises:
      ValueError: ``traces`` is not a non-empty ``[target, steps]``, ``smooth`` is not an int
        in ``[1, steps]``, or ``labels``/``dataset_best`` have another length.

    >>> len(actmax_traces(np.zeros((3, 10))).axes[0].lines)
    3
    """
    traces = np.asarray(traces, dtype=np.float64)
    if traces.ndim != 2 or 0 in traces.shape:
        raise ValueError(f"traces: expected a non-empty [target, steps], got shape {traces.shape}")
    n = traces.shape[0]
    if isinstance(smooth, bool) or not isinstance(smooth, (int, np.integer)):
        raise ValueError(f"smooth: expected an int window of steps, got {smooth!r}")
    if not 1 <= smooth <= traces.shape[1]:
        raise ValueError(f"smooth: expected a window in [1, {traces.shape[1]}] steps, got {smooth}")
    if smooth > 1:
        kernel = np.ones(smooth) / smooth
        traces = np.stack([np.convolve(t, kernel, mode="valid") for t in traces])
    steps = np.arange(traces.shape[1]) + (smooth - 1)
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels: expected {n} labels, got {len(labels)}")
    if dataset_best is not None:
        dataset_best = np.asarray(dataset_best, dtype=np.float64)
        if dataset_best.shape != (n,):
            raise ValueError(f"dataset_best: expected shape ({n},), got {dataset_best.shape}")
    fig = Figure(figsize=size)
    ax = fig.subplots()
    for t in range(n):
        color = f"C{t % 10}"
        ax.plot(steps, traces[t], color=color, lw=1.2, label=None if labels is None else labels[t])
        if dataset_best is not None and np.isfinite(dataset_best[t]):
            ax.axhline(dataset_best[t], color=color, ls=":", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel("objective" if smooth == 1 else f"objective ({smooth}-step mean)")
    if labels is not None and n <= 12:
        ax.legend(fontsize=7, ncol=2)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
