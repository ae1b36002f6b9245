"""Dictionary architectures against NumPy references; the JumpReLU STE against its formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp
from jaxinterp import features as F

RNG = np.random.default_rng(0)
D_IN, D_SAE, D_OUT = 6, 10, 4


def _params(in_shape=D_IN, out_shape=None, seed=0):
    p = F.init_params(jax.random.key(seed), in_shape, D_SAE, out_shape, threshold=0.2)
    r = np.random.default_rng(seed)
    return p._replace(
        b_enc=jnp.asarray(r.normal(size=D_SAE) * 0.3, jnp.float32),
        b_dec=jnp.asarray(r.normal(size=p.b_dec.shape) * 0.1, jnp.float32),
        W_dec=p.W_dec * jnp.asarray(r.uniform(0.5, 2.0, size=(D_SAE,) + (1,) * (p.W_dec.ndim - 1))),
        threshold=jnp.asarray(r.uniform(0.0, 0.5, size=D_SAE), jnp.float32),
    )


def _np(p):
    return [np.asarray(a, np.float64) for a in p]


def _ref_encode(p, x, arch, k=0, thr=None):
    W_enc, b_enc, W_dec, b_dec, theta = _np(p)
    pre = np.tensordot(x, W_enc, axes=x.ndim) + b_enc
    if arch == "relu":
        return np.maximum(pre, 0), pre
    if arch == "topk":
        keep = np.zeros_like(pre)
        keep[np.argsort(-pre)[:k]] = 1
        return np.maximum(pre, 0) * keep, pre
    if arch == "batch_topk":
        t = theta if thr is None else thr
        return np.maximum(pre, 0) * (pre > t), pre
    return pre * (pre > theta), pre


def _ref_loss(p, x, y, arch, coef, k=0, dead=None, aux=0.0, k_aux=3, thr=None):
    W_enc, b_enc, W_dec, b_dec, theta = _np(p)
    a, pre = _ref_encode(p, x, arch, k, thr)
    recon = np.tensordot(a, W_dec, axes=1) + b_dec
    mse = ((recon - y) ** 2).sum()
    norms = np.linalg.norm(W_dec, axis=-1).reshape(D_SAE, -1).sum(-1)
    if arch == "relu":
        pen = coef * (a * norms).sum()
    elif arch == "jumprelu":
        pen = coef * (pre > theta).sum()
    else:
        pen = 0.0
    aux_term = 0.0
    if arch in ("topk", "batch_topk") and dead is not None and dead.any():
        masked = np.where(dead, pre, -np.inf)
        top = np.argsort(-masked)[:k_aux]
        a_aux = np.zeros_like(pre)
        a_aux[top] = np.maximum(masked[top], 0)
        e = y - recon
        aux_term = aux * ((e - np.tensordot(a_aux, W_dec, axes=1)) ** 2).sum()
    return mse + pen + aux_term, a


SETTINGS = {
    "relu": (F.relu(0.3), 0.3, 0),
    "topk": (F.topk(3, aux=0.5), 0.0, 3),
    "batch_topk": (F.batch_topk(3, aux=0.5), 0.0, 3),
    "jumprelu": (F.jumprelu(0.7, bandwidth=0.1), 0.7, 0),
}
SHAPES = {
    "sae": (D_IN, None),
    "transcoder": (D_IN, D_OUT),
    "crosscoder": ((2, 3), None),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_loss_matches_numpy_under_jit_and_vmap(shape):
    """Every architecture in one stack (a vmap over settings), one example at a time."""
    in_shape, out_shape = SHAPES[shape]
    p = _params(in_shape, out_shape)
    stacked = F.stack_settings([SETTINGS[a][0] for a in SETTINGS])
    xs = RNG.normal(size=(5, *p.W_enc.shape[:-1])).astype(np.float32)
    ys = RNG.normal(size=(5, *p.b_dec.shape)).astype(np.float32)
    dead = np.arange(D_SAE) % 3 == 0

    @jax.jit
    def f(p, settings, x, y):
        def per_setting(s):
            return jax.vmap(
                lambda xi, yi: F.loss(p, xi, yi, s, dead=jnp.asarray(dead), max_k=4, k_aux=3)
            )(x, y)

        return jax.vmap(per_setting)(settings)

    terms, acts = f(p, stacked, xs, ys)
    for j, arch in enumerate(SETTINGS):
        _, coef, k = SETTINGS[arch]
        for i in range(5):
            ref, ref_a = _ref_loss(p, xs[i], ys[i], arch, coef, k, dead, aux=0.5)
            np.testing.assert_allclose(acts[j, i], ref_a, rtol=1e-5, atol=1e-5, err_msg=arch)
            np.testing.assert_allclose(terms.total[j, i], ref, rtol=1e-4, err_msg=arch)
            assert terms.l0[j, i] == (ref_a != 0).sum()
    # one example, one setting, no jit: the same numbers
    one, _ = F.loss(p, xs[0], ys[0], F.topk(3, aux=0.5), dead=jnp.asarray(dead), max_k=4, k_aux=3)
    np.testing.assert_allclose(one.total, terms.total[1, 0], rtol=1e-5)


def test_batch_topk_threshold_keeps_k_times_batch():
    pre = RNG.normal(size=(8, D_SAE)).astype(np.float32)
    thr = F.batch_topk_threshold(jnp.asarray(pre), jnp.asarray(3), 4)
    ref = np.sort(np.maximum(pre, 0).ravel())[::-1][3 * 8 - 1]
    np.testing.assert_allclose(thr, ref)
    p = _params()
    x = RNG.normal(size=(8, D_IN)).astype(np.float32)
    pre = jax.vmap(F.pre_activations, (None, 0))(p, x)
    thr = F.batch_topk_threshold(pre, jnp.asarray(3), 4)
    acts = jax.vmap(lambda xi: F.encode(p, xi, F.batch_topk(3), batch_threshold=thr))(x)
    assert int((acts > 0).sum()) == min(24, int((pre > 0).sum()))


def test_jumprelu_ste_gradient_is_the_documented_pseudo_derivative():
    p = _params()
    eps, coef = 0.1, 0.7
    setting = F.jumprelu(coef, bandwidth=eps)
    x = RNG.normal(size=(64, D_IN)).astype(np.float32)
    # place several pre-activations inside the kernel window around the threshold
    pre = np.asarray(jax.vmap(F.pre_activations, (None, 0))(p, x))
    theta = pre[0] - 0.02
    p = p._replace(threshold=jnp.asarray(theta, jnp.float32))

    def total(th):
        q = p._replace(threshold=th)
        t, _ = jax.vmap(lambda xi: F.loss(q, xi, xi, setting))(x)
        return t.total.sum()

    g = np.asarray(jax.jit(jax.grad(total))(p.threshold))
    # reference: d/dθ of Σ‖recon − x‖² through a_i = z_i H(z_i − θ_i) uses
    # ∂a_i/∂θ_i = −θ_i K((z_i−θ_i)/ε)/ε, and the L0 term −coef K(...)/ε.
    W_dec, b_dec = np.asarray(p.W_dec, np.float64), np.asarray(p.b_dec, np.float64)
    ref = np.zeros(D_SAE)
    for i in range(64):
        z = pre[i].astype(np.float64)
        a = z * (z > theta)
        err = a @ W_dec + b_dec - x[i]
        dl_da = 2 * err @ W_dec.T
        kern = (np.abs((z - theta) / eps) < 0.5) / eps
        ref += dl_da * (-theta * kern) + coef * (-kern)
    assert np.abs(ref).max() > 1.0  # the window is hit
    np.testing.assert_allclose(g, ref, rtol=1e-3, atol=1e-3)


def test_ste_functions_broadcast_theta_over_a_batch_and_sum_its_gradient():
    z = RNG.normal(size=(32, 5)).astype(np.float32)
    theta = (z[0] - 0.01).astype(np.float32)  # row 0 sits inside every kernel window
    eps = 0.1
    kern = (np.abs((z - theta) / eps) < 0.5) / eps  # [32, 5]: manual rectangle kernel
    g_step = jax.jit(jax.grad(lambda t: F.step_ste(z, t, eps).sum()))(theta)
    np.testing.assert_allclose(g_step, -kern.sum(0), rtol=1e-5)
    g_jump = jax.jit(jax.grad(lambda t: F.jump_ste(z, t, eps).sum()))(theta)
    np.testing.assert_allclose(g_jump, (-theta * kern).sum(0), rtol=1e-5)
    gz = jax.grad(lambda x: F.jump_ste(x, theta, eps).sum())(z)
    np.testing.assert_array_equal(gz, (z > theta).astype(np.float32))
    # the same as the per-example calls, vmapped
    per = jax.vmap(jax.grad(lambda t, zi: F.jump_ste(zi, t, eps).sum()), (None, 0))(theta, z)
    np.testing.assert_allclose(g_jump, per.sum(0), rtol=1e-5)
    np.testing.assert_array_equal(F.step_ste(z, theta, eps), (z > theta).astype(np.float32))
    # bf16 activations against f32 thresholds: compared as jnp promotes, gradients in f32
    zb = jnp.asarray(z, jnp.bfloat16)
    out = F.jump_ste(zb, theta, eps)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_array_equal(out, zb * (zb.astype(np.float32) > theta))
    g = jax.grad(lambda t: F.jump_ste(zb, t, eps).astype(jnp.float32).sum())(theta)
    assert g.dtype == jnp.float32 and np.all(np.isfinite(g))
    with pytest.raises(ValueError, match=r"theta, bandwidth: .*z \(32, 5\).*theta \(4,\)"):
        F.step_ste(z, jnp.zeros(4), eps)
    for bad in (0.0, -0.1, np.inf, np.nan):
        with pytest.raises(ValueError, match="bandwidth: expected positive values"):
            F.jump_ste(z, theta, bad)
    with pytest.raises(ValueError, match="bandwidth: expected positive values"):
        jaxinterp.checked(lambda b: F.step_ste(z, theta, b))(jnp.float32(0.0))
    with pytest.raises(TypeError, match="z: "):
        F.jump_ste(np.ones(3, np.int32), 0.5, eps)


def test_encode_rejects_a_batch_and_bad_settings():
    p = _params()
    with pytest.raises(ValueError, match=r"x: expected one example of shape \(6,\)"):
        F.encode(p, jnp.ones((3, D_IN)), F.relu(1.0))
    with pytest.raises(ValueError, match="k: expected an int >= 1, got 0"):
        F.topk(0)
    with pytest.raises(ValueError, match="bandwidth: expected a finite number > 0"):
        F.jumprelu(0.1, bandwidth=0.0)
    with pytest.raises(ValueError, match="archs: expected names"):
        F.encode(p, jnp.ones(D_IN), F.relu(1.0), archs=("gelu",))
    with pytest.raises(ValueError, match=r"target: expected one example of shape \(6,\)"):
        F.loss(p, jnp.ones(D_IN), jnp.ones(4), F.relu(1.0))


def test_decoder_norm_weighting_of_crosscoder_penalty_sums_source_norms():
    p = _params((2, 3))
    norms = np.linalg.norm(np.asarray(p.W_dec), axis=-1).sum(-1)
    np.testing.assert_allclose(F.decoder_norms(p), norms, rtol=1e-6)
