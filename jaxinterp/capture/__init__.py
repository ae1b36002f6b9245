"""Activation capture for Flax linen and nnx models, with one canonical path naming."""

from jaxinterp.capture._capture import Activations, capture, list_paths
from jaxinterp.capture._hooks import apply_with_hook
from jaxinterp.capture._paths import Selector, as_matcher, canonical_path

__all__ = [
    "Activations",
    "Selector",
    "apply_with_hook",
    "as_matcher",
    "canonical_path",
    "capture",
    "list_paths",
]
