"""Demo section: linear probes across the layers of the digits CNN and the toy transformer."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import models, probes, viz
from jaxinterp._demo._context import DemoContext
from jaxinterp.plotting import probe_accuracy


def _table(ctx: DemoContext, names, tasks, acc, sel) -> None:
    ctx.text("| layer | " + " | ".join(f"{t} acc | {t} selectivity" for t in tasks) + " |")
    ctx.text("|---" * (1 + 2 * len(tasks)) + "|")
    for i, name in enumerate(names):
        cells = [f"{acc[i, t]:.3f} | {sel[i, t]:+.3f}" for t in range(len(tasks))]
        ctx.text(f"| `{name}` | " + " | ".join(cells) + " |")
    ctx.text("")


def _cnn(ctx: DemoContext) -> None:
    cnn, data = models.digits_cnn(), models.load_digits()
    ntr = data.train.x.shape[0] if not ctx.quick else 600
    x = jnp.asarray(np.concatenate([data.train.x[:ntr], data.test.x]))
    y = jnp.asarray(np.concatenate([data.train.y[:ntr], data.test.y]))[None]
    paths = ["act_0", "act_1", "act_2"]
    feats = probes.layer_features(cnn.model, cnn.variables, x, paths, pool="flatten")
    # Control task: every image is its own type, so its label is a fixed random draw from the
    # digit distribution; a probe can only memorise it.
    ctrl = probes.control_labels(jax.random.key(0), jnp.arange(y.shape[1]), y)
    labels = jnp.concatenate([y, ctrl])
    t0 = time.perf_counter()
    probe, info = jax.block_until_ready(
        probes.fit_logistic(feats[:, :ntr], labels[:, :ntr], C=0.01, num_classes=10)
    )
    secs = time.perf_counter() - t0
    acc = np.asarray(probes.evaluate(probe, feats[:, ntr:], labels[:, ntr:])["accuracy"])
    sel = np.asarray(probes.selectivity(acc[:, :1], acc[:, 1:]))
    ctx.text(
        f"Digits CNN: flattened activations of {paths} ({feats.shape[2]} features after "
        f"zero-padding), {ntr} training images, 10-class probes with `C=0.01`; the control "
        "task gives each image a fixed random digit label (Hewitt & Liang). All "
        f"{len(paths)} layers × 2 tasks fitted in one call ({secs:.2f} s including "
        f"compilation, at most {int(info.iterations.max())} L-BFGS iterations).\n"
    )
    _table(ctx, paths, ["digit"], acc[:, :1], sel)
    fig = probe_accuracy(
        acc[:, :1],
        layer_names=paths,
        task_names=["digit"],
        control=acc[:, 1:],
        chance=[0.1],
        title="Digits CNN: probe accuracy by layer",
    )
    ctx.figure("probes_cnn", fig, "Digit-class probes on the CNN's layers, with control task")
    ctx.view(
        "view_probes_cnn",
        viz.probe_view(
            acc[:, :1],
            layer_names=paths,
            task_names=["digit"],
            control=acc[:, 1:],
            chance=[0.1],
            title="Digits CNN: probe accuracy by layer",
        ),
        "digit probes on each layer of the CNN, with the control task and selectivity",
    )
    ctx.record(
        "probes",
        {
            "cnn_train_images": ntr,
            "cnn_accuracy": acc[:, 0].tolist(),
            "cnn_control_accuracy": acc[:, 1].tolist(),
            "cnn_fit_seconds": secs,
        },
    )


def _transformer(ctx: DemoContext) -> None:
    tf = models.offset_transformer()
    cfg, offset = tf.model.cfg, int(tf.metrics["offset"])
    batch = 64 if ctx.quick else 512
    tokens = models.offset_batch(jax.random.key(1), batch, cfg.seq_len, cfg.vocab, offset).tokens
    paths = ["embed", "block_0", "block_1"]
    feats = probes.layer_features(tf.model, tf.variables, tokens, paths, pool="tokens")
    current = tokens.reshape(-1)
    back = jnp.roll(tokens, offset, axis=1).reshape(-1)
    keep = np.asarray(jnp.tile(jnp.arange(cfg.seq_len) >= offset, batch))  # t - k exists
    feats, current, back = feats[:, keep], current[keep], back[keep]
    tasks = jnp.stack([current, back])
    # Control tasks: the type of a position is its current token (Hewitt & Liang).
    ctrl = probes.control_labels(jax.random.key(2), current, tasks, num_types=cfg.vocab)
    labels = jnp.concatenate([tasks, ctrl])
    n = labels.shape[1]
    tr, te = probes.train_val_test_split(jax.random.key(3), n, (0.7, 0.3))
    probe, _ = probes.fit_logistic(feats[:, tr], labels[:, tr], num_classes=cfg.vocab)
    acc = np.asarray(probes.evaluate(probe, feats[:, te], labels[:, te])["accuracy"])
    names = ["current token", f"token at t-{offset}"]
    sel = np.asarray(probes.selectivity(acc[:, :2], acc[:, 2:]))
    ctx.text(
        f"Offset-{offset} transformer: residual stream at every position ({n} positions with "
        f"a token {offset} back), {cfg.vocab}-class probes for the current token and for the "
        f"token {offset} positions back. Controls map each current token to a fixed random "
        "label: readable wherever the current token is, so selectivity is low for reading "
        f"the current token and rises for the t-{offset} token once attention has copied it.\n"
    )
    _table(ctx, paths, names, acc[:, :2], sel)
    fig = probe_accuracy(
        acc[:, :2],
        layer_names=paths,
        task_names=names,
        control=acc[:, 2:],
        chance=[1 / cfg.vocab] * 2,
        title="Offset transformer: probe accuracy by layer",
    )
    ctx.figure("probes_transformer", fig, "Token probes on the transformer's residual stream")
    ctx.view(
        "view_probes_transformer",
        viz.probe_view(
            acc[:, :2],
            layer_names=paths,
            task_names=names,
            control=acc[:, 2:],
            chance=[1 / cfg.vocab] * 2,
            title="Offset transformer: probe accuracy by layer",
        ),
        "current-token and t-3-token probes on the residual stream, controls and selectivity",
    )
    ctx.record(
        "probes",
        {
            "transformer_sequences": batch,
            "transformer_current_accuracy": acc[:, 0].tolist(),
            "transformer_back_accuracy": acc[:, 1].tolist(),
            "transformer_selectivity": sel.tolist(),
        },
    )


def run(ctx: DemoContext) -> None:
    """Probe accuracy and selectivity by layer for the digits CNN and the offset transformer."""
    ctx.section("Linear probes")
    _cnn(ctx)
    _transformer(ctx)
