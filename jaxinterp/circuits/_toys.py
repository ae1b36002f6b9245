"""An attention-only transformer trained on repeated sequences: induction heads form mid-run.

Olsson et al. (2022, "In-context Learning and Induction Heads") show that small attention-only
transformers trained on text form *induction heads* (attention from a token to the token
after its previous occurrence) in a sudden phase change, at the same time as the loss on
repeated text drops. The task here makes that mechanism the only way to lower the loss:
sequences of ``2·half`` tokens whose second half repeats the first (uniform random tokens), so
the first half is unpredictable and the second is predictable only by induction.

:func:`train_induction_checkpoints` trains :class:`AttnOnly` (2 layers by default; one
``lax.scan`` of scans under ``jit``) and returns the parameters at ``n_checkpoints`` evenly
spaced steps, stacked for :func:`jaxinterp.circuits.over_checkpoints`;
:func:`induction_metrics` is the per-checkpoint analysis: in-context loss on the repeated half
and each head's induction score (:func:`jaxinterp.attention.induction_score`).

Paths of :class:`AttnOnly`: ``embed`` (token + position), ``blocks_{i}/attn/probs``
(``[batch, head, q, k]``), ``blocks_{i}`` (residual stream after block ``i``), ``unembed``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxinterp._checks import check_int, check_key
from jaxinterp.attention import induction_score
from jaxinterp.interventions import capture_sites


class _Id(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x


class _Attn(nn.Module):
    n_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, s, d = x.shape
        dh = d // self.n_heads
        q, k, v = (nn.DenseGeneral((self.n_heads, dh), use_bias=False, name=n)(x) for n in "qkv")
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(dh)
        causal = jnp.tril(jnp.ones((s, s), bool))
        probs = _Id(name="probs")(jax.nn.softmax(jnp.where(causal, scores, -1e9), -1))
        z = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        return nn.DenseGeneral(d, axis=(-2, -1), use_bias=False, name="o")(z)


class _Block(nn.Module):
    n_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return x + _Attn(self.n_heads, name="attn")(x)


class _Embed(nn.Module):
    vocab: int
    seq_len: int
    d_model: int

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        tok = nn.Embed(self.vocab, self.d_model, name="tok")(ids)
        pos = self.param("pos", nn.initializers.normal(0.02), (self.seq_len, self.d_model))
        return tok + pos[: ids.shape[1]]


class AttnOnly(nn.Module):
    """Attention-only causal transformer: ``tokens [batch, seq] -> logits [batch, seq, vocab]``.

    No MLPs and no normalisation: the residual stream is the embedding plus each layer's
    attention output, and the logits are a linear readout of it.

    >>> m = AttnOnly(vocab=8, seq_len=6, d_model=16, n_heads=2, n_layers=2)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
    >>> m.apply(v, jnp.zeros((3, 6), jnp.int32)).shape
    (3, 6, 8)
    """

    vocab: int = 32
    seq_len: int = 32
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 2

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        x = _Embed(self.vocab, self.seq_len, self.d_model, name="embed")(tokens)
        for i in range(self.n_layers):
            x = _Block(self.n_heads, name=f"blocks_{i}")(x)
        return nn.Dense(self.vocab, use_bias=False, name="unembed")(x)


def repeated_batch(key: jax.Array, batch: int, half: int, vocab: int) -> jax.Array:
    """``[batch, 2·half]`` tokens: ``half`` uniform random tokens, then the same again.

    >>> t = repeated_batch(jax.random.key(0), 2, 3, 10)
    >>> bool((t[:, :3] == t[:, 3:]).all()), t.shape
    (True, (2, 6))
    """
    check_key(key, "key")
    first = jax.random.randint(key, (batch, half), 0, vocab)
    return jnp.concatenate([first, first], 1)


def _lm_loss(model, params, tokens):
    logits = model.apply({"params": params}, tokens)[:, :-1]
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


class InductionRun(NamedTuple):
    """Result of :func:`train_induction_checkpoints`.

    Attributes:
      model: the :class:`AttnOnly` module.
      stacked: ``{"params": ...}`` with leaves ``[checkpoint, ...]`` (step 0 first).
      steps: ``[checkpoint]`` the training step of each checkpoint.
      half: half the sequence length.
    """

    model: AttnOnly
    stacked: dict
    steps: jax.Array
    half: int


# Sizes of the induction run shared by the demo section and benchmarks/bench_checkpoints.py:
# quick (tests) and full.
INDUCTION_SIZES: dict[bool, dict] = {
    True: dict(
        n_checkpoints=20, steps_per_checkpoint=20, half=8, d_model=32, n_heads=2, learning_rate=1e-2
    ),
    False: dict(n_checkpoints=50, steps_per_checkpoint=40),
}


def train_induction_checkpoints(
    key: jax.Array,
    *,
    n_checkpoints: int = 50,
    steps_per_checkpoint: int = 40,
    half: int = 16,
    vocab: int = 32,
    d_model: int = 64,
    n_heads: int = 4,
    n_layers: int = 2,
    batch: int = 32,
    learning_rate: float = 3e-3,
) -> InductionRun:
    """Trains :class:`AttnOnly` on repeated sequences, keeping ``n_checkpoints`` snapshots.

    One jitted ``lax.scan`` over checkpoints of a ``lax.scan`` over Adam steps; the first
    checkpoint is the initialisation, the others follow every ``steps_per_checkpoint`` steps.

    Returns:
      :class:`InductionRun` (checkpoints stacked on a leading axis).

    >>> run = train_induction_checkpoints(jax.random.key(0), n_checkpoints=3,
    ...                                   steps_per_checkpoint=2, half=4, d_model=8, n_heads=2)
    >>> run.stacked["params"]["unembed"]["kernel"].shape, run.steps.tolist()
    ((3, 8, 32), [0, 2, 4])
    """
    check_key(key, "key")
    n_checkpoints = check_int(n_checkpoints, "n_checkpoints", lo=1)
    per = check_int(steps_per_checkpoint, "steps_per_checkpoint", lo=1)
    model = AttnOnly(vocab, 2 * half, d_model, n_heads, n_layers)
    params = model.init(key, jnp.zeros((1, 2 * half), jnp.int32))["params"]
    return InductionRun(
        model,
        {"params": _train(model, params, key, n_checkpoints, per, half, batch, learning_rate)},
        jnp.arange(n_checkpoints) * per,
        half,
    )


def _train(model, params, key, n_checkpoints, per, half, batch, lr):
    opt = optax.adam(lr)

    @jax.jit
    def run(params, key):
        def step(carry, k):
            params, state = carry
            tokens = repeated_batch(k, batch, half, model.vocab)
            g = jax.grad(lambda p: _lm_loss(model, p, tokens))(params)
            updates, state = opt.update(g, state, params)
            return (optax.apply_updates(params, updates), state), None

        def chunk(carry, k):
            out = carry[0]
            carry, _ = jax.lax.scan(step, carry, jax.random.split(k, per))
            return carry, out

        keys = jax.random.split(jax.random.fold_in(key, 1), n_checkpoints)
        _, stacked = jax.lax.scan(chunk, (params, opt.init(params)), keys)
        return stacked

    return run(params, key)


def induction_metrics(model: AttnOnly, variables: Any, tokens: jax.Array) -> dict[str, jax.Array]:
    """In-context loss on the repeated half and every head's induction score, one checkpoint.

    Args:
      model: an :class:`AttnOnly`.
      variables: ONE checkpoint's variables.
      tokens: ``[batch, 2·half]`` from :func:`repeated_batch`.

    Returns:
      ``{"icl_loss": [], "first_half_loss": [], "induction": [layer, head]}``: the mean
      next-token cross-entropy at the query positions ``half .. 2·half - 2`` (answers lie in
      the repeat) and ``1 .. half - 2`` (unpredictable: about ``log vocab``), and the mean
      induction score per head over the batch.

    >>> m = AttnOnly(vocab=8, seq_len=6, d_model=16, n_heads=2, n_layers=2)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 6), jnp.int32))
    >>> out = induction_metrics(m, v, repeated_batch(jax.random.key(1), 4, 3, 8))
    >>> out["induction"].shape
    (2, 2)
    """
    half = tokens.shape[1] // 2
    sites = [f"blocks_{i}/attn/probs" for i in range(model.n_layers)]
    logits, probs = capture_sites(model, variables, sites)(tokens)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    scores = jnp.stack(
        [induction_score(probs[s], tokens[:, None, :]).mean(0) for s in sites]
    )  # [layer, head]
    return {
        "icl_loss": ce[:, half:].mean(),
        "first_half_loss": ce[:, 1 : half - 1].mean(),
        "induction": scores,
    }
