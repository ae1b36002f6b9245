"""Objectives, regularizers, parameterizations and transforms, checked against NumPy / SciPy."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndi

from jaxinterp import actmax
from jaxinterp.actmax import INPUT, OUTPUT

RNG = np.random.RandomState(0)
ACTS = {
    "dense": RNG.randn(3, 12).astype(np.float32),
    "conv": RNG.randn(3, 5, 6, 4).astype(np.float32),
    OUTPUT: RNG.randn(3, 10).astype(np.float32),
    INPUT: RNG.rand(3, 7, 7, 2).astype(np.float32),
}


def _j(acts):
    return {k: jnp.asarray(v) for k, v in acts.items()}


@pytest.mark.parametrize("use_jit", [False, True])
def test_objectives_match_numpy(use_jit):
    v = RNG.randn(4).astype(np.float32)
    cases = [
        (actmax.neuron("dense", 5), ACTS["dense"][:, 5].mean()),
        (actmax.neuron("conv", 2), ACTS["conv"][:, 2, 3, 2].mean()),  # centre position
        (actmax.neuron("conv", 1, position=(0, 4)), ACTS["conv"][:, 0, 4, 1].mean()),
        (actmax.channel("conv", 3), ACTS["conv"][..., 3].mean()),
        (actmax.direction("conv", v), np.einsum("bhwc,c->bhw", ACTS["conv"], v).mean()),
        (actmax.deepdream("conv"), (ACTS["conv"] ** 2).mean()),
        (actmax.class_logit(7), ACTS[OUTPUT][:, 7].mean()),
    ]
    for obj, ref in cases:
        f = jax.jit(obj) if use_jit else obj
        np.testing.assert_allclose(f(_j(ACTS)), ref, rtol=1e-5, err_msg=obj.name)


def test_cosine_direction_and_vmapped_targets():
    v = RNG.randn(12).astype(np.float32)
    a = ACTS["dense"]
    cos = (a @ v) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(v))
    got = actmax.direction("dense", v, cosine=True)(_j(ACTS))
    np.testing.assert_allclose(got, cos.mean(), rtol=1e-5)
    # a traced unit index: one vmap over targets gives every unit's objective
    units = jnp.arange(12)
    vals = jax.jit(jax.vmap(lambda u: actmax.neuron("dense", u)(_j(ACTS))))(units)
    np.testing.assert_allclose(vals, a.mean(0), rtol=1e-5)
    dirs = jnp.asarray(RNG.randn(5, 12).astype(np.float32))
    vals = jax.vmap(lambda d: actmax.direction("dense", d)(_j(ACTS)))(dirs)
    np.testing.assert_allclose(vals, (a @ np.asarray(dirs).T).mean(0), rtol=1e-5)


def test_diversity_matches_pairwise_loop():
    a = ACTS["conv"].reshape(3, -1, 4)
    grams = [x.T @ x for x in a]
    grams = [g.ravel() / np.linalg.norm(g) for g in grams]
    ref = -sum(grams[i] @ grams[j] for i in range(3) for j in range(3) if i != j) / 3
    np.testing.assert_allclose(jax.jit(actmax.diversity("conv"))(_j(ACTS)), ref, rtol=1e-5)


def test_combinators():
    a, b = actmax.neuron("dense", 1), actmax.channel("conv", 0)
    va, vb = ACTS["dense"][:, 1].mean(), ACTS["conv"][..., 0].mean()
    combo = a + 2 * b - b / 4 - 1.5
    assert combo.paths == ("dense", "conv")
    np.testing.assert_allclose(combo(_j(ACTS)), va + 2 * vb - vb / 4 - 1.5, rtol=1e-5)
    np.testing.assert_allclose(sum([a, b, -a])(_j(ACTS)), vb, rtol=1e-5)
    np.testing.assert_allclose((3 - a)(_j(ACTS)), 3 - va, rtol=1e-5)
    with pytest.raises(TypeError, match="Objective"):
        a + "x"
    with pytest.raises(TypeError, match="number"):
        a * a


def test_regularizers_match_numpy():
    x = ACTS[INPUT]
    tv = np.abs(np.diff(x, axis=1)).sum((1, 2, 3)) + np.abs(np.diff(x, axis=2)).sum((1, 2, 3))
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    box = sum(padded[:, i : i + 7, j : j + 7] for i in range(3) for j in range(3)) / 9
    cases = [
        (actmax.l1(0.5), np.abs(x - 0.5).reshape(3, -1).sum(1).mean()),
        (actmax.l2(), np.linalg.norm(x.reshape(3, -1), axis=1).mean()),
        (actmax.total_variation(), tv.mean()),
        (actmax.blur(), 0.5 * ((x - box) ** 2).reshape(3, -1).sum(1).mean()),
    ]
    for obj, ref in cases:
        np.testing.assert_allclose(jax.jit(obj)(_j(ACTS)), ref, rtol=1e-5, err_msg=obj.name)
    # the blur penalty's gradient points from the blurred image to the image
    g = jax.grad(lambda z: actmax.blur()({INPUT: z}))(jnp.asarray(x))
    np.testing.assert_allclose(g, (x - box) / 3, rtol=1e-4, atol=1e-6)


def test_objective_errors_are_clear():
    with pytest.raises(ValueError, match=r"^unit: expected an index in \[0, 12\)"):
        actmax.neuron("dense", 12)(_j(ACTS))
    with pytest.raises(KeyError, match="needs paths"):
        actmax.neuron("missing", 0)(_j(ACTS))
    with pytest.raises(ValueError, match="position"):
        actmax.neuron("conv", 0, position=1)(_j(ACTS))
    with pytest.raises(ValueError, match=r"^vector: expected \[features\] = \[12\]"):
        actmax.direction("dense", np.ones(3))(_j(ACTS))


# ------------------------------------------------------------------------- parameterizations


def test_pixel_range_roundtrip_and_determinism():
    p = actmax.pixel((5, 5, 3), batch=2, value_range=(-1.0, 2.0), decorrelate=True)
    params = p.init(jax.random.key(0))
    np.testing.assert_array_equal(params, p.init(jax.random.key(0)))
    big = jnp.asarray(RNG.randn(*params.shape).astype(np.float32) * 5)
    x = jax.jit(p.apply)(big)
    assert x.shape == (2, 5, 5, 3) and float(x.min()) >= -1 and float(x.max()) <= 2
    target = jnp.asarray(RNG.uniform(-0.9, 1.9, (2, 5, 5, 3)).astype(np.float32))
    np.testing.assert_allclose(p.apply(p.invert(target)), target, atol=1e-4)


def test_fourier_matches_numpy_irfft_and_inverts():
    h, w, c = 6, 8, 3
    p = actmax.fourier((h, w, c), batch=2, decorrelate=False)
    params = np.asarray(p.init(jax.random.key(1))) * 30
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None]
    scale = np.sqrt(h * w) / np.maximum(np.sqrt(fx**2 + fy**2), 1 / max(h, w))
    img = np.fft.irfft2((params[..., 0] + 1j * params[..., 1]) * scale, s=(h, w)) / 4
    ref = 1 / (1 + np.exp(-np.moveaxis(img, 1, -1)))
    np.testing.assert_allclose(jax.jit(p.apply)(jnp.asarray(params)), ref, atol=1e-5)
    pd = actmax.fourier((h, w, c), batch=2)  # with colour decorrelation
    x = jnp.asarray(RNG.uniform(0.05, 0.95, (2, h, w, c)).astype(np.float32))
    np.testing.assert_allclose(pd.apply(pd.invert(x)), x, atol=1e-4)
    # Lucid's colour matrix (square root of ImageNet's colour covariance), columns scaled to
    # a largest norm of 1, applied to each pixel's channels
    m = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    m = m / np.linalg.norm(m, axis=0).max()
    ref = 1 / (1 + np.exp(-np.moveaxis(img, 1, -1) @ m.T))
    np.testing.assert_allclose(jax.jit(pd.apply)(jnp.asarray(params)), ref, atol=1e-5)
    m5 = RNG.randn(5, 5).astype(np.float32) + 3 * np.eye(5, dtype=np.float32)  # any matrix
    p5 = actmax.pixel((2, 3, 5), decorrelate=m5)
    t = RNG.randn(1, 2, 3, 5).astype(np.float32)
    np.testing.assert_allclose(p5.apply(jnp.asarray(t)), 1 / (1 + np.exp(-t @ m5.T)), atol=1e-5)


def test_norm_ball_and_soft_prompt():
    p = actmax.norm_ball((4, 3), radius=2.0, batch=3)
    v = RNG.randn(3, 4, 3).astype(np.float32) * np.asarray([0.1, 1, 10], np.float32)[:, None, None]
    v = jnp.asarray(v)
    x = np.asarray(jax.jit(p.apply)(v))
    norms = np.linalg.norm(x.reshape(3, -1), axis=1)
    assert norms[0] < 2 and np.allclose(norms[1:], 2.0, atol=1e-5)
    np.testing.assert_allclose(x[0], np.asarray(v[0]), rtol=1e-6)  # inside the ball: unchanged
    table = jnp.asarray(RNG.randn(11, 5).astype(np.float32))
    sp = actmax.soft_prompt(table, 7, batch=2)
    e = sp.init(jax.random.key(3))
    ids = actmax.nearest_tokens(e + 1e-3, table)
    np.testing.assert_allclose(e, np.asarray(table)[np.asarray(ids)], atol=1e-6)
    d = ((np.asarray(e)[..., None, :] - np.asarray(table)) ** 2).sum(-1)
    np.testing.assert_array_equal(jax.jit(actmax.nearest_tokens)(e, table), d.argmin(-1))
    args, kwargs = sp.feed(e)
    assert args[0].shape == (2, 7) and kwargs["embeddings"] is e
    with pytest.raises(ValueError, match="radius"):
        actmax.norm_ball((3,), 0.0)
    with pytest.raises(ValueError, match=r"^embedding: expected a float \[vocab, d_model\]"):
        actmax.soft_prompt(jnp.ones(3), 4)


# ------------------------------------------------------------------------------- transforms

IMG = RNG.rand(2, 10, 10, 3).astype(np.float32)


def test_pad_and_jitter():
    out = jax.jit(actmax.pad(2, value=0.3))(jax.random.key(0), IMG)
    ref = np.pad(IMG, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=0.3)
    np.testing.assert_array_equal(out, ref)
    j = actmax.jitter(3)
    crops = {(oy, ox): IMG[:, oy : oy + 7, ox : ox + 7] for oy in range(4) for ox in range(4)}
    seen = set()
    for i in range(20):
        out = np.asarray(jax.jit(j)(jax.random.key(i), IMG))
        match = [o for o, c in crops.items() if np.array_equal(out, c)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 4  # the offset is random
    np.testing.assert_array_equal(j(jax.random.key(5), IMG), j(jax.random.key(5), IMG))
    with pytest.raises(ValueError, match="^x: jitter"):
        j(jax.random.key(0), IMG[0])


@pytest.mark.parametrize("angle", [90.0, 17.0, -30.0])
def test_rotate_matches_scipy(angle):
    out = jax.jit(actmax.random_rotate([angle]))(jax.random.key(0), IMG)
    ref = ndi.rotate(IMG, angle, axes=(1, 2), reshape=False, order=1, mode="nearest")
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("s", [1.2, 0.9])
def test_scale_matches_scipy(s):
    out = np.asarray(jax.jit(actmax.random_scale([s]))(jax.random.key(0), IMG))
    offset = (0.5 - 10 * (1 - s) / 2) / s - 0.5
    ref = ndi.affine_transform(
        IMG[0, ..., 0], np.eye(2) / s, offset=offset, order=1, mode="nearest"
    )
    np.testing.assert_allclose(out[0, ..., 0], ref, atol=1e-5)


def test_compose_under_vmap_and_keys():
    t = actmax.compose(*actmax.standard_transforms())
    big = jnp.asarray(RNG.rand(3, 1, 40, 40, 3).astype(np.float32))
    keys = jax.random.split(jax.random.key(0), 3)
    out = jax.jit(jax.vmap(t))(keys, big)
    assert out.shape == (3, 1, 52, 52, 3)
    np.testing.assert_allclose(out[1], t(keys[1], big[1]), atol=1e-5)
    assert not np.allclose(out[0], t(keys[1], big[0]))


def test_actmax_traces_plot():
    from matplotlib.figure import Figure

    from jaxinterp.plotting import actmax_traces

    traces = np.cumsum(RNG.rand(3, 20), axis=1)
    fig = actmax_traces(traces, ["a", "b", "c"], dataset_best=np.asarray([1.0, 2.0, -np.inf]))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), traces[0])
    assert len(ax.lines) == 5  # 3 traces + 2 finite dataset lines
    smooth = actmax_traces(traces, smooth=4).axes[0].lines[0].get_ydata()
    np.testing.assert_allclose(smooth, np.convolve(traces[0], np.ones(4) / 4, mode="valid"))
    with pytest.raises(ValueError, match="labels: expected 3"):
        actmax_traces(traces, ["a"])
    with pytest.raises(ValueError, match=r"^traces: expected a non-empty \[target, steps\]"):
        actmax_traces(traces[0])


def test_resizing_transforms_the_model_rejects_fail_clearly(cnn):
    param = actmax.pixel((8, 8, 1))
    with pytest.raises(ValueError, match=r"transforms: .*\(1, 8, 8, 1\) into \(1, 7, 7, 1\).*pad"):
        actmax.maximize(
            jax.random.key(0),
            cnn.model,
            cnn.variables,
            actmax.neuron("act_2", 0),
            param=param,
            steps=2,
            transforms=[actmax.jitter(1)],
        )


# ------------------------------------------------------------------- fast convolution gradients


@pytest.mark.parametrize(
    "dn, xs, ks, strides, padding, rhs_dil",
    [
        (("NCHW", "OIHW", "NCHW"), (2, 5, 9, 7), (6, 5, 3, 2), (2, 1), [(1, 2), (0, 1)], (1, 2)),
        (
            ("NCHW", "OIHW", "NHWC"),
            (2, 40, 12, 12),
            (8, 40, 3, 3),
            (2, 1),
            [(1, 2), (0, 1)],
            (2, 1),
        ),
        # strided, many features: the input gradient by phases (stride 3 with a 3-dilated
        # kernel leaves two phases of one axis without taps; odd sizes; zero padding)
        (
            ("NHWC", "HWIO", "NHWC"),
            (3, 11, 10, 32),
            (3, 3, 32, 16),
            (3, 2),
            [(2, 1), (0, 0)],
            (3, 1),
        ),
        (("NHWC", "HWIO", "NHWC"), (2, 8, 9, 64), (3, 3, 64, 24), (2, 2), [(1, 1), (1, 1)], (1, 1)),
    ],
)
def test_fast_conv_gradients_match_jax(dn, xs, ks, strides, padding, rhs_dil):
    """The im2col path (few input features) and the canonical-kernel path (many) give JAX's
    own values and gradients, for any dimension numbers, strides, padding and dilation."""
    from jaxinterp.actmax._fastgrad import fast_input_grads

    x = jax.random.normal(jax.random.key(0), xs)
    k = jax.random.normal(jax.random.key(1), ks)

    def f(x, k):
        y = jax.lax.conv_general_dilated(
            x, k, strides, padding, rhs_dilation=rhs_dil, dimension_numbers=dn
        )
        return jnp.sum(jnp.sin(y))

    v0, g0 = jax.jit(jax.value_and_grad(f, (0, 1)))(x, k)
    v1, g1 = jax.jit(jax.value_and_grad(fast_input_grads(f), (0, 1)))(x, k)
    np.testing.assert_allclose(v1, v0, rtol=1e-4, atol=1e-4)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    gv = jax.vmap(jax.grad(fast_input_grads(f)))(x[None], k[None])  # batched over targets
    np.testing.assert_allclose(gv[0], g0[0], rtol=1e-4, atol=1e-4)


class _ConvStack(nn.Module):
    """Two 3x3 convolutions (the second strided) with ReLUs, a 1x1 head, and a residual-style
    branch that reads the whole first activation."""

    @nn.compact
    def __call__(self, x):
        a = nn.relu(nn.Conv(24, (3, 3), name="conv_0")(x))
        b = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2), name="conv_1")(a))
        self.sow("intermediates", "a", a)
        self.sow("intermediates", "b", b)
        return nn.Conv(4, (1, 1), name="head")(b).mean((1, 2))


@pytest.mark.parametrize("whole_too", [False, True])
def test_one_channel_read_computes_that_channel_only(whole_too):
    """A loss reading one channel of ``relu(conv + bias)`` (a different channel per target
    under ``vmap``) gets the same value and input gradient when only that channel's
    convolution runs; when the loss also reads the whole activation, nothing is pruned."""
    from unittest import mock

    from jaxinterp.actmax import _fastgrad

    model = _ConvStack()
    x = jnp.asarray(RNG.rand(4, 1, 12, 12, 5).astype(np.float32))
    variables = model.init(jax.random.key(0), x[0])
    leaves, tree = jax.tree.flatten(variables)  # biases start at zero: give them values
    noise = [0.1 * RNG.randn(*np.shape(v)).astype(np.float32) for v in leaves]
    variables = jax.tree.unflatten(tree, [v + n for v, n in zip(leaves, noise)])

    def f(x, c):
        _, st = model.apply(variables, x, mutable=["intermediates"])
        b = st["intermediates"]["b"][0]
        value = b[..., c].mean() + jnp.sin(st["intermediates"]["a"][0][..., 3]).sum()
        return value + (0.01 * jnp.sum(b**2) if whole_too else 0.0)

    cs = jnp.array([0, 17, 31, -45])  # -45: wrapped once by indexing to -13, clamped to 0
    spy = mock.patch.object(_fastgrad, "_eval_one_channel", wraps=_fastgrad._eval_one_channel)
    with spy as one:
        v1, g1 = jax.jit(jax.vmap(jax.value_and_grad(_fastgrad.fast_input_grads(f))))(x, cs)
    # b: read once; a: 24 channels, read at channel 3 and by conv_1
    assert one.call_count == (0 if whole_too else 1)
    v0, g0 = jax.jit(jax.vmap(jax.value_and_grad(f)))(x, cs)
    np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-6 * float(jnp.abs(g0).max()))


def test_one_unit_of_a_dense_layer_computes_that_unit_only():
    """A loss reading one unit of ``relu(dense(x))`` (a different unit per target under
    ``vmap``) gets ``jax.grad``'s value and input gradient from that unit's weight column alone;
    the layer above (the model's output, unread) does not run."""
    from unittest import mock

    from jaxinterp.actmax import _fastgrad

    class Mlp(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.relu(nn.Dense(40, name="hidden")(x.reshape(x.shape[0], -1)))
            self.sow("intermediates", "h", h)
            return nn.Dense(3, name="out")(h)

    model = Mlp()
    x = jnp.asarray(RNG.rand(4, 1, 4, 5).astype(np.float32))
    variables = model.init(jax.random.key(0), x[0])
    leaves, tree = jax.tree.flatten(variables)
    variables = jax.tree.unflatten(tree, [v + 0.1 * RNG.randn(*v.shape) for v in leaves])
    hidden = variables["params"]["hidden"]
    variables["params"]["hidden"] = {**hidden, "bias": hidden["bias"] + 1.0}  # all units on

    def f(x, c):
        _, st = model.apply(variables, x, mutable=["intermediates"])
        return st["intermediates"]["h"][0][0, c] * 2.0 + jnp.sum(x**2)

    cs = jnp.array([0, 21, 39, -50])  # -50: wrapped once by indexing to -10, clamped to 0
    spy = mock.patch.object(_fastgrad, "_eval_one_channel", wraps=_fastgrad._eval_one_channel)
    with spy as one:
        v1, g1 = jax.jit(jax.vmap(jax.value_and_grad(_fastgrad.fast_input_grads(f))))(x, cs)
    assert one.call_count == 1
    v0, g0 = jax.jit(jax.vmap(jax.value_and_grad(f)))(x, cs)
    np.testing.assert_allclose(v1, v0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g1, g0, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "stride, dilation, padding, spec",
    [
        ((1, 1), (1, 1), ((1, 1), (1, 1)), ("NHWC", "HWIO", "NHWC")),
        ((2, 3), (1, 1), ((0, 2), (1, 0)), ("NHWC", "HWIO", "NHWC")),
        ((2, 2), (2, 1), ((3, 1), (-1, 2)), ("NCHW", "OIHW", "NCHW")),
        ((1, 2), (1, 2), ((0, 0), (0, 0)), ("NCHW", "HWIO", "NHWC")),
    ],
)
def test_one_feature_convolution_matches_lax_conv(stride, dilation, padding, spec):
    """The one-output-feature convolution (a product with the taps, then shifted windows)
    equals ``jax.lax.conv_general_dilated`` with that one output feature, for strides, dilations,
    uneven and negative padding and other layouts, and so does its input gradient."""
    from jaxinterp.actmax._fastgrad import _one_feature

    x = jnp.asarray(RNG.randn(2, 11, 13, 6).astype(np.float32))  # NHWC
    k = jnp.asarray(RNG.randn(3, 2, 6, 1).astype(np.float32))  # HWIO
    to = {"NCHW": (0, 3, 1, 2), "NHWC": (0, 1, 2, 3), "OIHW": (3, 2, 0, 1), "HWIO": (0, 1, 2, 3)}
    xs, ks = jnp.transpose(x, to[spec[0]]), jnp.transpose(k, to[spec[1]])
    dn = jax.lax.conv_dimension_numbers(xs.shape, ks.shape, spec)

    def ref(xs):
        return jax.lax.conv_general_dilated(
            xs, ks, stride, padding, rhs_dilation=dilation, dimension_numbers=dn
        )

    q = dict(window_strides=stride, padding=padding, rhs_dilation=dilation,
             dimension_numbers=dn, precision=None)  # fmt: skip
    want = ref(xs)
    got = jax.jit(lambda xs: _one_feature(xs, ks, q))(xs)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ct = jnp.asarray(RNG.randn(*want.shape).astype(np.float32))
    g0 = jax.vjp(ref, xs)[1](ct)[0]
    g1 = jax.vjp(lambda xs: _one_feature(xs, ks, q), xs)[1](ct)[0]
    np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "window, strides, tiled",
    [
        ((1, 2, 2, 1), (1, 2, 2, 1), True),  # average pooling, 9 -> 4 (a row and column unread)
        ((1, 3, 2, 1), (1, 3, 2, 1), True),
        ((1, 1, 1, 4), (1, 1, 1, 4), True),  # over features
        ((1, 3, 3, 1), (1, 2, 2, 1), False),  # overlapping: JAX's own rule
    ],
)
def test_tiled_window_sum_matches_jax(window, strides, tiled):
    """A window sum over non-overlapping tiles, evaluated as a reshape and a sum, gives
    ``reduce_window``'s value and input gradient (cotangent spread over each tile, zero on the
    rows and columns no tile covers); overlapping windows are left to JAX."""
    from unittest import mock

    from jaxinterp.actmax import _fastgrad

    x = jnp.asarray(RNG.randn(2, 9, 10, 8).astype(np.float32))
    w = jnp.asarray(RNG.randn(*jax.eval_shape(
        lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "VALID"), x
    ).shape).astype(np.float32))  # fmt: skip

    def f(x):
        pooled = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "VALID")
        return jnp.sum(jnp.tanh(pooled) * w)

    spy = mock.patch.object(_fastgrad, "_tile_sum", wraps=_fastgrad._tile_sum)
    with spy as tile:
        v1, g1 = jax.jit(jax.value_and_grad(_fastgrad.fast_input_grads(f)))(x)
    assert tile.call_count == int(tiled)
    v0, g0 = jax.value_and_grad(f)(x)
    np.testing.assert_allclose(v1, v0, rtol=1e-5)
    np.testing.assert_allclose(g1, g0, rtol=1e-5, atol=1e-6)
    if window == (1, 2, 2, 1):
        assert np.all(np.asarray(g1)[:, 8, :] == 0)  # row 8 is in no tile
    small = jnp.full((1, 8, 8, 1), 100, jnp.int8)  # int8 sums stay int8 (wrap around as XLA's)
    pool = lambda x: jax.lax.reduce_window(x, 0, jax.lax.add, window, strides, "VALID")  # noqa: E731
    want, got = pool(small), _fastgrad.fast_input_grads(pool)(small)
    assert got.dtype == want.dtype == jnp.int8
    np.testing.assert_array_equal(got, want)


def test_transforms_draw_words_like_keys():
    """``t(key, x)`` equals ``t.with_words(bits(key, (t.words,)), x)`` for built-in transforms
    and their composition; the scale and angle are picked by ``word % choices``."""
    t = actmax.compose(*actmax.standard_transforms())
    assert t.words == 4  # jitter, scale, rotate, jitter
    big = jnp.asarray(RNG.rand(1, 40, 40, 3).astype(np.float32))
    key = jax.random.key(3)
    words = jax.random.bits(key, (4,), jnp.uint32)
    np.testing.assert_array_equal(t(key, big), t.with_words(words, big))
    rot = actmax.random_rotate([0.0, 90.0])
    w = jnp.array([1], jnp.uint32)  # 1 % 2 -> 90 degrees
    ref = ndi.rotate(IMG, 90.0, axes=(1, 2), reshape=False, order=1, mode="nearest")
    np.testing.assert_allclose(rot.with_words(w, IMG), ref, atol=1e-5)


def test_host_draws_are_jax_random_bit_for_bit():
    from jaxinterp.actmax._draws import host_draws

    for seed, n, words in [(0, 5, 7), (3, 64, 258), (2**31 - 1, 1, 0)]:
        key = jax.random.key(seed)
        keys = jax.random.split(key, n)
        kd, bits = host_draws(key, n, words)
        np.testing.assert_array_equal(kd, jax.random.key_data(keys))
        ref = jax.vmap(lambda k, w=words: jax.random.bits(k, (w,), jnp.uint32))(keys)
        np.testing.assert_array_equal(bits, ref)
        kd2, bits2 = host_draws(keys, n, words)  # [target] keys given: no split
        np.testing.assert_array_equal(kd2, kd)
        np.testing.assert_array_equal(bits2, bits)
    # traced keys and other implementations are left to the program
    seen = []
    jax.jit(lambda k: seen.append(host_draws(k, 3, 4)) or 0)(jax.random.key(0))
    assert seen == [None]
    assert host_draws(jax.random.key(0, impl="rbg"), 3, 4) is None


def test_maximize_host_draws_equal_program_draws(cnn, monkeypatch):
    # with a concrete key the words are drawn on the host; the program's own draws (traced keys)
    # give the same results
    from jaxinterp.actmax import _maximize

    def run(seed):
        return actmax.maximize(
            jax.random.key(seed), cnn.model, cnn.variables, lambda u: actmax.neuron("act_2", u),
            jnp.arange(3), param=actmax.pixel((8, 8, 1)), steps=5,
            transforms=[actmax.pad(1), actmax.jitter(1)],
        )  # fmt: skip

    host = run(4)
    monkeypatch.setattr(_maximize, "host_draws", lambda *args: None)
    program = run(4)
    np.testing.assert_array_equal(host.inputs, program.inputs)
    np.testing.assert_array_equal(host.traces, program.traces)
    assert not np.array_equal(run(5).inputs, host.inputs)
