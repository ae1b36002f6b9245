"""Demo section: activation maximization on the digits CNN and the offset transformer."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import actmax, models, viz
from jaxinterp._demo._context import DemoContext
from jaxinterp.plotting import actmax_traces, image_grid


def _visualize(ctx, cnn, factory, targets, steps, key):
    """Optimized inputs for ``targets`` (one compiled call) and their best dataset values.

    The first quarter of the ascent uses redirected ReLU gradients, so units that start
    inactive still get a gradient.
    """
    kw = dict(
        redirect_relu=steps // 4,
        param=actmax.fourier((8, 8, 1)),
        steps=steps,
        transforms=(actmax.pad(1), actmax.jitter(2))
        + (() if ctx.quick else (actmax.random_rotate([-5.0, 0.0, 5.0]),)),
        regularizers=(1e-3 * actmax.total_variation(),),
    )
    t0 = time.perf_counter()
    res = actmax.maximize(key, cnn.model, cnn.variables, factory, targets, **kw)
    jax.block_until_ready(res.values)
    seconds = time.perf_counter() - t0
    digits = models.load_digits()
    data = np.concatenate([digits.train.x, digits.test.x])
    top = actmax.top_k_examples(cnn.model, cnn.variables, factory, targets, data, k=8)
    return res, top, data, seconds


def run(ctx: DemoContext) -> None:
    """Optimized inputs for class logits and hidden units, top-k examples, a soft prompt."""
    ctx.section("Activation maximization")
    cnn = models.digits_cnn()
    steps = 128 if ctx.quick else 512
    key = jax.random.key(0)

    # class logits
    logits, top_logits, data, sec = _visualize(
        ctx, cnn, lambda c: actmax.class_logit(c), jnp.arange(10), steps, key
    )
    vals, best = np.asarray(logits.values), np.asarray(top_logits.values[:, 0])
    ctx.text(
        f"Fourier-parameterized inputs in [0, 1] for the 10 class logits of the digits CNN "
        f"({steps} Adam steps, {'jitter' if ctx.quick else 'jitter + rotation'}, TV penalty; "
        f"one vmapped call, {sec:.1f} s "
        f"including compilation). Optimized logit / best logit over all 1797 digits: "
        f"{', '.join(f'{c}: {v:.1f}/{b:.1f}' for c, (v, b) in enumerate(zip(vals, best)))}.\n"
    )
    ctx.figure(
        "actmax_logits",
        image_grid(
            logits.inputs[:, 0, ..., 0],
            [f"logit {c}\n{v:.1f} (data {b:.1f})" for c, (v, b) in enumerate(zip(vals, best))],
            ncols=10,
            size=1.3,
        ),
        "Inputs maximizing each class logit (value reached; best dataset value)",
    )

    # all 64 hidden units of the dense layer in one call (the figures show the first ones
    # active on some digit), and conv channels
    n_units = 8 if ctx.quick else 16
    unit_fac = lambda u: actmax.neuron("act_2", u)
    hidden_all, top_all, _, _ = _visualize(
        ctx, cnn, unit_fac, jnp.arange(64), steps, jax.random.key(1)
    )
    alive = np.flatnonzero(np.asarray(top_all.values[:, 0]) > 0)
    units = jnp.asarray(alive[:n_units])
    hidden = jax.tree.map(lambda a: a[units], hidden_all)
    top_hidden = actmax.TopK(top_all.values[units], top_all.indices[units])
    chans = jnp.arange(16) if not ctx.quick else jnp.arange(8)
    conv, top_conv, _, _ = _visualize(
        ctx, cnn, lambda c: actmax.channel("act_1", c), chans, steps, jax.random.key(2)
    )
    images = np.concatenate([hidden.inputs[:, 0, ..., 0], conv.inputs[:, 0, ..., 0]])
    titles = [f"act_2 #{int(u)}" for u in units] + [f"act_1 ch {int(c)}" for c in chans]
    ctx.figure(
        "actmax_units",
        image_grid(images, titles, ncols=8, size=1.3),
        "Inputs maximizing dense units (act_2) and conv channels (act_1)",
    )
    few = [0, 1, 4, 7]
    ctx.figure(
        "actmax_traces",
        actmax_traces(
            logits.traces[np.asarray(few)],
            [f"logit {c}" for c in few],
            dataset_best=best[few],
            smooth=8,
            title="class logits",
        ),
        "Objective during the ascent under random transforms (8-step mean, solid) vs the best "
        "dataset example (dotted)",
    )

    ctx.view(
        "view_gallery_logits",
        viz.gallery_from_actmax(
            logits, top_logits, data, [f"logit {c}" for c in range(10)], title="Class logits"
        ),
        "per class logit: the optimized input, its top-8 digits, values and the ascent",
    )
    ctx.view(
        "view_gallery_units",
        viz.gallery_from_actmax(
            hidden, top_hidden, data, [f"act_2 #{int(u)}" for u in units], title="Dense units"
        ),
        "dense units (act_2) active on some digit: optimized input next to its top-8 digits",
    )

    # top-k dataset examples for a few units
    show = min(4, len(units))
    idx = np.asarray(top_hidden.indices[:show])
    ex = data[idx.ravel(), ..., 0]
    opt = hidden.inputs[:show, 0, ..., 0]
    rows = np.concatenate(
        [np.concatenate([opt[i : i + 1], ex[i * 8 : i * 8 + 8]]) for i in range(show)]
    )
    tv = np.asarray(top_hidden.values[:show])
    rtitles = []
    for i in range(show):
        rtitles.append(f"#{int(units[i])} opt {float(hidden.values[i]):.1f}")
        rtitles += [f"{v:.1f}" for v in tv[i]]
    ctx.figure(
        "actmax_topk",
        image_grid(rows, rtitles, ncols=9, size=1.2),
        "Per unit: optimized input, then its top-8 dataset examples (activation above each)",
    )

    def summary(res, top):
        v, b = np.asarray(res.values), np.asarray(top.values[:, 0])
        alive = b > 0
        beat = v > b  # over ALL targets: a unit at 0 never beats a dataset maximum of 0
        return {
            "targets": int(len(v)),
            "active_targets": int(alive.sum()),
            "targets_exceeding_dataset_max": int(beat.sum()),
            "fraction_exceeding_dataset_max": float(beat.mean()),
            "targets_at_zero": int((v <= 0).sum()),
            "median_ratio_to_dataset_max": float(np.median(v[alive] / b[alive]))
            if alive.any()
            else float("nan"),
        }

    stats = {
        "logits": summary(logits, top_logits),
        "act_2": summary(hidden_all, top_all),
        "act_1_channels": summary(conv, top_conv),
    }
    for name, s in stats.items():
        ctx.text(
            f"- {name}: the optimized input beats the best of 1797 digits for "
            f"{s['targets_exceeding_dataset_max']} of all {s['targets']} targets "
            f"({s['fraction_exceeding_dataset_max']:.0%}; {s['active_targets']} are active on "
            f"some digit, {s['targets_at_zero']} end at 0; median ratio over the active ones "
            f"{s['median_ratio_to_dataset_max']:.2f})"
        )
    ctx.record(
        "actmax",
        {
            "steps": steps,
            "logit_values": vals.tolist(),
            "logit_dataset_max": best.tolist(),
            **{f"{n}_{k}": v for n, s in stats.items() for k, v in s.items()},
        },
    )

    # soft prompts on the offset-3 transformer
    tf = models.offset_transformer()
    cfg = tf.model.cfg
    table = tf.variables["params"]["embed"]["embedding"]
    res = actmax.maximize(
        jax.random.key(3),
        tf.model,
        tf.variables,
        lambda v: actmax.class_logit(v, position=cfg.seq_len - 1),
        jnp.arange(cfg.vocab),
        param=actmax.soft_prompt(table, cfg.seq_len),
        steps=100,
    )
    ids = np.asarray(actmax.nearest_tokens(res.inputs[:, 0], table))
    ctx.view(
        "view_gallery_soft_prompts",
        viz.feature_gallery(
            [f"token {v}" for v in range(cfg.vocab)],
            np.asarray(res.values),
            optimized=[[str(t) for t in row] for row in ids],
            traces=np.asarray(res.traces),
            title="Soft prompts (nearest tokens)",
        ),
        "per output token: the soft prompt maximizing its logit, read out as nearest tokens",
    )
    hit = float((ids[:, -1 - tf.metrics["offset"]] == np.arange(cfg.vocab)).mean())
    ctx.text(
        f"\nSoft prompts maximizing each output token's logit at the last position of the "
        f"offset-{tf.metrics['offset']} copy transformer, read out as nearest tokens: the token "
        f"{tf.metrics['offset']} positions back equals the target for {hit:.0%} of the "
        f"{cfg.vocab} targets (the mechanism the model was trained on). Example (target 5): "
        f"`{ids[5].tolist()}`.\n"
    )
    ctx.record("actmax", {"soft_prompt_offset_recovery": hit})
