"""Activation capture for Flax linen and nnx models, with one canonical path naming.

The data path reads top to bottom: :func:`run_with_hook` runs a model with a function around
every submodule call (and carries recorded values out of scans, remat and vmap);
:func:`capture` keeps module outputs by selector; :func:`run_sites` applies edits and records
sites (inputs, outputs, pytree elements, single scan steps), which is what
:mod:`jaxinterp.interventions` and the other analyses build on. Path and site naming, per model
pattern, is documented in :mod:`jaxinterp.capture._paths`.
"""

from jaxinterp.capture._capture import Activations, capture, list_paths
from jaxinterp.capture._hooks import (
    LOST_PATTERNS,
    Call,
    Records,
    apply_with_hook,
    check_model,
    current_call,
    is_linen,
    is_nnx,
    record,
    run_with_hook,
)
from jaxinterp.capture._paths import (
    Selector,
    Site,
    as_matcher,
    canonical_path,
    glob_match,
    parse_site,
    record_key,
)
from jaxinterp.capture._sites import Layout, check_sites, run_sites, split_layout

__all__ = [
    "LOST_PATTERNS",
    "Activations",
    "Call",
    "Layout",
    "Records",
    "Selector",
    "Site",
    "apply_with_hook",
    "as_matcher",
    "canonical_path",
    "capture",
    "check_model",
    "check_sites",
    "current_call",
    "glob_match",
    "is_linen",
    "is_nnx",
    "list_paths",
    "parse_site",
    "record",
    "record_key",
    "run_sites",
    "run_with_hook",
    "split_layout",
]
