"""Attribution graphs over exact transcoders, checked against the linear decomposition.

* exact transcoders (the MLP's own neurons) reconstruct the captured MLP outputs, so the
  error nodes have no effect, and the replacement model's logits equal the model's own;
* for every target (feature pre-activation, logit), the direct effects of all sources sum to
  the target minus the biases' part (the replacement model with every source off);
* one edge by hand in a 1-layer model: a feature's direct effect on a logit at the same
  position is ``a · ((W_dec[f] - mean) · inv_σ · scale) · W_U[:, token]``, from captured values;
* pruning keeps the logits and the JSON has circuit-tracer's keys, ids unique, links between
  kept nodes.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxinterp.models as zoo
from jaxinterp.circuits import (
    AttributionGraph,
    Transcoder,
    attribution_graph,
    graph_json,
    mlp_transcoders,
    prune_graph,
)
from jaxinterp.interventions import capture_sites


def _setup(n_layers):
    cfg = zoo.DecoderConfig(
        family="gpt2", vocab_size=32, d_model=16, n_layers=n_layers, n_heads=2, n_kv_heads=2,
        d_head=8, d_mlp=16, max_positions=8, qkv_bias=True, o_bias=True, mlp_bias=True,
        tie_embeddings=True, mlp_act="gelu_tanh",
    )  # fmt: skip
    model = zoo.Decoder(cfg)
    variables = jax.jit(model.init)(jax.random.key(n_layers), jnp.zeros((1, 5), jnp.int32))
    variables = jax.tree.map(lambda a: a * 4.0, variables)  # bigger weights: nonlinear
    tokens = jnp.array([3, 7, 1, 9, 4])
    return cfg, model, variables, tokens


@pytest.fixture(scope="module")
def two_layer():
    cfg, model, variables, tokens = _setup(2)
    tcs = mlp_transcoders(variables, cfg)
    return (
        cfg,
        model,
        variables,
        tokens,
        tcs,
        attribution_graph(model, variables, cfg, tokens, tcs, n_logits=2),
    )


def test_edges_sum_to_each_target_and_logits_match_the_model(two_layer):
    cfg, model, variables, tokens, tcs, g = two_layer
    kind = np.asarray(g.kind)
    assert (kind == "logit").sum() == 2 and (kind == "token").sum() == 5
    logits = np.asarray(model.apply(variables, tokens[None]))[0, -1]
    lg = kind == "logit"
    np.testing.assert_allclose(g.value[lg], logits[g.index[lg]], rtol=1e-4, atol=1e-4)
    # the two most probable tokens, by the model's own softmax
    assert list(g.index[lg]) == list(np.argsort(-logits)[:2])
    targets = (kind == "feature") | lg
    np.testing.assert_allclose(
        g.adjacency[targets].sum(1) + g.baseline[targets], g.value[targets], rtol=1e-3, atol=2e-3
    )
    # exact transcoders: reconstruction = captured MLP output, so error nodes do nothing
    sites = [f"blocks_{i}/{s}" for i in range(2) for s in ("ln_2", "mlp")]
    _, caps = capture_sites(model, variables, sites)(tokens[None])
    for i, tc in enumerate(tcs):
        a = jax.nn.gelu(caps[f"blocks_{i}/ln_2"][0] @ tc.W_enc + tc.b_enc, approximate=True)
        np.testing.assert_allclose(
            a @ tc.W_dec + tc.b_dec, caps[f"blocks_{i}/mlp"][0], rtol=1e-4, atol=1e-4
        )
    assert np.abs(g.adjacency[:, kind == "error"]).max() < 1e-3
    # sources only: no incoming edges; the features' layer order: no edge from a later layer
    assert not g.adjacency[(kind == "token") | (kind == "error")].any()
    f = np.nonzero(kind == "feature")[0]
    later = g.layer[f][None, :] >= g.layer[f][:, None]  # [target, source]
    assert np.abs(g.adjacency[np.ix_(f, f)][later]).max() < 1e-6


def test_one_feature_to_logit_edge_by_hand():
    cfg, model, variables, tokens = _setup(1)
    tcs = mlp_transcoders(variables, cfg)
    g = attribution_graph(model, variables, cfg, tokens, tcs, logit_ids=[5])
    kind = np.asarray(g.kind)
    _, caps = capture_sites(model, variables, ["ln_f:input"])(tokens[None])
    x = np.asarray(caps["ln_f:input"])[0, -1]
    inv = 1 / np.sqrt(((x - x.mean()) ** 2).mean() + cfg.norm_eps)
    p = variables["params"]
    scale, w_u = np.asarray(p["ln_f"]["scale"]), np.asarray(p["embed"]["tok"]["embedding"]).T
    w_dec = np.asarray(tcs[0].W_dec)
    t = int(np.nonzero(kind == "logit")[0][0])
    checked = 0
    for k in np.nonzero((kind == "feature") & (g.pos == 4))[0][:6]:
        v = w_dec[g.index[k]]
        want = g.activation[k] * ((v - v.mean()) * inv * scale) @ w_u[:, 5]
        np.testing.assert_allclose(g.adjacency[t, k], want, rtol=1e-3, atol=1e-5)
        checked += 1
    assert checked == 6
    # a feature at an earlier position reaches the last position's logit only through
    # attention, which comes before the MLP in a 1-layer model: no direct effect
    early = (kind == "feature") & (g.pos < 4)
    assert np.abs(g.adjacency[t, early]).max() == 0.0


def test_prune_and_json(two_layer):
    *_, g = two_layer
    nodes, edges = prune_graph(g, node_threshold=0.5, edge_threshold=0.9)
    kind = np.asarray(g.kind)
    assert (
        nodes[kind == "logit"].all()
        and 0 < nodes[kind == "feature"].sum() < (kind == "feature").sum()
    )
    assert not edges[:, ~nodes].any() and not edges[~nodes].any()
    js = json.loads(json.dumps(graph_json(g, list("abcde"), node_mask=nodes, edge_mask=edges)))
    assert set(js) == {"metadata", "qParams", "nodes", "links"}
    ids = [n["node_id"] for n in js["nodes"]]
    assert len(ids) == len(set(ids)) == nodes.sum()
    assert {lk["source"] for lk in js["links"]} | {lk["target"] for lk in js["links"]} <= set(ids)
    assert len(js["links"]) == int((edges & (g.adjacency != 0)).sum())
    logit_nodes = [n for n in js["nodes"] if n["feature_type"] == "logit"]
    assert [n["is_target_logit"] for n in logit_nodes] == [True, False]
    assert js["metadata"]["prompt_tokens"] == list("abcde")


def test_bad_inputs(two_layer):
    cfg, model, variables, tokens, tcs, g = two_layer
    bad = Transcoder(tcs[0].W_enc[:, :3], *tcs[0][1:])
    cases = [
        ("cfg", lambda: attribution_graph(model, variables, "c", tokens, tcs), TypeError),
        ("cfg", lambda: mlp_transcoders(variables, zoo.DecoderConfig(family="llama")), ValueError),
        ("tokens", lambda: attribution_graph(model, variables, cfg, tokens[None], tcs), ValueError),
        ("transcoders", lambda: attribution_graph(model, variables, cfg, tokens, tcs[:1]),
         ValueError),
        ("transcoders", lambda: attribution_graph(model, variables, cfg, tokens, [bad, tcs[1]]),
         ValueError),
        ("logit_ids", lambda: attribution_graph(model, variables, cfg, tokens, tcs,
                                                logit_ids=[32]), ValueError),
        ("node_threshold", lambda: prune_graph(g, node_threshold=0.0), ValueError),
        ("token_strings", lambda: graph_json(g, ["a"]), ValueError),
    ]  # fmt: skip
    for name, call, err in cases:
        with pytest.raises(err, match=name):
            call()
    assert isinstance(g, AttributionGraph)
