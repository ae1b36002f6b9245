"""Benchmark: a ~1B-parameter Llama-shaped decoder in bf16: capture overhead and peak memory.

Model: :class:`jaxinterp.models.Decoder`, family ``llama``, TinyLlama-1.1B's shape (d_model
2048, 22 layers, 32 query / 4 key-value heads of 64, SwiGLU 5632, vocab 32000, untied: 1.10 B
parameters, 2.2 GB in bf16), random weights (normal, sd 0.02) generated leaf by leaf directly
in bf16. A smaller shape (``--size small``: d_model 1024, 8 layers, 155 M parameters) is there
for quick runs.

Measured side by side in one process (forward and capture calls interleaved, so machine load
affects both alike; compile excluded and reported separately; median and best of ``repeats``
wall-clock seconds, and the median process CPU seconds, which a loaded machine disturbs less):

* ``forward``: ``jax.jit(lambda v, ids: model.apply(v, ids))`` — the logits;
* ``capture``: ``jax.jit(lambda v, ids: capture(model, v, select=[embed, blocks_0..])(ids))``
  — the logits plus the residual stream entering block 0 and after every block;
* memory: XLA's temporary and output buffers of each compiled call (``memory_analysis``,
  exact and independent of machine load), the process's resident high-water mark
  (``VmHWM``; reset between phases through ``/proc/self/clear_refs`` where the kernel allows
  it), and on an accelerator the device's ``peak_bytes_in_use``, against the parameter bytes;
* achieved FLOP/s of the forward (matmul FLOPs counted analytically) against a jitted bf16
  ``jnp.dot`` of two 2048×2048 matrices (f32 accumulation, as the Decoder) measured in the
  same process;
* ``attribution``: :func:`jaxinterp.interventions.attribution_patch` over every (layer, head,
  position) site of ``blocks_{i}/attn/z`` (:func:`head_position_sites`), one jitted call, on a
  clean / corrupted pair differing in one token, metric the logit difference at the last
  position;
* ``sweep``: :func:`jaxinterp.interventions.patch_sweep` over every head of the layers
  ``--sweep-layers`` (default: all of the small shape, 4 evenly spaced layers of the 1B one),
  chunk_size "auto", prefix reuse on; a site in layer L runs layers L..end, so the time of the
  full (layer, head) sweep is extrapolated as ``time × Σ_L (n_layers − L) / Σ_{L in subset}
  (n_layers − L)`` (model head and patched block counted as layers, an approximation) when
  the prefix reuse engages, else linearly in the number of sites (the table says which);
  both report compile time, run time (attribution: best of 2 runs; sweep: one run), XLA
  temporaries and peak RSS.

Target: capture / forward <= 1.1.

Usage: ``python benchmarks/bench_scale.py [--size 1b|small] [--batch B] [--seq S]
[--repeats R] [--sweep-layers 0,7,14,21|all|none|auto]`` prints a markdown table;
``run(quick)`` is the entry point of ``benchmarks/run.py`` (quick = the small shape).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

SIZES = {
    "1b": dict(
        vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, d_head=64,
        d_mlp=5632,
    ),
    "small": dict(
        vocab_size=32000, d_model=1024, n_layers=8, n_heads=16, n_kv_heads=4, d_head=64,
        d_mlp=2816,
    ),
}  # fmt: skip


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Resets the process's resident high-water mark (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _device_peak() -> int | None:
    import jax

    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def random_params(cfg: Any, seed: int = 0) -> dict:
    """Random bf16 variables of ``Decoder(cfg)`` (normal, sd 0.02; norm scales 1)."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.models import Decoder

    shapes = jax.eval_shape(
        Decoder(cfg).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32)
    )
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    make = jax.jit(
        lambda k, shape: (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(jnp.bfloat16),
        static_argnums=1,
    )
    out = []
    for i, (path, s) in enumerate(leaves):
        if jax.tree_util.keystr(path).endswith("['scale']"):
            out.append(jnp.ones(s.shape, jnp.bfloat16))
        else:
            out.append(make(jax.random.fold_in(jax.random.key(seed), i), tuple(s.shape)))
    return jax.tree_util.tree_unflatten(jax.tree.structure(shapes), out)


def _forward_flops(cfg: Any, batch: int, seq: int) -> float:
    """Matmul FLOPs of one forward: projections, MLP, unembedding, attention scores/values."""
    d, h, kv, dh, m = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp
    per_token = cfg.n_layers * (d * h * dh * 2 + d * kv * dh * 2 + 3 * d * m) + d * cfg.vocab_size
    attn = cfg.n_layers * 2 * h * dh * seq * seq * batch  # q·k and p·v
    return 2.0 * (per_token * batch * seq + attn)


def _dot_peak() -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((2048, 2048), jnp.bfloat16)
    # f32 accumulation, as the Decoder's bf16 matmuls (plain ``a @ b`` is ~2x slower on CPU)
    f = jax.jit(lambda a, b: jnp.matmul(a, b, preferred_element_type=jnp.float32))
    jax.block_until_ready(f(a, a))
    best = min(_timed(lambda: f(a, a)) for _ in range(5))
    return 2 * 2048**3 / best


def _timed(fn) -> float:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def measure(
    size: str = "1b",
    batch: int = 1,
    seq: int = 128,
    repeats: int = 3,
    sweep_layers: str = "auto",
) -> dict:
    """Runs the benchmark; returns a flat dict of results (seconds, bytes, ratios)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxinterp.capture import capture
    from jaxinterp.models import Decoder, DecoderConfig

    cfg = DecoderConfig(family="llama", max_positions=max(seq, 128), **SIZES[size])
    model = Decoder(cfg)
    res: dict[str, Any] = {"size": size, "batch": batch, "seq": seq}
    res.update(n_layers=cfg.n_layers, n_heads=cfg.n_heads)
    rss0 = _status_kb("VmRSS")
    t0 = time.perf_counter()
    variables = jax.block_until_ready(random_params(cfg))
    res["init_s"] = time.perf_counter() - t0
    res["params"] = sum(x.size for x in jax.tree.leaves(variables))
    res["param_bytes"] = sum(x.nbytes for x in jax.tree.leaves(variables))
    res["rss_params_bytes"] = (_status_kb("VmRSS") - rss0) * 1024 if rss0 else None

    ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)), "int32")
    select = ["embed"] + [f"blocks_{i}" for i in range(cfg.n_layers)]
    calls = {
        "forward": jax.jit(lambda v, x: model.apply(v, x)),
        "capture": jax.jit(lambda v, x: capture(model, v, select=select)(x)),
    }
    base_rss = _status_kb("VmRSS")
    forward_logits = None
    for name, f in calls.items():
        can_reset = _reset_peak()
        t0 = time.perf_counter()
        compiled = f.lower(variables, ids).compile()
        res[f"{name}_compile_s"] = time.perf_counter() - t0
        mem = compiled.memory_analysis()  # XLA's buffer assignment: exact, load-independent
        res[f"{name}_xla_temp_bytes"] = getattr(mem, "temp_size_in_bytes", None)
        res[f"{name}_xla_output_bytes"] = getattr(mem, "output_size_in_bytes", None)
        out = jax.block_until_ready(compiled(variables, ids))
        hwm = _status_kb("VmHWM")
        if can_reset and hwm and base_rss:
            res[f"{name}_peak_rss_bytes"] = hwm * 1024
            res[f"{name}_peak_above_params_bytes"] = (hwm - base_rss) * 1024
        res[f"{name}_device_peak_bytes"] = _device_peak()
        if name == "capture":
            acts = out[1]
            assert sorted(acts) == sorted(select), sorted(acts)
            assert acts[f"blocks_{cfg.n_layers - 1}"].shape == (batch, seq, cfg.d_model)
            res["captured_bytes"] = sum(a.nbytes for a in jax.tree.leaves(acts))
            diff = out[0].astype(jnp.float32) - forward_logits.astype(jnp.float32)
            res["capture_logits_max_diff"] = float(jnp.max(jnp.abs(diff)))
        else:
            forward_logits = out
        calls[name] = compiled
        del out
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):  # interleaved: load on the machine hits both alike
        for name, f in calls.items():
            c0 = time.process_time()
            times[name].append(_timed(lambda f=f: f(variables, ids)))
            cpu[name].append(time.process_time() - c0)
    for name, ts in times.items():
        res[f"{name}_median_s"] = statistics.median(ts)
        res[f"{name}_best_s"] = min(ts)
        res[f"{name}_cpu_median_s"] = statistics.median(cpu[name])
    res["capture_over_forward_median"] = res["capture_median_s"] / res["forward_median_s"]
    res["capture_over_forward_best"] = res["capture_best_s"] / res["forward_best_s"]
    res["capture_over_forward_cpu"] = res["capture_cpu_median_s"] / res["forward_cpu_median_s"]
    flops = _forward_flops(cfg, batch, seq)
    res["forward_gflops"] = flops / 1e9
    res["forward_gflop_per_s"] = flops / res["forward_best_s"] / 1e9
    res["dot_bf16_peak_gflop_per_s"] = _dot_peak() / 1e9
    res["forward_fraction_of_peak"] = res["forward_gflop_per_s"] / res["dot_bf16_peak_gflop_per_s"]
    del calls, compiled
    _interp(res, model, cfg, variables, ids, sweep_layers)
    dev = jax.devices()[0]
    res["device"] = f"{jax.default_backend()} / {getattr(dev, 'device_kind', dev)}"
    return res


def _sweep_layer_list(spec: str, n_layers: int) -> list[int]:
    if spec == "none":
        return []
    if spec == "all" or (spec == "auto" and n_layers <= 8):
        return list(range(n_layers))
    if spec == "auto":
        return sorted({int(round(x)) for x in np.linspace(0, n_layers - 1, 4)})
    out = sorted({int(t) for t in spec.split(",")})
    if not out or out[0] < 0 or out[-1] >= n_layers:
        raise ValueError(f"sweep_layers: expected layers in [0, {n_layers}), got {spec!r}")
    return out


def _interp(res: dict, model: Any, cfg: Any, variables: Any, ids: Any, sweep_layers: str) -> None:
    """Attribution patching over all (layer, head, position) sites; a (layer, head) sweep."""
    import jax
    import jax.numpy as jnp

    from jaxinterp.interventions import (
        attribution_patch,
        head_position_sites,
        logit_diff,
        patch_sweep,
        site_grid,
    )

    n, h, seq = cfg.n_layers, cfg.n_heads, ids.shape[1]
    corrupted = ids.at[:, seq // 2].set((ids[:, seq // 2] + 1) % cfg.vocab_size)
    answer, wrong = ids[:, -1], (ids[:, -1] + 7) % cfg.vocab_size

    def metric(logits):
        return logit_diff(logits.astype(jnp.float32), answer, wrong)

    template = "blocks_{layer}/attn/z"
    attr_sites = head_position_sites(n, h, seq, template=template)
    layers = _sweep_layer_list(sweep_layers, n)
    res["sweep_layers"] = layers
    res["attribution_sites"] = int(attr_sites.layer.shape[0])
    calls = {
        "attribution": lambda v, c, x: attribution_patch(model, v, c, x, attr_sites, metric),
    }
    if layers:
        paths = [template.format(layer=i) + "|per_head" for i in layers]
        sweep_sites = site_grid(paths, [(-2, h)], ("layer", "head"))
        res["sweep_sites"] = int(sweep_sites.layer.shape[0])
        calls["sweep"] = lambda v, c, x: patch_sweep(model, v, c, x, sweep_sites, metric)
    base_rss = _status_kb("VmRSS")
    for name, f in calls.items():
        can_reset = _reset_peak()
        t0 = time.perf_counter()
        compiled = jax.jit(f).lower(variables, ids, corrupted).compile()
        res[f"{name}_compile_s"] = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        res[f"{name}_xla_temp_bytes"] = getattr(mem, "temp_size_in_bytes", None)
        runs = []
        for _ in range(2 if name == "attribution" else 1):  # the sweep: one run (long)
            c0, t0 = time.process_time(), time.perf_counter()
            out = jax.block_until_ready(compiled(variables, ids, corrupted))
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
        res[f"{name}_s"], res[f"{name}_cpu_s"] = min(runs)
        hwm = _status_kb("VmHWM")
        if can_reset and hwm and base_rss:
            res[f"{name}_peak_rss_bytes"] = hwm * 1024
        res[f"{name}_device_peak_bytes"] = _device_peak()
        patched = np.asarray(out.patched, np.float32)
        assert np.isfinite(patched).all(), name
        res[f"{name}_max_abs_effect"] = float(np.abs(patched - float(out.corrupted)).max())
        del out, compiled
    if layers:
        # prefix reuse engaged? (a site in layer L then runs layers L..end only)
        from jaxinterp.interventions._sweep import _as_args, _find_chain

        chain = _find_chain(model, variables, sweep_sites, None, *_as_args("x", corrupted, None))
        res["sweep_prefix_reuse"] = chain is not None
        if chain is not None:
            weight = sum(n - i for i in range(n)) / sum(n - i for i in layers)
        else:  # every site runs a full forward: linear in the number of sites
            weight = n / len(layers)
        res["sweep_full_extrapolated_s"] = res["sweep_s"] * weight
        res["sweep_per_site_s"] = res["sweep_s"] / res["sweep_sites"]


def table(res: dict) -> str:
    """A markdown table of :func:`measure`'s results."""
    r = res

    def gb(key: str) -> str:
        return "n/a" if r.get(key) is None else f"{r[key] / 1e9:.2f} GB"

    def pair(a: str, b: str, fmt: str = ".3f", unit: str = " s") -> str:
        return f"{r[a]:{fmt}}{unit} / {r[b]:{fmt}}{unit}"

    peak = r.get("capture_peak_rss_bytes")

    def ratio(key: str) -> str:
        return "n/a" if r.get(key) is None else f"{r[key] / r['param_bytes']:.2f}"

    rows = [
        ("model", f"Llama-shaped {r['size']}: {r['params'] / 1e9:.3f} B params, bf16"),
        ("device", r["device"]),
        ("batch × seq", f"{r['batch']} × {r['seq']}"),
        ("parameter bytes", gb("param_bytes")),
        ("forward, median / best", pair("forward_median_s", "forward_best_s")),
        ("capture of every residual stream, median / best", pair("capture_median_s", "capture_best_s")),  # noqa: E501
        ("**capture / forward**, median / best", pair("capture_over_forward_median", "capture_over_forward_best", unit="")),  # noqa: E501
        ("CPU time forward / capture, median", pair("forward_cpu_median_s", "capture_cpu_median_s")),  # noqa: E501
        ("**capture / forward**, CPU time", f"{r['capture_over_forward_cpu']:.3f}"),
        ("compile forward / capture", pair("forward_compile_s", "capture_compile_s", ".1f")),
        ("captured activation bytes", gb("captured_bytes")),
        ("XLA temp buffers forward / capture", f"{gb('forward_xla_temp_bytes')} / {gb('capture_xla_temp_bytes')}"),  # noqa: E501
        ("XLA output buffers forward / capture", f"{gb('forward_xla_output_bytes')} / {gb('capture_xla_output_bytes')}"),  # noqa: E501
        ("peak RSS forward / capture", f"{gb('forward_peak_rss_bytes')} / {gb('capture_peak_rss_bytes')}"),  # noqa: E501
        ("peak RSS above the parameters, forward / capture", f"{gb('forward_peak_above_params_bytes')} / {gb('capture_peak_above_params_bytes')}"),  # noqa: E501
        ("peak RSS (capture) / parameter bytes", "n/a" if not peak else f"{peak / r['param_bytes']:.2f}"),  # noqa: E501
        ("device peak bytes in use (accelerators)", gb("capture_device_peak_bytes")),
        ("forward GFLOP/s / bf16 jnp.dot GFLOP/s", pair("forward_gflop_per_s", "dot_bf16_peak_gflop_per_s", ".1f", "")),  # noqa: E501
        ("capture vs forward logits, max abs diff", f"{r['capture_logits_max_diff']:.3g}"),
        ("attribution patching: (layer, head, position) sites, one call", f"{r['attribution_sites']}"),  # noqa: E501
        ("attribution: run / compile", pair("attribution_s", "attribution_compile_s")),
        ("attribution: CPU time of the run", f"{r['attribution_cpu_s']:.3f} s"),
        ("attribution: XLA temp / peak RSS", f"{gb('attribution_xla_temp_bytes')} / {gb('attribution_peak_rss_bytes')}"),  # noqa: E501
        ("attribution: peak RSS / parameter bytes", ratio("attribution_peak_rss_bytes")),
        ("attribution: run / forward (median)", f"{r['attribution_s'] / r['forward_median_s']:.2f}"),  # noqa: E501
    ]  # fmt: skip
    if r.get("sweep_sites"):
        rows += [
            ("patch sweep: layers timed (all heads each)", f"{r['sweep_layers']} of {r['n_layers']}: {r['sweep_sites']} sites"),  # noqa: E501
            ("patch sweep: run / compile", pair("sweep_s", "sweep_compile_s")),
            ("patch sweep: prefix reuse engaged", str(r["sweep_prefix_reuse"])),
            ("patch sweep: CPU time of the run", f"{r['sweep_cpu_s']:.3f} s"),
            ("patch sweep: per site / per site ÷ forward", f"{r['sweep_per_site_s']:.3f} s / {r['sweep_per_site_s'] / r['forward_median_s']:.2f}"),  # noqa: E501
            ("**full (layer, head) sweep**, extrapolated" if len(r["sweep_layers"]) < r["n_layers"] else "**full (layer, head) sweep**", f"{r['sweep_full_extrapolated_s']:.1f} s ({r['n_layers'] * r['n_heads']} sites)"),  # noqa: E501
            ("patch sweep: XLA temp / peak RSS", f"{gb('sweep_xla_temp_bytes')} / {gb('sweep_peak_rss_bytes')}"),  # noqa: E501
            ("patch sweep: peak RSS / parameter bytes", ratio("sweep_peak_rss_bytes")),
        ]  # fmt: skip
    lines = ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def run(quick: bool = False) -> dict:
    """Entry point of ``benchmarks/run.py``: the 1B shape (the small one with ``quick``)."""
    res = measure("small" if quick else "1b", batch=1, seq=128, repeats=3)
    print(table(res))
    return {k: v for k, v in res.items() if isinstance(v, (int, float))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", choices=sorted(SIZES), default="1b")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sweep-layers", default="auto", help="comma list, 'all', 'none' or 'auto'")
    args = ap.parse_args()
    print(table(measure(args.size, args.batch, args.seq, args.repeats, args.sweep_layers)))


if __name__ == "__main__":
    main()
