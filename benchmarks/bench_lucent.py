"""Benchmark: ``actmax.maximize`` side by side with Lucent (torch-lucent, PyTorch CPU).

Two jobs, each run by both libraries in this one benchmark run (on a shared machine the load
hits both sides alike; every time is a median of repeats where the job is repeated):

**The README job**: the digits CNN, the 64 units of ``act_2``, pixel parameterization of one
8×8×1 image per unit (sigmoid, sd 0.01), 256 Adam steps at lr 0.05, pad 1 (value 0.5) then a
random 9×9 crop (jitter 1), minus ``0.01 * total_variation``. The same trained weights are
loaded into a PyTorch port of the CNN (checked: same logits to 1e-4).

**The bigger convnet**: random weights, 4 conv layers (3→64 stride 2, 64→64 stride 2, 64→128
stride 2, 128→128), ReLU after each, input 64×64×3; the 128 channels of the last ReLU (mean
over positions), one image per channel, Fourier parameterization with colour decorrelation
(Lucid's), 128 Adam steps at 0.05, pad 2 (0.5) then a random 64×64 crop (jitter 4).

Both sides do the same work: same steps, image size, parameterization (sigmoid pixels /
1/f Fourier with the same colour matrix and sd 0.01), optimizer, transforms (written once per
framework, since Lucent's own transforms cannot express the random crop), regularizer, and
objective; only the random draws differ. Lucent's loop is its usual call, ``render_vis`` once
per unit with the same 256 steps (not Lucent's default 512), timed on ``loop_units`` units and
scaled to 64.

Both sides run on the same ``threads`` CPU cores (default 1): the process is pinned with
``os.sched_setaffinity`` (the JAX subprocesses inherit it), ``torch.set_num_threads(threads)``,
and for one thread XLA's Eigen pool is switched off.

* ``jax_first_call_s``: a fresh Python process, one ``maximize`` call as the README writes it,
  including tracing and compilation (no persistent cache), after model loading;
* ``jax_second_call_s``: the same call again in that process (median of 3; compiled program
  reused);
* ``jax_first_call_persistent_cache_s``: the first call of a second fresh process that finds
  the program in JAX's persistent compilation cache written by the first;
* ``jax_first_call_cpu_s``: that first call's process CPU seconds (less sensitive to load);
  ``jax_first_call_lower_s`` / ``jax_first_call_compile_s``: the wall seconds of lowering to
  MLIR and of XLA compilation within it (JAX's own compile-time events);
* ``jax_compile_s`` / ``jax_compile_cpu_s``: ``jax.jit(job, compiler_options=<maximize's CPU
  options>).lower(key).compile()`` alone (wall and process CPU seconds). Under ``jit`` the key
  is traced, so this program draws its random words itself: it is a little larger than the
  first call's (see ``jaxinterp.actmax._draws``);
* ``jax_flops_fraction``: the ascent's FLOPs (counted analytically: forward and input-gradient
  convolutions and matrix products, per target and step) per second of the second call, over
  a jitted ``jnp.dot`` of two 2048² f32 matrices timed in the same process (median of 5);
* ``lucent_batched_s``: ``render_vis`` with one parameterization holding all images and one
  objective summing the per-image objectives (Lucent's fast path), median of 3;
* ``lucent_batched_cpu_s``: its process CPU seconds (median of the same runs), compared with
  ``jax_first_call_cpu_s`` in ``speedup_first_call_cpu_vs_lucent_batched_cpu`` (both sides run
  on one core, so on a loaded machine the CPU-time ratio is the steadier one);
* ``lucent_loop_s``: ``render_vis`` once per unit, scaled to 64 units;
* ``units_jax_ge_lucent``: units where jaxinterp's activation (evaluated by the torch port on the
  final images, no transforms) is at least Lucent's batched one (per unit, the median over
  Lucent's repeated runs; within 1e-3 relative). In one batched Lucent run all units share one
  jitter sequence, so their values move together from run to run (the 64-unit mean of a plain
  PyTorch loop of the same job varied by 2% between two seeds); jaxinterp draws an independent
  sequence per unit. ``units_jax_ge_lucent_run`` compares with each single Lucent run
  (median), and ``units_lucent_run_ge_lucent_run`` counts the same for one Lucent run against
  another: what "at least Lucent's on every unit" reads like between two runs of one tool.

Needs the ``bench`` extra (``pip install "jaxinterp[bench]"`` or ``torch`` and
``torch-lucent --no-deps`` plus its light dependencies).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from _timing import print_table

from jaxinterp import models

STEPS, UNITS, LR, TV = 256, 64, 0.05, 0.01
BIG_STEPS, BIG_UNITS, BIG_SIZE = 128, 128, 64

_JAX_JOB = r"""
import json, statistics, sys, time
import jax, jax.numpy as jnp
from jaxinterp import actmax, models
from jaxinterp.actmax._maximize import _CPU_COMPILER_OPTIONS
sys.path.insert(0, {here!r})
import bench_lucent
which = {which!r}
if which == "readme":
    cnn = models.digits_cnn()
    def job(key):
        return actmax.maximize(
            key, cnn.model, cnn.variables, lambda unit: actmax.neuron("act_2", unit),
            jnp.arange(64), param=actmax.pixel((8, 8, 1)), steps=256,
            transforms=[actmax.pad(1), actmax.jitter(1)],
            regularizers=[0.01 * actmax.total_variation()],
        )
else:
    model, variables = bench_lucent.big_convnet()
    def job(key):
        return actmax.maximize(
            key, model, variables, lambda c: actmax.channel("act_3", c),
            jnp.arange(bench_lucent.BIG_UNITS),
            param=actmax.fourier((bench_lucent.BIG_SIZE, bench_lucent.BIG_SIZE, 3)),
            steps=bench_lucent.BIG_STEPS, transforms=[actmax.pad(2), actmax.jitter(4)],
        )
events = {{}}
def listen(name, secs, **kw):
    events[name] = events.get(name, 0.0) + secs
jax.monitoring.register_event_duration_secs_listener(listen)
t, c = time.perf_counter(), time.process_time()
r = job(jax.random.key(0)); jax.block_until_ready(r.values)
first, first_cpu = time.perf_counter() - t, time.process_time() - c
first_events = dict(events)
inputs = jax.device_get(r.inputs).tolist()
seconds = []
for i in range({repeats}):
    t = time.perf_counter(); r = job(jax.random.key(1)); jax.block_until_ready(r.values)
    seconds.append(time.perf_counter() - t)
low = jax.jit(job, compiler_options=_CPU_COMPILER_OPTIONS).lower(jax.random.key(2))
t, c = time.perf_counter(), time.process_time(); low.compile()
compile_s, compile_cpu = time.perf_counter() - t, time.process_time() - c
a = jax.random.normal(jax.random.key(0), (2048, 2048))
dot = jax.jit(jnp.dot); jax.block_until_ready(dot(a, a)); ts = []
for _ in range(5):
    t = time.perf_counter(); jax.block_until_ready(dot(a, a)); ts.append(time.perf_counter() - t)
ev = lambda k: first_events.get("/jax/core/compile/" + k + "_duration", 0.0)
print(json.dumps({{"first": first, "first_cpu": first_cpu,
                  "first_lower": ev("jaxpr_to_mlir_module"), "first_compile": ev("backend_compile"),
                  "second": statistics.median(seconds), "compile": compile_s,
                  "compile_cpu": compile_cpu, "peak": 2 * 2048**3 / statistics.median(ts),
                  "inputs": inputs}}))
"""


def ascent_flops(layers: list[tuple[int, int, int, int]], dense: list[tuple[int, int]]) -> int:
    """FLOPs of one ascent step for one image: forward plus input gradient (the same count) of
    convolutions ``(out_positions, kernel_positions, in_channels, out_channels)`` and matrix
    products ``(in, out)``."""
    fwd = sum(2 * p * k * ci * co for p, k, ci, co in layers) + sum(2 * i * o for i, o in dense)
    return 2 * fwd


# the layer the objective reads: only its one unit / channel (jaxinterp computes only that
# one, see jaxinterp.actmax._fastgrad; counting them all would credit it with FLOPs it does
# not do)
README_FLOPS = ascent_flops([(81, 9, 1, 8), (81, 9, 8, 16)], [(256, 1)])  # 9x9 inputs seen
BIG_FLOPS = ascent_flops(
    [(32 * 32, 9, 3, 64), (16 * 16, 9, 64, 64), (8 * 8, 9, 64, 128), (8 * 8, 9, 128, 1)], []
)


def big_convnet():
    """The bigger convnet (linen) and its random variables (key 0)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    class Relu(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.relu(x)

    class BigConv(nn.Module):
        @nn.compact
        def __call__(self, x):
            specs = [(64, 2), (64, 2), (128, 2), (128, 1)]
            for i, (c, s) in enumerate(specs):
                x = nn.Conv(c, (3, 3), strides=(s, s), padding=1, name=f"conv_{i}")(x)
                x = Relu(name=f"act_{i}")(x)
            return x.mean((1, 2))

    model = BigConv()
    size = (1, BIG_SIZE, BIG_SIZE, 3)
    return model, model.init(jax.random.key(0), jnp.zeros(size, jnp.float32))


def _torch_big(variables):
    import torch
    from torch import nn

    p = variables["params"]
    layers = []
    for i, (ci, co, s) in enumerate([(3, 64, 2), (64, 64, 2), (64, 128, 2), (128, 128, 1)]):
        conv = nn.Conv2d(ci, co, 3, stride=s, padding=1)
        with torch.no_grad():
            conv.weight.copy_(
                torch.tensor(np.asarray(p[f"conv_{i}"]["kernel"])).permute(3, 2, 0, 1)
            )
            conv.bias.copy_(torch.tensor(np.asarray(p[f"conv_{i}"]["bias"])))
        layers += [(f"conv_{i}", conv), (f"act_{i}", nn.ReLU())]
    from collections import OrderedDict

    return nn.Sequential(OrderedDict(layers)).eval()


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


def _torch_transforms(width: int, d: int):
    """pad ``width`` (value 0.5), then a random ``(h - d) x (w - d)`` crop: what
    ``actmax.pad(width), actmax.jitter(d)`` do."""
    import torch

    def pad(x):
        return torch.nn.functional.pad(x, (width,) * 4, value=0.5)

    def jitter(x):
        oy, ox = np.random.randint(0, d + 1, size=2)
        return x[:, :, oy : oy + x.shape[2] - d, ox : ox + x.shape[3] - d]

    return [pad, jitter]


def _lucent_run(model, units, batched: bool, job: str = "readme"):
    """Lucent render_vis on ``units``: one batched call, or one call per unit. Returns images
    ``[unit, h, w, c]`` and the seconds it took."""
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

    if job == "readme":
        size, channels, fft, steps, transforms = 8, 1, False, STEPS, _torch_transforms(1, 1)
        one = lambda u, b: objectives.channel("act_2", int(u), batch=b) + TV * tv(b)  # noqa: E731
    else:
        size, channels, fft, steps, transforms = BIG_SIZE, 3, True, BIG_STEPS, None
        transforms = _torch_transforms(2, 4)
        one = lambda u, b: objectives.channel("act_3", int(u), batch=b)  # noqa: E731

    def run(objective, batch):
        # Lucent's image() decorrelates colours only when ``channels`` is left out (given, it
        # silently turns decorrelation off): 3-channel Fourier images leave it out
        param_f = lambda: param.image(  # noqa: E731
            size,
            batch=batch,
            channels=None if channels == 3 else channels,
            fft=fft,
            decorrelate=fft,
        )
        out = render.render_vis(
            model, objective, param_f,
            optimizer=lambda ps: torch.optim.Adam(ps, lr=LR),
            transforms=transforms, thresholds=(steps,), preprocess=False,
            progress=False, show_image=False, fixed_image_size=0,  # 0: no upsampling
        )  # fmt: skip
        return np.asarray(out[-1])  # [batch, h, w, c]

    t = time.perf_counter()
    if batched:
        images = run(sum(one(u, b) for b, u in enumerate(units)), len(units))
    else:
        images = np.concatenate([run(one(u, None), 1) for u in units])
    return images, time.perf_counter() - t


def _unit_values(model, layer: str, images):
    """``layer``'s activation per unit on ``images [unit, h, w, c]`` (channel means for conv
    layers): the diagonal ``value[i] = act(images[i])[unit i]``."""
    import torch

    acts = {}
    h = getattr(model, layer).register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
    with torch.no_grad():
        model(torch.tensor(np.asarray(images), dtype=torch.float32).permute(0, 3, 1, 2))
    h.remove()
    a = acts["a"].numpy()
    a = a.mean((2, 3)) if a.ndim == 4 else a
    return np.diagonal(a)


def _ge(a, b) -> int:
    """Units where ``a`` is at least ``b`` (within 1e-3 relative)."""
    return int((np.asarray(a) >= np.asarray(b) - 1e-3 * np.abs(b)).sum())


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


def _jax_runs(which: str, env: dict, repeats: int) -> tuple[dict, dict]:
    """Two fresh processes sharing a new persistent compilation cache: the first compiles
    (cold), the second loads the program from the cache (what a repeated script sees)."""
    import tempfile

    code = _JAX_JOB.format(here=str(Path(__file__).resolve().parent), which=which, repeats=repeats)
    with tempfile.TemporaryDirectory() as cache:
        env = {**env, "JAX_COMPILATION_CACHE_DIR": cache}
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
        runs = []
        for _ in range(2):
            proc = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env
            )
            if proc.returncode:
                raise RuntimeError(f"the JAX job failed:\n{proc.stderr[-3000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return runs[0], runs[1]


def run(quick: bool = False, threads: int = 1, big: bool = True) -> dict:
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
    jx, warm = _jax_runs("readme", env, 3)
    # every value below is the torch port's act_2 on the final 8x8 images, no transforms
    jax_vals = _unit_values(model, "act_2", np.asarray(jx["inputs"])[:, 0])

    units = np.arange(UNITS)
    reps = 1 if quick else 3
    t_batched, cpu_batched, lucent_runs = [], [], []
    for _ in range(reps):
        c = time.process_time()
        batched_imgs, t = _lucent_run(model, units, batched=True)
        t_batched.append(t)
        cpu_batched.append(time.process_time() - c)
        lucent_runs.append(_unit_values(model, "act_2", batched_imgs))
    t_batched = statistics.median(t_batched)
    # per unit, the median over Lucent's runs: in one batched run every unit shares one jitter
    # sequence, so one run's values move together (their mean varied by 2% between seeds)
    lucent_vals = np.median(np.stack(lucent_runs), axis=0)
    loop_units = 4 if quick else 8
    _, t_loop_part = _lucent_run(model, units[:loop_units], batched=False)
    t_loop = t_loop_part * UNITS / loop_units

    total_jax = jx["first"]
    flops = README_FLOPS * UNITS * STEPS
    out = {
        "threads": len(cores),
        "jax_first_call_s": jx["first"],
        "jax_first_call_cpu_s": jx["first_cpu"],
        "jax_first_call_lower_s": jx["first_lower"],
        "jax_first_call_compile_s": jx["first_compile"],
        "jax_compile_s": jx["compile"],
        "jax_compile_cpu_s": jx["compile_cpu"],
        "jax_second_call_s": jx["second"],
        "jax_first_call_persistent_cache_s": warm["first"],
        "lucent_batched_s": t_batched,
        "lucent_batched_cpu_s": statistics.median(cpu_batched),
        "lucent_loop_s": t_loop,
        "loop_units": loop_units,
        "speedup_first_call_vs_lucent_batched": t_batched / total_jax,
        "speedup_first_call_vs_lucent_loop": t_loop / total_jax,
        "speedup_first_call_cpu_vs_lucent_batched_cpu": statistics.median(cpu_batched)
        / jx["first_cpu"],
        "speedup_second_call_vs_lucent_batched": t_batched / jx["second"],
        "jax_gflops_per_s": flops / jx["second"] / 1e9,
        "dot_peak_gflops_per_s": jx["peak"] / 1e9,
        "jax_flops_fraction": flops / jx["second"] / jx["peak"],
        "jax_value_mean": float(jax_vals.mean()),
        "lucent_value_mean": float(lucent_vals.mean()),
        "units_jax_ge_lucent": _ge(jax_vals, lucent_vals),
        # the same count for one Lucent run against another of the same job (ordered pairs of
        # its repeated runs, median): how far "at least as high on every unit" is a coin flip
        "units_lucent_run_ge_lucent_run": statistics.median(
            _ge(a, b)
            for i, a in enumerate(lucent_runs)
            for j, b in enumerate(lucent_runs)
            if i != j
        )
        if len(lucent_runs) > 1
        else float("nan"),
        "units_jax_ge_lucent_run": statistics.median(_ge(jax_vals, b) for b in lucent_runs),
        "units_at_zero_jax": int((jax_vals <= 0).sum()),
        "units_at_zero_lucent": int((lucent_vals <= 0).sum()),
    }
    if big:
        bmodel, bvars = big_convnet()
        tmodel = _torch_big(bvars)
        xb = np.asarray(jax.random.uniform(jax.random.key(5), (2, BIG_SIZE, BIG_SIZE, 3)))
        with torch.no_grad():
            got = tmodel(torch.tensor(xb).permute(0, 3, 1, 2)).numpy().mean((2, 3))
        np.testing.assert_allclose(got, np.asarray(bmodel.apply(bvars, xb)), atol=1e-4)
        bj, _ = _jax_runs("big", env, 1)
        bunits = np.arange(4 if quick else BIG_UNITS)
        bimgs, t_big = _lucent_run(tmodel, bunits, batched=True, job="big")
        bjax = _unit_values(tmodel, "act_3", np.asarray(bj["inputs"])[: len(bunits), 0])
        bluc = _unit_values(tmodel, "act_3", bimgs)
        bflops = BIG_FLOPS * BIG_UNITS * BIG_STEPS
        out.update({
            "big_jax_first_call_s": bj["first"],
            "big_jax_compile_s": bj["compile"],
            "big_jax_second_call_s": bj["second"],
            "big_lucent_batched_s": t_big,
            "big_speedup_first_call_vs_lucent_batched": t_big / bj["first"],
            "big_jax_flops_fraction": bflops / bj["second"] / bj["peak"],
            "big_units_jax_ge_lucent": _ge(bjax, bluc),
            "big_jax_value_mean": float(bjax.mean()),
            "big_lucent_value_mean": float(bluc.mean()),
            "big_units": len(bunits),
        })  # fmt: skip
    print_table(out)
    return out


def jitter_spread(units: int = 16, steps: int = BIG_STEPS, runs: int = 8) -> dict:
    """The bigger convnet's unit values after ``steps`` Adam steps, from one fixed start, with
    one jitter sequence shared by all units (Lucent's batched way) or one per unit
    (jaxinterp's), ``runs`` sequences each: the mean and the run-to-run spread of the unit
    mean. Plain JAX (``jax.grad`` + optax), so the two differ only in the sequences."""
    import jax.numpy as jnp
    import optax

    from jaxinterp import actmax

    model, variables = big_convnet()
    p = actmax.fourier((BIG_SIZE, BIG_SIZE, 3))
    d = 4

    def unit(x, c):  # channel c of act_3, mean over positions
        _, st = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
        return st["intermediates"]["act_3"]["__call__"][0][..., c].mean()

    def act(pp, c, oy, ox):  # pad 2 (0.5), then the 64x64 crop at (oy, ox)
        x = jnp.pad(p.apply(pp), ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=0.5)
        return unit(jax.lax.dynamic_slice(x, (0, oy, ox, 0), (1, BIG_SIZE, BIG_SIZE, 3)), c)

    opt = optax.adam(LR)

    def one(pp, c, offsets):
        def step(carry, o):
            pp, s = carry
            g = jax.grad(lambda q: -act(q, c, o[0], o[1]))(pp)
            u, s = opt.update(g, s, pp)
            return (optax.apply_updates(pp, u), s), None

        (pp, _), _ = jax.lax.scan(step, (pp, opt.init(pp)), offsets)
        return unit(p.apply(pp), c)  # the value without transforms

    f = jax.jit(jax.vmap(one))
    p0 = jnp.stack([p.init(k) for k in jax.random.split(jax.random.key(100), units)])
    means: dict[str, list[float]] = {"shared": [], "per_unit": []}
    for seed in range(runs):
        shared = np.random.default_rng(1000 + seed).integers(0, d + 1, (1, steps, 2))
        per_unit = np.random.default_rng(2000 + seed).integers(0, d + 1, (units, steps, 2))
        for name, o in (("shared", np.broadcast_to(shared, (units, steps, 2))),
                        ("per_unit", per_unit)):  # fmt: skip
            means[name].append(float(np.mean(f(p0, jnp.arange(units), jnp.asarray(o)))))
    out = {}
    for name, m in means.items():
        out[f"unit_mean_{name}"] = float(np.mean(m))
        out[f"unit_mean_spread_{name}"] = float(np.std(m))
    print_table(out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-big", action="store_true", help="skip the bigger convnet")
    parser.add_argument(
        "--jitter-spread", action="store_true",
        help="only: unit values with one jitter sequence shared by all units vs one per unit",
    )  # fmt: skip
    args = parser.parse_args()
    if args.jitter_spread:
        jitter_spread()
    else:
        run(args.quick, args.threads, big=not args.no_big)
