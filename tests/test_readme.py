"""The README's Python examples run, in order, in one namespace (they share their imports).

After each block, the numbers and shapes its comments state are checked, against an
independent reference where there is one (the model's own outputs, a plain numpy top-k, the
known mechanism of the offset task, sentence-transformers' cosine).
"""

from __future__ import annotations

import re
from pathlib import Path

import jax
import numpy as np
from _traces import traced_names

README = Path(__file__).resolve().parents[1] / "README.md"


def _check_capture(ns):  # block 0
    assert {p: a.shape for p, a in ns["acts"].items()} == {
        "block_0": (8, 16, 64),
        "block_1": (8, 16, 64),
    }
    tf, tokens = ns["tf"], ns["tokens"]
    # capturing does not change the output: the plain forward pass gives the same logits
    ref = tf.model.apply(tf.variables, tokens)
    np.testing.assert_allclose(ns["logits"], ref, rtol=1e-5, atol=1e-5)


def _check_actmax(ns):  # block 1
    res, top, cnn = ns["res"], ns["top"], ns["cnn"]
    assert res.inputs.shape == (64, 1, 8, 8, 1) and res.traces.shape == (64, 256)
    assert np.isfinite(np.asarray(res.traces)).all()
    # top-k of every unit over the training digits: a plain numpy sort of the activations
    from jaxinterp.capture import capture

    x = ns["models"].load_digits().train.x
    acts = np.asarray(capture(cnn.model, cnn.variables, select="act_2")(x)[1]["act_2"])
    ref = -np.sort(-acts, axis=0)[:8].T  # [unit, k], descending
    assert top.values.shape == top.indices.shape == (64, 8)
    np.testing.assert_allclose(top.values, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.take_along_axis(acts.T, np.asarray(top.indices), 1), ref)


def _check_attention(ns):  # block 2
    score = np.asarray(ns["attention"].offset_score(ns["w"], 3).mean(1))  # [layer, head]
    assert score.shape == (2, 4)
    # "layer-0 heads ≈ 0.9 at offset 3"; layer 1 does not attend 3 back
    assert score[0].min() > 0.85 and score[1].max() < 0.2
    e = ns["e"]
    assert e.shape == (2, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)  # unit embeddings
    assert abs(float(e[0] @ e[1]) - 0.755) < 1e-3  # sentence-transformers' value


def _check_probes(ns):  # block 3
    acc = np.asarray(ns["probes"].evaluate(ns["probe"], ns["feats"][:, 3000:],
                                           ns["labels"][:, 3000:])["accuracy"])  # fmt: skip
    assert acc.shape == (3, 2)  # [layer: embed, block_0, block_1; task: current, 3 back]
    assert acc[:, 0].min() > 0.95  # the current token stays readable in every layer
    # the embedding of the last token says nothing about the token 3 back (iid uniform over 16
    # tokens: chance 1/16, 1000 test sequences, sd 0.008); attention copies it in layer 0
    assert acc[0, 1] < 0.15
    assert acc[1:, 1].min() > 0.95


def _check_interventions(ns):  # block 4
    restored = np.asarray(ns["sites"].unflatten(ns["res"].normalized))
    assert restored.shape == (2, 4)
    # the layer-0 heads carry the answer, the layer-1 heads do not
    assert restored[0].min() > restored[1].max()
    assert float(ns["iv"].spearman(ns["res"].normalized, ns["est"].normalized)) > 0.8
    # the ablation in the last line: head 2 of layer 0 zeroed changes the output
    task, tf = ns["task"], ns["tf"]
    clean = tf.model.apply(tf.variables, task.clean)
    ablated = ns["ablated"](task.clean)
    assert ablated.shape == clean.shape
    assert float(task.metric(ablated)) < float(task.metric(clean))
    # per-example values: [site, batch]; the standard error is numpy's, of the paired effect
    res = ns["res"]
    assert res.per_example.shape == (8, 64)
    d = np.asarray(res.per_example, np.float64) - np.asarray(res.corrupted_per_example)[None]
    se = d.std(1, ddof=1) / np.sqrt(64) / abs(float(res.clean) - float(res.corrupted))
    np.testing.assert_allclose(res.normalized_se, se, rtol=1e-3)
    assert restored[0].min() > 2 * float(np.max(res.normalized_se[:4]))  # clear of the noise
    # the globbed residual sites are the exact ones
    iv = ns["iv"]
    exact = ["block_0:input", "block_1:input", "block_0/ln_2:input", "block_1/ln_2:input"]
    assert sorted(ns["resid"]) == sorted(exact)
    _, ref = iv.capture_sites(tf.model, tf.variables, exact)(task.clean)
    for k in exact:
        np.testing.assert_allclose(ns["resid"][k], ref[k], rtol=1e-6)
    # "compiles once per batch shape and reuses the program for new data of that shape"
    # Counted by jax's own trace events: the jit object's C++ dispatch-cache size read 0 in one
    # CI run (2 here, cold or warm persistent cache), so it is no measure of compilation.
    sweep, traced = ns["sweep"], []
    for seed, batch in [(1, 64), (2, 32), (3, 32)]:
        task = iv.offset_patching_task(jax.random.key(seed), batch, tf.model.cfg)
        if "<lambda>" in traced_names(lambda task=task: sweep(tf.variables, task)):
            traced.append(seed)
    # the README block already ran it on 64 prompts: only the first batch of 32 (seed 2) traces it
    assert traced == [2], traced


def _check_smollm2(ns):  # block 5
    toks, maps = np.asarray(ns["toks"]), ns["maps"]
    scores = np.asarray(ns["scores"])
    assert scores.shape == (30, 9)
    # numpy: attention from each second-copy token to the key after its first occurrence
    w = np.stack([np.asarray(maps[f"blocks_{i}/attn/probs"]) for i in range(30)])
    half = (toks.shape[1] - 1) // 2
    q = np.arange(1 + half, 1 + 2 * half)
    ref = w[:, :, :, q, q - half + 1].mean(axis=(1, 3))  # random tokens: repeats are rare
    np.testing.assert_allclose(scores, ref, atol=0.02)
    assert scores.max() > 0.8 and 17 <= int(scores.argmax()) // 9 <= 18
    effects = np.asarray(ns["sites"].unflatten(ns["res"].normalized))
    assert effects.shape == (30, 9)
    assert np.unravel_index(effects.argmax(), effects.shape)[0] == 23  # the strongest IOI head


def _check_policy(ns):  # block 6
    diff_at = ns["diff_at"]
    assert np.isnan(float(jax.jit(diff_at)(20)))  # out of range under jit: NaN, never wrapped
    assert float(jax.jit(diff_at)(4)) == 0.0  # in range: the (zero) logit difference
    assert ns["message"] == "position: expected indices in [-16, 16), got 20"
    try:
        diff_at(20)  # eager: the same message at once
    except ValueError as e:
        assert str(e) == ns["message"]
    else:
        raise AssertionError("an out-of-range position must raise eagerly")


def _check_sharding(ns):  # block 7
    ref_logits, ref_acts = jax.jit(ns["f"])(ns["tf"].variables, ns["tokens"])
    np.testing.assert_allclose(ns["logits"], ref_logits, rtol=1e-5, atol=1e-5)
    for k in ref_acts:
        np.testing.assert_allclose(ns["acts"][k], ref_acts[k], rtol=1e-5, atol=1e-5)


CHECKS = [
    _check_capture,
    _check_actmax,
    _check_attention,
    _check_probes,
    _check_interventions,
    _check_smollm2,
    _check_policy,
    _check_sharding,
]


def test_readme_examples_run_and_state_true_numbers():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == len(CHECKS), "a README example was added or removed: check it here"
    namespace: dict = {}
    for i, (block, check) in enumerate(zip(blocks, CHECKS)):
        exec(compile(block, f"{README}:block {i}", "exec"), namespace)
        check(namespace)
