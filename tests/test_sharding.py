"""Multi-device checks, all in ONE subprocess (the fake device count is fixed at jax start).

Every ``tests/sharded/check_*.py`` script runs an analysis on one device and on an 8-device
mesh and asserts equal results. ``tests/sharded/run_all.py`` runs all of them in one process
with ``--xla_force_host_platform_device_count=8`` (appended to the caller's ``XLA_FLAGS``, so
an ``--xla_cpu_max_isa`` run covers them too); each script is still reported as its own test.
A new ``check_*.py`` is picked up by the glob, here and in the runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.sharding import chunked, data_mesh, shard_batched

SHARDED = Path(__file__).parent / "sharded"
SCRIPTS = sorted(p.stem for p in SHARDED.glob("check_*.py"))


@pytest.fixture(scope="module")
def sharded_results(tmp_path_factory):
    """Runs every check script once, in one 8-device subprocess: ``{name: outcome}``.

    The caller's ``XLA_FLAGS`` pass through (the runner appends the device count).
    """
    out = tmp_path_factory.mktemp("sharded") / "results.json"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, str(SHARDED / "run_all.py"), "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if not out.exists():  # the runner itself failed (before or outside any script)
        pytest.fail(
            f"run_all.py exited {proc.returncode}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )
    results = json.loads(out.read_text())
    assert sorted(results) == SCRIPTS  # the runner finds every script by the same glob
    return results


# Under pytest-xdist, ``--dist loadfile`` (pyproject.toml) keeps this file on one worker, so
# the module fixture starts the subprocess once.
@pytest.mark.parametrize("script", SCRIPTS)
def test_sharded_equals_single_device(script, sharded_results):
    result = sharded_results[script]
    assert result["ok"], result["output"]


def test_one_device_mesh_and_chunked_in_process():
    import jax
    import jax.numpy as jnp

    x = jnp.arange(30.0).reshape(10, 3)
    f = jax.vmap(lambda r: jnp.cumsum(r) * 2.0)
    np.testing.assert_allclose(jax.jit(shard_batched(f, data_mesh()))(x), f(x))
    np.testing.assert_allclose(jax.jit(chunked(lambda r: jnp.cumsum(r) * 2.0, 3))(x), f(x))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(lambda r: r, 0)


def test_stream_reduce_equals_full_batch(mlp, digits):
    import jax.numpy as jnp

    from jaxinterp.capture import capture
    from jaxinterp.sharding import iter_chunks, stream_reduce

    x = digits.test.x.reshape(len(digits.test.x), -1)  # 450 rows, not a multiple of 64
    f = capture(mlp.model, mlp.variables, select="act_1")

    def step(state, chunk, valid):
        acts = f(chunk)[1]["act_1"]
        total, count, peak = state
        acts_valid = acts * valid[:, None]
        peak = jnp.maximum(peak, jnp.where(valid[:, None], acts, -jnp.inf).max(0))
        return total + acts_valid.sum(0), count + valid.sum(), peak

    init = (jnp.zeros(128), jnp.zeros((), jnp.int32), jnp.full(128, -jnp.inf))
    total, count, peak = stream_reduce(step, init, iter_chunks(x, 64), chunk_size=64)
    full = f(jnp.asarray(x))[1]["act_1"]
    assert int(count) == 450
    np.testing.assert_allclose(total / count, full.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(peak, full.max(0), rtol=1e-6)


def test_stream_errors():
    from jaxinterp.sharding import iter_chunks, stream_reduce

    with pytest.raises(ValueError, match="leading lengths differ"):
        list(iter_chunks((np.zeros(3), np.zeros(4)), 2))
    with pytest.raises(ValueError, match="more than chunk_size=2"):
        stream_reduce(lambda s, c, v: s, 0.0, [np.zeros(3)], chunk_size=2)


# --- weight placement by path rules (an AbstractMesh plans 4 × 2 devices in this process) ---


def _mesh42():
    from jax.sharding import AbstractMesh

    return AbstractMesh((4, 2), ("data", "model"))


def test_decoder_rules_on_llama_paths():
    from jax.sharding import PartitionSpec as P

    from jaxinterp.models import Decoder, DecoderConfig
    from jaxinterp.sharding import param_specs

    cfg = DecoderConfig(n_layers=1, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=96, qkv_bias=True)
    shapes = jax_eval_init(Decoder(cfg))
    specs = param_specs(shapes, _mesh42())["params"]
    attn, mlp = specs["blocks_0"]["attn"], specs["blocks_0"]["mlp"]
    assert attn["q"]["kernel"] == P("data", "model", None)
    assert attn["k"]["bias"] == P("model", None)
    assert attn["o"]["kernel"] == P("model", None, "data")
    assert mlp["gate"]["kernel"] == P("data", "model") and mlp["up"]["kernel"] == P("data", "model")
    assert mlp["fc_out"]["kernel"] == P("model", "data")
    assert specs["embed"]["tok"]["embedding"] == P(None, ("data", "model"))
    assert specs["unembed"]["kernel"] == P(("data", "model"), None)
    assert specs["blocks_0"]["ln_1"]["scale"] == P()  # 64 elements: replicated by the fallback
    # a mesh without 'model': the default rules keep only their 'data' part (pure FSDP)
    from jax.sharding import AbstractMesh

    only_data = param_specs(shapes, AbstractMesh((8,), ("data",)))["params"]
    assert only_data["blocks_0"]["attn"]["q"]["kernel"] == P("data", None, None)
    assert only_data["embed"]["tok"]["embedding"] == P(None, "data")
    # the stacked layout: the same specs behind an unsharded [layer] axis
    stacked = param_specs(jax_eval_init(Decoder(cfg, scan_layers=True)), _mesh42())["params"]
    blocks = stacked["blocks"]
    assert blocks["attn"]["q"]["kernel"] == P(None, "data", "model", None)
    assert blocks["attn"]["k"]["bias"] == P(None, "model", None)
    assert blocks["attn"]["o"]["kernel"] == P(None, "model", None, "data")
    assert blocks["mlp"]["gate"]["kernel"] == P(None, "data", "model")
    assert blocks["mlp"]["fc_out"]["kernel"] == P(None, "model", "data")
    assert stacked["embed"]["tok"]["embedding"] == P(None, ("data", "model"))


def jax_eval_init(model):
    import jax
    import jax.numpy as jnp

    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))


def test_fallback_fsdp_replicate_and_user_rules():
    import jax
    from jax.sharding import PartitionSpec as P

    from jaxinterp.sharding import param_specs

    s = lambda *shape: jax.ShapeDtypeStruct(shape, "float32")  # noqa: E731
    params = {"big": s(6, 4096), "odd": s(3, 1002), "small": s(8, 8), "vec": s(2048)}
    got = param_specs(params, _mesh42())
    assert got["big"] == P(None, ("data", "model"))  # largest axis divisible by all 8
    assert got["odd"] == P(None, "model")  # 1002 = 2 · 501: only the 2-way axis divides it
    assert got["small"] == P()  # fewer than min_size elements
    assert got["vec"] == P(("data", "model"))
    assert param_specs(params, _mesh42(), fallback="replicate")["big"] == P()
    rules = [(r"^big$", P("model", "data")), (r"small", P(None, "data"))]
    got = param_specs(params, _mesh42(), rules, min_size=0)
    assert got["big"] == P("model", "data") and got["small"] == P(None, "data")
    assert got["odd"] == P(None, "model")  # unmatched: fallback


def test_shard_params_linen_nnx_and_under_jit():
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from jaxinterp.capture import capture
    from jaxinterp.models import Decoder, DecoderConfig
    from jaxinterp.sharding import device_bytes, model_mesh, param_specs, shard_params

    mesh = model_mesh()
    model = Decoder(DecoderConfig(n_layers=1))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    placed = shard_params(variables, mesh)
    specs = param_specs(variables, mesh)
    for x, spec in zip(jax.tree.leaves(placed), jax.tree.leaves(specs, is_leaf=_is_spec)):
        assert x.sharding.spec == spec and x.sharding.mesh == mesh
    total = sum(x.nbytes for x in jax.tree.leaves(variables))
    n = mesh.devices.size
    want = 0  # each leaf: its bytes / (devices it is split over) on each of the n devices
    for x, spec in zip(jax.tree.leaves(variables), jax.tree.leaves(specs, is_leaf=_is_spec)):
        axes = [a for e in spec if e is not None for a in ((e,) if isinstance(e, str) else e)]
        want += n * x.nbytes // int(np.prod([mesh.shape[a] for a in axes]))
    assert sum(device_bytes(placed).values()) == want
    if n == 1:
        assert want == total
    ids = jnp.array([[1, 2, 3, 4]])
    f = jax.jit(lambda v, x: capture(model, v, select="blocks_0")(x))
    if n == 1:  # the same program
        np.testing.assert_array_equal(f(placed, ids)[0], f(variables, ids)[0])
    np.testing.assert_allclose(f(placed, ids)[0], model.apply(variables, ids), rtol=1e-5, atol=1e-6)
    # under jit the leaves are traced: a sharding constraint, same values
    g = jax.jit(lambda v: shard_params(v, mesh))
    chex_equal = jax.tree.map(lambda a, b: np.array_equal(a, b), g(variables), variables)
    assert all(jax.tree.leaves(chex_equal))
    # nnx: the state of a module
    lin = nnx.Linear(4, 8, rngs=nnx.Rngs(0))
    state = shard_params(nnx.state(lin), mesh)
    assert {p for p, _ in nnx.to_flat_state(state)} == {("bias",), ("kernel",)}
    nnx.update(lin, state)
    np.testing.assert_allclose(
        lin(jnp.ones((2, 4))), jnp.ones((2, 4)) @ lin.kernel.value + lin.bias.value
    )


def _is_spec(x):
    from jax.sharding import PartitionSpec

    return isinstance(x, PartitionSpec)


def _bad_rows():
    from jax.sharding import PartitionSpec as P

    return [
        ("mesh", dict(mesh="not a mesh"), TypeError),
        ("rules", dict(rules="w"), TypeError),
        ("rules", dict(rules=[("w",)]), TypeError),
        ("rules", dict(rules=[("w", ("data",))]), TypeError),
        ("rules", dict(rules=[("(", P())]), ValueError),
        ("rules", dict(rules=[("w", P(None, None, "data"))]), ValueError),  # 3 axes for 2-D
        ("rules", dict(rules=[("w", P("nope"))]), ValueError),
        ("rules", dict(rules=[("w", P("data", "data"))]), ValueError),
        ("rules", dict(rules=[], fallback="error"), ValueError),
        ("params", dict(rules=[("w", P("model", "data"))]), ValueError),  # 6 % 2 ok, 1002 % 4
        ("fallback", dict(fallback="shard"), ValueError),
        ("min_size", dict(min_size=-1), ValueError),
        # issue 20: a rule with a typo placed nothing, silently
        ("rules: rule 0 .'W\\$'. matches no path", dict(rules=[("W$", P())]), ValueError),
        (
            "rules: rule 1 .* only matches paths an earlier rule took",
            dict(rules=[("w", P()), ("^w$", P("data"))]),
            ValueError,
        ),
        ("unmatched", dict(unmatched="skip"), ValueError),
    ]


@pytest.mark.parametrize("name,kwargs,exc", _bad_rows())
def test_param_specs_bad_inputs(name, kwargs, exc):
    import jax

    from jaxinterp.sharding import param_specs

    params = {"w": jax.ShapeDtypeStruct((6, 1002), "float32")}
    kwargs = {"mesh": _mesh42(), **kwargs}
    with pytest.raises(exc, match=f"^{name}"):
        param_specs(params, **kwargs)


def test_unmatched_rules_warn_or_pass_when_asked():
    import jax
    from jax.sharding import PartitionSpec as P

    from jaxinterp.sharding import param_specs

    params = {"w": jax.ShapeDtypeStruct((6, 1002), "float32")}
    rules = [("w$", P("model")), ("mlp/gate", P("data"))]  # the second is for another model
    with pytest.warns(UserWarning, match=r"^rules: rule 1 \('mlp/gate'\) matches no path"):
        got = param_specs(params, _mesh42(), rules, unmatched="warn")
    assert got["w"] == P("model")
    assert param_specs(params, _mesh42(), rules, unmatched="ignore")["w"] == P("model")


def test_model_mesh_leaving_devices_unused_warns():
    import jax

    from jaxinterp.sharding import model_mesh

    two = jax.devices()[:1] * 2  # two entries, one mesh slot: one is left unused
    with pytest.warns(UserWarning, match="^data: a mesh of data × model = 1 × 1 devices leaves 1"):
        mesh = model_mesh(model=1, data=1, devices=two)
    assert mesh.devices.size == 1


def test_indivisible_rule_names_path_shape_and_axis():
    import jax
    from jax.sharding import PartitionSpec as P

    from jaxinterp.sharding import param_specs

    params = {"params": {"attn": {"k": {"kernel": jax.ShapeDtypeStruct((64, 2, 16), "f4")}}}}
    rules = [(r"attn/k/kernel$", P(None, ("data", "model")))]
    msg = r"^params: 'params/attn/k/kernel' of shape \(64, 2, 16\): axis 1 \(size 2\) is not "
    msg += r"divisible by mesh axis \('data', 'model'\) of size 8"
    with pytest.raises(ValueError, match=msg):
        param_specs(params, _mesh42(), rules)
    with pytest.raises(TypeError, match="^mesh: expected a jax.sharding.Mesh"):
        from jaxinterp.sharding import shard_params

        shard_params({"w": np.zeros(3)}, _mesh42())
    with pytest.raises(ValueError, match="^model: expected a divisor"):
        from jaxinterp.sharding import model_mesh

        model_mesh(model=3, devices=[object()] * 8)
