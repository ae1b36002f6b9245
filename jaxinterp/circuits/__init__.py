"""Circuits and change: lenses, steering with generation, edges and attribution graphs, checkpoints.

Built on :mod:`jaxinterp.capture` and :mod:`jaxinterp.interventions`; sites are named as there
(the :class:`jaxinterp.models.Decoder` residual stream is ``embed``, ``blocks_{i}``).

Lenses (``_lens.py``):

* :func:`logit_lens` — every layer's residual stream through the final norm and unembedding,
  ``[layer, batch, seq, vocab]`` in one call; :func:`decoder_readout` gives that readout
  for a :class:`jaxinterp.models.Decoder` (any model: pass your own ``readout``).
* :func:`init_tuned_lens`, :func:`fit_tuned_lens`, :func:`tuned_lens` — affine translators,
  one per layer (Belrose et al. 2023), trained with optax on streamed batches, all layers in
  one compiled step; :func:`lens_metrics` — per-layer KL to the final logits and top-1
  agreement.

Steering and generation (``_steer.py``):

* :func:`add` — the edit ``act + scale · direction`` at chosen positions (an
  :func:`jaxinterp.interventions.intervene` edit); :func:`contrastive_direction` — mean
  activation difference between two prompt sets.
* :func:`generate` — greedy or sampled (temperature, top-k, top-p) continuation with any
  ``{site: edit}``, one ``lax.scan`` under ``jit``; :func:`steering_sweep` — layers × scales
  × directions in one vmapped call.

Across checkpoints (``_checkpoints.py``):

* :func:`stack_checkpoints` stacks variables of one architecture on a leading axis;
  :func:`over_checkpoints` runs any analysis ``fn(variables, ...)`` over the stack in one
  compiled call (``jit(vmap(fn))``).

Edges (``_graph.py``, ``_edges.py``):

* :func:`edge_graph` — the component graph of a residual model (input, heads, MLPs ->
  query/key/value inputs, MLP inputs, logits) from a :class:`ResidualLayout`
  (:func:`decoder_layout`, :func:`transformer_layout`); :func:`rewired_forward` — one forward
  pass in which every receiver reads its own input.
* :func:`eap`, :func:`eap_ig` — edge attribution patching (Syed et al. 2023) and with
  integrated gradients (Hanna et al. 2024), all edges in a few passes;
  :func:`edge_patching` — exact patching of every edge (vmapped in chunks);
  :func:`patch_edges`, :func:`path_mask` — sets of edges jointly, path patching.

Attribution graphs (``_attribution.py``):

* :func:`attribution_graph` — direct effects between transcoder features, error nodes,
  tokens and logits for one prompt (frozen attention and norms); :func:`mlp_transcoders` —
  exact transcoders (an MLP's own neurons); :func:`prune_graph`, :func:`graph_json` —
  circuit-tracer's pruning and front-end JSON.
"""

from jaxinterp.circuits._attribution import (
    AttributionGraph,
    Transcoder,
    attribution_graph,
    graph_json,
    mlp_transcoders,
    prune_graph,
)
from jaxinterp.circuits._checkpoints import over_checkpoints, stack_checkpoints
from jaxinterp.circuits._edges import (
    EdgeScores,
    eap,
    eap_ig,
    edge_patching,
    patch_edges,
    path_mask,
)
from jaxinterp.circuits._graph import (
    EdgeGraph,
    ResidualLayout,
    decoder_layout,
    edge_graph,
    rewired_forward,
    transformer_layout,
)
from jaxinterp.circuits._lens import (
    FitResult,
    LensMetrics,
    TunedLens,
    decoder_readout,
    fit_tuned_lens,
    init_tuned_lens,
    lens_metrics,
    logit_lens,
    tuned_lens,
)
from jaxinterp.circuits._steer import (
    Add,
    SweepResult,
    add,
    contrastive_direction,
    generate,
    steering_sweep,
)

__all__ = [
    # lenses, steering, checkpoints
    "Add",
    "FitResult",
    "LensMetrics",
    "SweepResult",
    "TunedLens",
    "add",
    "contrastive_direction",
    "decoder_readout",
    "fit_tuned_lens",
    "generate",
    "init_tuned_lens",
    "lens_metrics",
    "logit_lens",
    "over_checkpoints",
    "stack_checkpoints",
    "steering_sweep",
    "tuned_lens",
    # edges
    "AttributionGraph",
    "EdgeGraph",
    "EdgeScores",
    "ResidualLayout",
    "Transcoder",
    "attribution_graph",
    "decoder_layout",
    "eap",
    "eap_ig",
    "edge_graph",
    "edge_patching",
    "graph_json",
    "mlp_transcoders",
    "patch_edges",
    "path_mask",
    "prune_graph",
    "rewired_forward",
    "transformer_layout",
]
