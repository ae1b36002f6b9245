"""8 fake CPU devices: a stack of dictionaries trained sharded equals the 1-device training.

Mesh ``data 4 × model 2``: the batch over ``data``, and either the latents (``d_sae``) or the
stack of dictionaries over ``model``. Every architecture is in the stack (BatchTopK's top-k
over the whole batch crosses the data shards, TopK's over the latents crosses the model
shards).
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxinterp import features as F  # noqa: E402
from jaxinterp.sharding import model_mesh  # noqa: E402

CFG = F.TrainConfig(lr=3e-3, max_k=3, k_aux=4, dead_tokens=32, lr_warmup=2)
SETTINGS = F.stack_settings(
    [F.topk(3), F.batch_topk(2), F.relu(0.1), F.jumprelu(0.05, bandwidth=0.1)]
)


def _fresh():
    keys = jax.random.split(jax.random.key(0), 4)
    params = jax.vmap(lambda k: F.init_params(k, 8, 16, threshold=0.05))(keys)
    return F.init_train(params, CFG)


def main() -> None:
    assert len(jax.devices()) == 8, jax.devices()
    toy = F.toy_features(jax.random.key(1), 24, 8)
    xs = np.asarray(F.toy_batch(jax.random.key(2), toy, 6 * 32, 0.2)).reshape(6, 32, 1, 8)
    xs = np.concatenate([xs, xs[:, ::-1] * 0.5], axis=2)  # two sites
    read = [0, 1, 0, 1]
    ref, ref_m = F.train_steps(_fresh(), SETTINGS, xs, read=read, config=CFG)
    mesh = model_mesh(model=2)  # data 4 × model 2
    for kw in ({"latent": "model"}, {"stack": "model"}):
        state = F.shard_state(_fresh(), mesh, **kw)
        spec = state.params.W_dec.sharding.spec
        want = P("model", None, None) if "stack" in kw else P(None, "model", None)
        assert spec == want, spec
        xb = F.shard_batch(xs, mesh)
        assert xb.sharding.spec == P(None, "data"), xb.sharding.spec
        got, got_m = F.train_steps(state, SETTINGS, xb, read=read, config=CFG)
        for name, a, b in zip(got.params._fields, got.params, ref.params):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got_m.loss, ref_m.loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got.since_fired, ref.since_fired)
        print(kw, "max |diff| W_dec", float(np.abs(got.params.W_dec - ref.params.W_dec).max()))
    # the streaming loop with mesh=: same result as without
    chunks = [xs.reshape(-1, 2, 8)[i * 64 : (i + 1) * 64] for i in range(3)]
    kw = dict(batch_size=32, steps_per_call=2, buffer_size=64, read=read, config=CFG)
    a, _ = F.train(_fresh(), SETTINGS, chunks, **kw)
    b, _ = F.train(F.shard_state(_fresh(), mesh, latent="model"), SETTINGS, chunks, mesh=mesh, **kw)
    np.testing.assert_allclose(np.asarray(b.params.W_enc), np.asarray(a.params.W_enc), atol=1e-5)
    print("ok")


if __name__ == "__main__":
    main()
