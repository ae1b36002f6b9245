"""The IOI circuit of SmolLM2-135M by edge attribution (EAP, EAP-IG), against exact patching.

Task: ``ioi_task(key(1), tokenizer, 8)`` (8 clean / corrupted prompt pairs, 14 tokens, e.g.
"When Mary and John went to the store, John gave a drink to"); metric = mean logit
difference IO - S at the last position. Graph: every edge between the input, the 270
attention heads, the 30 MLPs and the logits (``edge_graph(decoder_layout(cfg))``, queries per
head, keys/values per KV group).

Printed:

1. EAP and EAP-IG (``--ig-steps``) scores of every edge; the top edges.
2. Node view: each head's summed outgoing EAP-IG score (first-order effect of patching the head
   corrupted into the clean run), against head activation patching (clean into corrupted,
   ``patch_sweep`` on ``blocks_{i}/attn/z``, normalized): the top heads of both, Spearman.
3. Wang et al. (2022) head classes, read off the graph and the attention patterns: name-mover
   candidates (largest direct edges ``head -> logits``; attention END -> IO vs S), S-inhibition
   candidates (largest edges into the name movers' queries; attention END -> S2), induction /
   duplicate-token candidates (largest edges into the S-inhibition heads' key/value groups;
   attention S2 -> S1 + 1 (induction) and S2 -> S1 (duplicate token)).
4. Spearman of EAP and of EAP-IG against exact edge patching (``patch_edges``, one edge per
   set) on a subset: the top ``--subset`` edges by |EAP-IG|, by |EAP|, and as many random ones.

    python scripts/ioi_edges_smollm2.py [--ig-steps 5] [--subset 60]

Measured (2 CPU cores shared, load average ~10; EAP 184 s and EAP-IG 172 s with compilation,
head patching 566 s, exact patching of 156 edges 1478 s): logit difference 4.79 clean, -0.57
corrupted. Heads by patching L23H3 +0.72, L23H0 +0.44, L29H1 +0.27, L24H4 -0.27, L29H0 -0.19;
by EAP-IG (summed outgoing edges, sign flipped) the same five first; Spearman 0.76 over 270
heads, 9 of the top 10 shared. Direct edges to the logits: L23H3 -0.57 (attends END -> S2
0.71), L23H0 -0.27 (END -> IO 0.69: a name mover), L29H1 -0.27 (attends to no name),
L24H4 +0.15 (END -> IO 0.64: a negative name mover), L29H0 +0.18. L23H3 -> L24H4.q +0.25 and
L23H0 -> L24H4.q +0.21 (exact +0.26, +0.20). S-inhibition / duplicate-token candidates by edges
into the movers' queries and their key/value groups are weak (|score| <= 0.015): a20.h0
attends END -> S2 0.78 and a17.h0 S2 -> S1 0.41, but the graph gives them little weight.
Exact edge patching on 156 edges: Spearman 0.85 for EAP, 0.74 for EAP-IG (5 steps); mean
|error| 0.022 of the clean-corrupted gap for both; the largest exact edge, input -> m0 -0.96,
is EAP-IG's first (-1.05) and missing from EAP's top 15.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import circuits, models
from jaxinterp import interventions as iv
from jaxinterp.attention import attention_weights


def spearman(a, b) -> float:
    return float(iv.spearman(jnp.asarray(a), jnp.asarray(b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ig-steps", type=int, default=5)
    p.add_argument("--subset", type=int, default=60)
    a = p.parse_args()
    print("load average:", os.getloadavg())
    m = models.smollm2()
    cfg = m.config
    ioi = iv.ioi_task(jax.random.key(1), m.tokenizer, 8)
    t = ioi.task
    g = circuits.edge_graph(circuits.decoder_layout(cfg))
    print(f"{len(g.names)} edges, {len(g.senders)} senders, {len(g.receivers)} receivers")
    clock = time.perf_counter()

    def lap(what):
        nonlocal clock
        now = time.perf_counter()
        print(f"  [{what}: {now - clock:.0f} s]", flush=True)
        clock = now

    run_eap = jax.jit(lambda v, c, x: circuits.eap(m.model, v, g, c, x, t.metric))
    r_eap = run_eap(m.variables, t.clean, t.corrupted)
    lap("EAP (compile + run)")
    run_ig = jax.jit(
        lambda v, c, x: circuits.eap_ig(m.model, v, g, c, x, t.metric, steps=a.ig_steps)
    )
    r_ig = run_ig(m.variables, t.clean, t.corrupted)
    lap(f"EAP-IG, {a.ig_steps} steps (compile + run)")
    clean, corr = float(r_eap.clean), float(r_eap.corrupted)
    print(f"logit difference: clean {clean:.3f}, corrupted {corr:.3f}")
    s_eap, s_ig = np.asarray(r_eap.scores), np.asarray(r_ig.scores)
    print(f"EAP vs EAP-IG over all edges: Spearman {spearman(s_eap, s_ig):.3f}")
    for name, s in (("EAP", s_eap), ("EAP-IG", s_ig)):
        print(f"\ntop edges, {name} (score / (clean - corrupted)):")
        for e, v in g.top(s, 15):
            print(f"  {e:<22} {v / (clean - corr):+.3f}")

    # ---- node view: heads, against head activation patching
    heads = iv.site_grid(
        [f"blocks_{i}/attn/z" for i in range(cfg.n_layers)], [(-2, cfg.n_heads)], ("layer", "head")
    )
    exact = iv.patch_sweep(m.model, m.variables, t.clean, t.corrupted, heads, t.metric)
    lap("head activation patching (270 heads)")
    patch = np.asarray(heads.unflatten(exact.normalized))  # [layer, head], denoising
    mat = g.matrix(s_ig)  # [sender, receiver]
    out = np.nansum(mat, 1) / (clean - corr)  # noising effect of each sender, normalized
    node = np.array(
        [
            [out[g.senders.index(f"a{i}.h{h}")] for h in range(cfg.n_heads)]
            for i in range(cfg.n_layers)
        ]
    )
    direct = np.array(
        [
            [mat[g.senders.index(f"a{i}.h{h}"), -1] / (clean - corr) for h in range(cfg.n_heads)]
            for i in range(cfg.n_layers)
        ]
    )

    def top(x, k=8):
        idx = np.argsort(-np.abs(x).ravel())[:k]
        return [(int(i // x.shape[1]), int(i % x.shape[1]), float(x.ravel()[i])) for i in idx]

    print("\nheads by activation patching (clean -> corrupted, normalized):")
    print("  " + ", ".join(f"L{i}H{h} {v:+.2f}" for i, h, v in top(patch)))
    print("heads by EAP-IG, summed outgoing edges (corrupted -> clean, normalized):")
    print("  " + ", ".join(f"L{i}H{h} {v:+.2f}" for i, h, v in top(node)))
    print(f"Spearman(patching, -EAP-IG node) over 270 heads: {spearman(patch, -node):.3f}")
    top_p = {(i, h) for i, h, _ in top(patch, 10)}
    top_n = {(i, h) for i, h, _ in top(node, 10)}
    print(f"top-10 heads in common: {len(top_p & top_n)} {sorted(top_p & top_n)}")

    # ---- head classes (Wang et al. 2022)
    probs = jax.jit(
        lambda v, x: attention_weights(m.model, v, weights_at="blocks_*/attn/probs")(x)
    )(m.variables, t.clean)[1]
    att = np.stack([np.asarray(probs[f"blocks_{i}/attn/probs"]) for i in range(cfg.n_layers)])
    b = np.arange(t.clean.shape[0])
    end, io, s1, s2 = (
        np.asarray(x) for x in (t.position, ioi.io_position, ioi.s1_position, ioi.s2_position)
    )

    def attn(i, h, q, k):  # mean attention of head (i, h) from position q to k over prompts
        return float(att[i, b, h, q, k].mean())

    movers = [(i, h, v) for i, h, v in top(direct, 6)]
    print(
        "\nname-mover candidates (direct edge head -> logits, normalized; attention END->IO,"
        " END->S1, END->S2):"
    )
    for i, h, v in movers:
        print(
            f"  L{i}H{h} {v:+.3f}  attn {attn(i, h, end, io):.2f} {attn(i, h, end, s1):.2f} "
            f"{attn(i, h, end, s2):.2f}"
        )
    pos_movers = [(i, h) for i, h, v in movers if v < 0][:3]  # noising lowers the difference
    recv = [g.receivers.index(f"a{i}.h{h}.q") for i, h in pos_movers]
    into_q = np.nansum(mat[:, recv], 1) / (clean - corr)
    sinh = [(g.senders[u], into_q[u]) for u in np.argsort(-np.abs(into_q))[:6]]
    print("S-inhibition candidates (edges into those movers' queries; attention END->S2, END->IO):")
    sin_heads = []
    for name, v in sinh:
        if name.startswith("a"):
            i, h = (int(x[1:]) for x in name.split("."))
            sin_heads.append((i, h))
            print(f"  {name:<8} {v:+.3f}  attn {attn(i, h, end, s2):.2f} {attn(i, h, end, io):.2f}")
        else:
            print(f"  {name:<8} {v:+.3f}")
    per = cfg.n_heads // cfg.n_kv_heads
    kv = sorted(
        {g.receivers.index(f"a{i}.g{h // per}.{c}") for i, h in sin_heads[:3] for c in "kv"}
    )
    into_kv = np.nansum(mat[:, kv], 1) / (clean - corr)
    print(
        "induction / duplicate-token candidates (edges into their key/value groups; attention "
        "S2->S1+1, S2->S1):"
    )
    for u in np.argsort(-np.abs(into_kv))[:6]:
        name = g.senders[u]
        if name.startswith("a"):
            i, h = (int(x[1:]) for x in name.split("."))
            print(
                f"  {name:<8} {into_kv[u]:+.3f}  attn {attn(i, h, s2, s1 + 1):.2f} "
                f"{attn(i, h, s2, s1):.2f}"
            )
        else:
            print(f"  {name:<8} {into_kv[u]:+.3f}")
    lap("head classes")

    # ---- exact edge patching on a subset
    rng = np.random.default_rng(0)
    k = a.subset
    pick = np.unique(
        np.concatenate(
            [
                np.argsort(-np.abs(s_ig))[:k],
                np.argsort(-np.abs(s_eap))[:k],
                rng.choice(len(g.names), k, replace=False),
            ]
        )
    )
    masks = np.zeros((len(pick), len(g.names)), np.float32)
    masks[np.arange(len(pick)), pick] = 1.0
    run_patch = jax.jit(
        lambda v, c, x, mk: circuits.patch_edges(m.model, v, g, c, x, t.metric, mk, chunk=8)
    )
    ex = np.asarray(run_patch(m.variables, t.clean, t.corrupted, jnp.asarray(masks)))
    lap(f"exact edge patching, {len(pick)} edges")
    print(
        f"\nexact edge patching on {len(pick)} edges (top {k} |EAP-IG|, top {k} |EAP|, {k} random):"
    )
    print(f"  Spearman EAP    vs exact: {spearman(s_eap[pick], ex):.3f}")
    print(f"  Spearman EAP-IG vs exact: {spearman(s_ig[pick], ex):.3f}")
    print(
        f"  mean |error| / (clean - corrupted): EAP "
        f"{np.abs(s_eap[pick] - ex).mean() / (clean - corr):.4f}, EAP-IG "
        f"{np.abs(s_ig[pick] - ex).mean() / (clean - corr):.4f}"
    )
    names = g.names
    print(
        "  largest exact edges: "
        + ", ".join(
            f"{names[pick[j]]} {ex[j] / (clean - corr):+.3f}" for j in np.argsort(-np.abs(ex))[:8]
        )
    )
    print("\nload average:", os.getloadavg())


if __name__ == "__main__":
    main()
