"""Activation maximization (feature visualization), compiled and batched over targets.

Objectives are pure functions of captured activations; :func:`maximize` runs the whole gradient
ascent in one ``lax.scan`` under ``jit``, vmapped over a ``[target]`` axis (chunked to a memory
budget, optionally split over a device mesh); :func:`top_k_examples` streams a dataset for the
examples that excite each target most.
"""

from jaxinterp.actmax._maximize import ActMaxResult, maximize
from jaxinterp.actmax._objectives import (
    INPUT,
    OUTPUT,
    Objective,
    blur,
    channel,
    class_logit,
    deepdream,
    direction,
    diversity,
    l1,
    l2,
    neuron,
    total_variation,
)
from jaxinterp.actmax._param import (
    Param,
    fourier,
    nearest_tokens,
    norm_ball,
    pixel,
    soft_prompt,
)
from jaxinterp.actmax._topk import TopK, top_k_examples
from jaxinterp.actmax._transforms import (
    Transform,
    compose,
    jitter,
    pad,
    random_rotate,
    random_scale,
    standard_transforms,
)

__all__ = [
    "INPUT",
    "OUTPUT",
    "ActMaxResult",
    "Objective",
    "Param",
    "TopK",
    "Transform",
    "blur",
    "channel",
    "class_logit",
    "compose",
    "deepdream",
    "direction",
    "diversity",
    "fourier",
    "jitter",
    "l1",
    "l2",
    "maximize",
    "nearest_tokens",
    "neuron",
    "norm_ball",
    "pad",
    "pixel",
    "random_rotate",
    "random_scale",
    "soft_prompt",
    "standard_transforms",
    "top_k_examples",
    "total_variation",
]
