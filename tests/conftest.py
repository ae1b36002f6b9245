"""Shared fixtures: trained reference models are built once per session (and cached on disk)."""

from __future__ import annotations

import pytest

from jaxinterp import models


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


# The multi-device scripts set XLA_FLAGS at import: they only ever run in subprocesses
# (tests/test_sharding.py), never imported into this process.
collect_ignore_glob = ["sharded/*"]
