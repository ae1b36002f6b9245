"""Google's ``gemma`` package (Gemma 3 architecture, random init, tiny config).

Its ``gm.nn.Transformer.__call__`` is wrapped in ``nn.jit`` (a cached trace would skip every
hook after the first forward), its feed-forward shares one scope between three calls (``mlp``,
``mlp@1``, ``mlp@2``), its projections are called as ``Einsum(eqn, x)`` (a string first), its
embedder is used through ``encode``/``decode``, and its attention is hand-written over
``'BTNS'`` = ``[batch, q, head, k]`` logits with grouped-query heads, RoPE, soft-capping and
sliding windows. Everything is checked against the model's own parameters and functions.

Installed by ``requirements-zoo.txt`` (``pip install --no-deps -r requirements-zoo.txt``):
``gemma`` pins a ``kauldron`` whose typing module imports TensorFlow, so the closure is listed
explicitly instead of letting pip resolve it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from gemma import gm  # requirements-zoo.txt; imported plainly so a missing install fails
from gemma import modules as gmod
from gemma import positional_embeddings as gpe
from gemma import transformer as gtr

from jaxinterp.attention import attention_weights, stack_layers
from jaxinterp.capture import capture, list_paths
from jaxinterp.interventions import intervene, zero

B, T, V, D, N, KV, H, F = 2, 7, 64, 16, 4, 2, 8, 32
WINDOW, CAP = 3, 50.0
TYPES = (gmod.AttentionType.LOCAL_SLIDING, gmod.AttentionType.GLOBAL)


@functools.cache
def _gemma():
    cfg = dataclasses.replace(
        gtr.TransformerConfig.gemma3_1b(),
        num_layers=2,
        num_embed=V,
        embed_dim=D,
        hidden_dim=F,
        num_heads=N,
        head_dim=H,
        num_kv_heads=KV,
        sliding_window_size=WINDOW,
        attention_types=TYPES,
        attn_logits_soft_cap=CAP,
    )
    model = gm.nn.Transformer(config=cfg, dtype=jnp.float32)
    tokens = jax.random.randint(jax.random.key(0), (B, T), 1, V)  # 0 is padding
    variables = model.init(jax.random.key(1), tokens)
    out = model.apply(variables, tokens)  # a plain forward first: fills nn.jit's cache
    return model, variables, tokens, out, cfg


def test_list_paths_after_a_plain_forward():
    model, v, tokens, _, _ = _gemma()
    paths = list_paths(model, v, tokens)
    for i in range(2):
        for p in ("attn", "attn/q_einsum", "attn/attn_vec_einsum", "mlp", "mlp@1", "mlp@2"):
            assert f"layer_{i}/{p}" in paths
    assert paths["layer_0/mlp@1"].shape == (B, T, 2, F)  # the gating einsum, one shared scope


def test_repeated_calls_of_one_scope_are_selectable():
    model, v, tokens, out, _ = _gemma()
    got, acts = jax.jit(capture(model, v, select=["layer_0/mlp@1", "layer_0/mlp@2"]))(tokens)
    np.testing.assert_allclose(got.logits, out.logits, atol=1e-5)
    assert sorted(acts) == ["layer_0/mlp@1", "layer_0/mlp@2"]
    gate = acts["layer_0/mlp@1"]
    w = v["params"]["layer_0"]["mlp"]["linear"]
    hidden = jax.nn.gelu(gate[..., 0, :]) * gate[..., 1, :]
    np.testing.assert_allclose(acts["layer_0/mlp@2"], hidden @ w, rtol=1e-5, atol=1e-5)


def test_embedder_encode_is_hooked_with_methods():
    model, v, tokens, _, cfg = _gemma()
    f = capture(model, v, select="embedder.encode", methods=("encode", "decode"))
    _, acts = jax.jit(f)(tokens)
    table = v["params"]["embedder"]["input_embedding"]
    np.testing.assert_allclose(acts["embedder.encode"], table[tokens] * np.sqrt(D), rtol=1e-6)


def _np_attention(q_norm, k_norm, kind, cfg):
    """Gemma's attention from the captured normed q/k, RoPE from the package: [b, n, q, k]."""
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    base = cfg.local_base_frequency if kind == TYPES[0] else cfg.global_base_frequency
    q = np.asarray(gpe.apply_rope(q_norm, pos, base_frequency=base), np.float64) * H**-0.5
    k = np.asarray(gpe.apply_rope(k_norm, pos, base_frequency=base), np.float64)
    k = np.repeat(k, N // KV, axis=2)  # query head n reads kv head n // (N / KV)
    logits = np.tanh(np.einsum("btnh,bsnh->bnts", q, k) / CAP) * CAP
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    ok = j <= i
    if kind == TYPES[0]:
        ok = ok & (i - j < WINDOW)
    logits = np.where(ok, logits, -np.inf)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("use_jit", [False, True])
def test_attention_weights_bqhk_layout_match_rope_gqa_reference(use_jit):
    model, v, tokens, out, cfg = _gemma()
    f = attention_weights(model, v)
    got, maps = (jax.jit(f) if use_jit else f)(tokens)
    np.testing.assert_allclose(got.logits, out.logits, atol=1e-5)
    assert list(maps) == ["layer_0/attn", "layer_1/attn"]
    assert stack_layers(maps).shape == (2, B, N, T, T)  # [layer, batch, head, q, k]
    sel = [f"layer_*/attn/{p}" for p in ("_query_norm", "_key_norm")]
    _, qk = capture(model, v, select=sel)(tokens)
    for i, kind in enumerate(TYPES):
        ref = _np_attention(
            qk[f"layer_{i}/attn/_query_norm"], qk[f"layer_{i}/attn/_key_norm"], kind, cfg
        )
        # float32 vs float64 through RoPE, a soft-cap and a softmax of 7 keys: 1e-5
        np.testing.assert_allclose(maps[f"layer_{i}/attn"], ref, atol=1e-5)


def test_head_ablation_on_einsum_input_equals_zeroed_weights():
    model, v, tokens, out, _ = _gemma()
    head = 1
    site = "layer_1/attn/attn_vec_einsum:input"  # Einsum('BTNH,NHD->BTD', x): x, not the eqn
    got = jax.jit(intervene(model, v, {site: zero(at={-2: head})}))(tokens)
    p = jax.tree.map(np.array, v["params"])
    p["layer_1"]["attn"]["attn_vec_einsum"]["w"][head] = 0
    want = model.apply({"params": p}, tokens)
    np.testing.assert_allclose(got.logits, want.logits, atol=1e-5)
    assert float(jnp.abs(want.logits - out.logits).max()) > 1e-3  # the head matters


def test_soft_prompt_through_the_embedders_encode_method_gives_the_models_own_logits():
    """Issue 20: the embedder is used through ``encode``; ``maximize(methods=("encode",))``
    lets a soft prompt replace its output, with no hand-written forward. Started at
    ``encode(ids)`` (the table rows times sqrt(d_model)), the first trace value (before any
    step) is the model's own logit for ``ids``; the placeholder ids are non-padding
    (``token_id=2``: Gemma masks id 0). The ascent then raises the logit."""
    from jaxinterp import actmax

    model, v, tokens, _, _ = _gemma()
    table = v["params"]["embedder"]["input_embedding"]
    ids = tokens[:1]  # ids in [1, V): no padding
    targets = jnp.array([3, 30])
    res = actmax.maximize(
        jax.random.key(0),
        model,
        v,
        lambda t: actmax.class_logit(t, position=(T - 1,)),
        targets,
        param=actmax.soft_prompt(table, T, site="embedder.encode", token_id=2),
        methods=("encode",),
        init=jnp.broadcast_to(table[ids] * np.sqrt(D), (2, 1, T, D)),
        optimizer=optax.adam(0.1),
        steps=10,
    )
    own = model.apply(v, ids).logits[0, T - 1, targets]
    np.testing.assert_allclose(res.traces[:, 0], own, rtol=1e-5, atol=1e-5)
    assert bool((res.traces[:, -1] > res.traces[:, 0]).all()), res.traces[:, [0, -1]]
