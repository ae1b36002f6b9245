"""Sampled generation against numpy, and the decoder's clamped / wrapped / dropped cases.

Sampling: the first sampled token's empirical frequencies over many keys (one vmapped call)
against ``softmax(logits / T)`` with top-k and top-p truncation computed in numpy from the
model's own logits. With N samples a frequency has standard error sqrt(p (1 - p) / N); the
bound is 5 standard errors + 1e-3 (a false failure has probability < 1e-5 per token), and
truncated tokens must never appear (exact).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp.models import (
    Decoder,
    DecoderConfig,
    decoder_params_from_hf,
    generate,
    init_cache,
    load_decoder,
    read_safetensors,
)

FIX = Path(__file__).parent / "fixtures" / "decoders"
N = 4000


@pytest.fixture(scope="module")
def tiny():
    cfg = DecoderConfig(vocab_size=12, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1,
                        d_head=8, d_mlp=32)  # fmt: skip
    m = Decoder(cfg)
    v = jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    v = jax.tree.map(lambda a: a * 3.0, v)  # spread the logits: p from 0.35 down to 0.02
    prompt = jnp.array([[3, 1, 4]])
    logits = np.asarray(jax.jit(m.apply)(v, prompt), np.float64)[0, -1]
    return m, v, prompt, logits


def _numpy_probs(logits, temperature=1.0, top_k=None, top_p=None):
    x = logits / temperature
    if top_k is not None:
        x = np.where(x < np.sort(x)[::-1][top_k - 1], -np.inf, x)
    if top_p is not None:
        order = np.argsort(-x, kind="stable")
        p = np.exp(x[order] - x[order].max())
        p /= p.sum()
        before = np.cumsum(p) - p
        keep = order[before < top_p]
        x = np.where(np.isin(np.arange(len(x)), keep), x, -np.inf)
    p = np.exp(x - x.max())
    return p / p.sum()


CASES = [
    dict(),
    dict(temperature=0.7, top_k=4),
    dict(temperature=1.5, top_p=0.6),
    dict(top_k=6, top_p=0.8),
]


@pytest.mark.parametrize("opts", CASES, ids=[str(c) for c in CASES])
def test_sampling_distribution_matches_numpy(tiny, opts):
    m, v, prompt, logits = tiny
    keys = jax.random.split(jax.random.key(1), N)
    first = jax.vmap(lambda k: generate(m, v, prompt, 1, key=k, **opts)[0, 0])(keys)
    freq = np.bincount(np.asarray(first), minlength=12) / N
    p = _numpy_probs(logits, **opts)
    assert (p > 0.02).sum() >= 3  # not a degenerate case
    assert np.all(freq[p == 0] == 0), (freq, p)
    bound = 5 * np.sqrt(p * (1 - p) / N) + 1e-3
    assert np.all(np.abs(freq - p) <= bound), (freq, p)


def test_same_key_same_tokens_top_k_1_is_greedy(tiny):
    m, v, prompt, _ = tiny
    batch = jnp.concatenate([prompt, prompt[:, ::-1]])
    greedy = generate(m, v, batch, 6)
    k = jax.random.key(7)
    np.testing.assert_array_equal(generate(m, v, batch, 6, key=k, top_k=1), greedy)
    a = generate(m, v, batch, 6, key=k, temperature=2.0)
    np.testing.assert_array_equal(a, generate(m, v, batch, 6, key=k, temperature=2.0))
    others = [generate(m, v, batch, 6, key=jax.random.key(s), temperature=2.0) for s in range(4)]
    assert any(not np.array_equal(a, o) for o in others)
    jitted = jax.jit(lambda v, k: generate(m, v, batch, 6, key=k, temperature=2.0))(v, k)
    np.testing.assert_array_equal(jitted, a)


def test_sampling_options_checked(tiny):
    m, v, prompt, _ = tiny
    with pytest.raises(ValueError, match="^key: temperature/top_k/top_p"):
        generate(m, v, prompt, 2, top_k=3)
    k = jax.random.key(0)
    with pytest.raises(ValueError, match="^temperature"):
        generate(m, v, prompt, 2, key=k, temperature=0.0)
    with pytest.raises(ValueError, match="^top_k"):
        generate(m, v, prompt, 2, key=k, top_k=13)
    with pytest.raises(ValueError, match="^top_p"):
        generate(m, v, prompt, 2, key=k, top_p=1.5)


def test_prompt_id_outside_vocab_raises_or_poisons(tiny):
    m, v, prompt, _ = tiny
    bad = prompt.at[0, 1].set(12)
    with pytest.raises(ValueError, match=r"^prompt: expected ids in \[0, 12\), got 12"):
        generate(m, v, bad, 3)
    both = jnp.concatenate([bad, prompt])
    out = jax.jit(lambda v, p: generate(m, v, p, 3))(v, both)
    np.testing.assert_array_equal(out[0], [-1, -1, -1])
    np.testing.assert_array_equal(out[1], generate(m, v, prompt, 3)[0])


def test_decode_past_cache_end_raises_or_poisons(tiny):
    m, v, _, _ = tiny
    cache = init_cache(m.cfg, 1, 8)
    ids = jnp.array([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"^start: expected .* <= 8 \(cache length\), got start=6"):
        m.apply({**v, "cache": cache}, ids, 6, True, mutable="cache")

    @jax.jit
    def step(start):
        return m.apply({**v, "cache": cache}, ids, start, True, mutable="cache")[0]

    assert np.isnan(np.asarray(step(6))).all()  # never a clamped write at slots 5..7
    assert np.isfinite(np.asarray(step(5))).all()


def test_unused_checkpoint_tensors_warn_by_name():
    tensors = read_safetensors(FIX / "llama" / "model.safetensors")
    d = load_decoder(FIX / "llama")
    extra = {**tensors, "model.layers.2.mlp.up_proj.weight": np.zeros((96, 64), np.float32)}
    with pytest.warns(UserWarning, match=r"layers\.2\.mlp\.up_proj\.weight"):
        decoder_params_from_hf(extra, d.config)
    buffers = {**tensors, "model.layers.0.self_attn.rotary_emb.inv_freq": np.zeros(8)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known buffers and a complete checkpoint: no warning
        decoder_params_from_hf(buffers, d.config)
