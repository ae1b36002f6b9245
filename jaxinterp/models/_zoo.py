"""Trained reference models, trained here in seconds and cached on disk.

Each builder trains deterministically from a fixed seed (the whole loop is one ``lax.scan``
under ``jit``), evaluates on held-out data and caches the variables in
``$JAXINTERP_CACHE`` (default ``~/.cache/jaxinterp``), keyed by a hash of the configuration.
Together they train in well under two minutes on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from jaxinterp._checks import check_int
from jaxinterp.models._tasks import load_digits, offset_batch
from jaxinterp.models._transformer import Transformer, TransformerConfig
from jaxinterp.models._vision import CNN, MLP


class Trained(NamedTuple):
    """A trained linen model: ``model.apply(variables, x)`` runs it; ``metrics`` are held-out."""

    model: nn.Module
    variables: dict
    metrics: dict[str, float]


def cache_dir() -> Path:
    """Where trained weights are cached (``$JAXINTERP_CACHE`` or ``~/.cache/jaxinterp``)."""
    return Path(os.environ.get("JAXINTERP_CACHE", Path.home() / ".cache" / "jaxinterp"))


def _cached(
    name: str, config: dict, init: Callable[[], Any], train: Callable[[], tuple[Any, dict]]
):
    digest = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{digest}.msgpack"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        # The abstract structure is enough to restore: no initialisation is run on a cache hit.
        template = jax.eval_shape(init)
        restored = serialization.from_bytes(template, path.read_bytes())
        variables = jax.tree.map(jnp.asarray, restored)
        return variables, json.loads(meta.read_text())
    variables, metrics = train()
    variables = jax.device_get(variables)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # one per process: xdist workers
        tmp.write_bytes(serialization.to_bytes(variables))
        os.replace(tmp, path)
        meta.write_text(json.dumps(metrics))
    except OSError:
        pass  # a read-only home only costs a retrain next time
    return variables, metrics


def _fit(loss_fn, params, batches, steps: int, lr: float, key: jax.Array):
    """Adam on ``loss_fn(params, batch)``; ``batches(key) -> batch``; one scan under jit."""
    opt = optax.adam(lr)

    @jax.jit
    def run(params, key):
        def step(carry, k):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, batches(k))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(
            step, (params, opt.init(params)), jax.random.split(key, steps)
        )
        return params, losses

    return run(params, key)


def _train_digits(model: nn.Module, name: str, steps: int, seed: int) -> Trained:
    steps = check_int(steps, "steps", lo=1)
    seed = check_int(seed, "seed", lo=0)
    data = load_digits()
    xtr, ytr = jnp.asarray(data.train.x), jnp.asarray(data.train.y)
    key = jax.random.key(seed)
    init = lambda: model.init(key, xtr[:1])

    def train():
        def loss_fn(params, batch):
            x, y = batch
            logits = model.apply({"params": params}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        def batches(k):
            idx = jax.random.randint(k, (128,), 0, xtr.shape[0])
            return xtr[idx], ytr[idx]

        params, _ = _fit(
            loss_fn, init()["params"], batches, steps, 3e-3, jax.random.fold_in(key, 1)
        )
        variables = {"params": params}
        pred = model.apply(variables, jnp.asarray(data.test.x)).argmax(-1)
        return variables, {"test_accuracy": float((np.asarray(pred) == data.test.y).mean())}

    config = {"model": repr(model), "steps": steps, "seed": seed}
    variables, metrics = _cached(name, config, init, train)
    return Trained(model, variables, metrics)


def digits_mlp(steps: int = 1500, seed: int = 0) -> Trained:
    """An :class:`MLP` 64-128-128-10 trained on digits (held-out accuracy ≈ 0.97).

    Args:
      steps: Adam steps (batch 128), ``>= 1``.
      seed: seed of the initialisation and the batches, ``>= 0``.

    Returns:
      A :class:`Trained` (loaded from the cache when this configuration was trained before).

    Raises:
      TypeError, ValueError: ``steps`` or ``seed`` is not an int in range.

    >>> digits_mlp(steps=0)
    Traceback (most recent call last):
    ...
    ValueError: steps: expected an int >= 1, got 0
    """
    return _train_digits(MLP(), "digits_mlp", steps, seed)


def digits_cnn(steps: int = 400, seed: int = 0) -> Trained:
    """A :class:`CNN` trained on digits (held-out accuracy ≈ 0.98).

    Args:
      steps: Adam steps (batch 128), ``>= 1``.
      seed: seed of the initialisation and the batches, ``>= 0``.

    Returns:
      A :class:`Trained` (loaded from the cache when this configuration was trained before).

    >>> digits_cnn(steps=-5)
    Traceback (most recent call last):
    ...
    ValueError: steps: expected an int >= 1, got -5
    """
    return _train_digits(CNN(), "digits_cnn", steps, seed)


def offset_transformer(
    offset: int = 3, cfg: TransformerConfig = TransformerConfig(), steps: int = 1500, seed: int = 0
) -> Trained:
    """A :class:`Transformer` trained on the offset-``k`` copy task.

    ``metrics`` holds the accuracy on fresh sequences at the positions the task determines, and
    ``offset``. The trained model's mechanism is an attention head in some layer whose mass lies
    on the key ``offset`` positions back.

    Args:
      offset: how far back the copied token lies, ``0 <= offset < cfg.seq_len``.
      cfg: the model configuration.
      steps: Adam steps (batch 64), ``>= 1``.
      seed: seed of the initialisation and the batches, ``>= 0``.

    Returns:
      A :class:`Trained` with ``metrics = {"task_accuracy", "offset"}``.

    >>> offset_transformer(offset=16)
    Traceback (most recent call last):
    ...
    ValueError: offset: expected 0 <= offset < seq_len=16, got 16
    """
    if not isinstance(cfg, TransformerConfig):
        raise TypeError(f"cfg: expected a TransformerConfig, got {type(cfg).__name__}")
    offset = check_int(offset, "offset")
    if not 0 <= offset < cfg.seq_len:
        raise ValueError(f"offset: expected 0 <= offset < seq_len={cfg.seq_len}, got {offset}")
    steps = check_int(steps, "steps", lo=1)
    seed = check_int(seed, "seed", lo=0)
    model = Transformer(cfg)
    key = jax.random.key(seed)
    tokens0 = jnp.zeros((1, cfg.seq_len), jnp.int32)
    init = lambda: model.init(key, tokens0)

    def sample(k, batch=64):
        return offset_batch(k, batch, cfg.seq_len, cfg.vocab, offset)

    def train():
        def loss_fn(params, b):
            logits = model.apply({"params": params}, b.tokens)
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, b.targets)
            return (ce * b.loss_mask).sum() / b.loss_mask.sum()

        params, _ = _fit(loss_fn, init()["params"], sample, steps, 3e-3, jax.random.fold_in(key, 1))
        variables = {"params": params}
        b = sample(jax.random.key(10_000 + seed), 512)
        pred = model.apply(variables, b.tokens).argmax(-1)
        acc = float(((pred == b.targets) & b.loss_mask).sum() / b.loss_mask.sum())
        return variables, {"task_accuracy": acc, "offset": offset}

    config = {"cfg": repr(cfg), "offset": offset, "steps": steps, "seed": seed}
    variables, metrics = _cached("offset_transformer", config, init, train)
    return Trained(model, variables, metrics)
