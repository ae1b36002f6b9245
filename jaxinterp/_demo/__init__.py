"""``jaxinterp demo``: trains the reference models and runs every analysis on them.

Each section is a module of this package with ``run(ctx: DemoContext) -> None``; they run in
the order of :data:`SECTIONS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from jaxinterp._demo._context import DemoContext

SECTIONS: tuple[str, ...] = ("models", "attention", "actmax", "interventions", "probes")


def run_demo(
    out: str | Path, *, quick: bool = False, only: Sequence[str] | None = None
) -> DemoContext:
    """Runs the demo sections and writes figures, ``report.md`` and ``report.json`` to ``out``."""
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise ValueError(f"only: unknown sections {unknown}; available: {list(SECTIONS)}")
    ctx = DemoContext(Path(out), quick=quick)
    ctx.out.mkdir(parents=True, exist_ok=True)
    for name in SECTIONS:
        if only and name not in only:
            continue
        importlib.import_module(f"jaxinterp._demo.{name}").run(ctx)
        ctx.write()
    ctx.progress(f"done: {ctx.out / 'report.md'}")
    return ctx
