"""Bad input to the ``jaxinterp`` command and the demo runner: each error names the argument."""

from __future__ import annotations

from pathlib import Path

import pytest

from jaxinterp._cli import main, use_compile_cache
from jaxinterp._demo import run_demo


@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "report.txt"
    path.write_text("not a folder")
    return path


# (argv, text the usage error must contain); argparse exits with status 2 before any work
CLI_ROWS = [
    ([], "the following arguments are required: command"),
    (["nope"], "invalid choice: 'nope'"),
    (["demo", "--only", "nope"], "argument --only: invalid choice: 'nope'"),
    (["demo", "--only", "models", "Models"], "argument --only: invalid choice: 'Models'"),
    (["demo", "--quick=yes"], "argument --quick: ignored explicit argument 'yes'"),
    (["demo", "--out"], "argument --out: expected one argument"),
    (["demo", "--out", "{file}"], "--out: expected a folder, got the existing file"),
    (["demo", "--compile-cache"], "argument --compile-cache: expected one argument"),
]


@pytest.mark.parametrize("argv, message", CLI_ROWS, ids=[" ".join(r[0]) or "-" for r in CLI_ROWS])
def test_cli_usage_errors(argv, message, a_file, capsys):
    argv = [a.replace("{file}", str(a_file)) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


RUN_DEMO_ROWS = [
    (dict(out=3), TypeError, r"^out: expected a folder path \(str or Path\), got int"),
    (dict(out="{file}"), ValueError, r"^out: expected a folder, got the existing file"),
    (dict(only="models"), TypeError, r"^only: expected a list of section names, got 'models'"),
    (dict(only=[1]), TypeError, r"^only: expected a list of section names, got \[1\]"),
    (dict(only=["nope"]), ValueError, r"^only: unknown sections \['nope'\]; available: \["),
    (dict(quick="yes"), TypeError, r"^quick: expected a bool, got str 'yes'"),
]


@pytest.mark.parametrize("kwargs, exc, match", RUN_DEMO_ROWS)
def test_run_demo_bad_input(kwargs, exc, match, a_file, tmp_path):
    kwargs = {"out": tmp_path / "out", **kwargs}
    if kwargs["out"] == "{file}":
        kwargs["out"] = a_file
    with pytest.raises(exc, match=match):
        run_demo(**kwargs)
    assert not (tmp_path / "out").exists()  # refused before any work


@pytest.mark.parametrize("path", [3, b"/tmp/x", ["/tmp/x"]])
def test_use_compile_cache_bad_path(path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    with pytest.raises(TypeError, match=r"^path: expected a folder path \(str or Path\), got "):
        use_compile_cache(path)
