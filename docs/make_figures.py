"""Makes the figures of the documentation's capability pages (run by ``docs/conf.py``).

    python docs/make_figures.py --out docs/_figures            # every figure
    python docs/make_figures.py --out docs/_figures attention  # only some groups

Every figure is computed here, at build time, from the library's reference models (the digits
CNN and the offset-3 transformer, trained in seconds and cached in ``$JAXINTERP_CACHE``) with
the library's own analysis and plotting functions: the pictures in the docs are what the code
does today, not committed images. Sizes are small so the whole script takes well under a
minute on 2 CPU cores once the models are cached. Nothing is downloaded. Compiled programs go
to the persistent XLA cache that ``jaxinterp demo`` and the tests use
(``$JAXINTERP_CACHE/xla``; ``JAXINTERP_DOCS_COMPILE_CACHE=0`` turns it off).

Each group writes ``NAME.png`` files; the names are the ones the pages under ``docs/`` use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's jaxinterp

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402
import numpy as np  # noqa: E402

from jaxinterp import actmax, attention, models, probes  # noqa: E402
from jaxinterp import interventions as iv  # noqa: E402
from jaxinterp.capture import capture  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxinterp import plotting  # noqa: E402
from jaxinterp._cli import use_compile_cache  # noqa: E402

DPI = 100


def _save(out: Path, name: str, fig) -> None:
    fig.savefig(out / f"{name}.png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    print(f"  wrote {name}.png", flush=True)


def capture_figures(out: Path) -> None:
    """The first conv layer's feature maps of the digits CNN for one digit, via ``capture``."""
    cnn = models.digits_cnn()
    x = jnp.asarray(models.load_digits().test.x[:1])  # [1, 8, 8, 1]
    _, acts = jax.jit(lambda v, x: capture(cnn.model, v, select="act_0")(x))(cnn.variables, x)
    maps = np.moveaxis(np.asarray(acts["act_0"][0]), -1, 0)  # [channel, 8, 8]
    fig = plotting.image_grid(
        np.concatenate([np.asarray(x[:, :, :, 0]), maps]),
        ["input"] + [f"act_0 ch {c}" for c in range(maps.shape[0])],
        ncols=9,
        cmap="viridis",
    )
    _save(out, "capture_cnn_act0", fig)


def actmax_figures(out: Path) -> None:
    """Inputs maximizing the CNN's 10 class logits, their traces, and top-k dataset examples."""
    cnn = models.digits_cnn()
    steps = 128
    kw = dict(
        param=actmax.fourier((8, 8, 1)),
        steps=steps,
        redirect_relu=steps // 4,
        transforms=(actmax.pad(1), actmax.jitter(2)),
        regularizers=(1e-3 * actmax.total_variation(),),
    )
    data = models.load_digits()
    pool = np.concatenate([data.train.x, data.test.x])

    logit = lambda c: actmax.class_logit(c)  # noqa: E731
    res = actmax.maximize(jax.random.key(0), cnn.model, cnn.variables, logit, jnp.arange(10), **kw)
    top = actmax.top_k_examples(cnn.model, cnn.variables, logit, jnp.arange(10), pool, k=1)
    vals, best = np.asarray(res.values), np.asarray(top.values[:, 0])
    fig = plotting.image_grid(
        np.asarray(res.inputs[:, 0, ..., 0]),
        [f"logit {c}\n{v:.1f} (data {b:.1f})" for c, (v, b) in enumerate(zip(vals, best))],
        ncols=10,
        size=1.3,
    )
    _save(out, "actmax_logits", fig)
    few = np.array([0, 1, 4, 7])
    fig = plotting.actmax_traces(
        np.asarray(res.traces[few]),
        [f"logit {c}" for c in few],
        dataset_best=best[few],
        smooth=8,
        title="class logits during the ascent",
    )
    _save(out, "actmax_traces", fig)

    # hidden units of the dense layer: the optimized input next to its top-8 dataset examples
    unit = lambda u: actmax.neuron("act_2", u)  # noqa: E731
    units = jnp.arange(16)
    hid = actmax.maximize(jax.random.key(1), cnn.model, cnn.variables, unit, units, **kw)
    topu = actmax.top_k_examples(cnn.model, cnn.variables, unit, units, pool, k=8)
    alive = np.flatnonzero(np.asarray(topu.values[:, 0]) > 0)[:4]
    rows, titles = [], []
    for u in alive:
        rows.append(np.asarray(hid.inputs[u, 0, ..., 0])[None])
        rows.append(pool[np.asarray(topu.indices[u]), ..., 0])
        titles.append(f"#{int(u)} opt {float(hid.values[u]):.1f}")
        titles += [f"{v:.1f}" for v in np.asarray(topu.values[u])]
    fig = plotting.image_grid(np.concatenate(rows), titles, ncols=9, size=1.2)
    _save(out, "actmax_topk", fig)


def attention_figures(out: Path) -> None:
    """Attention maps of the offset-3 transformer: one sequence, per-head scores, rollout."""
    tf = models.offset_transformer()
    k = int(tf.metrics["offset"])
    cfg = tf.model.cfg
    data = np.asarray(models.offset_batch(jax.random.key(0), 256, cfg.seq_len, cfg.vocab, k).tokens)

    def stat(w, tokens):
        return {"offset": attention.offset_score(w, k), "entropy": attention.head_entropy(w)}

    scores = attention.attention_stats(tf.model, tf.variables, stat, data, chunk_size=128)
    fig = plotting.head_score_map(
        np.asarray(scores["offset"]), title=f"mean attention mass at offset {k} (256 sequences)"
    )
    _save(out, "attention_offset_scores", fig)
    fig = plotting.head_score_map(
        np.asarray(scores["entropy"]), title="mean attention entropy (nats)", cmap="viridis"
    )
    _save(out, "attention_entropy", fig)

    toks = data[:1]
    _, maps = jax.jit(lambda v, x: attention.attention_weights(tf.model, v)(x))(tf.variables, toks)
    w = attention.stack_layers(maps)[:, 0]  # [layer, head, q, k]
    labels = [str(t) for t in toks[0]]
    fig = plotting.attention_grid(np.asarray(w), labels, suptitle="one sequence, layer × head")
    _save(out, "attention_grid", fig)
    fig = plotting.attention_heatmap(
        np.asarray(attention.rollout(w, layout="lhqk")),
        labels,
        title="attention rollout over both layers",
    )
    _save(out, "attention_rollout", fig)


def probe_figures(out: Path) -> None:
    """Token probes on the transformer's residual stream, with control tasks."""
    tf = models.offset_transformer()
    cfg, k = tf.model.cfg, int(tf.metrics["offset"])
    batch = 64
    tokens = models.offset_batch(jax.random.key(1), batch, cfg.seq_len, cfg.vocab, k).tokens
    paths = ["embed", "block_0", "block_1"]
    feats = probes.layer_features(tf.model, tf.variables, tokens, paths, pool="tokens")
    current = tokens.reshape(-1)
    back = jnp.roll(tokens, k, axis=1).reshape(-1)
    keep = np.asarray(jnp.tile(jnp.arange(cfg.seq_len) >= k, batch))  # t - k exists
    feats, current, back = feats[:, keep], current[keep], back[keep]
    tasks = jnp.stack([current, back])
    ctrl = probes.control_labels(jax.random.key(2), current, tasks, num_types=cfg.vocab)
    labels = jnp.concatenate([tasks, ctrl])
    tr, te = probes.train_val_test_split(jax.random.key(3), labels.shape[1], (0.7, 0.3))
    probe, _ = probes.fit_logistic(feats[:, tr], labels[:, tr], num_classes=cfg.vocab)
    acc = np.asarray(probes.evaluate(probe, feats[:, te], labels[:, te])["accuracy"])
    fig = plotting.probe_accuracy(
        acc[:, :2],
        layer_names=paths,
        task_names=["current token", f"token at t-{k}"],
        control=acc[:, 2:],
        chance=[1 / cfg.vocab] * 2,
        title="probe accuracy by layer, with control tasks",
    )
    _save(out, "probes_transformer", fig)


def intervention_figures(out: Path) -> None:
    """Patch sweeps over heads and positions, and attribution patching against them."""
    tf = models.offset_transformer()
    model, variables, cfg = tf.model, tf.variables, tf.model.cfg
    k = int(tf.metrics["offset"])
    task = iv.offset_patching_task(jax.random.key(0), 32, cfg, k)
    fixed = iv.offset_patching_task(jax.random.key(1), 32, cfg, k, position=10)
    sweep = jax.jit(lambda v, t, s: iv.patch_sweep(model, v, t.clean, t.corrupted, s, t.metric))
    attrib = jax.jit(
        lambda v, t, s: iv.attribution_patch(model, v, t.clean, t.corrupted, s, t.metric)
    )
    heads = iv.head_sites(cfg.n_layers, cfg.n_heads)
    res = sweep(variables, task, heads)
    fig = plotting.patching_heatmap(
        np.asarray(heads.unflatten(res.normalized)),
        title="patch clean → corrupted, per head (all positions)",
    )
    _save(out, "patching_layer_head", fig)
    pos = iv.position_sites(cfg.n_layers, cfg.seq_len)
    pres = sweep(variables, fixed, pos)
    fig = plotting.patching_heatmap(
        np.asarray(pos.unflatten(pres.normalized)),
        col_name="position",
        title=f"residual stream after each block; source {10 - k}, read-out 10",
    )
    _save(out, "patching_layer_position", fig)
    hp = iv.head_position_sites(cfg.n_layers, cfg.n_heads, cfg.seq_len)
    real, est = sweep(variables, task, hp).normalized, attrib(variables, task, hp).normalized
    fig = plotting.effect_scatter(
        np.asarray(real),
        np.asarray(est),
        xlabel="activation patching (normalized)",
        ylabel="attribution patching (normalized)",
        title=f"{hp.layer.shape[0]} (layer, head, position) sites, "
        f"Spearman {float(iv.spearman(real, est)):.2f}",
    )
    _save(out, "attribution_vs_patching", fig)


def decoder_figures(out: Path) -> None:
    """Attention of the Llama-family decoder test checkpoint (random weights) via ``probs``."""
    d = models.load_decoder(ROOT / "tests" / "fixtures" / "decoders" / "llama")
    ids = jnp.arange(1, 13)[None]  # [1, 12] token ids
    f = lambda v, x: attention.attention_weights(d.model, v, weights_at="blocks_*/attn/probs")(x)
    _, maps = jax.jit(f)(d.variables, ids)
    w = attention.stack_layers(maps)[:, 0]  # [layer, head, q, k]
    fig = plotting.attention_grid(
        np.asarray(w), [str(int(t)) for t in ids[0]], suptitle="Llama-family decoder, causal"
    )
    _save(out, "decoder_attention", fig)


GROUPS: dict[str, Callable[[Path], None]] = {
    "capture": capture_figures,
    "actmax": actmax_figures,
    "attention": attention_figures,
    "probes": probe_figures,
    "interventions": intervention_figures,
    "decoder": decoder_figures,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    parser.add_argument("groups", nargs="*", help=f"some of {list(GROUPS)} (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.groups) - set(GROUPS))
    if unknown:
        parser.error(f"groups: unknown {unknown}; available: {list(GROUPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    # The persistent XLA cache `jaxinterp demo` and the tests use: a rebuild loads the compiled
    # programs instead of compiling them again. JAXINTERP_DOCS_COMPILE_CACHE=0 turns it off.
    if os.environ.get("JAXINTERP_DOCS_COMPILE_CACHE", "1") != "0":
        use_compile_cache(models.cache_dir() / "xla")
    t0 = time.perf_counter()
    for name in args.groups or GROUPS:
        t = time.perf_counter()
        GROUPS[name](args.out)
        print(f"[make_figures] {name}: {time.perf_counter() - t:.1f} s", flush=True)
    print(f"[make_figures] total {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
