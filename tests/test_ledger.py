"""Action ledger: at-most-once execution per key, outcomes, rate counts and crash recovery."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from pathlib import Path

import pytest

from siemcrew.crew.ledger import ActionLedger, LedgerError, StoreError
from siemcrew.crew.models import ActionProposal
from servers.postgres import StateDb

PROPOSAL = ActionProposal(action="isolate_host", target="WS-01", args={"comment": "c2"})
KEY = PROPOSAL.key("case-1")


@pytest.fixture
def ledger(state_db: StateDb) -> ActionLedger:
    """Every test taking `ledger` runs on SQLite and on PostgreSQL."""
    return ActionLedger(state_db.target("ledger"))


def claim(ledger: ActionLedger, key: str = KEY, **kwargs: float):
    return ledger.claim(key, PROPOSAL.action, PROPOSAL.target, PROPOSAL.args_sha256, **kwargs)


def test_first_claim_acquires_and_the_second_gets_the_existing_row(ledger: ActionLedger) -> None:
    first = claim(ledger)
    assert first.acquired and first.state == "claimed" and first.pid == os.getpid()
    second = claim(ledger)
    assert not second.acquired and second.state == "claimed" and second.claimed_at == first.claimed_at
    assert ledger.get(KEY).args_sha256 == PROPOSAL.args_sha256
    assert ledger.get("nope") is None


def test_outcome_is_recorded_and_a_done_action_is_never_claimed_again(ledger: ActionLedger) -> None:
    claim(ledger)
    ledger.update(KEY, "pending", "vendor accepted", ticket="T-1")
    done = ledger.update(KEY, "done", "contained")
    assert (done.state, done.detail, done.ticket) == ("done", "contained", "T-1")
    again = claim(ledger)
    assert not again.acquired and again.state == "done"
    with pytest.raises(LedgerError, match="already done"):
        ledger.update(KEY, "failed", "late error")
    with pytest.raises(LedgerError, match="final"):
        ledger.reclaim(ledger.get(KEY))


def test_update_rejects_unknown_keys_and_states(ledger: ActionLedger) -> None:
    with pytest.raises(LedgerError, match="no ledger entry"):
        ledger.update("missing", "done")
    claim(ledger)
    with pytest.raises(LedgerError, match="unknown ledger state"):
        ledger.update(KEY, "exploded")  # type: ignore[arg-type]


def test_failed_action_can_be_reclaimed_by_exactly_one_caller(ledger: ActionLedger) -> None:
    claim(ledger)
    failed = ledger.update(KEY, "failed", "HTTP 500")
    first = ledger.reclaim(failed, args_sha256="new-args")
    second = ledger.reclaim(failed)
    assert first.acquired and first.state == "claimed" and first.detail == "" and first.args_sha256 == "new-args"
    assert not second.acquired and second.state == "claimed" and second.version == first.version


def test_count_since_counts_effective_executions_in_the_window(ledger: ActionLedger) -> None:
    now = time.time()
    for index, state in enumerate(["claimed", "pending", "done", "timed_out", "failed", "dry_run", "skipped"]):
        key = f"case-{index}:isolate_host:WS-01"
        claim(ledger, key, now=now - 10)
        if state != "claimed":
            ledger.update(key, state)
    claim(ledger, "old:isolate_host:WS-01", now=now - 4000)
    ledger.claim("case-x:kill_process:WS-01", "kill_process", "WS-01", "x", now=now)
    assert ledger.count_since("isolate_host", now - 3600) == 4
    assert ledger.count_since("isolate_host", now - 5000) == 5
    assert ledger.count_since("kill_process", now - 3600) == 1


def test_stale_claims_skip_live_processes_and_finished_rows(ledger: ActionLedger, state_db: StateDb) -> None:
    now = time.time()
    claim(ledger, "mine", now=now - 600)
    claim(ledger, "fresh", now=now)
    claim(ledger, "finished", now=now - 600)
    ledger.update("finished", "done")
    context = multiprocessing.get_context("fork")
    dead = context.Process(target=_claim_and_die, args=(state_db.target("ledger"), "orphan", now - 600))
    dead.start()
    dead.join(timeout=30)
    assert dead.exitcode == 0
    stale = ledger.stale_claims(older_than_s=300, now=now)
    assert [c.key for c in stale] == ["orphan"]
    assert stale[0].pid == dead.pid
    taken = ledger.reclaim(stale[0])
    assert taken.acquired and taken.pid == os.getpid()
    assert not ledger.reclaim(stale[0]).acquired
    assert ledger.stale_claims(older_than_s=300, now=now) == []


def _claim_and_die(path: str, key: str, at: float) -> None:
    ActionLedger(path).claim(key, "isolate_host", "WS-09", "x", now=at)


def _race(path: str, start, results) -> None:  # type: ignore[no-untyped-def]
    ledger = ActionLedger(path)
    start.wait()
    got = ledger.claim(KEY, PROPOSAL.action, PROPOSAL.target, PROPOSAL.args_sha256)
    if got.acquired:
        ledger.update(KEY, "done", f"executed by {os.getpid()}")
    results.put((os.getpid(), got.acquired))


def test_processes_claiming_the_same_key_exactly_one_executes(state_db: StateDb) -> None:
    path = state_db.target("ledger")
    ActionLedger(path)
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=_race, args=(path, start, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = [results.get(timeout=30) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    winners = [pid for pid, acquired in outcomes if acquired]
    assert len(winners) == 1
    assert ActionLedger(path).get(KEY).detail == f"executed by {winners[0]}"


def test_a_locked_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = ActionLedger(path, busy_timeout_s=0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreError, match="busy"):
            claim(ledger)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert claim(ledger).acquired


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="ledger.db"):
        ActionLedger(path)


def test_a_superseded_write_back_is_kept_under_a_new_key_and_its_key_is_free_again(ledger: ActionLedger) -> None:
    key = "case-1:update_alert:alert-1"
    assert ledger.claim(key, "update_alert", "alert-1", "a" * 64).acquired
    with pytest.raises(LedgerError, match="cannot be superseded"):
        ledger.supersede(key)  # still executing: never touched
    ledger.update(key, "done", "alert set to escalated")
    kept = ledger.supersede(key, now=1000.0)
    assert kept is not None and kept.key == f"{key}#superseded@1000.000000" and kept.state == "done"
    assert ledger.get(key) is None and ledger.get(kept.key).detail == "alert set to escalated"
    assert ledger.claim(key, "update_alert", "alert-1", "b" * 64).acquired  # the rerun's write-back runs
    assert ledger.supersede("case-1:update_alert:unknown") is None
