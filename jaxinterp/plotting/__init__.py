"""Plots: every function takes arrays and returns a matplotlib Figure (never shown)."""

from jaxinterp.plotting._images import image_grid

__all__ = ["image_grid"]
