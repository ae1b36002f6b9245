"""Dictionary learning: sparse autoencoders, transcoders and crosscoders, many trained at once.

A dictionary is a :class:`Params` pytree (``W_enc [*in_shape, d_sae]``, ``b_enc``,
``W_dec [d_sae, *out_shape]``, ``b_dec``, ``threshold``) and a :class:`Setting` of numbers
(architecture code, sparsity coefficient, ``k``, JumpReLU bandwidth, AuxK coefficient).
:func:`encode`, :func:`decode` and :func:`loss` are written for one example; the batch is a
vmap, and so is the *stack*: dictionaries of one shape and any architecture, sparsity or site
train together in one compiled step (:func:`train_steps`: ``vmap`` over the stack inside a
``lax.scan`` over steps). The pieces:

* architectures (design notes in ``jaxinterp/features/_arch.py``): :func:`relu`
  (decoder-norm-weighted L1), :func:`topk` and :func:`batch_topk` (AuxK loss on dead
  latents), :func:`jumprelu`
  (straight-through estimator for the threshold, L0 penalty); transcoders (``in_shape !=
  out_shape``) and crosscoders (``in_shape = (n_sources, d)``, exclusive latents via a
  decoder mask);
* training (:func:`init_train`, :func:`train_steps`, :func:`train`): optax Adam, unit-norm
  decoder rows with the parallel gradient removed, learning-rate and sparsity warm-up,
  activations streamed from a model (:func:`activation_chunks`) through a host
  :class:`ShuffleBuffer`, ``.npz`` checkpoints, live metrics; sharded over a device mesh
  (batch over a data axis with :func:`shard_batch`, latents or the stack over a model axis
  with :func:`shard_state`);
* metrics: :func:`evaluate` (L0, FVU, firing frequency, dead and dense latents, streamed) and
  :func:`spliced_loss` (the model's loss with the reconstruction spliced in through
  :func:`jaxinterp.interventions.intervene`, vs clean and zero-ablation);
* files: :func:`save_saelens` / :func:`load_saelens` (SAELens's ``cfg.json`` +
  ``sae_weights.safetensors``);
* analysis: :func:`top_activations`, :func:`activation_histogram`, :func:`logit_effects`,
  :func:`steer` (an ``intervene`` edit), :func:`feature_objective` (a latent as an
  objective of :func:`jaxinterp.actmax.maximize`), :func:`feature_dashboard` (an interactive page of
  features' top examples, :func:`jaxinterp.viz.feature_gallery`);
* a superposition toy with known features: :func:`toy_features`, :func:`toy_batch`,
  :func:`max_cosine`.

Example: a TopK and a ReLU SAE on two sites, in one compiled call::

    params = jax.vmap(lambda k: init_params(k, d, 4 * d))(jax.random.split(key, 2))
    state = init_train(params, config)
    state, metrics = train_steps(state, stack_settings([topk(8), relu(0.3)]), xs,
                                 read=[0, 1], config=config)   # xs: [steps, batch, site, d]
"""

from jaxinterp.features._analysis import (
    TopActivations,
    activation_histogram,
    feature_dashboard,
    feature_objective,
    logit_effects,
    steer,
    top_activations,
)
from jaxinterp.features._arch import (
    ARCHS,
    Loss,
    Params,
    Setting,
    batch_topk,
    batch_topk_threshold,
    decode,
    decoder_norms,
    encode,
    init_params,
    jump_ste,
    jumprelu,
    loss,
    pre_activations,
    relu,
    stack_settings,
    step_ste,
    topk,
)
from jaxinterp.features._metrics import (
    Metrics,
    SplicedLoss,
    evaluate,
    reconstruct,
    spliced_loss,
)
from jaxinterp.features._saelens import load_saelens, save_saelens
from jaxinterp.features._shard import shard_batch, shard_state
from jaxinterp.features._stream import (
    ShuffleBuffer,
    activation_chunks,
    load_checkpoint,
    save_checkpoint,
    train,
)
from jaxinterp.features._toy import max_cosine, toy_batch, toy_features
from jaxinterp.features._train import (
    StepMetrics,
    TrainConfig,
    TrainState,
    archs_of,
    init_train,
    train_steps,
)

__all__ = [
    "ARCHS",
    "TopActivations",
    "activation_histogram",
    "feature_dashboard",
    "feature_objective",
    "logit_effects",
    "steer",
    "top_activations",
    "load_saelens",
    "save_saelens",
    "max_cosine",
    "toy_batch",
    "toy_features",
    "Metrics",
    "SplicedLoss",
    "evaluate",
    "reconstruct",
    "spliced_loss",
    "shard_batch",
    "shard_state",
    "ShuffleBuffer",
    "activation_chunks",
    "load_checkpoint",
    "save_checkpoint",
    "train",
    "Loss",
    "Params",
    "Setting",
    "StepMetrics",
    "TrainConfig",
    "TrainState",
    "archs_of",
    "batch_topk",
    "batch_topk_threshold",
    "decode",
    "decoder_norms",
    "encode",
    "init_params",
    "init_train",
    "jump_ste",
    "jumprelu",
    "loss",
    "pre_activations",
    "relu",
    "stack_settings",
    "step_ste",
    "topk",
    "train_steps",
]
