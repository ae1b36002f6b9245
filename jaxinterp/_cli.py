"""Command line: ``jaxinterp demo --out DIR``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jaxinterp`` command."""
    from jaxinterp._demo import SECTIONS

    parser = argparse.ArgumentParser(prog="jaxinterp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train the reference models and run every analysis")
    demo.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    demo.add_argument("--quick", action="store_true", help="smaller sizes, for a fast check")
    demo.add_argument("--only", nargs="*", choices=SECTIONS, help="run only these sections")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from jaxinterp._demo import run_demo

        run_demo(args.out, quick=args.quick, only=args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
