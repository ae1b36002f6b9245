"""Attribution graphs over transcoder features (Ameisen et al. 2025, circuit-tracer's layout).

For one prompt, the MLPs of a :class:`jaxinterp.models.Decoder` are replaced by transcoders
(``a = act(mlp_input @ W_enc + b_enc)``, ``mlp_output ≈ a @ W_dec + b_dec``) plus an *error
node* per layer and position (the part of the MLP output the transcoder misses), and the
attention probabilities and every norm's scale (``1/σ`` of LayerNorm, ``1/rms`` of RMSNorm)
are frozen at their values on the prompt. The feature activations are frozen too, so the
model from its sources (token embeddings, features, error nodes) to its targets (feature
pre-activations, logits) is *linear*: each target is a sum of one term per source plus a
constant (the biases), and the term of source ``s`` is its **direct effect** on the target,
``A[target, s] = ∂target/∂m_s`` for a multiplier ``m_s = 1`` on that source's output. All
direct effects come from one ``jax.jacrev`` over the targets (one vmapped backward pass per
target), in one compiled call.

Verify-by-construction: ``value[t] = Σ_s A[t, s] + baseline[t]`` for every target (the
replacement model at ``m = 0`` gives ``baseline``), and with the replacement model's error
nodes the logits equal the model's own. With *exact* transcoders (:func:`mlp_transcoders`:
the MLP's own neurons as features, reconstruction error zero by construction) the error
nodes vanish and the graph's edges alone explain each logit up to the bias constant.

:func:`prune_graph` keeps the nodes and edges that carry most of the influence on the logits
(the pruning of circuit-tracer: row-normalised ``|A|``, influence ``w A (I - A)^{-1}`` from the
logits weighted by their probabilities, cumulative thresholds); :func:`graph_json` writes the
JSON that circuit-tracer's front end reads (``metadata``, ``qParams``, ``nodes``, ``links``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp._checks import check_array, check_ids, check_int
from jaxinterp.capture import record, run_with_hook
from jaxinterp.interventions import capture_sites


class Transcoder(NamedTuple):
    """One layer's transcoder: reads the MLP's input (after its norm), writes its output.

    Attributes:
      W_enc: ``[d_model, d_tc]``.
      b_enc: ``[d_tc]``.
      W_dec: ``[d_tc, d_model]``.
      b_dec: ``[d_model]``.
    """

    W_enc: jax.Array
    b_enc: jax.Array
    W_dec: jax.Array
    b_dec: jax.Array


def _cfg_checks(cfg: Any) -> None:
    from jaxinterp.models import DecoderConfig

    if not isinstance(cfg, DecoderConfig):
        raise TypeError(f"cfg: expected a DecoderConfig, got {type(cfg).__name__}")
    if cfg.family == "gemma" or cfg.qk_norm or cfg.attn_softcap or cfg.final_softcap:
        raise ValueError(
            "cfg: expected the gpt2 or llama family without QK-norm or soft-capping (their "
            f"norms and caps cannot be frozen linearly here), got family {cfg.family!r}"
        )


def mlp_transcoders(variables: Any, cfg: Any) -> list[Transcoder]:
    """Exact transcoders of a GPT-2-family :class:`~jaxinterp.models.Decoder`: its neurons.

    ``W_enc, b_enc`` are each MLP's input layer, ``W_dec, b_dec`` its output layer, so with the
    MLP's activation (tanh-GELU) the transcoder reproduces the MLP exactly.

    Args:
      variables: the Decoder's ``{"params": ...}``, either layout (``blocks_{i}`` or the
        stacked ``blocks``).
      cfg: its :class:`~jaxinterp.models.DecoderConfig` (``family="gpt2"``: a gated MLP has
        no single pre-activation per neuron).

    Returns:
      ``[Transcoder] * n_layers``, ``d_tc = d_mlp``.

    Raises:
      TypeError, ValueError: not a GPT-2-family config.

    >>> import jaxinterp.models as zoo
    >>> cfg = zoo.DecoderConfig(family="gpt2", n_layers=1, n_heads=2, n_kv_heads=2, d_model=8,
    ...                         d_head=4, d_mlp=16, max_positions=8, mlp_act="gelu_tanh")
    >>> v = zoo.Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> [t.shape for t in mlp_transcoders(v, cfg)[0]]
    [(8, 16), (16,), (16, 8), (8,)]
    """
    _cfg_checks(cfg)
    if cfg.family != "gpt2":
        raise ValueError(f"cfg: expected the gpt2 family (one pre-activation), got {cfg.family}")
    out = []
    p = variables["params"]
    for i in range(cfg.n_layers):
        if "blocks" in p:  # the stacked layout: leaves [layer, ...]
            mlp = jax.tree.map(lambda a, i=i: a[i], p["blocks"]["mlp"])
        else:
            mlp = p[f"blocks_{i}"]["mlp"]
        w_in, w_out = mlp["fc_in"]["kernel"], mlp["fc_out"]["kernel"]
        b_in = mlp["fc_in"].get("bias", jnp.zeros(w_in.shape[1], w_in.dtype))
        b_out = mlp["fc_out"].get("bias", jnp.zeros(w_out.shape[1], w_out.dtype))
        out.append(Transcoder(w_in, b_in, w_out, b_out))
    return out


class AttributionGraph(NamedTuple):
    """Direct effects between the nodes of one prompt's replacement model.

    Nodes are ordered features, error nodes, tokens, logits (circuit-tracer's order).

    Attributes:
      adjacency: ``[node, node]`` ``A[target, source]``, the direct effect (rows of token and
        error nodes are zero: they are sources only; logit columns are zero).
      kind: ``[node]`` ``"feature"``, ``"error"``, ``"token"`` or ``"logit"``.
      layer: ``[node]`` int (tokens -1, logits ``n_layers``).
      pos: ``[node]`` int, the position.
      index: ``[node]`` int: the feature index, the token id (tokens and logits), -1 (errors).
      activation: ``[node]`` the feature activation (features), NaN otherwise.
      value: ``[node]`` the target's value (feature pre-activation, logit), NaN for sources
        only.
      baseline: ``[node]`` the target's value with every source off (the biases' part).
      logit_probs: ``[logit]`` the probabilities of the chosen logits (softmax over vocab).
      tokens: ``[seq]`` the prompt.
    """

    adjacency: np.ndarray
    kind: tuple[str, ...]
    layer: np.ndarray
    pos: np.ndarray
    index: np.ndarray
    activation: np.ndarray
    value: np.ndarray
    baseline: np.ndarray
    logit_probs: np.ndarray
    tokens: np.ndarray


_ACTS = {
    "gelu_tanh": partial(nn.gelu, approximate=True),
    "gelu": partial(nn.gelu, approximate=False),
    "silu": nn.silu,
}


def _frozen_norm(cfg, params, x, inv):
    """The model's norm with its scale ``inv`` ``[1, seq, 1]`` frozen (linear in ``x``)."""
    if cfg.family == "gpt2":
        y = (x - x.mean(-1, keepdims=True)) * inv
        return y * params["scale"] + params["bias"]
    return params["scale"] * (x * inv)


def _inv_scale(cfg, x):
    if cfg.family == "gpt2":
        c = x - x.mean(-1, keepdims=True)
        return jax.lax.rsqrt((c * c).mean(-1, keepdims=True) + cfg.norm_eps)
    return jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps)


def _core(model, variables, cfg, tokens, tcs, act, logit_ids):
    n_l = cfg.n_layers
    norms = [f"blocks_{i}/{n}" for i in range(n_l) for n in ("ln_1", "ln_2")] + ["ln_f"]
    sites = [f"{n}:input" for n in norms]
    sites += [f"blocks_{i}/{s}" for i in range(n_l) for s in ("attn/probs", "ln_2", "mlp")]
    logits, caps = capture_sites(model, variables, sites)(tokens[None])
    inv = {n: _inv_scale(cfg, caps[f"{n}:input"]) for n in norms}
    acts, errs = [], []
    for i, tc in enumerate(tcs):
        a = act(caps[f"blocks_{i}/ln_2"][0] @ tc.W_enc + tc.b_enc)  # [seq, d_tc]
        acts.append(a)
        errs.append(caps[f"blocks_{i}/mlp"][0] - (a @ tc.W_dec + tc.b_dec))
    p = variables["params"]

    def param_of(path):
        node = p
        for part in path.split("/"):
            node = node[part]
        return node

    def replacement(m):
        m_tok, m_feat, m_err = m

        def around(path, module, call_next, args, kw):
            if path == "embed":
                return call_next(*args, **kw) * m_tok[None, :, None]
            if path in inv:
                return _frozen_norm(cfg, param_of(path), args[0], inv[path])
            if path.endswith("/attn/probs"):
                return caps[path]
            if path.endswith("/mlp") and path.startswith("blocks_"):
                i = int(path.split("/")[0].removeprefix("blocks_"))
                tc, x = tcs[i], args[0]
                record(f"pre_{i}", x[0] @ tc.W_enc + tc.b_enc)
                out = (m_feat[i] * acts[i]) @ tc.W_dec + tc.b_dec + m_err[i][:, None] * errs[i]
                return out[None].astype(x.dtype)
            return call_next(*args, **kw)

        out, recs = run_with_hook(model, variables, around, tokens[None])
        pre = jnp.stack([recs[f"pre_{i}"] for i in range(n_l)])  # [layer, seq, d_tc]
        return pre, out[0, -1, logit_ids]

    seq, d_tc = tokens.shape[0], tcs[0].W_enc.shape[1]
    ones = (jnp.ones(seq), jnp.ones((n_l, seq, d_tc)), jnp.ones((n_l, seq)))
    zeros = jax.tree.map(jnp.zeros_like, ones)
    value, base = replacement(ones), replacement(zeros)
    jac = jax.jacrev(replacement)(ones)  # targets x sources
    probs = jax.nn.softmax(logits[0, -1])[logit_ids]
    return value, base, jac, jnp.stack(acts), jnp.stack(errs), logits[0, -1], probs


def attribution_graph(
    model: Any,
    variables: Any,
    cfg: Any,
    tokens: Any,
    transcoders: Sequence[Transcoder],
    *,
    logit_ids: Sequence[int] | None = None,
    n_logits: int = 3,
    activation: Callable[[jax.Array], jax.Array] | None = None,
) -> AttributionGraph:
    """The attribution graph of one prompt (see the module docstring).

    Args:
      model: a :class:`~jaxinterp.models.Decoder` (gpt2 or llama family).
      variables: its variables.
      cfg: its config.
      tokens: ``[seq]`` token ids of the prompt.
      transcoders: one :class:`Transcoder` per layer (all with the same ``d_tc``).
      logit_ids: the output tokens to explain at the last position; default the ``n_logits``
        most probable.
      n_logits: how many, when ``logit_ids`` is not given.
      activation: the transcoders' activation, ``pre -> a``; default the MLP's own.

    Returns:
      An :class:`AttributionGraph` (numpy arrays). Every feature with a nonzero activation at
      some position is a node.

    Raises:
      TypeError, ValueError: a bad config, tokens not ``[seq]`` ints, transcoders of the
        wrong count or shapes, logit ids outside the vocabulary.

    >>> import jaxinterp.models as zoo
    >>> cfg = zoo.DecoderConfig(family="gpt2", n_layers=1, n_heads=2, n_kv_heads=2, d_model=8,
    ...                         d_head=4, d_mlp=16, max_positions=8, mlp_act="gelu_tanh")
    >>> m = zoo.Decoder(cfg)
    >>> v = m.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    >>> g = attribution_graph(m, v, cfg, jnp.array([1, 2, 3]), mlp_transcoders(v, cfg))
    >>> t = g.kind.index("logit")  # the edges into a logit sum to it, up to the biases
    >>> bool(np.isclose(g.adjacency[t].sum() + g.baseline[t], g.value[t], atol=1e-4))
    True
    """
    from jaxinterp.models._scan import require_unrolled

    require_unrolled(model, "attribution_graph")
    _cfg_checks(cfg)
    tokens = check_array(tokens, "tokens", ndim=1, kind="integer")
    check_ids(tokens, cfg.vocab_size, "tokens")
    tcs = [Transcoder(*map(jnp.asarray, t)) for t in transcoders]
    if len(tcs) != cfg.n_layers:
        raise ValueError(f"transcoders: expected {cfg.n_layers} (one per layer), got {len(tcs)}")
    d, d_tc = cfg.d_model, tcs[0].W_enc.shape[-1]
    for i, t in enumerate(tcs):
        want = [(d, d_tc), (d_tc,), (d_tc, d), (d,)]
        if [tuple(a.shape) for a in t] != want:
            raise ValueError(
                f"transcoders: layer {i} expected shapes {want}, got {[a.shape for a in t]}"
            )
    act = activation or _ACTS[cfg.mlp_act]
    if logit_ids is None:
        n_logits = check_int(n_logits, "n_logits", lo=1, hi=cfg.vocab_size)
        last = jax.jit(model.apply)(variables, tokens[None])[0, -1]
        logit_ids = np.argsort(-np.asarray(last), kind="stable")[:n_logits]
    logit_ids = np.asarray(logit_ids)
    if logit_ids.ndim != 1 or not ((logit_ids >= 0) & (logit_ids < cfg.vocab_size)).all():
        raise ValueError(f"logit_ids: expected ids in [0, {cfg.vocab_size}), got {logit_ids}")
    run = jax.jit(lambda v, t, tc: _core(model, v, cfg, t, tc, act, logit_ids))
    value, base, jac, acts, errs, _, probs = jax.device_get(run(variables, tokens, tcs))
    (pre, lg), (pre0, lg0) = value, base
    n_l, seq = cfg.n_layers, tokens.shape[0]
    feats = np.argwhere(acts != 0)  # [n_feat, 3]: layer, pos, index
    n_f, n_e, n_t, n_o = len(feats), n_l * seq, seq, len(logit_ids)
    big = n_f + n_e + n_t + n_o
    adj = np.zeros((big, big), np.float32)
    fl, fp, fi = feats.T
    for rows, (j_tok, j_feat, j_err) in (
        (slice(0, n_f), tuple(x[fl, fp, fi] for x in jac[0])),
        (slice(big - n_o, big), jac[1]),
    ):
        adj[rows, :n_f] = j_feat[:, fl, fp, fi]
        adj[rows, n_f : n_f + n_e] = j_err.reshape(-1, n_e)
        adj[rows, n_f + n_e : n_f + n_e + n_t] = j_tok
    nan = np.full(big, np.nan, np.float32)
    value_v, base_v, act_v = nan.copy(), nan.copy(), nan.copy()
    value_v[:n_f], base_v[:n_f], act_v[:n_f] = pre[fl, fp, fi], pre0[fl, fp, fi], acts[fl, fp, fi]
    value_v[big - n_o :], base_v[big - n_o :] = lg, lg0
    el, ep = np.divmod(np.arange(n_e), seq)
    return AttributionGraph(
        adjacency=adj,
        kind=("feature",) * n_f + ("error",) * n_e + ("token",) * n_t + ("logit",) * n_o,
        layer=np.concatenate([fl, el, np.full(n_t, -1), np.full(n_o, n_l)]).astype(np.int32),
        pos=np.concatenate([fp, ep, np.arange(n_t), np.full(n_o, seq - 1)]).astype(np.int32),
        index=np.concatenate([fi, np.full(n_e, -1), np.asarray(tokens), logit_ids]).astype(
            np.int32
        ),
        activation=act_v,
        value=value_v,
        baseline=base_v,
        logit_probs=np.asarray(probs, np.float32),
        tokens=np.asarray(tokens),
    )


def prune_graph(
    graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98
) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the nodes and edges that carry most of the influence on the logits.

    Influence as in circuit-tracer: ``A`` = ``|adjacency|`` with rows normalised to sum 1,
    ``w`` = the logits' probabilities on the logit nodes, influence ``w A (I - A)^{-1}`` (all
    paths). Features are kept in order of influence until their cumulative share reaches
    ``node_threshold``; tokens, error nodes and logits are kept. Among the edges between kept
    nodes, scored ``A[t, s] · (influence[t] + w[t])``, the largest are kept until their
    cumulative share reaches ``edge_threshold``.

    Args:
      graph: an :class:`AttributionGraph`.
      node_threshold, edge_threshold: shares in ``(0, 1]``.

    Returns:
      ``(node_mask [node], edge_mask [node, node])`` (edge mask indexed ``[target, source]``).

    Raises:
      ValueError: a threshold outside ``(0, 1]``.

    >>> kind = ("feature", "feature", "token", "logit")
    >>> adj = np.zeros((4, 4)); adj[3, 0] = 2.0; adj[3, 1] = 0.01; adj[0, 2] = 1; adj[1, 2] = 1
    >>> g = AttributionGraph(adj, kind, *(np.zeros(4),) * 6, np.ones(1), np.zeros(1))
    >>> nodes, edges = prune_graph(g, node_threshold=0.9)
    >>> nodes.tolist()
    [True, False, True, True]
    """
    for name, t in (("node_threshold", node_threshold), ("edge_threshold", edge_threshold)):
        if not isinstance(t, (int, float)) or not 0 < t <= 1:
            raise ValueError(f"{name}: expected a number in (0, 1], got {t!r}")
    a = np.abs(np.asarray(graph.adjacency, np.float64))
    rows = a.sum(1, keepdims=True)
    a = np.divide(a, rows, out=np.zeros_like(a), where=rows > 0)
    kind = np.asarray(graph.kind)
    w = np.zeros(len(kind))
    w[kind == "logit"] = graph.logit_probs / graph.logit_probs.sum()
    n = len(kind)
    infl = w @ a @ np.linalg.inv(np.eye(n) - a)
    feat = kind == "feature"
    keep = ~feat
    if feat.any():
        order = np.argsort(-infl * feat, kind="stable")[: feat.sum()]
        share = np.cumsum(infl[order]) / max(infl[feat].sum(), 1e-30)
        n_keep = int(np.searchsorted(share, node_threshold) + 1)
        keep[order[:n_keep]] = True
    score = a * (infl + w)[:, None] * keep[:, None] * keep[None, :]
    flat = np.sort(score.ravel())[::-1]
    share = np.cumsum(flat) / max(flat.sum(), 1e-30)
    cut = flat[min(int(np.searchsorted(share, edge_threshold)), len(flat) - 1)]
    edges = (score >= cut) & (score > 0)
    return keep, edges


def graph_json(
    graph: AttributionGraph,
    token_strings: Sequence[str],
    *,
    slug: str = "jaxinterp-graph",
    scan: str = "jaxinterp",
    node_mask: Any = None,
    edge_mask: Any = None,
) -> dict:
    """The graph in the JSON layout of circuit-tracer's front end.

    ``{"metadata": {slug, scan, transcoder_list, prompt_tokens, prompt, node_threshold,
    schema_version}, "qParams": {...}, "nodes": [...], "links": [{source, target, weight}]}``
    with circuit-tracer's node ids: features ``"{layer}_{feature}_{pos}"``, error nodes
    ``"{layer}_-1_{pos}"`` (its format since v0.5.1), tokens ``"E_{token}_{pos}"``, logits
    ``"{n_layers+1}_{token}_{pos}"``.
    Write it with ``json.dump`` to ``graph_files/<slug>.json`` for the front end.

    Args:
      graph: an :class:`AttributionGraph`.
      token_strings: ``[seq]`` the prompt's tokens as text (also used for logit labels when
        a logit's id is a prompt token; else ``"#id"``).
      slug, scan: the graph's name and the model's name in the metadata.
      node_mask, edge_mask: from :func:`prune_graph`; default everything.

    Raises:
      ValueError: ``token_strings`` of the wrong length; masks of the wrong shapes.

    >>> kind = ("feature", "token", "logit")
    >>> adj = np.zeros((3, 3)); adj[2, 0] = 2.0; adj[0, 1] = 1.0
    >>> g = AttributionGraph(adj, kind, np.array([0, -1, 1]), np.zeros(3, int),
    ...     np.array([5, 7, 9]), np.array([0.5, np.nan, np.nan]), *(np.zeros(3),) * 2,
    ...     np.array([0.9]), np.array([7]))
    >>> js = graph_json(g, ["hi"])
    >>> [n["node_id"] for n in js["nodes"]], js["links"][0]
    (['0_5_0', 'E_7_0', '2_9_0'], {'source': 'E_7_0', 'target': '0_5_0', 'weight': 1.0})
    """
    n = len(graph.kind)
    toks = list(token_strings)
    if len(toks) != len(graph.tokens):
        raise ValueError(f"token_strings: expected {len(graph.tokens)}, got {len(toks)}")
    nodes_on = np.ones(n, bool) if node_mask is None else np.asarray(node_mask, bool)
    edges_on = np.ones((n, n), bool) if edge_mask is None else np.asarray(edge_mask, bool)
    if nodes_on.shape != (n,) or edges_on.shape != (n, n):
        raise ValueError(f"node_mask, edge_mask: expected shapes ({n},), ({n}, {n})")
    n_layers = int(graph.layer.max())  # the logits sit at layer n_layers
    logit_layer = n_layers + 1
    ids, nodes = [], []
    li = 0
    for k in range(n):
        kind, layer, pos, idx = (
            graph.kind[k],
            int(graph.layer[k]),
            int(graph.pos[k]),
            int(graph.index[k]),
        )
        base = {"ctx_idx": pos, "run_idx": 0, "reverse_ctx_idx": 0, "clerp": "",
                "token_prob": 0.0, "is_target_logit": False, "influence": None,
                "activation": None}  # fmt: skip
        if kind == "feature":
            node_id = f"{layer}_{idx}_{pos}"
            cantor = (layer + idx) * (layer + idx + 1) // 2 + idx
            extra = {"feature": cantor, "layer": str(layer), "feature_type":
                     "cross layer transcoder", "jsNodeId": f"{layer}_{idx}-0",
                     "activation": float(graph.activation[k])}  # fmt: skip
        elif kind == "error":
            node_id = f"{layer}_-1_{pos}"
            extra = {"feature": -1, "layer": str(layer), "feature_type":
                     "mlp reconstruction error", "jsNodeId": f"{layer}_-1-{pos}"}  # fmt: skip
        elif kind == "token":
            node_id = f"E_{idx}_{pos}"
            extra = {"feature": pos, "layer": "E", "feature_type": "embedding",
                     "jsNodeId": f"E_{idx}-{pos}", "clerp": toks[pos]}  # fmt: skip
        else:
            node_id = f"{logit_layer}_{idx}_{pos}"
            p = float(graph.logit_probs[li])
            li += 1
            label = toks[list(graph.tokens).index(idx)] if idx in graph.tokens else f"#{idx}"
            extra = {"feature": idx, "layer": str(logit_layer), "feature_type": "logit",
                     "jsNodeId": f"L_{idx}-{pos}", "token_prob": p, "is_target_logit": li == 1,
                     "clerp": f'Output "{label}" (p={p:.3f})'}  # fmt: skip
        ids.append(node_id)
        if nodes_on[k]:
            nodes.append({"node_id": node_id, **base, **extra})
    links = [
        {"source": ids[s], "target": ids[t], "weight": float(graph.adjacency[t, s])}
        for t, s in zip(*np.nonzero(edges_on & (graph.adjacency != 0)))
        if nodes_on[t] and nodes_on[s]
    ]
    return {
        "metadata": {
            "slug": slug, "scan": scan, "transcoder_list": [], "prompt_tokens": toks,
            "prompt": "".join(toks), "node_threshold": None, "schema_version": 1,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                    "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }  # fmt: skip
