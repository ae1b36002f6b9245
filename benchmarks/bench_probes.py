"""Benchmark: layer × task logistic probes in one jit vs scikit-learn fitting them one by one.

Features are synthetic but shaped like activations: a shared low-rank latent mixed differently
per layer, anisotropic noise and non-zero means; labels are linear functions of the latent
(three binary tasks with different balance, one 4-class task). Ours is ``fit_logistic``
(optax ``scale_by_lbfgs`` in whitened coordinates with a line search on cached logits); in
quick mode plain ``optax.lbfgs`` on the raw coordinates is timed as well. All fit the same
objective (``LogisticRegression(C)``: mean CE + ‖w‖²/(2Cn)) on the same raw features;
scikit-learn uses lbfgs with its default ``tol`` and enough ``max_iter`` to reach it,
fitting the probes one by one (BLAS threads: default or one, whichever is faster on the
first probe; reported as 0 = default).

Reports wall times (median of repeats, compile excluded), the speed-up, the largest test
accuracy difference in percentage points, passes over the features and the effective
bandwidth (bytes of features read / time).

    python benchmarks/bench_probes.py [--quick]
"""

from __future__ import annotations

import argparse
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from _timing import median_time

from jaxinterp.probes import fit_logistic, predict


def synthetic_features(
    seed: int, layers: int, n: int, d: int, rank: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """``features [layer, n, d] float32`` and ``labels [4, n] int`` (3 binary, 1 four-class)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, rank))
    feats = np.empty((layers, n, d), np.float32)
    for i in range(layers):
        mix = rng.normal(size=(rank, d)) / np.sqrt(rank)
        scale = np.exp(rng.normal(scale=0.5, size=d))
        noise = (0.5 + 1.5 * (1 - i / max(layers - 1, 1))) * rng.normal(size=(n, d))
        feats[i] = (z @ mix + noise) * scale + rng.normal(size=d)
    u = rng.normal(size=(rank, 6))
    s = z @ u + 0.7 * rng.normal(size=(n, 6))
    labels = np.stack(
        [
            s[:, 0] > 0,
            s[:, 1] > np.quantile(s[:, 1], 0.8),
            s[:, 2] > 0.3,
            np.argmax(np.stack([s[:, 3], s[:, 4], s[:, 5], np.zeros(n)], 1), 1),
        ]
    ).astype(np.int32)
    return feats, labels


def _optax_lbfgs_fit(x, y, *, num_classes, lam, max_iter, tol):
    """Reference: the same objective with ``optax.lbfgs`` (no preconditioner, zoom line search),
    vmapped over layers × tasks the same way."""
    from jaxinterp.probes._fit import _ce, _over_grid, _penalty_mask, _task

    def core(x, y):
        t = _task(y, num_classes)
        pen = _penalty_mask(x.shape[1])

        def f(theta):
            theta = theta * t.free
            z = x @ theta[:-1] + theta[-1]
            return _ce(t, z) + 0.5 * lam * jnp.sum(pen[:, None] * theta**2)

        opt = optax.lbfgs()
        vg = optax.value_and_grad_from_state(f)

        def step(carry):
            params, state = carry
            value, grad = vg(params, state=state)
            updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=f)
            return optax.apply_updates(params, updates), state

        def cond(carry):
            _, state = carry
            it = otu.tree_get(state, "count")
            g = otu.tree_get(state, "grad")
            return (it == 0) | ((it < max_iter) & (jnp.max(jnp.abs(g)) > tol))

        theta0 = jnp.zeros((x.shape[1] + 1, num_classes))
        params, state = jax.lax.while_loop(cond, step, (theta0, opt.init(theta0)))
        return params * t.free, otu.tree_get(state, "count")

    return jax.jit(_over_grid(core))(x, y)


def run(quick: bool = False) -> dict:
    """Runs both sides in this process and returns a flat dict of numbers."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    layers, n, d = (4, 2000, 256) if quick else (12, 10000, 768)
    n_test = n // 5
    feats, labels = synthetic_features(0, layers, n + n_test, d)
    xtr, xte = feats[:, :n], feats[:, n:]
    ytr, yte = labels[:, :n], labels[:, n:]
    tasks = labels.shape[0]
    c = 1.0

    x = jnp.asarray(xtr)
    y = jnp.asarray(ytr)
    fit = lambda: fit_logistic(x, y, C=c, tol=1e-4, max_iter=200)
    probe, info = jax.block_until_ready(fit())  # compile + warm-up
    ours_s = median_time(fit, 2 if quick else 3, warmup=False)
    acc_ours = np.asarray(predict(probe, jnp.asarray(xte)) == jnp.asarray(yte)[None]).mean(-1)
    iters = int(np.max(info.iterations))
    # standardised copy (~5), preconditioner, first gradient, two per iteration
    passes = 8 + 2 * iters
    bytes_read = passes * x.nbytes

    xb = x.astype(jnp.bfloat16)
    fit_bf16 = lambda: fit_logistic(xb, y, C=c, tol=1e-4, max_iter=200)
    probe_b, info_b = jax.block_until_ready(fit_bf16())
    bf16_s = median_time(fit_bf16, 1, warmup=False)
    acc_bf16 = np.asarray(
        predict(probe_b, jnp.asarray(xte, jnp.bfloat16)) == jnp.asarray(yte)[None]
    ).mean(-1)

    def sklearn_all():
        acc = np.zeros((layers, tasks))
        iters = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for li in range(layers):
                for ti in range(tasks):
                    m = LogisticRegression(C=c, max_iter=1000).fit(xtr[li], ytr[ti])
                    acc[li, ti] = m.score(xte[li], yte[ti])
                    iters.append(int(np.max(m.n_iter_)))
        return acc, iters

    # BLAS threads for scikit-learn: its default pool or one thread, whichever fits the first
    # probe faster (spinning BLAS threads next to XLA's pool can stall a 2-core machine).
    trial = {}
    for threads in (None, 1):
        with threadpool_limits(threads):
            t0 = time.perf_counter()
            LogisticRegression(C=c, max_iter=1000).fit(xtr[0], ytr[0])
            trial[threads] = time.perf_counter() - t0
    threads = min(trial, key=trial.get)
    with threadpool_limits(threads):
        t0 = time.perf_counter()
        acc_sk, sk_iters = sklearn_all()
        sk_s = time.perf_counter() - t0

    # Reference: optax.lbfgs on the same objective (identity preconditioner, zoom line search).
    # Quick mode only: at full size it needs many minutes (hundreds of iterations, each with
    # several line-search passes).
    optax_res = {}
    if quick:
        lam = 1.0 / (c * n)
        fit_optax = lambda: _optax_lbfgs_fit(x, y, num_classes=4, lam=lam, max_iter=300, tol=1e-4)
        theta_o, iters_o = jax.block_until_ready(fit_optax())
        optax_s = median_time(fit_optax, 1, warmup=False)
        z_o = jnp.einsum("lnd,ltdk->ltnk", jnp.asarray(xte), theta_o[:, :, :-1])
        z_o = z_o + theta_o[:, :, None, -1]
        acc_optax = np.asarray(jnp.argmax(z_o, -1) == jnp.asarray(yte)[None]).mean(-1)
        optax_res = {
            "optax_lbfgs_s": optax_s,
            "speedup_vs_optax_lbfgs": optax_s / ours_s,
            "optax_lbfgs_max_iterations": int(np.max(iters_o)),
            "max_abs_acc_diff_optax_pp": float(np.max(np.abs(acc_optax - acc_sk)) * 100),
        }

    res = {
        "layers": layers,
        "tasks": tasks,
        "n": n,
        "d": d,
        "sklearn_s": sk_s,
        "sklearn_blas_threads": 0 if threads is None else threads,
        "sklearn_first_probe_default_threads_s": trial[None],
        "sklearn_first_probe_one_thread_s": trial[1],
        "ours_s": ours_s,
        "ours_bf16_s": bf16_s,
        "speedup_vs_sklearn": sk_s / ours_s,
        "speedup_bf16_vs_sklearn": sk_s / bf16_s,
        "max_abs_acc_diff_pp": float(np.max(np.abs(acc_ours - acc_sk)) * 100),
        "mean_abs_acc_diff_pp": float(np.mean(np.abs(acc_ours - acc_sk)) * 100),
        "max_abs_acc_diff_bf16_pp": float(np.max(np.abs(acc_bf16 - acc_sk)) * 100),
        "mean_test_acc_ours": float(acc_ours.mean()),
        "mean_test_acc_sklearn": float(acc_sk.mean()),
        "ours_max_iterations": iters,
        "ours_data_passes": passes,
        "ours_bf16_data_passes": 8 + 2 * int(np.max(info_b.iterations)),
        "sklearn_mean_iterations": float(np.mean(sk_iters)),
        "sklearn_data_passes_approx": float(2 * np.sum(sk_iters)) / layers,
        "ours_effective_GBps": bytes_read / ours_s / 1e9,
        "ours_converged_fraction": float(np.mean(info.converged)),
        **optax_res,
    }
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return res


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    run(quick=parser.parse_args().quick)
