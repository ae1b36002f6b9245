"""Any analysis vmapped over a stack of checkpoints of one architecture (work in progress)."""

from __future__ import annotations

from typing import Any


def stack_checkpoints(variables: Any) -> Any:
    """Stacks checkpoints (work in progress)."""
    raise NotImplementedError


def over_checkpoints(fn: Any, stacked_variables: Any) -> Any:
    """Runs ``fn`` over a stack of checkpoints (work in progress)."""
    raise NotImplementedError
