"""SAELens's own trainer on cached activations (run in a venv with torch + sae-lens, no jax).

    python benchmarks/_saelens_train.py ACTS.npy D_SAE K BATCH STEPS THREADS

Loads ``[tokens, d]`` float32 activations, trains a ``TopKTrainingSAE`` (``d_sae`` latents,
``k``) with ``SAETrainer`` (Adam, lr 1e-3, no logging, no checkpoints) for ``steps`` batches of
``batch`` rows fed by an iterator over the cached rows, and prints one JSON line: seconds
(whole ``fit``, first step included) and tokens per second. Called by
``benchmarks/bench_features.py --saelens PYTHON``.
"""

import json
import sys
import time

import numpy as np
import torch
from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import LoggingConfig, SAETrainerConfig


def main() -> None:
    path, d_sae, k, batch, steps, threads = sys.argv[1:7]
    d_sae, k, batch, steps, threads = int(d_sae), int(k), int(batch), int(steps), int(threads)
    torch.set_num_threads(threads)
    acts = torch.from_numpy(np.load(path).astype(np.float32))
    d = acts.shape[1]

    def batches():
        i = 0
        while True:
            j = (i * batch) % (acts.shape[0] - batch + 1)
            yield acts[j : j + batch]
            i += 1

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=d_sae, k=k))
    cfg = SAETrainerConfig(
        total_training_samples=steps * batch,
        train_batch_size_samples=batch,
        lr=1e-3,
        lr_end=1e-3,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=batches())
    t0 = time.perf_counter()
    trainer.fit()
    secs = time.perf_counter() - t0
    assert trainer.n_training_steps == steps, (trainer.n_training_steps, steps)
    print(json.dumps({"seconds": secs, "tokens_per_s": steps * batch / secs, "threads": threads}))


if __name__ == "__main__":
    main()
