"""Two processes × 4 CPU devices joined by ``jax.distributed``: the multi-host code path.

Run without arguments, this script starts two copies of itself (process 0 and 1) that
connect to a coordinator on localhost, build one 8-device mesh spanning both processes and
run the same :func:`jaxinterp.sharding.shard_batched` capture call as on one host. Each
process checks its addressable shards against a single-device reference.
"""

import os
import re
import socket
import subprocess
import sys


def worker(pid: int, port: int) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
    import numpy as np
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxinterp import models
    from jaxinterp.capture import capture
    from jaxinterp.sharding import data_mesh, shard_batched

    assert jax.device_count() == 8 and jax.local_device_count() == 4
    tf = models.offset_transformer()
    tokens = np.asarray(models.offset_batch(jax.random.key(0), 16, 16, 16, 3).tokens)
    f = capture(tf.model, tf.variables, select="block_1")
    with jax.default_device(jax.local_devices(backend="cpu")[0]):
        ref_out, ref = jax.jit(f)(tokens)

    mesh = data_mesh()
    rows = NamedSharding(mesh, P("data"))
    local = tokens[pid * 8 : (pid + 1) * 8]  # each host loads only its own rows
    global_tokens = jax.make_array_from_process_local_data(rows, local, tokens.shape)
    out, acts = jax.jit(shard_batched(f, mesh))(global_tokens)
    for shard in acts["block_1"].addressable_shards:
        np.testing.assert_allclose(
            shard.data, np.asarray(ref["block_1"])[shard.index], rtol=1e-5, atol=1e-5
        )
    for shard in out.addressable_shards:
        np.testing.assert_allclose(
            shard.data, np.asarray(ref_out)[shard.index], rtol=1e-5, atol=1e-5
        )
    jax.distributed.shutdown()
    print(f"process {pid} ok", flush=True)


def main() -> None:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    # keep the caller's XLA_FLAGS (e.g. --xla_cpu_max_isa), less any device count: the workers
    # set 4 devices each
    env = dict(os.environ)
    env["XLA_FLAGS"] = re.sub(
        r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", "")
    )
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(pid), str(port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in range(2)
    ]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    for pid, (p, o) in enumerate(zip(procs, outs)):
        if p.returncode != 0 or f"process {pid} ok" not in o:
            print(o[-3000:])
            sys.exit(1)
    print("ok")


if __name__ == "__main__":
    if len(sys.argv) == 3:
        worker(int(sys.argv[1]), int(sys.argv[2]))
    else:
        main()
