"""8 fake CPU devices: shard_batched on auto and explicit meshes, 2-D meshes and pytrees."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

from jaxinterp.sharding import data_mesh, shard_batched  # noqa: E402


def main() -> None:
    w = jax.random.normal(jax.random.key(0), (5, 7))
    x = jax.random.normal(jax.random.key(1), (13, 7))
    f = jax.vmap(lambda x, w: {"y": jnp.tanh(w @ x), "n": jnp.sum(x**2)}, in_axes=(0, None))
    ref = f(x, w)
    meshes = [
        data_mesh(),
        jax.make_mesh((8,), ("data",)),
        jax.make_mesh((2, 4), ("data", "target"), axis_types=(AxisType.Auto,) * 2),
    ]
    for mesh in meshes:
        got = jax.jit(shard_batched(f, mesh))(x, w)
        chex.assert_trees_all_equal_shapes_and_dtypes(got, ref)
        chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-5)
    got = shard_batched(f, meshes[2], axis="target")(x, w)
    np.testing.assert_allclose(got["y"], ref["y"], rtol=1e-5, atol=1e-5)
    try:
        shard_batched(f, meshes[0], axis="nope")
    except ValueError as e:
        assert "axis: 'nope'" in str(e)
    else:
        raise AssertionError("unknown axis accepted")
    check_stream()
    print("ok")


def check_stream() -> None:
    from jaxinterp.sharding import iter_chunks, stream_reduce

    x = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    step = lambda s, c, v: s + (c * v[:, None]).sum(0)
    one = stream_reduce(step, jnp.zeros(3), iter_chunks(x, 16), chunk_size=16)
    eight = stream_reduce(step, jnp.zeros(3), iter_chunks(x, 16), chunk_size=16, mesh=data_mesh())
    np.testing.assert_allclose(one, x.sum(0), rtol=1e-5)
    np.testing.assert_allclose(eight, x.sum(0), rtol=1e-5)


if __name__ == "__main__":
    main()
