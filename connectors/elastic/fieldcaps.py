"""Which fields the indices behind an index expression map (`_field_caps`), asked once and cached.

Sigma conversions and ES|QL hunts must only name fields that exist: ES|QL and EQL reject unknown
columns, and a Lucene query on a field nobody has finds nothing without saying why. The answer is
kept per index expression for `ttl` seconds (new data streams appear rarely), thread-safely.
"""

from __future__ import annotations

import threading
import time
from fnmatch import fnmatchcase
from typing import Any, Callable

NOT_A_FIELD = frozenset({"object", "nested", "unmapped"})


class FieldCaps:
    def __init__(self, fetch: Callable[[str], Any], ttl: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    def fields(self, index: str) -> frozenset[str]:
        """Every searchable field some index of `index` maps (objects left out)."""
        with self._lock:
            cached = self._cache.get(index)
            if cached is not None and self._clock() - cached[0] < self._ttl:
                return cached[1]
        answer = self._fetch(index)
        found = frozenset(
            name for name, types in ((answer or {}).get("fields") or {}).items()
            if isinstance(types, dict) and set(types) - NOT_A_FIELD
        )
        with self._lock:
            self._cache[index] = (self._clock(), found)
        return found

    def exists(self, index: str) -> Callable[[str], bool]:
        """A test for field names (or wildcard patterns) against `index`'s fields."""
        return field_test(self.fields(index))


def field_test(names: frozenset[str]) -> Callable[[str], bool]:
    """A test for field names (or wildcard patterns) against a set of mapped fields."""

    def test(name: str) -> bool:
        if any(ch in name for ch in "*?"):
            return any(fnmatchcase(field, name) for field in names)
        return name in names

    return test
