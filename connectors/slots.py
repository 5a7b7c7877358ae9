"""Concurrency slots for a SIEM that caps concurrent searches, served by priority.

A stage sends its independent searches together, but the SIEM (or the role's search quota) takes only
so many at once. The searches an investigation waits on — the alert's own events and its causal chain,
traced round by round — go before context searches (prevalence, host activity) that can finish later:
otherwise every chain round may queue behind a batch of context searches and the investigation takes
a second longer per round. Within a priority, first come, first served.
"""

from __future__ import annotations

import contextvars
import heapq
import itertools
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

CRITICAL = 0   # the investigation waits on it (alert events, the chain's rounds)
CONTEXT = 1    # anything else
_priority: contextvars.ContextVar[int] = contextvars.ContextVar("siemcrew_search_priority", default=CONTEXT)
_tracing = 0   # critical work under way in this process (see `critical_work`)
_tracing_lock = threading.Lock()
_ALL_SLOTS: "weakref.WeakSet[PrioritySlots]" = weakref.WeakSet()
T = TypeVar("T")


@contextmanager
def critical_work() -> Iterator[None]:
    """While round-by-round work (a chain trace) is under way, context searches leave slots free for it."""
    global _tracing
    with _tracing_lock:
        _tracing += 1
    try:
        yield
    finally:
        with _tracing_lock:
            _tracing -= 1
        for slots in list(_ALL_SLOTS):
            slots.wake()


def with_priority(priority: int, run: Callable[[], T]) -> T:
    """Run `run` (a search) with this priority for any slot it takes."""
    token = _priority.set(priority)
    try:
        return run()
    finally:
        _priority.reset(token)


class PrioritySlots:
    """At most `capacity` holders; waiters go in by (priority, arrival). While critical work is under way,
    context searches leave `reserved` slots free (half by default), so a chain round that comes a moment
    after a batch of context searches starts at once instead of waiting a whole answer behind them."""

    def __init__(self, capacity: int, reserved: int | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self.reserved = min(capacity - 1, capacity // 2 if reserved is None else reserved)
        self._held = 0
        self._waiting: list[tuple[int, int]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        _ALL_SLOTS.add(self)

    def _limit(self, priority: int) -> int:
        return self.capacity if priority <= CRITICAL or not _tracing else self.capacity - self.reserved

    def acquire(self) -> None:
        ticket = (_priority.get(), next(self._order))
        with self._cond:
            heapq.heappush(self._waiting, ticket)
            while self._waiting[0] != ticket or self._held >= self._limit(ticket[0]):
                self._cond.wait()
            heapq.heappop(self._waiting)
            self._held += 1
            self._cond.notify_all()  # the next in line may be able to go too

    def release(self) -> None:
        with self._cond:
            if self._held == 0:
                raise ValueError("released more slots than were acquired")
            self._held -= 1
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiters look again (critical work ended, context searches may use every slot)."""
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
