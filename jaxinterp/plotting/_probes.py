"""Probe accuracy by layer, per task, with control tasks and selectivity."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def probe_accuracy(
    accuracy: np.ndarray,
    *,
    layer_names: Sequence[str] | None = None,
    task_names: Sequence[str] | None = None,
    control: np.ndarray | None = None,
    chance: Sequence[float] | None = None,
    title: str | None = None,
    size: tuple[float, float] = (5.0, 3.2),
) -> Figure:
    """Probe accuracy across layers, one line per task; with control tasks, selectivity too.

    Args:
      accuracy: ``[layer, task]`` test accuracy.
      layer_names: ``layer`` tick labels (default ``0 .. layer-1``).
      task_names: ``task`` legend labels.
      control: ``[layer, task]`` control-task accuracy (Hewitt & Liang); drawn dashed, and a
        second panel shows selectivity ``accuracy - control``.
      chance: per-task chance level, drawn as dotted lines.
      title: figure title.
      size: inches per panel.

    Returns:
      A matplotlib ``Figure`` (never shown).

    Raises:
      ValueError: ``accuracy`` is not a non-empty ``[layer, task]``, or ``layer_names``,
        ``task_names``, ``control`` or ``chance`` do not match it.

    >>> len(probe_accuracy(np.array([[0.5], [0.9]])).axes[0].lines)
    1
    """
    acc = np.asarray(accuracy, dtype=np.float64)
    if acc.ndim != 2 or 0 in acc.shape:
        raise ValueError(f"accuracy: expected a non-empty [layer, task], got shape {acc.shape}")
    layers, tasks = acc.shape
    names = [str(i) for i in range(layers)] if layer_names is None else list(layer_names)
    tnames = [f"task {t}" for t in range(tasks)] if task_names is None else list(task_names)
    if len(names) != layers:
        raise ValueError(f"layer_names: expected {layers} names, got {len(names)}")
    if len(tnames) != tasks:
        raise ValueError(f"task_names: expected {tasks} names, got {len(tnames)}")
    if control is not None:
        control = np.asarray(control, dtype=np.float64)
        if control.shape != acc.shape:
            raise ValueError(f"control: expected shape {acc.shape}, got {control.shape}")
    if chance is not None and len(chance) != tasks:
        raise ValueError(f"chance: expected {tasks} values, got {len(chance)}")
    panels = 1 if control is None else 2
    fig = Figure(figsize=(size[0] * panels, size[1]))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    xs = np.arange(layers)
    colors = [f"C{t % 10}" for t in range(tasks)]
    ax = axes[0]
    for t in range(tasks):
        ax.plot(xs, acc[:, t], "o-", color=colors[t], label=tnames[t])
        if control is not None:
            ax.plot(
                xs, control[:, t], "s--", color=colors[t], alpha=0.6, label=f"{tnames[t]} control"
            )
        if chance is not None:
            ax.axhline(chance[t], color=colors[t], ls=":", lw=1)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    if control is not None:
        sel = acc - control
        ax2 = axes[1]
        for t in range(tasks):
            ax2.plot(xs, sel[:, t], "o-", color=colors[t], label=tnames[t])
        ax2.axhline(0, color="k", lw=0.8)
        ax2.set_ylabel("selectivity (task − control)")
    for a in axes:
        a.set_xticks(xs, names, rotation=30 if max(len(s) for s in names) > 6 else 0)
        a.set_xlabel("layer")
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
