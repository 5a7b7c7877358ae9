"""Search slots: a cap on concurrent searches that lets the chain's searches go first."""

from __future__ import annotations

import threading
import time

import pytest

from siemcrew.connectors.slots import CONTEXT, CRITICAL, PrioritySlots, critical_work, with_priority


def _holder(slots: PrioritySlots, priority: int, entered: list[str], name: str, release: threading.Event) -> threading.Thread:
    def run() -> None:
        def hold() -> None:
            with slots:
                entered.append(name)
                release.wait(5)
        with_priority(priority, hold)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.005)


def test_waiters_go_in_by_priority_then_arrival() -> None:
    slots = PrioritySlots(1)
    entered: list[str] = []
    gates = {name: threading.Event() for name in ("first", "ctx-a", "ctx-b", "chain")}
    threads = [_holder(slots, CONTEXT, entered, "first", gates["first"])]
    _wait_for(lambda: entered == ["first"])
    for waiting, (name, priority) in enumerate((("ctx-a", CONTEXT), ("ctx-b", CONTEXT), ("chain", CRITICAL)), 1):
        threads.append(_holder(slots, priority, entered, name, gates[name]))
        _wait_for(lambda w=waiting: len(slots._waiting) == w)  # arrival order is fixed
    for name in ("first", "chain", "ctx-a", "ctx-b"):
        gates[name].set()
        _wait_for(lambda n=name: n in entered)
    for thread in threads:
        thread.join(5)
    assert entered == ["first", "chain", "ctx-a", "ctx-b"]


def test_context_searches_leave_room_while_a_chain_is_traced_and_use_it_all_after() -> None:
    slots = PrioritySlots(4)  # half reserved while critical work runs
    entered: list[str] = []
    release = threading.Event()
    with critical_work():
        threads = [_holder(slots, CONTEXT, entered, f"ctx-{i}", release) for i in range(4)]
        _wait_for(lambda: len(entered) == 2 and len(slots._waiting) == 2)
        threads += [_holder(slots, CRITICAL, entered, f"chain-{i}", release) for i in range(2)]
        _wait_for(lambda: len(entered) == 4)
        assert sorted(entered[2:]) == ["chain-0", "chain-1"]  # the chain's round did not wait
    _wait_for(lambda: len(entered) == 4 and len(slots._waiting) == 2)  # the cap still holds
    release.set()
    for thread in threads:
        thread.join(5)
    assert len(entered) == 6 and slots._held == 0


def test_after_critical_work_waiting_context_searches_take_the_freed_room() -> None:
    slots = PrioritySlots(4)
    entered: list[str] = []
    release = threading.Event()
    with critical_work():
        threads = [_holder(slots, CONTEXT, entered, f"ctx-{i}", release) for i in range(3)]
        _wait_for(lambda: len(entered) == 2 and len(slots._waiting) == 1)
    _wait_for(lambda: len(entered) == 3)  # woken when the trace ended, not by a release
    release.set()
    for thread in threads:
        thread.join(5)


def test_releasing_more_than_acquired_is_an_error() -> None:
    slots = PrioritySlots(2)
    with pytest.raises(ValueError):
        slots.release()
    with pytest.raises(ValueError):
        PrioritySlots(0)
