"""Timing and reporting shared by the benchmark modules.

Every benchmark times a compiled call the same way: one warm-up call (compilation excluded),
then ``repeats`` calls each ended with ``jax.block_until_ready``; the median is reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def times(fn: Callable[[], Any], repeats: int, *, warmup: bool = True) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()``, after one warm-up call.

    ``warmup=False`` skips the warm-up, for a caller that has already made that call itself
    (to keep its result).
    """
    import jax

    if warmup:
        jax.block_until_ready(fn())  # compile
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return out


def median_time(fn: Callable[[], Any], repeats: int, *, warmup: bool = True) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one warm-up call, by default)."""
    return statistics.median(times(fn, repeats, warmup=warmup))


def print_table(results: dict[str, float]) -> None:
    """Prints a two-column ``measure  value`` table of a benchmark's flat results."""
    print(f"{'measure':<28}{'value':>14}")
    for k, v in results.items():
        print(f"{k:<28}{v:>14.4g}")
