"""Causal interventions: ablate, patch and sweep activations of linen and nnx models.

>>> from jaxinterp.interventions import intervene, zero
>>> # f = intervene(model, variables, {"block_0/attn/out:input": zero(at={-2: 1})})
>>> # logits = jax.jit(f)(tokens)         # head 1 of layer 0 zero-ablated
"""

from jaxinterp.interventions._edits import Edit, mean, replace, resample, selection_mask, zero
from jaxinterp.interventions._intervene import capture_sites, intervene
from jaxinterp.interventions._metrics import logit_diff, normalize, spearman
from jaxinterp.interventions._sweep import (
    PatchResult,
    Sites,
    attribution_patch,
    head_position_sites,
    head_sites,
    patch_sweep,
    position_sites,
    site_grid,
)

__all__ = [
    "Edit",
    "PatchResult",
    "Sites",
    "attribution_patch",
    "capture_sites",
    "head_position_sites",
    "head_sites",
    "intervene",
    "logit_diff",
    "mean",
    "normalize",
    "patch_sweep",
    "position_sites",
    "replace",
    "resample",
    "selection_mask",
    "site_grid",
    "spearman",
    "zero",
]
