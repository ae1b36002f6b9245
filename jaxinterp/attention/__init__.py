"""Attention weights from Flax models, their analysis, and dataset-level statistics.

* :func:`attention_weights` — ``f(*inputs) -> (output, {path: [batch, head, q, k]})`` for any
  linen or nnx model whose attention calls a softmax: Flax's attention modules, models calling
  ``dot_product_attention_weights`` (Hugging Face Flax BERT/GPT-2/ViT) and hand-written
  ``softmax(q kᵀ)`` (Gemma's ``[batch, q, head, k]`` layout is detected and transposed;
  ``layout=`` when the shapes cannot tell). ``weights_at=`` takes module outputs as weights;
  :func:`attention_from_qk` recomputes them from captured projections (fused kernels);
  :func:`stack_layers` gives ``[layer, batch, head, q, k]``.
* Scores on ``[..., q, k]``: :func:`rollout`, :func:`head_entropy`,
  :func:`mean_attention_distance`, :func:`attention_to`, :func:`offset_score`,
  :func:`prev_token_score`, :func:`induction_score`; :func:`repeated_tokens` makes inputs on
  which induction heads show.
* :func:`attention_stats` — a per-example statistic averaged over a dataset in chunks (memory
  independent of its size), optionally over a device mesh.
"""

from jaxinterp.attention._analysis import (
    attention_to,
    head_entropy,
    induction_score,
    mean_attention_distance,
    offset_score,
    prev_token_score,
    rollout,
)
from jaxinterp.attention._extract import (
    attention_from_qk,
    attention_weights,
    layer_order,
    stack_layers,
)
from jaxinterp.attention._stream import attention_stats
from jaxinterp.attention._tasks import repeated_tokens

__all__ = [
    "attention_from_qk",
    "attention_stats",
    "attention_to",
    "attention_weights",
    "head_entropy",
    "induction_score",
    "layer_order",
    "mean_attention_distance",
    "offset_score",
    "prev_token_score",
    "repeated_tokens",
    "rollout",
    "stack_layers",
]
