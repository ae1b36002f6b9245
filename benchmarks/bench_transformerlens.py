"""Benchmark: jaxinterp vs TransformerLens on a GPT-2-small-shaped model with the same weights.

Model: GPT-2 architecture, 12 layers, 12 heads, d_model 768, d_mlp 3072, vocab 8192, random
weights (normal, std 0.02; LayerNorm scales 1 + noise) loaded into jaxinterp's
:class:`~jaxinterp.models.Decoder` and into TransformerLens's ``HookedTransformer`` (converted:
TransformerLens keeps ``W_Q [head, d_model, d_head]``, ``W_O [head, d_head, d_model]``). Batch
8 × 32 tokens; the corrupted batch changes the token at position 10; metric = logit difference
of two tokens at the last position, averaged over the batch. Logits are checked to agree first.

Measured, TransformerLens (PyTorch CPU, ``torch.set_num_threads(2)``, under ``torch.no_grad``
except attribution) against jaxinterp (``jax.jit``; compile time of the first call reported
separately):

* ``forward``: logits.
* ``cache_resid``: ``run_with_cache`` of every block's residual output vs
  ``capture(select="blocks_*")``.
* ``attention``: ``run_with_cache`` of every ``hook_pattern`` vs ``attention_weights``.
* ``sweep_head``: ``patching.get_act_patch_attn_head_out_all_pos`` (144 sites) vs
  ``patch_sweep`` over ``blocks_{i}/attn/z`` head sites.
* ``sweep_head_pos``: (layer, head, position) patching of ``z``: TransformerLens's
  ``generic_activation_patch`` with ``layer_pos_head_vector_patch_setter`` (what
  ``get_act_patch_attn_head_out_by_pos`` runs) on a subset of the 4,608 sites (``--hp-sites``,
  default 48: layers 1, 5, 9 (blocks L..end average 7 of 12, as 6.5 for all layers) × heads
  0, 3, 6, 9 × positions 8, 16, 24, 31) vs ``patch_sweep`` on the same sites; both scale
  linearly with the number of sites (each site a forward pass), so the ratio holds for the
  full grid; the whole grid would take TransformerLens hours on a shared 2-core machine.
* ``attribution``: attribution patching over all 4,608 (layer, head, position) sites: the
  usual TransformerLens recipe (clean cache; corrupted run with forward and backward hooks on
  every ``hook_z``; ``((clean - corrupted) * grad).sum((batch, d_head))``) vs
  ``attribution_patch``.

Every pair is checked for equal results (max abs difference of effects <= 1e-4). Each timing
is the median of ``--repeats`` calls (sweeps: one call, itself 48-144 forward passes).
Achieved FLOP/s count the matmul FLOPs each side actually performs (a TransformerLens site
runs a full forward, a jaxinterp site only blocks ``L..end`` and the unembedding) against a
measured ``jnp.dot`` peak (2048² f32). The machine may be shared: ratios are taken side by
side in one run, so load affects both sides.

Run in a venv with ``transformer-lens`` (``pip install -e '.[bench-tl]'``, with
``transformers==4.57.6`` held by a constraints file)::

    python benchmarks/bench_transformerlens.py [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

# PyTorch's OpenMP threads spin-wait by default; on a shared (oversubscribed) CPU that halves
# its matmul speed (measured 22 vs 47 GFLOP/s for 256x768x3072 here): give TL the better policy.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import interventions as iv
from jaxinterp import models
from jaxinterp.attention import attention_weights
from jaxinterp.capture import capture

L, H, D, DH, MLP, V, B, S = 12, 12, 768, 64, 3072, 8192, 8, 32
POS_CORRUPT, A_TOK, B_TOK = 10, 5, 9


def _median(fn, repeats):
    out, ts = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), out


def _jax_timed(fn, *args, repeats):
    """(compile seconds, median run seconds, result) of ``jax.jit(fn)``.

    The variables are passed among ``args``, never closed over (closed-over weights become
    constants of the program: seconds more compilation, sometimes minutes of constant folding).
    """
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    t_compile = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))
    t, out = _median(lambda: jax.block_until_ready(compiled(*args)), repeats)
    return t_compile, t, out


def make_weights(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def n(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    w = {"wte": n(V, D), "wpe": n(64, D), "blocks": []}
    for _ in range(L):
        w["blocks"].append(
            {
                "ln1_w": 1 + n(D, std=0.1),
                "ln1_b": n(D),
                "q": n(D, H, DH),
                "k": n(D, H, DH),
                "v": n(D, H, DH),
                "bq": n(H, DH),
                "bk": n(H, DH),
                "bv": n(H, DH),
                "o": n(H, DH, D),
                "bo": n(D),
                "ln2_w": 1 + n(D, std=0.1),
                "ln2_b": n(D),
                "fc_in": n(D, MLP),
                "b_in": n(MLP),
                "fc_out": n(MLP, D),
                "b_out": n(D),
            }
        )
    w["lnf_w"], w["lnf_b"] = 1 + n(D, std=0.1), n(D)
    return w


def jax_model(w):
    cfg = models.DecoderConfig(
        family="gpt2",
        vocab_size=V,
        d_model=D,
        n_layers=L,
        n_heads=H,
        n_kv_heads=H,
        d_head=DH,
        d_mlp=MLP,
        max_positions=64,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        mlp_act="gelu_tanh",  # GPT-2's gelu_new (the config's default is Llama's silu)
    )
    p = {"embed": {"tok": {"embedding": w["wte"]}, "pos": {"embedding": w["wpe"]}}}
    for i, b in enumerate(w["blocks"]):
        p[f"blocks_{i}"] = {
            "ln_1": {"scale": b["ln1_w"], "bias": b["ln1_b"]},
            "attn": {
                "q": {"kernel": b["q"], "bias": b["bq"]},
                "k": {"kernel": b["k"], "bias": b["bk"]},
                "v": {"kernel": b["v"], "bias": b["bv"]},
                "o": {"kernel": b["o"], "bias": b["bo"]},
            },
            "ln_2": {"scale": b["ln2_w"], "bias": b["ln2_b"]},
            "mlp": {
                "fc_in": {"kernel": b["fc_in"], "bias": b["b_in"]},
                "fc_out": {"kernel": b["fc_out"], "bias": b["b_out"]},
            },
        }
    p["ln_f"] = {"scale": w["lnf_w"], "bias": w["lnf_b"]}
    return models.Decoder(cfg), {"params": jax.tree.map(jnp.asarray, p)}


def tl_model(w):
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=L,
        d_model=D,
        n_ctx=64,
        d_head=DH,
        n_heads=H,
        d_mlp=MLP,
        d_vocab=V,
        act_fn="gelu_new",
        normalization_type="LN",
        eps=1e-5,
        positional_embedding_type="standard",
        default_prepend_bos=False,
        device="cpu",
        dtype=torch.float32,
    )
    model = HookedTransformer(cfg)
    t = torch.from_numpy
    sd = {"embed.W_E": t(w["wte"]), "pos_embed.W_pos": t(w["wpe"])}
    for i, b in enumerate(w["blocks"]):
        pre = f"blocks.{i}."
        sd.update(
            {
                pre + "ln1.w": t(b["ln1_w"]),
                pre + "ln1.b": t(b["ln1_b"]),
                pre + "ln2.w": t(b["ln2_w"]),
                pre + "ln2.b": t(b["ln2_b"]),
                pre + "attn.W_O": t(b["o"]),
                pre + "attn.b_O": t(b["bo"]),
                pre + "mlp.W_in": t(b["fc_in"]),
                pre + "mlp.b_in": t(b["b_in"]),
                pre + "mlp.W_out": t(b["fc_out"]),
                pre + "mlp.b_out": t(b["b_out"]),
            }
        )
        for n in "qkv":
            sd[pre + f"attn.W_{n.upper()}"] = t(np.ascontiguousarray(b[n].transpose(1, 0, 2)))
            sd[pre + f"attn.b_{n.upper()}"] = t(b["b" + n])
    sd["ln_final.w"], sd["ln_final.b"] = t(w["lnf_w"]), t(w["lnf_b"])
    sd["unembed.W_U"] = t(np.ascontiguousarray(w["wte"].T))
    sd["unembed.b_U"] = torch.zeros(V)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected, unexpected
    assert all("IGNORE" in k or "mask" in k for k in missing), missing
    model.eval()
    return model


def _flops_blocks(n_blocks: float) -> float:
    """Matmul FLOPs of ``n_blocks`` blocks on the batch (projections, attention, MLP)."""
    n_blocks = float(n_blocks)
    tok = B * S
    per = 2 * tok * (4 * D * D + 2 * D * MLP) + 2 * 2 * B * H * S * S * DH
    return n_blocks * per


FWD_FLOPS = _flops_blocks(L) + 2 * B * S * D * V


def dot_peak() -> float:
    """Best ``jnp.dot`` FLOP/s of 2048² f32 over 10 calls (the best: load only slows it)."""
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    best = float("inf")
    for _ in range(10):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a))
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best


def run(quick: bool = False, repeats: int = 3, hp_sites: int = 48) -> dict:
    """Runs the comparison; returns ``{measure_ratio, measure_tl_s, ...}`` (flat, for run.py).

    Without ``transformer-lens`` installed, returns ``{"skipped": reason}`` instead.
    """
    try:
        import torch
        from transformer_lens import patching
    except ImportError as e:
        msg = f"transformer-lens is not installed ({e}); pip install -e '.[bench-tl]'"
        print(msg)
        return {"skipped": msg}

    torch.set_num_threads(2)
    w = make_weights()
    jm, jv = jax_model(w)
    tm = tl_model(w)
    rng = np.random.default_rng(1)
    clean_np = rng.integers(0, V, (B, S)).astype(np.int32)
    corr_np = clean_np.copy()
    corr_np[:, POS_CORRUPT] = (corr_np[:, POS_CORRUPT] + 7) % V
    clean, corr = jnp.asarray(clean_np), jnp.asarray(corr_np)
    t_clean, t_corr = torch.from_numpy(clean_np).long(), torch.from_numpy(corr_np).long()

    def jmetric(logits):
        return (logits[:, -1, A_TOK] - logits[:, -1, B_TOK]).mean()

    def tmetric(logits):
        return (logits[:, -1, A_TOK] - logits[:, -1, B_TOK]).mean()

    if quick:
        hp_sites = min(hp_sites, 16)
    rows = []
    peak = dot_peak()

    def add(name, tl_s, jx_s, compile_s, diff, jx_flops, tl_flops):
        rows.append(
            {
                "measure": name,
                "tl_s": tl_s,
                "jax_s": jx_s,
                "ratio": tl_s / jx_s,
                "compile_s": compile_s,
                "max_abs_diff": diff,
                "jax_gflops": jx_flops / jx_s / 1e9,
                "tl_gflops": tl_flops / tl_s / 1e9,
            }
        )
        print(rows[-1], flush=True)

    # forward
    with torch.no_grad():
        t_tl, tl_logits = _median(lambda: tm(t_clean), repeats)
    c, t_jx, logits = _jax_timed(jm.apply, jv, clean, repeats=repeats)
    diff = float(np.abs(np.asarray(logits) - tl_logits.numpy()).max())
    assert diff <= 1e-3, f"logits differ by {diff}"
    add("forward", t_tl, t_jx, c, diff, FWD_FLOPS, FWD_FLOPS)

    # cache of every residual stream
    def tl_cache():
        with torch.no_grad():
            return tm.run_with_cache(t_clean, names_filter=lambda n: n.endswith("hook_resid_post"))

    t_tl, (_, cache) = _median(tl_cache, repeats)
    c, t_jx, (_, acts) = _jax_timed(
        lambda v, x: capture(jm, v, select="blocks_*")(x), jv, clean, repeats=repeats
    )
    diff = max(
        float(
            np.abs(
                np.asarray(acts[f"blocks_{i}"]) - cache[f"blocks.{i}.hook_resid_post"].numpy()
            ).max()
        )
        for i in range(L)
    )
    add("cache_resid", t_tl, t_jx, c, diff, FWD_FLOPS, FWD_FLOPS)

    # attention patterns
    def tl_attn():
        with torch.no_grad():
            return tm.run_with_cache(t_clean, names_filter=lambda n: n.endswith("hook_pattern"))

    t_tl, (_, cache) = _median(tl_attn, repeats)
    c, t_jx, (_, pats) = _jax_timed(
        lambda v, x: attention_weights(jm, v, weights_at="blocks_*/attn/probs")(x),
        jv,
        clean,
        repeats=repeats,
    )
    diff = max(
        float(
            np.abs(
                np.asarray(pats[f"blocks_{i}/attn/probs"])
                - cache[f"blocks.{i}.attn.hook_pattern"].numpy()
            ).max()
        )
        for i in range(L)
    )
    add("attention", t_tl, t_jx, c, diff, FWD_FLOPS, FWD_FLOPS)

    with torch.no_grad():
        _, clean_cache = tm.run_with_cache(t_clean, names_filter=lambda n: n.endswith("hook_z"))
    z_paths = [f"blocks_{i}/attn/z" for i in range(L)]
    sweep_repeats = 1  # a sweep is already 48-144 forward passes

    # (layer, head) sweep
    n_layers_sweep = 2 if quick else L
    head_sites = iv.site_grid(z_paths[-n_layers_sweep:], [(-2, H)], ("layer", "head"))

    def tl_heads():
        with torch.no_grad():
            if n_layers_sweep == L:
                return patching.get_act_patch_attn_head_out_all_pos(
                    tm, t_corr, clean_cache, tmetric
                )
            import pandas as pd

            idx = pd.DataFrame(
                [(lay, h) for lay in range(L - n_layers_sweep, L) for h in range(H)],
                columns=["layer", "head"],
            )
            return patching.generic_activation_patch(
                tm,
                t_corr,
                clean_cache,
                tmetric,
                patching.layer_head_vector_patch_setter,
                "z",
                index_df=idx,
            )

    t_tl, tl_eff = _median(tl_heads, sweep_repeats)
    c, t_jx, res = _jax_timed(
        lambda v, a, b: iv.patch_sweep(jm, v, a, b, head_sites, jmetric).patched,
        jv,
        clean,
        corr,
        repeats=sweep_repeats,
    )
    diff = float(np.abs(np.asarray(res).ravel() - tl_eff.numpy().ravel()).max())
    depth = [L - n_layers_sweep + int(lay) for lay in np.asarray(head_sites.layer)]
    jx_fl = float(sum(_flops_blocks(L - d) + 2 * B * S * D * V for d in depth))
    tl_fl = FWD_FLOPS * len(depth)
    add(f"sweep_head ({len(depth)} sites)", t_tl, t_jx, c, diff, jx_fl, tl_fl)

    # (layer, head, position) sweep on a subset of sites
    layers = [1, 5, 9] if not quick else [9]
    positions = [8, 16, 24, 31]
    heads = list(range(0, H, max(1, H * len(layers) * len(positions) // hp_sites)))
    combos = [(lay, h, p) for lay in layers for h in heads for p in positions]
    lay_idx = {lay: j for j, lay in enumerate(layers)}
    hp = iv.Sites(
        jnp.asarray([lay_idx[lay] for lay, _, _ in combos], jnp.int32),
        jnp.asarray([(h, p) for _, h, p in combos], jnp.int32),
        tuple(z_paths[lay] for lay in layers),
        (-2, -3),
    )

    def tl_hp():
        import pandas as pd

        idx = pd.DataFrame([(lay, p, h) for lay, h, p in combos], columns=["layer", "pos", "head"])
        with torch.no_grad():
            return patching.generic_activation_patch(
                tm,
                t_corr,
                clean_cache,
                tmetric,
                patching.layer_pos_head_vector_patch_setter,
                "z",
                index_df=idx,
            )

    t_tl, tl_eff = _median(tl_hp, sweep_repeats)
    c, t_jx, res = _jax_timed(
        lambda v, a, b: iv.patch_sweep(jm, v, a, b, hp, jmetric).patched,
        jv,
        clean,
        corr,
        repeats=sweep_repeats,
    )
    diff = float(np.abs(np.asarray(res) - tl_eff.numpy()).max())
    jx_fl = float(sum(_flops_blocks(L - lay) + 2 * B * S * D * V for lay, _, _ in combos))
    add(
        f"sweep_head_pos ({len(combos)} sites)", t_tl, t_jx, c, diff, jx_fl, FWD_FLOPS * len(combos)
    )

    # attribution patching over all (layer, head, position) sites
    all_hp = iv.site_grid(z_paths, [(-2, H), (-3, S)], ("layer", "head", "position"))

    def tl_attr():
        with torch.no_grad():
            _, cc = tm.run_with_cache(t_clean, names_filter=lambda n: n.endswith("hook_z"))
        acts, grads = {}, {}

        def fwd(act, hook):
            acts[hook.name] = act.detach()

        def bwd(grad, hook):
            grads[hook.name] = grad.detach()

        names = [f"blocks.{i}.attn.hook_z" for i in range(L)]
        tm.reset_hooks()
        for n in names:
            tm.add_hook(n, fwd, "fwd")
            tm.add_hook(n, bwd, "bwd")
        corr_m = tmetric(tm(t_corr))
        corr_m.backward()
        tm.reset_hooks()
        tm.zero_grad(set_to_none=True)
        eff = torch.stack(
            [((cc[n] - acts[n]) * grads[n]).sum((0, 3)) for n in names]
        )  # [layer, pos, head]
        return eff + corr_m.detach()

    t_tl, tl_eff = _median(tl_attr, repeats)
    c, t_jx, res = _jax_timed(
        lambda v, a, b: iv.attribution_patch(jm, v, a, b, all_hp, jmetric).patched,
        jv,
        clean,
        corr,
        repeats=repeats,
    )
    ours = np.moveaxis(np.asarray(all_hp.unflatten(res)), 2, 1)  # -> [layer, pos, head]
    diff = float(np.abs(ours - tl_eff.numpy()).max())
    add("attribution (4608 sites)", t_tl, t_jx, c, diff, 3 * FWD_FLOPS, 3 * FWD_FLOPS)

    peak = max(peak, dot_peak())  # measured before and after, the better one
    print(
        f"\nGPT-2-small shape (12 layers, d 768, vocab {V}), batch {B} x {S}; "
        f"jnp.dot peak (best of 20 calls) {peak / 1e9:.0f} GFLOP/s; medians of {repeats} (sweeps: "
        f"{sweep_repeats}); torch threads 2; machine possibly shared\n"
    )
    print(
        "| measure | TL s | jaxinterp s | TL / jaxinterp | jaxinterp compile s | max abs diff "
        "| jaxinterp GFLOP/s (% peak) | TL GFLOP/s (% peak) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['measure']} | {r['tl_s']:.3f} | {r['jax_s']:.3f} | {r['ratio']:.2f}x "
            f"| {r['compile_s']:.1f} | {r['max_abs_diff']:.1e} "
            f"| {r['jax_gflops']:.0f} ({100 * r['jax_gflops'] * 1e9 / peak:.0f}%) "
            f"| {r['tl_gflops']:.0f} ({100 * r['tl_gflops'] * 1e9 / peak:.0f}%) |"
        )
    bad = [r["measure"] for r in rows if not r["max_abs_diff"] <= 1e-4]
    if bad:
        print(f"\nWARNING: results differ by more than 1e-4 on {bad}")
    flat = {"dot_peak_gflops": peak / 1e9}
    for r in rows:
        key = r["measure"].split(" ")[0]
        for field in ("ratio", "tl_s", "jax_s", "compile_s", "max_abs_diff", "jax_gflops"):
            flat[f"{key}_{field}"] = r[field]
    return flat


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2-layer head sweep, 48 hp sites")
    parser.add_argument("--hp-sites", type=int, default=48, help="48: 4 of the 12 heads")
    args = parser.parse_args()
    run(args.quick, args.repeats, 16 if args.quick else args.hp_sites)
