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
