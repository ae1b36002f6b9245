"""jaxinterp.viz without a browser: the embedded data against numpy references, escaping,
the PNG encoder, treescope figures, notebook rendering and argument errors.

What the pages *do* with the data (hover, click, colours) is tested in a real browser in
tests/test_browser.py.
"""

from __future__ import annotations

import base64
import html
import json
import re
import struct
import zlib

import numpy as np
import pytest

from jaxinterp import actmax, viz
from jaxinterp import interventions as iv

EVIL = ["<script>alert(1)</script>", "</script><b>x</b>", "a & b", "\u2028"]


def _data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="jx-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _weights(seed=0, shape=(2, 3, 6, 6)):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.normal(size=shape)
    causal = np.tril(np.ones(shape[-2:], bool))
    return _softmax(np.where(causal, logits, -np.inf))


def test_embed_json_is_safe_and_round_trips():
    data = {"tokens": EVIL, "x": [1.5, None]}
    text = viz.embed_json(data)
    assert not set("<>&") & set(text)
    assert "\u2028" not in text
    assert json.loads(text) == data
    page = viz.attention_view(np.full((1, 1, 4, 4), 0.25), EVIL, title=EVIL[0]).to_html()
    # exactly the page's own two <script> elements open and close
    assert page.count("<script") == 2 and page.count("</script") == 2
    assert _data(page)["tokens"] == EVIL
    assert "<title>&lt;script&gt;alert(1)&lt;/script&gt;</title>" in page
    with pytest.raises(ValueError):
        viz.embed_json({"x": float("nan")})  # JSON.parse could not read it


def test_attention_scores_match_numpy():
    w = _weights()
    ids = np.array([4, 7, 9, 4, 7, 9])
    view = viz.attention_view(w, list("abcdef"), token_ids=ids, offsets=[2], query=3)
    d = view.data
    seq = w.shape[-1]
    prev = np.stack([w[..., q, q - 1] for q in range(1, seq)], -1).mean(-1)
    off2 = np.stack([w[..., q, q - 2] for q in range(2, seq)], -1).mean(-1)
    ent = -(w * np.log(np.where(w > 0, w, 1))).sum(-1).mean(-1)
    dist = (w * np.abs(np.arange(seq)[:, None] - np.arange(seq)[None, :])).sum(-1).mean(-1)
    # induction: queries 3, 4, 5 repeat tokens 0, 1, 2; the induction key is the one after
    ind = np.stack([w[..., q, q - 2] for q in (3, 4, 5)], -1).mean(-1)
    assert list(d["scores"]) == ["prev_token", "offset_2", "induction", "entropy", "distance"]
    for name, ref in [
        ("prev_token", prev),
        ("offset_2", off2),
        ("induction", ind),
        ("entropy", ent),
        ("distance", dist),
    ]:
        np.testing.assert_allclose(d["scores"][name], ref, rtol=2e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(view.scores[name], ref, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(d["weights"], w, rtol=5e-6, atol=1e-12)  # 6 digits
    assert d["selected"] == list(np.unravel_index(prev.argmax(), prev.shape))
    assert d["query"] == 3 and d["score"] == "prev_token"
    low = viz.attention_view(w, list("abcdef"), score="entropy").data["selected"]
    assert low == list(np.unravel_index(ent.argmin(), ent.shape))  # most focused head


def test_attention_query_mask_and_padding():
    w = _weights(1, (1, 2, 5, 5))
    mask = np.array([1, 1, 1, 0, 0])
    got = viz.head_scores(w, query_mask=mask)
    prev = np.stack([w[..., q, q - 1] for q in (1, 2)], -1).mean(-1)
    np.testing.assert_allclose(got["prev_token"], prev, rtol=2e-5)


def test_head_scores_under_jit_and_vmap_are_the_attention_functions():
    import jax

    from jaxinterp.attention import head_entropy, prev_token_score

    w = _weights(2).astype(np.float32)
    got = viz.head_scores(w)
    np.testing.assert_allclose(got["prev_token"], jax.jit(prev_token_score)(w), rtol=1e-6)
    per_layer = jax.jit(jax.vmap(head_entropy))(w)  # [layer, head]: vmapped over layers
    np.testing.assert_allclose(got["entropy"], per_layer, rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(weights=np.ones((3, 3))), ValueError, "weights"),
        (dict(weights=np.full((1, 1, 3, 4), 0.25)), ValueError, "weights"),
        (dict(weights=np.ones((1, 1, 3, 3))), ValueError, "weights"),  # rows sum to 3
        (dict(weights="x"), TypeError, "weights"),
        (dict(tokens=["a"]), ValueError, "tokens"),
        (dict(tokens="abc"), TypeError, "tokens"),
        (dict(select=(1, 0)), ValueError, "select"),
        (dict(select=(0, 5)), ValueError, "select"),
        (dict(query=3), ValueError, "query"),
        (dict(score="nope"), ValueError, "score"),
        (dict(offsets=[1.5]), TypeError, "offsets"),
        (dict(layer_labels=["a", "b"]), ValueError, "layer_labels"),
        (dict(token_ids=np.zeros(4, int)), ValueError, "tokens"),
    ],
)
def test_attention_view_bad_inputs(kwargs, exc, name):
    args = dict(weights=np.full((1, 2, 3, 3), 1 / 3), tokens=["a", "b", "c"])
    args.update(kwargs)
    with pytest.raises(exc, match=f"^{name}"):
        viz.attention_view(args.pop("weights"), args.pop("tokens"), **args)


def _png_pixels(uri: str) -> np.ndarray:
    png = base64.b64decode(uri.removeprefix("data:image/png;base64,"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    w, h, depth, color = struct.unpack(">IIBB", png[16:26])
    idat = png[png.index(b"IDAT") + 4 : png.index(b"IEND") - 8]
    raw = zlib.decompress(idat)
    ch = 1 if color == 0 else 3
    rows = np.frombuffer(raw, np.uint8).reshape(h, 1 + w * ch)
    assert depth == 8 and (rows[:, 0] == 0).all()  # filter type 0 on every row
    return rows[:, 1:].reshape(h, w, ch).squeeze(-1) if ch == 1 else rows[:, 1:].reshape(h, w, 3)


def test_png_data_uri_pixels():
    img = np.linspace(0, 1, 12).reshape(3, 4)
    np.testing.assert_array_equal(_png_pixels(viz.png_data_uri(img)), np.round(img * 255))
    rgb = np.random.default_rng(0).random((2, 5, 3))
    got = _png_pixels(viz.png_data_uri(rgb, 0.0, 1.0))
    np.testing.assert_array_equal(got, np.round(rgb * 255))
    assert (_png_pixels(viz.png_data_uri(np.full((2, 2), 7.0))) == 0).all()  # flat image
    with pytest.raises(ValueError, match="^image"):
        viz.png_data_uri(np.zeros((2, 2, 2)))


def test_gallery_from_actmax_result_types():
    n, k = 3, 4
    rng = np.random.default_rng(0)
    data = rng.random((20, 8, 8, 1))
    res = actmax.ActMaxResult(
        inputs=rng.random((n, 1, 8, 8, 1)),
        params=None,
        traces=np.cumsum(rng.random((n, 10)), 1),
        values=np.array([3.0, 2.0, 1.0]),
        nonfinite_step=-np.ones(n, np.int32),
    )
    idx = np.array([[5, 1, 2, 3], [7, 8, 9, -1], [0, 4, 6, 10]])
    top = actmax.TopK(values=-np.sort(-rng.random((n, k)), 1), indices=idx)
    g = viz.gallery_from_actmax(res, top, data, ["u0", "u1", "u2"])
    items = g.data["items"]
    assert [it["label"] for it in items] == ["u0", "u1", "u2"]
    assert [len(it["examples"]) for it in items] == [4, 3, 4]  # -1: no example
    assert [e["index"] for e in items[0]["examples"]] == [5, 1, 2, 3]
    np.testing.assert_allclose([e["value"] for e in items[2]["examples"]], top.values[2], 5e-6)
    np.testing.assert_allclose(items[1]["trace"], res.traces[1], rtol=5e-6)
    # pixels: the dataset image at that index, mapped from [0, 1] to 0..255
    got = _png_pixels(items[0]["examples"][0]["src"])
    np.testing.assert_array_equal(got, np.round(data[5, ..., 0] * 255))
    got = _png_pixels(items[2]["optimized"]["src"])
    np.testing.assert_array_equal(got, np.round(res.inputs[2, 0, ..., 0] * 255))
    # issue 20: indices into another (shorter) dataset are refused by name
    with pytest.raises(ValueError, match="^data: top.indices go up to 10"):
        viz.gallery_from_actmax(res, top, data[:8], ["u0", "u1", "u2"])


def test_gallery_tokens():
    g = viz.feature_gallery(
        ["f"],
        [1.0],
        examples=[[["a", "<b>"], ["c", "d"]]],
        example_values=[[2.0, 1.0]],
        example_activations=[[[1.0, -3.0], [0.5, 0.0]]],
    )
    item = g.data["items"][0]
    assert item["examples"][0] == {
        "tokens": ["a", "<b>"],
        "acts": [1.0, -3.0],
        "value": 2.0,
        "index": None,
    }
    assert item["act_limit"] == 3.0 and item["optimized"] is None


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        (dict(labels="ab"), TypeError, "labels"),
        (dict(labels=[]), ValueError, "labels"),
        (dict(values=[1.0]), ValueError, "values"),
        (dict(traces=np.zeros((3, 4))), ValueError, "traces"),
        (dict(optimized=np.zeros((3, 4, 4))), ValueError, "optimized"),
        (dict(examples=np.zeros((2, 3, 4, 4))), ValueError, "example_values"),
        (
            dict(examples=np.zeros((1, 3, 4, 4)), example_values=np.zeros((1, 3))),
            ValueError,
            "examples",
        ),
        (
            dict(examples=np.zeros((2, 3, 4, 4)), example_values=np.zeros((2, 2))),
            ValueError,
            "example_values",
        ),
        (
            dict(
                examples=np.zeros((2, 1, 4, 4)),
                example_values=np.zeros((2, 1)),
                example_indices=np.zeros(2),
            ),
            ValueError,
            "example_indices",
        ),
        (dict(image_px=2), ValueError, "image_px"),
    ],
)
def test_gallery_bad_inputs(kwargs, exc, name):
    args = dict(labels=["a", "b"], values=[1.0, 2.0])
    args.update(kwargs)
    with pytest.raises(exc, match=f"^{name}"):
        viz.feature_gallery(args.pop("labels"), args.pop("values"), **args)


def test_patching_view_from_sites():
    sites = iv.head_position_sites(2, 3, 4)
    vals = np.arange(24.0) - 12
    v = viz.patching_view(
        {"patch": vals, "attrib": -vals}, sites=sites, labels={"head": list("abc")}
    )
    d = v.data
    assert d["names"] == ["layer", "head", "position"]
    assert d["row_name"] == "layer / head" and d["col_name"] == "position"
    assert d["row_labels"][:4] == ["0 / a", "0 / b", "0 / c", "1 / a"]
    assert d["row_paths"] == [sites.paths[0]] * 3 + [sites.paths[1]] * 3
    grid = np.asarray(sites.unflatten(vals)).reshape(6, 4)
    np.testing.assert_array_equal(d["maps"]["patch"], grid)
    np.testing.assert_array_equal(d["maps"]["attrib"], -grid)
    # a 2-D map with NaN: null in the data
    v2 = viz.patching_view(np.array([[np.nan, 1.0]]), names=("layer", "position"))
    assert v2.data["maps"]["effect"] == [[None, 1.0]] and v2.data["col_name"] == "position"


@pytest.mark.parametrize(
    "effects, kwargs, exc, name",
    [
        (np.zeros(4), {}, ValueError, "effects"),
        ({}, {}, ValueError, "effects"),
        ({"a": np.zeros((2, 2)), "b": np.zeros((2, 3))}, {}, ValueError, "effects"),
        (np.zeros(5), dict(sites=iv.head_sites(2, 2)), ValueError, "effects"),
        (np.zeros((2, 2)), dict(names=("layer",)), ValueError, "names"),
        (np.zeros((2, 2)), dict(labels={"pos": ["a"]}), ValueError, "labels"),
        (np.zeros((2, 2)), dict(labels={"head": ["a"]}), ValueError, "labels"),
        (np.zeros((2, 2)), dict(limit=-1.0), ValueError, "limit"),
    ],
)
def test_patching_view_bad_inputs(effects, kwargs, exc, name):
    with pytest.raises(exc, match=f"^{name}"):
        viz.patching_view(effects, **kwargs)


def test_probe_view_and_errors():
    acc = np.array([[0.9, 0.5], [0.95, 0.8]])
    ctrl = np.array([[0.2, 0.1], [0.3, 0.1]])
    d = viz.probe_view(acc, control=ctrl, task_names=["x", "y"], chance=[0.1, 0.1]).data
    np.testing.assert_allclose(d["selectivity"], acc - ctrl)
    assert d["layer_names"] == ["0", "1"] and d["chance"] == [0.1, 0.1]
    for kwargs, name in [
        (dict(control=np.zeros((2, 3))), "control"),
        (dict(chance=[0.1]), "chance"),
        (dict(layer_names=["a"]), "layer_names"),
        (dict(task_names=["a", "b", "c"]), "task_names"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}"):
            viz.probe_view(acc, **kwargs)
    with pytest.raises(ValueError, match="^accuracy"):
        viz.probe_view(np.zeros(3))


def test_save_repr_html_and_index(tmp_path):
    v = viz.probe_view(np.array([[0.5]]), title="P <1>")
    path = v.save(tmp_path / "sub" / "p.html")
    assert path.read_text(encoding="utf-8") == v.to_html()
    frame = v._repr_html_()
    src = re.search(r'srcdoc="([^"]*)"', frame).group(1)
    assert html.unescape(src) == v.to_html()  # the whole page, attribute-escaped
    assert 'sandbox="allow-scripts"' in frame
    with pytest.raises(TypeError, match="^path"):
        v.save(3)
    page = viz.index_page([("a b.html", "A <x>", "d & e")])
    assert '<a href="a b.html">A &lt;x&gt;</a>' in page and "d &amp; e" in page


def test_treescope_named_array(tmp_path):
    w = _weights(3, (2, 2, 4, 4))
    view = viz.attention_view(w, ["a", "b", "c", "<d>"])
    arr = view.treescope()
    assert arr.names == ("layer", "head", "q", "k")
    assert arr.labels == {"q": ["a", "b", "c", "<d>"], "k": ["a", "b", "c", "<d>"]}
    np.testing.assert_array_equal(arr.values, w)
    assert type(arr.figure()).__name__ == "TreescopeFigure"
    assert arr.figure(sliders=["layer"]) is not None
    assert len(arr._repr_html_()) > 1000
    page = arr.save(tmp_path / "t.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>layer=2, head=2, q=4, k=4</title>" in page
    assert "http://" not in page and "https://" not in page
    titled = viz.named_array(w, arr.names, title="A <b>").to_html()
    assert "<title>A &lt;b&gt;</title>" in titled
    for values, names, labels, exc, name in [
        (np.ones((2, 2)), ("a",), None, ValueError, "names"),
        (np.ones((2, 2)), ("a", "a"), None, ValueError, "names"),
        (np.ones((2, 2)), "ab", None, TypeError, "names"),
        (np.array(["x"]), ("a",), None, TypeError, "values"),
        (np.ones((2, 2)), ("a", "b"), {"c": ["x"]}, ValueError, "labels"),
        (np.ones((2, 2)), ("a", "b"), {"a": ["x"]}, ValueError, "labels"),
    ]:
        with pytest.raises(exc, match=f"^{name}"):
            viz.named_array(values, names, labels=labels)


def test_lazy_export():
    import jaxinterp

    assert jaxinterp.viz is viz
    assert "viz" in jaxinterp.__all__
