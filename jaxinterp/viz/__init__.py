"""Interactive views: results as self-contained HTML pages, and treescope figures.

Every view is one HTML file — inline CSS and JS written for it, the data embedded as JSON, no
network, no server — that also renders in a notebook (``_repr_html_``, inside an iframe):

* :func:`attention_view` — the attention explorer: tokens as text, hover one to see where each
  head attends; a layer × head grid of per-head scores (:func:`head_scores`: previous-token,
  offset, induction, entropy, distance — from :mod:`jaxinterp.attention`), click a head;
* :func:`feature_gallery` (:func:`gallery_from_actmax`) — per target the optimized input next
  to its top-k dataset examples (images, or tokens coloured by activation), the values and the
  optimization trace;
* :func:`patching_view` — patching / attribution maps over a site grid (``Sites`` axis names
  and paths), hover values; :func:`probe_view` — probe accuracy and selectivity by layer;
* :func:`edge_graph_figure`, :func:`attribution_graph_figure` — matplotlib drawings of a
  circuit: the strongest edges of an EAP result or of an attribution graph, by layer;
  :func:`circuit_view` the same as an interactive page (hover edges and nodes, a slider);
* :func:`index_page` — a page linking views (``jaxinterp demo`` writes ``index.html``);
* :func:`named_array` — arrays with named axes (``layer, head, q, k``) as treescope figures.

Token text is data, never markup: the JSON is escaped for the ``<script>`` element it sits in
and the scripts set ``textContent`` only, so a token ``<script>`` shows as those characters.
"""

from jaxinterp.viz._attention import AttentionView, attention_view, head_scores
from jaxinterp.viz._circuit import attribution_graph_figure, circuit_view, edge_graph_figure
from jaxinterp.viz._gallery import feature_gallery, gallery_from_actmax
from jaxinterp.viz._maps import patching_view, probe_view
from jaxinterp.viz._page import View, embed_json, index_page, png_data_uri
from jaxinterp.viz._treescope import NamedArray, named_array

__all__ = [
    "AttentionView",
    "NamedArray",
    "View",
    "attention_view",
    "attribution_graph_figure",
    "circuit_view",
    "edge_graph_figure",
    "embed_json",
    "feature_gallery",
    "gallery_from_actmax",
    "head_scores",
    "index_page",
    "named_array",
    "patching_view",
    "png_data_uri",
    "probe_view",
]
