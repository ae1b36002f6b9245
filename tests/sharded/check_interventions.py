"""8 fake CPU devices: a patch sweep with sites split over a mesh equals the 1-device sweep."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxinterp import interventions as iv  # noqa: E402
from jaxinterp import models  # noqa: E402
from jaxinterp.sharding import data_mesh  # noqa: E402


def main() -> int:
    assert len(jax.devices()) == 8, jax.devices()
    tf = models.offset_transformer()
    task = iv.offset_patching_task(jax.random.key(0), 8, tf.model.cfg, offset=3)
    mesh = data_mesh()
    grid = iv.head_position_sites(2, 4, 16)
    # 20 sites: not a multiple of 8, so the sharded call pads and unpads
    odd = iv.Sites(grid.layer[40:60], grid.index[40:60], grid.paths, grid.axes)

    def sweep(sites, mesh, chunk_size):
        f = lambda t: iv.patch_sweep(
            tf.model, tf.variables, t.clean, t.corrupted, sites, t.metric,
            mesh=mesh, chunk_size=chunk_size,
        )  # fmt: skip
        return jax.jit(f)(task)

    for sites, chunk in [(grid, None), (odd, None), (grid, 4)]:
        ref = sweep(sites, None, None)
        got = sweep(sites, mesh, chunk)
        assert got.patched.shape == (sites.layer.shape[0],), got.patched.shape
        np.testing.assert_allclose(got.patched, ref.patched, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.normalized, ref.normalized, rtol=1e-5, atol=1e-5)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
