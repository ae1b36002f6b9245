"""Benchmark: a (layer × head × position) patch sweep in one jit vs a loop of patched forwards.

Setup: the offset-3 reference transformer (2 layers × 4 heads, seq 16, d_model 64), a batch of
clean sequences and corrupted copies (the token 3 before a per-sequence read-out position
replaced), metric = logit difference at the read-out position. Sites: every (layer, head,
position) of the per-head attention results, 2 × 4 × 16 = 128 sites.

* ``sweep``: ``patch_sweep`` over all sites, the whole call under one ``jax.jit``
  (one vmap over sites);
* ``loop``: what one writes without it: for each site, a jitted forward pass on the corrupted
  batch with ``intervene(..., {layer path: replace(clean, at={position, head})})`` (compiled
  once per layer, head and position traced), called in a Python loop over the same 128 sites;
  the clean activations are captured once, outside the loop. This is the strongest loop one
  can write: no recompilation, only per-call dispatch is saved by the sweep;
* ``eager``: the loop as a hook-based library runs it: each site's patched forward executed
  op by op (no ``jit``), as ``run_with_hooks`` in a PyTorch-style library would.

All compute the same 128 metric values (checked). Target: ``speedup_vs_loop >= 10``; both
ratios are reported (``speedup_vs_loop`` against the jitted loop, ``speedup_vs_eager_loop``).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import median_time, print_table

from jaxinterp import interventions as iv
from jaxinterp import models


def run(quick: bool = False, batch: int = 16, chunk_size: int | None = -1) -> dict:
    """Runs the benchmark and returns a flat dict of numbers (seconds and ratios)."""
    tf = models.offset_transformer()
    cfg = tf.model.cfg
    repeats = 3 if quick else 7
    task = iv.offset_patching_task(jax.random.key(0), batch, cfg, offset=3)
    clean, corrupted, metric = task.clean, task.corrupted, task.metric
    sites = iv.head_position_sites(cfg.n_layers, cfg.n_heads, cfg.seq_len)

    if chunk_size == -1:
        chunk_size = max(1, 32 // batch) if jax.default_backend() == "cpu" else None
    sweep = jax.jit(
        lambda c, x: (
            iv.patch_sweep(
                tf.model, tf.variables, c, x, sites, metric, chunk_size=chunk_size
            ).patched
        )
    )
    t_sweep = median_time(lambda: sweep(clean, corrupted), repeats)

    _, clean_acts = jax.jit(iv.capture_sites(tf.model, tf.variables, sites.paths))(clean)

    def make_step(path):
        @jax.jit
        def step(x, src, head, position):
            edit = iv.replace(src, at={-3: position, -2: head})
            return metric(iv.intervene(tf.model, tf.variables, {path: edit})(x))

        return step

    steps = {p: make_step(p) for p in sites.paths}
    layer, index = np.asarray(sites.layer), np.asarray(sites.index)
    site_list = [
        (sites.paths[layer[s]], jnp.int32(index[s, 0]), jnp.int32(index[s, 1]))
        for s in range(layer.shape[0])
    ]

    def loop():
        return [steps[p](corrupted, clean_acts[p], h, t) for p, h, t in site_list]

    t_loop = median_time(loop, repeats)

    def eager_site(p, h, t):
        edit = iv.replace(clean_acts[p], at={-3: t, -2: h})
        return metric(iv.intervene(tf.model, tf.variables, {p: edit})(corrupted))

    n_eager = 16 if quick else len(site_list)
    with jax.disable_jit():
        jax.block_until_ready(eager_site(*site_list[0]))
        t0 = time.perf_counter()
        eager_vals = [jax.block_until_ready(eager_site(*site)) for site in site_list[:n_eager]]
        t_eager = (time.perf_counter() - t0) * len(site_list) / n_eager
    np.testing.assert_allclose(
        np.asarray(loop()), np.asarray(sweep(clean, corrupted)), rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(eager_vals), np.asarray(sweep(clean, corrupted))[:n_eager], rtol=1e-3, atol=1e-3
    )
    out = {
        "sites": float(layer.shape[0]),
        "batch": float(batch),
        "sweep_s": t_sweep,
        "loop_s": t_loop,
        "loop_per_site_ms": 1e3 * t_loop / layer.shape[0],
        "eager_loop_s": t_eager,
        "speedup_vs_loop": t_loop / t_sweep,
        "speedup_vs_eager_loop": t_eager / t_sweep,
    }
    print_table(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=-1, help="-1: auto; 0: no chunking")
    args = parser.parse_args()
    run(args.quick, args.batch, args.chunk or None)
