"""Spliced-in loss (exact dictionary, manual splice), top activations, steering, logit effects."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxinterp import features as F
from jaxinterp.interventions import intervene

MODEL = nn.Sequential([nn.Dense(6), nn.relu, nn.Dense(5)])
X = jax.random.normal(jax.random.key(1), (20, 3, 4))
TARGET = jax.random.normal(jax.random.key(2), (20, 3, 5))


@pytest.fixture(scope="module")
def variables():
    return MODEL.init(jax.random.key(0), X)


def loss_fn(y, x):
    return jnp.mean((y - TARGET) ** 2)


def _dense(v, name, x):
    p = v["params"][name]
    return np.asarray(x) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])


def _stack(n=2):
    ps = [F.init_params(jax.random.key(10 + i), 6, 9) for i in range(n)]
    ps = [p._replace(b_enc=p.b_enc + 0.1, b_dec=p.b_dec - 0.05) for p in ps]
    return jax.tree.map(lambda *a: jnp.stack(a), *ps), F.stack_settings([F.relu(1.0), F.topk(2)])


def test_exact_dictionary_gives_the_clean_loss_exactly(variables):
    eye = jnp.eye(6)
    p = F.Params(
        jnp.concatenate([eye, -eye], 1),
        jnp.zeros(12),
        jnp.concatenate([eye, -eye]),
        jnp.zeros(6),
        jnp.zeros(12),
    )
    out = F.spliced_loss(MODEL, variables, p, F.relu(0.0), "layers_0", X, loss_fn)
    assert float(out.spliced) == float(out.clean)
    assert float(out.recovered) == 1.0
    h = _dense(variables, "layers_0", X)
    clean = ((_dense(variables, "layers_2", np.maximum(h, 0)) - TARGET) ** 2).mean()
    np.testing.assert_allclose(out.clean, clean, rtol=1e-5)


def test_spliced_loss_of_a_stack_matches_a_manual_splice(variables):
    ps, settings = _stack()
    out = F.spliced_loss(MODEL, variables, ps, settings, "layers_0", X, loss_fn, max_k=4)
    h = _dense(variables, "layers_0", X).reshape(-1, 6)
    zero = ((_dense(variables, "layers_2", np.zeros((20, 3, 6))) - TARGET) ** 2).mean()
    np.testing.assert_allclose(out.zero, [zero, zero], rtol=1e-5)
    for j, s in enumerate([F.relu(1.0), F.topk(2)]):
        p = jax.tree.map(lambda a, j=j: a[j], ps)
        acts = np.asarray(jax.vmap(lambda hi, p=p, s=s: F.encode(p, hi, s, max_k=4))(h))
        recon = (acts @ np.asarray(p.W_dec) + np.asarray(p.b_dec)).reshape(20, 3, 6)
        spliced = ((_dense(variables, "layers_2", np.maximum(recon, 0)) - TARGET) ** 2).mean()
        np.testing.assert_allclose(out.spliced[j], spliced, rtol=1e-5)
        np.testing.assert_allclose(
            out.recovered[j], (zero - spliced) / (zero - float(out.clean[j])), rtol=1e-4
        )


def test_top_activations_match_numpy(variables):
    ps, _ = _stack()
    p = jax.tree.map(lambda a: a[0], ps)
    batches = [X[:8], X[8:16], X[16:]]
    top = F.top_activations(MODEL, variables, p, F.relu(1.0), "layers_0", batches, [0, 4, 7], k=5)
    h = _dense(variables, "layers_0", X)
    acts = np.asarray(jax.vmap(lambda hi: F.encode(p, hi, F.relu(1.0)))(h.reshape(-1, 6)))
    for row, f in enumerate([0, 4, 7]):
        order = np.argsort(-acts[:, f], kind="stable")[:5]
        np.testing.assert_allclose(top.values[row], acts[order, f], rtol=1e-5)
        got = top.example[row] * 3 + top.position[row]
        np.testing.assert_array_equal(np.sort(got), np.sort(order))
    with pytest.raises(ValueError, match=r"features: expected indices in \[0, 8\]"):
        F.top_activations(MODEL, variables, p, F.relu(1.0), "layers_0", batches, [9])


def test_steering_adds_the_decoder_direction(variables):
    ps, _ = _stack()
    p = jax.tree.map(lambda a: a[1], ps)
    f = jax.jit(lambda v, s: intervene(MODEL, v, {"layers_0": F.steer(p, 3, s)})(X))
    got = f(variables, 2.5)
    h = _dense(variables, "layers_0", X) + 2.5 * np.asarray(p.W_dec[3])
    np.testing.assert_allclose(got, _dense(variables, "layers_2", np.maximum(h, 0)), rtol=1e-5)
    sweep = jax.vmap(f, (None, 0))(variables, jnp.array([0.0, 2.5]))
    np.testing.assert_allclose(sweep[1], got, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sweep[0], MODEL.apply(variables, X), rtol=1e-5, atol=1e-6)


def test_logit_effects_and_histogram():
    ps, _ = _stack()
    p = jax.tree.map(lambda a: a[0], ps)
    W_U = np.random.default_rng(0).normal(size=(6, 11)).astype(np.float32)
    np.testing.assert_allclose(
        F.logit_effects(p, W_U, [2, 5]), np.asarray(p.W_dec)[[2, 5]] @ W_U, rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"W_U: expected \[d_model=6, vocab\]"):
        F.logit_effects(p, W_U.T)
    counts, edges, frac = F.activation_histogram(np.array([0, 0, 0.1, 1, 1, 10.0]), bins=2)
    assert counts.tolist() == [1, 3] and frac == 4 / 6


def test_feature_dashboard_shows_the_top_examples_and_their_token_activations():
    model = nn.Sequential([nn.Embed(7, 6)])
    v = model.init(jax.random.key(0), jnp.zeros((1, 5), jnp.int32))
    ps, _ = _stack()
    p = jax.tree.map(lambda a: a[0], ps)
    toks = jax.random.randint(jax.random.key(3), (12, 5), 0, 7)
    view = F.feature_dashboard(model, v, p, F.relu(1.0), "layers_0", toks, [1, 3], k=3)
    emb = np.asarray(v["params"]["layers_0"]["embedding"])[np.asarray(toks)]
    lat = np.asarray(jax.vmap(lambda e: F.encode(p, e, F.relu(1.0)))(emb.reshape(-1, 6)))
    lat = lat.reshape(12, 5, -1)
    for item, f in zip(view.data["items"], [1, 3]):
        best = np.sort(lat[..., f].ravel())[::-1][:3]
        np.testing.assert_allclose([e["value"] for e in item["examples"]], best, rtol=1e-5)
        np.testing.assert_allclose(item["value"], lat[..., f].max(), rtol=1e-5)
        assert f"latent {f}" in item["label"]


def test_spliced_loss_where_splices_and_ablates_only_the_masked_positions(variables):
    ps, settings = _stack()
    where = jnp.arange(3)[None, :] > 0  # [1, seq]: every example, positions 1 and 2
    out = F.spliced_loss(MODEL, variables, ps, settings, "layers_0", X, loss_fn, where=where)
    h = _dense(variables, "layers_0", X)
    for j in range(2):
        p = jax.tree.map(lambda a, j=j: a[j], ps)
        s = jax.tree.map(lambda a, j=j: a[j], settings)
        rec = np.asarray(F.reconstruct(p, s, jnp.asarray(h)))
        mixed = np.where(np.asarray(where)[..., None], rec, h)
        y = _dense(variables, "layers_2", np.maximum(mixed, 0))
        want = np.mean((y - np.asarray(TARGET)) ** 2)
        np.testing.assert_allclose(out.spliced[j], want, rtol=1e-5)
    zeroed = np.where(np.asarray(where)[..., None], 0.0, h)
    y = _dense(variables, "layers_2", np.maximum(zeroed, 0))
    want_zero = np.mean((y - np.asarray(TARGET)) ** 2)
    np.testing.assert_allclose(out.zero, [want_zero] * 2, rtol=1e-5)
    with pytest.raises(ValueError, match=r"where: expected a mask of the leading axes"):
        F.spliced_loss(MODEL, variables, ps, settings, "layers_0", X, loss_fn, where=where[:, :2])
    with pytest.raises(TypeError, match="where: expected a bool mask"):
        F.spliced_loss(MODEL, variables, ps, settings, "layers_0", X, loss_fn, where=where * 1)


def test_feature_objective_maximized_in_a_norm_ball_is_the_encoder_direction_pulled_back():
    # the SAE reads h = x @ A + c; latent i's pre-activation is x @ (A @ w_i) + const, so over
    # the ball |x| <= r its maximizer is r * A w_i / |A w_i| (analytic optimum)
    from jaxinterp import actmax

    model = nn.Sequential([nn.Dense(6)])
    v = model.init(jax.random.key(0), jnp.ones((1, 4)))
    p = F.init_params(jax.random.key(5), 6, 9)
    latents = jnp.array([0, 3, 8])
    res = actmax.maximize(
        jax.random.key(1),
        model,
        v,
        lambda i: F.feature_objective("layers_0", p, i),
        latents,
        param=actmax.norm_ball((4,), 2.0),
        steps=60,
        optimizer=optax.adam(0.1),
    )
    A = np.asarray(v["params"]["layers_0"]["kernel"])
    for t, i in enumerate(np.asarray(latents)):
        best = A @ np.asarray(p.W_enc[:, i])
        x = np.asarray(res.inputs[t, 0])
        cos = x @ best / (np.linalg.norm(x) * np.linalg.norm(best))
        assert cos >= 0.99, (i, cos)
        # the value is the latent's pre-activation at the optimum: 2 |A w| + (c . w + b)
        c = np.asarray(v["params"]["layers_0"]["bias"])
        want = 2.0 * np.linalg.norm(best) + c @ np.asarray(p.W_enc[:, i]) + float(p.b_enc[i])
        np.testing.assert_allclose(res.values[t], want, rtol=1e-3)
    # under jit and vmap over latents, the objective is the pre-activation by hand
    h = jax.random.normal(jax.random.key(2), (2, 5, 6))
    objs = jax.jit(jax.vmap(lambda i, q: F.feature_objective("s", q, i)({"s": h}), (0, None)))
    want = (np.asarray(h) @ np.asarray(p.W_enc) + np.asarray(p.b_enc)).mean((0, 1))
    np.testing.assert_allclose(objs(latents, p), want[np.asarray(latents)], rtol=1e-5)
    with pytest.raises(ValueError, match=r"latent: expected an index in \[0, 8\], got 9"):
        F.feature_objective("s", p, 9)
    with pytest.raises(ValueError, match="params: expected one SAE or transcoder"):
        F.feature_objective("s", jax.tree.map(lambda a: a[None], p), 0)
