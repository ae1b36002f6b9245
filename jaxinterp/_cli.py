"""Command line: ``jaxinterp demo --out DIR``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

# Compilations that take less than this are not worth a disk entry (the demo's quick run
# compiles ~580 programs; the ~100 above 0.1 s hold ~3/4 of the compile time).
MIN_COMPILE_SECONDS = 0.1
# With a size cap jax keeps the cache as an LRU guarded by a file lock (needs ``filelock``), so
# concurrent writers are safe. Every writer of one folder must agree: entries written without
# the cap lack the access-time files the LRU reads (jax then warns and skips writes).
MAX_CACHE_BYTES = 4 * 2**30


def use_compile_cache(path: str | Path | None) -> Path | None:
    """Turns on JAX's persistent compilation cache in ``path`` for this process.

    A second ``jaxinterp demo`` then loads its compiled programs from disk instead of
    compiling them again (about 3× faster on 2 CPU cores). Entries are keyed by the program,
    the jax version and ``XLA_FLAGS``, so a different CPU target compiles anew. A cache the
    user configured (``JAX_COMPILATION_CACHE_DIR``) is left as it is.

    Args:
      path: the cache folder, or ``None`` to leave the cache off.

    Returns:
      The folder in use, or ``None`` when this call changed nothing.

    Raises:
      TypeError: ``path`` is neither ``None``, a ``str`` nor a ``Path``.

    >>> use_compile_cache(None) is None
    True
    """
    if path is not None and not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a folder path (str or Path), got {type(path).__name__}")
    if path is None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return None
    import jax

    path = Path(path).expanduser()
    jax.config.update("jax_compilation_cache_dir", str(path))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ and find_spec("filelock"):
        jax.config.update("jax_compilation_cache_max_size", MAX_CACHE_BYTES)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxinterp`` command.

    ``jaxinterp demo [--quick] [--only SECTION ...] [--out DIR] [--compile-cache DIR|none]``
    trains (or loads) the reference models, runs every analysis and writes ``report.md``,
    ``report.json``, the figures and the interactive views (``jaxinterp.viz`` pages, linked
    from ``index.html``) to ``DIR``.

    Args:
      argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
      The exit status, 0. Bad arguments exit through ``argparse`` (status 2).
    """
    from jaxinterp._demo import SECTIONS

    parser = argparse.ArgumentParser(prog="jaxinterp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the reference models and run every analysis")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="smaller sizes, for a fast check")
    demo.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    demo.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="persistent XLA compilation cache (default: the model cache folder's xla/; "
        "'none' turns it off; JAX_COMPILATION_CACHE_DIR, if set, wins)",
    )
    args = parser.parse_args(argv)
    if args.command == "demo":
        from jaxinterp._demo import run_demo
        from jaxinterp.models import cache_dir

        cache = args.compile_cache
        if cache is None:
            cache = cache_dir() / "xla"
        if Path(args.out).exists() and not Path(args.out).is_dir():
            parser.error(f"--out: expected a folder, got the existing file {args.out!r}")
        use_compile_cache(None if str(cache).lower() == "none" else cache)
        run_demo(args.out, quick=args.quick, only=args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
