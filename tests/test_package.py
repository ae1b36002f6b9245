"""The package itself: import cost, shipped typing information, type aliases, test helpers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import typing
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxinterp
from jaxinterp import _types, actmax
from jaxinterp import interventions as iv

PACKAGE = Path(jaxinterp.__file__).resolve().parent
ROOT = PACKAGE.parent

PROBE = """
import json, sys
import jaxinterp
before = sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib")
jaxinterp.plotting.attention_heatmap  # first use loads plotting, and matplotlib with it
after = "matplotlib.figure" in sys.modules
print(json.dumps({"before": before, "after": after}))
"""


def test_import_does_not_load_matplotlib():
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,  # this checkout's jaxinterp comes first on sys.path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"before": [], "after": True}


def test_py_typed_is_shipped():
    assert (PACKAGE / "py.typed").is_file()
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ImportError:  # Python 3.10
        assert 'jaxinterp = ["py.typed"]' in text
    else:
        data = tomllib.loads(text)["tool"]["setuptools"]["package-data"]
        assert "py.typed" in data["jaxinterp"]


def test_types_module_imports_nothing_from_jaxinterp():
    # so any module of the package can import it without a cycle
    tree = ast.parse((PACKAGE / "_types.py").read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [m for m in imported if m.split(".")[0] == "jaxinterp"]
    assert all(hasattr(_types, name) for name in _types.__all__)


def test_types_describe_the_library_objects(offset_tf, offset_nnx):
    # a model and its variables, linen and nnx
    assert isinstance(offset_tf.model, typing.get_args(_types.Model))
    assert isinstance(offset_nnx, typing.get_args(_types.Model))
    variables = offset_tf.variables
    assert isinstance(variables, typing.get_args(_types.Variables)[0].__origin__)
    assert typing.get_args(_types.ModelAndVariables) == (_types.Model, _types.Variables)
    # objectives carry their paths: the runtime-checkable protocol tells them from a function
    objective = actmax.neuron("block_0", 3) - 1e-3 * actmax.l2()
    assert isinstance(objective, _types.ObjectiveFn)
    assert not isinstance(lambda acts: acts["block_0"].sum(), _types.ObjectiveFn)
    assert set(objective.paths) == {"block_0", actmax.INPUT}
    # the call signatures the protocols promise
    hints = typing.get_type_hints(_types.EditFn.__call__)
    assert hints == {"activation": jax.Array, "return": jax.Array}
    assert typing.get_type_hints(_types.MetricFn.__call__)["return"] is jax.Array
    assert typing.get_type_hints(_types.ObjectiveFactory.__call__)["return"] is _types.ObjectiveFn
    edit: _types.EditFn = iv.zero(at={-2: 1})
    x = jnp.ones((2, 3, 4))
    np.testing.assert_array_equal(edit(x)[:, 1], 0.0)
    np.testing.assert_array_equal(edit(x)[:, [0, 2]], 1.0)


def test_variant_fixture_runs_with_and_without_jit(variant):
    import chex

    seen = []

    def f(x):
        seen.append(isinstance(x, jax.core.Tracer))
        return x * 2

    np.testing.assert_array_equal(variant(f)(jnp.arange(3)), [0, 2, 4])
    jitted = variant.type is chex.ChexVariantType.WITH_JIT
    assert seen == [jitted]
    assert variant.type in (chex.ChexVariantType.WITH_JIT, chex.ChexVariantType.WITHOUT_JIT)
