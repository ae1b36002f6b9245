"""jaxinterp: mechanistic interpretability in JAX.

Pure functions over Flax linen and nnx models that compose with ``jit``, ``vmap``, ``grad`` and
sharding. The spine is :func:`jaxinterp.capture.capture`, which turns a model into
``f(inputs) -> (output, activations)``; each capability is a subpackage built on it:

* :mod:`jaxinterp.actmax` — activation maximization over many targets in one compiled call,
  top-k dataset examples.
* :mod:`jaxinterp.attention` — attention-weight extraction, rollout and per-head scores.
* :mod:`jaxinterp.probes` — linear probes over layers × tasks, control tasks, metrics.
* :mod:`jaxinterp.features` — sparse dictionaries (SAEs, transcoders, crosscoders) trained
  many at once, metrics, SAELens files, feature analysis.
* :mod:`jaxinterp.interventions` — ablation, activation and attribution patching sweeps.
* :mod:`jaxinterp.circuits` — logit / tuned lens, steering with generation, edge attribution
  and path patching, attribution graphs, any analysis over a stack of checkpoints.
* :mod:`jaxinterp.sharding` — meshes, chunking and streaming for every batched call.
* :mod:`jaxinterp.models` — reference models (trained and cached) and the MiniLM loader.
* :mod:`jaxinterp.plotting` — figures from arrays (matplotlib is imported on first use).

**Errors and value checks — one policy everywhere.**

1. Checks that depend only on shapes, dtypes and Python arguments run when a function is called
   or traced, so they hold under ``jit`` and ``vmap``. They raise ``TypeError`` or
   ``ValueError`` (``KeyError`` for an unknown module path) with a message that names the
   argument, then what was expected and what was given.
2. Value checks (NaN/inf in data, an index outside its axis) on concrete arrays raise the same
   way, before any work is done.
3. Under ``jit`` values are unknown while tracing. A failed value check then never clamps or
   wraps: the results it affects come out NaN (float results) or -1 (integer results), and the
   check is registered with :mod:`jax.experimental.checkify`, so ``jaxinterp.checked(f)``
   (or the caller's own ``checkify.checkify``) raises the same message.
"""

from typing import Any

from jaxinterp import (
    actmax,
    attention,
    capture,
    circuits,
    features,
    interventions,
    models,
    probes,
    sharding,
)
from jaxinterp._checks import checked

__version__ = "0.1.0"
__all__ = [
    "actmax",
    "attention",
    "capture",
    "checked",
    "circuits",
    "features",
    "interventions",
    "models",
    "plotting",
    "probes",
    "sharding",
    "viz",
]


def __getattr__(name: str) -> Any:
    # matplotlib is heavy (about 1 s to import): load the plotting package on first use.
    if name in ("plotting", "viz"):
        import importlib

        return importlib.import_module(f"jaxinterp.{name}")
    raise AttributeError(f"module 'jaxinterp' has no attribute {name!r}")
