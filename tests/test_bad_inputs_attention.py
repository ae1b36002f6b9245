"""Bad inputs to attention extraction: each raises the right type, its message naming the argument.

Rows marked *regression* were silent wrong answers before: ``weights_at=`` took any 4-D array
as ``[batch, head, q, k]`` (raw scores, or Gemma's ``[batch, q, head, k]``), and a layout that
cannot be told from the shapes was labelled ``[batch, head, q, k]`` anyway.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxinterp.attention import attention_from_qk, attention_weights, layer_order, stack_layers


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


class Attn(nn.Module):
    """[batch, q, head, k] probabilities (Gemma's layout), with raw scores and probs exposed."""

    num_heads: int = 2

    @nn.compact
    def __call__(self, x):
        q = nn.DenseGeneral((self.num_heads, 4), name="query")(x)
        k = nn.DenseGeneral((self.num_heads, 4), name="key")(x)
        s = Identity(name="scores")(jnp.einsum("BTNH,BSNH->BTNS", q, k))
        p = Identity(name="probs")(jax.nn.softmax(s, axis=-1))
        flat = Identity(name="flat")(p.reshape(p.shape[0], p.shape[1], -1))
        ids = Identity(name="ids")(jnp.zeros(p.shape, jnp.int32))
        return x + jnp.einsum("BTNS,BSD->BTD", p, x) + 0 * flat.sum() + ids.sum()


class Net(nn.Module):
    num_heads: int = 2

    @nn.compact
    def __call__(self, x):
        return Attn(num_heads=self.num_heads, name="attn")(x)


@functools.cache
def _net(heads: int = 2, seq: int = 5):
    x = jax.random.normal(jax.random.key(0), (2, seq, 8))
    model = Net(num_heads=heads)
    return model, model.init(jax.random.key(1), x), x


def _aw(heads=2, seq=5, **kw):
    model, variables, x = _net(heads, seq)
    return lambda: attention_weights(model, variables, **kw)(x)


def _construct(**kw):
    model, variables, _ = _net()
    kw = {"model": model, "variables": variables, **kw}
    return lambda: attention_weights(kw.pop("model"), kw.pop("variables"), **kw)


# str(KeyError(msg)) is repr(msg): the message starts after the quote
K = "^['\"]"
Q = jnp.zeros((1, 3, 2, 4))
W = jnp.full((1, 2, 3, 3), 1 / 3)

ROWS = [
    # ---------------------------------------------------------- attention_weights: arguments
    ("model-not-flax", _construct(model=lambda x: x), TypeError, "^model"),
    ("model-linen-class", _construct(model=Net), TypeError, "^model"),
    ("variables-missing", _construct(variables=None), TypeError, "^variables"),
    (
        "variables-for-nnx",
        lambda: attention_weights(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), {"params": {}}),
        TypeError,
        "^variables",
    ),
    ("select-int", _construct(select=3), TypeError, "^select"),
    ("select-list-of-ints", _construct(select=[1, 2]), TypeError, "^select"),
    ("weights_at-int", _construct(weights_at=7), TypeError, "^weights_at"),
    ("weights_at-list-of-ints", _construct(weights_at=[1]), TypeError, "^weights_at"),
    ("layout-unknown", _construct(layout="bkqh"), ValueError, "^layout"),
    ("layout-not-str", _construct(layout=0), ValueError, "^layout"),
    ("method-not-str", _construct(method=3), TypeError, "^method"),
    # -------------------------------------------------- attention_weights: at call / trace time
    ("select-matches-nothing", _aw(select="nope/*"), KeyError, K + "select"),
    ("select-predicate-false", _aw(select=lambda p: False), KeyError, K + "select"),
    ("weights_at-matches-nothing", _aw(weights_at="attn/nope"), KeyError, K + "weights_at"),
    (
        "weights_at-one-glob-of-two-matches-nothing",
        _aw(weights_at=["attn/probs", "attn/nope"]),
        KeyError,
        K + "weights_at: 'attn/nope'",
    ),
    ("weights_at-3d-output", _aw(weights_at="attn/flat"), ValueError, "^weights_at"),
    ("weights_at-int-output", _aw(weights_at="attn/ids"), ValueError, "^weights_at"),
    # regression: raw scores were returned as if they were attention weights
    ("weights_at-scores-not-probs", _aw(weights_at="attn/scores"), ValueError, "^weights_at"),
    # regression: as many heads as tokens was labelled [batch, head, q, k] whatever it was
    ("layout-ambiguous-default", _aw(heads=5, seq=5), ValueError, "^layout: cannot tell"),
    (
        "layout-ambiguous-weights_at",
        _aw(heads=5, seq=5, weights_at="attn/probs"),
        ValueError,
        "^layout: cannot tell",
    ),
    # regression: an explicit layout made any 4-D weights_at output [batch, head, q, k]; the
    # probs are [batch, q=5, head=2, k=5] and the model declares 2 heads
    (
        "layout-explicit-contradicts-heads",
        _aw(weights_at="attn/probs", layout="bhqk"),
        ValueError,
        "^layout: the weights of shape .*declares 2 heads",
    ),
    # ------------------------------------------------------------------------ stack_layers
    (
        "stack-5d-wrong",
        lambda: stack_layers({"a": jnp.zeros((1, 1, 1, 2, 3, 3))}),
        ValueError,
        r"^maps\['a'\]",
    ),
    ("stack-empty", lambda: stack_layers({}), ValueError, "^maps"),
    ("stack-not-a-dict", lambda: stack_layers([W, W]), TypeError, "^maps"),
    ("stack-int-keys", lambda: stack_layers({0: W}), TypeError, "^maps"),
    ("stack-3d", lambda: stack_layers({"a": W[0]}), ValueError, r"^maps\['a'\]"),
    ("stack-int-dtype", lambda: stack_layers({"a": W.astype(int)}), TypeError, r"^maps\['a'\]"),
    ("stack-not-array", lambda: stack_layers({"a": "x"}), TypeError, r"^maps\['a'\]"),
    (
        "stack-shapes-differ",
        lambda: stack_layers({"a": W, "b": jnp.zeros((1, 2, 4, 4))}),
        ValueError,
        "^maps",
    ),
    ("layer_order-not-a-dict", lambda: layer_order(["a"]), TypeError, "^maps"),
    # ------------------------------------------------------------------- attention_from_qk
    ("qk-query-3d", lambda: attention_from_qk(Q[0], Q), ValueError, "^query"),
    ("qk-key-5d", lambda: attention_from_qk(Q, Q[None]), ValueError, "^key"),
    ("qk-query-int", lambda: attention_from_qk(Q.astype(int), Q), TypeError, "^query"),
    ("qk-key-not-array", lambda: attention_from_qk(Q, "k"), TypeError, "^key"),
    ("qk-heads-differ", lambda: attention_from_qk(Q, jnp.zeros((1, 3, 3, 4))), ValueError, "^key"),
    ("qk-batch-differs", lambda: attention_from_qk(Q, jnp.zeros((2, 3, 2, 4))), ValueError, "^key"),
    ("qk-dhead-differs", lambda: attention_from_qk(Q, jnp.zeros((1, 3, 2, 5))), ValueError, "^key"),
    ("qk-mask-float", lambda: attention_from_qk(Q, Q, jnp.ones((1, 1, 3, 3))), TypeError, "^mask"),
    (
        "qk-mask-wrong-shape",
        lambda: attention_from_qk(Q, Q, jnp.ones((1, 1, 3, 4), bool)),
        ValueError,
        "^mask",
    ),
    (
        "qk-mask-too-many-dims",
        lambda: attention_from_qk(Q, Q, jnp.ones((2, 1, 2, 3, 3), bool)),
        ValueError,
        "^mask",
    ),
]


@pytest.mark.parametrize("call, exc, match", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_layout_under_jit_raises_at_trace_time():
    model, variables, x = _net(5, 5)
    with pytest.raises(ValueError, match="^layout: cannot tell"):
        jax.jit(attention_weights(model, variables))(x)


def test_good_rows_of_the_same_model_pass():
    """The model used above is fine when asked correctly: the rows test the inputs only."""
    model, variables, x = _net()
    _, maps = jax.jit(attention_weights(model, variables))(x)
    _, at = jax.jit(attention_weights(model, variables, weights_at="attn/probs"))(x)
    assert maps["attn"].shape == at["attn/probs"].shape == (2, 2, 5, 5)
    assert bool(jnp.allclose(maps["attn"], at["attn/probs"]))
