"""Demo section: sparse dictionaries on every layer of the offset transformer, in one call."""

from __future__ import annotations

import time

import jax
import numpy as np
import optax

from jaxinterp import features as F
from jaxinterp import models
from jaxinterp._demo._context import DemoContext

SITES = ["block_0", "block_1"]
SETTINGS = {
    "relu l1=0.1": F.relu(0.1),
    "topk k=8": F.topk(8),
    "jumprelu l0=0.05": F.jumprelu(0.05, bandwidth=0.05),
}


def run(ctx: DemoContext) -> None:
    """Trains SAEs on the residual stream after each block; metrics and a feature's tokens."""
    ctx.section("Sparse dictionaries (features)")
    tf = models.offset_transformer()
    cfg, offset = tf.model.cfg, int(tf.metrics["offset"])
    d_sae = 64 if ctx.quick else 128
    batch, n_batches = (32, 10) if ctx.quick else (64, 100)

    def tokens(i, b=batch):
        return models.offset_batch(jax.random.key(1000 + i), b, cfg.seq_len, cfg.vocab, offset)

    inputs = (tokens(i).tokens for i in range(n_batches))
    chunks = F.activation_chunks(tf.model, tf.variables, SITES, inputs)
    pairs = [(s, name) for s in range(len(SITES)) for name in SETTINGS]
    settings = F.stack_settings([SETTINGS[n] for _, n in pairs])
    read = [s for s, _ in pairs]
    conf = F.TrainConfig(
        lr=3e-3, max_k=8, k_aux=32, dead_tokens=4096, lr_warmup=20, sparsity_warmup=50
    )
    keys = jax.random.split(jax.random.key(0), len(pairs))
    params = jax.jit(jax.vmap(lambda k: F.init_params(k, cfg.d_model, d_sae)))(keys)
    t0 = time.perf_counter()
    state, info = F.train(
        F.init_train(params, conf),
        settings,
        chunks,
        batch_size=128,
        steps_per_call=20,
        buffer_size=2048,
        read=read,
        config=conf,
    )
    secs = time.perf_counter() - t0

    held = tokens(10_000, 64)
    acts = next(F.activation_chunks(tf.model, tf.variables, SITES, [held.tokens]))
    m = F.evaluate(state.params, settings, [acts], read=read, max_k=8)

    def ce(logits, toks):
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, held.targets)
        return (loss * held.loss_mask).sum() / held.loss_mask.sum()

    recovered = np.zeros(len(pairs))
    spliced = np.zeros(len(pairs))
    clean = zero = None
    for s, site in enumerate(SITES):
        idx = np.array([j for j, (si, _) in enumerate(pairs) if si == s])
        sub = jax.tree.map(lambda a, idx=idx: a[idx], state.params)
        sset = jax.tree.map(lambda a, idx=idx: a[idx], settings)
        out = F.spliced_loss(tf.model, tf.variables, sub, sset, site, held.tokens, ce, max_k=8)
        recovered[idx] = np.asarray(out.recovered)
        spliced[idx] = np.asarray(out.spliced)
        clean = float(out.clean[0])
        zero = zero or {}
        zero[site] = float(out.zero[0])

    ctx.text(
        f"{len(pairs)} sparse autoencoders ({len(SITES)} residual-stream sites × "
        f"{len(SETTINGS)} settings, {d_sae} latents each) trained in one compiled step on "
        f"{info['tokens']} streamed tokens ({info['steps']} steps, {secs:.1f} s including "
        f"compilation). Metrics on {m.tokens} held-out tokens; the loss is the offset task's "
        f"cross-entropy (clean {clean:.2e}), spliced = the site replaced by the "
        "reconstruction, recovered = (zero-ablated − spliced) / (zero-ablated − clean).\n"
    )
    ctx.text("| site | setting | L0 | FVU | dead | spliced CE | recovered |")
    ctx.text("|---|---|---|---|---|---|---|")
    for j, (s, name) in enumerate(pairs):
        ctx.text(
            f"| `{SITES[s]}` | {name} | {m.l0[j]:.1f} | {m.fvu[j]:.3f} | {m.dead[j]:.2f} | "
            f"{spliced[j]:.2e} | {recovered[j]:.4f} |"
        )
    ctx.text("")

    # one feature of the TopK SAE after block 1: its top tokens and its direct logit effects
    j = pairs.index((1, "topk k=8"))
    p = jax.tree.map(lambda a: a[j], state.params)
    W_U = tf.variables["params"]["unembed"]["kernel"]
    shown = [int(i) for i in np.argsort(-m.frequency[j], kind="stable")[:6]]
    view = F.feature_dashboard(
        tf.model,
        tf.variables,
        p,
        SETTINGS["topk k=8"],
        SITES[1],
        held.tokens,
        shown,
        k=8,
        W_U=W_U,
        max_k=8,
        title=f"TopK SAE features at {SITES[1]} (offset transformer)",
    )
    # the most frequent latent: at its top-8 tokens (the dashboard's first card), which token
    # lies `offset` positions back (the answer the model must copy)?
    feat = shown[0]
    toks = np.asarray(held.tokens)
    back = []
    for e in view.data["items"][0]["examples"]:
        q = int(np.argmax(e["acts"]))
        back.append(int(toks[e["index"], q - offset]) if q >= offset else -1)
    promoted = np.asarray(jax.lax.top_k(F.logit_effects(p, W_U, [feat])[0], 3)[1]).tolist()
    ctx.text(
        f"Most frequent latent of the TopK SAE at `{SITES[1]}` (latent {feat}, fires on "
        f"{m.frequency[j, feat]:.1%} of tokens): in its top-8 sequences, the token {offset} "
        f"positions before its strongest token (the answer) is {back}; its decoder direction "
        f"through the unembedding promotes tokens {promoted}.\n"
    )
    ctx.view(
        "view_features_toy",
        view,
        f"the 6 most frequent latents of the TopK SAE at {SITES[1]}: top sequences, tokens "
        "coloured by activation, promoted tokens",
    )
    ctx.record(
        "features",
        {
            "sites": SITES,
            "settings": list(SETTINGS),
            "tokens": info["tokens"],
            "train_seconds": secs,
            "l0": m.l0.tolist(),
            "fvu": m.fvu.tolist(),
            "dead": m.dead.tolist(),
            "spliced_ce": spliced.tolist(),
            "recovered": recovered.tolist(),
            "clean_ce": clean,
            "zero_ce": zero,
            "feature": feat,
            "feature_back_tokens": back,
            "feature_promotes": promoted,
        },
    )
