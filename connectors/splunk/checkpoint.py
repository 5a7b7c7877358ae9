"""The alert checkpoint: the newest alert time seen, plus the ids seen in the overlap window before it.

Searching from `time - overlap` (inclusive) and dropping ids already seen means alerts that share
a timestamp with the last batch, or arrive late within the overlap, are neither skipped nor
returned twice. The string form is compact JSON and opaque to callers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from siemcrew.connectors.base import ConnectorError

T = TypeVar("T")


@dataclass(frozen=True)
class Stamped(Generic[T]):
    """An item to hand out, with its id and epoch time."""

    id: str
    time: float
    item: T


@dataclass
class AlertCheckpoint:
    time: float | None = None
    seen: dict[str, float] = field(default_factory=dict)

    @classmethod
    def decode(cls, text: str | None) -> "AlertCheckpoint":
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(time=float(data["t"]) if data.get("t") is not None else None, seen={str(k): float(v) for k, v in data.get("seen", {}).items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            raise ConnectorError(f"splunk: checkpoint is not one this connector wrote: {text[:80]!r}") from None

    def encode(self) -> str:
        return json.dumps({"t": self.time, "seen": self.seen}, sort_keys=True, separators=(",", ":"))

    def earliest(self, overlap_s: float) -> float | None:
        return None if self.time is None else self.time - overlap_s

    def advance(self, candidates: list[Stamped[T]], limit: int, overlap_s: float) -> tuple[list[T], "AlertCheckpoint"]:
        """The next `limit` unseen items in (time, id) order, and the checkpoint after them."""
        fresh = sorted((c for c in candidates if c.id not in self.seen), key=lambda c: (c.time, c.id))
        unique: dict[str, Stamped[T]] = {}
        for candidate in fresh:
            unique.setdefault(candidate.id, candidate)
        taken = list(unique.values())[: max(limit, 0)]
        if not taken:
            return [], self
        newest = max([self.time or taken[-1].time, *(c.time for c in taken)])
        seen = {**self.seen, **{c.id: c.time for c in taken}}
        seen = {key: moment for key, moment in seen.items() if moment >= newest - overlap_s}
        return [c.item for c in taken], AlertCheckpoint(time=newest, seen=seen)
