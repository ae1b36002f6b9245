"""Logit lens and tuned lens (work in progress)."""

from __future__ import annotations

from typing import Any, NamedTuple


class TunedLens(NamedTuple):
    """Per-layer affine translators (work in progress)."""

    weight: Any
    bias: Any


class LensMetrics(NamedTuple):
    """Per-layer KL and top-1 agreement (work in progress)."""

    kl: Any
    top1: Any


def decoder_readout(model: Any) -> Any:
    raise NotImplementedError


def logit_lens(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def init_tuned_lens(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def tuned_lens(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def fit_tuned_lens(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError


def lens_metrics(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError
