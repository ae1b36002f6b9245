"""The interactive views in a real browser: headless Chromium driven by Playwright.

Each page is opened from a file with every network request recorded (the pages must make
none), console errors and uncaught exceptions collected (there must be none), then used as a
person would: hover a token, click a head, filter the gallery, hover a map cell. What the page
shows (data attributes, computed colours, text) is compared with numbers computed here from the
arrays with numpy. Screenshots go to the test's tmp folder, and also to
``$JAXINTERP_SCREENSHOT_DIR`` when that is set.

Chromium comes from Debian (``apt-get install chromium``) and Playwright from PyPI (the
``browser`` extra; its wheel downloads no browser). Without them these tests skip, unless
``JAXINTERP_REQUIRE_BROWSER=1`` (set by ``.ci/run``): then they fail.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxinterp import models, viz
from jaxinterp.attention import attention_weights, stack_layers

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
EVIL = [
    "<script>window.__pwned = 1</script>",
    "<img src=x onerror='window.__pwned = 2'>",
    "</script><script>window.__pwned = 3</script>",
    '&amp; \u2028 "quoted"',
]


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _unavailable(why: str) -> None:
    if os.environ.get("JAXINTERP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required (JAXINTERP_REQUIRE_BROWSER=1) but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install 'jaxinterp[browser]')")
    exe = _chromium()
    if exe is None:
        _unavailable("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """A page opened from ``path`` with its console errors and network requests recorded."""

    def __init__(self, browser, path: Path, shots: Path):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.shots = shots
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def _console(self, msg) -> None:
        if msg.type in ("error", "warning"):
            self.errors.append(f"console {msg.type}: {msg.text}")

    def check_clean(self) -> None:
        assert self.errors == []
        assert self.requests == [self.url]  # the page itself, nothing from the network

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        extra = os.environ.get("JAXINTERP_SCREENSHOT_DIR")
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        assert path.stat().st_size > 1000
        return path

    def close(self) -> None:
        self.page.close()


@pytest.fixture
def open_page(browser, tmp_path):
    pages = []

    def opener(view) -> Page:
        path = view.save(tmp_path / f"{view.kind}_{len(pages)}.html")
        p = Page(browser, path, tmp_path)
        pages.append(p)
        return p

    yield opener
    for p in pages:
        p.close()


def _rgba(css: str) -> tuple[float, float, float, float]:
    nums = [float(x) for x in re.findall(r"[\d.]+", css)]
    return (*nums[:3], nums[3] if len(nums) > 3 else 1.0)


@pytest.fixture(scope="module")
def real_attention(offset_tf):
    """One real run of the offset-3 transformer: weights [layer, head, q, k] and tokens."""
    cfg = offset_tf.model.cfg
    tokens = np.asarray(models.offset_batch(jax.random.key(5), 1, cfg.seq_len, cfg.vocab, 3).tokens)
    _, maps = jax.jit(attention_weights(offset_tf.model, offset_tf.variables))(tokens)
    w = np.asarray(stack_layers(maps)[:, 0], np.float64)
    return w, tokens[0]


def test_attention_hover_and_click(open_page, real_attention):
    w, ids = real_attention
    names = [f"t{int(t)}" for t in ids]
    names[2] = EVIL[0]
    view = viz.attention_view(w, names, token_ids=ids, offsets=[3], title="offset-3 model")
    p = open_page(view)
    p.check_clean()
    page = p.page
    n_layer, n_head, seq, _ = w.shape
    # the grid: one cell per head, values = numpy's previous-token score (q >= 1)
    cells = page.locator("#jx-head-grid td.jx-cell")
    assert cells.count() == n_layer * n_head
    prev = np.stack([w[..., q, q - 1] for q in range(1, seq)], -1).mean(-1)
    shown = np.array(cells.evaluate_all("es => es.map(e => +e.dataset.value)"))
    shown = shown.reshape(n_layer, n_head)
    np.testing.assert_allclose(shown, prev, rtol=1e-5, atol=1e-6)
    # the default head is the best previous-token head; its cell is marked selected
    sel = page.locator("#jx-head-grid td.jx-selected")
    assert sel.count() == 1
    layer, head = int(sel.get_attribute("data-layer")), int(sel.get_attribute("data-head"))
    assert (layer, head) == np.unravel_index(prev.argmax(), prev.shape)

    def check_query(q: int, layer: int, head: int) -> None:
        shown = page.locator("#jx-tokens .jx-tok").evaluate_all(
            "es => es.map(e => [+e.dataset.weight, getComputedStyle(e).backgroundColor,"
            " e.classList.contains('jx-query')])"
        )
        row = w[layer, head, q]
        np.testing.assert_allclose([s[0] for s in shown], row, rtol=1e-5, atol=1e-7)
        # opacity = weight / the row's largest weight. Chromium keeps alpha in 8 bits and
        # prints the shortest decimal that maps back to the same byte: within 1/255
        alpha = [_rgba(s[1])[3] for s in shown]
        np.testing.assert_allclose(alpha, row / row.max(), atol=1 / 255 + 1e-4)
        assert [s[2] for s in shown] == [k == q for k in range(seq)]

    # hover token 9: the selected head's weights from query 9 colour the tokens
    page.hover("#jx-tokens .jx-tok[data-index='9']")
    check_query(9, layer, head)
    # every head of the selected layer, from the hovered query
    rows = page.locator("#jx-layer-heads tr")
    assert rows.count() == n_head
    for h in range(n_head):
        got = [
            float(x)
            for x in rows.nth(h).locator("td").evaluate_all("es => es.map(e => e.dataset.weight)")
        ]
        np.testing.assert_allclose(got, w[layer, h, 9], rtol=1e-5, atol=1e-7)
    p.screenshot("attention_hover")
    # click another head: it becomes the selected one, the tokens follow it
    other = (1 - layer, (head + 1) % n_head)
    page.click(f"#jx-head-grid td[data-layer='{other[0]}'][data-head='{other[1]}']")
    sel = page.locator("#jx-head-grid td.jx-selected")
    assert (int(sel.get_attribute("data-layer")), int(sel.get_attribute("data-head"))) == other
    check_query(9, *other)
    assert f"layer L{other[0]} head {other[1]}" in page.text_content("#jx-info")
    # the selected head's whole [q, k] matrix; hovering a token only moves the query row
    mat = page.locator("#jx-matrix td.jx-cell").evaluate_all("es => es.map(e => +e.dataset.weight)")
    np.testing.assert_allclose(np.reshape(mat, (seq, seq)), w[other], rtol=1e-5, atol=1e-7)
    page.evaluate("document.querySelector('#jx-matrix td.jx-cell').jxMark = 1")
    page.hover("#jx-tokens .jx-tok[data-index='4']")
    assert page.evaluate("document.querySelector('#jx-matrix td.jx-cell').jxMark") == 1
    assert page.text_content("#jx-matrix tr.jx-qrow th") == names[4]
    check_query(4, *other)
    page.hover("#jx-tokens .jx-tok[data-index='9']")
    # the grid can be coloured by another score; values follow it
    page.select_option("#jx-score", "offset_3")
    off = np.stack([w[..., q, q - 3] for q in range(3, seq)], -1).mean(-1)
    got = float(page.get_attribute("#jx-head-grid td[data-layer='1'][data-head='0']", "data-value"))
    assert got == pytest.approx(off[1, 0], rel=1e-5)
    # the <script> token is text, not markup
    assert page.text_content("#jx-tokens .jx-tok[data-index='2']") == EVIL[0]
    assert page.evaluate("window.__pwned") is None
    p.screenshot("attention_click")
    p.check_clean()


def test_escaping_everywhere(open_page):
    w = np.full((1, 2, 4, 4), 0.25)
    views = [
        viz.attention_view(w, EVIL, title=EVIL[0]),
        viz.feature_gallery(
            EVIL,
            np.arange(4.0),
            examples=[[EVIL] * 2] * 4,
            example_values=np.ones((4, 2)),
            example_activations=np.ones((4, 2, 4)),
        ),
        viz.patching_view(np.ones((4, 4)), labels={"layer": EVIL, "head": EVIL}),
        viz.probe_view(np.ones((4, 4)) / 2, layer_names=EVIL, task_names=EVIL),
    ]
    for view in views:
        p = open_page(view)
        p.check_clean()
        assert p.page.evaluate("window.__pwned") is None
        text = p.page.text_content("#jx-root")
        for s in EVIL[:3]:
            assert s in text
        assert p.page.locator("#jx-root script, #jx-root img[src='x']").count() == 0
    assert p.page.title() == "Probe accuracy by layer"
    assert views[0].to_html().count("<script") == 2  # the data and the page's own script


def _digit_gallery(n: int, k: int):
    rng = np.random.default_rng(0)
    opt = rng.random((n, 8, 8))
    ex = rng.random((n, k, 8, 8))
    vals = rng.normal(size=n) + 5
    ev = -np.sort(-rng.normal(size=(n, k)), axis=1) + 4
    traces = np.cumsum(rng.random((n, 40)), axis=1)
    idx = rng.integers(0, 1797, size=(n, k))
    idx[1, -1] = -1  # fewer examples than k for target 1
    labels = [f"unit {i}" for i in range(n)]
    return labels, vals, opt, ex, ev, idx, traces


def test_gallery_counts_filter_and_sort(open_page):
    n, k = 6, 4
    labels, vals, opt, ex, ev, idx, traces = _digit_gallery(n, k)
    view = viz.feature_gallery(
        labels,
        vals,
        optimized=opt,
        traces=traces,
        examples=ex,
        example_values=ev,
        example_indices=idx,
        title="gallery",
    )
    p = open_page(view)
    p.check_clean()
    page = p.page
    items = page.locator("#jx-gallery .jx-item")
    assert items.count() == n
    assert page.locator("#jx-gallery .jx-opt img").count() == n
    assert page.locator("#jx-gallery .jx-fig:not(.jx-opt) img").count() == n * k - 1
    assert page.locator("#jx-gallery svg.jx-spark").count() == n
    # the target with one example fewer keeps its trace in the same column as the others
    lefts = page.eval_on_selector_all(
        "#jx-gallery svg.jx-spark", "es => es.map(e => e.getBoundingClientRect().left)"
    )
    assert max(lefts) - min(lefts) < 8, lefts
    # images decode: their natural size is the 8×8 input
    sizes = page.eval_on_selector_all(
        "#jx-gallery img", "es => es.map(e => [e.complete, e.naturalWidth, e.naturalHeight])"
    )
    assert sizes == [[True, 8, 8]] * (n * k - 1 + n)
    head = items.nth(0).locator(".jx-item-head").text_content()
    assert f"optimized {vals[0]:.2f}" in head and f"best example {ev[0, 0]:.2f}" in head
    p.screenshot("gallery")
    page.fill("#jx-filter", "unit 3")
    assert items.count() == 1 and page.text_content("#jx-count") == f"1 of {n} targets"
    page.fill("#jx-filter", "")
    page.select_option("#jx-sort", "value")
    order = [items.nth(i).get_attribute("data-label") for i in range(n)]
    assert order == [labels[i] for i in np.argsort(-vals)]
    p.check_clean()


def test_gallery_token_activations(open_page):
    toks = [["a", "b", "c"], ["d", "e", "f"]]
    acts = np.array([[[0.0, 1.0, -2.0], [0.5, 0.5, 0.5]]])
    view = viz.feature_gallery(
        ["feature 0"],
        [3.0],
        examples=[toks],
        example_values=[[2.0, 1.0]],
        example_activations=acts,
        optimized=[["x", "y", "z"]],
    )
    p = open_page(view)
    p.check_clean()
    spans = p.page.locator("#jx-gallery .jx-tok[data-act]")
    assert spans.count() == 6
    got = [float(v) for v in spans.evaluate_all("es => es.map(e => e.dataset.act)")]
    np.testing.assert_allclose(got, acts.ravel())
    # colour: white at 0, full red at the largest |activation| (2), full blue at -2
    colors = spans.evaluate_all("es => es.map(e => getComputedStyle(e).backgroundColor)")
    assert _rgba(colors[0])[:3] == (255, 255, 255)
    assert _rgba(colors[2])[:3] == (33, 102, 172)
    half = [math.floor(255 + (c - 255) * 0.5 + 0.5) for c in (190, 30, 45)]  # JS Math.round
    assert _rgba(colors[1])[:3] == tuple(half)
    p.screenshot("gallery_tokens")


def test_patching_hover_and_maps(open_page):
    from jaxinterp import interventions as iv

    sites = iv.head_sites(2, 4)
    rng = np.random.default_rng(1)
    real, est = rng.normal(size=8), rng.normal(size=8)
    view = viz.patching_view(
        {"activation patching": real, "attribution patching": est}, sites=sites
    )
    p = open_page(view)
    p.check_clean()
    page = p.page
    cells = page.locator("#jx-map-grid td.jx-cell")
    assert cells.count() == 8
    got = [float(v) for v in cells.evaluate_all("es => es.map(e => e.dataset.value)")]
    np.testing.assert_allclose(got, real, rtol=1e-5)
    page.hover("#jx-map-grid td[data-row='1'][data-col='2']")
    info = page.text_content("#jx-info")
    assert "layer 1, head 2" in info and sites.paths[1] in info
    assert f"activation patching {real[6]:.4f}" in info
    assert f"attribution patching {est[6]:.4f}" in info
    # colour limit is the largest |effect|: that cell is full red or full blue
    i = int(np.abs(real).argmax())
    c = _rgba(cells.nth(i).evaluate("e => getComputedStyle(e).backgroundColor"))[:3]
    assert c == ((190, 30, 45) if real[i] > 0 else (33, 102, 172))
    assert page.text_content("#jx-paths") == (
        f"sites: layer 0 = {sites.paths[0]}; layer 1 = {sites.paths[1]}"
    )
    p.screenshot("patching")
    page.select_option("#jx-map", "attribution patching")
    got = [float(v) for v in cells.evaluate_all("es => es.map(e => e.dataset.value)")]
    np.testing.assert_allclose(got, est, rtol=1e-5)
    p.check_clean()


def test_probe_chart(open_page):
    acc = np.array([[0.3, 0.1], [0.8, 0.6], [0.95, 0.9]])
    ctrl = np.array([[0.2, 0.1], [0.3, 0.2], [0.3, 0.2]])
    view = viz.probe_view(
        acc,
        control=ctrl,
        layer_names=["embed", "block_0", "block_1"],
        task_names=["current", "t-3"],
        chance=[0.0625, 0.0625],
    )
    p = open_page(view)
    p.check_clean()
    page = p.page
    points = page.locator("#jx-probe-chart circle.jx-point")
    assert points.count() == acc.size * 2
    kinds = points.evaluate_all(
        "es => es.map(e => [e.dataset.kind, +e.dataset.task, +e.dataset.layer, +e.dataset.value])"
    )
    for kind, t, li, v in kinds:
        ref = acc if kind == "accuracy" else ctrl
        assert v == pytest.approx(ref[li, t])
    page.hover("#jx-probe-chart circle[data-kind='accuracy'][data-task='1'][data-layer='2']")
    assert page.text_content("#jx-info") == "t-3 accuracy at block_1: 0.900"
    rows = page.locator("#jx-probe-table tr")
    assert rows.count() == 4
    assert rows.nth(2).locator("td").all_text_contents() == [
        "0.800",
        "0.300",
        "0.500",
        "0.600",
        "0.200",
        "0.400",
    ]
    p.screenshot("probes")


def test_index_page_links(open_page, browser, tmp_path):
    a = viz.probe_view(np.ones((2, 1)) / 2).save(tmp_path / "a.html")
    index = tmp_path / "index.html"
    index.write_text(viz.index_page([("a.html", "Probes <a>", "accuracy")]))
    p = Page(browser, index, tmp_path)
    p.check_clean()
    assert p.page.text_content("li a") == "Probes <a>"
    p.page.click("li a")
    p.page.wait_for_load_state("load")
    assert p.page.url == a.resolve().as_uri()
    assert p.page.locator("#jx-probe-chart").count() == 1
    assert p.errors == []
    p.close()


def test_circuit_view_edges_nodes_and_slider(open_page):
    from jaxinterp.circuits import ResidualLayout, edge_graph

    g = edge_graph(ResidualLayout(n_layers=2, n_heads=2, n_kv_heads=1))
    s = np.random.default_rng(3).normal(size=len(g.names))
    s[g.index("a0.h1->logits")] = 5.0  # the strongest edge, positive
    view = viz.circuit_view(g, s, top=6, max_width=8.0, title=EVIL[0])
    p = open_page(view)
    p.check_clean()
    page = p.page
    want = np.argsort(-np.abs(s))[:6]
    lines = page.locator("#jx-circuit line.jx-edge")
    assert lines.count() == 6
    got = [float(v) for v in lines.evaluate_all("es => es.map(e => e.dataset.score)")]
    np.testing.assert_allclose(got, s[want], rtol=1e-6)
    widths = lines.evaluate_all("es => es.map(e => Number(e.getAttribute('stroke-width')))")
    np.testing.assert_allclose(widths, 8.0 * np.abs(s[want]) / 5.0, rtol=1e-6)
    assert lines.nth(0).get_attribute("stroke") == "#2563eb"
    lines.nth(0).hover()
    assert page.text_content("#jx-info") == "a0.h1 \u2192 logits: 5.0000"
    # a node's sums are over the drawn edges that touch it
    page.hover("circle[data-node='logits']")
    names = [g.names[e] for e in want]
    into = sum(v for n, v in zip(names, s[want]) if n.endswith("->logits"))
    assert page.text_content("#jx-info").startswith(f"logits: in {into:.4f}")
    page.locator("#jx-edges").fill("2")
    shown = lines.evaluate_all("es => es.filter(e => e.style.display !== 'none').length")
    assert shown == 2 and page.text_content("#jx-count") == "2"
    assert page.evaluate("window.__pwned") is None
    p.screenshot("circuit")
    p.check_clean()


def test_feature_dashboard_examples_hover_and_filter(open_page):
    """A dictionary's dashboard: each card's top sequences, their captions and per-token
    activations (hover titles) against numpy, then filtered and sorted as a reader would."""
    import flax.linen as nn

    from jaxinterp import features as F

    model = nn.Sequential([nn.Embed(9, 6)])
    v = model.init(jax.random.key(0), np.zeros((1, 5), np.int32))
    p = F.init_params(jax.random.key(1), 6, 10)
    p = p._replace(b_enc=p.b_enc + 0.05)
    toks = np.asarray(jax.random.randint(jax.random.key(2), (12, 5), 0, 9))
    feats, k = [2, 7, 4], 3
    view = F.feature_dashboard(
        model, v, p, F.relu(0.0), "layers_0", toks, feats, k=k, token_str=lambda t: f"t{t}"
    )
    emb = np.asarray(v["params"]["layers_0"]["embedding"], np.float64)[toks]
    lat = np.maximum(emb @ np.asarray(p.W_enc, np.float64) + np.asarray(p.b_enc), 0)  # [n, s, f]
    page = open_page(view)
    page.check_clean()
    cards = page.page.locator("#jx-gallery .jx-item")
    assert cards.count() == len(feats)
    best = []
    for c, f in enumerate(feats):
        card = cards.nth(c)
        assert card.get_attribute("data-label").startswith(f"latent {f} · fires on ")
        order = np.argsort(-lat[..., f].ravel(), kind="stable")[:k]
        ex, pos = np.divmod(order, toks.shape[1])
        best.append(lat[ex[0], pos[0], f])
        lines = card.locator(".jx-text")
        assert lines.count() == k
        for j in range(k):
            line = lines.nth(j)
            caption = line.locator(".jx-muted").text_content().strip()
            assert caption == f"{lat[ex[j], pos[j], f]:.2f} (#{ex[j]})"
            spans = line.locator(".jx-tok")
            assert spans.all_text_contents() == [f"t{t}" for t in toks[ex[j]]]
            acts = [float(a) for a in spans.evaluate_all("es => es.map(e => e.dataset.act)")]
            np.testing.assert_allclose(acts, lat[ex[j], :, f], rtol=1e-5, atol=1e-6)
        # hovering the strongest token of the best example shows its activation
        top = lines.nth(0).locator(".jx-tok").nth(int(pos[0]))
        top.hover()
        assert top.get_attribute("title") == f"activation {lat[ex[0], pos[0], f]:.3f}"
        color = _rgba(top.evaluate("e => getComputedStyle(e).backgroundColor"))
        assert color[:3] == (190, 30, 45)  # the card's largest activation: full red
    page.page.fill("#jx-filter", f"latent {feats[1]} ")
    assert page.page.locator("#jx-gallery .jx-item").count() == 1
    assert page.page.text_content("#jx-count") == f"1 of {len(feats)} targets"
    page.page.fill("#jx-filter", "")
    page.page.select_option("#jx-sort", "best")
    cards = page.page.locator("#jx-gallery .jx-item")
    got = [cards.nth(i).get_attribute("data-label").split(" ·")[0] for i in range(len(feats))]
    assert got == [f"latent {feats[i]}" for i in np.argsort(-np.array(best), kind="stable")]
    page.check_clean()
    page.screenshot("feature_dashboard")
