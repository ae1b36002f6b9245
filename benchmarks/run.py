"""Runs every benchmark, prints one table of ratios against the baselines and writes JSON.

Usage::

    python benchmarks/run.py                 # all benchmarks, full sizes
    python benchmarks/run.py --quick         # small sizes (a smoke run)
    python benchmarks/run.py --only actmax probes --json bench_out/results.json

Each ``benchmarks/bench_<name>.py`` exposes ``run(quick: bool = False) -> dict`` and times our
call and its baseline side by side in this one process (compile excluded, median of repeats).

On a GPU: install the CUDA build of jax (``pip install -U "jax[cuda12]"``) and run the same
command; ``jax.devices()`` then lists the GPU and every benchmark runs there unchanged. The
table names the backend and device kind so CPU and GPU results are never mixed up.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load(path: Path):
    if str(HERE) not in sys.path:  # the bench modules import their shared helpers (_timing)
        sys.path.insert(0, str(HERE))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    """Runs the selected benchmarks; returns 1 if any of them raised."""
    import jax

    benches = {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--only", nargs="*", choices=sorted(benches), help="benchmarks to run")
    ap.add_argument("--json", default="bench_out/results.json", help="where to write results")
    args = ap.parse_args(argv)

    dev = jax.devices()[0]
    meta = {
        "backend": jax.default_backend(),
        "device": getattr(dev, "device_kind", str(dev)),
        "n_devices": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
    }
    results: dict[str, dict] = {}
    failed = False
    for name, path in benches.items():
        if args.only and name not in args.only:
            continue
        print(f"--- {name}", flush=True)
        t0 = time.perf_counter()
        try:
            results[name] = _load(path).run(quick=args.quick)
        except Exception:  # report and carry on with the other benchmarks
            traceback.print_exc()
            results[name] = {"error": traceback.format_exc(limit=3)}
            failed = True
        results[name]["wall_s"] = time.perf_counter() - t0

    print(f"\n{meta['backend']} / {meta['device']} × {meta['n_devices']}, jax {meta['jax']}")
    print(f"{'benchmark':<14} {'metric':<40} {'value':>12}")
    for name, res in results.items():
        for key, val in res.items():
            if isinstance(val, (int, float)) and (
                "ratio" in key or "speedup" in key or "frac" in key or key.endswith("_pp")
            ):
                print(f"{name:<14} {key:<40} {val:>12.3f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2, default=str))
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
