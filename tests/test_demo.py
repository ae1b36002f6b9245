"""The ``jaxinterp demo`` command writes a report and figures (quick mode, every section)."""

from __future__ import annotations

import json

import pytest

from jaxinterp._cli import main
from jaxinterp._demo import SECTIONS


def test_demo_quick_writes_report_and_figures(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    results = json.loads((tmp_path / "report.json").read_text())
    assert set(SECTIONS) <= set(results) | {"models"}
    assert results["models"]["cnn"]["test_accuracy"] > 0.95
    pngs = sorted(tmp_path.glob("*.png"))
    assert pngs, "no figures written"
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.name in report


def test_demo_rejects_unknown_section(tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "--only", "nope", "--out", str(tmp_path)])
