"""Attention plots: a layer × head grid of heatmaps, a single (rollout) heatmap, head scores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def _check_labels(tokens: Sequence[str] | None, n: int, what: str) -> None:
    if tokens is not None and len(tokens) != n:
        raise ValueError(f"{what}: expected {n} labels (one per position), got {len(tokens)}")


def attention_grid(
    weights: np.ndarray,
    tokens: Sequence[str] | None = None,
    *,
    key_tokens: Sequence[str] | None = None,
    layer_names: Sequence[str] | None = None,
    cmap: str = "viridis",
    size: float = 1.3,
    suptitle: str | None = None,
) -> Figure:
    """A layer × head grid of attention heatmaps for one example.

    Token labels are drawn on the left column (queries) and the bottom row (keys).

    Args:
      weights: ``[layer, head, q, k]`` attention weights of one example (slice padding off
        first, e.g. ``w[:, :, :n, :n]``).
      tokens: ``q`` query labels; also the key labels unless ``key_tokens`` is given.
      key_tokens: ``k`` key labels.
      layer_names: ``layer`` row titles (default ``"layer i"``).
      cmap: colormap; every panel uses the range [0, 1].
      size: inches per panel.
      suptitle: figure title.

    Returns:
      A matplotlib ``Figure``.

    Raises:
      ValueError: ``weights`` is not a non-empty 4-D array, or a label list has another
        length, or ``size`` is not positive.

    >>> len(attention_grid(np.full((2, 3, 4, 4), 0.25)).axes)
    6
    """
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 4 or 0 in w.shape:
        raise ValueError(f"weights: expected a non-empty [layer, head, q, k], got shape {w.shape}")
    if not size > 0:
        raise ValueError(f"size: expected a positive number of inches, got {size!r}")
    n_layer, n_head, nq, nk = w.shape
    _check_labels(tokens, nq, "tokens")
    key_tokens = tokens if key_tokens is None else key_tokens
    _check_labels(key_tokens, nk, "key_tokens")
    if layer_names is not None and len(layer_names) != n_layer:
        raise ValueError(f"layer_names: expected {n_layer} names, got {len(layer_names)}")
    labelled = tokens is not None and max(nq, nk) <= 40
    extra = 0.9 if labelled else 0.3
    fig = Figure(figsize=(size * n_head + extra, size * n_layer + extra + (0.4 if suptitle else 0)))
    axes = fig.subplots(n_layer, n_head, squeeze=False)
    font = max(3.0, min(7.0, 90.0 / max(nq, nk)))
    for li in range(n_layer):
        for hi in range(n_head):
            ax = axes[li, hi]
            ax.imshow(w[li, hi], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if li == 0:
                ax.set_title(f"head {hi}", fontsize=8)
            if hi == 0:
                name = layer_names[li] if layer_names is not None else f"layer {li}"
                ax.set_ylabel(name, fontsize=8)
                if labelled:
                    ax.set_yticks(range(nq), list(tokens), fontsize=font)
            if li == n_layer - 1 and labelled:
                ax.set_xticks(range(nk), list(key_tokens), fontsize=font, rotation=90)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def attention_heatmap(
    weights: np.ndarray,
    tokens: Sequence[str] | None = None,
    *,
    key_tokens: Sequence[str] | None = None,
    title: str | None = None,
    cmap: str = "viridis",
    size: float = 4.5,
) -> Figure:
    """One ``[q, k]`` heatmap with token labels, e.g. an attention rollout.

    Args:
      weights: ``[q, k]`` (e.g. from :func:`jaxinterp.attention.rollout`).
      tokens: ``q`` query labels (also the key labels unless ``key_tokens`` is given).
      key_tokens: ``k`` key labels.
      title: axes title.
      cmap: colormap (range from 0 to the maximum).
      size: figure width in inches.

    Returns:
      A matplotlib ``Figure`` with a colorbar (range 0 to the largest finite weight).

    Raises:
      ValueError: ``weights`` is not a non-empty ``[q, k]``, or a label list has another length.

    >>> attention_heatmap(np.eye(3) * 0.5).axes[0].images[0].get_clim()
    (0.0, 0.5)
    """
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim != 2 or 0 in w.shape:
        raise ValueError(f"weights: expected a non-empty [q, k], got shape {w.shape}")
    nq, nk = w.shape
    _check_labels(tokens, nq, "tokens")
    key_tokens = tokens if key_tokens is None else key_tokens
    _check_labels(key_tokens, nk, "key_tokens")
    fig = Figure(figsize=(size, size * nq / max(nk, 1) + 0.6))
    ax = fig.subplots()
    finite = w[np.isfinite(w)]
    top = float(finite.max()) if finite.size else 0.0
    im = ax.imshow(w, cmap=cmap, vmin=0.0, vmax=top if top > 0 else 1.0, interpolation="nearest")
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    if tokens is not None:
        ax.set_yticks(range(nq), list(tokens), fontsize=7)
    if key_tokens is not None:
        ax.set_xticks(range(nk), list(key_tokens), fontsize=7, rotation=90)
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def head_score_map(
    scores: np.ndarray,
    *,
    title: str | None = None,
    cmap: str = "magma",
    annotate: bool = True,
    fmt: str = "{:.2f}",
    size: float = 0.55,
) -> Figure:
    """A ``[layer, head]`` table of per-head scores as a heatmap.

    Args:
      scores: ``[layer, head]`` (e.g. :func:`jaxinterp.attention.offset_score` per head).
      title: axes title.
      cmap: colormap.
      annotate: print each value in its cell.
      fmt: format of the annotations.
      size: inches per cell.

    Returns:
      A matplotlib ``Figure``.

    Raises:
      ValueError: ``scores`` is not a non-empty ``[layer, head]``.
      TypeError: ``fmt`` is not a format string such as ``"{:.2f}"``.

    >>> len(head_score_map(np.zeros((2, 4))).axes[0].texts)
    8
    """
    s = np.asarray(scores, dtype=np.float32)
    if s.ndim != 2 or 0 in s.shape:
        raise ValueError(f"scores: expected a non-empty [layer, head], got shape {s.shape}")
    try:
        fmt.format(0.5)
    except (AttributeError, ValueError, IndexError, KeyError):
        raise TypeError(f"fmt: expected a format string such as '{{:.2f}}', got {fmt!r}") from None
    n_layer, n_head = s.shape
    fig = Figure(figsize=(size * n_head + 1.6, size * n_layer + 0.9))
    ax = fig.subplots()
    im = ax.imshow(s, cmap=cmap, interpolation="nearest", aspect="auto")
    ax.set_xticks(range(n_head))
    ax.set_yticks(range(n_layer))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    if annotate:
        lo, hi = float(np.nanmin(s)), float(np.nanmax(s))
        mid = (lo + hi) / 2
        for li in range(n_layer):
            for hi_ in range(n_head):
                v = float(s[li, hi_])
                ax.text(
                    hi_,
                    li,
                    fmt.format(v),
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="black" if v > mid else "white",
                )
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig
