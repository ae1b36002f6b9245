"""Benchmark: EAP and EAP-IG over every edge vs exact edge activation patching.

Setup: two models, a batch of clean sequences and corrupted copies, metric = logit difference
at the read-out position:

* ``offset``: the offset-3 reference transformer (2 layers × 4 heads, d_model 64, seq 16):
  110 edges; the offset task (the token 3 before position 8 replaced);
* ``decoder``: a random Llama-family :class:`jaxinterp.models.Decoder` (4 layers × 8 heads,
  4 key/value heads, d_model 128, seq 16): 612 edges; two tokens replaced.

Timed per model, each as one ``jax.jit`` with the weights and inputs as arguments:
``eap`` (2 forwards + 1 backward), ``eap_ig`` (``steps=10``: 2 forwards + 10 vmapped
backwards), ``exact`` (:func:`~jaxinterp.circuits.edge_patching`, one forward per edge,
vmapped in chunks of 32). Reported: compile seconds (``lower().compile()``), the median run
time, and the ratios ``exact / eap`` and ``exact / eap_ig`` both per run and with compilation
counted (compile + one run each), plus the Spearman rank correlation of EAP and EAP-IG with
the exact scores over all edges (logit difference, and the answer's probability for the
offset model, a metric that saturates).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import median_time, print_table
from scipy.stats import spearmanr

from jaxinterp import circuits, models
from jaxinterp.interventions import logit_diff, offset_patching_task


def _setups(quick: bool):
    tf = models.offset_transformer()
    cfg = tf.model.cfg
    task = offset_patching_task(jax.random.key(0), 16, cfg, position=8)
    b = jnp.arange(16)

    def prob(lg):
        return jax.nn.softmax(lg[b, task.position])[b, task.answer].mean()

    yield (
        "offset",
        tf.model,
        tf.variables,
        circuits.edge_graph(circuits.transformer_layout(cfg)),
        task.clean,
        task.corrupted,
        {"logit_diff": task.metric, "prob": prob},
    )
    if quick:
        return
    dcfg = models.DecoderConfig(
        vocab_size=256, d_model=128, n_layers=4, n_heads=8, n_kv_heads=4, d_head=16, d_mlp=256
    )
    model = models.Decoder(dcfg)
    clean = jax.random.randint(jax.random.key(1), (8, 16), 0, 256)
    corrupted = clean.at[:, 5].set((clean[:, 5] + 1) % 256).at[:, 9].add(3) % 256
    variables = model.init(jax.random.key(2), clean)

    def metric(lg):
        return logit_diff(lg, clean[:, 5], corrupted[:, 5], -1)

    yield (
        "decoder",
        model,
        variables,
        circuits.edge_graph(circuits.decoder_layout(dcfg)),
        clean,
        corrupted,
        {"logit_diff": metric},
    )


def _measure(model, variables, graph, clean, corrupted, metric, steps, chunk, repeats, timed):
    """Scores, compile seconds and median run seconds of the three methods."""
    fns = {
        "eap": lambda v, c, x: circuits.eap(model, v, graph, c, x, metric),
        "eap_ig": lambda v, c, x: circuits.eap_ig(model, v, graph, c, x, metric, steps=steps),
        "exact": lambda v, c, x: circuits.edge_patching(model, v, graph, c, x, metric, chunk=chunk),
    }
    scores, comp, runs = {}, {}, {}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        compiled = jax.jit(fn).lower(variables, clean, corrupted).compile()
        comp[k] = time.perf_counter() - t0
        scores[k] = np.asarray(compiled(variables, clean, corrupted).scores)
        if timed:
            args = (variables, clean, corrupted)
            runs[k] = median_time(lambda c=compiled, a=args: c(*a), repeats)
    return scores, comp, runs


def run(quick: bool = False, steps: int = 10, chunk: int = 32) -> dict:
    """Runs the benchmark and returns a flat dict of numbers (seconds, ratios, correlations)."""
    repeats = 3 if quick else 5
    out: dict[str, float] = {}
    for name, model, variables, graph, clean, corrupted, metrics in _setups(quick):
        out[f"{name}_edges"] = len(graph.names)
        for mname, metric in metrics.items():
            timed = mname == "logit_diff"
            scores, comp, runs = _measure(
                model, variables, graph, clean, corrupted, metric, steps, chunk, repeats, timed
            )
            for k in ("eap", "eap_ig"):
                rho = spearmanr(scores[k], scores["exact"])[0]
                out[f"{name}_{mname}_spearman_{k}"] = float(rho)
            if not timed:
                continue
            for k in comp:
                out[f"{name}_{k}_compile_s"] = comp[k]
                out[f"{name}_{k}_run_s"] = runs[k]
            for k in ("eap", "eap_ig"):
                out[f"{name}_exact_over_{k}"] = runs["exact"] / runs[k]
                total = (comp["exact"] + runs["exact"]) / (comp[k] + runs[k])
                out[f"{name}_exact_over_{k}_with_compile"] = total
    print_table(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args()
    run(args.quick, args.steps, args.chunk)
