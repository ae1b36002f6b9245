"""Sparse dictionaries on SmolLM2-135M's residual stream, several layers trained at once.

Text: the docstrings of Python's own standard library (modules, classes, functions of the
modules in ``MODULES``, in a fixed order), English prose about code that ships with every
Python; tokenized with SmolLM2's tokenizer into one stream, cut into sequences of ``SEQ``
tokens (no BOS). The first position of every sequence is left out of training, metrics and
splicing: as in most pretrained transformers, its residual stream is an outlier (an attention
sink; measured here, the mean norm at ``blocks_15`` is 174 without it and 2105 with it, so the
first position's norm is over a hundred times the others'). ``HELD`` sequences spread evenly
over the text are held out for the metrics, top examples and
spliced loss; the training sequences are streamed through the model in batches
(:func:`jaxinterp.features.activation_chunks`, the residual stream after each block in
``LAYERS``), mixed in a shuffling buffer and cut into training steps
(:func:`jaxinterp.features.train`): one compiled step trains every (layer × setting)
dictionary of the stack.

Printed: per dictionary, L0, FVU, dead and dense latents on held-out tokens, and the next-token
cross-entropy with the layer's residual stream replaced by the reconstruction
(:func:`jaxinterp.features.spliced_loss`) against the clean and zero-ablated loss (fraction of
loss recovered); then, for a few latents of the TopK dictionary of one layer, the held-out
tokens on which they are most active, with their context.

    PYTHONPATH=. python scripts/features_smollm2.py [--tokens 30000] [--epochs 2] [--quick]
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxinterp import features as F
from jaxinterp import models

MODULES = [
    "argparse", "asyncio", "collections", "contextlib", "csv", "dataclasses", "datetime",
    "decimal", "difflib", "email", "enum", "fractions", "functools", "heapq", "http.client",
    "inspect", "io", "itertools", "json", "logging", "os", "pathlib", "pickle", "random", "re",
    "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
]  # fmt: skip
LAYERS = [3, 9, 15, 21]
SEQ = 128
HELD = 16


def stdlib_text() -> str:
    """Docstrings of the stdlib modules in ``MODULES`` (and their public members), joined."""
    parts = []
    for name in MODULES:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod)]
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr)
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                docs.append(inspect.getdoc(obj))
        parts.extend(d for d in docs if d and len(d) > 80)
    return "\n\n".join(parts)


def run(tokens: int = 30_000, epochs: int = 2, quick: bool = False) -> dict:
    t_start = time.perf_counter()
    sm = models.smollm2()
    tok = sm.tokenizer
    ids = np.asarray(tok.encode(stdlib_text()), np.int32)
    n_seq = len(ids) // SEQ
    seqs = ids[: n_seq * SEQ].reshape(n_seq, SEQ)
    is_held = np.zeros(n_seq, bool)
    is_held[np.linspace(0, n_seq - 1, HELD).astype(int)] = True  # spread over the modules
    held, train_seqs = seqs[is_held], seqs[~is_held]
    batch = 8
    n_batches = min(tokens // (batch * SEQ), len(train_seqs) // batch)
    print(f"text: {len(ids)} tokens of stdlib docstrings, {n_seq} sequences of {SEQ}")

    sites = [f"blocks_{i}" for i in LAYERS]
    settings_by_name = {"topk k=32": F.topk(32), "relu l1=2": F.relu(2.0)}
    if quick:
        settings_by_name = {"topk k=32": F.topk(32)}
    pairs = [(s, n) for s in range(len(sites)) for n in settings_by_name]
    settings = F.stack_settings([settings_by_name[n] for _, n in pairs])
    read = [s for s, _ in pairs]
    d, d_sae = sm.config.d_model, 4 * sm.config.d_model
    conf = F.TrainConfig(
        lr=2e-3, max_k=32, k_aux=256, dead_tokens=10_000, lr_warmup=30, sparsity_warmup=100
    )
    keys = jax.random.split(jax.random.key(0), len(pairs))
    params = jax.jit(jax.vmap(lambda k: F.init_params(k, d, d_sae)))(keys)
    # the residual stream's scale grows with depth: each dictionary reads its layer divided by
    # that layer's mean norm (estimated on the first batch), so one l1 / lr fits every layer
    not_first = lambda x: np.broadcast_to(np.arange(x.shape[1]) > 0, x.shape)  # noqa: E731
    first = next(
        F.activation_chunks(
            sm.model, sm.variables, sites, [jnp.asarray(seqs[:batch])], keep=not_first
        )
    )
    norms = np.sqrt((first.astype(np.float64) ** 2).sum(-1).mean(0)).astype(np.float32)
    print("mean residual norm per layer:", dict(zip(sites, np.round(norms, 1).tolist())))
    scale = np.sqrt(d) / norms  # reads x * scale: mean squared norm d (unit variance)

    # the activations are streamed once from the model and kept (float16: the dataset is small)
    # so the dictionaries can see them for several epochs
    t0 = time.perf_counter()
    inputs = (jnp.asarray(train_seqs[i * batch : (i + 1) * batch]) for i in range(n_batches))
    cached = [
        (c * scale[:, None]).astype(np.float16)
        for c in F.activation_chunks(sm.model, sm.variables, sites, inputs, keep=not_first)
    ]
    t_fwd = time.perf_counter() - t0
    print(
        f"model forward: {sum(len(c) for c in cached)} tokens x {len(sites)} sites in {t_fwd:.0f} s"
    )
    t0 = time.perf_counter()
    state, info = F.train(
        F.init_train(params, conf),
        settings,
        (c for _ in range(epochs) for c in cached),
        batch_size=256,
        steps_per_call=10,
        buffer_size=8192,
        read=read,
        config=conf,
        print_every=10,
    )
    secs = time.perf_counter() - t0
    print(
        f"trained {len(pairs)} dictionaries ({len(sites)} layers x {len(settings_by_name)}) "
        f"of {d_sae} latents: {info['steps']} steps of 256 tokens ({epochs} epochs, "
        f"{info['tokens']} tokens) in {secs:.0f} s, one compiled step for the whole stack"
    )

    # metrics on held-out tokens
    held_acts = next(
        F.activation_chunks(sm.model, sm.variables, sites, [jnp.asarray(held)], keep=not_first)
    )
    m = F.evaluate(state.params, settings, [held_acts * scale[:, None]], read=read, max_k=32)

    def ce(logits, toks):
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], toks[:, 1:]).mean()

    # spliced: the dictionary reads the raw activation; fold the per-layer scale into the
    # encoder and decoder (x * s → W_enc s, decoder output / s) so it reads and writes raw
    def raw(p, s):  # works on one dictionary and on a stack
        return p._replace(W_enc=p.W_enc * s, W_dec=p.W_dec / s, b_dec=p.b_dec / s)

    t0 = time.perf_counter()
    rows = {}
    for s, site in enumerate(sites):  # one compiled splice per site, vmapped over its stack
        idx = [j for j, (si, _) in enumerate(pairs) if si == s]
        p = raw(jax.tree.map(lambda a, idx=idx: a[np.asarray(idx)], state.params), scale[s])
        st = jax.tree.map(lambda a, idx=idx: a[np.asarray(idx)], settings)
        out = F.spliced_loss(
            sm.model, sm.variables, p, st, site, jnp.asarray(held), ce, max_k=32,
            where=jnp.asarray(not_first(held)),
        )  # fmt: skip
        for r, j in enumerate(idx):
            o = jax.tree.map(lambda a, r=r: float(a[r]), out)
            rows[j] = (site, pairs[j][1], m.l0[j], m.fvu[j], m.dead[j], m.dense[j], o)
    rows = [rows[j] for j in range(len(pairs))]
    print(f"spliced losses in {time.perf_counter() - t0:.0f} s")
    print(f"\nheld-out: {m.tokens} tokens; CE = next-token cross-entropy (nats)")
    print(
        "| site | setting | L0 | FVU | dead | dense | CE clean | CE spliced | CE zero | recovered |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for site, name, l0, fvu, dead, dense, out in rows:
        print(
            f"| {site} | {name} | {l0:.1f} | {fvu:.3f} | {dead:.3f} | {dense:.3f} | "
            f"{float(out.clean):.3f} | {float(out.spliced):.3f} | {float(out.zero):.3f} | "
            f"{float(out.recovered):.3f} |"
        )

    # a few latents of the TopK dictionary at the middle layer: their top held-out tokens
    s_show = 1
    j = pairs.index((s_show, "topk k=32"))
    p = raw(jax.tree.map(lambda a: a[j], state.params), scale[s_show])
    freq = m.frequency[j]
    # latents that fire on 0.2%–2% of tokens: specific enough to read
    cand = np.flatnonzero((freq > 0.002) & (freq < 0.02))[:8]
    top = F.top_activations(
        sm.model, sm.variables, p, F.topk(32), sites[s_show], [jnp.asarray(held)], cand, k=16
    )
    print(f"\ntop held-out tokens of TopK latents at {sites[s_show]} ([token] in context):")
    features = []
    for row, f in enumerate(cand.tolist()):
        shown = []
        for v, e, q in zip(top.values[row], top.example[row], top.position[row]):
            if e < 0 or q == 0 or len(shown) == 5:  # position 0 was left out of training
                continue
            ctx = tok.decode(held[e, max(q - 6, 0) : q].tolist())
            here = tok.decode(held[e, q : q + 1].tolist())
            shown.append(f"{ctx!r}[{here!r}] {v:.1f}")
        print(f"latent {f} (fires on {freq[f]:.2%}): " + " | ".join(shown))
        features.append({"latent": f, "examples": shown})
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return {"rows": rows, "features": features, "info": info}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=30_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    run(a.tokens, a.epochs, a.quick)
