"""Edge attribution (EAP, EAP-IG), exact edge activation patching, and path patching.

All four score the edges of an :class:`~jaxinterp.circuits.EdgeGraph` by how much the metric
changes when an edge ``u -> v`` carries sender ``u``'s output on the *corrupted* input while
the rest of the model runs on the *clean* one:

* :func:`edge_patching` (the reference): for each edge, one forward pass in which receiver
  ``v``'s input is its clean input minus ``u``'s clean output plus ``u``'s corrupted output,
  everything else clean; ``score = metric(patched) - metric(clean)``. All edges in one
  compiled call, vmapped over edges in chunks of ``chunk`` (``lax.map``).
* :func:`eap` (Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit
  Discovery"): the first-order Taylor term of the same change, ``score(u -> v) = (a_u(corr)
  - a_u(clean)) · ∂metric/∂(input of v)`` at the clean run, for all edges from a clean
  forward + backward and a corrupted forward.
* :func:`eap_ig` (Hanna et al. 2024, "Have Faith in Faithfulness"): the gradient averaged over
  ``steps`` runs whose input (the stream entering block 0) is interpolated between corrupted
  and clean, ``corr + (j / steps) (clean - corr)`` for ``j = 0 .. steps - 1`` (the EAP-IG
  reference implementation's points), vmapped over the steps.
* :func:`patch_edges` patches any *set* of edges jointly (vmapped over several sets);
  :func:`path_mask` builds the set for path patching (Wang et al. 2022): the senders' effect
  only through the chosen receivers' inputs.

Semantics of a patched set (ACDC's): receiver ``v`` reads what it reads in this run, with
the output of each sender ``u`` whose edge ``u -> v`` is patched swapped for ``u``'s output
on the corrupted input; everything downstream is recomputed. Patching every edge gives the
corrupted run; patching the edges from some senders to some receivers is path patching, the
senders' effect only through those receivers' inputs. Path patching is at the level of edges:
a sender's effect through an MLP between it and a receiver counts only if that MLP's edges
are in the set too (Wang et al. recompute the MLPs in between, which here means adding the
edges from the senders to the MLPs and from the MLPs to the receivers).

The metric maps the model output (logits ``[batch, seq, vocab]``) to a scalar, e.g.
``lambda lg: logit_diff(lg, answer, wrong, position)`` from
:mod:`jaxinterp.interventions` (per-row positions as ``[batch]`` arrays).

Every function is pure and composes with ``jit``: pass the variables and inputs as jit
arguments (``jax.jit(lambda v, c, x: eap(model, v, graph, c, x, metric))``); a plain call
with concrete arguments compiles its own program each time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_ids, check_int, is_traced, model_vocab
from jaxinterp.capture import check_model
from jaxinterp.circuits._graph import EdgeGraph, rewired_forward


class EdgeScores(NamedTuple):
    """Per-edge scores: the (estimated or exact) metric change when the edge is patched.

    Attributes:
      scores: ``[edge]`` metric(edge patched) - metric(clean) (exact or estimated).
      clean: scalar, the metric on the clean input.
      corrupted: scalar, the metric on the corrupted input.
    """

    scores: jax.Array
    clean: jax.Array
    corrupted: jax.Array


def _check(graph, clean, corrupted, metric, model, variables):
    if not isinstance(graph, EdgeGraph):
        raise TypeError(f"graph: expected an EdgeGraph, got {type(graph).__name__}")
    check_model(model, variables)
    if not callable(metric):
        raise TypeError(f"metric: expected a function logits -> scalar, got {type(metric)}")
    cs, xs = jnp.shape(clean), jnp.shape(corrupted)
    if cs != xs:
        raise ValueError(f"corrupted: expected the shape of clean {cs}, got {xs}")
    for name, run in (("clean", clean), ("corrupted", corrupted)):
        if hasattr(run, "dtype"):  # token ids (a pytree of inputs is the model's to check)
            check_ids(run, model_vocab(model), name)


def _scalar(metric, out):
    m = metric(out)
    if jnp.ndim(m) != 0:
        raise ValueError(
            f"metric: expected a scalar (e.g. the mean over the batch), got shape {jnp.shape(m)}"
        )
    return m


def _maybe_jit(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, compiled when called with concrete arrays outside any trace."""
    if is_traced(args):
        return fn(*args)
    return jax.jit(fn)(*args)


def _senders(model, variables, graph, inputs, kwargs):
    out, outs = rewired_forward(model, variables, graph.layout, inputs, senders=True, kwargs=kwargs)
    return out, outs


def _receiver_grads(model, variables, graph, inputs, metric, stream0, kwargs):
    """``∂metric/∂(input of each receiver)`` ``[receiver, batch, seq, d_model]`` and the metric."""
    _, outs = jax.eval_shape(lambda v: _senders(model, v, graph, inputs, kwargs), variables)
    shape = (len(graph.receivers), *outs.shape[1:])

    def f(patch):
        out, _ = rewired_forward(
            model, variables, graph.layout, inputs, patch=patch, stream0=stream0, kwargs=kwargs
        )
        return _scalar(metric, out)

    m, g = jax.value_and_grad(f)(jnp.zeros(shape, outs.dtype))
    return g, m


def _attribute(model, variables, graph, clean, corrupted, metric, steps, kwargs):
    out_c, a_clean = _senders(model, variables, graph, clean, kwargs)
    out_x, a_corr = _senders(model, variables, graph, corrupted, kwargs)
    m_clean, m_corr = _scalar(metric, out_c), _scalar(metric, out_x)
    delta = a_corr - a_clean  # [sender, batch, seq, d_model]
    if steps is None:
        grads, _ = _receiver_grads(model, variables, graph, clean, metric, None, kwargs)
    else:
        alphas = jnp.arange(steps, dtype=a_clean.dtype) / steps
        e_clean, e_corr = a_clean[0], a_corr[0]

        def one(alpha):
            s0 = e_corr + alpha * (e_clean - e_corr)
            return _receiver_grads(model, variables, graph, clean, metric, s0, kwargs)[0]

        grads = jax.vmap(one)(alphas).mean(0)
    u, v = jnp.asarray(graph.sender), jnp.asarray(graph.receiver)
    table = jnp.einsum("ubsd,vbsd->uv", delta, grads)  # [sender, receiver]
    return EdgeScores(table[u, v], m_clean, m_corr)


def eap(
    model: Any,
    variables: Any,
    graph: EdgeGraph,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Any], jax.Array],
    *,
    kwargs: dict | None = None,
) -> EdgeScores:
    """Edge attribution patching: first-order estimates of every edge's patching effect.

    ``score(u -> v) = Σ_{batch, seq, d_model} (a_u(corrupted) - a_u(clean)) ·
    ∂metric/∂(input of v)|clean``: two forward passes and one backward pass for all edges.

    Args:
      model: a linen module (with ``variables``) or an nnx module (``variables=None``) that
        ``graph.layout`` describes.
      variables: its variables.
      graph: an :class:`~jaxinterp.circuits.EdgeGraph` (:func:`~jaxinterp.circuits.edge_graph`).
      clean: the clean input, e.g. tokens ``[batch, seq]``.
      corrupted: the corrupted input, the same shape.
      metric: ``logits -> scalar``.
      kwargs: further keyword inputs of the model (the same for both runs).

    Returns:
      :class:`EdgeScores` with ``scores [edge]``.

    Raises:
      TypeError: a bad ``graph``, ``model``/``variables`` pair or ``metric``.
      ValueError: ``corrupted`` shaped unlike ``clean``; ``metric`` not scalar.

    >>> import jaxinterp.models as zoo
    >>> from jaxinterp.circuits import decoder_layout, edge_graph
    >>> cfg = zoo.DecoderConfig(n_layers=1, n_heads=2, n_kv_heads=1, d_model=8, d_head=4)
    >>> m = zoo.Decoder(cfg)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
    >>> g = edge_graph(decoder_layout(cfg))
    >>> metric = lambda lg: lg[:, -1, 5].mean()
    >>> r = eap(m, v, g, jnp.array([[1, 2, 3]]), jnp.array([[4, 2, 3]]), metric)
    >>> r.scores.shape, len(g.names)
    ((11,), 11)
    """
    _check(graph, clean, corrupted, metric, model, variables)

    def run(variables, clean, corrupted):
        return _attribute(model, variables, graph, clean, corrupted, metric, None, kwargs)

    return _maybe_jit(run, variables, clean, corrupted)


def eap_ig(
    model: Any,
    variables: Any,
    graph: EdgeGraph,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Any], jax.Array],
    *,
    steps: int = 10,
    kwargs: dict | None = None,
) -> EdgeScores:
    """EAP with integrated gradients (Hanna et al. 2024).

    ``score(u -> v) = Σ (a_u(corrupted) - a_u(clean)) · (1/steps) Σ_j ∂metric/∂(input of v)``
    at the clean tokens with the stream entering block 0 set to ``e_corr + (j / steps)
    (e_clean - e_corr)``, ``j = 0 .. steps - 1``; the ``steps`` backward passes run as one vmap.

    Args:
      model, variables, graph, clean, corrupted, metric, kwargs: as in :func:`eap`.
      steps: interpolation points, ``>= 1`` (``steps=1`` takes the gradient at the corrupted
        input).

    Returns:
      :class:`EdgeScores` with ``scores [edge]``.

    Raises:
      As :func:`eap`; ``ValueError`` for ``steps < 1``.

    >>> import jaxinterp.models as zoo
    >>> from jaxinterp.circuits import decoder_layout, edge_graph
    >>> cfg = zoo.DecoderConfig(n_layers=1, n_heads=2, n_kv_heads=1, d_model=8, d_head=4)
    >>> m = zoo.Decoder(cfg)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
    >>> g = edge_graph(decoder_layout(cfg))
    >>> metric = lambda lg: lg[:, -1, 5].mean()
    >>> r = eap_ig(m, v, g, jnp.array([[1, 2, 3]]), jnp.array([[4, 2, 3]]), metric, steps=4)
    >>> r.scores.shape
    (11,)
    """
    _check(graph, clean, corrupted, metric, model, variables)
    steps = check_int(steps, "steps", lo=1)

    def run(variables, clean, corrupted):
        return _attribute(model, variables, graph, clean, corrupted, metric, steps, kwargs)

    return _maybe_jit(run, variables, clean, corrupted)


def _patched_metrics(model, variables, graph, clean, corrupted, metric, masks, chunk, kwargs):
    """``metric(patched) - metric(clean)`` per set; ``masks`` ``[set, edge]``, or ``None``
    for every single edge (``[edge]`` results, without an ``[edge, edge]`` identity)."""
    out_c, a_clean = _senders(model, variables, graph, clean, kwargs)
    out_x, a_corr = _senders(model, variables, graph, corrupted, kwargs)
    m_clean, m_corr = _scalar(metric, out_c), _scalar(metric, out_x)
    n_recv = len(graph.receivers)
    u, v = jnp.asarray(graph.sender), jnp.asarray(graph.receiver)

    def one(sel):  # [edge] weights, or one edge's index -> metric
        w = jnp.zeros((a_corr.shape[0], n_recv), a_corr.dtype)
        w = w.at[u, v].add(sel) if masks is not None else w.at[u[sel], v[sel]].set(1.0)
        out, _ = rewired_forward(
            model, variables, graph.layout, clean, corrupted=a_corr, weights=w, kwargs=kwargs
        )
        return _scalar(metric, out)

    xs = masks if masks is not None else jnp.arange(len(graph.sender))
    vals = jax.lax.map(one, xs, batch_size=min(chunk, xs.shape[0]))
    return vals - m_clean, m_clean, m_corr


def edge_patching(
    model: Any,
    variables: Any,
    graph: EdgeGraph,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Any], jax.Array],
    *,
    chunk: int = 16,
    kwargs: dict | None = None,
) -> EdgeScores:
    """Exact edge activation patching: one forward pass per edge, all in one compiled call.

    For each edge ``u -> v``: run the clean input with receiver ``v``'s input replaced by
    ``clean input of v - a_u(clean) + a_u(corrupted)`` (every other receiver clean), and
    report ``metric(patched) - metric(clean)``. The edges are vmapped ``chunk`` at a time
    (``lax.map``): memory grows with ``chunk``, time with the number of edges.

    Args:
      model, variables, graph, clean, corrupted, metric, kwargs: as in :func:`eap`.
      chunk: edges per vmapped batch, ``>= 1``.

    Returns:
      :class:`EdgeScores` with the exact ``scores [edge]``.

    Raises:
      As :func:`eap`; ``ValueError`` for ``chunk < 1``.

    >>> import jaxinterp.models as zoo
    >>> from jaxinterp.circuits import decoder_layout, edge_graph
    >>> cfg = zoo.DecoderConfig(n_layers=1, n_heads=2, n_kv_heads=1, d_model=8, d_head=4)
    >>> m = zoo.Decoder(cfg)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
    >>> g = edge_graph(decoder_layout(cfg))
    >>> metric = lambda lg: lg[:, -1, 5].mean()
    >>> clean, corrupted = jnp.array([[1, 2, 3]]), jnp.array([[4, 2, 3]])
    >>> r = edge_patching(m, v, g, clean, corrupted, metric)
    >>> # the tokens differ at position 0 only: the input's direct edge to the logits
    >>> # changes nothing at the read-out position 2
    >>> abs(float(r.scores[g.index("input->logits")])) < 1e-6
    True
    """
    _check(graph, clean, corrupted, metric, model, variables)
    chunk = check_int(chunk, "chunk", lo=1)

    def run(variables, clean, corrupted):
        vals, mc, mx = _patched_metrics(
            model, variables, graph, clean, corrupted, metric, None, chunk, kwargs
        )
        return EdgeScores(vals, mc, mx)

    return _maybe_jit(run, variables, clean, corrupted)


def patch_edges(
    model: Any,
    variables: Any,
    graph: EdgeGraph,
    clean: Any,
    corrupted: Any,
    metric: Callable[[Any], jax.Array],
    masks: Any,
    *,
    chunk: int = 16,
    kwargs: dict | None = None,
) -> jax.Array:
    """Patches sets of edges jointly: ``metric(patched) - metric(clean)`` for each set.

    Receiver ``v`` reads its stream with the outputs of the senders of its patched edges
    swapped for their corrupted outputs (see the module docstring); with a :func:`path_mask`
    this is path patching. Fractional weights ``w`` swap in ``w`` of the difference.

    Args:
      model, variables, graph, clean, corrupted, metric, kwargs: as in :func:`eap`.
      masks: ``[edge]`` or ``[set, edge]`` bool (or float weights), one set of edges per
        row.
      chunk: sets per vmapped batch, ``>= 1``.

    Returns:
      A scalar for ``[edge]`` masks, else ``[set]``.

    Raises:
      As :func:`eap`; ``ValueError`` for masks not ``[edge]`` / ``[set, edge]``.

    >>> import jaxinterp.models as zoo
    >>> from jaxinterp.circuits import decoder_layout, edge_graph
    >>> cfg = zoo.DecoderConfig(n_layers=1, n_heads=2, n_kv_heads=1, d_model=8, d_head=4)
    >>> m = zoo.Decoder(cfg)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 3), jnp.int32))
    >>> g = edge_graph(decoder_layout(cfg))
    >>> metric = lambda lg: lg[:, -1, 5].mean()
    >>> clean, corrupted = jnp.array([[1, 2, 3]]), jnp.array([[4, 2, 3]])
    >>> every = patch_edges(m, v, g, clean, corrupted, metric, jnp.ones(len(g.names), bool))
    >>> full = metric(m.apply(v, corrupted)) - metric(m.apply(v, clean))
    >>> bool(jnp.allclose(every, full, atol=1e-5))  # all edges patched = the corrupted run
    True
    """
    _check(graph, clean, corrupted, metric, model, variables)
    chunk = check_int(chunk, "chunk", lo=1)
    n = len(graph.sender)
    shape = tuple(jnp.shape(masks))
    if shape not in ((n,),) and not (len(shape) == 2 and shape[1] == n and shape[0] >= 1):
        raise ValueError(f"masks: expected [edge] or [set, edge] with edge={n}, got {shape}")
    single = len(shape) == 1

    def run(variables, clean, corrupted, masks):
        m2 = jnp.asarray(masks, jnp.float32).reshape(-1, n)
        vals, _, _ = _patched_metrics(
            model, variables, graph, clean, corrupted, metric, m2, chunk, kwargs
        )
        return vals[0] if single else vals

    return _maybe_jit(run, variables, clean, corrupted, masks)


def path_mask(graph: EdgeGraph, senders: Iterable[str], receivers: Iterable[str]) -> np.ndarray:
    """The ``[edge]`` mask of the edges from ``senders`` to ``receivers`` (path patching).

    Names are those of ``graph.senders`` / ``graph.receivers``; a receiver name may also be a
    head ``"a{i}.h{h}"`` (its query, and its group's key and value inputs) or an attention
    layer ``"a{i}"`` (all its query/key/value inputs).

    Raises:
      KeyError: a name that is neither a sender nor a receiver (the message lists some).
      ValueError: no edge joins the senders to the receivers (e.g. a receiver before them).

    >>> from jaxinterp.circuits import ResidualLayout, edge_graph
    >>> g = edge_graph(ResidualLayout(n_layers=2, n_heads=2, n_kv_heads=1))
    >>> mask = path_mask(g, ["a0.h1"], ["a1.h0", "logits"])
    >>> [n for n, on in zip(g.names, mask) if on]
    ['a0.h1->a1.h0.q', 'a0.h1->a1.g0.k', 'a0.h1->a1.g0.v', 'a0.h1->logits']
    """
    if not isinstance(graph, EdgeGraph):
        raise TypeError(f"graph: expected an EdgeGraph, got {type(graph).__name__}")
    senders, receivers = (
        [senders] if isinstance(senders, str) else list(senders),
        ([receivers] if isinstance(receivers, str) else list(receivers)),
    )
    lay = graph.layout
    per = lay.n_heads // lay.n_kv_heads
    s_idx = []
    for s in senders:
        if s not in graph.senders:
            raise KeyError(f"senders: no sender {s!r} (e.g. {list(graph.senders[:4])})")
        s_idx.append(graph.senders.index(s))
    r_names: list[str] = []
    for r in receivers:
        if r in graph.receivers:
            r_names.append(r)
            continue
        parts = r.split(".")
        if len(parts) == 2 and parts[0][:1] == "a" and parts[1][:1] == "h":
            i, h = parts[0], int(parts[1][1:]) if parts[1][1:].isdigit() else -1
            g = h // per
            cand = [f"{i}.h{h}.q", f"{i}.g{g}.k", f"{i}.g{g}.v"]
        elif len(parts) == 1 and r[:1] == "a":
            cand = [n for n in graph.receivers if n.split(".")[0] == r and "." in n]
        else:
            cand = []
        if not cand or any(c not in graph.receivers for c in cand):
            raise KeyError(f"receivers: no receiver {r!r} (e.g. {list(graph.receivers[:4])})")
        r_names += cand
    r_idx = [graph.receivers.index(r) for r in r_names]
    mask = np.isin(graph.sender, s_idx) & np.isin(graph.receiver, r_idx)
    if not mask.any():
        raise ValueError(f"receivers: no edge from {senders} to {receivers} (order of layers?)")
    return mask
