"""What a demo section receives: the output folder, a progress line and the report."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class DemoContext:
    """Shared state of one ``jaxinterp demo`` run.

    Attributes:
      out: output folder (figures are written here as PNG).
      quick: when True, sections use smaller sizes (used by the tests).
      markdown: report lines, in order.
      results: JSON-serialisable numbers, one dict per section.
      views: ``(file name, title, caption)`` of the interactive pages, linked from
        ``index.html``.
    """

    out: Path
    quick: bool = False
    markdown: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    views: list[tuple[str, str, str]] = field(default_factory=list)
    view_seconds: float = 0.0
    _t0: float = field(default_factory=time.perf_counter)

    def progress(self, message: str) -> None:
        """Prints one progress line with the elapsed time."""
        print(f"[{time.perf_counter() - self._t0:7.1f}s] {message}", file=sys.stderr, flush=True)

    def section(self, title: str) -> None:
        """Starts a report section."""
        self.markdown.append(f"\n## {title}\n")
        self.progress(title)

    def text(self, line: str) -> None:
        """Adds a paragraph or list line to the report."""
        self.markdown.append(line)

    def figure(self, name: str, fig: Any, caption: str) -> Path:
        """Saves a matplotlib figure as ``name.png`` and links it from the report."""
        import matplotlib.pyplot as plt

        path = self.out / f"{name}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        self.markdown.append(f"![{caption}]({path.name})\n\n*{caption}*\n")
        return path

    def view(self, name: str, view: Any, caption: str, title: str | None = None) -> Path:
        """Saves an interactive view (``jaxinterp.viz``) as ``name.html``, linked from the index."""
        t0 = time.perf_counter()
        path = view.save(self.out / f"{name}.html")
        self.view_seconds += time.perf_counter() - t0
        title = title or getattr(view, "title", None) or name
        self.views.append((path.name, title, caption))
        return path

    def record(self, section: str, values: dict[str, Any]) -> None:
        """Stores numbers for ``report.json`` under ``section``."""
        self.results.setdefault(section, {}).update(values)

    def write(self) -> None:
        """Writes ``report.md``, ``report.json`` and ``index.html`` (links to every view)."""
        from jaxinterp.viz import index_page

        head = ["# jaxinterp demo report", "", f"quick mode: {self.quick}"]
        (self.out / "report.md").write_text("\n".join(head + self.markdown) + "\n")
        (self.out / "report.json").write_text(json.dumps(self.results, indent=2, default=float))
        extra = [
            ("report.md", "Report", "the demo's text, numbers and figures (markdown)"),
            ("report.json", "Numbers", "every number of the report (JSON)"),
        ]
        page = index_page(self.views + extra, title="jaxinterp demo: interactive views")
        (self.out / "index.html").write_text(page, encoding="utf-8")
