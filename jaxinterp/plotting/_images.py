"""Image grids: optimized inputs, dataset examples, feature maps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure


def image_grid(
    images: np.ndarray,
    titles: Sequence[str] | None = None,
    *,
    ncols: int = 8,
    cmap: str = "gray",
    size: float = 1.4,
    suptitle: str | None = None,
    shared_range: bool = False,
) -> Figure:
    """A grid of images with optional per-image titles.

    Args:
      images: ``[n, h, w]`` or ``[n, h, w, c]`` (``c`` of 1 or 3); each image is scaled to its
        own min–max range for display (unless ``shared_range``). A 3-D shape ending in 1 or 3
        raises (one ``[h, w, c]`` image or ``n`` narrow grey ones?): add the missing axis.
      titles: ``n`` labels, e.g. target names.
      ncols: images per row.
      cmap: colormap for single-channel images.
      size: inches per image.
      suptitle: figure title.
      shared_range: scale all images by one common min–max range, so that brightness is
        comparable across panels.

    Returns:
      A matplotlib ``Figure`` (never shown; save or display it yourself).

    Raises:
      ValueError: wrong shape, no images, NaN/inf pixels, ``titles`` of another length, or
        ``ncols``/``size`` below 1 / not positive.

    >>> fig = image_grid(np.arange(8.0).reshape(2, 2, 2), ["a", "b"])
    >>> [ax.get_title() for ax in fig.axes]
    ['a', 'b']
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3 and images.shape[-1] in (1, 3):
        # one [h, w, c] image would be drawn as h strips of [w, c] grey pixels
        raise ValueError(
            f"images: shape {images.shape} could be one image [h, w, {images.shape[-1]}] or "
            f"{images.shape[0]} grey images [n, h, w] of width {images.shape[-1]}, and the shape "
            "cannot tell; pass images[None] for one image, or [n, h, w, 1] for grey ones"
        )
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"images: expected [n, h, w] or [n, h, w, 1|3], got shape {images.shape}")
    n = images.shape[0]
    if n == 0 or images.size == 0:
        raise ValueError(f"images: expected at least one non-empty image, got shape {images.shape}")
    if not np.isfinite(images).all():
        raise ValueError(
            f"images: expected finite values, got {int((~np.isfinite(images)).sum())} NaN/inf "
            f"entries of {images.size}"
        )
    if isinstance(ncols, bool) or not isinstance(ncols, (int, np.integer)) or ncols < 1:
        raise ValueError(f"ncols: expected an int >= 1, got {ncols!r}")
    if not size > 0:
        raise ValueError(f"size: expected a positive number of inches, got {size!r}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"titles: expected {n} labels, got {len(titles)}")
    glo, ghi = float(images.min()), float(images.max())
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = Figure(figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        img = images[i]
        lo, hi = (glo, ghi) if shared_range else (float(img.min()), float(img.max()))
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img, cmap=cmap if img.ndim == 2 else None, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
