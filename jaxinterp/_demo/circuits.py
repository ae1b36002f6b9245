"""Demo section: logit and tuned lens on the toy model; induction heads across checkpoints."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np
import optax

from jaxinterp import models
from jaxinterp._demo._context import DemoContext
from jaxinterp.circuits import (
    fit_tuned_lens,
    lens_metrics,
    logit_lens,
    over_checkpoints,
    tuned_lens,
)
from jaxinterp.circuits._toys import (
    INDUCTION_SIZES,
    induction_metrics,
    repeated_batch,
    train_induction_checkpoints,
)
from jaxinterp.plotting import lens_curves, lens_grid


def _lenses(ctx: DemoContext) -> None:
    tf = models.offset_transformer()
    k = int(tf.metrics["offset"])
    n_batches = 6 if ctx.quick else 24

    def stream():
        for i in range(n_batches):
            yield models.offset_batch(jax.random.key(100 + i), 32, 16, 16, k).tokens

    fit = fit_tuned_lens(
        tf.model, tf.variables, stream(), optimizer=optax.adam(1e-2), steps_per_batch=20
    )
    held = models.offset_batch(jax.random.key(7), 128, 16, 16, k).tokens
    logit, final = logit_lens(tf.model, tf.variables, held)
    tuned, _ = tuned_lens(fit.lens, tf.model, tf.variables, held)
    ml, mt = lens_metrics(logit, final), lens_metrics(tuned, final)
    names = ["embed"] + [f"block {i}" for i in range(tf.model.cfg.n_layers)]
    rows = ", ".join(
        f"{n}: {a:.3f} → {b:.3f}" for n, a, b in zip(names, np.asarray(ml.kl), np.asarray(mt.kl))
    )
    ctx.text(
        f"Offset-{k} toy transformer, 128 held-out sequences: KL(model ‖ lens) per layer, logit "
        f"lens → tuned lens ({n_batches} streamed batches × 20 Adam steps, all layers in one "
        f"compiled step): {rows}. The last layer's logit lens is the model's output (KL 0)."
    )
    ctx.record(
        "circuits",
        {
            "lens_kl_logit": np.asarray(ml.kl).tolist(),
            "lens_kl_tuned": np.asarray(mt.kl).tolist(),
            "lens_top1_logit": np.asarray(ml.top1).tolist(),
            "lens_top1_tuned": np.asarray(mt.top1).tolist(),
        },
    )
    fig = lens_curves(
        {"logit lens": ml.kl, "tuned lens": mt.kl},
        {"logit lens": ml.top1, "tuned lens": mt.top1},
        layer_names=names,
        title=f"offset-{k} toy transformer",
    )
    ctx.figure("lens_curves", fig, "Per-layer KL to the output and top-1 agreement")
    fig = lens_grid(
        np.asarray(logit[:, 0]),
        token_labels=[str(t) for t in held[0]],
        layer_names=names,
        title="logit lens, one sequence",
    )
    ctx.figure("lens_grid", fig, f"Logit lens: each layer's top token (the answer is {k} back)")


def _checkpoints(ctx: DemoContext) -> None:
    kw = INDUCTION_SIZES[bool(ctx.quick)]
    run = train_induction_checkpoints(jax.random.key(0), **kw)
    toks = repeated_batch(jax.random.key(9), 64, run.half, run.model.vocab)
    out = over_checkpoints(partial(induction_metrics, run.model), run.stacked, toks)
    icl = np.asarray(out["icl_loss"])
    ind = np.asarray(out["induction"]).reshape(len(icl), -1).max(-1)
    steps = np.asarray(run.steps)
    c_loss, c_ind = int(np.argmin(np.diff(icl))) + 1, int(np.argmax(np.diff(ind))) + 1
    ctx.text(
        f"Attention-only 2-layer transformer on repeated random sequences, {len(icl)} "
        f"checkpoints analysed in ONE compiled call (`over_checkpoints`): the in-context loss "
        f"on the repeated half falls {icl[0]:.2f} → {icl[-1]:.2f} nats, steepest at step "
        f"{steps[c_loss]}, while the best head's induction score rises {ind[0]:.2f} → "
        f"{ind[-1]:.2f}, steepest at step {steps[c_ind]} (Olsson et al. 2022: the two coincide)."
    )
    ctx.record(
        "circuits",
        {
            "induction_checkpoints": len(icl),
            "induction_phase_step_loss": int(steps[c_loss]),
            "induction_phase_step_score": int(steps[c_ind]),
            "icl_loss_first_last": [float(icl[0]), float(icl[-1])],
            "induction_first_last": [float(ind[0]), float(ind[-1])],
        },
    )
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(steps, icl, marker=".", color="C0")
    ax.set_xlabel("training step")
    ax.set_ylabel("in-context loss (repeated half)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(steps, ind, marker=".", color="C1")
    ax2.set_ylabel("best induction score", color="C1")
    ax2.set_ylim(0, 1)
    ctx.figure("induction_phase_change", fig, "Induction heads form as in-context loss drops")


def run(ctx: DemoContext) -> None:
    ctx.section("Lenses and checkpoints")
    _lenses(ctx)
    _checkpoints(ctx)
