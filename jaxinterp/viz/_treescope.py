"""Arrays with named axes rendered by treescope, the array viewer of the JAX ecosystem.

:func:`named_array` wraps an array and the names of its axes (the package vocabulary:
``layer, head, q, k, ...``) and, optionally, labels along them (the tokens of ``q`` and ``k``).
It renders as a treescope array figure: faceted heatmaps with the axis names, hover values and
labels, in a notebook (``_repr_html_``) or saved as one self-contained HTML file (``save``).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxinterp.viz._page import as_labels

# Where each named axis goes by default: inner (the heatmap itself) first, then facets.
_ROWS = ("q", "layer", "target", "site", "batch")
_COLS = ("k", "head", "position", "d_model")


class NamedArray:
    """An array with named axes, rendered by treescope.

    Attributes:
      values: the numpy array.
      names: one name per axis.
      labels: ``{name: [labels]}`` for labelled axes.
      title: the heading of the saved page.
    """

    def __init__(
        self,
        values: np.ndarray,
        names: tuple[str, ...],
        labels: dict[str, list[str]],
        title: str | None = None,
    ):
        self.values, self.names, self.labels = values, names, labels
        self.title = title or self._dims()

    def figure(self, **kwargs: Any) -> Any:
        """The treescope figure (``treescope.render_array`` with the axis names and labels).

        Args:
          **kwargs: passed to ``treescope.render_array`` (``rows``, ``columns``, ``sliders``,
            ``vmin``, ``vmax``, ...); axes may be given by name.
        """
        import treescope

        index = {n: i for i, n in enumerate(self.names)}

        def axes(key: str, default: Sequence[int]) -> list[int]:
            got = kwargs.pop(key, None)
            if got is None:
                return list(default)
            return [index[a] if isinstance(a, str) else int(a) for a in got]

        sliders = axes("sliders", [])
        free = [i for i in range(len(self.names)) if i not in sliders]
        rows = [i for n in _ROWS for i in free if self.names[i] == n]
        cols = [i for n in _COLS for i in free if self.names[i] == n]
        rest = [i for i in free if i not in rows and i not in cols]
        rows = axes("rows", rows + rest[1::2])
        cols = axes("columns", cols + rest[0::2])
        if not rows and not cols:
            cols = [free[-1]] if free else []
        kwargs.setdefault("trim_outliers", False)
        finite = self.values[np.isfinite(self.values)] if self.values.dtype != bool else None
        if finite is not None and finite.size and finite.min() >= 0:
            # weights, probabilities, counts: a sequential colour map from 0
            kwargs.setdefault("around_zero", False)
            kwargs.setdefault("vmin", 0.0)
        return treescope.render_array(
            self.values,
            rows=rows,
            columns=cols,
            sliders=sliders,
            axis_labels=dict(enumerate(self.names)),
            axis_item_labels={index[n]: list(v) for n, v in self.labels.items()},
            **kwargs,
        )

    def _repr_html_(self) -> str:
        return self.figure()._repr_html_()

    def to_html(self, title: str | None = None) -> str:
        """A self-contained HTML document of the figure (treescope's own inline JS/CSS).

        Args:
          title: the page title (default: ``self.title``).
        """
        title = title or self.title
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{html.escape(title)}</title>\n</head>\n<body>\n"
            f'<h3 style="font-family: system-ui, sans-serif">{html.escape(title)}</h3>\n'
            f"{self.figure()._repr_html_()}\n</body>\n</html>\n"
        )

    def save(self, path: str | Path, title: str | None = None) -> Path:
        """Writes :meth:`to_html` to ``path``; returns the path.

        Raises:
          TypeError: ``path`` is not a ``str`` or ``Path``.
        """
        if not isinstance(path, (str, Path)):
            raise TypeError(f"path: expected a file path (str or Path), got {type(path).__name__}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_html(title), encoding="utf-8")
        return path

    def _dims(self) -> str:
        return ", ".join(f"{n}={s}" for n, s in zip(self.names, self.values.shape))

    def __repr__(self) -> str:
        return f"NamedArray({self._dims()})"


def named_array(
    values: Any,
    names: Sequence[str],
    *,
    labels: Mapping[str, Sequence[str]] | None = None,
    title: str | None = None,
) -> NamedArray:
    """An array with named axes for treescope (e.g. attention ``layer, head, q, k``).

    Args:
      values: ``[...]`` a numeric array (jax or numpy).
      names: one name per axis, e.g. ``("layer", "head", "q", "k")``; ``q``/``layer`` go down,
        ``k``/``head``/``position`` across (``figure(rows=..., columns=..., sliders=...)``
        to change it).
      labels: ``{axis name: labels}`` (tokens along ``q`` and ``k``, say).
      title: the heading of the saved page (default: the axis names and sizes).

    Returns:
      A :class:`NamedArray` (``figure()``, ``_repr_html_``, ``save(path)``).

    Raises:
      TypeError, ValueError: ``values`` is not numeric, ``names`` are not one distinct string
        per axis, or labels do not match their axis.

    >>> a = named_array(np.ones((2, 3, 4, 4)), ("layer", "head", "q", "k"))
    >>> a
    NamedArray(layer=2, head=3, q=4, k=4)
    >>> type(a.figure()).__name__
    'TreescopeFigure'
    """
    v = np.asarray(values)
    if not (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_):
        raise TypeError(f"values: expected a numeric array, got dtype {v.dtype}")
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names: expected a sequence of axis-name strings, got {names!r}")
    names = tuple(names)
    if len(names) != v.ndim or len(set(names)) != len(names):
        raise ValueError(
            f"names: expected {v.ndim} distinct axis names for shape {v.shape}, got {names}"
        )
    out = {}
    for n, lab in (labels or {}).items():
        if n not in names:
            raise ValueError(f"labels: unknown axis name {n!r}; axes are {names}")
        out[n] = as_labels(lab, v.shape[names.index(n)], f"labels[{n!r}]", [])
    return NamedArray(v, names, out, None if title is None else str(title))
