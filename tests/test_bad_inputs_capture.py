"""Bad inputs to capture, list_paths, the hook, sites and interventions: a clear error each.

Every row asserts the exception type and that the message starts with the argument's name.
The regression rows from issues 10 and 11 are marked in their ids.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from jaxinterp.capture import (
    apply_with_hook,
    capture,
    current_call,
    list_paths,
    parse_site,
    record,
    run_sites,
    run_with_hook,
)
from jaxinterp.interventions import capture_sites, intervene

X = jnp.ones((2, 3))


class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(2, name="out")(nn.Dense(4, name="hid")(x))


class BN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        return nn.BatchNorm(use_running_average=not train, name="bn")(nn.Dense(4, name="d")(x))


class Raises(nn.Module):
    @nn.compact
    def __call__(self, x):
        return {"a": nn.Dense(2, name="d")(x)}["missing"]


class Cond(nn.Module):
    @nn.compact
    def __call__(self, x):
        d = nn.Dense(3, name="inner")
        if self.is_initializing():
            d(x)
        return nn.cond(x.sum() > 0, lambda m, x: m(x), lambda m, x: x, d, x)


M = Two()
V = M.init(jax.random.key(0), X)
OTHER = Two().init(jax.random.key(0), jnp.ones((2, 5)))  # kernel of 'hid' is (5, 4)
BNM = BN()
BNV = BNM.init(jax.random.key(0), X)
CM = Cond()
CV = CM.init(jax.random.key(0), X)
NNX = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
ID = lambda p, m, nxt, a, k: nxt(*a, **k)  # noqa: E731
NO_PARAMS = {"params": {"out": V["params"]["out"]}}
RAISES_V = {"params": {"d": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}


def _tonnx():
    m = nnx.bridge.ToNNX(Two(), rngs=nnx.Rngs(0))
    nnx.bridge.lazy_init(m, X)
    return m


# (id, callable, exception, message regex from the start)
ROWS = [
    # capture
    ("capture-model", lambda: capture(lambda x: x, None), TypeError, "model"),
    ("capture-linen-no-vars", lambda: capture(M, None), TypeError, "variables"),
    ("capture-linen-vars-list", lambda: capture(M, [1]), TypeError, "variables"),
    ("capture-nnx-vars", lambda: capture(NNX, V), TypeError, "variables"),
    ("capture-select-type", lambda: capture(M, V, select=[1, 2]), TypeError, "select"),
    ("capture-select-unknown", lambda: capture(M, V, select="nope")(X), KeyError, "select"),
    (
        "issue10-capture-vars-other-model",
        lambda: capture(M, OTHER)(X),
        ValueError,
        r"variables: parameter 'hid/kernel' has shape \(5, 4\).*expects \(3, 4\)",
    ),
    (
        "issue10-capture-wrong-input-shape",
        lambda: capture(M, V)(jnp.ones((2, 7))),
        ValueError,
        r"variables: parameter 'hid/kernel' has shape \(3, 4\).*expects \(7, 4\)",
    ),
    ("issue10-capture-vars-missing", lambda: capture(M, NO_PARAMS)(X), ValueError, "variables"),
    (
        "issue11-batchnorm-train-default",
        lambda: capture(BNM, BNV)(X),
        ValueError,
        r"mutable: .*batch_stats.*train=False",
    ),
    ("capture-method-name", lambda: capture(NNX, method="nope")(X), ValueError, "method"),
    ("capture-method-type", lambda: capture(NNX, method=3)(X), TypeError, "method"),
    ("capture-methods-type", lambda: capture(M, V, methods=[3])(X), TypeError, "methods"),
    ("capture-inside-cond", lambda: capture(CM, CV, select="inner")(X), ValueError, "select"),
    # list_paths
    ("list_paths-model", lambda: list_paths(3, None, X), TypeError, "model"),
    ("list_paths-vars", lambda: list_paths(M, OTHER, X), ValueError, "variables"),
    (
        "issue10-list_paths-model-keyerror",
        lambda: list_paths(Raises(), RAISES_V, X),
        KeyError,
        "missing",
    ),
    # the hook
    ("hook-around", lambda: apply_with_hook(M, V, 3, X), TypeError, "around"),
    ("hook-model", lambda: run_with_hook(None, None, ID, X), TypeError, "model"),
    ("hook-method", lambda: run_with_hook(M, V, ID, X, method=1.5), TypeError, "method"),
    ("record-outside", lambda: record("a", X), RuntimeError, "record"),
    ("current_call-outside", lambda: current_call(), RuntimeError, "current_call"),
    # sites
    ("site-type", lambda: parse_site(5), TypeError, "site"),
    ("site-empty", lambda: parse_site(""), TypeError, "site"),
    ("site-suffix", lambda: parse_site("hid:weights"), ValueError, "site"),
    ("site-element", lambda: parse_site("hid:output[x"), ValueError, "site"),
    ("site-input-arg", lambda: parse_site("hid:input-x"), ValueError, "site"),
    # intervene
    ("intervene-edits-type", lambda: intervene(M, V, [("hid", abs)]), TypeError, "edits"),
    ("intervene-edit-callable", lambda: intervene(M, V, {"hid": 3.0}), TypeError, "edits"),
    ("intervene-bad-site", lambda: intervene(M, V, {"hid:foo": abs}), ValueError, "site"),
    ("intervene-no-match", lambda: intervene(M, V, {"nope": abs})(X), KeyError, "edits"),
    (
        "intervene-shape",
        lambda: intervene(M, V, {"hid": lambda a: a[:, :2]})(X),
        ValueError,
        r"edits: the edit for 'hid' returned shape \(2, 2\)",
    ),
    (
        "intervene-dtype",
        lambda: intervene(M, V, {"hid": lambda a: a.astype(jnp.int32)})(X),
        ValueError,
        "edits",
    ),
    (
        "issue11-intervene-tuple-structure",
        lambda: intervene(M, V, {"hid": lambda a: (a, a)})(X),
        ValueError,
        "edits",
    ),
    ("intervene-element", lambda: intervene(M, V, {"hid:output[1]": abs})(X), ValueError, "site"),
    ("intervene-step-unscanned", lambda: intervene(M, V, {"hid[0]": abs})(X), ValueError, "site"),
    ("intervene-model", lambda: intervene("m", None, {"a": abs}), TypeError, "model"),
    # capture_sites / run_sites
    ("capture_sites-type", lambda: capture_sites(M, V, 3), TypeError, "sites"),
    ("capture_sites-every-call", lambda: capture_sites(M, V, ["hid@*"]), ValueError, "sites"),
    ("capture_sites-unknown", lambda: capture_sites(M, V, ["nope"])(X), KeyError, "sites"),
    (
        "capture_sites-call-never-made",
        lambda: capture_sites(M, V, ["hid@1"])(X),
        KeyError,
        "sites",
    ),
    ("capture_sites-arg-name", lambda: capture_sites(M, V, ["hid:input.y"])(X), ValueError, "site"),
    ("capture_sites-arg-pos", lambda: capture_sites(M, V, ["hid:input[3]"])(X), ValueError, "site"),
    ("capture_sites-inside-cond", lambda: capture_sites(CM, CV, ["inner"])(X), ValueError, "sites"),
    ("run_sites-edits-type", lambda: run_sites(M, V, X, edits=3), TypeError, "edits"),
    # issue 20: nnx.bridge.ToNNX as the root said "the model has no submodules"
    ("capture-tonnx-root", lambda: capture(_tonnx()), TypeError, "model: an nnx.bridge.ToNNX"),
    ("list_paths-tonnx-root", lambda: list_paths(_tonnx(), None, X), TypeError, "model"),
    # issue 20: an element index past an array output was clamped by jnp (row 1 of 2)
    (
        "run_sites-element-past-array",
        lambda: run_sites(M, V, X, sites=["hid:output[20]"]),
        ValueError,
        r"site: 'hid:output\[20\]': .* out of range for axis 0 of size 2",
    ),
    (
        "capture_sites-element-past-array",
        lambda: capture_sites(M, V, ["hid:output[-3]"])(X),
        ValueError,
        "site",
    ),
]


@pytest.mark.parametrize("fn,exc,msg", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_bad_input(fn, exc, msg):
    # KeyError's str() is the repr of its message, so allow one leading quote.
    pattern = f"^['\"]?{msg}" if exc is KeyError else f"^{msg}"
    with pytest.raises(exc, match=pattern):
        fn()


def test_translated_error_is_chained_from_flax():
    import flax.errors

    with pytest.raises(ValueError) as info:
        capture(M, OTHER)(X)
    assert isinstance(info.value.__cause__, flax.errors.ScopeParamShapeError)


def test_eval_mode_and_mutable_both_work():
    """The routes the BatchNorm message suggests do run."""
    out, acts = capture(BNM, BNV, select="bn")(X, train=False)
    assert acts["bn"].shape == (2, 4)
    # mutable= goes through the hook directly
    (_, updates) = apply_with_hook(BNM, BNV, ID, X, mutable=["batch_stats"])
    assert "batch_stats" in updates
