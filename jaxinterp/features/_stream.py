"""Activations streamed from a model into a host-side shuffling buffer; the training loop.

:func:`activation_chunks` runs the model on batches of inputs (one compiled
:func:`jaxinterp.interventions.capture_sites` call, weights passed as an argument) and yields
``[tokens, n_sites, d]`` NumPy chunks, every leading axis (batch, positions) flattened into
tokens. :class:`ShuffleBuffer` is a NumPy buffer on the host: it fills to ``capacity`` tokens,
shuffles, emits half and keeps the other half to mix with what comes next (tokens of one
sequence are spread over many batches). :func:`train` cuts the buffer's output into blocks of
``steps_per_call × batch_size`` tokens and runs :func:`train_steps` on each (one compiled call
per block), printing live metrics and writing checkpoints. Tokens that do not fill a last
block are dropped (counted in the returned ``tokens_dropped``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_int
from jaxinterp.features._arch import Params, Setting
from jaxinterp.features._shard import shard_batch
from jaxinterp.features._train import StepMetrics, TrainConfig, TrainState, init_train, train_steps
from jaxinterp.interventions import capture_sites


def activation_chunks(
    model: Any,
    variables: Any,
    sites: Sequence[str],
    inputs: Iterable[Any],
    *,
    keep: Any = None,
) -> Iterator[np.ndarray]:
    """Yields the activations of ``sites`` on each input batch, as ``[tokens, n_sites, d]``.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``).
      variables: linen variables, or ``None``.
      sites: sites of equal trailing width ``d`` (e.g. ``"block_*"`` expanded, or
        ``["block_0", "block_1"]``), in the order of the site axis.
      inputs: an iterable of model inputs (e.g. ``tokens: [batch, seq]`` arrays).
      keep: optional function ``inputs -> bool mask`` of the leading axes (e.g. drop padding
        or the first position); default keep every token.

    Yields:
      ``float32 [tokens, n_sites, d]`` NumPy arrays (one per input batch).

    >>> import flax.linen as nn
    >>> model = nn.Sequential([nn.Dense(3), nn.relu, nn.Dense(3)])
    >>> v = model.init(jax.random.key(0), jnp.ones((1, 2, 4)))
    >>> chunk = next(activation_chunks(model, v, ["layers_0", "layers_2"], [jnp.ones((5, 2, 4))]))
    >>> chunk.shape
    (10, 2, 3)
    """
    if isinstance(sites, str):
        sites = [sites]
    sites = list(sites)
    if not sites:
        raise ValueError("sites: expected at least one site, got []")

    @jax.jit
    def run(v, x):
        _, acts = capture_sites(model, v, sites)(x)
        return [acts[s] for s in sites]

    for x in inputs:
        acts = run(variables, x)
        shapes = {tuple(a.shape) for a in acts}
        if len(shapes) != 1:
            raise ValueError(
                f"sites: expected activations of one shape, got "
                f"{dict(zip(sites, [tuple(a.shape) for a in acts]))}"
            )
        arr = np.stack([np.asarray(a, np.float32) for a in acts], axis=-2)
        arr = arr.reshape(-1, len(sites), arr.shape[-1])
        if keep is not None:
            mask = np.asarray(keep(x))
            if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
                raise TypeError(f"keep: expected a bool (or 0/1) mask, got dtype {mask.dtype}")
            mask = mask.astype(bool).reshape(-1)
            if mask.shape[0] != arr.shape[0]:
                raise ValueError(
                    f"keep: expected a mask of {arr.shape[0]} tokens, got {mask.shape[0]}"
                )
            arr = arr[mask]
        yield arr


class ShuffleBuffer:
    """A host-side (NumPy) mixing buffer of activations.

    Fills to ``capacity`` rows, then each :meth:`add` that overflows shuffles the buffer and
    emits the first half. :meth:`flush` shuffles and emits the rest.

    Args:
      capacity: rows held before emitting (>= 2).
      seed: seed of the NumPy generator (same seed, same order).

    >>> buf = ShuffleBuffer(4, seed=0)
    >>> [len(out) for out in buf.add(np.arange(6)[:, None])] + [len(buf.flush())]
    [3, 3]
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        self.capacity = check_int(capacity, "capacity", lo=2)
        self._rng = np.random.default_rng(check_int(seed, "seed", lo=0))
        self._rows: list[np.ndarray] = []
        self._n = 0

    def add(self, chunk: Any) -> list[Any]:
        """Adds a chunk (array ``[n, ...]`` or a tuple of arrays with one ``n``)."""
        chunk = chunk if isinstance(chunk, tuple) else (chunk,)
        chunk = tuple(np.asarray(c) for c in chunk)
        if any(c.ndim == 0 for c in chunk) or len({c.shape[0] for c in chunk}) != 1:
            raise ValueError(
                f"chunk: expected arrays of one length, got {[c.shape for c in chunk]}"
            )
        if self._rows and [c.shape[1:] for c in chunk] != [c.shape[1:] for c in self._rows[0]]:
            raise ValueError(
                f"chunk: expected rows of shape {[c.shape[1:] for c in self._rows[0]]} (as the "
                f"chunks before), got {[c.shape[1:] for c in chunk]}"
            )
        self._rows.append(chunk)
        self._n += chunk[0].shape[0]
        out = []
        while self._n >= self.capacity:
            data = self._merge()
            half = self._n // 2
            out.append(self._unwrap(tuple(d[:half] for d in data)))
            self._rows = [tuple(d[half:] for d in data)]
            self._n -= half
        return out

    def _merge(self) -> tuple[np.ndarray, ...]:
        data = tuple(np.concatenate(parts) for parts in zip(*self._rows))
        perm = self._rng.permutation(data[0].shape[0])
        return tuple(d[perm] for d in data)

    @staticmethod
    def _unwrap(t: tuple) -> Any:
        return t[0] if len(t) == 1 else t

    def flush(self) -> Any:
        """Shuffles and returns everything held (``None`` when empty), emptying the buffer."""
        if not self._n:
            return None
        data = self._merge()
        self._rows, self._n = [], 0
        return self._unwrap(data)


def _format(metrics: StepMetrics) -> str:
    last = jax.tree.map(lambda a: np.asarray(a[-1]), metrics)
    return (
        f"fvu {np.round(last.fvu, 3).tolist()} l0 {np.round(last.l0, 1).tolist()} "
        f"dead {np.round(last.dead, 2).tolist()}"
    )


def save_checkpoint(path: str | Path, state: TrainState) -> Path:
    """Saves a training state (stacked params, optimizer state, counters) as one ``.npz``.

    Args:
      path: file path (``.npz`` is appended by NumPy if missing).
      state: a :class:`TrainState`.

    Returns:
      The path written.

    >>> import tempfile, os
    >>> from jaxinterp.features import init_params
    >>> st = init_train(jax.vmap(lambda k: init_params(k, 4, 8))(jax.random.split(
    ...     jax.random.key(0), 2)))
    >>> p = save_checkpoint(os.path.join(tempfile.mkdtemp(), "ck.npz"), st)
    >>> back = load_checkpoint(p)
    >>> bool(jnp.array_equal(back.params.W_dec, st.params.W_dec))
    True
    """
    if not isinstance(state, TrainState):
        raise TypeError(f"state: expected a TrainState, got {type(state).__name__}")
    path = Path(path)
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    arrays = {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_checkpoint(path: str | Path, config: TrainConfig = TrainConfig()) -> TrainState:
    """Loads a state written by :func:`save_checkpoint` (same ``config`` optimizer).

    Args:
      path: the ``.npz`` file.
      config: the training configuration (its optimizer defines the state's structure).

    Returns:
      The :class:`TrainState`, bit-identical to the one saved.
    """
    with np.load(Path(path)) as z:
        data = dict(z)
    names = [n for n in data if n.startswith(".params")]
    fields = {f: data[f".params.{f}"] for f in Params._fields if f".params.{f}" in data}
    if len(fields) != len(Params._fields):
        raise ValueError(f"path: not a features checkpoint (params keys {names})")
    params = Params(**{k: jnp.asarray(v) for k, v in fields.items()})
    template = init_train(
        params,
        config,
        latent_mask=data[".latent_mask"],
        dec_mask=data[".dec_mask"],
    )
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    out = []
    for k, v in leaves:
        name = jax.tree_util.keystr(k)
        if name not in data:
            raise ValueError(f"path: checkpoint lacks {name!r} (another optimizer config?)")
        if data[name].shape != v.shape:
            raise ValueError(f"path: {name} has shape {data[name].shape}, expected {v.shape}")
        out.append(jnp.asarray(data[name], v.dtype))
    return jax.tree_util.tree_unflatten(treedef, out)


def train(
    state: TrainState,
    settings: Setting,
    chunks: Iterable[Any],
    *,
    batch_size: int = 256,
    steps_per_call: int = 50,
    buffer_size: int = 16384,
    read: Any = None,
    write: Any = None,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    max_steps: int | None = None,
    print_every: int | None = None,
    checkpoint: str | Path | None = None,
    checkpoint_every: int = 0,
    mesh: Any = None,
    data_axis: str = "data",
) -> tuple[TrainState, dict[str, Any]]:
    """Trains a stack of dictionaries on streamed activations.

    Args:
      state: from :func:`init_train`.
      settings: stacked :class:`Setting`.
      chunks: iterable of ``[tokens, n_sites, d]`` arrays (e.g. :func:`activation_chunks`) or
        ``(inputs, targets)`` pairs (transcoders).
      batch_size: tokens per step.
      steps_per_call: steps per compiled call (one ``lax.scan``).
      buffer_size: capacity of the :class:`ShuffleBuffer` (tokens).
      read, write: site indices per dictionary, as in :func:`train_steps`.
      config: hyperparameters.
      seed: shuffling seed.
      max_steps: stop after this many steps (default: when the chunks run out).
      print_every: print metrics every this many calls to stderr (default: never).
      checkpoint: path of a ``.npz`` written every ``checkpoint_every`` calls and at the end.
      checkpoint_every: calls between checkpoints (0: only at the end).
      mesh: optional device mesh: each block's batch axis is split over ``data_axis``
        (:func:`shard_batch`); place the state first with :func:`shard_state` to split the
        latents or the stack too.
      data_axis: the mesh axis of the batch.

    Returns:
      ``(state, info)``; ``info`` holds ``steps``, ``tokens``, ``tokens_dropped``,
      ``seconds`` and ``metrics`` (the :class:`StepMetrics` of every step, NumPy
      ``[steps, dict]``).

    >>> from jaxinterp.features import init_params, topk, stack_settings
    >>> st = init_train(jax.vmap(lambda k: init_params(k, 4, 8))(jax.random.split(
    ...     jax.random.key(0), 1)))
    >>> data = [np.random.default_rng(i).normal(size=(64, 1, 4)) for i in range(4)]
    >>> st, info = train(st, stack_settings([topk(2)]), data, batch_size=16, steps_per_call=4,
    ...                  buffer_size=64, config=TrainConfig(max_k=2))
    >>> info["steps"], info["tokens"]
    (16, 256)
    """
    batch_size = check_int(batch_size, "batch_size", lo=1)
    steps_per_call = check_int(steps_per_call, "steps_per_call", lo=1)
    check_int(checkpoint_every, "checkpoint_every", lo=0)
    if max_steps is not None:
        check_int(max_steps, "max_steps", lo=1)
    block = batch_size * steps_per_call
    buf = ShuffleBuffer(buffer_size, seed)
    pending: list[Any] = []
    n_pending = 0
    steps = calls = tokens = dropped = 0
    history: list[StepMetrics] = []
    t0 = time.perf_counter()

    def run_block(data):
        nonlocal state, steps, calls, tokens
        data = data if isinstance(data, tuple) else (data,)
        xs = data[0].reshape(steps_per_call, batch_size, *data[0].shape[1:])
        ys = None if len(data) == 1 else data[1].reshape(xs.shape[:2] + data[1].shape[1:])
        xs = xs.astype(np.float32)
        if mesh is not None:
            xs = shard_batch(xs, mesh, data=data_axis)
            ys = None if ys is None else shard_batch(ys.astype(np.float32), mesh, data=data_axis)
        state, m = train_steps(state, settings, xs, ys, read=read, write=write, config=config)
        history.append(m)
        steps += steps_per_call
        calls += 1
        tokens += block
        if print_every and calls % print_every == 0:
            print(
                f"[{time.perf_counter() - t0:7.1f}s] step {steps} tokens {tokens} {_format(m)}",
                file=sys.stderr,
                flush=True,
            )
        if checkpoint is not None and checkpoint_every and calls % checkpoint_every == 0:
            save_checkpoint(checkpoint, state)

    def feed(out):
        nonlocal pending, n_pending
        out = out if isinstance(out, tuple) else (out,)
        pending.append(out)
        n_pending += out[0].shape[0]
        while n_pending >= block and not _done():
            data = tuple(np.concatenate(p) for p in zip(*pending))
            run_block(tuple(d[:block] for d in data))
            rest = tuple(d[block:] for d in data)
            pending, n_pending = [rest], rest[0].shape[0]

    def _done():
        return max_steps is not None and steps >= max_steps

    for chunk in chunks:
        if _done():
            break
        for out in buf.add(chunk):
            feed(out)
    if not _done():
        rest = buf.flush()
        if rest is not None:
            feed(rest)
    dropped = n_pending
    if steps == 0:
        raise ValueError(
            f"chunks: gave {dropped} tokens, fewer than one call's batch_size * steps_per_call "
            f"= {block}; no training step ran (pass more data or smaller sizes)"
        )
    if checkpoint is not None:
        save_checkpoint(checkpoint, state)
    metrics = (
        jax.tree.map(lambda *a: np.concatenate([np.asarray(x) for x in a]), *history)
        if (history)
        else None
    )
    info = {
        "steps": steps,
        "tokens": tokens,
        "tokens_dropped": dropped,
        "seconds": time.perf_counter() - t0,
        "metrics": metrics,
    }
    return state, info


__all__ = [
    "ShuffleBuffer",
    "activation_chunks",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
