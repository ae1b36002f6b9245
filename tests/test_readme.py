"""The README's Python examples run, in order, as one script (they share their imports)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 5
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)
    # the numbers the README states in its comments
    assert namespace["top"].values.shape == (64, 8)
    restored = namespace["sites"].unflatten(namespace["res"].normalized)
    assert restored.shape == (2, 4) and float(restored[0].min()) > float(restored[1].max())
    assert abs(float(namespace["e"][0] @ namespace["e"][1]) - 0.755) < 0.01
    acts = namespace["acts"]
    assert set(acts) == {"block_0", "block_1"}
