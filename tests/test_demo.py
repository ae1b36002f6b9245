"""``jaxinterp demo --quick``: every section is reported, and its numbers match references.

The demo runs once per module, as the command does: a subprocess with the same interpreter
and ``XLA_FLAGS``, and the command's default persistent compilation cache (next to the
trained models, keyed by program, jax version and ``XLA_FLAGS``), so a second run of the
suite loads the demo's compiled programs instead of compiling them again. Each test
then checks one section of ``report.json`` against a reference computed here independently:
the models' own outputs with numpy, scikit-learn, or the known mechanism of the offset task.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxinterp
from jaxinterp import interventions as iv
from jaxinterp import models
from jaxinterp._cli import use_compile_cache
from jaxinterp._demo import SECTIONS
from jaxinterp.attention import attention_weights, stack_layers
from jaxinterp.capture import capture

# The figures each section promises (names without .png), in report order.
FIGURES = {
    "models": ["capture_cnn_act0"],
    "attention": [
        "attention_toy_offset_scores",
        "attention_toy_grid",
        "attention_minilm_grid",
        "attention_minilm_rollout",
        "attention_minilm_prev_token",
        "attention_minilm_to_sep",
    ],
    "actmax": ["actmax_logits", "actmax_units", "actmax_traces", "actmax_topk"],
    "interventions": ["patching_layer_head", "patching_layer_position", "attribution_vs_patching"],
    "probes": ["probes_cnn", "probes_transformer"],
    "features": [],
    "circuits": ["lens_curves", "lens_grid", "induction_phase_change"],
    "smollm2": [
        "smollm2_induction_scores",
        "smollm2_ioi_heads",
        "smollm2_ioi_attribution",
        "smollm2_ioi_residual",
    ],
}
# The interactive pages each section writes (jaxinterp.viz), linked from index.html in order.
VIEWS = {
    "models": [],
    "attention": ["view_attention_toy", "view_attention_minilm", "treescope_attention_minilm"],
    "actmax": ["view_gallery_logits", "view_gallery_units", "view_gallery_soft_prompts"],
    "interventions": [
        "view_patching_heads",
        "view_patching_head_position",
        "view_patching_residual",
    ],
    "probes": ["view_probes_cnn", "view_probes_transformer"],
    "features": ["view_features_toy"],
    "circuits": [],
    "smollm2": ["view_smollm2_ioi", "view_attention_smollm2"],
}
HEADINGS = {
    "models": "## Reference models",
    "attention": "## Attention",
    "actmax": "## Activation maximization",
    "interventions": "## Causal interventions",
    "probes": "## Linear probes",
    "features": "## Sparse dictionaries (features)",
    "circuits": "## Lenses and checkpoints",
    "smollm2": "## A real model: SmolLM2",
}


class Demo:
    def __init__(self, out: Path, cache: Path, proc: subprocess.CompletedProcess):
        self.out, self.cache, self.proc = out, cache, proc
        self.report = (out / "report.md").read_text()
        self.results = json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Demo:
    out = tmp_path_factory.mktemp("demo")
    cache = models.cache_dir() / "xla"
    root = str(Path(jaxinterp.__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "jaxinterp._cli", "demo", "--quick"]
    proc = subprocess.run(
        [*cmd, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=3000,  # generous: a loaded 2-core machine runs the eight sections for minutes
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Demo(out, cache, proc)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path.name
    return struct.unpack(">II", data[16:24])


def test_every_section_reports_its_text_numbers_and_figures(demo):
    assert list(demo.results) == list(SECTIONS)
    positions = [demo.report.index(HEADINGS[s]) for s in SECTIONS]
    assert positions == sorted(positions)  # in SECTIONS order
    assert "skipped" not in demo.report  # MiniLM is installed for the tests: nothing skipped
    expected = [f"{name}.png" for s in SECTIONS for name in FIGURES[s]]
    assert sorted(p.name for p in demo.out.glob("*.png")) == sorted(expected)
    linked = [line.split("](")[1].rstrip(")") for line in demo.report.splitlines() if "](" in line]
    assert linked == expected
    for name in expected:
        w, h = _png_size(demo.out / name)
        assert w >= 100 and h >= 100, (name, w, h)
    assert "quick mode: True" in demo.report
    # the progress lines name every section, and the compilation cache was written
    for s in SECTIONS:
        assert HEADINGS[s][3:] in demo.proc.stderr
    assert any(demo.cache.iterdir())


def test_models_section_matches_the_models(demo, mlp, cnn, offset_tf, digits):
    got = demo.results["models"]
    for name, trained in (("mlp", mlp), ("cnn", cnn)):
        pred = np.asarray(trained.model.apply(trained.variables, digits.test.x)).argmax(-1)
        # stored when the model was trained, maybe for another CPU target (XLA_FLAGS): one
        # near-tie digit of 450 may flip
        assert got[name]["test_accuracy"] == pytest.approx(
            (pred == digits.test.y).mean(), abs=1.5 / 450
        )
        assert got[name]["test_accuracy"] > 0.95
    cfg = offset_tf.model.cfg
    b = models.offset_batch(jax.random.key(10_000), 512, cfg.seq_len, cfg.vocab, 3)
    pred = np.asarray(offset_tf.model.apply(offset_tf.variables, b.tokens)).argmax(-1)
    mask = np.asarray(b.loss_mask)
    acc = (pred == np.asarray(b.targets))[mask].mean()
    assert got["transformer"] == {"task_accuracy": pytest.approx(acc), "offset": 3}
    assert acc == 1.0  # the task is deterministic given the tokens: the model solves it


def _offset_mass(model, variables, tokens, offset):
    """numpy: mean attention weight on key q - offset over queries q >= offset: [layer, head]."""
    _, maps = jax.jit(attention_weights(model, variables))(tokens)
    w = np.asarray(stack_layers(maps), np.float64)  # [layer, batch, head, q, k]
    q = np.arange(offset, w.shape[-2])
    return w[..., q, q - offset].mean(axis=(1, 3))


def test_attention_section(demo, offset_tf):
    got = demo.results["attention"]
    n = got["toy_sequences"]
    tokens = np.asarray(models.offset_batch(jax.random.key(0), n, 16, 16, 3).tokens)
    mass = _offset_mass(offset_tf.model, offset_tf.variables, tokens, 3)
    layer, head = np.unravel_index(mass.argmax(), mass.shape)
    assert got["toy_offset_head"] == [layer, head]
    # streamed float32 means of n * 13 values in [0, 1] vs a float64 mean: 1e-5 is ~100 ulps
    assert got["toy_offset_mass"] == pytest.approx(mass[layer, head], abs=1e-5)
    assert got["toy_offset_mass"] > 0.9  # the offset-3 head the task is solved by
    # sentence-transformers' all-MiniLM-L6-v2 gives 0.755 for the same two sentences
    assert got["minilm_cosine"] == pytest.approx(0.755, abs=1e-3)
    for key in ("to_sep", "to_cls", "prev_token"):  # fractions of attention mass
        assert 0.0 < got[f"minilm_max_{key}"] <= 1.0 + 1e-6
    # the strongest previous-token head of MiniLM attends one back almost exclusively
    assert got["minilm_max_prev_token"] > 0.9
    # entropy of a distribution over at most 14 tokens (the longest sentence)
    assert 0.0 < got["minilm_max_entropy"] <= np.log(14) + 1e-5
    assert 1.0 <= got["minilm_max_distance"] < 14


def test_actmax_section(demo, cnn, digits):
    got = demo.results["actmax"]
    data = np.concatenate([digits.train.x, digits.test.x])
    logits = np.asarray(cnn.model.apply(cnn.variables, data))  # [1797, 10]
    # the best dataset logit per class: top-k over the whole dataset equals a plain max
    np.testing.assert_allclose(got["logit_dataset_max"], logits.max(0), rtol=1e-5)
    vals, best = np.asarray(got["logit_values"]), np.asarray(got["logit_dataset_max"])
    assert vals.shape == (10,) and np.isfinite(vals).all()
    beats = vals > best
    assert got["logits_fraction_exceeding_dataset_max"] == pytest.approx(beats.mean())
    assert got["logits_median_ratio_to_dataset_max"] == pytest.approx(np.median(vals / best))
    assert beats.mean() >= 0.8  # optimized inputs beat the best real digit for most classes
    # all 64 dense units are optimized; "active" counts those positive on some digit, which a
    # plain forward pass over the whole dataset gives independently
    hidden = capture(cnn.model, cnn.variables, select="act_2")(data)[1]["act_2"]
    assert got["act_2_targets"] == 64
    assert got["act_2_active_targets"] == int((np.asarray(hidden).max(0) > 0).sum())
    assert 1 <= got["act_1_channels_active_targets"] <= got["act_1_channels_targets"]
    for name in ("act_2", "act_1_channels"):
        assert got[f"{name}_fraction_exceeding_dataset_max"] >= 0.5
    # soft prompts: the token 3 back is the one the model copies, so it recovers the target
    assert got["soft_prompt_offset_recovery"] >= 0.9


def test_interventions_section(demo, offset_tf):
    got = demo.results["interventions"]
    model, variables, cfg = offset_tf.model, offset_tf.variables, offset_tf.model.cfg
    task = iv.offset_patching_task(jax.random.key(0), got["pairs"], cfg, 3)
    rows = np.arange(got["pairs"])
    pos, answer, wrong = (np.asarray(a) for a in (task.position, task.answer, task.wrong))

    def metric(logits):  # numpy logit difference at the read-out positions, batch mean
        logits = np.asarray(logits, np.float64)
        return (logits[rows, pos, answer] - logits[rows, pos, wrong]).mean()

    clean = metric(model.apply(variables, task.clean))
    corrupted = metric(model.apply(variables, task.corrupted))
    assert got["clean_logit_diff"] == pytest.approx(clean, rel=1e-5)
    assert got["corrupted_logit_diff"] == pytest.approx(corrupted, rel=1e-5)
    assert clean > 5 and corrupted < -5  # the model reads the token 3 back

    # one head patched by hand (its output at every position, clean -> corrupted run)
    attn = np.asarray(got["offset_attention"])
    effects = np.asarray(got["head_effects"])
    assert attn.shape == effects.shape == (cfg.n_layers, cfg.n_heads)
    toks = np.asarray(task.clean)
    np.testing.assert_allclose(attn, _offset_mass(model, variables, toks, 3), atol=1e-5)
    heads = iv.head_sites(cfg.n_layers, cfg.n_heads)
    for li, hi in [np.unravel_index(effects.argmax(), effects.shape), (1, 0)]:
        path = heads.paths[li]
        _, acts = iv.capture_sites(model, variables, [path])(task.clean)
        edit = iv.replace(acts[path], at={-2: int(hi)})
        patched = metric(iv.intervene(model, variables, {path: edit})(task.corrupted))
        effect = (patched - corrupted) / (clean - corrupted)
        assert effects[li, hi] == pytest.approx(effect, abs=1e-4)

    # the mechanism: offset-3 heads carry the answer, the other heads do not
    mech = attn > 0.5
    assert mech.any() and not mech.all()
    assert got["max_unrelated_head_effect"] == pytest.approx(np.abs(effects[~mech]).max())
    assert effects[mech].min() > got["max_unrelated_head_effect"]
    assert got["mechanism_heads_joint_restoration"] > 0.9
    acc = got["ablation_accuracy"]
    evalb = models.offset_batch(jax.random.key(3), got["pairs"], cfg.seq_len, cfg.vocab, 3)
    pred = np.asarray(model.apply(variables, evalb.tokens)).argmax(-1)
    mask = np.asarray(evalb.loss_mask)
    assert acc["none"] == pytest.approx((pred == np.asarray(evalb.targets))[mask].mean())
    for name in ("zero", "mean", "resample"):  # removing the mechanism: about chance (1/16)
        assert acc[name] < 0.25, (name, acc[name])
    # attribution patching ranks the sites like real patching
    assert -1.0 <= got["spearman_layer_head_position"] <= 1.0
    assert got["spearman_layer_head"] > 0.8 and got["spearman_layer_head_position"] > 0.8


def test_probes_section(demo, cnn, digits):
    from sklearn.linear_model import LogisticRegression

    got = demo.results["probes"]
    ntr = got["cnn_train_images"]
    acc, ctrl = np.asarray(got["cnn_accuracy"]), np.asarray(got["cnn_control_accuracy"])
    assert acc.shape == ctrl.shape == (3,)
    # scikit-learn, same objective (C=0.01) on the dense layer's activations (act_2)
    from jaxinterp.capture import capture

    f = capture(cnn.model, cnn.variables, select="act_2")
    xtr = np.asarray(f(digits.train.x[:ntr])[1]["act_2"]).reshape(ntr, -1)
    xte = np.asarray(f(digits.test.x)[1]["act_2"]).reshape(len(digits.test.x), -1)
    sk = LogisticRegression(C=0.01, tol=1e-8, max_iter=10_000).fit(xtr, digits.train.y[:ntr])
    sk_acc = (sk.predict(xte) == digits.test.y).mean()
    # both stop near the same optimum of a strictly convex objective: predictions can differ
    # only for test digits whose top two logits nearly tie, a few of 450 at most
    assert acc[2] == pytest.approx(sk_acc, abs=4 / 450)
    assert acc.min() > 0.9
    # control labels are random digits drawn independently of the image: held-out accuracy
    # is binomial around ~0.1 (450 digits: sd 0.014); 0.2 is > 6 sd away
    assert (ctrl < 0.2).all()

    cur = np.asarray(got["transformer_current_accuracy"])
    back = np.asarray(got["transformer_back_accuracy"])
    sel = np.asarray(got["transformer_selectivity"])
    assert cur.shape == back.shape == (3,) and sel.shape == (3, 2)
    assert cur[0] == 1.0  # the embedding of distinct tokens is linearly separable
    assert back[0] < 0.2  # t-3 is iid of the token at t: chance is 1/16
    assert back[1:].min() > 0.95  # after attention copied it, the t-3 token is readable
    assert sel[2, 1] > sel[0, 1]  # and selective only there


def _view_data(demo: Demo, name: str) -> dict:
    page = (demo.out / f"{name}.html").read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="jx-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_smollm2_section(demo, smollm2):
    """The real model's numbers: induction scores against numpy on the same tokens, the IOI
    prompts' clean logit difference against a plain forward, the chat answer, the logit lens."""
    got = demo.results["smollm2"]
    assert "Paris" in got["generation"]
    ind = np.asarray(got["induction_scores"])  # [layer, head]
    assert ind.shape == (30, 9) and ind.max() > 0.5 and np.median(ind) < 0.05
    assert got["loss_repeated_copy"] < got["loss_first_copy"] - 6
    rises = got["ablation_loss_rise"]
    assert rises[0] > 1.0 and rises[0] > 3 * max(rises[1:])
    task = iv.ioi_task(jax.random.key(1), smollm2.tokenizer, len(got["ioi_prompts"]))
    assert list(task.prompts) == got["ioi_prompts"]
    logits = np.asarray(jax.jit(smollm2.model.apply)(smollm2.variables, task.task.clean))
    rows = np.arange(len(task.prompts))
    ld = logits[rows, -1, task.task.answer] - logits[rows, -1, task.task.wrong]
    assert got["ioi_clean_logit_diff"] == pytest.approx(ld.mean(), rel=1e-4)
    assert got["ioi_spearman"] > 0.8
    agree = got["logit_lens_agreement"]
    assert agree[-1] == 1.0 and max(agree[:10]) < 0.2
    assert got["logit_lens_kl"][-1] < 1e-3


def test_index_links_every_view(demo):
    expected = [f"{n}.html" for s in SECTIONS for n in VIEWS[s]]
    index = (demo.out / "index.html").read_text(encoding="utf-8")
    assert re.findall(r'href="([^"]+)"', index) == expected + ["report.md", "report.json"]
    assert sorted(p.name for p in demo.out.glob("*.html")) == sorted(expected + ["index.html"])
    assert f"interactive views: {len(expected)} pages" in demo.proc.stderr


def test_views_hold_the_numbers_of_the_models(demo, offset_tf):
    got = demo.results
    close = dict(rtol=5e-6, atol=1e-7)  # the pages store 6 significant digits
    # patching: the head map is the reported sweep; attribution sits next to it
    heads = _view_data(demo, "view_patching_heads")
    np.testing.assert_allclose(
        heads["maps"]["activation patching"], got["interventions"]["head_effects"], **close
    )
    assert heads["names"] == ["layer", "head"] and heads["paths"][0].startswith("block_0")
    hp = _view_data(demo, "view_patching_head_position")
    assert hp["names"] == ["layer", "head", "position"] and len(hp["row_labels"]) == 8
    # probes: accuracy and control by layer, as reported
    cnn = np.asarray(_view_data(demo, "view_probes_cnn")["accuracy"])
    np.testing.assert_allclose(cnn[:, 0], got["probes"]["cnn_accuracy"], **close)
    tr = _view_data(demo, "view_probes_transformer")
    np.testing.assert_allclose(
        np.asarray(tr["accuracy"])[:, 1], got["probes"]["transformer_back_accuracy"], **close
    )
    np.testing.assert_allclose(tr["selectivity"], got["probes"]["transformer_selectivity"], **close)
    # gallery: optimized logit and best digit per class
    items = _view_data(demo, "view_gallery_logits")["items"]
    assert len(items) == 10 and all(len(it["examples"]) == 8 for it in items)
    np.testing.assert_allclose([it["value"] for it in items], got["actmax"]["logit_values"], 1e-5)
    np.testing.assert_allclose(
        [it["examples"][0]["value"] for it in items], got["actmax"]["logit_dataset_max"], 1e-5
    )
    soft = _view_data(demo, "view_gallery_soft_prompts")["items"]
    assert len(soft) == 16 and all(len(it["optimized"]["tokens"]) == 16 for it in soft)
    hit = np.mean([it["optimized"]["tokens"][-4] == str(t) for t, it in enumerate(soft)])
    assert hit == pytest.approx(got["actmax"]["soft_prompt_offset_recovery"])
    # the toy attention explorer: the model's weights on the first demo sequence, and the
    # offset-3 scores of that sequence computed with numpy
    toks = np.asarray(models.offset_batch(jax.random.key(0), 1, 16, 16, 3).tokens)
    view = _view_data(demo, "view_attention_toy")
    assert view["tokens"] == [str(t) for t in toks[0]]
    _, maps = jax.jit(attention_weights(offset_tf.model, offset_tf.variables))(toks)
    w = np.asarray(stack_layers(maps)[:, 0], np.float64)
    np.testing.assert_allclose(view["weights"], w, **close)
    np.testing.assert_allclose(
        view["scores"]["offset_3"],
        _offset_mass(offset_tf.model, offset_tf.variables, toks, 3),
        **close,
    )
    off = np.asarray(view["scores"]["offset_3"])
    assert view["selected"] == list(np.unravel_index(off.argmax(), off.shape))
    minilm = _view_data(demo, "view_attention_minilm")
    assert minilm["tokens"][0] == "[CLS]" and minilm["tokens"][-1] == "[SEP]"
    assert np.asarray(minilm["weights"]).shape == (6, 12, 13, 13)
    np.testing.assert_allclose(np.asarray(minilm["weights"]).sum(-1), 1.0, atol=1e-4)
    assert np.max(minilm["scores"]["prev_token"]) > 0.9  # MiniLM has a previous-token head


def test_views_open_in_a_browser(demo):
    """Every page linked from index.html opens in Chromium without errors or requests."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _browser_unavailable("playwright is not installed (pip install 'jaxinterp[browser]')")
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        _browser_unavailable("chromium is not installed (apt-get install chromium)")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    args += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=args)
        page = browser.new_page()
        errors, requests = [], []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        index = (demo.out / "index.html").resolve().as_uri()
        page.goto(index)
        links = page.eval_on_selector_all("li a", "es => es.map(e => e.href)")
        views = [u for u in links if u.endswith(".html")]
        assert len(views) == sum(len(v) for v in VIEWS.values())
        for url in views:
            page.goto(url)
            page.wait_for_load_state("load")
            if "/view_attention" in url:  # hovering a token must work on the real pages
                page.hover("#jx-tokens .jx-tok[data-index='1']")
                assert page.locator("#jx-tokens .jx-query").get_attribute("data-index") == "1"
            if "/treescope" in url:  # the figure draws itself (not the figure's repr)
                page.wait_for_selector("canvas", timeout=20_000)
                assert "TreescopeFigure" not in page.inner_text("body")
            assert errors == [], url
        browser.close()
    assert all(u.startswith("file://") for u in requests), requests


def _browser_unavailable(why: str) -> None:
    if os.environ.get("JAXINTERP_REQUIRE_BROWSER") == "1":
        pytest.fail(f"browser tests required (JAXINTERP_REQUIRE_BROWSER=1) but {why}")
    pytest.skip(why)


def test_compile_cache_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path))
    assert use_compile_cache(tmp_path / "x") is None  # the user's own setting wins
    assert use_compile_cache(None) is None


def test_circuits_section(demo):
    got = demo.results["circuits"]
    logit, tuned = np.array(got["lens_kl_logit"]), np.array(got["lens_kl_tuned"])
    assert np.all(tuned[:-1] < logit[:-1]) and abs(logit[-1]) < 1e-4
    assert got["induction_checkpoints"] == 20
    assert abs(got["induction_phase_step_loss"] - got["induction_phase_step_score"]) <= 20
    assert got["icl_loss_first_last"][1] < 0.5 < 3.0 < got["icl_loss_first_last"][0]
    assert got["induction_first_last"][1] > 0.6 > 0.2 > got["induction_first_last"][0]


def test_features_section_trains_every_site_and_setting(demo):
    got = demo.results["features"]
    n = len(got["sites"]) * len(got["settings"])
    assert len(got["l0"]) == len(got["fvu"]) == len(got["recovered"]) == n
    # TopK keeps at most k = 8 latents; reconstructions explain most of the variance and
    # recover most of the loss lost by zero-ablating the residual stream
    names = [s for _ in got["sites"] for s in got["settings"]]
    assert all(l0 <= 8 for l0, s in zip(got["l0"], names) if s.startswith("topk"))
    assert max(got["fvu"]) < 0.5 and min(got["recovered"]) > 0.5
    assert got["clean_ce"] < min(got["zero_ce"].values())
