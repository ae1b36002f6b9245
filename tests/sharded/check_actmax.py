"""Sharded act-max: maximize over an 8-device mesh equals the single-device result.

Run standalone (the fake device count must be set before jax is imported):
``python tests/sharded/check_actmax.py`` prints "ok" or exits non-zero.
"""

from __future__ import annotations

import os
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import chex  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jaxinterp import actmax, models  # noqa: E402
from jaxinterp.sharding import data_mesh  # noqa: E402


def main() -> int:
    if jax.device_count() != 8:
        print(f"expected 8 devices, got {jax.device_count()}", file=sys.stderr)
        return 1
    model = models.MLP(hidden=(32, 32))
    variables = models.init_vision(model, jax.random.key(0), (16,))
    units = jnp.arange(13)  # not a multiple of 8: exercises padding
    kw = dict(param=actmax.pixel((16,)), steps=40)
    fac = lambda u: actmax.neuron("act_1", u)
    single = actmax.maximize(jax.random.key(1), model, variables, fac, units, **kw)
    sharded = actmax.maximize(
        jax.random.key(1), model, variables, fac, units, mesh=data_mesh(), chunk_size=1, **kw
    )
    # every field of the result (inputs, traces, values, nonfinite_step), shapes and dtypes too
    chex.assert_trees_all_equal_shapes_and_dtypes(sharded, single)
    chex.assert_trees_all_close(sharded, single, rtol=1e-5, atol=1e-6)
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
