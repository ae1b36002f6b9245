"""Plots: every function takes arrays and returns a matplotlib Figure (never shown)."""

from jaxinterp.plotting._actmax import actmax_traces
from jaxinterp.plotting._attention import attention_grid, attention_heatmap, head_score_map
from jaxinterp.plotting._images import image_grid
from jaxinterp.plotting._lens import lens_curves, lens_grid
from jaxinterp.plotting._patching import patching_heatmap
from jaxinterp.plotting._probes import probe_accuracy
from jaxinterp.plotting._scatter import effect_scatter

__all__ = [
    "actmax_traces",
    "attention_grid",
    "attention_heatmap",
    "effect_scatter",
    "head_score_map",
    "image_grid",
    "lens_curves",
    "lens_grid",
    "patching_heatmap",
    "probe_accuracy",
]
