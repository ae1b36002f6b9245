"""Steering and generation: sampled or greedy continuations under any intervention.

:func:`generate` continues a prompt token by token in ONE ``lax.scan`` under ``jit`` while
``edits`` (the ``{site: edit}`` mapping of :func:`jaxinterp.interventions.intervene`) are
applied at every step. Design, chosen so that *any* edit works unchanged:

* The model runs on a fixed-length buffer ``[batch, seq + n_new]`` (the prompt, then zeros)
  at every step, with the edits applied through ``intervene``; the next token is read at the
  current position and written into the buffer. The causal mask makes the later (not yet
  written) positions irrelevant, and positions in an edit's selection are buffer positions,
  the same at every step. There is no KV cache, so step ``t`` recomputes the whole buffer:
  ``O(n_new · (seq + n_new)²)`` attention work against the cache's ``O((seq + n_new)²)``.
  That is the price of generality (an edit may read or change any activation at any
  position); for long unsteered generation use :func:`jaxinterp.models.generate`.
* Sampling: logits ``/ temperature``, then top-k (keep the ``k`` largest), then top-p (keep
  the smallest set of most likely tokens whose probability reaches ``p``; ties at the
  threshold are kept), then ``jax.random.categorical`` with ``fold_in(key, step)``: the same
  key gives the same text. ``temperature=0`` is greedy (argmax; no key needed).

:func:`add` is the steering edit ``act + scale · direction`` at chosen positions;
:func:`contrastive_direction` gives a direction as the mean activation difference between two
prompt sets (contrastive activation addition, Rimsky et al. 2024; activation addition, Turner
et al. 2023). :func:`steering_sweep` generates for every (site, scale, direction) in one
vmapped call: the site is a traced index, the edit at site ``j`` adds
``direction · (j == site)``, so the sites share one program.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import (
    check_array,
    check_finite,
    check_ids,
    check_int,
    check_key,
    is_traced,
    poison,
    value_check,
)
from jaxinterp.interventions import capture_sites, intervene
from jaxinterp.interventions._edits import _selection


class Add(NamedTuple):
    """The steering edit ``act + scale · direction`` (a pytree: it can be traced and vmapped).

    Attributes:
      direction: ``[d_model]`` (broadcast against the activation's trailing axes).
      scale: scalar.
      positions: ``None`` (every position) or the positions of axis ``-2`` (``[batch, seq,
        d_model]`` residual streams): an int, int array or bool ``[seq]`` mask.
    """

    direction: jax.Array
    scale: Any = 1.0
    positions: Any = None

    def __call__(self, act: jax.Array) -> jax.Array:
        if not hasattr(act, "shape") or act.ndim < 2:
            raise ValueError(
                f"act: add steers [..., seq, d_model] activations, got {getattr(act, 'shape', act)}"
            )
        d = jnp.asarray(self.direction)
        if d.ndim < 1 or d.ndim > act.ndim or d.shape != act.shape[act.ndim - d.ndim :]:
            raise ValueError(
                f"direction: expected the activation's trailing shape {act.shape[-1:]}, got "
                f"{d.shape}"
            )
        scale = jnp.asarray(self.scale)
        if scale.ndim != 0 or not jnp.issubdtype(scale.dtype, jnp.number):
            raise ValueError(f"scale: expected a number, got {self.scale!r}")
        finite = jnp.isfinite(scale)
        value_check(finite, "scale: expected a finite number, got {}", scale)
        delta = scale.astype(act.dtype) * d.astype(act.dtype)
        if self.positions is None:
            return act + delta
        mask, ok = _selection(act.shape, {-2: self.positions}, None)
        out = jnp.where(mask, act + delta, act)
        return out if ok is True else poison(out, ok)  # never "steered nowhere" in silence


def add(direction: jax.Array, scale: Any = 1.0, *, positions: Any = None) -> Add:
    """Steering edit: adds ``scale · direction`` to an activation at chosen positions.

    Args:
      direction: ``[d_model]`` float vector (any trailing shape of the activation).
      scale: float (may be traced, e.g. vmapped over).
      positions: ``None`` for every position, else positions along axis ``-2`` of
        ``[batch, seq, d_model]``: an int, an int array, or a bool ``[seq]`` mask
        (never wrapped: an out-of-range index raises, or gives NaN under ``jit``).

    Returns:
      An :class:`Add`, an edit for :func:`jaxinterp.interventions.intervene` and
      :func:`generate` (a pytree, so jitted callers take new directions without recompiling).

    Raises:
      TypeError: ``direction`` not a float array.

    >>> add(jnp.ones(2), 3.0, positions=1)(jnp.zeros((1, 3, 2)))[0].tolist()
    [[0.0, 0.0], [3.0, 3.0], [0.0, 0.0]]
    """
    direction = check_array(direction, "direction", kind="floating")
    if direction.ndim < 1:
        raise ValueError(f"direction: expected a [d_model] vector, got shape {direction.shape}")
    return Add(direction, scale, positions)


# ------------------------------------------------------------------------------ sampling


def _filter(z: jax.Array, top_k: int | None, top_p: Any) -> jax.Array:
    """Masks logits ``[..., vocab]`` outside the top-k / top-p sets with ``-inf``."""
    if top_k is not None:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth, -jnp.inf, z)
    if top_p is not None:
        zs = jnp.sort(z, -1)[..., ::-1]
        p = jax.nn.softmax(zs, -1)
        before = jnp.cumsum(p, -1) - p  # mass of the strictly more likely tokens
        keep = before < top_p
        threshold = jnp.min(jnp.where(keep, zs, jnp.inf), -1, keepdims=True)
        z = jnp.where(z < threshold, -jnp.inf, z)
    return z


def _pick(key, z, temperature, top_k, top_p, greedy):
    if greedy:
        return jnp.argmax(z, -1)
    z = z.astype(jnp.float32) / temperature
    return jax.random.categorical(key, _filter(z, top_k, top_p), -1)


def _generate_impl(key, variables, prompt, temperature, top_p, edits, model, n_new, top_k, greedy):
    b, s = prompt.shape
    buf = jnp.concatenate([prompt, jnp.zeros((b, n_new), prompt.dtype)], 1)
    run = intervene(model, variables, edits or {})

    def step(buf, t):
        logits = run(buf)
        z = jax.lax.dynamic_index_in_dim(logits, s - 1 + t, 1, keepdims=False)  # [b, vocab]
        k = None if greedy else jax.random.fold_in(key, t)
        tok = _pick(k, z, temperature, top_k, top_p, greedy).astype(buf.dtype)
        tok = jnp.where(jnp.isnan(z).any(-1), -1, tok)  # NaN logits (a failed check): -1
        buf = jax.lax.dynamic_update_slice(buf, tok[:, None], (0, s + t))
        return buf, (tok, z)

    _, (toks, zs) = jax.lax.scan(step, buf, jnp.arange(n_new))
    return toks.T, zs.swapaxes(0, 1)


_DYN = object()


def _is_dynamic(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, int)) and not isinstance(
        x, bool
    )


class _Static:
    """The non-array part of ``edits`` (tree structure, functions), hashable by identity."""

    def __init__(self, treedef, leaves):
        self.treedef, self.leaves = treedef, leaves
        self._key = (treedef, tuple(id(x) if x is not _DYN else None for x in leaves))

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and other._key == self._key

    def merge(self, dyn: list) -> Any:
        it = iter(dyn)
        return self.treedef.unflatten([next(it) if x is _DYN else x for x in self.leaves])


@partial(jax.jit, static_argnames=("static", "model", "n_new", "top_k", "greedy"))
def _generate_jit(
    key, variables, prompt, temperature, top_p, dyn, static, model, n_new, top_k, greedy
):
    edits = static.merge(dyn)
    return _generate_impl(
        key, variables, prompt, temperature, top_p, edits, model, n_new, top_k, greedy
    )


def _under_trace() -> bool:
    return isinstance(jax.lax.add(np.int32(0), np.int32(0)), jax.core.Tracer)


def _check_sampling(key, model, prompt, n_new, temperature, top_k, top_p):
    prompt = check_array(prompt, "prompt", ndim=2, kind="integer")
    n_new = check_int(n_new, "n_new", lo=1)
    greedy = isinstance(temperature, (int, float)) and temperature == 0
    if not greedy:
        key = check_key(key, "key")
        if isinstance(temperature, (int, float)) and not temperature > 0:
            raise ValueError(f"temperature: expected > 0, or 0 for greedy, got {temperature}")
    cfg = getattr(model, "cfg", None)
    vocab = getattr(cfg, "vocab_size", None)
    if top_k is not None:
        top_k = check_int(top_k, "top_k", lo=1, hi=vocab if isinstance(vocab, int) else None)
    if top_p is not None and isinstance(top_p, (int, float)) and not 0 < top_p <= 1:
        raise ValueError(f"top_p: expected a probability in (0, 1], got {top_p}")
    check_ids(prompt, vocab, "prompt")  # NaN logits, and greedy argmax would read token 0
    limit = getattr(cfg, "max_positions", None) or getattr(cfg, "seq_len", None)
    if limit is not None and getattr(cfg, "family", "gpt2") == "gpt2":
        if prompt.shape[1] + n_new > limit:
            raise ValueError(
                f"n_new: prompt + n_new must be at most {limit} positions, got "
                f"{prompt.shape[1]} + {n_new}"
            )
    return key, prompt, n_new, greedy, top_k


def generate(
    key: jax.Array | None,
    model: Any,
    variables: Any,
    prompt: jax.Array,
    n_new: int,
    *,
    edits: Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    return_logits: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Continues ``prompt`` by ``n_new`` tokens with ``edits`` applied at every step.

    Args:
      key: PRNG key (the same key gives the same tokens); ``None`` allowed when greedy.
      model: a linen model ``tokens [batch, seq] -> logits [batch, seq, vocab]`` (causal).
      variables: its variables.
      prompt: ``[batch, seq]`` token ids.
      n_new: tokens to generate (>= 1).
      edits: ``{site: edit}`` as for :func:`jaxinterp.interventions.intervene` (e.g.
        ``{"blocks_3": add(direction, 4.0)}``); positions in edits index the buffer
        ``[batch, seq + n_new]``. Array leaves of pytree edits (:class:`Add`) are traced, so
        new directions or scales reuse the compiled program.
      temperature: ``0`` for greedy decoding, else the softmax temperature (> 0; may be a
        traced scalar).
      top_k: keep only the ``k`` most likely tokens (static int).
      top_p: nucleus sampling: keep the most likely tokens up to total probability ``p``.
      return_logits: also return each step's (unfiltered) next-token logits.

    Returns:
      ``tokens [batch, n_new]``, and with ``return_logits`` also
      ``logits [batch, n_new, vocab]`` (step ``t``'s logits, before temperature and filtering).

    Raises:
      TypeError: a bad ``key`` (when sampling), non-integer ``prompt``.
      ValueError: ``n_new < 1``, ``temperature < 0``, ``top_k < 1``, ``top_p`` outside
        ``(0, 1]``, a learned-position model's length exceeded.

    Cost: ``n_new`` full forward passes over ``seq + n_new`` positions (no KV cache, module
    docstring), compiled once per shapes, ``n_new``, ``top_k``, greedy-or-not and edit structure.

    For a :class:`jaxinterp.models.Decoder`, :func:`jaxinterp.models.generate` takes the same
    ``edits=`` and calls this function when they are non-empty (its own KV-cached decoding
    otherwise): one signature for plain and steered generation.

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> m = Decoder(DecoderConfig(n_layers=1))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> p = jnp.array([[1, 2, 3]])
    >>> a = generate(jax.random.key(1), m, v, p, 4, top_k=5)
    >>> bool((a == generate(jax.random.key(1), m, v, p, 4, top_k=5)).all()), a.shape
    (True, (1, 4))
    >>> steer = {"blocks_0": add(jnp.ones(64), 2.0)}
    >>> generate(None, m, v, p, 2, edits=steer, temperature=0).shape
    (1, 2)
    """
    key, prompt, n_new, greedy, top_k = _check_sampling(
        key, model, prompt, n_new, temperature, top_k, top_p
    )
    if edits is not None and not isinstance(edits, Mapping):
        raise TypeError(f"edits: expected a mapping {{site: edit}}, got {type(edits).__name__}")
    edits = dict(edits or {})
    temp = jnp.asarray(1.0 if greedy else temperature, jnp.float32)
    tp = None if top_p is None else jnp.asarray(top_p, jnp.float32)
    if _under_trace() or is_traced((variables, prompt)):
        toks, zs = _generate_impl(
            key, variables, prompt, temp, tp, edits, model, n_new, top_k, greedy
        )
    else:
        leaves, treedef = jax.tree.flatten(edits)
        dyn = [x for x in leaves if _is_dynamic(x)]
        static = _Static(treedef, [_DYN if _is_dynamic(x) else x for x in leaves])
        toks, zs = _generate_jit(
            key, variables, prompt, temp, tp, dyn, static, model, n_new, top_k, greedy
        )
    return (toks, zs) if return_logits else toks


# ------------------------------------------------------------------------------ directions


def contrastive_direction(
    model: Any,
    variables: Any,
    site: str,
    positive: jax.Array,
    negative: jax.Array,
    *,
    position: Any = -1,
) -> jax.Array:
    """Mean activation difference between two prompt sets (contrastive activation addition).

    Args:
      model, variables: the model.
      site: one site, e.g. a residual stream ``"blocks_3"`` (``[batch, seq, d_model]``).
      positive: ``[n, seq]`` token ids of the prompts showing the behaviour.
      negative: ``[m, seq']`` token ids of the contrasting prompts.
      position: the position read in every prompt (an int, default the last), or an int
        array ``[n + m]`` (positive prompts first) for prompts of different lengths.

    Returns:
      ``mean(act(positive)[:, position]) - mean(act(negative)[:, position])``: ``[d_model]``.

    Raises:
      TypeError: ``site`` not a string, prompts not integer arrays.
      ValueError: prompts not 2-D, a concrete position out of range, ``position`` of the wrong
        length.

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> m = Decoder(DecoderConfig(n_layers=1))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> d = contrastive_direction(m, v, "embed", jnp.array([[1, 5]]), jnp.array([[1, 7]]))
    >>> table = v["params"]["embed"]["tok"]["embedding"]
    >>> bool(jnp.allclose(d, table[5] - table[7]))
    True
    """
    if not isinstance(site, str):
        raise TypeError(f"site: expected one site string, got {type(site).__name__}")
    positive = check_array(positive, "positive", ndim=2, kind="integer")
    negative = check_array(negative, "negative", ndim=2, kind="integer")
    n, m = positive.shape[0], negative.shape[0]
    if n == 0 or m == 0:
        raise ValueError(f"positive, negative: expected non-empty prompt sets, got {n} and {m}")
    pos = check_array(position, "position", kind="integer")
    if pos.ndim == 0:
        pos_p = pos_n = pos
    elif pos.shape == (n + m,):
        pos_p, pos_n = pos[:n], pos[n:]
    else:
        raise ValueError(
            f"position: expected an int or [n + m] = [{n + m}] int array, got shape {pos.shape}"
        )
    if not is_traced(pos):
        for arr, ps, name in ((positive, pos_p, "positive"), (negative, pos_n, "negative")):
            bad = (np.asarray(ps) < -arr.shape[1]) | (np.asarray(ps) >= arr.shape[1])
            if bad.any():
                raise ValueError(
                    f"position: {np.asarray(ps).ravel()[np.argmax(bad.ravel())]} is out of range "
                    f"for the {name} prompts of length {arr.shape[1]}"
                )
    rec = capture_sites(model, variables, [site])

    def mean_at(tokens, ps):
        act = rec(tokens)[1][site]
        ps = jnp.broadcast_to(jnp.where(ps < 0, ps + act.shape[1], ps), (act.shape[0],))
        return jax.vmap(lambda a, p: a[p])(act, ps).mean(0)

    return mean_at(positive, pos_p) - mean_at(negative, pos_n)


# ---------------------------------------------------------------------------------- sweeps


class SweepResult(NamedTuple):
    """Result of :func:`steering_sweep`.

    Attributes:
      tokens: ``[site, scale, direction, batch, n_new]`` generated tokens.
      logits: ``[site, scale, direction, batch, n_new, vocab]`` next-token logits per step.
    """

    tokens: jax.Array
    logits: jax.Array


@partial(jax.jit, static_argnames=("model", "sites", "n_new", "top_k", "greedy"))
def _sweep(
    key,
    variables,
    prompt,
    directions,
    scales,
    positions,
    temperature,
    top_p,
    model,
    sites,
    n_new,
    top_k,
    greedy,
):
    n_sites = len(sites)

    def one(i, scale, dir_per_site):
        edits = {
            s: Add(dir_per_site[j] * (i == j).astype(dir_per_site.dtype), scale, positions)
            for j, s in enumerate(sites)
        }
        return _generate_impl(
            key, variables, prompt, temperature, top_p, edits, model, n_new, top_k, greedy
        )

    over_dir = jax.vmap(one, in_axes=(None, None, 1))  # directions [site, dir, d]
    over_scale = jax.vmap(over_dir, in_axes=(None, 0, None))
    over_site = jax.vmap(over_scale, in_axes=(0, None, None))
    return over_site(jnp.arange(n_sites), scales, directions)


def steering_sweep(
    key: jax.Array | None,
    model: Any,
    variables: Any,
    prompt: jax.Array,
    directions: jax.Array,
    scales: jax.Array,
    sites: Sequence[str],
    n_new: int,
    *,
    positions: Any = None,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> SweepResult:
    """Generates under ``add(direction, scale)`` at every (site, scale, direction) in one call.

    Args:
      key: PRNG key, shared by every sweep member (so only the steering differs); ``None``
        when greedy.
      model, variables, prompt, n_new: as in :func:`generate`.
      directions: ``[direction, d_model]`` (the same at every site) or
        ``[site, direction, d_model]`` (one set per site, e.g. contrastive directions
        computed at each layer).
      scales: ``[scale]`` floats.
      sites: the steered sites (e.g. ``["blocks_0", "blocks_2"]``), one at a time.
      positions: buffer positions to steer (see :func:`add`), default all.
      temperature, top_k, top_p: as in :func:`generate` (default greedy).

    Returns:
      :class:`SweepResult` with ``tokens [site, scale, direction, batch, n_new]`` and
      ``logits [site, scale, direction, batch, n_new, vocab]``.

    Raises:
      TypeError, ValueError: as :func:`generate`; ``sites`` empty or not strings;
        ``directions``/``scales`` of the wrong rank or width.

    One program, ``vmap`` over sites × scales × directions of :func:`generate`'s loop.

    >>> from jaxinterp.models import Decoder, DecoderConfig
    >>> m = Decoder(DecoderConfig(n_layers=2))
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> r = steering_sweep(None, m, v, jnp.array([[1, 2, 3]]), jnp.eye(64)[:3],
    ...                    jnp.array([0.0, 8.0]), ["blocks_0", "blocks_1"], 2)
    >>> r.tokens.shape
    (2, 2, 3, 1, 2)
    >>> bool((r.tokens[:, 0] == generate(None, m, v, jnp.array([[1, 2, 3]]), 2,
    ...                                   temperature=0)).all())  # scale 0: unsteered
    True
    """
    key, prompt, n_new, greedy, top_k = _check_sampling(
        key, model, prompt, n_new, temperature, top_k, top_p
    )
    if isinstance(sites, str) or not sites or not all(isinstance(s, str) for s in sites):
        raise TypeError(f"sites: expected a non-empty sequence of site strings, got {sites!r}")
    sites = tuple(sites)
    directions = check_array(directions, "directions", kind="floating")
    if directions.ndim == 2:
        directions = jnp.broadcast_to(directions, (len(sites), *directions.shape))
    if directions.ndim != 3 or directions.shape[0] != len(sites):
        raise ValueError(
            f"directions: expected [direction, d_model] or [site={len(sites)}, direction, "
            f"d_model], got shape {directions.shape}"
        )
    scales = check_array(scales, "scales", ndim=1, kind="number")
    check_finite(scales, "scales")
    check_finite(directions, "directions")
    if positions is not None and not is_traced(positions):
        length = prompt.shape[1] + n_new
        p = np.asarray(positions)
        if p.dtype == np.bool_:
            if p.shape != (length,):
                raise ValueError(
                    f"positions: expected a bool [seq + n_new] = [{length}] mask, got shape "
                    f"{p.shape}"
                )
        elif not np.issubdtype(p.dtype, np.integer):
            raise TypeError(f"positions: expected int positions or a bool mask, got {p.dtype}")
        elif p.size and ((p < -length) | (p >= length)).any():
            raise ValueError(
                f"positions: expected positions of the buffer [0, {length}) (prompt + n_new), "
                f"got {p.ravel()[((p < -length) | (p >= length)).ravel()][0]}"
            )
    temp = jnp.asarray(1.0 if greedy else temperature, jnp.float32)
    tp = None if top_p is None else jnp.asarray(top_p, jnp.float32)
    toks, zs = _sweep(
        key,
        variables,
        prompt,
        directions,
        scales.astype(directions.dtype),
        positions,
        temp,
        tp,
        model,
        sites,
        n_new,
        top_k,
        greedy,
    )
    return SweepResult(toks, zs)
