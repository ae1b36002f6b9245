"""Cache-key parts shared by the compile-once paths (``actmax.maximize`` and the sweeps)."""

from __future__ import annotations

from typing import Any


class ById:
    """Hashes and compares by identity: a key part that cannot be compared by value.

    >>> a = [1]
    >>> ById(a) == ById(a), ById(a) == ById([1])
    (True, False)
    """

    def __init__(self, obj: Any):
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ById) and other.obj is self.obj


def static(obj: Any) -> Any:
    """``obj`` itself as a key part when it hashes (compared by value), else :class:`ById`.

    >>> static((1, 2)), isinstance(static([1, 2]), ById)
    ((1, 2), True)
    """
    try:
        hash(obj)
    except TypeError:
        return ById(obj)
    return obj
