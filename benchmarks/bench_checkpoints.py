"""Benchmark: one analysis over a stack of checkpoints, one vmapped call vs a Python loop.

The analysis is :func:`jaxinterp.circuits._toys.induction_metrics` (a capture of every
layer's attention probabilities, induction scores per head, in-context loss) on the
checkpoints of an attention-only transformer trained on repeated sequences
(:func:`~jaxinterp.circuits._toys.train_induction_checkpoints`, 50 checkpoints). Three ways:

* ``over_checkpoints``: ``jit(vmap(fn))`` over the stack, one program; and
  ``over_checkpoints(..., chunk_size=1)``, the same program as a ``lax.map`` (a scan over
  checkpoints, no vmap: on CPU, XLA runs the vmapped matmuls with per-checkpoint weights
  several times slower than one checkpoint at a time);
* ``loop_jit``: ``jax.jit(fn)`` called once per checkpoint (the variables passed as
  arguments, so it compiles once and dispatches ``n`` times);
* ``loop_closure``: the common pattern ``jax.jit(lambda t: fn(variables_i, t))`` per
  checkpoint, which compiles once per checkpoint.

Each is timed end to end with its compilation (``*_first``: a fresh function, what a user
pays once) and warm (``*_warm``: median of repeats). Also reported: where the phase change is
(the checkpoint of the steepest in-context-loss drop and of the steepest induction-score rise).

    python benchmarks/bench_checkpoints.py [--quick]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import jax
import numpy as np
from _timing import median_time, print_table

from jaxinterp.circuits import over_checkpoints
from jaxinterp.circuits._toys import (
    INDUCTION_SIZES,
    induction_metrics,
    repeated_batch,
    train_induction_checkpoints,
)


def _first(fn) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns a flat dict of seconds and ratios."""
    kw = INDUCTION_SIZES[bool(quick)]
    t0 = time.perf_counter()
    tr = train_induction_checkpoints(jax.random.key(0), **kw)
    jax.block_until_ready(tr.stacked)
    res: dict[str, float] = {"train_s": time.perf_counter() - t0}
    n = kw["n_checkpoints"]
    toks = repeated_batch(jax.random.key(9), 32 if quick else 64, tr.half, tr.model.vocab)
    cks = [jax.tree.map(lambda x, i=i: x[i], tr.stacked) for i in range(n)]
    jax.block_until_ready(cks)
    repeats = 3 if quick else 5

    def vmapped():
        # a new function object: over_checkpoints compiles afresh (compile time counted)
        return over_checkpoints(partial(induction_metrics, tr.model), tr.stacked, toks)

    fn = partial(induction_metrics, tr.model)  # one object: compiled once, then reused
    res["over_checkpoints_first_s"] = _first(vmapped)
    res["over_checkpoints_warm_s"] = median_time(
        lambda: over_checkpoints(fn, tr.stacked, toks), repeats
    )

    # the same program as a lax.map (scan) over checkpoints: one call, no vmap
    res["over_checkpoints_scan_first_s"] = _first(
        lambda: over_checkpoints(
            partial(induction_metrics, tr.model), tr.stacked, toks, chunk_size=1
        )
    )
    res["over_checkpoints_scan_warm_s"] = median_time(
        lambda: over_checkpoints(fn, tr.stacked, toks, chunk_size=1), repeats
    )

    def loop_jit(f):
        return [f(v, toks) for v in cks]

    res["loop_jit_first_s"] = _first(
        lambda: loop_jit(jax.jit(partial(induction_metrics, tr.model)))
    )
    jfn = jax.jit(fn)
    res["loop_jit_warm_s"] = median_time(lambda: loop_jit(jfn), repeats)

    def loop_closure():
        out = []
        for v in cks:
            out.append(jax.jit(lambda t, v=v: induction_metrics(tr.model, v, t))(toks))
        return out

    res["loop_closure_first_s"] = _first(loop_closure)
    res["ratio_loop_jit_first"] = res["loop_jit_first_s"] / res["over_checkpoints_first_s"]
    res["ratio_loop_jit_warm"] = res["loop_jit_warm_s"] / res["over_checkpoints_warm_s"]
    res["ratio_loop_jit_first_vs_scan"] = (
        res["loop_jit_first_s"] / res["over_checkpoints_scan_first_s"]
    )
    res["ratio_loop_jit_warm_vs_scan"] = (
        res["loop_jit_warm_s"] / res["over_checkpoints_scan_warm_s"]
    )
    res["ratio_loop_closure_first"] = res["loop_closure_first_s"] / res["over_checkpoints_first_s"]

    out = over_checkpoints(fn, tr.stacked, toks)
    icl = np.asarray(out["icl_loss"])
    ind = np.asarray(out["induction"]).reshape(n, -1).max(-1)
    res["n_checkpoints"] = float(n)
    res["phase_change_loss_ckpt"] = float(np.argmin(np.diff(icl)) + 1)
    res["phase_change_induction_ckpt"] = float(np.argmax(np.diff(ind)) + 1)
    res["icl_loss_first"], res["icl_loss_last"] = float(icl[0]), float(icl[-1])
    res["induction_first"], res["induction_last"] = float(ind[0]), float(ind[-1])
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    print_table(run(ap.parse_args().quick))
