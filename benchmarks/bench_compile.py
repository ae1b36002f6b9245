"""Benchmark: first-call (compile) time of the decoder's two layouts, and its growth with depth.

``Decoder(cfg)`` builds its blocks in a Python loop (``blocks_{i}``), so XLA compiles one copy
per layer; ``Decoder(cfg, scan_layers=True)`` stacks them in one ``nn.scan`` (``blocks``).

``--part smollm2``: SmolLM2-135M-Instruct (30 layers, ``models.smollm2(scan_layers=...)``), on
``ioi_task(key(1), tokenizer, 8)`` (8 prompt pairs of 14 tokens), metric = mean logit
difference at the last position, each analysis as a user calls it, variables passed as
arguments:

* ``forward``: ``jax.jit(model.apply)(variables, ids)``.
* ``capture``: every block's output (``select="blocks_*"``; stacked: ``"blocks/out"``).
* ``head sweep``: ``patch_sweep`` over the (layer, head) sites of ``attn/z`` of layers 10, 23,
  24, 29 (36 heads, the tests' and quick demo's grid; all 270 with ``--full-sweep``: its
  time is the run, 270 forward passes, not the compilation).
* ``attribution``: ``attribution_patch`` over those 36 and over all 270 heads.

For ``forward`` and ``capture`` the first call is split into trace + lowering
(``jax.jit(f).trace(...).lower()``), XLA compilation (``.compile()``) and the run; for the
sweeps (their programs are built inside the call) the first call and the median of two more.

``--part depth``: the first forward (trace + lower, compile, run) of random Llama configs of
SmolLM2's width (d_model 576, 9 heads, 3 kv heads, d_mlp 1536, vocab 49152) at 30, 60 and 120
layers, in both layouts (weights zeros: the compile time does not depend on their values).

No persistent compilation cache is used. The machine may be shared: the load average is
printed at the start and the end.

Run::

    python benchmarks/bench_compile.py [--part smollm2 depth] [--full-sweep]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _split(f, *args) -> tuple[float, float, float]:
    """(trace + lower, compile, run) seconds of the first call of ``jax.jit(f)(*args)``."""
    t0 = time.perf_counter()
    lowered = jax.jit(f).trace(*args).lower()
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def _first_then(f) -> tuple[float, float]:
    """(first call, median of two more) seconds of ``f()``."""
    t0 = time.perf_counter()
    jax.block_until_ready(f())
    first = time.perf_counter() - t0
    rest = []
    for _ in range(2):
        t0 = time.perf_counter()
        jax.block_until_ready(f())
        rest.append(time.perf_counter() - t0)
    return first, statistics.median(rest)


def part_smollm2(full_sweep: bool) -> list[str]:
    from jaxinterp import models
    from jaxinterp.capture import capture
    from jaxinterp.interventions import attribution_patch, ioi_task, patch_sweep, site_grid

    rows = ["| layout | analysis | trace+lower s | compile s | run s | first call s | next s |"]
    rows.append("| --- | --- | --- | --- | --- | --- | --- |")
    out = {}
    for scan in (False, True):
        m = models.smollm2(scan_layers=scan)
        t = ioi_task(jax.random.key(1), m.tokenizer, 8).task
        n_l, n_h = m.config.n_layers, m.config.n_heads
        name = "stacked" if scan else "unrolled"
        resid = "blocks/out" if scan else "blocks_*"

        def heads(layers, scan=scan, n_h=n_h):
            z = [f"blocks/attn/z[{i}]" if scan else f"blocks_{i}/attn/z" for i in layers]
            return site_grid(z, [(-2, n_h)], ("layer", "head"))

        sites = heads(range(n_l))
        model, v, ids = m.model, m.variables, t.clean

        def cap(v, x, model=model, resid=resid):
            return capture(model, v, select=resid)(x)

        for what, f in (("forward", model.apply), ("capture", cap)):
            lo, co, run = _split(f, v, ids)
            rows.append(f"| {name} | {what} | {lo:.1f} | {co:.1f} | {run:.2f} | "
                        f"{lo + co + run:.1f} | |")  # fmt: skip
            print(rows[-1], flush=True)
        some = heads((10, 23, 24, 29))  # the tests' and the quick demo's grid
        sweeps = [("head sweep, 36 heads", patch_sweep, some)]
        if full_sweep:
            sweeps.append(("head sweep, 270 heads", patch_sweep, sites))
        sweeps += [("attribution, 36 heads", attribution_patch, some),
                   ("attribution, 270 heads", attribution_patch, sites)]  # fmt: skip
        for what, f, grid in sweeps:
            args = (model, v, t.clean, t.corrupted, grid, t.metric)
            first, nxt = _first_then(lambda f=f, args=args: f(*args).normalized)
            rows.append(f"| {name} | {what} | | | | {first:.1f} | {nxt:.2f} |")
            print(rows[-1], flush=True)
        out[scan] = [f(model, v, t.clean, t.corrupted, some, t.metric).normalized
                     for f in (patch_sweep, attribution_patch)]  # fmt: skip
    for what, a, b in zip(("head sweep", "attribution"), out[False], out[True]):
        print(
            f"{what} (36 heads), stacked vs unrolled: max |diff| {float(jnp.abs(a - b).max()):.1e}"
        )
    return rows


def part_depth(depths=(30, 60, 120)) -> list[str]:
    from jaxinterp.models import Decoder, DecoderConfig

    rows = ["| layers | layout | trace+lower s | compile s | run s | first call s |"]
    rows.append("| --- | --- | --- | --- | --- | --- |")
    ids = jnp.asarray(np.arange(14)[None] % 100, jnp.int32)
    for n in depths:
        cfg = DecoderConfig(
            vocab_size=49152, d_model=576, n_layers=n, n_heads=9, n_kv_heads=3, d_head=64,
            d_mlp=1536, max_positions=2048, tie_embeddings=True, rope_theta=1e5,
        )  # fmt: skip
        for scan in (False, True):
            m = Decoder(cfg, scan_layers=scan)
            shapes = jax.eval_shape(m.init, jax.random.key(0), ids)
            v = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            lo, co, run = _split(m.apply, v, ids)
            name = "stacked" if scan else "unrolled"
            rows.append(f"| {n} | {name} | {lo:.1f} | {co:.1f} | {run:.2f} | {lo + co + run:.1f} |")
            print(rows[-1], flush=True)
            del v
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", nargs="+", default=["smollm2", "depth"], choices=["smollm2", "depth"])
    p.add_argument("--full-sweep", action="store_true", help="also patch all 270 heads")
    a = p.parse_args()
    print(f"load average at start: {_load()}; devices {jax.devices()}", flush=True)
    tables = []
    if "smollm2" in a.part:
        tables.append(part_smollm2(a.full_sweep))
    if "depth" in a.part:
        tables.append(part_depth())
    print(f"\nload average at end: {_load()}")
    for rows in tables:
        print("\n" + "\n".join(rows))


if __name__ == "__main__":
    main()
