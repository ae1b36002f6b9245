"""Attention maps inside scanned stacks: one ``[layer, batch, head, q, k]`` record per stack.

Large JAX models run all layers as one scanned block (``nn.scan`` over ``nn.remat`` in linen,
``nnx.scan`` over weights stacked by ``nnx.vmap`` in nnx). :func:`attention_weights` records the
softmax through the capture recorder, so the weights of every layer come out of the scan stacked
under the scanned module's path. Both stacks are checked against attention recomputed in numpy
(float64) from the same stacked weights, layer by layer, with an unrolled loop.
"""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxinterp.attention import attention_weights, stack_layers

L, B, T, D, H = 3, 2, 5, 8, 2
DH = D // H
X = jax.random.normal(jax.random.key(1), (B, T, D))
# float32 forward vs float64 numpy: ~10 float32 ops per probability (two small matmuls, a
# softmax), probabilities <= 1, 3 layers feeding each other: 1e-5 is ~80 ulps of 1.
ATOL = 1e-5


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_stack(wq, bq, wk, bk, wv, bv, wo, bo, x):
    """Unrolled float64 reference: (output, [layer, batch, head, q, k] probabilities)."""
    x = np.asarray(x, np.float64)
    f = lambda a: np.asarray(a, np.float64)
    maps = []
    for i in range(L):
        q = np.einsum("btd,dnh->btnh", x, f(wq[i])) + f(bq[i])
        k = np.einsum("btd,dnh->btnh", x, f(wk[i])) + f(bk[i])
        v = np.einsum("btd,dnh->btnh", x, f(wv[i])) + f(bv[i])
        p = _softmax(np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(DH))
        maps.append(p)
        x = x + np.einsum("bnqk,bknh,nhd->bqd", p, v, f(wo[i])) + f(bo[i])
    return x, np.stack(maps)


# -------------------------------------------- linen: hand-written 'BTNS' attention, scan+remat


class HandAttention(nn.Module):
    """softmax over Gemma-style ``[batch, q, head, k]`` logits, written by hand."""

    num_heads: int = H

    @nn.compact
    def __call__(self, x):
        p = lambda n, s: self.param(n, nn.initializers.normal(0.5), s)
        q = jnp.einsum("btd,dnh->btnh", x, p("wq", (D, H, DH))) + p("bq", (H, DH))
        k = jnp.einsum("btd,dnh->btnh", x, p("wk", (D, H, DH))) + p("bk", (H, DH))
        v = jnp.einsum("btd,dnh->btnh", x, p("wv", (D, H, DH))) + p("bv", (H, DH))
        probs = jax.nn.softmax(jnp.einsum("btnh,bsnh->btns", q, k) / np.sqrt(DH), axis=-1)
        return jnp.einsum("btns,bsnh,nhd->btd", probs, v, p("wo", (H, DH, D))) + p("bo", (D,))


class Block(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return x + HandAttention(name="attn")(x), None


class ScanStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        stack = nn.scan(
            nn.remat(Block), variable_axes={"params": 0}, split_rngs={"params": True}, length=L
        )
        return stack(name="layers")(x, None)[0]


def _linen():
    m = ScanStack()
    v = m.init(jax.random.key(0), X)
    a = v["params"]["layers"]["attn"]
    ref = _np_stack(*(a[n] for n in ("wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo")), X)
    return m, v, ref


# ------------------------------------------- nnx: nnx.MultiHeadAttention under nnx.scan


class NBlock(nnx.Module):
    def __init__(self, rngs):
        self.attn = nnx.MultiHeadAttention(
            num_heads=H, in_features=D, qkv_features=D, decode=False, rngs=rngs
        )

    def __call__(self, x):
        return x + self.attn(x)


class NScanStack(nnx.Module):
    def __init__(self, rngs):
        @nnx.split_rngs(splits=L)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return NBlock(rngs)

        self.layers = make(rngs)

    def __call__(self, x):
        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(x, layer):
            return layer(x)

        return body(x, self.layers)


def _nnx():
    m = NScanStack(nnx.Rngs(0))
    a = m.layers.attn
    w = lambda lin: (lin.kernel[...], lin.bias[...])
    wo = a.out.kernel[...]
    ref = _np_stack(*w(a.query), *w(a.key), *w(a.value), wo, a.out.bias[...], X)
    return m, None, ref


class TestScannedAttention(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_linen_scan_remat_hand_written_attention_matches_numpy(self):
        m, v, (out_ref, maps_ref) = _linen()
        out, maps = self.variant(attention_weights(m, v))(X)
        assert list(maps) == ["layers/attn"]
        assert maps["layers/attn"].shape == (L, B, H, T, T)  # [layer, batch, head, q, k]
        np.testing.assert_allclose(stack_layers(maps), maps_ref, atol=ATOL)
        np.testing.assert_allclose(out, m.apply(v, X), atol=ATOL)
        np.testing.assert_allclose(out, out_ref, atol=1e-4)

    @chex.variants(with_jit=True, without_jit=True)
    def test_nnx_scan_multi_head_attention_matches_numpy(self):
        m, _, (out_ref, maps_ref) = _nnx()
        out, maps = self.variant(attention_weights(m))(X)
        assert list(maps) == ["layers/attn"]
        np.testing.assert_allclose(stack_layers(maps), maps_ref, atol=ATOL)
        np.testing.assert_allclose(out, m(X), atol=ATOL)
        np.testing.assert_allclose(out, out_ref, atol=1e-4)

    def test_vmap_over_examples_and_grad_through_scanned_weights(self):
        m, v, (_, maps_ref) = _linen()
        f = attention_weights(m, v)
        per = jax.vmap(lambda x: f(x[None])[1]["layers/attn"][:, 0])(X)  # [batch, layer, ...]
        np.testing.assert_allclose(jnp.swapaxes(per, 0, 1), maps_ref, atol=ATOL)
        # d(attention to key 0 in the last layer)/dx is finite and not all zero
        g = jax.grad(lambda x: f(x)[1]["layers/attn"][-1, ..., 0].sum())(X)
        assert np.isfinite(g).all() and float(jnp.abs(g).max()) > 0
