"""Patching / attribution maps and probe accuracy by layer.

* :func:`patching_view` — one or more maps over the same sites (activation patching,
  attribution patching, ...), a menu to switch; cells coloured diverging around 0 and, on
  hover, the site (its axis names and labels, its module path) and every map's value there.
  Built from an array and axis names, or from a :class:`~jaxinterp.interventions.Sites` and the
  flat per-site values a sweep returns.
* :func:`probe_view` — accuracy by layer per task (SVG lines), the control tasks dashed, and a
  table of accuracy, control accuracy and selectivity; hover a point for its value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxinterp.viz._page import View, as_float_array, as_labels, floats

_PATCH_SCRIPT = r"""
const MAPS = DATA.maps, NAMES = Object.keys(MAPS), R = DATA.row_labels, C = DATA.col_labels;
const st = {map: NAMES[0]};
const controls = el("div", "jx-controls");
if (NAMES.length > 1) {
  const pick = el("select"); pick.id = "jx-map";
  for (const n of NAMES) { const o = el("option", null, n); o.value = n; pick.append(o); }
  pick.addEventListener("change", () => { st.map = pick.value; draw(); });
  const lab = el("label", null, "map ");
  lab.append(pick);
  controls.append(lab);
}
const legend = el("span", "jx-muted"); legend.id = "jx-legend";
controls.append(legend);
ROOT.append(controls);
const info = el("div", "jx-info", "hover a cell"); info.id = "jx-info";
ROOT.append(info);
const grid = el("table", "jx-grid"); grid.id = "jx-map-grid";
ROOT.append(grid);
if (DATA.paths) {
  const sites = el("div", "jx-sub"); sites.id = "jx-paths";
  sites.style.marginTop = "8px";
  sites.textContent = "sites: " + DATA.paths.map((p, i) =>
    DATA.names[0] + " " + DATA.first_labels[i] + " = " + p).join("; ");
  ROOT.append(sites);
}

function siteText(r, c) {
  return DATA.row_name + " " + R[r] + ", " + DATA.col_name + " " + C[c] +
    (DATA.row_paths ? "  [" + DATA.row_paths[r] + "]" : "");
}
function draw() {
  const M = MAPS[st.map];
  const vals = M.flat().filter(v => v !== null);
  const lim = DATA.limit !== null ? DATA.limit : Math.max(1e-6, ...vals.map(Math.abs));
  legend.textContent = st.map + ": blue < 0 < red, colour limit ±" + fmt(lim, 3);
  grid.replaceChildren();
  const head = el("tr");
  head.append(el("th", null, DATA.row_name + " \\ " + DATA.col_name));
  for (const c of C) head.append(el("th", null, c));
  grid.append(head);
  M.forEach((row, r) => {
    const tr = el("tr");
    const th = el("th", "jx-rowlabel", R[r]);
    if (DATA.row_paths) th.title = DATA.row_paths[r];
    tr.append(th);
    row.forEach((v, c) => {
      const td = el("td", "jx-cell", C.length <= 24 ? fmt(v, 2) : "");
      td.dataset.row = r; td.dataset.col = c; td.dataset.value = v;
      td.style.background = divColor(v, lim);
      td.style.color = textOn(v === null ? null : v / lim);
      const all = NAMES.map(n => n + " " + fmt(MAPS[n][r][c], 4)).join("\n");
      td.title = siteText(r, c) + "\n" + all;
      td.addEventListener("mouseenter", () => {
        info.textContent = siteText(r, c) + " | " + NAMES.map(n => n + " " +
          fmt(MAPS[n][r][c], 4)).join(" | ");
      });
      tr.append(td);
    });
    grid.append(tr);
  });
}
draw();
"""

_PROBE_SCRIPT = r"""
const ACC = DATA.accuracy, CTRL = DATA.control, LN = DATA.layer_names, TN = DATA.task_names;
const NL = LN.length, NT = TN.length;
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777"];
const info = el("div", "jx-info", "hover a point"); info.id = "jx-info";
const w = 200 + 110 * NL, h = 260, pl = 56, pr = 170, pt = 10, pb = 34, pad = 16;
const x = i => pl + pad + (w - pl - pr - 2 * pad) * (NL > 1 ? i / (NL - 1) : 0.5);
const y = v => pt + (h - pt - pb) * (1 - v);
const chart = svg("svg", {width: w, height: h, id: "jx-probe-chart"});
for (const t of [0, 0.25, 0.5, 0.75, 1]) {
  chart.append(svg("line", {x1: pl, x2: w - pr, y1: y(t), y2: y(t), stroke: "#e5e7eb"}));
  const lab = svg("text", {x: pl - 6, y: y(t) + 4, "text-anchor": "end", "font-size": 10,
                           fill: "#6b7280"});
  lab.textContent = t.toFixed(2);
  chart.append(lab);
}
const ytitle = svg("text", {x: 12, y: pt + (h - pt - pb) / 2, "font-size": 11, fill: "#6b7280",
                           transform: "rotate(-90 12 " + (pt + (h - pt - pb) / 2) + ")",
                           "text-anchor": "middle"});
ytitle.textContent = "test accuracy";
chart.append(ytitle);
LN.forEach((n, i) => {
  const lab = svg("text", {x: x(i), y: h - pb + 16, "text-anchor": "middle", "font-size": 10});
  lab.textContent = n;
  chart.append(lab);
});
function series(vals, t, dashed, what) {
  const col = COLORS[t % COLORS.length];
  const pts = vals.map((v, i) => v === null ? null : x(i) + "," + y(v)).filter(p => p);
  chart.append(svg("polyline", {points: pts.join(" "), fill: "none", stroke: col,
                                "stroke-width": 2, "stroke-dasharray": dashed ? "5 3" : "none"}));
  vals.forEach((v, i) => {
    if (v === null) return;
    const c = svg("circle", {cx: x(i), cy: y(v), r: 4, fill: dashed ? "#fff" : col, stroke: col,
                             class: "jx-point", "data-task": t, "data-layer": i,
                             "data-kind": what, "data-value": v});
    const tt = svg("title", {});
    tt.textContent = TN[t] + " " + what + " at " + LN[i] + ": " + fmt(v);
    c.append(tt);
    c.addEventListener("mouseenter", () => { info.textContent = tt.textContent; });
    chart.append(c);
  });
}
for (let t = 0; t < NT; t++) {
  series(ACC.map(r => r[t]), t, false, "accuracy");
  if (CTRL) series(CTRL.map(r => r[t]), t, true, "control accuracy");
  if (DATA.chance) {
    const c = DATA.chance[t];
    chart.append(svg("line", {x1: pl, x2: w - pr, y1: y(c), y2: y(c),
                              stroke: COLORS[t % COLORS.length], "stroke-dasharray": "1 3"}));
  }
  const lg = svg("text", {x: w - pr + 10, y: pt + 14 + 16 * t, "font-size": 11,
                          fill: COLORS[t % COLORS.length]});
  lg.textContent = TN[t];
  chart.append(lg);
}
const note = svg("text", {x: w - pr + 10, y: pt + 20 + 16 * NT, "font-size": 10, fill: "#6b7280"});
note.textContent = CTRL ? "dashed, open: control task" : "";
chart.append(note);
if (DATA.chance) {
  const n2 = svg("text", {x: w - pr + 10, y: pt + 34 + 16 * NT, "font-size": 10, fill: "#6b7280"});
  n2.textContent = "dotted: chance";
  chart.append(n2);
}
ROOT.append(chart, info);

const tab = el("table", "jx-grid"); tab.id = "jx-probe-table";
const hr = el("tr"); hr.append(el("th", null, "layer"));
for (const n of TN) {
  hr.append(el("th", null, n + " accuracy"));
  if (CTRL) { hr.append(el("th", null, "control")); hr.append(el("th", null, "selectivity")); }
}
tab.append(hr);
LN.forEach((n, i) => {
  const tr = el("tr"); tr.append(el("th", "jx-rowlabel", n));
  for (let t = 0; t < NT; t++) {
    const a = el("td", "jx-cell", fmt(ACC[i][t])); a.style.background = seqColor(ACC[i][t]);
    a.style.color = textOn(ACC[i][t]); tr.append(a);
    if (CTRL) {
      tr.append(el("td", "jx-cell", fmt(CTRL[i][t])));
      const s = el("td", "jx-cell", fmt(DATA.selectivity[i][t]));
      s.style.background = divColor(DATA.selectivity[i][t], 1);
      tr.append(s);
    }
  }
  tab.append(tr);
});
ROOT.append(el("h2", null, "Accuracy, control accuracy and selectivity (accuracy - control)"));
ROOT.append(tab);
"""


def patching_view(
    effects: Any,
    *,
    sites: Any = None,
    names: Sequence[str] | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
    limit: float | None = None,
    title: str = "Patching map",
) -> View:
    """An interactive map of per-site effects (patching, attribution, ...).

    Args:
      effects: ``[row, col]`` or ``[layer, a, b]`` effects (3-D maps show ``layer × a`` as
        rows), or a dict ``{name: array}`` of maps over the same sites; with ``sites``, the
        flat ``[site]`` values a sweep returns (``PatchResult.normalized``).
      sites: a ``jaxinterp.interventions.Sites`` with a grid: ``effects`` are unflattened with
        it, the axis names are ``sites.names`` and the rows carry ``sites.paths``.
      names: axis names (default ``sites.names``, else ``("layer", "head")`` /
        ``("layer", "head", "position")``).
      labels: ``{axis name: labels}`` for any axis (default: the indices).
      limit: colour range ``[-limit, limit]`` (default: the largest ``|effect|`` of the map).
      title: the page heading.

    Returns:
      A :class:`View` (``save(path)``, ``_repr_html_``).

    Raises:
      TypeError, ValueError: maps of other shapes or ranks, ``sites`` without a grid or of
        another size, ``names``/``labels`` that do not match the axes, a non-positive limit.

    >>> v = patching_view(np.array([[0.5, -1.0]]))
    >>> v.data["row_name"], v.data["col_labels"], v.data["maps"]["effect"]
    ('layer', ['0', '1'], [[0.5, -1.0]])
    """
    maps = dict(effects) if isinstance(effects, Mapping) else {"effect": effects}
    if not maps:
        raise ValueError("effects: expected at least one map, got an empty dict")
    paths = None
    arrays = {}
    for key, m in maps.items():
        if sites is not None:
            if not getattr(sites, "grid", ()):
                raise ValueError("sites: expected Sites with a grid layout (head_sites, ...)")
            flat = as_float_array(m, "effects", (1,))
            if flat.shape[0] != int(np.prod(sites.grid)):
                raise ValueError(
                    f"effects: expected [site] with site={int(np.prod(sites.grid))} "
                    f"(grid {sites.grid}), got shape {flat.shape}"
                )
            arrays[str(key)] = flat.reshape(sites.grid)
        else:
            arrays[str(key)] = as_float_array(m, "effects", (2, 3))
    shapes = {a.shape for a in arrays.values()}
    if len(shapes) != 1:
        raise ValueError(f"effects: expected maps of one shape, got shapes {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) not in (2, 3):
        raise ValueError(f"effects: expected a 2-D or 3-D site grid, got shape {shape}")
    if sites is not None:
        paths = list(sites.paths)
        names = names if names is not None else (sites.names or None)
    if names is None:
        names = ("layer", "head") if len(shape) == 2 else ("layer", "head", "position")
    names = [str(n) for n in names]
    if len(names) != len(shape):
        raise ValueError(f"names: expected {len(shape)} axis names, got {names}")
    labels = dict(labels or {})
    unknown = sorted(set(labels) - set(names))
    if unknown:
        raise ValueError(f"labels: unknown axis names {unknown}; axes are {names}")
    axis_labels = [
        as_labels(labels.get(n), s, f"labels[{n!r}]", [str(i) for i in range(s)])
        for n, s in zip(names, shape)
    ]
    if limit is not None and not (np.isfinite(limit) and limit > 0):
        raise ValueError(f"limit: expected a positive finite colour limit, got {limit!r}")
    if len(shape) == 3:
        rows = [f"{a} / {b}" for a in axis_labels[0] for b in axis_labels[1]]
        row_paths = None if paths is None else [p for p in paths for _ in axis_labels[1]]
        row_name, col_name = f"{names[0]} / {names[1]}", names[2]
        arrays = {k: a.reshape(shape[0] * shape[1], shape[2]) for k, a in arrays.items()}
        cols = axis_labels[2]
    else:
        rows, row_paths, cols = axis_labels[0], paths, axis_labels[1]
        row_name, col_name = names
    data = {
        "maps": {k: floats(a) for k, a in arrays.items()},
        "row_labels": rows,
        "col_labels": cols,
        "row_name": row_name,
        "col_name": col_name,
        "row_paths": row_paths,
        "paths": paths,
        "first_labels": axis_labels[0],
        "names": names,
        "limit": None if limit is None else float(limit),
    }
    sub = f"{' × '.join(f'{n} ({s})' for n, s in zip(names, shape))}; maps: {', '.join(arrays)}"
    return View("patching", title, sub, data, _PATCH_SCRIPT)


def probe_view(
    accuracy: Any,
    *,
    layer_names: Sequence[str] | None = None,
    task_names: Sequence[str] | None = None,
    control: Any = None,
    chance: Sequence[float] | None = None,
    title: str = "Probe accuracy by layer",
) -> View:
    """Probe accuracy by layer per task, with control tasks and selectivity.

    Args:
      accuracy: ``[layer, task]`` test accuracy.
      layer_names: ``[layer]`` names (default ``0 .. layer-1``).
      task_names: ``[task]`` names (default ``task 0 ...``).
      control: ``[layer, task]`` control-task accuracy; selectivity ``accuracy - control``.
      chance: ``[task]`` chance levels, drawn dotted.
      title: the page heading.

    Returns:
      A :class:`View` (``save(path)``, ``_repr_html_``).

    Raises:
      ValueError: the names, ``control`` or ``chance`` do not match ``accuracy``.

    >>> v = probe_view(np.array([[0.5], [0.9]]), control=np.array([[0.1], [0.2]]))
    >>> v.data["selectivity"]
    [[0.4], [0.7]]
    """
    acc = as_float_array(accuracy, "accuracy", (2,))
    n_layer, n_task = acc.shape
    layers = as_labels(layer_names, n_layer, "layer_names", [str(i) for i in range(n_layer)])
    tasks = as_labels(task_names, n_task, "task_names", [f"task {t}" for t in range(n_task)])
    ctrl = sel = None
    if control is not None:
        ctrl = as_float_array(control, "control", (2,))
        if ctrl.shape != acc.shape:
            raise ValueError(f"control: expected shape {acc.shape}, got {ctrl.shape}")
        sel = acc - ctrl
    if chance is not None:
        chance = [float(c) for c in chance]
        if len(chance) != n_task:
            raise ValueError(f"chance: expected {n_task} values, got {len(chance)}")
    data = {
        "accuracy": floats(acc),
        "control": None if ctrl is None else floats(ctrl),
        "selectivity": None if sel is None else floats(sel),
        "layer_names": layers,
        "task_names": tasks,
        "chance": chance,
    }
    sub = f"{n_layer} layers × {n_task} tasks" + (
        ", with control tasks" if ctrl is not None else ""
    )
    return View("probes", title, sub, data, _PROBE_SCRIPT)
