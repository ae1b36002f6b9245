"""Benchmark: L sites × K settings of dictionaries trained in one compiled call vs one by one.

Data: a superposition toy per site (``n_features`` random unit directions in ``d`` dimensions,
each on with probability ``3 / n_features`` with a uniform coefficient; other directions at
every site), ``[steps, batch, site, d]``. Settings: ReLU (L1), TopK, BatchTopK, JumpReLU.

* ``stacked``: every (site, setting) dictionary in one :func:`jaxinterp.features.train_steps`
  call (a vmap over the stack inside one ``lax.scan``).
* ``loop``: the same dictionaries trained one at a time with the same steps (one
  ``train_steps`` call each; dictionaries of one architecture share a compiled program).

Both are timed twice: first call *with* compilation (what a user waits for) and a second call
(compiled). Memory: bytes of the training state (params + Adam moments + counters) of the
stack vs one dictionary, and XLA's temporary-buffer estimate of each compiled program.
``--saelens PYTHON`` times one TopK SAE trained by jaxinterp (one ``train_steps`` call, with
and without compilation) against SAELens's own ``SAETrainer`` (``TopKTrainingSAE``, run by
``benchmarks/_saelens_train.py`` under ``PYTHON``, a venv with torch and ``sae-lens``) on the
same cached activations (one site of the toy), same width, ``k``, batch and steps; SAELens at
1 and 2 torch threads (its best is reported; on a busy machine 2 threads can be slower).
``--recovery`` also trains the settings on the 256-features-in-64-dimensions toy and reports
the mean max cosine between true features and decoder rows per setting.

    python benchmarks/bench_features.py [--quick] [--recovery STEPS] [--saelens PYTHON]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from _timing import times

from jaxinterp import features as F
from jaxinterp.features._train import _groups, _scan

SETTINGS = {
    "relu": F.relu(0.3),
    "topk": F.topk(4),
    "batch_topk": F.batch_topk(4),
    "jumprelu": F.jumprelu(0.1, bandwidth=0.05),
}
CFG = F.TrainConfig(
    lr=3e-3, max_k=4, k_aux=32, dead_tokens=20_000, lr_warmup=50, sparsity_warmup=200
)


def _data(sites: int, steps: int, batch: int, n_features: int, d: int):
    xs, feats = [], []
    for s in range(sites):
        f = F.toy_features(jax.random.key(100 + s), n_features, d)
        x = F.toy_batch(jax.random.key(200 + s), f, steps * batch, 3 / n_features)
        xs.append(x.reshape(steps, batch, d))
        feats.append(f)
    return jnp.stack(xs, axis=2), feats


def _init(n: int, d: int, d_sae: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.jit(jax.vmap(lambda k: F.init_params(k, d, d_sae, threshold=0.1)))(keys)


def _bytes(tree) -> int:
    return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(tree))


def _temp_bytes(state, settings, read, xs) -> int:
    comp = _scan.lower(state, settings, read, read, xs, xs, CFG, _groups(settings)).compile()
    mem = comp.memory_analysis()
    return int(getattr(mem, "temp_size_in_bytes", 0)) if mem is not None else -1


def run(quick: bool = False) -> dict:
    sites, steps, batch, d, d_sae, nf = (
        (2, 100, 256, 64, 256, 256) if quick else (4, 300, 256, 64, 256, 256)
    )
    names = list(SETTINGS)
    xs, _ = _data(sites, steps, batch, nf, d)
    pairs = [(s, a) for s in range(sites) for a in names]
    settings = F.stack_settings([SETTINGS[a] for _, a in pairs])
    read = np.array([s for s, _ in pairs], np.int32)
    n = len(pairs)

    def stacked():
        st = F.init_train(_init(n, d, d_sae), CFG)
        st, m = F.train_steps(st, settings, xs, read=read, config=CFG)
        return jax.block_until_ready(st.params)

    def loop():
        out = []
        for j, (s, a) in enumerate(pairs):
            st = F.init_train(_init(1, d, d_sae, seed=j), CFG)
            st, _ = F.train_steps(st, F.stack_settings([SETTINGS[a]]), xs[:, :, s], config=CFG)
            out.append(st.params)
        return jax.block_until_ready(out)

    # the first call (compilation counted) and the next one
    t_stacked_first, t_stacked = times(stacked, 2, warmup=False)
    t_loop_first, t_loop = times(loop, 2, warmup=False)

    st_all = F.init_train(_init(n, d, d_sae), CFG)
    st_one = F.init_train(_init(1, d, d_sae), CFG)
    temp_all = _temp_bytes(st_all, settings, jnp.asarray(read), xs)
    temp_one = _temp_bytes(
        st_one, F.stack_settings([SETTINGS["topk"]]), jnp.zeros(1, jnp.int32), xs[:, :, :1]
    )
    res = {
        "dictionaries": n,
        "sites": sites,
        "settings": len(names),
        "steps": steps,
        "batch": batch,
        "d": d,
        "d_sae": d_sae,
        "stacked_first_s": t_stacked_first,
        "loop_first_s": t_loop_first,
        "ratio_with_compile": t_loop_first / t_stacked_first,
        "stacked_s": t_stacked,
        "loop_s": t_loop,
        "ratio_compiled": t_loop / t_stacked,
        "tokens_per_s_stacked": n * steps * batch / t_stacked,
        "tokens_per_s_loop": n * steps * batch / t_loop,
        "state_bytes_stacked": _bytes(st_all),
        "state_bytes_one": _bytes(st_one),
        "temp_bytes_stacked": temp_all,
        "temp_bytes_one": temp_one,
    }
    return res


def recovery(steps: int, batch: int = 256) -> dict:
    """Mean max cosine per setting on the 256-features-in-64-dimensions toy."""
    settings = {
        "relu l1=0.3": F.relu(0.3),
        "relu l1=1": F.relu(1.0),
        "topk k=4": F.topk(4),
        "batch_topk k=4": F.batch_topk(4),
        "jumprelu l0=0.1": F.jumprelu(0.1, bandwidth=0.05),
        "jumprelu l0=0.3": F.jumprelu(0.3, bandwidth=0.05),
    }
    xs, feats = _data(1, steps, batch, 256, 64)
    st = F.init_train(_init(len(settings), 64, 256), CFG)
    init = np.asarray(F.max_cosine(st.params.W_dec, feats[0]))
    t0 = time.perf_counter()
    st, m = F.train_steps(st, F.stack_settings(list(settings.values())), xs, config=CFG)
    secs = time.perf_counter() - t0
    mmcs = np.asarray(F.max_cosine(st.params.W_dec, feats[0]))
    last = jax.tree.map(lambda a: np.asarray(a[-100:]).mean(0), m)
    out = {"steps": steps, "seconds": secs, "init_mmcs": float(init.mean())}
    for j, name in enumerate(settings):
        out[name] = {
            "mmcs": float(mmcs[j]),
            "fvu": float(last.fvu[j]),
            "l0": float(last.l0[j]),
            "dead": float(last.dead[j]),
        }
    return out


def vs_saelens(python: str, d_sae: int = 1024, k: int = 32, batch: int = 256, steps: int = 200):
    """Tokens per second of one TopK SAE: jaxinterp vs SAELens's trainer, same cached data."""
    xs, _ = _data(1, steps, batch, 1024, 256)  # [steps, batch, 1, 256]
    cfg = F.TrainConfig(lr=1e-3, max_k=k, k_aux=2 * k)
    setting = F.stack_settings([F.topk(k)])

    def ours():
        st = F.init_train(_init(1, 256, d_sae), cfg)
        st, _ = F.train_steps(st, setting, xs, config=cfg)
        return jax.block_until_ready(st.params)

    first, compiled = times(ours, 2, warmup=False)
    out = {
        "d": 256, "d_sae": d_sae, "k": k, "batch": batch, "steps": steps,
        "jaxinterp_tokens_per_s_with_compile": steps * batch / first,
        "jaxinterp_tokens_per_s": steps * batch / compiled,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "acts.npy"
        np.save(path, np.asarray(xs).reshape(-1, 256))
        script = Path(__file__).with_name("_saelens_train.py")
        for threads in (1, 2):
            args = [python, str(script), str(path), str(d_sae), str(k), str(batch), str(steps)]
            proc = subprocess.run(
                [*args, str(threads)], capture_output=True, text=True, timeout=1200
            )
            if proc.returncode:
                raise RuntimeError(f"SAELens run failed:\n{proc.stderr[-2000:]}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            out[f"saelens_tokens_per_s_{threads}_threads"] = res["tokens_per_s"]
    best = max(out["saelens_tokens_per_s_1_threads"], out["saelens_tokens_per_s_2_threads"])
    out["ratio_compiled_vs_saelens_best"] = out["jaxinterp_tokens_per_s"] / best
    out["ratio_with_compile_vs_saelens_best"] = out["jaxinterp_tokens_per_s_with_compile"] / best
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--recovery", type=int, default=0, help="steps of the recovery run (0: skip)")
    ap.add_argument("--saelens", default="", help="python of a venv with torch + sae-lens")
    args = ap.parse_args()
    if args.saelens:
        for k, v in vs_saelens(args.saelens).items():
            print(f"{k:<40} {v:.4g}" if isinstance(v, float) else f"{k:<40} {v}")
    elif args.recovery:
        for k, v in recovery(args.recovery).items():
            print(f"{k:<18} {v}")
    else:
        for k, v in run(args.quick).items():
            print(f"{k:<24} {v:.4g}" if isinstance(v, float) else f"{k:<24} {v}")
