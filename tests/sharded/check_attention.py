"""8 fake CPU devices: streamed attention statistics over a mesh equal the single-device ones."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxinterp import models  # noqa: E402
from jaxinterp.attention import (  # noqa: E402
    attention_stats,
    attention_weights,
    head_entropy,
    offset_score,
)
from jaxinterp.sharding import data_mesh, shard_batched  # noqa: E402


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    tf = models.offset_transformer()
    tokens = np.asarray(models.offset_batch(jax.random.key(0), 44, 16, 16, 3).tokens)

    def stat(w, toks):
        return {"offset3": offset_score(w, 3), "entropy": head_entropy(w)}

    mesh = data_mesh()
    ref = attention_stats(tf.model, tf.variables, stat, tokens, chunk_size=16)
    got = attention_stats(tf.model, tf.variables, stat, tokens, chunk_size=16, mesh=mesh)
    chex.assert_trees_all_close(got, ref, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(got["offset3"])) > 0.9

    # the raw weights of a sharded batch equal the single-device ones
    f = attention_weights(tf.model, tf.variables)
    _, maps = jax.jit(f)(tokens[:20])
    _, maps8 = jax.jit(shard_batched(f, mesh))(tokens[:20])
    chex.assert_trees_all_equal_shapes_and_dtypes(maps8, maps)
    chex.assert_trees_all_close(maps8, maps, rtol=1e-5, atol=1e-6)
    print("ok")


if __name__ == "__main__":
    main()
