"""``jaxinterp demo``: trains the reference models and runs every analysis on them.

Each section is a module of this package with ``run(ctx: DemoContext) -> None``; they run in
the order of :data:`SECTIONS`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path

from jaxinterp._demo._context import DemoContext

SECTIONS: tuple[str, ...] = (
    "models",
    "attention",
    "actmax",
    "interventions",
    "probes",
    "features",
    "circuits",
    "smollm2",
)


def run_demo(
    out: str | Path, *, quick: bool = False, only: Sequence[str] | None = None
) -> DemoContext:
    """Runs the demo sections and writes figures, ``report.md`` and ``report.json`` to ``out``.

    Args:
      out: output folder, created if missing.
      quick: smaller sizes (about a minute on 2 CPU cores with a warm compilation cache).
      only: names from :data:`SECTIONS` to run (default: all, in that order).

    Returns:
      The :class:`DemoContext` with the report lines and ``results`` (what ``report.json``
      holds, one dict per section).

    Raises:
      TypeError: ``out`` is not a path, ``only`` is a string instead of a list of names, or
        ``quick`` is not a bool.
      ValueError: ``out`` is an existing file, or ``only`` names an unknown section.
    """
    if not isinstance(out, (str, Path)):
        raise TypeError(f"out: expected a folder path (str or Path), got {type(out).__name__}")
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"out: expected a folder, got the existing file {str(out)!r}")
    if not isinstance(quick, bool):
        raise TypeError(f"quick: expected a bool, got {type(quick).__name__} {quick!r}")
    if isinstance(only, str) or not all(isinstance(s, str) for s in only or ()):
        raise TypeError(f"only: expected a list of section names, got {only!r}")
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
    ctx.progress(
        f"interactive views: {len(ctx.views)} pages linked from {ctx.out / 'index.html'} "
        f"(HTML written in {ctx.view_seconds:.1f} s)"
    )
    ctx.progress(f"done: {ctx.out / 'report.md'}")
    return ctx
