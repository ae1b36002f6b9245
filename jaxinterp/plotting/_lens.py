"""Lens figures: per-layer KL / top-1 curves, and the classic logit-lens grid."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure


def lens_curves(
    kl: Mapping[str, np.ndarray],
    top1: Mapping[str, np.ndarray] | None = None,
    *,
    layer_names: Sequence[str] | None = None,
    title: str | None = None,
    size: tuple[float, float] = (4.5, 3.0),
) -> Figure:
    """Per-layer KL to the model's output (and top-1 agreement) for one or more lenses.

    Args:
      kl: ``{lens name: [layer] KL in nats}`` (e.g. ``{"logit lens": ..., "tuned lens": ...}``
        from :func:`jaxinterp.circuits.lens_metrics`).
      top1: the same names mapped to ``[layer]`` top-1 agreement; adds a second panel.
      layer_names: ``layer`` tick labels (default ``0 .. layer-1``).
      title: figure title.
      size: inches per panel.

    Returns:
      A matplotlib ``Figure`` (never shown).

    Raises:
      ValueError: no lens, curves of different lengths, ``top1`` names that differ from
        ``kl``'s, or ``layer_names`` of the wrong length.

    >>> fig = lens_curves({"logit": np.array([3.0, 1.0, 0.0])}, {"logit": np.array([0.1, .5, 1])})
    >>> len(fig.axes)
    2
    """
    if not isinstance(kl, Mapping) or not kl:
        raise ValueError("kl: expected a non-empty {lens name: [layer] array} mapping")
    curves = {k: np.asarray(v, np.float64) for k, v in kl.items()}
    n = {v.shape for v in curves.values()}
    if len(n) != 1 or len(next(iter(n))) != 1:
        raise ValueError(f"kl: expected [layer] arrays of one length, got shapes {sorted(n)}")
    layers = next(iter(n))[0]
    if top1 is not None and set(top1) != set(curves):
        raise ValueError(f"top1: expected the names {sorted(curves)}, got {sorted(top1)}")
    names = [str(i) for i in range(layers)] if layer_names is None else list(layer_names)
    if len(names) != layers:
        raise ValueError(f"layer_names: expected {layers} names, got {len(names)}")
    panels = 1 if top1 is None else 2
    fig = Figure(figsize=(size[0] * panels, size[1]), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    x = np.arange(layers)
    for name, c in curves.items():
        axes[0].plot(x, c, marker="o", label=name)
    axes[0].set_ylabel("KL(model ‖ lens) [nats]")
    if top1 is not None:
        for name in curves:
            t = np.asarray(top1[name], np.float64)
            if t.shape != (layers,):
                raise ValueError(f"top1: {name!r} expected shape ({layers},), got {t.shape}")
            axes[1].plot(x, t, marker="o", label=name)
        axes[1].set_ylabel("top-1 agreement")
        axes[1].set_ylim(-0.02, 1.02)
    for ax in axes:
        ax.set_xticks(x, names, rotation=45 if layers > 8 else 0)
        ax.set_xlabel("layer")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def lens_grid(
    lens_logits: np.ndarray,
    *,
    token_labels: Sequence[str] | None = None,
    decode: Callable[[int], str] | None = None,
    layer_names: Sequence[str] | None = None,
    title: str | None = None,
) -> Figure:
    """The logit-lens picture for one sequence: each layer's top token and its probability.

    Args:
      lens_logits: ``[layer, seq, vocab]`` (one batch item of
        :func:`~jaxinterp.circuits.logit_lens`).
      token_labels: ``seq`` input-token labels for the x axis.
      decode: ``token id -> text`` for the cell annotations (default the id).
      layer_names: ``layer`` labels (default ``0 .. layer-1``).
      title: figure title.

    Returns:
      A ``Figure``: colour = probability of the layer's top token, text = that token.

    Raises:
      ValueError: ``lens_logits`` not ``[layer, seq, vocab]``, or labels of the wrong length.

    >>> fig = lens_grid(np.random.default_rng(0).normal(size=(3, 4, 10)))
    >>> len(fig.axes[0].texts)
    12
    """
    z = np.asarray(lens_logits, np.float64)
    if z.ndim != 3 or 0 in z.shape:
        raise ValueError(f"lens_logits: expected [layer, seq, vocab], got shape {z.shape}")
    layers, seq, _ = z.shape
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top, prob = p.argmax(-1), p.max(-1)
    names = [str(i) for i in range(layers)] if layer_names is None else list(layer_names)
    if len(names) != layers:
        raise ValueError(f"layer_names: expected {layers} names, got {len(names)}")
    if token_labels is not None and len(token_labels) != seq:
        raise ValueError(f"token_labels: expected {seq} labels, got {len(token_labels)}")
    decode = decode or str
    fig = Figure(figsize=(0.7 * seq + 1.5, 0.4 * layers + 1.2), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(prob, cmap="Blues", vmin=0, vmax=1, aspect="auto", origin="lower")
    for i in range(layers):
        for j in range(seq):
            ax.text(
                j,
                i,
                decode(int(top[i, j])),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if prob[i, j] > 0.6 else "black",
            )
    ax.set_yticks(np.arange(layers), names)
    ax.set_xticks(
        np.arange(seq),
        token_labels if token_labels is not None else range(seq),
        rotation=90 if token_labels is not None else 0,
    )
    ax.set_ylabel("layer")
    ax.set_xlabel("input position")
    fig.colorbar(im, ax=ax, label="top-token probability")
    if title:
        ax.set_title(title)
    return fig
