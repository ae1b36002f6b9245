"""Demo section: attention maps, rollout and head scores on the toy model and on MiniLM."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import models, viz
from jaxinterp._demo._context import DemoContext
from jaxinterp.attention import (
    attention_stats,
    attention_to,
    attention_weights,
    head_entropy,
    mean_attention_distance,
    offset_score,
    prev_token_score,
    rollout,
    stack_layers,
)
from jaxinterp.plotting import attention_grid, attention_heatmap, head_score_map

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The cat sat on the mat because it was tired.",
    "Paris is the capital of France.",
]


def _toy(ctx: DemoContext) -> None:
    tf = models.offset_transformer()
    k = int(tf.metrics["offset"])
    n = 256 if ctx.quick else 2048
    data = np.asarray(models.offset_batch(jax.random.key(0), n, 16, 16, k).tokens)

    def stat(w, tokens):
        return {f"offset_{k}": offset_score(w, k), "entropy": head_entropy(w)}

    scores = attention_stats(tf.model, tf.variables, stat, data, chunk_size=128)
    off = np.asarray(scores[f"offset_{k}"])
    layer, head = (int(i) for i in np.unravel_index(off.argmax(), off.shape))
    ctx.text(
        f"Toy transformer trained on offset-{k} copy: over {n} streamed sequences, head "
        f"{layer}.{head} puts **{off[layer, head]:.3f}** of its attention on the token {k} back "
        f"(ground truth: the task is solved by attending {k} back; > 0.9 required)."
    )
    ctx.record(
        "attention",
        {
            "toy_sequences": n,
            "toy_offset_head": [layer, head],
            "toy_offset_mass": float(off[layer, head]),
        },
    )
    fig = head_score_map(off, title=f"mean attention mass at offset {k} ({n} sequences)")
    ctx.figure("attention_toy_offset_scores", fig, f"Toy model: attention mass at offset {k}")
    toks = data[:1]
    _, maps = jax.jit(attention_weights(tf.model, tf.variables))(toks)
    w = np.asarray(stack_layers(maps)[:, 0])
    fig = attention_grid(w, [str(t) for t in toks[0]], suptitle="toy transformer, one sequence")
    ctx.figure(
        "attention_toy_grid",
        fig,
        f"Toy model attention (layer × head); head {layer}.{head} is the offset-{k} diagonal",
    )
    ctx.view(
        "view_attention_toy",
        viz.attention_view(
            w,
            [str(t) for t in toks[0]],
            token_ids=toks[0],
            offsets=[k],
            score=f"offset_{k}",
            title=f"Toy offset-{k} transformer: attention explorer",
        ),
        f"hover a token to see where each head attends; head {layer}.{head} looks {k} back",
    )


def _minilm(ctx: DemoContext) -> None:
    try:
        minilm = models.load_minilm()
    except ImportError as e:
        ctx.text(f"MiniLM skipped: {e}")
        return
    tok = models.tokenize_sentences(minilm, SENTENCES)
    ids, mask = jnp.asarray(tok.input_ids), jnp.asarray(tok.attention_mask)
    _, maps = jax.jit(attention_weights(minilm.model, minilm.variables))(ids, mask)
    w = stack_layers(maps)  # [layer, batch, head, q, k]
    e = np.asarray(models.embed_sentences(minilm, SENTENCES[:2]))
    ctx.text(
        f"\nall-MiniLM-L6-v2 in Flax: cosine('{SENTENCES[0]}', '{SENTENCES[1]}') = "
        f"**{float(e[0] @ e[1]):.4f}** (sentence-transformers: 0.755)."
    )
    qmask = mask[None, :, None, :]
    sep = (ids == 102)[None, :, None, :]
    cls = (ids == 101)[None, :, None, :]
    per_head = {
        "entropy": head_entropy(w, qmask).mean(1),
        "distance": mean_attention_distance(w, qmask).mean(1),
        "to_sep": attention_to(w, sep, qmask).mean(1),
        "to_cls": attention_to(w, cls, qmask).mean(1),
        "prev_token": prev_token_score(w, qmask).mean(1),
    }
    per_head = {k: np.asarray(v) for k, v in per_head.items()}
    ctx.record(
        "attention",
        {
            "minilm_cosine": float(e[0] @ e[1]),
            **{f"minilm_max_{k}": float(v.max()) for k, v in per_head.items()},
        },
    )
    li, hi = np.unravel_index(per_head["prev_token"].argmax(), per_head["prev_token"].shape)
    ctx.text(
        f"- strongest previous-token head: {li}.{hi} "
        f"({per_head['prev_token'][li, hi]:.2f} of its mass one token back); mean mass on "
        f"[CLS] over all heads {per_head['to_cls'].mean():.2f}, on [SEP] "
        f"{per_head['to_sep'].mean():.2f}."
    )
    s = 2  # the pronoun sentence
    n = int(mask[s].sum())
    words = tok.tokens[s]
    fig = attention_grid(
        np.asarray(w[:, s, :, :n, :n]), words, suptitle=f"MiniLM attention: {SENTENCES[s]!r}"
    )
    ctx.figure("attention_minilm_grid", fig, "MiniLM attention, 6 layers × 12 heads")
    r = rollout(w[:, s, :, :n, :n], layout="lhqk")
    fig = attention_heatmap(np.asarray(r), words, title="MiniLM attention rollout")
    ctx.figure("attention_minilm_rollout", fig, "Attention rollout (Abnar & Zuidema 2020)")
    fig = head_score_map(per_head["prev_token"], title="MiniLM previous-token score")
    ctx.figure("attention_minilm_prev_token", fig, "MiniLM per-head previous-token score")
    fig = head_score_map(per_head["to_sep"], title="MiniLM attention to [SEP]")
    ctx.figure("attention_minilm_to_sep", fig, "MiniLM per-head attention mass on [SEP]")
    ws = np.asarray(w[:, s, :, :n, :n])  # [layer, head, q, k]
    words = list(words)[:n]
    ctx.view(
        "view_attention_minilm",
        viz.attention_view(
            ws,
            words,
            token_ids=np.asarray(ids[s, :n]),
            title=f"all-MiniLM-L6-v2: {SENTENCES[s]!r}",
        ),
        "MiniLM attention explorer: 6 layers × 12 heads, per-head scores, hover a token",
    )
    ctx.view(
        "treescope_attention_minilm",
        viz.named_array(
            ws,
            ("layer", "head", "q", "k"),
            labels={"q": words, "k": words},
            title=f"all-MiniLM-L6-v2 attention in treescope: {SENTENCES[s]!r}",
        ),
        "the same weights as a treescope figure with named axes layer, head, q, k",
    )


def run(ctx: DemoContext) -> None:
    """Attention figures for the toy offset transformer and for all-MiniLM-L6-v2."""
    ctx.section("Attention")
    _toy(ctx)
    _minilm(ctx)
