"""jaxinterp: mechanistic interpretability in JAX."""

from jaxinterp.capture import capture, list_paths

__version__ = "0.1.0"
__all__ = ["capture", "list_paths"]
