"""The feature gallery: per target, the optimized input next to its top-k dataset examples.

Each card shows a target's label, its optimized input (an image, or tokens), the activation
value it reaches, the top-k dataset examples with their values (token examples coloured per
token by activation) and the optimization trace as an inline SVG sparkline, with the best
dataset value as a dashed line. A text box filters the cards by label; a menu sorts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxinterp.viz._page import View, as_float_array, as_labels, floats, png_data_uri

_SCRIPT = r"""
const ITEMS = DATA.items;
// image figures share one width (captions such as "11.66 (#1589)" are wider than small
// images), so images, examples and traces line up from one target to the next
const FIG_PX = Math.max(DATA.image_px + 4, 84);
const K_MAX = Math.max(0, ...ITEMS.map(it => it.examples.length));
const controls = el("div", "jx-controls");
const filter = el("input"); filter.id = "jx-filter"; filter.placeholder = "filter by label";
const sort = el("select"); sort.id = "jx-sort";
for (const [v, t] of [["order", "original order"], ["value", "optimized value (high first)"],
                      ["best", "best example (high first)"]]) {
  const o = el("option", null, t); o.value = v; sort.append(o);
}
const count = el("span", "jx-muted"); count.id = "jx-count";
controls.append(filter, sort, count);
ROOT.append(controls);
const list = el("div"); list.id = "jx-gallery";
ROOT.append(list);
const style = el("style", null,
  ".jx-item { border: 1px solid var(--line); border-radius: 6px; padding: 8px; margin: 8px 0; }" +
  ".jx-item-head { display: flex; gap: 12px; align-items: baseline; }" +
  ".jx-row { display: flex; gap: 8px; align-items: flex-start; flex-wrap: wrap; }" +
  ".jx-fig { text-align: center; font-size: 11px; flex: none; }" +
  ".jx-row > * { flex: none; }" +
  ".jx-fig.jx-img { width: " + FIG_PX + "px; }" +
  ".jx-fig.jx-trace { max-width: 200px; margin-left: auto; }" +
  ".jx-fig img { margin: 0 auto; width: " + DATA.image_px + "px; height: " + DATA.image_px + "px;" +
  " image-rendering: pixelated; display: block; border: 1px solid var(--line); }" +
  ".jx-fig.jx-opt img { border: 2px solid var(--accent); }" +
  ".jx-text { margin: 2px 0; }");
document.head.append(style);

function imageFig(src, caption, opt) {
  const f = el("div", "jx-fig jx-img" + (opt ? " jx-opt" : ""));
  const img = el("img"); img.src = src; img.alt = caption;
  f.append(img, el("div", null, caption));
  return f;
}
function tokenLine(toks, acts, lim, caption) {
  const d = el("div", "jx-text");
  d.append(el("span", "jx-muted", caption + " "));
  toks.forEach((t, i) => {
    const s = el("span", "jx-tok", t);
    if (acts) {
      const a = acts[i];
      s.dataset.act = a;
      s.title = "activation " + fmt(a);
      s.style.background = divColor(a, lim);
    }
    d.append(s);
  });
  return d;
}
function sparkline(trace, best) {
  const w = 180, h = 44, p = 3;
  const vals = trace.filter(v => v !== null);
  let lo = Math.min(...vals), hi = Math.max(...vals);
  if (best !== null) { lo = Math.min(lo, best); hi = Math.max(hi, best); }
  if (!(hi > lo)) { hi = lo + 1; }
  const x = i => p + (w - 2 * p) * i / Math.max(trace.length - 1, 1);
  const y = v => h - p - (h - 2 * p) * (v - lo) / (hi - lo);
  const s = svg("svg", {width: w, height: h, viewBox: "0 0 " + w + " " + h, class: "jx-spark"});
  s.append(svg("rect", {x: 0, y: 0, width: w, height: h, fill: "#f9fafb"}));
  if (best !== null) {
    s.append(svg("line", {x1: p, x2: w - p, y1: y(best), y2: y(best), stroke: "#9ca3af",
                          "stroke-dasharray": "3 2"}));
  }
  const pts = trace.map((v, i) => v === null ? null : x(i).toFixed(1) + "," + y(v).toFixed(1));
  s.append(svg("polyline", {points: pts.filter(q => q).join(" "), fill: "none",
                            stroke: "#2563eb", "stroke-width": 1.5}));
  const t = svg("title", {});
  t.textContent = "objective over " + trace.length + " steps: " + fmt(trace[0], 2) + " -> " +
    fmt(trace[trace.length - 1], 2) + (best !== null ? " (best example " + fmt(best, 2) + ")" : "");
  s.append(t);
  return s;
}

function card(it) {
  const c = el("div", "jx-item");
  c.dataset.label = it.label;
  const head = el("div", "jx-item-head");
  head.append(el("b", null, it.label));
  head.append(el("span", null, "optimized " + fmt(it.value, 2)));
  if (it.examples.length) head.append(el("span", "jx-muted",
                                         "best example " + fmt(it.examples[0].value, 2)));
  c.append(head);
  const row = el("div", "jx-row");
  const lim = it.act_limit;
  if (it.optimized && it.optimized.src) row.append(imageFig(it.optimized.src, "optimized", true));
  const ex = el("div", it.examples.length && it.examples[0].src ? "jx-row" : "");
  for (const e of it.examples) {
    const cap = fmt(e.value, 2) + (e.index !== null ? " (#" + e.index + ")" : "");
    if (e.src) ex.append(imageFig(e.src, cap, false));
    else ex.append(tokenLine(e.tokens, e.acts, lim, cap));
  }
  // a target with fewer examples keeps its trace in the same column as the others
  if (it.examples.length && it.examples[0].src) {
    for (let i = it.examples.length; i < K_MAX; i++) {
      ex.append(el("div", "jx-fig jx-img jx-pad"));
    }
  }
  if (it.optimized && it.optimized.tokens) {
    row.append(tokenLine(it.optimized.tokens, it.optimized.acts, lim, "optimized"));
  }
  row.append(ex);
  if (it.trace) {
    const f = el("div", "jx-fig jx-trace");
    f.append(sparkline(it.trace, it.examples.length ? it.examples[0].value : null));
    f.append(el("div", "jx-muted", "objective during the ascent" +
                (it.examples.length ? " (dashed: best example)" : "")));
    row.append(f);
  }
  c.append(row);
  return c;
}

const cards = ITEMS.map(card);
function render() {
  const q = filter.value.toLowerCase();
  let order = range(ITEMS.length);
  const key = {value: i => ITEMS[i].value,
               best: i => ITEMS[i].examples.length ? ITEMS[i].examples[0].value : null}[sort.value];
  if (key) order.sort((a, b) => (key(b) ?? -Infinity) - (key(a) ?? -Infinity));
  order = order.filter(i => ITEMS[i].label.toLowerCase().includes(q));
  list.replaceChildren(...order.map(i => cards[i]));
  count.textContent = order.length + " of " + ITEMS.length + " targets";
}
filter.addEventListener("input", render);
sort.addEventListener("change", render);
render();
"""


def _example_part(x: Any, acts: Any, vrange: tuple[float, float] | None) -> dict:
    """An image (``[h, w(, c)]`` numbers) or a token list (strings) as the page's dict."""
    if isinstance(x, (list, tuple)) and all(isinstance(t, str) for t in x):
        return {"tokens": list(x), "acts": None if acts is None else floats(acts)}
    lo, hi = vrange if vrange is not None else (None, None)
    return {"src": png_data_uri(x, lo, hi)}


def feature_gallery(
    labels: Sequence[str],
    values: Any,
    *,
    optimized: Any = None,
    traces: Any = None,
    examples: Any = None,
    example_values: Any = None,
    example_indices: Any = None,
    example_activations: Any = None,
    optimized_activations: Any = None,
    value_range: tuple[float, float] | None = None,
    image_px: int = 72,
    title: str = "Feature gallery",
) -> View:
    """A gallery of targets: optimized input, top-k dataset examples, values and trace.

    Args:
      labels: ``[target]`` names shown on the cards (and filtered by the text box).
      values: ``[target]`` activation reached by the optimized input.
      optimized: ``[target, h, w(, c)]`` optimized images, or ``[target]`` lists of token
        strings (e.g. the nearest tokens of a soft prompt); optional.
      traces: ``[target, steps]`` objective during the optimization; optional.
      examples: ``[target, k, h, w(, c)]`` images, or ``[target][k]`` lists of token strings;
        optional.
      example_values: ``[target, k]`` activation of each example (best first); needed with
        ``examples``.
      example_indices: ``[target, k]`` dataset positions, shown in captions (``-1``: none).
      example_activations: ``[target][k][seq]`` per-token activations of token examples,
        colour each token (diverging around 0).
      optimized_activations: ``[target][seq]`` per-token activations of token optimized inputs.
      value_range: pixel values mapped to black and white for every image (default: each
        image's own min..max).
      image_px: displayed image size in CSS pixels.
      title: the page heading.

    Returns:
      A :class:`View` (``save(path)``, ``_repr_html_``).

    Raises:
      TypeError, ValueError: the arrays disagree on the number of targets or examples, or
        have the wrong rank.

    >>> g = feature_gallery(["a", "b"], [1.0, 2.0], optimized=np.zeros((2, 4, 4)))
    >>> len(g.data["items"]), g.data["items"][1]["value"]
    (2, 2.0)
    """
    names = as_labels(labels, len(labels) if not isinstance(labels, str) else 0, "labels", [])
    n = len(names)
    if n == 0:
        raise ValueError("labels: expected at least one target label, got none")
    vals = as_float_array(values, "values", (1,))
    if vals.shape[0] != n:
        raise ValueError(f"values: expected [target] with target={n}, got shape {vals.shape}")
    tr = None
    if traces is not None:
        tr = as_float_array(traces, "traces", (2,))
        if tr.shape[0] != n:
            raise ValueError(f"traces: expected [target, steps] with target={n}, got {tr.shape}")
    if optimized is not None and len(optimized) != n:
        raise ValueError(f"optimized: expected {n} targets, got {len(optimized)}")
    ev = ei = None
    if examples is not None:
        if len(examples) != n:
            raise ValueError(f"examples: expected {n} targets, got {len(examples)}")
        if example_values is None:
            raise ValueError("example_values: expected [target, k] values with examples, got None")
        ev = as_float_array(example_values, "example_values", (2,))
        k = len(examples[0])
        if ev.shape != (n, k):
            raise ValueError(f"example_values: expected shape {(n, k)}, got {ev.shape}")
        if example_indices is not None:
            ei = np.asarray(example_indices)
            if ei.shape != (n, k):
                raise ValueError(f"example_indices: expected shape {(n, k)}, got {ei.shape}")
    if not isinstance(image_px, int) or not 8 <= image_px <= 512:
        raise ValueError(f"image_px: expected an int in [8, 512], got {image_px!r}")
    items = []
    for t in range(n):
        item: dict[str, Any] = {"label": names[t], "value": floats(vals[t])}
        item["trace"] = floats(tr[t]) if tr is not None else None
        acts_t = []
        if optimized is not None:
            oa = None if optimized_activations is None else optimized_activations[t]
            item["optimized"] = _example_part(optimized[t], oa, value_range)
            if oa is not None:
                acts_t.append(np.asarray(oa, np.float64).ravel())
        else:
            item["optimized"] = None
        exs = []
        for j in range(0 if examples is None else len(examples[t])):
            if ei is not None and int(ei[t, j]) < 0:
                continue  # the dataset had fewer than k examples
            ea = None if example_activations is None else example_activations[t][j]
            part = _example_part(examples[t][j], ea, value_range)
            part["value"] = floats(ev[t, j])
            part["index"] = None if ei is None else int(ei[t, j])
            exs.append(part)
            if ea is not None:
                acts_t.append(np.asarray(ea, np.float64).ravel())
        item["examples"] = exs
        allacts = np.concatenate(acts_t) if acts_t else np.zeros(1)
        finite = np.abs(allacts[np.isfinite(allacts)])
        item["act_limit"] = floats(max(float(finite.max(initial=0.0)), 1e-12))
        items.append(item)
    data = {"items": items, "image_px": image_px}
    k = 0 if examples is None else len(examples[0])
    sub = f"{n} target{'s' if n != 1 else ''}" + (
        f", top-{k} dataset example{'s' if k != 1 else ''} each" if k else ""
    )
    return View("gallery", title, sub, data, _SCRIPT)


def gallery_from_actmax(
    result: Any,
    top: Any,
    data: Any,
    labels: Sequence[str],
    *,
    value_range: tuple[float, float] | None = (0.0, 1.0),
    title: str = "Feature gallery",
) -> View:
    """:func:`feature_gallery` from ``actmax.maximize`` and ``actmax.top_k_examples`` results.

    Args:
      result: an ``ActMaxResult``; ``inputs [target, 1, h, w(, c)]`` images (the first of the
        batch is shown), ``values [target]``, ``traces [target, steps]``.
      top: a ``TopK`` with ``values, indices [target, k]`` into ``data``.
      data: ``[example, h, w(, c)]`` the dataset ``top`` indexes.
      labels: ``[target]`` names.
      value_range: pixel range for every image (default ``(0, 1)``, the actmax input range).
      title: the page heading.

    Returns:
      A :class:`View`.

    Raises:
      ValueError: the shapes disagree (as :func:`feature_gallery`).
    """
    inputs = np.asarray(result.inputs)
    if inputs.ndim < 3:
        raise ValueError(f"result: expected inputs [target, batch, ...], got {inputs.shape}")
    idx = np.asarray(top.indices)
    data = np.asarray(data)
    if data.ndim < 1 or (idx.size and int(idx.max()) >= data.shape[0]):
        raise ValueError(
            f"data: top.indices go up to {int(idx.max()) if idx.size else '?'}, but data has "
            f"shape {data.shape}; pass the dataset top_k_examples ran on"
        )
    ex = data[np.where(idx < 0, 0, idx)]
    return feature_gallery(
        labels,
        np.asarray(result.values),
        optimized=inputs[:, 0],
        traces=np.asarray(result.traces),
        examples=ex,
        example_values=np.asarray(top.values),
        example_indices=idx,
        value_range=value_range,
        title=title,
    )
