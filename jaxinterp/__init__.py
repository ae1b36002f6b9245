"""jaxinterp: mechanistic interpretability in JAX.

Pure functions over Flax linen and nnx models that compose with ``jit``, ``vmap``, ``grad`` and
sharding. The spine is :func:`jaxinterp.capture.capture`, which turns a model into
``f(inputs) -> (output, activations)``; each capability is a subpackage built on it:

* :mod:`jaxinterp.actmax` — activation maximization over many targets in one compiled call,
  top-k dataset examples.
* :mod:`jaxinterp.attention` — attention-weight extraction, rollout and per-head scores.
* :mod:`jaxinterp.probes` — linear probes over layers × tasks, control tasks, metrics.
* :mod:`jaxinterp.interventions` — ablation, activation and attribution patching sweeps.
* :mod:`jaxinterp.sharding` — meshes, chunking and streaming for every batched call.
* :mod:`jaxinterp.models` — reference models (trained and cached) and the MiniLM loader.
* :mod:`jaxinterp.plotting` — figures from arrays.
"""

from jaxinterp import (
    actmax,
    attention,
    capture,
    interventions,
    models,
    plotting,
    probes,
    sharding,
)

__version__ = "0.1.0"
__all__ = [
    "actmax",
    "attention",
    "capture",
    "interventions",
    "models",
    "plotting",
    "probes",
    "sharding",
]
