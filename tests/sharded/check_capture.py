"""8 fake CPU devices: capture over a data-sharded batch equals the single-device result."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import chex  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxinterp import models  # noqa: E402
from jaxinterp.capture import capture  # noqa: E402
from jaxinterp.sharding import chunked, data_mesh, shard_batched, shard_leading  # noqa: E402


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    tf = models.offset_transformer()
    tokens = models.offset_batch(jax.random.key(0), 20, 16, 16, 3).tokens
    f = capture(tf.model, tf.variables, select=["block_0", "block_1/attn"])
    ref_out, ref = jax.jit(f)(tokens)

    mesh = data_mesh()
    out, acts = jax.jit(shard_batched(f, mesh))(tokens)  # 20 rows padded to 24, split 8 ways
    chex.assert_trees_all_equal_shapes_and_dtypes((out, acts), (ref_out, ref))
    chex.assert_trees_all_close((out, acts), (ref_out, ref), rtol=1e-5, atol=1e-5)

    # GSPMD route: put the batch on the mesh and let jit partition the same function.
    sharded = shard_leading(tokens[:16], mesh)
    out2, acts2 = jax.jit(f)(sharded)
    np.testing.assert_allclose(out2, ref_out[:16], rtol=1e-5, atol=1e-5)
    assert len(acts2["block_0"].sharding.device_set) == 8

    # chunked single-example core equals the batched call
    single = lambda t: jax.tree.map(lambda a: a[0], f(t[None]))
    out3, acts3 = jax.jit(chunked(single, 6))(tokens)
    np.testing.assert_allclose(acts3["block_0"], ref["block_0"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out3, ref_out, rtol=1e-5, atol=1e-5)
    print("ok")


if __name__ == "__main__":
    main()
