"""The page machinery shared by every view: safe JSON embedding, the HTML shell, PNG data URIs.

A view is data (a JSON-serialisable dict) plus a script written for it. The page is one file:
the CSS, the common JS helpers and the view's script are inline, and the data sits in a
``<script type="application/json">`` element whose ``<``, ``>`` and ``&`` are written as JSON
``\\u003c`` escapes, so no text in the data (a token ``</script>``, say) can close the element.
The scripts read the data with ``JSON.parse`` and put text on the page only through
``textContent``, never ``innerHTML``, so a token renders as the characters it holds.
"""

from __future__ import annotations

import base64
import html
import json
import math
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# Shared look: system fonts, small type, a light theme.
CSS = """
:root { --fg: #1f2937; --muted: #6b7280; --line: #e5e7eb; --accent: #2563eb; }
* { box-sizing: border-box; }
body { font: 13px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  margin: 16px; background: #fff; }
h1 { font-size: 17px; margin: 0 0 4px; }
h2 { font-size: 14px; margin: 14px 0 6px; }
.jx-sub { color: var(--muted); margin-bottom: 10px; }
.jx-info { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;
  background: #f9fafb; border: 1px solid var(--line); padding: 4px 8px; border-radius: 4px;
  min-height: 1.6em; margin: 6px 0; white-space: pre-wrap; }
.jx-controls { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; margin: 6px 0; }
table.jx-grid { border-collapse: collapse; font-size: 11px; }
table.jx-grid td, table.jx-grid th { border: 1px solid #fff; padding: 0; text-align: center; }
table.jx-grid th { color: var(--muted); font-weight: normal; padding: 2px 4px; }
table.jx-grid th.jx-rowlabel { text-align: right; white-space: nowrap; }
table.jx-grid td.jx-cell { min-width: 38px; height: 24px; cursor: pointer;
  font-family: ui-monospace, Menlo, Consolas, monospace; }
td.jx-cell.jx-selected { outline: 2px solid #111; outline-offset: -2px; }
.jx-tok { display: inline-block; white-space: pre; padding: 1px 3px; margin: 1px;
  border-radius: 3px; border: 1px solid var(--line); font-family: ui-monospace, Menlo,
  Consolas, monospace; cursor: default; }
.jx-tok.jx-query { outline: 2px solid #111; }
tr.jx-qrow th { color: #111; font-weight: bold; }
.jx-tokens { line-height: 2; margin: 4px 0; }
.jx-muted { color: var(--muted); }
a { color: var(--accent); }
"""

# Helpers every view script may use. Text reaches the page only through textContent.
JS_COMMON = r"""
"use strict";
const DATA = JSON.parse(document.getElementById("jx-data").textContent);
const ROOT = document.getElementById("jx-root");
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
const SVGNS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs) e.setAttribute(k, String(attrs[k]));
  return e;
}
function fmt(x, d) {
  if (x === null || x === undefined || !isFinite(x)) return "n/a";
  return Number(x).toFixed(d === undefined ? 3 : d);
}
function mix(a, b, t) {
  t = Math.max(0, Math.min(1, t));
  return "rgb(" + a.map((v, i) => Math.round(v + (b[i] - v) * t)).join(", ") + ")";
}
const WHITE = [255, 255, 255], BLUE = [37, 99, 235], RED = [190, 30, 45];
const NEG = [33, 102, 172];
// sequential colour for t in [0, 1]; null (NaN) is grey
function seqColor(t) { return (t === null || !isFinite(t)) ? "#d1d5db" : mix(WHITE, BLUE, t); }
// diverging colour for v in [-lim, lim]: blue negative, white 0, red positive
function divColor(v, lim) {
  if (v === null || !isFinite(v)) return "#d1d5db";
  const t = v / lim;
  return t >= 0 ? mix(WHITE, RED, t) : mix(WHITE, NEG, -t);
}
function textOn(t) { return (t !== null && isFinite(t) && Math.abs(t) > 0.6) ? "#fff" : "#111"; }
function short(t, n) { t = String(t); return t.length <= n ? t : t.slice(0, n - 1) + "\u2026"; }
function range(n) { return Array.from({length: n}, (_, i) => i); }
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; \
style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<h1>{title}</h1>
<div class="jx-sub">{subtitle}</div>
<div id="jx-root" data-view="{kind}"></div>
<script type="application/json" id="jx-data">{data}</script>
<script>{common}
{script}</script>
</body>
</html>
"""


def embed_json(data: Any) -> str:
    """JSON text safe inside a ``<script>`` element: ``<``, ``>``, ``&`` as ``\\u`` escapes.

    NaN and infinities are refused (``JSON.parse`` cannot read them): convert them to
    ``None`` first (``floats`` does).

    >>> embed_json({"t": "</script>"})
    '{"t": "\\\\u003c/script\\\\u003e"}'
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def floats(values: Any, digits: int = 6) -> Any:
    """Nested lists of floats rounded to ``digits`` significant digits; NaN/inf become None.

    >>> floats(np.array([[1 / 3, np.nan]]))
    [[0.333333, None]]
    """
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 0:
        x = float(a)
        return float(f"{x:.{digits}g}") if math.isfinite(x) else None
    return [floats(v, digits) for v in a]


def as_float_array(values: Any, name: str, ndims: Sequence[int]) -> np.ndarray:
    """``values`` as a float64 numpy array with one of the ranks ``ndims`` (else ValueError)."""
    try:
        a = np.asarray(values)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name}: expected a numeric array, got {type(values).__name__}") from e
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"{name}: expected a numeric array, got dtype {a.dtype}")
    if a.ndim not in ndims or 0 in a.shape:
        want = " or ".join(f"{n}-D" for n in ndims)
        raise ValueError(f"{name}: expected a non-empty {want} array, got shape {a.shape}")
    return a.astype(np.float64)


def as_labels(labels: Any, n: int, name: str, default: Sequence[str]) -> list[str]:
    """``n`` labels as strings (``default`` if None); ValueError naming ``name`` otherwise."""
    if labels is None:
        return [str(x) for x in default]
    if isinstance(labels, str):
        raise TypeError(f"{name}: expected a sequence of {n} labels, got the string {labels!r}")
    out = [str(x) for x in labels]
    if len(out) != n:
        raise ValueError(f"{name}: expected {n} labels, got {len(out)}")
    return out


def png_data_uri(image: Any, vmin: float | None = None, vmax: float | None = None) -> str:
    """An image as a ``data:image/png;base64,...`` URI (8-bit, written here, no imaging library).

    Args:
      image: ``[h, w]`` grey or ``[h, w, 1 | 3]``; scaled from ``[vmin, vmax]`` (default: the
        image's own min and max) to 0..255.
      vmin, vmax: the value range mapped to black and white.

    Returns:
      The data URI string.

    >>> png_data_uri(np.zeros((2, 2)))[:22]
    'data:image/png;base64,'
    """
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or 0 in a.shape:
        raise ValueError(f"image: expected [h, w], [h, w, 1] or [h, w, 3], got shape {a.shape}")
    finite = a[np.isfinite(a)]
    lo = (float(finite.min()) if finite.size else 0.0) if vmin is None else float(vmin)
    hi = (float(finite.max()) if finite.size else 1.0) if vmax is None else float(vmax)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    b = np.clip(np.nan_to_num((a - lo) * scale), 0, 255).round().astype(np.uint8)
    h, w = b.shape[:2]
    color = 0 if b.ndim == 2 else 2
    raw = b"".join(b"\x00" + b[i].tobytes() for i in range(h))

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


class View:
    """One interactive view: a title, its data and the script that draws it.

    ``to_html()`` gives the self-contained page (inline CSS/JS, data as JSON, no network);
    ``save(path)`` writes it; in a notebook the view renders itself (``_repr_html_``) inside an
    ``<iframe srcdoc>``, so its script and styles cannot touch the notebook's or another view's.

    Attributes:
      kind: ``"attention"``, ``"gallery"``, ``"patching"``, ``"probes"`` or ``"circuit"``.
      title: the page heading.
      subtitle: one line under it.
      data: the JSON-serialisable dict the script reads.
    """

    def __init__(self, kind: str, title: str, subtitle: str, data: dict, script: str):
        self.kind, self.title, self.subtitle, self.data = kind, title, subtitle, data
        self._script = script

    def to_html(self) -> str:
        """The page: one self-contained HTML document."""
        return PAGE.format(
            title=html.escape(self.title),
            subtitle=html.escape(self.subtitle),
            kind=html.escape(self.kind),
            css=CSS,
            data=embed_json(self.data),
            common=JS_COMMON,
            script=self._script,
        )

    def save(self, path: str | Path) -> Path:
        """Writes the page to ``path`` (parents created); returns the path.

        Raises:
          TypeError: ``path`` is not a ``str`` or ``Path``.
        """
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path: expected a file path (str or Path), got {type(path).__name__}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(), encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        doc = html.escape(self.to_html(), quote=True)
        return (
            f'<iframe srcdoc="{doc}" style="width: 100%; height: 640px; border: 1px solid '
            '#e5e7eb;" sandbox="allow-scripts"></iframe>'
        )

    def __repr__(self) -> str:
        return f"<jaxinterp.viz.View {self.kind}: {self.title!r}>"


def index_page(entries: Sequence[tuple[str, str, str]], title: str = "jaxinterp views") -> str:
    """A page linking views: ``entries`` are ``(href, title, description)`` rows.

    Args:
      entries: one row per link, in order.
      title: the page heading.

    Returns:
      The HTML document (static, no script).

    >>> "a.html" in index_page([("a.html", "A", "the A view")])
    True
    """
    rows = []
    for href, name, desc in entries:
        rows.append(
            f'<li><a href="{html.escape(href, quote=True)}">{html.escape(name)}</a>'
            f' <span class="jx-muted">— {html.escape(desc)}</span></li>'
        )
    body = "<ul>\n" + "\n".join(rows) + "\n</ul>"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}\nli {{ margin: 4px 0; }}</style>\n"
        f"</head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )
