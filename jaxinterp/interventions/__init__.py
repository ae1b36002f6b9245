"""Causal interventions: ablate, patch and sweep activations of linen and nnx models.

* :func:`intervene` runs a model with ``{site: edit}`` applied (sites are canonical paths,
  ``"path:input"`` for a module's input, e.g. per-head results ``block_i/attn/out:input``);
  edits are :func:`zero`, :func:`mean`, :func:`resample`, :func:`replace` with an
  ``at={axis: index}`` / ``where=mask`` selection for heads, positions and neurons.
* :func:`patch_sweep` patches clean → corrupted at every site of a :class:`Sites` set
  (:func:`head_sites`, :func:`position_sites`, :func:`head_position_sites`) in one vmap,
  chunked and optionally sharded; :func:`attribution_patch` estimates the same with
  2 forwards + 1 backward. Plain calls compile once per configuration and input shapes.
  Metrics: :func:`logit_diff`, :func:`normalize`, :func:`spearman`; a metric returning
  ``[batch]`` values (``logit_diff(..., reduce="none")``, ``task.per_example_metric``) adds
  per-example effects ``[site, batch]`` and standard errors ``[site]`` to the result.
* :func:`capture_sites` records sites, globs included (``"block_*:input"``: the residual
  stream entering each block; ``"block_*/ln_2:input"``: between attention and MLP).
* :func:`offset_patching_task` builds clean/corrupted pairs for the reference offset task;
  :func:`ioi_task` indirect-object-identification prompts for a real tokenizer.

Bad arguments raise errors naming the argument; indices are never clamped or wrapped. Under
``jit``, traced out-of-range indices (``at=``, ``logit_diff`` positions, sweep sites) and
undefined metrics (``normalize`` with clean == corrupted, ``spearman`` of NaN) give NaN results
and register the check, so :func:`jaxinterp.checked` raises it (the package's value-check
policy). Per-site results are ``[site]``; ``sites.unflatten`` gives ``[*sites.grid]`` with axes
named ``sites.names`` (``[layer, head]``, ``[layer, position]``, ``[layer, head, position]``;
TransformerLens orders the last ``[layer, pos, head]``: ``jnp.moveaxis(x, 2, 1)``).

Example (head 1 of layer 0 zero-ablated)::

    f = intervene(model, variables, {"block_0/attn/out:input": zero(at={-2: 1})})
    logits = jax.jit(f)(tokens)
"""

from jaxinterp.interventions._edits import Edit, mean, replace, resample, selection_mask, zero
from jaxinterp.interventions._intervene import capture_sites, intervene
from jaxinterp.interventions._ioi import IOITask, ioi_task
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
from jaxinterp.interventions._tasks import PatchTask, offset_patching_task

__all__ = [
    "Edit",
    "IOITask",
    "PatchResult",
    "PatchTask",
    "Sites",
    "attribution_patch",
    "capture_sites",
    "head_position_sites",
    "head_sites",
    "intervene",
    "ioi_task",
    "logit_diff",
    "mean",
    "normalize",
    "offset_patching_task",
    "patch_sweep",
    "position_sites",
    "replace",
    "resample",
    "selection_mask",
    "site_grid",
    "spearman",
    "zero",
]
