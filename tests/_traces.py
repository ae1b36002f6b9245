"""Which functions jax traced while a call ran, from jax's own trace events (never timed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"


def traced_names(fn: Callable[[], Any]) -> list[str]:
    """Runs ``fn()`` (its result blocked on) and returns the names of the functions traced."""
    names: list[str] = []

    def listener(event: str, duration: float, **kwargs: Any) -> None:
        if event == TRACE_EVENT:
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        jax.block_until_ready(fn())
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return names
