"""Circuit drawings: the strongest edges of an edge-attribution result or an attribution graph.

Both drawings share one layout: a node's row is its depth in the model (the input or tokens at
the bottom, then per layer the attention heads and the MLP, the logits on top), its column its
index within the row (head, or position for attribution graphs); only nodes that touch a drawn
edge are shown. An edge is a line from source to target, its width proportional to
``|score|`` (the largest drawn edge is ``max_width`` points wide), blue for a positive score
and red for a negative one. The figure is a matplotlib ``Figure`` (never shown); the drawn
edges are returned in its ``jaxinterp_edges`` attribute, ``[(source, target, score)]``
strongest first, so a caller can list what the picture shows. :func:`circuit_view` draws the
same layout as an interactive page (hover an edge or a node, a slider for the number of edges).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from jaxinterp.viz._page import View

if TYPE_CHECKING:  # matplotlib loads on the first drawing, not with jaxinterp.viz
    from matplotlib.figure import Figure

POSITIVE, NEGATIVE = "#2563eb", "#dc2626"


def _check_top(top: Any) -> int:
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
        raise ValueError(f"top: expected a positive int (edges to draw), got {top!r}")
    return int(top)


def _draw(
    nodes: dict[str, tuple[float, float]],
    edges: list[tuple[str, str, float]],
    row_labels: dict[float, str],
    title: str,
    max_width: float,
) -> Figure:
    """Draws ``edges`` between ``nodes`` (name -> (x, y)); rows labelled on the left."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    used = sorted({n for s, t, _ in edges for n in (s, t)}, key=lambda n: nodes[n][::-1])
    xs = [nodes[n][0] for n in used]
    ys = [nodes[n][1] for n in used]
    span_x = max(xs) - min(xs) + 1 if xs else 1
    rows = sorted(set(ys))
    fig = Figure(figsize=(min(3 + 0.9 * span_x, 14), min(1.5 + 0.45 * len(rows), 12)))
    ax = fig.add_subplot()
    big = max((abs(w) for *_, w in edges), default=1.0) or 1.0
    segs = [(nodes[s], nodes[t]) for s, t, _ in edges]
    widths = [max_width * abs(w) / big for *_, w in edges]
    colors = [POSITIVE if w >= 0 else NEGATIVE for *_, w in edges]
    ax.add_collection(LineCollection(segs, linewidths=widths, colors=colors, alpha=0.7, zorder=1))
    ax.scatter(xs, ys, s=30, color="#374151", zorder=2)
    for n, x, y in zip(used, xs, ys):
        ax.annotate(n, (x, y), xytext=(0, 5), textcoords="offset points", ha="center", fontsize=7)
    ax.set_yticks(rows, [row_labels.get(r, str(r)) for r in rows], fontsize=7)
    ax.set_xticks([])
    ax.set_xlim(min(xs, default=0) - 0.7, max(xs, default=0) + 0.7)
    ax.set_ylim(min(rows, default=0) - 0.6, max(rows, default=0) + 0.8)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.jaxinterp_edges = edges  # type: ignore[attr-defined]
    return fig


def _component(name: str, n_layers: int, per: int) -> tuple[str, float, float]:
    """An EdgeGraph sender/receiver name -> (node, x, row). Heads and KV groups share a row."""
    if name == "input":
        return name, 0.0, 0.0
    if name == "logits":
        return name, 0.0, 2.0 * n_layers + 1
    parts = name.split(".")
    i = int(parts[0][1:])
    if parts[0][0] == "m":
        return name, 0.0, 2.0 * i + 2
    if parts[1][0] == "h":  # head output or its query input
        return f"{parts[0]}.{parts[1]}", float(int(parts[1][1:])), 2.0 * i + 1
    g = int(parts[1][1:])  # a key/value group: drawn between its heads
    return name, g * per + (per - 1) / 2, 2.0 * i + 1


Layout = tuple[dict[str, tuple[float, float]], list[tuple[str, str, float]], dict[float, str]]


def _edge_layout(graph: Any, scores: Any, top: Any) -> Layout:
    """(nodes name -> (x, row), edges strongest first, row labels) of an EAP result."""
    from jaxinterp.circuits import EdgeGraph

    if not isinstance(graph, EdgeGraph):
        raise TypeError(f"graph: expected a jaxinterp.circuits.EdgeGraph, got {type(graph)}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != graph.sender.shape:
        raise ValueError(
            f"scores: expected shape {graph.sender.shape} ([edge]), got {scores.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores: expected finite values, got NaN or inf")
    top = min(_check_top(top), len(scores))
    lay = graph.layout
    per = lay.n_heads // lay.n_kv_heads
    order = np.argsort(-np.abs(scores), kind="stable")[:top]
    nodes: dict[str, tuple[float, float]] = {}
    edges = []
    for e in order:
        ends = []
        for name in (graph.senders[graph.sender[e]], graph.receivers[graph.receiver[e]]):
            node, x, y = _component(name, lay.n_layers, per)
            nodes[node] = (x, y)
            ends.append(node)
        edges.append((ends[0], ends[1], float(scores[e])))
    rows = {0.0: "input", 2.0 * lay.n_layers + 1: "logits"}
    for i in range(lay.n_layers):
        rows[2.0 * i + 1], rows[2.0 * i + 2] = f"attn {i}", f"mlp {i}"
    return nodes, edges, rows


def edge_graph_figure(
    graph: Any,
    scores: Any,
    *,
    top: int = 30,
    title: str = "Edges",
    max_width: float = 6.0,
) -> Figure:
    """Draws the ``top`` edges of largest ``|score|`` of an edge-attribution result.

    Args:
      graph: a :class:`jaxinterp.circuits.EdgeGraph`.
      scores: ``[edge]`` scores (:class:`jaxinterp.circuits.EdgeScores` ``.scores`` from
        :func:`~jaxinterp.circuits.eap`, :func:`~jaxinterp.circuits.eap_ig`,
        :func:`~jaxinterp.circuits.edge_patching`).
      top: number of edges to draw (at most the number of edges).
      title: the axes title.
      max_width: line width of the strongest edge, in points.

    Returns:
      A matplotlib ``Figure``: rows input, then per layer ``attn i`` (heads ``a{i}.h{h}``;
      key/value inputs ``a{i}.g{g}.k``/``.v`` between their heads) and ``mlp i``, then
      ``logits``; its ``jaxinterp_edges`` lists the drawn ``(sender, receiver, score)``.

    Raises:
      TypeError: ``graph`` is not an ``EdgeGraph``.
      ValueError: ``scores`` not ``[edge]`` or not finite, ``top < 1``.

    >>> from jaxinterp.circuits import ResidualLayout, edge_graph
    >>> g = edge_graph(ResidualLayout(n_layers=1, n_heads=2, n_kv_heads=1))
    >>> s = np.zeros(len(g.names)); s[g.index("a0.h1->logits")] = -2.0
    >>> edge_graph_figure(g, s, top=1).jaxinterp_edges
    [('a0.h1', 'logits', -2.0)]
    """
    return _draw(*_edge_layout(graph, scores, top), title, max_width)


def _attr_name(graph: Any, n: int) -> str:
    kind, layer, pos, idx = graph.kind[n], int(graph.layer[n]), int(graph.pos[n]), graph.index[n]
    if kind == "feature":
        return f"L{layer}F{int(idx)}@{pos}"
    if kind == "error":
        return f"err L{layer}@{pos}"
    if kind == "token":
        return f"tok {int(idx)}@{pos}"
    return f"logit {int(idx)}"


def _attr_layout(graph: Any, top: Any) -> Layout:
    """(nodes name -> (x, row), edges strongest first, row labels) of an attribution graph."""
    from jaxinterp.circuits import AttributionGraph

    if not isinstance(graph, AttributionGraph):
        raise TypeError(f"graph: expected a jaxinterp.circuits.AttributionGraph, got {type(graph)}")
    top = _check_top(top)
    adj = np.asarray(graph.adjacency, dtype=np.float64)
    flat = np.abs(np.nan_to_num(adj)).ravel()
    order = [e for e in np.argsort(-flat, kind="stable")[:top] if flat[e] > 0]
    if not order:
        raise ValueError("graph: has no non-zero edge to draw")
    n_layers = int(max(graph.layer)) if len(graph.layer) else 0
    names = [_attr_name(graph, n) for n in range(len(graph.kind))]
    keep = sorted({int(i) for e in order for i in divmod(int(e), adj.shape[1])})
    nodes: dict[str, tuple[float, float]] = {}
    slot: dict[tuple[float, int], int] = {}
    width = 1 + max((sum(1 for k in keep if (graph.layer[k], graph.pos[k]) == (graph.layer[n],
                     graph.pos[n])) for n in keep), default=1)  # fmt: skip
    for n in keep:
        row = float(graph.layer[n]) + 1
        cell = (row, int(graph.pos[n]))
        j = slot.get(cell, 0)
        slot[cell] = j + 1
        nodes[names[n]] = (int(graph.pos[n]) + j / width, row)
    edges = [
        (names[int(e) % adj.shape[1]], names[int(e) // adj.shape[1]], float(adj.ravel()[e]))
        for e in order
    ]
    rows = {0.0: "tokens", float(n_layers) + 1: "logits"}
    rows.update({float(i) + 1: f"layer {i}" for i in range(n_layers)})
    return nodes, edges, rows


def attribution_graph_figure(
    graph: Any,
    *,
    top: int = 40,
    title: str = "Attribution graph",
    max_width: float = 6.0,
) -> Figure:
    """Draws the ``top`` direct effects of largest magnitude of an attribution graph.

    Args:
      graph: a :class:`jaxinterp.circuits.AttributionGraph` (prune it first with
        :func:`~jaxinterp.circuits.prune_graph` for large prompts if you like: zeroed edges are
        never drawn).
      top: number of edges to draw (edges with a zero effect are skipped).
      title: the axes title.
      max_width: line width of the strongest edge, in points.

    Returns:
      A matplotlib ``Figure``: rows tokens, then per layer its features (``L{layer}F{index}@
      {pos}``) and error nodes (``err L{layer}@{pos}``), then logits (``logit {id}``); columns
      are positions (several nodes at one position and layer spread side by side). Its
      ``jaxinterp_edges`` lists the drawn ``(source, target, effect)``.

    Raises:
      TypeError: ``graph`` is not an ``AttributionGraph``.
      ValueError: ``top < 1``, a graph without any non-zero edge.

    >>> from jaxinterp.circuits import AttributionGraph
    >>> a = np.zeros((2, 2)); a[1, 0] = 0.5   # token 7 -> logit 9
    >>> g = AttributionGraph(a, ("token", "logit"), np.array([-1, 1]), np.array([0, 0]),
    ...     np.array([7, 9]), np.full(2, np.nan), np.full(2, np.nan), np.zeros(2),
    ...     np.ones(1), np.array([7]))
    >>> attribution_graph_figure(g).jaxinterp_edges
    [('tok 7@0', 'logit 9', 0.5)]
    """
    return _draw(*_attr_layout(graph, top), title, max_width)


_CIRCUIT_SCRIPT = r"""
const N = DATA.nodes, E = DATA.edges, R = DATA.rows, BIG = DATA.max_abs;
const info = el("div", "jx-info", "hover an edge or a node"); info.id = "jx-info";
const controls = el("div", "jx-controls");
const label = el("label", null, "edges shown ");
const slider = el("input"); slider.type = "range"; slider.min = 1; slider.max = E.length;
slider.value = E.length; slider.id = "jx-edges";
const count = el("span", "jx-muted", String(E.length)); count.id = "jx-count";
label.append(slider); controls.append(label, count);
const xs = N.map(n => n.x), ys = N.map(n => n.y);
const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
const pl = 70, pr = 60, pt = 24, pb = 20, dx = 70, dy = 46;
const w = pl + pr + dx * (x1 - x0), h = pt + pb + dy * (y1 - y0);
const X = v => pl + dx * (v - x0), Y = v => h - pb - dy * (v - y0);
const chart = svg("svg", {width: w, height: h, id: "jx-circuit"});
for (const r of R) {
  const t = svg("text", {x: 4, y: Y(r.y) + 4, "font-size": 10, fill: "#6b7280"});
  t.textContent = r.label;
  chart.append(t);
}
const lines = E.map((e, i) => {
  const s = N[e.s], t = N[e.t];
  const l = svg("line", {x1: X(s.x), y1: Y(s.y), x2: X(t.x), y2: Y(t.y), class: "jx-edge",
    stroke: e.w >= 0 ? "#2563eb" : "#dc2626", "stroke-width": DATA.max_width * Math.abs(e.w) / BIG,
    "stroke-opacity": 0.7, "data-rank": i, "data-score": e.w});
  const tt = svg("title", {});
  tt.textContent = s.name + " \u2192 " + t.name + ": " + fmt(e.w, 4);
  l.append(tt);
  l.addEventListener("mouseenter", () => { info.textContent = tt.textContent; });
  chart.append(l);
  return l;
});
N.forEach((n, j) => {
  const c = svg("circle", {cx: X(n.x), cy: Y(n.y), r: 5, fill: "#374151", class: "jx-node",
                           "data-node": n.name});
  c.addEventListener("mouseenter", () => {
    let inc = 0, out = 0;
    E.forEach((e, i) => {
      if (lines[i].style.display === "none") return;
      if (e.t === j) inc += e.w;
      if (e.s === j) out += e.w;
    });
    info.textContent = n.name + ": in " + fmt(inc, 4) + ", out " + fmt(out, 4);
    lines.forEach((l, i) => l.setAttribute("stroke-opacity",
                                           (E[i].s === j || E[i].t === j) ? 1 : 0.15));
  });
  c.addEventListener("mouseleave", () => lines.forEach(l => l.setAttribute("stroke-opacity", 0.7)));
  const t = svg("text", {x: X(n.x), y: Y(n.y) - 8, "text-anchor": "middle", "font-size": 9});
  t.textContent = n.name;
  chart.append(c, t);
});
slider.addEventListener("input", () => {
  const k = Number(slider.value);
  lines.forEach((l, i) => { l.style.display = i < k ? "" : "none"; });
  count.textContent = String(k);
});
ROOT.append(controls, info, chart);
"""


def circuit_view(
    graph: Any,
    scores: Any = None,
    *,
    top: int = 30,
    title: str = "Circuit",
    max_width: float = 6.0,
) -> View:
    """An interactive drawing of a circuit (the layout of :func:`edge_graph_figure`).

    Hover an edge for its score, hover a node for the sums of its drawn incoming and
    outgoing edges (its edges highlighted); a slider shows only the strongest ``k`` edges.

    Args:
      graph: a :class:`jaxinterp.circuits.EdgeGraph` (with ``scores``) or a
        :class:`jaxinterp.circuits.AttributionGraph` (``scores=None``).
      scores: ``[edge]`` scores for an ``EdgeGraph``.
      top: number of edges (strongest first).
      title: the page heading.
      max_width: stroke width of the strongest edge, in pixels.

    Returns:
      A :class:`View` (``save(path)``, ``_repr_html_``); ``data["edges"]`` lists ``{s, t,
      w}`` (node indices into ``data["nodes"]``, score) strongest first.

    Raises:
      TypeError: ``graph`` of another type; ``scores`` given for an attribution graph.
      ValueError: as :func:`edge_graph_figure` / :func:`attribution_graph_figure`.

    >>> from jaxinterp.circuits import ResidualLayout, edge_graph
    >>> g = edge_graph(ResidualLayout(n_layers=1, n_heads=2, n_kv_heads=1))
    >>> s = np.zeros(len(g.names)); s[g.index("a0.h1->logits")] = -2.0
    >>> v = circuit_view(g, s, top=1)
    >>> [v.data["nodes"][e["s"]]["name"] for e in v.data["edges"]], v.data["edges"][0]["w"]
    (['a0.h1'], -2.0)
    """
    from jaxinterp.circuits import AttributionGraph, EdgeGraph

    if isinstance(graph, EdgeGraph):
        if scores is None:
            raise TypeError("scores: expected [edge] scores for an EdgeGraph, got None")
        nodes, edges, rows = _edge_layout(graph, scores, top)
    elif isinstance(graph, AttributionGraph):
        if scores is not None:
            raise TypeError("scores: an AttributionGraph carries its own edges; pass None")
        nodes, edges, rows = _attr_layout(graph, top)
    else:
        raise TypeError(f"graph: expected an EdgeGraph or AttributionGraph, got {type(graph)}")
    if not (np.isfinite(max_width) and max_width > 0):
        raise ValueError(f"max_width: expected a positive width, got {max_width!r}")
    names = list(nodes)
    index = {n: i for i, n in enumerate(names)}
    data = {
        "nodes": [{"name": n, "x": float(nodes[n][0]), "y": float(nodes[n][1])} for n in names],
        "edges": [{"s": index[s], "t": index[t], "w": float(w)} for s, t, w in edges],
        "rows": [
            {"y": float(y), "label": lab}
            for y, lab in sorted(rows.items())
            if any(nodes[n][1] == y for n in names)
        ],  # fmt: skip
        "max_abs": max((abs(w) for *_, w in edges), default=1.0) or 1.0,
        "max_width": float(max_width),
    }
    sub = f"{len(edges)} strongest edges between {len(names)} nodes; blue positive, red negative"
    return View("circuit", title, sub, data, _CIRCUIT_SCRIPT)
