"""8 fake CPU devices: every analysis with weight-sharded parameters and a sharded batch.

The Llama fixture decoder (tests/fixtures/decoders/llama: GQA 4/2 heads, d_model 64, d_mlp 96)
is placed on a ``('data' 4, 'model' 2)`` mesh by :func:`jaxinterp.sharding.shard_params` with the
default decoder rules, the batch on ``data``; each analysis runs under ``jax.jit`` with the
sharded variables as an argument (GSPMD partitions it) and is compared with the same call on
one device with unsharded variables: capture, attention weights, a (layer, head) patch sweep,
attribution patching over (layer, head, position), act-max on the decoder blocks, probe
features and a logistic probe fit. An nnx model's state is sharded the same way.

Tolerances, as ``max |sharded - single| <= rtol * max |single|`` per result: the sharded
program does the same float32 operations, except that matrix products contracting over a
sharded axis (``d_model`` over 4 ``data`` devices, heads or MLP hidden units over 2 ``model``
devices) add their partial sums in another order (all-reduce). A reordered sum of ``k <= 96``
terms changes by at most about ``k * 2**-24 ≈ 6e-6`` of the sum of the terms' magnitudes, which
is of the order of the result's scale here; a few such sums in sequence (two layers) give the
3e-5 bound (measured: 1e-6 to 3e-6, printed). Act-max iterates 30 Adam steps on sharded
gradients and the probe fit runs L-BFGS: iterative solvers can amplify the difference, so act-max
gets 1e-4 and the probe weights the tolerance of tests/sharded/check_probes.py (1e-3; the fit is
L2-regularised, C=0.1, on 96 examples, so the optimum is well determined).

Run standalone: ``python tests/sharded/check_weights.py`` prints ``ok``.
"""

import os
import sys
import time
from pathlib import Path

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from jaxinterp import actmax, probes  # noqa: E402
from jaxinterp import interventions as iv  # noqa: E402
from jaxinterp.attention import attention_weights  # noqa: E402
from jaxinterp.capture import capture  # noqa: E402
from jaxinterp.models import DecoderConfig, load_decoder  # noqa: E402
from jaxinterp.models._decoder import _Block, _norm  # noqa: E402
from jaxinterp.sharding import (  # noqa: E402
    device_bytes,
    model_mesh,
    param_specs,
    shard_leading,
    shard_params,
)

_LAST = time.perf_counter()
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "decoders" / "llama"


def close(name: str, got, ref, rtol: float = 3e-5) -> None:
    """``|got - ref| <= rtol * max|ref|`` per leaf: an error relative to the leaf's scale."""
    worst = 0.0
    flat = jax.tree_util.tree_flatten_with_path(ref)[0]
    for g, (path, r) in zip(jax.tree.leaves(got), flat, strict=True):
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        assert g.shape == r.shape, (name, g.shape, r.shape)
        scale = max(float(np.max(np.abs(r))), 1e-30)
        err = float(np.max(np.abs(g - r))) / scale
        assert err <= rtol, f"{name}{jax.tree_util.keystr(path)}: {err:.2e} > {rtol:.0e} of {scale}"
        worst = max(worst, err)
    global _LAST
    now, _LAST = _LAST, time.perf_counter()
    print(f"{name}: max |sharded - single| / max |single| = {worst:.2e} ({_LAST - now:.1f} s)")


def expected_bytes(params, specs, mesh) -> int:
    """Bytes per device implied by the specs: each leaf divided by its mesh axes' size."""
    total = 0
    for x, spec in zip(jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=_is_spec)):
        names = [a for e in spec if e is not None for a in ((e,) if isinstance(e, str) else e)]
        total += x.nbytes // int(np.prod([mesh.shape[a] for a in names]))
    return total


def _is_spec(x) -> bool:
    return isinstance(x, jax.sharding.PartitionSpec)


def check_bytes(params, mesh, what: str) -> None:
    held = device_bytes(params)
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    want = expected_bytes(params, param_specs(params, mesh), mesh)
    assert len(held) == 8, held
    assert set(held.values()) == {want}, (held, want)
    ratio = max(held.values()) / (total / 8)
    print(f"{what}: {total} parameter bytes, {want} per device ({ratio:.3f} × 1/8)")
    assert ratio < 1.1, ratio  # replicated: only norm scales and [d_model] biases


class BlocksOnEmbeddings(nn.Module):
    """The decoder's blocks and final norm applied to embeddings ``[batch, seq, d_model]``.

    Same parameter paths as :class:`jaxinterp.models.Decoder` (minus ``embed``/``unembed``), so
    act-max can optimise a continuous input of the sharded decoder blocks.
    """

    cfg: DecoderConfig

    @nn.compact
    def __call__(self, x):
        pos = jnp.arange(x.shape[1], dtype=jnp.int32)
        for i in range(self.cfg.n_layers):
            x = _Block(self.cfg, name=f"blocks_{i}")(x, pos, False)
        return _norm(self.cfg, "ln_f")(x)


def main() -> int:
    if jax.device_count() != 8:
        print(f"expected 8 devices, got {jax.device_count()}", file=sys.stderr)
        return 1
    d = load_decoder(FIXTURE)
    model, variables, cfg = d.model, d.variables, d.config
    mesh = model_mesh(model=2)
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    sharded = shard_params(variables, mesh)
    check_bytes(sharded, mesh, "llama fixture")
    q = sharded["params"]["blocks_0"]["attn"]["q"]["kernel"]  # [d, head, d_head]
    assert q.addressable_shards[0].data.shape == (16, 2, 16), q.addressable_shards[0].data.shape

    rng = np.random.default_rng(0)
    batch, seq = 8, 12
    clean = jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, seq)), jnp.int32)
    corrupted = clean.at[:, :4].set(jnp.asarray(rng.integers(0, cfg.vocab_size, (batch, 4))))
    answer = jnp.asarray(rng.integers(0, cfg.vocab_size, batch), jnp.int32)
    wrong = (answer + 1) % cfg.vocab_size
    x8 = shard_leading(clean, mesh, "data")
    c8 = shard_leading(corrupted, mesh, "data")
    assert len(x8.sharding.device_set) == 8

    def both(name, f, *args, sharded_args):
        ref = jax.jit(f)(variables, *args)
        got = jax.jit(f)(sharded, *sharded_args)
        close(name, got, ref)
        return got, ref

    # capture: every layer's residual stream, per-head results, MLP hidden units
    sel = ["embed", "blocks_*", "blocks_*/attn/z", "blocks_*/mlp/hidden"]
    got, _ = both(
        "capture", lambda v, x: capture(model, v, select=sel)(x), clean, sharded_args=(x8,)
    )
    assert len(got[1]["blocks_1"].sharding.device_set) == 8

    # attention weights
    both(
        "attention_weights",
        lambda v, x: attention_weights(model, v, weights_at="blocks_*/attn/probs")(x)[1],
        clean,
        sharded_args=(x8,),
    )

    # patch sweep over (layer, head) and attribution patching over (layer, head, position)
    metric = lambda logits: iv.logit_diff(logits, answer, wrong)  # noqa: E731
    heads = iv.head_sites(cfg.n_layers, cfg.n_heads, template="blocks_{layer}/attn/z")
    _, ref_sweep = both(
        "patch_sweep",
        lambda v, c, x: iv.patch_sweep(model, v, c, x, heads, metric),
        clean,
        corrupted,
        sharded_args=(x8, c8),
    )
    # the same sweep with its sites also split over the mesh (mesh=; weights gathered inside)
    sweep8 = lambda v, c, x: iv.patch_sweep(model, v, c, x, heads, metric, mesh=mesh)  # noqa: E731
    close("patch_sweep mesh=", jax.jit(sweep8)(sharded, x8, c8), ref_sweep)
    per_pos = iv.head_position_sites(
        cfg.n_layers, cfg.n_heads, seq, template="blocks_{layer}/attn/z"
    )
    both(
        "attribution_patch",
        lambda v, c, x: iv.attribution_patch(model, v, c, x, per_pos, metric),
        clean,
        corrupted,
        sharded_args=(x8, c8),
    )

    # act-max: a continuous input of the (sharded) decoder blocks, 16 target units
    soft = BlocksOnEmbeddings(cfg)
    block_vars = {
        "params": {k: v for k, v in variables["params"].items() if k.startswith(("blocks", "ln_f"))}
    }
    block_sharded = shard_params(block_vars, mesh)
    units = jnp.arange(16)
    kw = dict(param=actmax.pixel((6, cfg.d_model)), steps=30)
    fac = lambda u: actmax.neuron("blocks_1/mlp/hidden", u, position=(5,))  # noqa: E731
    run = lambda v, u: actmax.maximize(jax.random.key(1), soft, v, fac, u, **kw)  # noqa: E731
    ref = jax.jit(run)(block_vars, units)
    got = jax.jit(run)(block_sharded, shard_leading(units, mesh, "data"))
    close("actmax.maximize values", got.values, ref.values, rtol=1e-4)
    close("actmax.maximize inputs", got.inputs, ref.inputs, rtol=1e-4)
    run8 = lambda v, u: actmax.maximize(jax.random.key(1), soft, v, fac, u, mesh=mesh, **kw)  # noqa: E731
    got = jax.jit(run8)(block_sharded, units)  # targets over 'data', weights still over 'model'
    close("actmax.maximize mesh= inputs", got.inputs, ref.inputs, rtol=1e-4)

    # probes: features of every layer (sharded batch), then a logistic fit on them
    paths = ["blocks_0", "blocks_1"]
    many = jnp.asarray(rng.integers(0, cfg.vocab_size, (96, seq)), jnp.int32)
    feats, ref_feats = both(
        "layer_features",
        lambda v, x: probes.layer_features(model, v, x, paths, pool="mean", chunk_size=32),
        many,
        sharded_args=(shard_leading(many, mesh, "data"),),
    )
    labels = (np.asarray(ref_feats)[0, :, 0] > np.median(np.asarray(ref_feats)[0, :, 0]))[None]
    labels = jnp.asarray(labels, jnp.int32)
    fit = jax.jit(lambda f, y: probes.fit_logistic(f, y, num_classes=2, C=0.1))
    ref_probe, ref_info = fit(ref_feats, labels)
    probe, info = fit(feats, labels)
    close("fit_logistic loss", info.loss, ref_info.loss)
    close("fit_logistic weight", probe.weight, ref_probe.weight, rtol=1e-3)

    check_nnx(mesh)
    print("ok")
    return 0


def check_nnx(mesh) -> None:
    """An nnx model's state, sharded by the FSDP fallback: bytes per device and capture."""

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.fc1 = nnx.Linear(64, 256, rngs=rngs)
            self.fc2 = nnx.Linear(256, 64, rngs=rngs)

        def __call__(self, x):
            return self.fc2(nnx.relu(self.fc1(x)))

    m = MLP(nnx.Rngs(0))
    graphdef, state = nnx.split(m)
    sharded = shard_params(state, mesh)
    check_bytes(sharded, mesh, "nnx MLP")
    x = jax.random.normal(jax.random.key(2), (16, 64))

    def f(state, x):
        return capture(nnx.merge(graphdef, state), select="fc1")(x)

    close("nnx capture", jax.jit(f)(sharded, shard_leading(x, mesh, "data")), jax.jit(f)(state, x))


if __name__ == "__main__":
    sys.exit(main())
