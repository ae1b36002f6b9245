"""Activation maximization on model patterns of other people's code.

* A soft prompt on a model whose call requires an input the prompt cannot make up: the error
  names it. (Hugging Face Flax GPT-2 as the README writes it, with ``attention_mask`` and
  ``position_ids`` filled in, is in ``test_third_party.py``; Google's ``gemma`` package in
  ``test_zoo_gemma.py``.)
* An nnx ViT whose layers run under ``nnx.scan`` over weights stacked by ``nnx.vmap``: a
  ``neuron`` objective on one layer of the scan (``"layers/mlp[1]"``), checked against the
  layers applied one by one; the stack without a step raises instead of reading the layer
  axis as the batch.

"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxinterp import actmax


def test_soft_prompt_names_a_required_input_it_cannot_fill():
    with pytest.raises(TypeError, match="^model_kwargs: the model's __call__ requires"):
        _needs_token_types()


def _needs_token_types():
    """A module whose call requires an input the soft prompt cannot make up."""
    import flax.linen as nn

    class Embed(nn.Module):
        @nn.compact
        def __call__(self, ids):
            return nn.Embed(8, 4, name="tok")(ids)

    class Net(nn.Module):
        @nn.compact
        def __call__(self, ids, token_type_ids):
            return nn.Dense(3)(Embed(name="embed")(ids) + token_type_ids[..., None])

    net = Net()
    ids = jnp.zeros((1, 2), jnp.int32)
    v = net.init(jax.random.key(0), ids, ids)
    table = v["params"]["embed"]["tok"]["embedding"]
    actmax.maximize(
        jax.random.key(0),
        net,
        v,
        actmax.class_logit(1),
        param=actmax.soft_prompt(table, 2, site="embed"),
        steps=1,
    )


# ------------------------------------------------------------ nnx ViT, layers under nnx.scan
L, D, H, P = 2, 16, 2, 4


class Block(nnx.Module):
    def __init__(self, rngs):
        self.ln = nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(H, D, decode=False, rngs=rngs)
        self.mlp = nnx.Linear(D, D, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln(x))
        return x + jax.nn.gelu(self.mlp(x))


def _patches(x):
    """``[b, 8, 8, 3]`` images as ``[b, 4, P·P·3]`` patch vectors."""
    b = x.shape[0]
    x = x.reshape(b, 2, P, 2, P, 3).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 4, P * P * 3)


class ViT(nnx.Module):
    def __init__(self, rngs):
        self.patch = nnx.Linear(P * P * 3, D, rngs=rngs)

        @nnx.split_rngs(splits=L)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def make(rngs):
            return Block(rngs)

        self.layers = make(rngs)
        self.head = nnx.Linear(D, 5, rngs=rngs)

    def __call__(self, x):
        h = self.patch(_patches(x))

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def body(h, layer):
            return layer(h)

        return self.head(body(h, self.layers).mean(1))


def _unrolled_mlp(vit, x, layer):
    """The ``mlp`` output of ``layer``, the layers applied one by one (no scan, no hook)."""
    graphdef, state = nnx.split(vit.layers)
    h = vit.patch(_patches(x))
    for i in range(L):
        block = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
        h = h + block.attn(block.ln(h))
        out = block.mlp(h)
        if i == layer:
            return out
        h = h + jax.nn.gelu(out)
    raise AssertionError(layer)


def test_vit_scanned_layers_neuron_of_one_layer_matches_the_unrolled_layers():
    vit = ViT(nnx.Rngs(0))
    units = jnp.array([3, 11])
    res = actmax.maximize(
        jax.random.key(0),
        vit,
        None,
        lambda u: actmax.neuron("layers/mlp[1]", u, position=(2,)),
        units,
        param=actmax.pixel((8, 8, 3)),
        steps=5,
    )
    assert bool((res.traces[:, -1] > res.traces[:, 0]).all())
    for t, u in enumerate(units.tolist()):
        ref = _unrolled_mlp(vit, res.inputs[t], 1)[0, 2, u]
        np.testing.assert_allclose(res.values[t], ref, rtol=1e-4, atol=1e-5)


def test_vit_scanned_stack_without_a_step_raises():
    vit = ViT(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"^objective: 'layers/mlp' has shape \(2, 1, 4, 16\)"):
        actmax.maximize(
            jax.random.key(0), vit, None, lambda u: actmax.neuron("layers/mlp", u),
            jnp.arange(2), param=actmax.pixel((8, 8, 3)), steps=2,
        )  # fmt: skip
