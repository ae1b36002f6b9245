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
