"""Circuits: edge attribution, edge and path patching, attribution graphs.

(Minimal package file of the "edges" branch; the package file of the "lenses" branch has an
``# --- edges`` section that takes the imports and names below.)

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

# --- edges (helper "edges") below ---
from jaxinterp.circuits._attribution import (
    AttributionGraph,
    Transcoder,
    attribution_graph,
    graph_json,
    mlp_transcoders,
    prune_graph,
)
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

__all__ = [
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
