"""Steering and generation (work in progress)."""

from __future__ import annotations

from typing import Any


def add(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def contrastive_direction(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def generate(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def steering_sweep(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError
