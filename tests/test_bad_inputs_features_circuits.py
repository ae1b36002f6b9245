"""Bad inputs to ``jaxinterp.features`` and ``jaxinterp.circuits`` (issue 20, round 2).

Each row raises the right type, its message starting with the argument's name. Rows marked
*silent* returned a plausible wrong answer before (a clamped index, a ``k`` larger than the
dictionary, an id outside the vocabulary read as another token, NaN data trained on); rows
marked *deep* raised from inside JAX or NumPy without naming the argument. The traced
counterparts (under ``jit``/``vmap``) give NaN or -1, never a clamp: the tests after the table.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp
import jaxinterp.circuits as C
import jaxinterp.features as F
import jaxinterp.models as zoo
from jaxinterp.interventions import logit_diff

KEY = jax.random.key(0)
P = F.init_params(jax.random.key(1), 4, 8)  # one dictionary, d_in 4, d_sae 8
PS = jax.vmap(lambda k: F.init_params(k, 4, 8))(jax.random.split(KEY, 2))  # a stack of 2
SS = F.stack_settings([F.topk(2), F.relu(0.1)])
X = jnp.ones(4)
CFG = zoo.DecoderConfig(
    family="llama", vocab_size=32, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2, d_head=4,
    d_mlp=32, max_positions=16,
)  # fmt: skip
GPT2 = zoo.DecoderConfig(
    family="gpt2", vocab_size=32, d_model=16, n_layers=1, n_heads=2, n_kv_heads=2, d_head=8,
    d_mlp=16, max_positions=8, qkv_bias=True, o_bias=True, mlp_bias=True, mlp_act="gelu_tanh",
)  # fmt: skip
TOKS = jnp.array([[1, 2, 3, 4, 5, 6], [6, 5, 4, 3, 2, 1]])


@functools.cache
def _dec():
    model = zoo.Decoder(CFG)
    return model, jax.jit(model.init)(KEY, jnp.zeros((1, 6), jnp.int32))


@functools.cache
def _embed():
    model = nn.Sequential([nn.Embed(5, 4), nn.Dense(4)])
    return model, model.init(KEY, jnp.zeros((1, 3), jnp.int32))


def _fresh():
    return F.init_train(PS)  # train_steps donates its state: a new one per row


def _metric(lg):
    return logit_diff(lg, jnp.array([1, 2]), jnp.array([4, 5]), -1)


def _lens(**kw):
    return lambda: C.logit_lens(*_dec(), **kw)


def _gen(prompt=TOKS, n_new=2, **kw):
    return lambda: C.generate(None, *_dec(), prompt, n_new, **{"temperature": 0, **kw})


def _sweep(**kw):
    args = {"directions": jnp.ones((2, 16)), "scales": jnp.array([0.0, 1.0])} | kw
    d, s = args.pop("directions"), args.pop("scales")
    return lambda: C.steering_sweep(None, *_dec(), TOKS, d, s, ["blocks_0"], 2, **args)


def _eap(clean=TOKS, corrupted=TOKS[::-1]):
    graph = C.edge_graph(C.decoder_layout(CFG))
    return lambda: C.eap(*_dec(), graph, clean, corrupted, _metric)


def _top(params=P, setting=F.relu(0.0), features=(0,), **kw):
    model, v = _embed()
    toks = jnp.zeros((2, 3), jnp.int32)
    return lambda: F.top_activations(model, v, params, setting, "layers_0", [toks], features, **kw)


def _spliced(params, settings, loss_fn=lambda y, x: y.mean()):
    model, v = _embed()
    toks = jnp.zeros((2, 3), jnp.int32)
    return lambda: F.spliced_loss(model, v, params, settings, "layers_0", toks, loss_fn)


def _chunks(**kw):
    model, v = _embed()
    toks = jnp.zeros((2, 3), jnp.int32)
    return lambda: list(F.activation_chunks(model, v, ["layers_0"], [toks], **kw))


def _buffer_rows_change():
    buf = F.ShuffleBuffer(8)
    buf.add(np.ones((2, 1, 3)))
    buf.add(np.ones((2, 1, 5)))


ROWS = [
    # ------------------------------------------------------------ features: dictionaries
    ("init_params-in_shape-float", lambda: F.init_params(KEY, 4.0, 8), TypeError, "in_shape"),
    # silent: NaN parameters
    ("init_params-scale-nan", lambda: F.init_params(KEY, 4, 8, scale=np.nan), ValueError, "scale"),
    ("init_params-scale-zero", lambda: F.init_params(KEY, 4, 8, scale=0.0), ValueError, "scale"),
    (
        "init_params-threshold-inf",
        lambda: F.init_params(KEY, 4, 8, threshold=np.inf),
        ValueError,
        "threshold",
    ),
    ("encode-params-dict", lambda: F.encode({"W": 1}, X, F.topk(2)), TypeError, "params"),
    # silent: TopK with k > d_sae kept every latent, k > max_k kept max_k
    ("encode-k-above-d_sae", lambda: F.encode(P, X, F.topk(20)), ValueError, "setting: k=20"),
    ("encode-k-above-max_k", lambda: F.encode(P, X, F.topk(5), max_k=4), ValueError, "setting"),
    ("encode-max_k-0", lambda: F.encode(P, X, F.relu(0.0), max_k=0), ValueError, "max_k"),
    # silent: the relu branch ran for a TopK setting
    (
        "encode-arch-not-in-archs",
        lambda: F.encode(P, X, F.topk(2), archs=("relu",)),
        ValueError,
        "archs: the setting's architecture 'topk'",
    ),
    # deep: a broadcasting error from jnp.where
    ("encode-stacked-setting", lambda: F.encode(P, X, SS), ValueError, "setting"),
    ("decode-acts-wrong-size", lambda: F.decode(P, jnp.ones(7)), ValueError, "acts"),  # deep
    ("decoder_norms-array", lambda: F.decoder_norms(jnp.ones(3)), TypeError, "params"),
    (
        "loss-dead-shape",
        lambda: F.loss(P, X, X, F.topk(2), dead=jnp.ones(3, bool)),
        ValueError,
        "dead",
    ),  # fmt: skip
    # silent: a negative sparsity term lowered the loss
    (
        "loss-sparsity_scale-negative",
        lambda: F.loss(P, X, X, F.relu(1.0), sparsity_scale=-1.0),
        ValueError,
        "sparsity_scale",
    ),
    # silent: k outside [1, d_sae] read a clamped index
    (
        "batch_topk_threshold-k-0",
        lambda: F.batch_topk_threshold(jnp.ones((3, 8)), jnp.array(0), 64),
        ValueError,
        "k",
    ),
    (
        "batch_topk_threshold-k-above-d_sae",
        lambda: F.batch_topk_threshold(jnp.ones((3, 8)), jnp.array(9), 64),
        ValueError,
        "k",
    ),
    (
        "batch_topk_threshold-pre-1d",
        lambda: F.batch_topk_threshold(jnp.ones(8), jnp.array(2), 64),
        ValueError,
        "pre",
    ),
    (
        "batch_topk_threshold-max_k-0",  # deep: an IndexError
        lambda: F.batch_topk_threshold(jnp.ones((3, 8)), jnp.array(2), 0),
        ValueError,
        "max_k",
    ),
    (
        "reconstruct-two-settings-one-dictionary",  # deep
        lambda: F.reconstruct(P, SS, jnp.ones((3, 4))),
        ValueError,
        "setting",
    ),
    (
        "reconstruct-acts-wrong-d",
        lambda: F.reconstruct(P, F.relu(0.0), jnp.ones((3, 5))),
        ValueError,
        "acts",
    ),  # fmt: skip
    (
        "max_cosine-d-differs",
        lambda: F.max_cosine(jnp.ones((8, 4)), jnp.ones((3, 5))),
        ValueError,
        "W_dec",
    ),  # fmt: skip
    # ------------------------------------------------------------------ features: training
    (
        "TrainConfig-decay-above-1",
        lambda: F.TrainConfig(threshold_decay=2.0),
        ValueError,
        "threshold_decay",
    ),  # fmt: skip
    ("TrainConfig-b1-1", lambda: F.TrainConfig(b1=1.0), ValueError, "b1"),
    # silent: NaN data gave NaN dictionaries
    (
        "train_steps-nan-xs",
        lambda: F.train_steps(_fresh(), SS, jnp.full((2, 3, 4), jnp.nan)),
        ValueError,
        "xs: expected finite",
    ),
    (
        "train_steps-k-above-d_sae",
        lambda: F.train_steps(
            _fresh(), F.stack_settings([F.topk(20), F.relu(0.1)]), jnp.ones((2, 3, 4))
        ),  # fmt: skip
        ValueError,
        "settings: k=",
    ),
    (
        "train_steps-empty-batch",  # deep: integer modulo by zero
        lambda: F.train_steps(_fresh(), SS, jnp.ones((2, 0, 4))),
        ValueError,
        "xs",
    ),
    (
        "train_steps-donated-state",  # deep: "Array has been deleted"
        lambda: [F.train_steps(st, SS, jnp.ones((1, 3, 4))) for st in [_fresh()] * 2],
        ValueError,
        "state: its arrays were donated",
    ),
    # silent: no step ran, the untrained state came back
    (
        "train-fewer-tokens-than-one-call",
        lambda: F.train(_fresh(), SS, [np.ones((10, 4))], batch_size=8, steps_per_call=2),
        ValueError,
        "chunks",
    ),
    ("train-no-chunks", lambda: F.train(_fresh(), SS, []), ValueError, "chunks"),
    ("shuffle-buffer-row-shape-changes", _buffer_rows_change, ValueError, "chunk"),
    # silent: read/write outside the site axis (NaN), a negative index wrapped
    (
        "evaluate-write-out-of-range",
        lambda: F.evaluate(PS, SS, [np.random.rand(10, 1, 4)], write=[0, 1]),
        ValueError,
        "write",
    ),
    (
        "evaluate-read-negative",
        lambda: F.evaluate(PS, SS, [np.random.rand(10, 1, 4)], read=[0, -1]),
        ValueError,
        "read",
    ),
    ("evaluate-chunk-1d", lambda: F.evaluate(PS, SS, [np.random.rand(4)]), ValueError, "chunks"),
    (
        "evaluate-one-dictionary",
        lambda: F.evaluate(P, F.relu(0.0), [np.ones((3, 4))]),
        ValueError,
        "params",
    ),  # fmt: skip
    (
        "evaluate-nan-chunk",
        lambda: F.evaluate(PS, SS, [np.full((3, 1, 4), np.nan)]),
        ValueError,
        "chunks",
    ),  # fmt: skip
    # ------------------------------------------------------------------ features: analysis
    # silent: an out-of-range feature read a clamped row (the last one), -1 wrapped
    (
        "logit_effects-feature-oob",
        lambda: F.logit_effects(P, jnp.ones((4, 5)), jnp.array([9])),
        ValueError,
        "features",
    ),  # fmt: skip
    (
        "logit_effects-feature-neg",
        lambda: F.logit_effects(P, jnp.ones((4, 5)), jnp.array([-1])),
        ValueError,
        "features",
    ),  # fmt: skip
    (
        "logit_effects-feature-float",
        lambda: F.logit_effects(P, jnp.ones((4, 5)), jnp.array([1.0])),
        TypeError,
        "features",
    ),  # fmt: skip
    ("steer-feature-oob", lambda: F.steer(P, 8, 1.0), ValueError, "feature"),
    ("steer-feature-neg", lambda: F.steer(P, -1, 1.0), ValueError, "feature"),
    ("steer-scale-nan", lambda: F.steer(P, 1, np.nan), ValueError, "feature, scale"),
    ("steer-act-wrong-d", lambda: F.steer(P, 1, 1.0)(jnp.ones((2, 5))), ValueError, "act"),  # deep
    ("histogram-empty", lambda: F.activation_histogram(np.ones(0)), ValueError, "acts"),
    ("histogram-nan", lambda: F.activation_histogram(np.array([1.0, np.nan])), ValueError, "acts"),
    (
        "save_saelens-hook_name-empty",
        lambda: F.save_saelens("/nonexistent", P, F.relu(0.0), hook_name=""),
        ValueError,
        "hook_name",
    ),  # fmt: skip
    ("top_activations-k-above-d_sae", _top(setting=F.topk(20)), ValueError, "setting"),  # NaN
    ("top_activations-stacked-setting", _top(setting=SS), ValueError, "setting"),
    (
        "spliced_loss-settings-count",
        _spliced(PS, F.stack_settings([F.relu(0.0)] * 3)),
        ValueError,
        "settings",
    ),  # fmt: skip
    (
        "spliced_loss-loss-not-scalar",
        _spliced(P, F.relu(0.0), lambda y, x: y.mean(-1)),
        ValueError,
        "loss_fn",
    ),  # fmt: skip
    # silent: a float mask was cast to bool (0.5 kept everything)
    (
        "activation_chunks-keep-float",
        _chunks(keep=lambda x: np.full(x.shape, 0.5)),
        TypeError,
        "keep",
    ),  # fmt: skip
    # -------------------------------------------------------------------- circuits: lenses
    # silent: an id outside the vocabulary was embedded as a clamped row
    ("logit_lens-token-oob", _lens(tokens=TOKS + 40), ValueError, "tokens: expected ids in"),
    ("logit_lens-token-negative", _lens(tokens=TOKS - 40), ValueError, "tokens"),
    (
        "tuned_lens-token-oob",
        lambda: C.tuned_lens(C.init_tuned_lens(3, 16), *_dec(), TOKS + 40),
        ValueError,
        "tokens",
    ),
    (
        "fit_tuned_lens-token-oob",
        lambda: C.fit_tuned_lens(*_dec(), [TOKS + 40]),
        ValueError,
        "tokens",
    ),  # fmt: skip
    # silent: NaN lens logits agreed top-1 with everything
    (
        "lens_metrics-nan",
        lambda: C.lens_metrics(jnp.full((2, 2, 6, 32), jnp.nan), jnp.ones((2, 6, 32))),
        ValueError,
        "lens_logits",
    ),
    # ---------------------------------------------------------- circuits: steering, sampling
    (
        "add-scale-nan",
        lambda: C.add(jnp.ones(16), np.nan)(jnp.ones((2, 6, 16))),
        ValueError,
        "scale",
    ),  # fmt: skip
    (
        "add-scale-vector",
        lambda: C.add(jnp.ones(16), jnp.ones(2))(jnp.ones((2, 6, 16))),
        ValueError,
        "scale",
    ),  # fmt: skip
    (
        "contrastive-position-float",  # deep
        lambda: C.contrastive_direction(*_dec(), "blocks_0", TOKS, TOKS, position=1.5),
        TypeError,
        "position",
    ),
    # silent: the model's logits were NaN and greedy argmax read token 0
    ("generate-prompt-oob", _gen(TOKS + 40), ValueError, "prompt: expected ids in"),
    (
        "generate-top_k-above-vocab",
        lambda: C.generate(KEY, *_dec(), TOKS, 2, top_k=100),
        ValueError,
        "top_k",
    ),  # deep  # fmt: skip
    (
        "generate-top_p-0",
        lambda: C.generate(KEY, *_dec(), TOKS, 2, top_p=0.0),
        ValueError,
        "top_p",
    ),  # fmt: skip
    # silent: NaN scales gave token 0 everywhere; positions past the buffer steered nothing
    ("steering_sweep-scales-nan", _sweep(scales=jnp.array([jnp.nan])), ValueError, "scales"),
    ("steering_sweep-positions-oob", _sweep(positions=jnp.array([30])), ValueError, "positions"),
    (
        "steering_sweep-positions-float",
        _sweep(positions=jnp.array([1.0])),
        TypeError,
        "positions",
    ),  # fmt: skip
    (
        "steering_sweep-directions-nan",
        _sweep(directions=jnp.full((1, 16), jnp.nan)),
        ValueError,
        "directions",
    ),  # fmt: skip
    # ------------------------------------------------------------------ circuits: edges
    ("eap-clean-oob", _eap(clean=TOKS + 40), ValueError, "clean: expected ids in"),  # silent
    ("eap-corrupted-negative", _eap(corrupted=TOKS - 40), ValueError, "corrupted"),
    (
        "attribution_graph-tokens-oob",  # silent
        lambda: C.attribution_graph(None, None, GPT2, jnp.array([1, 40]), []),
        ValueError,
        "tokens",
    ),
]


@pytest.mark.parametrize("call, exc, match", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match="^" + match):
        call()


# ---------------------------------------------------------------- traced: NaN, never a clamp


def test_traced_out_of_range_gives_nan_not_a_clamped_row():
    # features.steer under jit: feature 8 of 8 latents (the last row before: a clamp)
    f = jax.jit(lambda i: F.steer(P, i, 1.0)(jnp.zeros((1, 4))))
    assert np.isnan(f(jnp.int32(8))).all()
    np.testing.assert_allclose(f(jnp.int32(7))[0], P.W_dec[7], rtol=1e-6)
    with pytest.raises(ValueError, match="^feature, scale"):
        jaxinterp.checked(lambda i: F.steer(P, i, 1.0)(jnp.zeros((1, 4))))(jnp.int32(8))
    # encode under vmap over settings: k=20 > d_sae=8 is NaN, k=2 keeps exactly 2
    ks = F.stack_settings([F.topk(2), F.topk(20)])
    acts = jax.jit(jax.vmap(lambda s: F.encode(P, jnp.arange(4.0), s, max_k=8)))(ks)
    assert int((acts[0] > 0).sum()) <= 2 and np.isnan(acts[1]).all()
    # circuits.add: a traced position past the sequence is NaN, not "steered nowhere"
    out = jax.jit(lambda p: C.add(jnp.ones(3), 1.0, positions=p)(jnp.zeros((1, 4, 3))))
    assert np.isnan(out(jnp.array([9]))).all()
    np.testing.assert_array_equal(out(jnp.array([1]))[0, :, 0], [0, 1, 0, 0])


def test_logit_lens_under_jit_follows_the_models_nan_for_bad_ids():
    model, v = _dec()
    lens, logits = jax.jit(lambda t: C.logit_lens(model, v, t))(TOKS.at[1, 0].set(40))
    assert np.isnan(logits[1]).all() and np.isnan(lens[:, 1]).all()  # the bad row
    assert not np.isnan(lens[:, 0]).any()  # the good row is untouched
    np.testing.assert_allclose(lens[-1, 0], logits[0], atol=1e-5)
