"""8 fake CPU devices: unbatched outputs of shard_batched, streamed attention statistics.

Standalone: ``python tests/sharded/check_streams.py`` sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (unless the caller already set a device
count), runs every check, prints ``ok`` and exits 0; any failure exits nonzero.

* ``shard_batched`` returns an output without the batch axis once (``[1, 16, 64]``, not
  ``[8, 16, 64]`` tiled per device), on auto, explicit and 2-D meshes, with and without
  padding, under ``jit`` and eagerly; an output that reduces over the batch is refused.
* ``attention_stats`` over 8 devices equals the single-device value and a numpy mean, for an
  in-memory ``[tokens, pad_mask]`` list and for a generator of uneven chunks.
"""

import os
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType  # noqa: E402

from jaxinterp import models  # noqa: E402
from jaxinterp.attention import attention_stats, attention_weights, stack_layers  # noqa: E402
from jaxinterp.capture import capture  # noqa: E402
from jaxinterp.sharding import data_mesh, iter_chunks, shard_batched, stream_reduce  # noqa: E402


def check_unbatched_outputs() -> None:
    assert jax.device_count() == 8, jax.devices()
    table = jax.random.normal(jax.random.key(0), (1, 16, 64))
    w = jax.random.normal(jax.random.key(1), (5, 7))

    def f(x, w):  # per-item y, an output without the batch axis, a per-item scalar
        return {"y": jnp.tanh(x @ w.T), "pos": table * 2.0, "n": jnp.sum(x**2, axis=1)}

    meshes = [
        data_mesh(),
        jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,)),
        jax.make_mesh((2, 4), ("data", "target"), axis_types=(AxisType.Auto,) * 2),
    ]
    for n in (8, 13):  # exactly one item per device (the reported case), and padded
        x = jax.random.normal(jax.random.key(n), (n, 7))
        ref = f(x, w)
        for mesh in meshes:
            for run in (shard_batched(f, mesh, batch_argnums=0), jax.jit(shard_batched(f, mesh))):
                got = run(x, w)
                assert got["pos"].shape == (1, 16, 64), (n, mesh.shape, got["pos"].shape)
                assert got["y"].shape == (n, 5) and got["n"].shape == (n,)
                for k in ref:
                    np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5)

    # an output that sums over the batch would be a per-device partial sum: refused
    try:
        shard_batched(lambda x: x.sum(0), data_mesh())(jnp.ones((16, 3)))
    except ValueError as e:
        assert str(e).startswith("fn: output"), e
    else:
        raise AssertionError("a reduction over the batch was accepted")

    # capture of a real model: the [1, seq, d_model] position embedding comes back once
    cfg = models.TransformerConfig()
    tf = models.Transformer(cfg)
    variables = tf.init(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))
    toks = models.offset_batch(jax.random.key(2), 8, 16, 16, 3).tokens
    cap = capture(tf, variables, select=["pos_embed", "block_0"])
    out1, acts1 = cap(toks)
    out8, acts8 = jax.jit(shard_batched(cap, data_mesh()))(toks)
    assert acts8["pos_embed"].shape == acts1["pos_embed"].shape == (1, 16, 64), acts8[
        "pos_embed"
    ].shape
    np.testing.assert_allclose(acts8["pos_embed"], acts1["pos_embed"], rtol=1e-6)
    np.testing.assert_allclose(acts8["block_0"], acts1["block_0"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out8, out1, rtol=1e-4, atol=1e-5)


def check_attention_stats() -> None:
    cfg = models.TransformerConfig(n_layers=2, n_heads=4)
    tf = models.Transformer(cfg)
    variables = tf.init(jax.random.key(3), jnp.zeros((1, 16), jnp.int32))
    n = 37
    toks = np.asarray(models.offset_batch(jax.random.key(4), n, 16, 16, 3).tokens)
    lengths = np.random.default_rng(0).integers(4, 17, size=n)
    pad = np.arange(16)[None, :] < lengths[:, None]

    def stat(w, ids, mask):  # attention mass on real keys from the last real query
        last = mask.sum() - 1
        return {"last": w[:, :, last, :], "len": mask.sum()}

    _, maps = attention_weights(tf, variables)(jnp.asarray(toks), jnp.asarray(pad))
    w = np.asarray(stack_layers(maps))  # [layer, batch, head, q, k]
    ref_last = np.stack([w[:, i, :, lengths[i] - 1, :] for i in range(n)]).mean(0)
    mesh = data_mesh()
    one = attention_stats(tf, variables, stat, [toks, pad], chunk_size=16)
    eight = attention_stats(tf, variables, stat, [toks, pad], chunk_size=16, mesh=mesh)
    gen = ((toks[i : i + 5], pad[i : i + 5]) for i in range(0, n, 5))
    streamed = attention_stats(tf, variables, stat, gen, chunk_size=8, mesh=mesh)
    for got in (one, eight, streamed):
        np.testing.assert_allclose(got["last"], ref_last, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got["len"], lengths.mean(), rtol=1e-6)


def check_stream_reduce() -> None:
    x = np.random.default_rng(1).normal(size=(100, 3)).astype(np.float32)
    step = lambda s, c, v: s + (c * v[:, None]).sum(0)
    eight = stream_reduce(
        step, jnp.zeros(3), lambda: iter_chunks(x, 16), chunk_size=16, mesh=data_mesh()
    )
    np.testing.assert_allclose(eight, x.sum(0), rtol=1e-5, atol=1e-5)
    try:
        stream_reduce(step, jnp.zeros(3), iter_chunks(x, 16), chunk_size=12, mesh=data_mesh())
    except ValueError as e:
        assert str(e).startswith("chunk_size: must be a multiple of the mesh axis size 8"), e
    else:
        raise AssertionError("chunk_size 12 accepted on 8 devices")


def main() -> int:
    check_unbatched_outputs()
    check_attention_stats()
    check_stream_reduce()
    print("check_streams: 8 devices ok")
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
