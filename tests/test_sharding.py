"""Multi-device checks, each in its own process (the fake device count is fixed at jax start).

Every ``tests/sharded/check_*.py`` script sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before importing jax, runs an analysis
on one device and on an 8-device mesh, and asserts equal results.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxinterp.sharding import chunked, data_mesh, shard_batched

SCRIPTS = sorted((Path(__file__).parent / "sharded").glob("check_*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_sharded_equals_single_device(script):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_one_device_mesh_and_chunked_in_process():
    import jax
    import jax.numpy as jnp

    x = jnp.arange(30.0).reshape(10, 3)
    f = jax.vmap(lambda r: jnp.cumsum(r) * 2.0)
    np.testing.assert_allclose(jax.jit(shard_batched(f, data_mesh()))(x), f(x))
    np.testing.assert_allclose(jax.jit(chunked(lambda r: jnp.cumsum(r) * 2.0, 3))(x), f(x))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked(lambda r: r, 0)
