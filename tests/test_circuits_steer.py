"""Steering and generation: exactness against the KV-cache generator and numpy, and a toy
model trained so that a known direction controls its answer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp.circuits import add, contrastive_direction, generate, steering_sweep
from jaxinterp.circuits._steer import _filter
from jaxinterp.interventions import intervene
from jaxinterp.models import Decoder, DecoderConfig
from jaxinterp.models import generate as cached_generate

CFG = DecoderConfig(
    vocab_size=16, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, d_head=16, d_mlp=64
)
A, B, Q, X, Y = 1, 2, 3, 4, 5  # mode tokens, query token, the answers to A and B


def _prompts(key, n, mode):
    filler = jax.random.randint(key, (n, 5), 6, 16)
    col = jnp.full((n, 1), mode)
    return jnp.concatenate([col, filler, jnp.full((n, 1), Q)], 1)


@pytest.fixture(scope="module")
def toy():
    """A decoder trained to answer X after a prompt starting with A, Y after one with B."""
    m = Decoder(CFG)
    v = m.init(jax.random.key(0), jnp.zeros((1, 7), jnp.int32))
    opt = optax.adam(3e-3)

    def loss(params, k):
        ka, kb = jax.random.split(k)
        toks = jnp.concatenate([_prompts(ka, 32, A), _prompts(kb, 32, B)])
        target = jnp.concatenate([jnp.full(32, X), jnp.full(32, Y)])
        logits = m.apply({"params": params}, toks)[:, -1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, target).mean()

    @jax.jit
    def train(params):
        def step(carry, k):
            p, s = carry
            g = jax.grad(loss)(p, k)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(
            step, (params, opt.init(params)), jax.random.split(jax.random.key(1), 300)
        )
        return p

    v = {"params": train(v["params"])}
    a = _prompts(jax.random.key(5), 16, A)
    assert (jnp.argmax(m.apply(v, a)[:, -1], -1) == X).all()  # the task is learned
    return m, v


def test_greedy_equals_the_kv_cache_generator():
    m = Decoder(DecoderConfig(family="gpt2", n_layers=2, n_kv_heads=4, max_positions=16))
    v = m.init(jax.random.key(3), jnp.zeros((1, 4), jnp.int32))
    p = jax.random.randint(jax.random.key(4), (3, 5), 0, 128)
    want = cached_generate(m, v, p, 6)
    got, logits = generate(None, m, v, p, 6, temperature=0, return_logits=True)
    np.testing.assert_array_equal(got, want)
    # the logits at step t are the model's own at the last position of prompt + t tokens
    full = m.apply(v, jnp.concatenate([p, got], 1))
    np.testing.assert_allclose(logits, full[:, 4:10], atol=1e-4)
    # under the caller's jit and vmap (over two prompt groups)
    f = jax.jit(jax.vmap(lambda pp: generate(None, m, v, pp, 6, temperature=0)))
    np.testing.assert_array_equal(f(jnp.stack([p, p])), jnp.stack([want, want]))
    with pytest.raises(ValueError, match="n_new: prompt"):
        generate(None, m, v, p, 12, temperature=0)


def _np_filtered_probs(z, t, k, p):
    z = np.asarray(z, np.float64) / t
    if k is not None:
        z = np.where(z < np.sort(z)[-k], -np.inf, z)
    probs = np.exp(z - z.max())
    probs /= probs.sum()
    if p is not None:
        order = np.argsort(-probs)
        keep, total = [], 0.0
        for i in order:
            keep.append(i)
            total += probs[i]
            if total >= p:
                break
        mask = np.zeros_like(probs, bool)
        mask[keep] = True
        probs = np.where(mask, probs, 0)
        probs /= probs.sum()
    return probs


@pytest.mark.parametrize(
    "t,k,p", [(1.0, None, None), (0.7, 4, None), (1.3, None, 0.6), (1.0, 5, 0.8)]
)
def test_sampling_distribution_against_numpy(t, k, p):
    z = jnp.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])
    want = _np_filtered_probs(z, t, k, p)
    got = jax.nn.softmax(_filter(z / t, k, None if p is None else jnp.float32(p)))
    np.testing.assert_allclose(got, want, atol=1e-6)
    # and the sampler draws from it (generate's first token on a model whose logits are z)
    m = Decoder(
        DecoderConfig(
            vocab_size=8, n_layers=1, d_model=8, n_heads=1, n_kv_heads=1, d_head=8, d_mlp=8
        )
    )
    v = m.init(jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    v = jax.tree.map(jnp.zeros_like, v)  # logits 0 everywhere ...
    steer = {"unembed": lambda logits: logits + z}  # ... plus z: the next-token logits are z
    draws = generate(
        jax.random.key(2),
        m,
        v,
        jnp.zeros((4000, 1), jnp.int32),
        1,
        edits=steer,
        temperature=t,
        top_k=k,
        top_p=p,
    )[:, 0]
    freq = np.bincount(np.asarray(draws), minlength=8) / 4000
    np.testing.assert_allclose(freq, want, atol=0.03)
    assert np.all(freq[want == 0] == 0)


def test_same_key_same_text_and_topk1_is_greedy(toy):
    m, v = toy
    p = _prompts(jax.random.key(8), 4, A)
    a = generate(jax.random.key(0), m, v, p, 5, temperature=1.5)
    np.testing.assert_array_equal(a, generate(jax.random.key(0), m, v, p, 5, temperature=1.5))
    assert not np.array_equal(a, generate(jax.random.key(1), m, v, p, 5, temperature=1.5))
    np.testing.assert_array_equal(
        generate(jax.random.key(0), m, v, p, 5, top_k=1),
        generate(None, m, v, p, 5, temperature=0),
    )


def test_add_edit_matches_manual_and_intervene(toy):
    m, v = toy
    p = _prompts(jax.random.key(8), 2, B)
    d = jax.random.normal(jax.random.key(3), (32,))
    edit = add(d, 2.5, positions=jnp.array([0, 3]))
    x = jax.random.normal(jax.random.key(4), (2, 7, 32))
    want = np.asarray(x).copy()
    want[:, [0, 3]] += 2.5 * np.asarray(d)
    np.testing.assert_allclose(edit(x), want, atol=1e-6)
    # generate's steered first-step logits = intervene's logits at the prompt's last position
    _, logits = generate(
        None, m, v, p, 1, edits={"blocks_0": edit}, temperature=0, return_logits=True
    )
    buf = jnp.concatenate([p, jnp.zeros((2, 1), p.dtype)], 1)
    direct = jax.jit(lambda vv, b: intervene(m, vv, {"blocks_0": edit})(b))(v, buf)[:, 6]
    np.testing.assert_allclose(logits[:, 0], direct, atol=1e-5)


def test_known_direction_steers_exactly(toy):
    # at the embedding, position 0, the direction emb[A] - emb[B] turns a B prompt into the
    # A prompt: the steered model must answer exactly as on the A prompt
    m, v = toy
    table = v["params"]["embed"]["tok"]["embedding"]
    pb = _prompts(jax.random.key(11), 16, B)
    pa = pb.at[:, 0].set(A)
    d = contrastive_direction(m, v, "embed", pa[:1], pb[:1], position=0)
    np.testing.assert_allclose(d, table[A] - table[B], atol=1e-6)
    steered, z = generate(
        None,
        m,
        v,
        pb,
        3,
        edits={"embed": add(d, 1.0, positions=0)},
        temperature=0,
        return_logits=True,
    )
    want, zw = generate(None, m, v, pa, 3, temperature=0, return_logits=True)
    np.testing.assert_array_equal(steered, want)
    np.testing.assert_allclose(z, zw, atol=1e-4)
    assert (steered[:, 0] == X).all()


def test_contrastive_steering_flips_the_answer_random_does_not(toy):
    m, v = toy
    pa = _prompts(jax.random.key(20), 64, A)
    pb = _prompts(jax.random.key(21), 64, B)
    sites = ["blocks_0", "blocks_1"]
    caa = jnp.stack([contrastive_direction(m, v, s, pa, pb) for s in sites])  # [site, d]
    rnd = jax.random.normal(jax.random.key(5), caa.shape)
    rnd = (
        rnd
        / jnp.linalg.norm(rnd, axis=-1, keepdims=True)
        * jnp.linalg.norm(caa, axis=-1, keepdims=True)
    )
    dirs = jnp.stack([caa, rnd], 1)  # [site, direction, d]
    held = _prompts(jax.random.key(22), 32, B)
    r = steering_sweep(
        None, m, v, held, dirs, jnp.array([0.0, 1.0, 2.0]), sites, 2, positions=held.shape[1] - 1
    )
    assert r.tokens.shape == (2, 3, 2, 32, 2)
    first = np.asarray(r.tokens[..., 0])  # [site, scale, direction, batch]
    np.testing.assert_array_equal(first[:, 0], Y)  # unsteered: Y
    # the last layer's contrastive direction at the answer position flips it to X ...
    assert (first[1, 1:, 0] == X).mean() > 0.9
    # ... a random direction of the same norm leaves it alone
    assert (first[1, 1:, 1] == Y).mean() > 0.9
    # one sweep member equals a plain generate with that edit
    one = generate(
        None, m, v, held, 2, temperature=0, edits={"blocks_1": add(caa[1], 2.0, positions=6)}
    )
    np.testing.assert_array_equal(r.tokens[1, 2, 0], one)


def test_bad_inputs(toy):
    m, v = toy
    p = _prompts(jax.random.key(8), 2, A)
    with pytest.raises(TypeError, match="key"):
        generate(0, m, v, p, 2)
    with pytest.raises(ValueError, match="n_new"):
        generate(None, m, v, p, 0, temperature=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(jax.random.key(0), m, v, p, 1, temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        generate(jax.random.key(0), m, v, p, 1, top_p=1.5)
    with pytest.raises(ValueError, match="top_k"):
        generate(jax.random.key(0), m, v, p, 1, top_k=0)
    with pytest.raises(TypeError, match="edits"):
        generate(None, m, v, p, 1, temperature=0, edits=[1])
    with pytest.raises(ValueError, match="direction: expected the activation"):
        add(jnp.ones(3))(jnp.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="position: 9 is out of range"):
        contrastive_direction(m, v, "blocks_0", p, p, position=9)
    with pytest.raises(ValueError, match="directions"):
        steering_sweep(None, m, v, p, jnp.ones((3, 2, 4, 32)), jnp.ones(2), ["blocks_0"], 1)
    with pytest.raises(TypeError, match="sites"):
        steering_sweep(None, m, v, p, jnp.ones((2, 32)), jnp.ones(2), "blocks_0", 1)


def test_models_generate_takes_the_same_edits():
    """``models.generate(..., edits=)`` is ``circuits.generate``; greedy with a zero edit gives
    the KV-cached decoding's tokens (two implementations of one decoding)."""
    from jaxinterp import models
    from jaxinterp.circuits import add, generate

    cfg = models.DecoderConfig(n_layers=2, d_model=32, n_heads=2, n_kv_heads=1, d_head=16)
    m = models.Decoder(cfg)
    v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    p = jax.random.randint(jax.random.key(1), (3, 5), 0, cfg.vocab_size)
    d = jax.random.normal(jax.random.key(2), (cfg.d_model,))
    steer = {"blocks_0": add(d, 6.0)}
    want = generate(None, m, v, p, 6, edits=steer, temperature=0)
    np.testing.assert_array_equal(models.generate(m, v, p, 6, edits=steer), want)
    k = jax.random.key(3)
    np.testing.assert_array_equal(
        models.generate(m, v, p, 6, key=k, top_k=5, edits=steer),
        generate(k, m, v, p, 6, edits=steer, top_k=5),
    )
    plain = models.generate(m, v, p, 6)  # KV cache
    zero = models.generate(m, v, p, 6, edits={"blocks_0": add(d, 0.0)})  # no cache
    np.testing.assert_array_equal(zero, plain)
    assert not np.array_equal(want, plain)  # the steering changed the tokens
    with pytest.raises(ValueError, match="attention_mask: not supported with edits"):
        models.generate(m, v, p, 2, edits=steer, attention_mask=jnp.ones_like(p))
    with pytest.raises(ValueError, match="key: temperature"):
        models.generate(m, v, p, 2, edits=steer, top_k=3)
