"""8 fake CPU devices: probes with the layer axis split over a mesh equal the 1-device fit."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxinterp import probes  # noqa: E402
from jaxinterp.sharding import data_mesh  # noqa: E402


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    rng = np.random.default_rng(0)
    layers, n, d = 6, 300, 12  # 6 layers padded to 8 devices
    z = rng.normal(size=(n, 4))
    feats = np.stack([z @ rng.normal(size=(4, d)) + rng.normal(size=(n, d)) for _ in range(layers)])
    labels = np.stack([z[:, 0] > 0, np.argmax(z[:, 1:4], 1)]).astype(np.int32)
    x, y = jnp.asarray(feats, jnp.float32), jnp.asarray(labels)
    c = jnp.linspace(0.1, 2.0, layers)

    ref, ref_info = probes.fit_logistic(x, y, C=c, num_classes=3)
    mesh = data_mesh("layer")
    got, info = probes.fit_logistic(x, y, C=c, num_classes=3, mesh=mesh)
    np.testing.assert_allclose(info.loss, ref_info.loss, rtol=1e-5)
    np.testing.assert_allclose(got.weight, ref.weight, rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(got.classes, ref.classes)

    targets = jnp.asarray(np.stack([feats[0] @ rng.normal(size=d), z[:, 1]]), jnp.float32)
    rref = probes.fit_ridge(x, targets, alpha=2.0)
    rgot = probes.fit_ridge(x, targets, alpha=2.0, mesh=mesh)
    np.testing.assert_allclose(rgot.weight, rref.weight, rtol=1e-4, atol=1e-5)
    print("ok")


if __name__ == "__main__":
    main()
