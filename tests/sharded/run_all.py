"""Runs every ``tests/sharded/check_*.py`` in ONE process with 8 fake CPU devices.

``python tests/sharded/run_all.py [--json FILE] [NAME ...]`` sets
``--xla_force_host_platform_device_count=8`` (appended to any ``XLA_FLAGS`` already set, so
``--xla_cpu_max_isa=...`` still applies), imports jax once, then imports each check script
as a module and calls its ``main()``. A script passes when ``main()`` returns ``None`` or 0
without raising and its last printed line is ``ok``. New ``check_*.py`` scripts are picked up
by the glob; each one must keep working standalone (``python tests/sharded/check_x.py``).

One process instead of one per script saves a jax start-up, a model load and the shared
compilations per script. Prints one line per script and exits non-zero if any failed; with
``--json FILE`` it also writes ``{name: {"ok", "seconds", "output"}}`` for tests/test_sharding.py.
"""

from __future__ import annotations

import os
import sys

DEVICES = "--xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {DEVICES}".strip()

import contextlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402

HERE = Path(__file__).resolve().parent


def scripts() -> list[str]:
    """Names of the check scripts next to this file, sorted."""
    return sorted(p.stem for p in HERE.glob("check_*.py"))


def run_one(name: str) -> dict:
    """Imports ``name`` as a module and runs its ``main()``; returns the outcome."""
    out = io.StringIO()
    t0 = time.perf_counter()
    ok = False
    try:
        with contextlib.redirect_stdout(out):
            spec = importlib.util.spec_from_file_location(f"_sharded_{name}", HERE / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            rc = module.main()
        lines = out.getvalue().strip().splitlines()
        ok = rc in (None, 0) and bool(lines) and lines[-1].strip() == "ok"
        if not ok:
            out.write(f"\nmain() returned {rc!r}; the last line printed must be 'ok'\n")
    except BaseException:  # noqa: BLE001 - SystemExit and assertion errors alike fail the script
        out.write(traceback.format_exc())
    return {"ok": ok, "seconds": time.perf_counter() - t0, "output": out.getvalue()[-4000:]}


def main(argv: list[str]) -> int:
    json_path = None
    if argv[:1] == ["--json"]:
        json_path, argv = argv[1], argv[2:]
    if jax.device_count() != 8:
        print(f"expected 8 devices, got {jax.device_count()} (XLA_FLAGS set too late?)")
        return 1
    names = argv or scripts()
    unknown = sorted(set(names) - set(scripts()))
    if unknown:
        print(f"unknown check scripts {unknown}; available: {scripts()}")
        return 2
    results = {}
    for name in names:
        results[name] = run_one(name)
        r = results[name]
        print(f"{name}: {'ok' if r['ok'] else 'FAILED'} ({r['seconds']:.1f} s)", flush=True)
        if not r["ok"]:
            print(r["output"], flush=True)
    if json_path:
        Path(json_path).write_text(json.dumps(results))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
