"""The attention explorer: tokens as text, a layer × head grid of scores, one head in detail.

The per-head scores are those of :mod:`jaxinterp.attention` (previous-token, offset,
induction, entropy, mean distance), computed here on the one example shown. The page:

* a layer × head grid coloured by the chosen score; clicking a cell selects that head;
* the tokens; hovering a token makes it the query, and every other token is coloured by the
  selected head's weight from that query (opacity = weight / the row's largest weight, so the
  most attended key is full colour; the raw weight is in the tooltip and ``data-weight``);
* for that query, one row per head of the selected layer (where each head attends);
* the selected head's whole ``[q, k]`` matrix, hover for values.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import checked
from jaxinterp.attention import (
    head_entropy,
    induction_score,
    mean_attention_distance,
    offset_score,
    prev_token_score,
)
from jaxinterp.viz._page import View, as_float_array, as_labels, floats

_SCRIPT = r"""
const W = DATA.weights, TOK = DATA.tokens, L = W.length, H = W[0].length, T = TOK.length;
const S = DATA.scores, NAMES = Object.keys(S);
const st = {layer: DATA.selected[0], head: DATA.selected[1], query: DATA.query,
            score: DATA.score};

const controls = el("div", "jx-controls");
const pick = el("select"); pick.id = "jx-score";
for (const n of NAMES) { const o = el("option", null, n); o.value = n; pick.append(o); }
pick.addEventListener("change", () => { st.score = pick.value; drawGrid(); });
const lab = el("label", null, "colour the grid by ");
lab.append(pick);
controls.append(lab);
pick.value = st.score;
ROOT.append(controls);

ROOT.append(el("h2", null, "Per-head scores (layer × head) — click a head"));
const grid = el("table", "jx-grid"); grid.id = "jx-head-grid";
ROOT.append(grid);
const info = el("div", "jx-info"); info.id = "jx-info";
ROOT.append(info);

ROOT.append(el("h2", null, "Tokens — hover one to make it the query"));
const tokRow = el("div", "jx-tokens"); tokRow.id = "jx-tokens";
const tokEls = TOK.map((t, i) => {
  const s = el("span", "jx-tok", t);
  s.dataset.index = i;
  s.addEventListener("mouseenter", () => { st.query = i; draw(); });
  tokRow.append(s);
  return s;
});
ROOT.append(tokRow);

ROOT.append(el("h2", null, "Every head of the selected layer, from the query"));
const heads = el("table", "jx-grid"); heads.id = "jx-layer-heads";
ROOT.append(heads);
ROOT.append(el("h2", null, "Selected head: weights [query × key]"));
const mat = el("table", "jx-grid"); mat.id = "jx-matrix";
ROOT.append(mat);

function rowMax(row) { let m = 0; for (const v of row) if (v > m) m = v; return m; }
function alpha(w, m) { return m > 0 ? w / m : 0; }

function drawGrid() {
  grid.replaceChildren();
  const vals = S[st.score].flat().filter(v => v !== null);
  const lo = Math.min(...vals), hi = Math.max(...vals);
  const head = el("tr"); head.append(el("th"));
  for (let h = 0; h < H; h++) head.append(el("th", null, "H" + h));
  grid.append(head);
  for (let l = 0; l < L; l++) {
    const tr = el("tr");
    tr.append(el("th", "jx-rowlabel", DATA.layer_labels[l]));
    for (let h = 0; h < H; h++) {
      const v = S[st.score][l][h];
      const t = hi > lo ? (v - lo) / (hi - lo) : 0;
      const td = el("td", "jx-cell", fmt(v, 2));
      td.dataset.layer = l; td.dataset.head = h; td.dataset.value = v;
      td.style.background = seqColor(t);
      td.style.color = textOn(t);
      td.title = NAMES.map(n => n + " " + fmt(S[n][l][h])).join("\n");
      if (l === st.layer && h === st.head) td.classList.add("jx-selected");
      td.addEventListener("click", () => { st.layer = l; st.head = h; draw(); });
      tr.append(td);
    }
    grid.append(tr);
  }
}

function draw() {
  drawGrid();
  const row = W[st.layer][st.head][st.query], m = rowMax(row);
  tokEls.forEach((s, k) => {
    const a = alpha(row[k], m);
    s.style.background = "rgba(37, 99, 235, " + a.toFixed(4) + ")";
    s.style.color = a > 0.6 ? "#fff" : "#111";
    s.dataset.weight = row[k];
    s.title = "weight " + fmt(row[k], 4);
    s.classList.toggle("jx-query", k === st.query);
  });
  const top = range(T).sort((a, b) => row[b] - row[a]).slice(0, 3);
  info.textContent = "layer " + DATA.layer_labels[st.layer] + " head " + st.head +
    " | query " + st.query + " " + JSON.stringify(TOK[st.query]) + " -> " +
    top.map(k => JSON.stringify(TOK[k]) + " " + fmt(row[k], 2)).join(", ") + "\n" +
    NAMES.map(n => n + " " + fmt(S[n][st.layer][st.head])).join("  ");
  heads.replaceChildren();
  for (let h = 0; h < H; h++) {
    const tr = el("tr");
    const th = el("th", "jx-rowlabel", "H" + h);
    if (h === st.head) th.style.fontWeight = "bold";
    tr.append(th);
    const r = W[st.layer][h][st.query], mh = rowMax(r);
    for (let k = 0; k < T; k++) {
      const td = el("td", "jx-cell", short(TOK[k], 10));
      td.style.background = "rgba(37, 99, 235, " + alpha(r[k], mh).toFixed(4) + ")";
      td.style.color = alpha(r[k], mh) > 0.6 ? "#fff" : "#111";
      td.style.whiteSpace = "pre";
      td.style.padding = "0 3px";
      td.dataset.weight = r[k];
      td.title = "head " + h + ": weight " + fmt(r[k], 4);
      td.addEventListener("click", () => { st.head = h; draw(); });
      tr.append(td);
    }
    heads.append(tr);
  }
  if (matKey !== st.layer + "." + st.head) drawMatrix();
  mat.querySelectorAll("tr").forEach((tr, i) => tr.classList.toggle("jx-qrow", i - 1 === st.query));
}

// the [q, k] matrix is rebuilt only when the head changes (hovering tokens does not touch it)
let matKey = null;
function drawMatrix() {
  matKey = st.layer + "." + st.head;
  mat.replaceChildren();
  const hr = el("tr"); hr.append(el("th"));
  for (let k = 0; k < T; k++) {
    const th = el("th", null, short(TOK[k], 6));
    th.title = TOK[k];
    th.style.writingMode = "vertical-rl";
    th.style.maxWidth = "22px";
    hr.append(th);
  }
  mat.append(hr);
  const A = W[st.layer][st.head];
  for (let q = 0; q < T; q++) {
    const tr = el("tr");
    const th = el("th", "jx-rowlabel", short(TOK[q], 14));
    th.title = TOK[q];
    tr.append(th);
    for (let k = 0; k < T; k++) {
      const td = el("td", "jx-cell");
      td.style.minWidth = "22px"; td.style.height = "18px";
      td.style.background = seqColor(A[q][k]);
      td.dataset.weight = A[q][k];
      td.title = JSON.stringify(TOK[q]) + " -> " + JSON.stringify(TOK[k]) + ": " + fmt(A[q][k], 4);
      td.addEventListener("mouseenter", () => {
        info.textContent = "query " + q + " " + JSON.stringify(TOK[q]) + " -> key " + k + " " +
          JSON.stringify(TOK[k]) + ": " + fmt(A[q][k], 4);
      });
      tr.append(td);
    }
    mat.append(tr);
  }
}
draw();
"""


def head_scores(
    weights: Any,
    *,
    token_ids: Any = None,
    offsets: Sequence[int] = (),
    query_mask: Any = None,
) -> dict[str, np.ndarray]:
    """Per-head scores of one example, from :mod:`jaxinterp.attention`.

    Args:
      weights: ``[layer, head, q, k]`` attention weights of one example.
      token_ids: optional ``[seq]`` int token ids; adds the induction score.
      offsets: adds ``offset_{n}`` (mean mass at key ``q - n``) for each ``n``.
      query_mask: optional ``[q]`` mask of real (non-padding) queries.

    Returns:
      ``{name: [layer, head]}`` for ``prev_token``, each ``offset_{n}``, ``induction`` (with
      ``token_ids``), ``entropy`` (nats) and ``distance`` (mean ``|q - k|``).

    The scores are computed in one compiled call per set of scores, checked: weights that are
    not attention distributions raise ``ValueError`` (the value-check policy).

    Raises:
      TypeError, ValueError: as the :mod:`jaxinterp.attention` functions (rows that are not
        attention distributions, masks or tokens of the wrong shape).

    >>> w = np.broadcast_to(np.eye(4, k=-1), (1, 2, 4, 4)).copy(); w[..., 0, 0] = 1
    >>> head_scores(w)["prev_token"].tolist()
    [[1.0, 1.0]]
    """
    w = np.asarray(weights)
    if w.ndim != 4:
        raise ValueError(f"weights: expected [layer, head, q, k], got shape {w.shape}")
    if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in offsets):
        raise TypeError(f"offsets: expected a sequence of ints, got {offsets!r}")
    args = {"weights": jnp.asarray(w, jnp.float32)}
    if token_ids is not None:
        args["token_ids"] = jnp.asarray(token_ids)
    if query_mask is not None:
        args["query_mask"] = jnp.asarray(query_mask)
    offsets = tuple(int(n) for n in offsets)
    out = _scorer(offsets, w.shape[-2] >= 2)(args)
    order = ["prev_token", *(f"offset_{n}" for n in offsets), "induction", "entropy", "distance"]
    return {k: np.asarray(out[k], np.float64) for k in order if k in out}


@functools.lru_cache(maxsize=32)
def _scorer(offsets: tuple[int, ...], prev: bool) -> Any:
    """One compiled, checked scoring function per set of scores (a page build compiles once)."""

    def scores(args: dict) -> dict:
        w, mask = args["weights"], args.get("query_mask")
        out = {}
        if prev:
            out["prev_token"] = prev_token_score(w, mask)
        for n in offsets:
            out[f"offset_{n}"] = offset_score(w, n, mask)
        if "token_ids" in args:
            out["induction"] = induction_score(w, args["token_ids"], mask)
        out["entropy"] = head_entropy(w, mask)
        out["distance"] = mean_attention_distance(w, mask)
        return out

    return checked(scores)


class AttentionView(View):
    """The attention explorer for one example (see :func:`attention_view`).

    Attributes:
      weights: ``[layer, head, q, k]`` the weights shown.
      tokens: ``[seq]`` the token strings.
      scores: ``{name: [layer, head]}`` the per-head scores in the grid.
    """

    def __init__(self, title: str, weights: np.ndarray, tokens: list[str], scores: dict, **kw):
        self.weights, self.tokens, self.scores = weights, tokens, scores
        super().__init__(**kw, title=title)

    def treescope(self) -> Any:
        """The weights as a treescope array figure with named axes ``layer, head, q, k``."""
        from jaxinterp.viz._treescope import named_array

        return named_array(
            self.weights,
            ("layer", "head", "q", "k"),
            labels={"q": self.tokens, "k": self.tokens},
        )


def attention_view(
    weights: Any,
    tokens: Sequence[str],
    *,
    token_ids: Any = None,
    offsets: Sequence[int] = (),
    query_mask: Any = None,
    layer_labels: Sequence[str] | None = None,
    score: str | None = None,
    select: tuple[int, int] | None = None,
    query: int | None = None,
    title: str = "Attention explorer",
) -> AttentionView:
    """An interactive attention explorer for one example.

    Args:
      weights: ``[layer, head, q, k]`` attention weights with ``q == k == len(tokens)`` (e.g.
        ``stack_layers(maps)[:, i]`` for example ``i``; cut padding off first).
      tokens: ``[seq]`` token strings, shown as text (any characters; they are escaped).
      token_ids: optional ``[seq]`` int ids, for the induction score.
      offsets: extra ``offset_{n}`` scores.
      query_mask: optional ``[q]`` mask of the queries that count in the scores.
      layer_labels: ``[layer]`` row labels (default ``L0, L1, ...``).
      score: the score colouring the grid at first (default ``"prev_token"``, the first one).
      select: the head selected at first, ``(layer, head)`` (default: the head with the
        highest ``score``; the lowest for ``entropy`` and ``distance``).
      query: the query token at first (default: the last).
      title: the page heading.

    Returns:
      An :class:`AttentionView` (``save(path)``, ``_repr_html_``, ``treescope()``).

    Raises:
      TypeError, ValueError: ``weights`` is not ``[layer, head, seq, seq]``, ``tokens`` has
        another length, ``select``/``query`` are out of range, or a score refuses the weights.

    >>> w = np.full((1, 2, 3, 3), 1 / 3)
    >>> v = attention_view(w, ["a", "<b>", "c"])
    >>> v.data["tokens"], sorted(v.scores)
    (['a', '<b>', 'c'], ['distance', 'entropy', 'prev_token'])
    """
    w = as_float_array(weights, "weights", (4,))
    n_layer, n_head, nq, nk = w.shape
    if nq != nk:
        raise ValueError(f"weights: expected self-attention [layer, head, seq, seq], got {w.shape}")
    toks = as_labels(tokens, nq, "tokens", [])
    layers = as_labels(layer_labels, n_layer, "layer_labels", [f"L{i}" for i in range(n_layer)])
    scores = head_scores(w, token_ids=token_ids, offsets=offsets, query_mask=query_mask)
    score = next(iter(scores)) if score is None else score
    if score not in scores:
        raise ValueError(f"score: expected one of {list(scores)}, got {score!r}")
    if select is None:
        s = scores[score] * (-1 if score in ("entropy", "distance") else 1)
        select = tuple(int(i) for i in np.unravel_index(np.nanargmax(s), s.shape))
    if (
        not isinstance(select, (tuple, list))
        or len(select) != 2
        or not all(isinstance(i, (int, np.integer)) for i in select)
        or not (0 <= select[0] < n_layer and 0 <= select[1] < n_head)
    ):
        raise ValueError(
            f"select: expected (layer, head) in [0, {n_layer}) × [0, {n_head}), got {select!r}"
        )
    query = nq - 1 if query is None else query
    if not isinstance(query, (int, np.integer)) or not 0 <= query < nq:
        raise ValueError(f"query: expected an int in [0, {nq - 1}], got {query!r}")
    data = {
        "tokens": toks,
        "layer_labels": layers,
        "weights": floats(w),
        "scores": {k: floats(v) for k, v in scores.items()},
        "score": score,
        "selected": [int(select[0]), int(select[1])],
        "query": int(query),
    }
    sub = f"{n_layer} layers × {n_head} heads, {nq} tokens"
    return AttentionView(
        title, w, toks, scores, kind="attention", subtitle=sub, data=data, script=_SCRIPT
    )
