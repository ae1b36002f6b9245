"""Patch sweeps with prefix reuse and grid-reduced attribution patching on the decoder fixtures.

Reference values come from independent computations: the full-forward sweep
(``reuse_prefix=False``, one patched forward of the whole model per site), single-site
``intervene`` runs, and numpy sums of gradient × activation difference.

Tolerances. The prefix-reuse sweep runs the same float32 operations as the full forward, but
block ``L`` and the blocks after it are compiled as separate programs (a ``fori_loop`` over
stacked weights), so XLA may fuse and order the sums differently. Each metric is a difference
of logits computed through 2 layers of dot products of length <= 128; reordering such sums
changes them by a few float32 ulps of the magnitudes involved (logits, hidden <= ~20 here):
1e-5 absolute (measured: <= 1.4e-6 on every variant; the suite also passes under
``XLA_FLAGS=--xla_cpu_max_isa=SSE4_2``).
"""

from __future__ import annotations

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxinterp import interventions as iv
from jaxinterp.interventions import _sweep
from jaxinterp.models import load_decoder

FIX = Path(__file__).parent / "fixtures" / "decoders"
SEQ = 10


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def dec(request):
    d = load_decoder(FIX / request.param)
    k1, _ = jax.random.split(jax.random.key(0))
    clean = jax.random.randint(k1, (3, SEQ), 0, d.config.vocab_size)
    corrupted = clean.at[:, 4].set((clean[:, 4] + 7) % d.config.vocab_size)
    return d, clean, corrupted


def metric(logits):
    return logits[:, -1, 5].mean() - logits[:, -1, 9].mean()


def _sites(d, kind):
    n, h = d.config.n_layers, d.config.n_heads
    z = [f"blocks_{i}/attn/z" for i in range(n)]
    if kind == "head":
        return iv.site_grid(z, [(-2, h)], ("layer", "head"))
    if kind == "head_position":
        return iv.site_grid(z, [(-2, h), (-3, SEQ)], ("layer", "head", "position"))
    resid = [f"blocks_{i}/ln_1:input" for i in range(n)]
    return iv.site_grid(resid, [(-2, SEQ)], ("layer", "position"))


@pytest.mark.parametrize("kind", ["head", "head_position", "resid"])
def test_prefix_reuse_equals_full_forward(dec, kind):
    d, clean, corrupted = dec
    sites = _sites(d, kind)
    assert _sweep._find_chain(d.model, d.variables, sites, None, (corrupted,), {}) is not None

    def sweep(reuse):
        return jax.jit(
            lambda c, x: (
                iv.patch_sweep(
                    d.model, d.variables, c, x, sites, metric, reuse_prefix=reuse
                ).patched
            )
        )(clean, corrupted)

    fast, full = sweep(True), sweep(False)
    assert fast.shape == (sites.layer.shape[0],)
    np.testing.assert_allclose(fast, full, rtol=0, atol=1e-5)
    assert float(jnp.abs(full - full.mean()).max()) > 1e-3  # the sites do differ


def test_prefix_reuse_matches_manual_patching(dec):
    d, clean, corrupted = dec
    sites = _sites(d, "head_position")
    res = iv.patch_sweep(d.model, d.variables, clean, corrupted, sites, metric, chunk_size=5)
    grid = sites.unflatten(res.patched)
    for layer, head, pos in [(0, 1, 4), (1, 3, 7), (1, 0, 9), (0, 2, 2)]:
        path = f"blocks_{layer}/attn/z"
        _, src = iv.capture_sites(d.model, d.variables, [path])(clean)
        edit = iv.replace(src[path], at={-3: pos, -2: head})
        want = metric(iv.intervene(d.model, d.variables, {path: edit})(corrupted))
        np.testing.assert_allclose(grid[layer, head, pos], want, rtol=0, atol=1e-5)
    # causal model: patching a position before the corruption at 4 changes nothing
    np.testing.assert_allclose(grid[:, :, :4], res.corrupted, rtol=0, atol=1e-5)


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x + jnp.tanh(nn.Dense(8, name="fc")(x))


class _Stack(nn.Module):
    skip: bool

    @nn.compact
    def __call__(self, x):
        x0 = _Block(name="b_0")(x)
        x2 = _Block(name="b_2")(_Block(name="b_1")(x0))
        return nn.Dense(3, name="head")(x2 + x0 if self.skip else x2)


@pytest.mark.parametrize("skip", [False, True])
def test_chain_detection_and_skip_connections(skip):
    """A value around the chain (x0 reaching the head) must disable prefix reuse."""
    m = _Stack(skip)
    x = jax.random.normal(jax.random.key(0), (4, 8))
    y = x + 1.0
    v = m.init(jax.random.key(1), x)
    sites = iv.site_grid(["b_0/fc", "b_1/fc"], [(-1, 8)])
    found = _sweep._find_chain(m, v, sites, None, (y,), {})
    assert (found is None) == skip

    def f(o):
        return o[:, 0].mean()

    res = jax.jit(lambda a, b: iv.patch_sweep(m, v, a, b, sites, f).patched)(x, y)
    want = []
    for layer, unit in [(0, 3), (1, 5)]:
        p = sites.paths[layer]
        _, src = iv.capture_sites(m, v, [p])(x)
        want.append(f(iv.intervene(m, v, {p: iv.replace(src[p], at={-1: unit})})(y)))
    np.testing.assert_allclose(res[jnp.array([3, 13])], jnp.stack(want), rtol=0, atol=1e-5)


def test_attribution_equals_numpy_grid_sums(dec):
    """effect[l, h, t] = Σ_{batch, d_head} g · (clean − corrupted), summed in numpy."""
    d, clean, corrupted = dec
    sites = _sites(d, "head_position")
    res = jax.jit(lambda c, x: iv.attribution_patch(d.model, d.variables, c, x, sites, metric))(
        clean, corrupted
    )
    paths = sites.paths
    _, c_acts = iv.capture_sites(d.model, d.variables, paths)(clean)
    _, x_acts = iv.capture_sites(d.model, d.variables, paths)(corrupted)

    def m_of(deltas):
        edits = {p: (lambda a, p=p: a + deltas[p]) for p in paths}
        return metric(iv.intervene(d.model, d.variables, edits)(corrupted))

    grads = jax.grad(m_of)({p: jnp.zeros_like(a) for p, a in x_acts.items()})
    want = np.stack(
        [
            np.einsum(
                "bthd->ht",
                np.asarray(grads[p], np.float64)
                * (np.asarray(c_acts[p], np.float64) - np.asarray(x_acts[p], np.float64)),
            )
            for p in paths
        ]
    )
    got = np.asarray(sites.unflatten(res.patched - res.corrupted))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # negative indices select from the end, as patch_sweep's sites do
    pick = jnp.array([5, 6, 7])  # layer 0, head 0, positions 5..7
    neg = _sweep.Sites(
        sites.layer[pick], sites.index[pick] - jnp.array([0, SEQ]), paths, sites.axes
    )
    res_neg = iv.attribution_patch(d.model, d.variables, clean, corrupted, neg, metric)
    np.testing.assert_allclose(
        res_neg.patched - res_neg.corrupted, got[0, 0, 5:8], rtol=1e-4, atol=1e-6
    )
    assert np.abs(got[0, 0, 5:8]).min() > 1e-4


def test_attribution_memory_is_not_sites_times_activation(dec):
    """The compiled call's temporaries stay far below one activation copy per site.

    Measured (gpt2 fixture): 1.1 MB with the grid reduction; per-site masks took 7.1 MB.
    """
    d, _, _ = dec
    seq = 32
    clean = jax.random.randint(jax.random.key(3), (3, seq), 0, d.config.vocab_size)
    corrupted = clean.at[:, 4].set((clean[:, 4] + 7) % d.config.vocab_size)
    n, h = d.config.n_layers, d.config.n_heads
    paths = [f"blocks_{i}/attn/z" for i in range(n)]
    sites = iv.site_grid(paths, [(-2, h), (-3, seq)])  # 2 × 4 × 32 = 256 sites
    f = jax.jit(lambda c, x: iv.attribution_patch(d.model, d.variables, c, x, sites, metric))
    mem = f.lower(clean, corrupted).compile().memory_analysis()
    act_bytes = 3 * seq * h * d.config.d_head * 4
    n_sites = sites.layer.shape[0]
    assert mem.temp_size_in_bytes < n_sites * act_bytes / 4, (mem.temp_size_in_bytes, act_bytes)


def test_keyword_inputs_and_model_kwargs(dec):
    d, clean, corrupted = dec
    sites = _sites(d, "head")
    pos_res = iv.patch_sweep(d.model, d.variables, clean, corrupted, sites, metric)
    kw_res = iv.patch_sweep(
        d.model, d.variables, {"input_ids": clean}, {"input_ids": corrupted}, sites, metric
    )
    np.testing.assert_allclose(kw_res.patched, pos_res.patched, rtol=0, atol=1e-5)
    # shared keyword arguments reach every run: start=3 shifts the positions
    res = jax.jit(
        lambda c, x: (
            iv.patch_sweep(d.model, d.variables, c, x, sites, metric, kwargs={"start": 3}).patched
        )
    )(clean, corrupted)
    attr = iv.attribution_patch(
        d.model, d.variables, clean, corrupted, sites, metric, kwargs={"start": 3}
    )
    path = "blocks_1/attn/z"
    _, src = iv.capture_sites(d.model, d.variables, [path])(clean, start=3)
    edit = iv.replace(src[path], at={-2: 2})
    want = metric(iv.intervene(d.model, d.variables, {path: edit})(corrupted, start=3))
    np.testing.assert_allclose(res[d.config.n_heads + 2], want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        attr.corrupted, metric(d.model.apply(d.variables, corrupted, 3)), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, inputs, exc, name",
    [
        ([("start", 3)], None, TypeError, "kwargs"),
        ({"input_ids": 1}, "dict", ValueError, "kwargs"),
        (None, "empty", ValueError, "clean_inputs"),
    ],
)
def test_keyword_input_errors(dec, kwargs, inputs, exc, name):
    d, clean, corrupted = dec
    sites = _sites(d, "head")
    c, x = clean, corrupted
    if inputs == "dict":
        c, x = {"input_ids": clean}, {"input_ids": corrupted}
    elif inputs == "empty":
        c = {}
    for fn in (iv.patch_sweep, iv.attribution_patch):
        with pytest.raises(exc, match=f"^{name}"):
            fn(d.model, d.variables, c, x, sites, metric, kwargs=kwargs)


def test_reuse_prefix_must_be_bool(dec):
    d, clean, corrupted = dec
    with pytest.raises(TypeError, match="^reuse_prefix"):
        iv.patch_sweep(
            d.model, d.variables, clean, corrupted, _sites(d, "head"), metric, reuse_prefix="yes"
        )
