"""Benchmark: ``actmax.maximize`` side by side with Lucent (torch-lucent, PyTorch CPU).

The README job: the digits CNN, the 64 units of ``act_2``, pixel parameterization of one
8×8×1 image per unit (sigmoid, sd 0.01), 256 Adam steps at lr 0.05, pad 1 (value 0.5) then a
random 9×9 crop (jitter 1), minus ``0.01 * total_variation``. The same trained weights are
loaded into a PyTorch port of the CNN (checked: same logits to 1e-4). Both sides run on the
same ``threads`` CPU cores (default 1, as in issue 13): the process is pinned to them with
``os.sched_setaffinity`` (the JAX subprocess inherits it), ``torch.set_num_threads(threads)``,
and for one thread XLA's Eigen pool is switched off. (Unpinned, 2 torch threads on a busy
2-core machine spin-wait: 0.18 s per step instead of 0.011 s.)

* ``jax_first_call_s``: a fresh Python process, one ``maximize`` call as the README writes it,
  including tracing and compilation (no persistent compilation cache), after model loading;
* ``jax_second_call_s``: the same call again in that process (the compiled program is reused);
* ``jax_first_call_persistent_cache_s``: the first call of a second fresh process that finds
  the program in JAX's persistent compilation cache written by the first;
* ``jax_compile_s``: ``jax.jit(job).lower(...).compile()`` alone, in that process;
* ``lucent_batched_s``: ``lucent.optvis.render.render_vis`` with one parameterization holding the
  64 images and one objective summing ``channel("act_2", b, batch=b)`` over them (Lucent's
  fast path);
* ``lucent_loop_s``: ``render_vis`` once per unit (the way Lucent is usually called), measured on
  ``loop_units`` units and scaled to 64;
* ``*_value_*``: the ``act_2`` activation reached per unit, evaluated on the final images
  without transforms (same objective on both sides); ``units_jax_ge_lucent`` counts units where
  jaxinterp reaches at least Lucent's batched value (within 1e-3 relative).

Lucent's own transforms need image sizes that keep the dense head's input (a random crop is
not among them), so both sides use the same two transforms written for each framework.

Needs the ``bench`` extra (``pip install "jaxinterp[bench]"`` or ``torch`` and
``torch-lucent --no-deps`` plus its light dependencies).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from _timing import print_table

from jaxinterp import models

STEPS, UNITS, LR, TV = 256, 64, 0.05, 0.01

_JAX_JOB = r"""
import json, sys, time
import jax, jax.numpy as jnp
from jaxinterp import actmax, models
cnn = models.digits_cnn()
def job(key):
    return actmax.maximize(
        key, cnn.model, cnn.variables, lambda unit: actmax.neuron("act_2", unit),
        jnp.arange(64), param=actmax.pixel((8, 8, 1)), steps=256,
        transforms=[actmax.pad(1), actmax.jitter(1)],
        regularizers=[0.01 * actmax.total_variation()],
    )
t = time.perf_counter(); r = job(jax.random.key(0)); jax.block_until_ready(r.values)
first = time.perf_counter() - t
t = time.perf_counter(); r = job(jax.random.key(1)); jax.block_until_ready(r.values)
second = time.perf_counter() - t
low = jax.jit(job).lower(jax.random.key(2))
t = time.perf_counter(); low.compile(); compile_s = time.perf_counter() - t
print(json.dumps({"first": first, "second": second, "compile": compile_s,
                  "inputs": jax.device_get(r.inputs).tolist(),
                  "values": jax.device_get(r.values).tolist()}))
"""


def _torch_cnn(variables):
    """The digits CNN in PyTorch (NCHW), with the JAX weights."""
    import torch
    from torch import nn

    p = variables["params"]

    class CNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_0 = nn.Conv2d(1, 8, 3, padding=1)
            self.act_0 = nn.ReLU()
            self.conv_1 = nn.Conv2d(8, 16, 3, padding=1)
            self.act_1 = nn.ReLU()
            self.pool = nn.AvgPool2d(2)
            self.dense = nn.Linear(256, 64)
            self.act_2 = nn.ReLU()
            self.logits = nn.Linear(64, 10)

        def forward(self, x):
            x = self.act_1(self.conv_1(self.act_0(self.conv_0(x))))
            x = self.pool(x).permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten as NHWC
            return self.logits(self.act_2(self.dense(x)))

    m = CNN()
    t = lambda a: torch.tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
    with torch.no_grad():
        for name in ("conv_0", "conv_1"):
            getattr(m, name).weight.copy_(t(p[name]["kernel"]).permute(3, 2, 0, 1))
            getattr(m, name).bias.copy_(t(p[name]["bias"]))
        for name in ("dense", "logits"):
            getattr(m, name).weight.copy_(t(p[name]["kernel"]).T)
            getattr(m, name).bias.copy_(t(p[name]["bias"]))
    return m.eval()


def _torch_transforms():
    """pad 1 (value 0.5), then a random (h - 1) x (w - 1) crop: actmax.pad(1), actmax.jitter(1)."""
    import torch

    def pad(x):
        return torch.nn.functional.pad(x, (1, 1, 1, 1), value=0.5)

    def jitter(x):
        oy, ox = np.random.randint(0, 2, size=2)
        return x[:, :, oy : oy + x.shape[2] - 1, ox : ox + x.shape[3] - 1]

    return [pad, jitter]


def _lucent_run(model, units, batched: bool):
    """Lucent render_vis on ``units``: one batched call, or one call per unit. Returns images
    ``[unit, 8, 8]`` and the seconds it took."""
    import torch

    objectives, param, render = _import_lucent()

    def tv(b):
        @objectives.wrap_objective()
        def total_variation(layer="input"):
            def inner(m):
                x = m(layer)[b] if b is not None else m(layer)
                return (x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (
                    x[..., :, 1:] - x[..., :, :-1]
                ).abs().sum()

            return inner

        return total_variation()

    def run(objective, batch):
        param_f = lambda: param.image(8, batch=batch, channels=1, fft=False, decorrelate=False)  # noqa: E731
        out = render.render_vis(
            model, objective, param_f,
            optimizer=lambda ps: torch.optim.Adam(ps, lr=LR),
            transforms=_torch_transforms(), thresholds=(STEPS,), preprocess=False,
            progress=False, show_image=False, fixed_image_size=0,  # 0: no upsampling
        )  # fmt: skip
        return np.asarray(out[-1])[..., 0]  # [batch, 8, 8]

    t = time.perf_counter()
    if batched:
        obj = sum(
            objectives.channel("act_2", int(u), batch=b) + TV * tv(b) for b, u in enumerate(units)
        )
        images = run(obj, len(units))
    else:
        images = np.concatenate(
            [run(objectives.channel("act_2", int(u)) + TV * tv(None), 1) for u in units]
        )
    return images, time.perf_counter() - t


def _act2(model, images):
    import torch

    acts = {}
    h = model.act_2.register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        model(torch.tensor(images[:, None], dtype=torch.float32))
    h.remove()
    return acts["a"].numpy()


def _import_lucent():
    """Imports lucent.optvis. Lucent imports ``torchvision.transforms.Normalize`` at module load
    for its ImageNet preprocessing, which this benchmark does not use (``preprocess=False``);
    without a torchvision build matching the installed torch, a stand-in that refuses to be
    called takes its place."""
    try:
        import torchvision.transforms  # noqa: F401
    except (ImportError, RuntimeError):
        import types

        def normalize(*args, **kwargs):
            raise NotImplementedError("torchvision is not installed; preprocess=False only")

        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        tv.transforms.Normalize = normalize
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tv.transforms
    from lucent.optvis import objectives, param, render

    return objectives, param, render


def run(quick: bool = False, threads: int = 1) -> dict:
    """Runs the benchmark and returns a flat dict of numbers (seconds and ratios)."""
    try:
        import torch

        _import_lucent()
    except ImportError as err:
        raise ImportError(
            f"bench_lucent needs the bench extra (torch, torch-lucent): {err}"
        ) from None
    cores = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cores)
    torch.set_num_threads(len(cores))
    cnn = models.digits_cnn()
    model = _torch_cnn(cnn.variables)
    x = np.asarray(models.load_digits().test.x[:16], np.float32)
    ref = np.asarray(cnn.model.apply(cnn.variables, x))
    with torch.no_grad():
        got = model(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    if len(cores) == 1:
        flags = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    # two fresh processes sharing a new persistent compilation cache: the first compiles
    # (cold), the second loads the program from the cache (what a repeated script sees)
    with tempfile.TemporaryDirectory() as cache:
        env["JAX_COMPILATION_CACHE_DIR"] = cache
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
        runs = []
        for _ in range(2):
            proc = subprocess.run(
                [sys.executable, "-c", _JAX_JOB], capture_output=True, text=True, env=env,
                check=True,
            )  # fmt: skip
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    jx, warm = runs
    # every value below is the torch port's act_2 on the final 8x8 images, no transforms
    # (maximize's own values are on the 9x9 edge-padded image the model saw; reported apart)
    jax_vals = np.diagonal(_act2(model, np.asarray(jx["inputs"])[:, 0, ..., 0]))

    units = np.arange(UNITS)
    batched_imgs, t_batched = _lucent_run(model, units, batched=True)
    lucent_vals = np.diagonal(_act2(model, batched_imgs))
    loop_units = 4 if quick else 16
    _, t_loop_part = _lucent_run(model, units[:loop_units], batched=False)
    t_loop = t_loop_part * UNITS / loop_units

    total_jax = jx["first"]
    out = {
        "threads": len(cores),
        "jax_first_call_s": jx["first"],
        "jax_first_call_persistent_cache_s": warm["first"],
        "jax_second_call_s": jx["second"],
        "jax_compile_s": jx["compile"],
        "lucent_batched_s": t_batched,
        "lucent_loop_s": t_loop,
        "loop_units": loop_units,
        "speedup_first_call_vs_lucent_batched": t_batched / total_jax,
        "speedup_first_call_vs_lucent_loop": t_loop / total_jax,
        "speedup_second_call_vs_lucent_batched": t_batched / jx["second"],
        "jax_value_mean": float(jax_vals.mean()),
        "jax_value_own_mean_9x9": float(np.mean(jx["values"])),
        "lucent_value_mean": float(lucent_vals.mean()),
        "units_jax_ge_lucent": int((jax_vals >= lucent_vals - 1e-3 * np.abs(lucent_vals)).sum()),
        "units_at_zero_jax": int((jax_vals <= 0).sum()),
        "units_at_zero_lucent": int((lucent_vals <= 0).sum()),
    }
    print_table(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    run(args.quick, args.threads)
