"""Offline link check of the built HTML site: every local link and anchor must exist.

    python docs/check_links.py docs/_build/html

Why not ``sphinx-build -b linkcheck``: that builder fetches every ``http(s)`` URL (this project's
machines and CI have no general network access), and it does not verify links between the
pages it builds. Cross-references in the sources are already checked by the HTML build itself
(``-n`` nitpicky mode: every unresolved ``:func:``/``{py:func}``, ``:doc:``, toctree entry and
Markdown link is a warning, and ``-W`` makes it an error). This script checks what a reader
clicks in the *built* site: for every ``href``/``src`` in every ``.html`` file it resolves
relative URLs and requires the target file to exist and, for ``#fragment`` links, the target
page to contain an element with that ``id`` (or an ``<a name=...>``). External links
(``http``, ``https``, ``mailto``, ...) are counted and listed with ``--external``, never
fetched.

Exit status: 0 when every local link resolves, 1 otherwise (each broken link is printed as
``page: url (reason)``), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

EXTERNAL_SCHEMES = {"http", "https", "mailto", "ftp", "tel", "javascript", "data"}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        for attr in ("href", "src"):
            if a.get(attr) is not None and not (tag == "link" and a.get("rel") == "preconnect"):
                self.links.append(a[attr])


def _parse(path: Path, cache: dict[Path, _Page]) -> _Page:
    if path not in cache:
        page = _Page()
        page.feed(path.read_text(encoding="utf-8", errors="replace"))
        cache[path] = page
    return cache[path]


def check(root: Path) -> tuple[list[str], dict[str, int], int]:
    """Returns (broken links, external URLs with their counts, number of local links)."""
    cache: dict[Path, _Page] = {}
    broken: list[str] = []
    external: dict[str, int] = defaultdict(int)
    local = 0
    root = root.resolve()
    for html in sorted(root.rglob("*.html")):
        page = _parse(html, cache)
        for url in page.links:
            parts = urlsplit(url)
            if parts.scheme in EXTERNAL_SCHEMES or url.startswith("//"):
                external[url] += 1
                continue
            if parts.scheme:
                broken.append(f"{html.relative_to(root)}: {url} (unknown scheme)")
                continue
            local += 1
            target = html if not parts.path else (html.parent / unquote(parts.path)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_relative_to(root):
                broken.append(f"{html.relative_to(root)}: {url} (outside the site)")
                continue
            if not target.exists():
                broken.append(f"{html.relative_to(root)}: {url} (no such file)")
                continue
            frag = unquote(parts.fragment)
            if frag and target.suffix == ".html" and frag not in _parse(target, cache).ids:
                broken.append(f"{html.relative_to(root)}: {url} (no anchor #{frag})")
    return broken, dict(external), local


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built HTML folder (docs/_build/html)")
    parser.add_argument("--external", action="store_true", help="list external URLs")
    args = parser.parse_args(argv)
    if not (args.site / "index.html").is_file():
        parser.error(f"site: expected a built HTML folder with index.html, got {args.site}")
    broken, external, local = check(args.site)
    for line in broken:
        print(line)
    if args.external:
        for url, n in sorted(external.items()):
            print(f"external (not fetched): {url} ×{n}")
    pages = sum(1 for _ in args.site.rglob("*.html"))
    print(
        f"check_links: {pages} pages, {local} local links, {len(broken)} broken; "
        f"{len(external)} distinct external URLs not fetched"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
