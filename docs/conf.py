"""Sphinx configuration for the jaxinterp documentation.

Built offline with warnings as errors (``.ci/docs``)::

    sphinx-build -W --keep-going -n -b html docs docs/_build/html

Before Sphinx reads the sources, this file

* runs ``docs/make_figures.py`` (the capability pages' figures, computed from the reference
  models at build time; ``JAXINTERP_DOCS_FIGURES=reuse`` keeps existing PNGs when all are
  there, for quick edits of the prose), and
* copies ``notebooks/*.ipynb`` into ``docs/tutorials/`` (myst-nb renders them with their stored
  outputs; a notebook is executed only if one of its code cells has no output).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's jaxinterp, not an installed copy
os.environ.setdefault("MPLBACKEND", "Agg")

project = "jaxinterp"
author = "jaxinterp authors"
copyright = "2026, jaxinterp authors"
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "myst_nb",
]
exclude_patterns = ["_build", "_figures", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

html_theme = "furo"
html_title = "jaxinterp"
html_static_path: list[str] = []

# ---------------------------------------------------------------------------------- autodoc
# Docstrings are Google style (Args / Returns / Raises / Attributes). Attributes are rendered
# as fields (``:ivar:``), not as separate entries: autodoc already documents NamedTuple and
# dataclass fields, and two entries for one field would be a duplicate-object warning.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}
python_use_unqualified_type_names = True

# ---------------------------------------------------------------------------------- myst-nb
# The notebooks are committed executed (notebooks/_build.py), so "auto" renders their stored
# outputs and runs nothing; a notebook committed with a code cell lacking output would be
# executed here (an error in it fails the build).
nb_execution_mode = "auto"
nb_execution_raise_on_error = True
nb_execution_timeout = 300
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# ------------------------------------------------------------- cross-references, offline
# ``-n`` makes every unresolved cross-reference a warning (an error with ``-W``). References
# into jaxinterp must resolve. Third-party and standard-library types in signatures would
# resolve only through intersphinx, which fetches inventories over the network: they are
# ignored here by prefix, so the check stays offline and still catches our own broken links.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(jax|jaxlib|flax|nn|nnx|numpy|np|optax|matplotlib|chex)(\..*)?"),
    (r"py:.*", r"(collections\.abc|typing|pathlib|os|types)\..*"),
    (r"py:.*", r"(Array|ArrayLike|Mesh|PartitionSpec|Figure|Module|Path|PRNGKeyArray)"),
    (r"py:.*", r"(Callable|Sequence|Mapping|Iterable|Iterator|Collection|Hashable)"),
    # type variables and private bases that appear in signatures
    (r"py:class", r"jaxinterp\..*\._[A-Za-z_]+\.(State|T|Encoding|_[A-Za-z]+)"),
]
nitpick_ignore: list[tuple[str, str]] = []

# ------------------------------------------------------------------- build-time inputs
HAVE_VIZ = importlib.util.find_spec("jaxinterp.viz") is not None
FIGURES = DOCS / "_figures"
FIGURE_NAMES = [
    "capture_cnn_act0",
    "actmax_logits",
    "actmax_traces",
    "actmax_topk",
    "attention_offset_scores",
    "attention_entropy",
    "attention_grid",
    "attention_rollout",
    "probes_transformer",
    "patching_layer_head",
    "patching_layer_position",
    "attribution_vs_patching",
    "decoder_attention",
]


def _make_figures() -> None:
    have_all = all((FIGURES / f"{n}.png").exists() for n in FIGURE_NAMES)
    if os.environ.get("JAXINTERP_DOCS_FIGURES") == "reuse" and have_all:
        return
    env = {**os.environ, "MPLBACKEND": "Agg"}
    cmd = [sys.executable, str(DOCS / "make_figures.py"), "--out", str(FIGURES)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    missing = [n for n in FIGURE_NAMES if not (FIGURES / f"{n}.png").exists()]
    if missing:
        raise RuntimeError(f"docs/make_figures.py did not write {missing}")


def _copy_notebooks() -> None:
    dest = DOCS / "tutorials"
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        target = dest / nb.name
        if not target.exists() or target.read_bytes() != nb.read_bytes():
            shutil.copyfile(nb, target)  # only when changed: keeps incremental builds


_make_figures()
_copy_notebooks()


def _viz_placeholder(app, docname: str, source: list[str]) -> None:
    """``api/viz`` documents :mod:`jaxinterp.viz` when the package exists in this checkout."""
    if docname == "api/viz" and not HAVE_VIZ:
        source[0] = (
            "jaxinterp.viz\n=============\n\n"
            "``jaxinterp.viz`` (interactive HTML views) is not part of this checkout; its "
            "reference appears here when the package exists.\n"
        )


def _drop_namedtuple_alias_text(app, what, name, obj, options, lines) -> None:
    """NamedTuple fields: drop Python's "Alias for field number N" (the class's ``Attributes:``
    section describes each field; the field entries stay as link targets)."""
    if len(lines) == 1 and lines[0].startswith("Alias for field number"):
        lines.clear()


# Where napoleon writes a field's annotation as the class's defining module, show the public name.
PUBLIC_NAMES = {"jax.jaxlib._jax.Array": "jax.Array", "jaxlib._jax.Array": "jax.Array"}


def _public_type_names(app, what, name, obj, options, lines) -> None:
    for i, line in enumerate(lines):
        for private, public in PUBLIC_NAMES.items():
            line = line.replace(private, public)
        lines[i] = line


def _public_signature_names(app, what, name, obj, options, signature, return_annotation):
    def fix(text):
        if text is None:
            return None
        for private, public in PUBLIC_NAMES.items():
            text = text.replace(private, public)
        return text

    return fix(signature), fix(return_annotation)


def setup(app) -> None:
    app.connect("source-read", _viz_placeholder)
    app.connect("autodoc-process-docstring", _drop_namedtuple_alias_text)
    # after napoleon (priority 500), which adds the annotations of Attributes entries
    app.connect("autodoc-process-docstring", _public_type_names, priority=600)
    app.connect("autodoc-process-signature", _public_signature_names)
