"""Peak memory of a streamed analysis stays flat as the dataset grows 10×.

Each measurement runs in a fresh subprocess (peak RSS is per process): per-unit activation
statistics (mean and max of the digits MLP's ``act_1``) over ``n`` synthetic inputs, generated
chunk by chunk so the host never holds the dataset either. The baseline materialises the whole
dataset and captures it in one call. Reported: peak RSS at ``n`` and ``10 n`` and their ratio,
and on an accelerator also the device's peak bytes in use.
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys
def peak_kb():
    # VmHWM is this process's own high-water mark; ru_maxrss can carry over a parent's
    # (it survives fork + exec), which would hide the child's own peak.
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import numpy as np, jax, jax.numpy as jnp
from jaxinterp import models
from jaxinterp.capture import capture
from jaxinterp.sharding import stream_reduce
n, mode, chunk = int(sys.argv[1]), sys.argv[2], 4096
mlp = models.digits_mlp()
f = capture(mlp.model, mlp.variables, select="act_1")
def chunks():
    for i, start in enumerate(range(0, n, chunk)):
        rows = min(chunk, n - start)
        yield np.random.default_rng(i).random((rows, 64), dtype=np.float32)
def step(state, x, valid):
    a = f(x)[1]["act_1"]
    s, m = state
    top = jnp.where(valid[:, None], a, -1.0).max(0)
    return s + (a * valid[:, None]).sum(0), jnp.maximum(m, top)
base = peak_kb()
if mode == "stream":
    s, m = stream_reduce(step, (jnp.zeros(128), jnp.full(128, -1.0)), chunks(), chunk_size=chunk)
else:
    x = jnp.asarray(np.concatenate(list(chunks())))
    a = jax.jit(lambda x: f(x)[1]["act_1"])(x)
    s, m = a.sum(0), a.max(0)
jax.block_until_ready((s, m))
peak = peak_kb()
res = {"peak_mb": peak / 1024, "growth_mb": (peak - base) / 1024, "mean0": float(s[0] / n)}
stats = jax.devices()[0].memory_stats() or {}
if "peak_bytes_in_use" in stats:  # accelerators: the device's own peak
    res["device_peak_mb"] = stats["peak_bytes_in_use"] / 2**20
print(json.dumps(res))
"""


def _measure(n: int, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), mode], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> dict:
    """Peak RSS (MiB) streamed vs materialised at n and 10 n; ratios 10n / n."""
    n = 40_000 if quick else 200_000
    res = {}
    for mode in ("stream", "full"):
        small, big = _measure(n, mode), _measure(10 * n, mode)
        res[f"{mode}_peak_mb_n"] = small["peak_mb"]
        res[f"{mode}_peak_mb_10n"] = big["peak_mb"]
        res[f"{mode}_peak_ratio_10n_vs_n"] = big["peak_mb"] / small["peak_mb"]
        res[f"{mode}_growth_ratio_10n_vs_n"] = big["growth_mb"] / max(small["growth_mb"], 1.0)
        if "device_peak_mb" in small:
            res[f"{mode}_device_peak_mb_n"] = small["device_peak_mb"]
            res[f"{mode}_device_peak_mb_10n"] = big["device_peak_mb"]
            res[f"{mode}_device_peak_ratio_10n_vs_n"] = (
                big["device_peak_mb"] / small["device_peak_mb"]
            )
    res["n"] = n
    print(f"{'mode':<8} {'peak MiB @n':>12} {'peak MiB @10n':>14} {'ratio':>8}")
    for mode in ("stream", "full"):
        print(
            f"{mode:<8} {res[f'{mode}_peak_mb_n']:>12.0f} {res[f'{mode}_peak_mb_10n']:>14.0f} "
            f"{res[f'{mode}_peak_ratio_10n_vs_n']:>8.2f}"
        )
    return res


if __name__ == "__main__":
    run(quick="--quick" in sys.argv)
