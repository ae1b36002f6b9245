"""The real-model path of ``scripts/features_smollm2.py`` on SmolLM2-135M, kept small (one
compiled forward): two layers' residual streams streamed (first position left out), two SAEs
trained in one call, their metrics against numpy. (``spliced_loss(where=...)`` is checked
against a manual splice on a small model in ``test_features_metrics.py``.)"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxinterp import features as F

SITES = ["blocks_1", "blocks_2"]


def test_two_layers_stream_train_and_metrics(smollm2):
    tok = smollm2.tokenizer
    text = "The cat sat on the mat. A dog ran in the park and the children laughed at it."
    ids = np.asarray(tok.encode(text)[:16], np.int32)
    toks = jnp.asarray(np.stack([ids, ids[::-1]]))  # [2, 16]
    not_first = lambda x: np.broadcast_to(np.arange(x.shape[1]) > 0, x.shape)  # noqa: E731
    chunk = next(
        F.activation_chunks(smollm2.model, smollm2.variables, SITES, [toks], keep=not_first)
    )
    assert chunk.shape == (30, 2, 576)
    d_sae, cfg = 64, F.TrainConfig(lr=1e-3, max_k=8)
    keys = jax.random.split(jax.random.key(0), 2)
    state = F.init_train(jax.vmap(lambda k: F.init_params(k, 576, d_sae))(keys), cfg)
    settings = F.stack_settings([F.topk(8), F.topk(8)])
    x = chunk / np.sqrt((chunk**2).sum(-1).mean(0))[:, None] * 24.0  # unit variance per site
    state, m = F.train_steps(state, settings, x[None], read=[0, 1], config=cfg)
    assert m.l0.shape == (1, 2) and np.all(np.isfinite(m.loss))
    met = F.evaluate(state.params, settings, [x], read=[0, 1], max_k=8)
    for j in range(2):
        p = jax.tree.map(lambda a, j=j: a[j], state.params)
        rec = np.asarray(F.reconstruct(p, F.topk(8), jnp.asarray(x[:, j]), max_k=8), np.float64)
        y = x[:, j].astype(np.float64)
        fvu = ((y - rec) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
        np.testing.assert_allclose(met.fvu[j], fvu, rtol=1e-4)
        np.testing.assert_allclose(met.l0[j], 8.0)
