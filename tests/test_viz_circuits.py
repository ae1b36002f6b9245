"""Circuit drawings (jaxinterp.viz.edge_graph_figure / attribution_graph_figure): the drawn
lines, widths, colours and labels against the scores they were given (numpy by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex

from jaxinterp import viz
from jaxinterp.circuits import AttributionGraph, ResidualLayout, edge_graph


def _lines(fig):
    (ax,) = fig.axes
    (lc,) = [c for c in ax.collections if isinstance(c, LineCollection)]
    return ax, lc


def test_edge_graph_figure_draws_the_strongest_edges():
    g = edge_graph(ResidualLayout(n_layers=2, n_heads=4, n_kv_heads=2))
    rng = np.random.default_rng(0)
    s = rng.normal(size=len(g.names))
    fig = viz.edge_graph_figure(g, s, top=7, max_width=5.0)
    want = np.argsort(-np.abs(s))[:7]
    drawn = fig.jaxinterp_edges
    assert [w for *_, w in drawn] == pytest.approx(s[want].tolist())
    names = g.names
    for (src, dst, _), e in zip(drawn, want):  # receivers' .q inputs are drawn as their head
        snd, rcv = names[e].split("->")
        assert src == snd and dst == (rcv[:-2] if rcv.endswith(".q") else rcv)
    ax, lc = _lines(fig)
    assert len(lc.get_segments()) == 7
    np.testing.assert_allclose(lc.get_linewidths(), 5.0 * np.abs(s[want]) / np.abs(s).max())
    colors = [to_hex(c) for c in lc.get_colors()]
    assert colors == [viz._circuit.POSITIVE if v > 0 else viz._circuit.NEGATIVE for v in s[want]]
    texts = {t.get_text() for t in ax.texts}
    assert texts == {n for a, b, _ in drawn for n in (a, b)}
    rows = {t.get_text() for t in ax.get_yticklabels()}
    assert rows <= {"input", "logits", "attn 0", "mlp 0", "attn 1", "mlp 1"}
    # a sender's segment starts at its own node, one row per component
    seg = lc.get_segments()[0]
    assert seg[0][1] < seg[1][1]  # edges go up the model


def test_edge_graph_figure_rows_and_kv_groups():
    g = edge_graph(ResidualLayout(n_layers=2, n_heads=4, n_kv_heads=2))
    s = np.zeros(len(g.names))
    s[g.index("input->a1.g1.v")] = 1.0
    s[g.index("m0->logits")] = -0.5
    fig = viz.edge_graph_figure(g, s, top=2)
    ax, lc = _lines(fig)
    (a, b), (c, d) = lc.get_segments()
    assert tuple(a) == (0.0, 0.0) and tuple(b) == (2.5, 3.0)  # group 1 sits between heads 2, 3
    assert tuple(c) == (0.0, 2.0) and tuple(d) == (0.0, 5.0)  # mlp 0 row 2, logits row 5
    assert fig.jaxinterp_edges == [("input", "a1.g1.v", 1.0), ("m0", "logits", -0.5)]


def _attr_graph():
    # token 0 -> feature (layer 0, pos 1) -> logit; error (layer 0, pos 1) -> logit
    kind = ("feature", "error", "token", "token", "logit")
    adj = np.zeros((5, 5))
    adj[0, 2] = 0.3  # token@0 -> feature
    adj[0, 3] = -0.1  # token@1 -> feature
    adj[4, 0] = 2.0  # feature -> logit
    adj[4, 1] = -0.4  # error -> logit
    return AttributionGraph(
        adj, kind, np.array([0, 0, -1, -1, 1]), np.array([1, 1, 0, 1, 1]),
        np.array([5, -1, 11, 12, 40]), np.array([1.0, np.nan, np.nan, np.nan, np.nan]),
        np.full(5, np.nan), np.zeros(5), np.ones(1), np.array([11, 12]),
    )  # fmt: skip


def test_attribution_graph_figure():
    g = _attr_graph()
    fig = viz.attribution_graph_figure(g, top=3)
    assert fig.jaxinterp_edges == [
        ("L0F5@1", "logit 40", 2.0),
        ("err L0@1", "logit 40", -0.4),
        ("tok 11@0", "L0F5@1", 0.3),
    ]
    ax, lc = _lines(fig)
    np.testing.assert_allclose(lc.get_linewidths(), 6.0 * np.array([2.0, 0.4, 0.3]) / 2.0)
    rows = {t.get_text() for t in ax.get_yticklabels()}
    assert rows == {"tokens", "layer 0", "logits"}
    # the feature and the error node of one (layer, position) sit side by side
    pos = {t.get_text(): t.xy for t in ax.texts}
    assert pos["L0F5@1"][1] == pos["err L0@1"][1] == 1.0
    assert pos["L0F5@1"][0] != pos["err L0@1"][0]
    assert len(viz.attribution_graph_figure(g, top=10).jaxinterp_edges) == 4  # zeros skipped


def test_bad_inputs():
    g = edge_graph(ResidualLayout(n_layers=1, n_heads=2, n_kv_heads=1))
    with pytest.raises(ValueError, match="scores: expected shape"):
        viz.edge_graph_figure(g, np.zeros(3))
    with pytest.raises(ValueError, match="scores: expected finite"):
        viz.edge_graph_figure(g, np.full(len(g.names), np.nan))
    with pytest.raises(ValueError, match="top: expected a positive int"):
        viz.edge_graph_figure(g, np.zeros(len(g.names)), top=0)
    with pytest.raises(TypeError, match="graph: expected a jaxinterp.circuits.EdgeGraph"):
        viz.edge_graph_figure("g", np.zeros(3))
    with pytest.raises(TypeError, match="graph: expected a jaxinterp.circuits.AttributionGraph"):
        viz.attribution_graph_figure(g)
    empty = _attr_graph()._replace(adjacency=np.zeros((5, 5)))
    with pytest.raises(ValueError, match="no non-zero edge"):
        viz.attribution_graph_figure(empty)


def test_circuit_view_data_is_the_figure_layout():
    g = edge_graph(ResidualLayout(n_layers=2, n_heads=4, n_kv_heads=2))
    s = np.random.default_rng(1).normal(size=len(g.names))
    v = viz.circuit_view(g, s, top=9)
    fig = viz.edge_graph_figure(g, s, top=9)
    nodes = v.data["nodes"]
    got = [(nodes[e["s"]]["name"], nodes[e["t"]]["name"], e["w"]) for e in v.data["edges"]]
    assert got == [(a, b, pytest.approx(w)) for a, b, w in fig.jaxinterp_edges]
    ax, _ = _lines(fig)
    pos = {t.get_text(): t.xy for t in ax.texts}
    assert {n["name"]: (n["x"], n["y"]) for n in nodes} == pos
    assert v.data["max_abs"] == pytest.approx(np.abs(s).max())
    a = viz.circuit_view(_attr_graph(), top=2)
    assert [e["w"] for e in a.data["edges"]] == [2.0, -0.4]
    assert "<script>" not in viz.circuit_view(g, s, top=2, title="<script>").to_html()[:400]
    with pytest.raises(TypeError, match="scores: expected"):
        viz.circuit_view(g)
    with pytest.raises(TypeError, match="scores: an AttributionGraph"):
        viz.circuit_view(_attr_graph(), s)
    with pytest.raises(ValueError, match="max_width"):
        viz.circuit_view(g, s, max_width=0)
