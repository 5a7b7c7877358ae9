"""The state layer on both engines (crew/database.py, crew/sqldialect.py, crew/storage.py): cases and their
quarantine, leases, the run lock, checkpoints, EDR tickets, flow persistence paused in one process and resumed
in another, and the audit table with its chain. Each runs once on the embedded SQLite files and once on a
real PostgreSQL server (tests/servers/postgres.py); the leases and the run lock are taken by other processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO
from servers.postgres import StateDb
from sqlalchemy import text

from siemcrew.crew.audit import AuditError, AuditLog
from siemcrew.crew.audittable import TableAuditLog
from siemcrew.crew.casestore import CaseStore
from siemcrew.crew.checkpoints import CheckpointStore
from siemcrew.crew.database import Database, StoreError
from siemcrew.crew.models import Alert, Entities, ProcessRef
from siemcrew.crew.sqldialect import LockBusy
from siemcrew.crew.tickets import TicketStore
from siemcrew.crew.timeutil import utcnow

KEY = b"an audit key of at least thirty-two bytes"
FORK = multiprocessing.get_context("fork")


def _alert(alert_id: str, pid: int = 100, minutes: int = 0) -> Alert:
    return Alert(id=alert_id, rule_name="Encoded PowerShell", timestamp=utcnow() + timedelta(minutes=minutes),
                 entities=Entities(hosts=["WS-01.contoso.local"]),
                 process=ProcessRef(pid=pid, executable="C:\\Windows\\System32\\powershell.exe"))


# -- cases ------------------------------------------------------------------------------------------------------
def test_cases_are_deduplicated_grouped_and_a_bad_body_is_quarantined(state_db: StateDb) -> None:
    store = CaseStore(state_db.target("cases"))
    first, new = store.admit(_alert("a1"))
    assert new and first.status == "new"
    again, new = store.admit(_alert("a1"))
    assert not new and again.id == first.id and len(again.alerts) == 1
    grouped, new = store.admit(_alert("a2", minutes=5))  # the same detection of the same process: one case
    assert not new and grouped.id == first.id and [a.id for a in grouped.alerts] == ["a1", "a2"]
    other, new = store.admit(_alert("a3", pid=200, minutes=5))  # another process: a case of its own
    assert new and other.id != first.id
    assert store.known(_alert("a2")) and not store.known(_alert("a9"))
    assert {c.id for c in CaseStore(state_db.target("cases")).list()} == {first.id, other.id}
    store.save(first.model_copy(update={"status": "closed"}))
    assert store.statuses() == {"new": 1, "closed": 1}
    assert store.remember_intake("sid-1", [first.id]) is None
    assert store.remember_intake("sid-1", ["ignored"]) == [first.id]

    with store.db.transaction() as conn:
        conn.execute(text("UPDATE cases SET body = :body WHERE id = :id"), {"body": '{"id": 1', "id": other.id})
    assert [c.id for c in store.list()] == [first.id]  # one bad row never stops listing
    assert [q["case"] for q in store.quarantined()] == [other.id]
    with pytest.raises(KeyError):
        store.get(other.id)


# -- leases and the run lock, taken by other processes ------------------------------------------------------------
def _lease(target: str, case_id: str, start: Any, results: Any) -> None:
    store = CaseStore(target)
    start.wait()
    results.put((os.getpid(), store.lease(case_id)))
    time.sleep(60)  # holds it until killed


def _run_lock(target_home: str, url: str | None, results: Any) -> None:
    from sqlalchemy.engine import make_url

    from siemcrew.crew.storage import Storage

    with Storage(Path(target_home), make_url(url) if url else None).run_lock():
        results.put(os.getpid())
        time.sleep(60)


def _until(check: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def _kill(workers: list[Any]) -> None:
    for worker in workers:
        if worker.is_alive():
            os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=10)


def test_of_processes_taking_the_same_lease_exactly_one_wins_and_a_killed_holder_frees_it(state_db: StateDb) -> None:
    target = state_db.target("cases")
    store = CaseStore(target)
    start, results = FORK.Event(), FORK.Queue()
    workers = [FORK.Process(target=_lease, args=(target, "case-1", start, results)) for _ in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = dict(results.get(timeout=30) for _ in workers)
    try:
        winners = [pid for pid, won in outcomes.items() if won]
        assert len(winners) == 1, outcomes
        assert not store.lease("case-1")  # the holder lives: nobody else gets it
        assert store.lease("case-2")  # another case is free
        holder = next(w for w in workers if w.pid == winners[0])
        os.kill(holder.pid, signal.SIGKILL)  # dies without releasing
        holder.join(timeout=10)
        assert _until(lambda: store.lease("case-1")), "a dead holder's lease must free itself"
        store.release("case-1")
    finally:
        _kill(workers)


def _keep(target: str, case_id: str, results: Any) -> None:
    store = CaseStore(target)
    results.put(store.lease(case_id))
    with store.kept(case_id):
        time.sleep(60)  # a long investigation, until killed


def test_a_live_holder_keeps_its_lease_past_its_length(state_db: StateDb, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease is renewed while its holder works: a 1-second lease held for 3 seconds is not taken."""
    import siemcrew.crew.casestore as casestore

    monkeypatch.setattr(casestore, "LEASE_SECONDS", 1.0)  # the forked holder inherits it
    target = state_db.target("cases")
    results = FORK.Queue()
    holder = FORK.Process(target=_keep, args=(target, "case-long", results))
    holder.start()
    try:
        assert results.get(timeout=30)
        time.sleep(3.0)
        store = CaseStore(target)
        assert not store.lease("case-long")
        with store.db.transaction() as conn:
            expires = conn.execute(text("SELECT expires FROM leases WHERE case_id = 'case-long'")).scalar()
        assert expires > time.time()  # pushed on by the holder, not left to lapse
    finally:
        _kill([holder])
    assert _until(lambda: CaseStore(target).lease("case-long"))


def test_a_lease_row_of_a_worker_on_another_machine(state_db: StateDb) -> None:
    """SQLite (one machine) keeps a lease of another host until it expires; on PostgreSQL the lease is the
    holder's session lock, so a row left by a worker whose session is gone does not block anyone."""
    store = CaseStore(state_db.target("cases"))
    with store.db.transaction() as conn:
        conn.execute(text("INSERT INTO leases (case_id, host, pid, expires) VALUES ('case-1', 'other-host', 1, :t)"),
                     {"t": time.time() + 1800})
    assert store.lease("case-1") is (state_db.name == "postgresql")


def test_the_run_lock_excludes_another_process_until_it_dies(state_db: StateDb, tmp_path: Path) -> None:
    storage = state_db.storage(tmp_path / "home")
    results = FORK.Queue()
    holder = FORK.Process(target=_run_lock, args=(str(tmp_path / "home"), state_db.url, results))
    holder.start()
    try:
        assert results.get(timeout=30) == holder.pid
        with pytest.raises(LockBusy):
            with storage.run_lock():
                pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(timeout=10)

        def free() -> bool:
            try:
                with storage.run_lock():
                    return True
            except LockBusy:
                return False

        assert _until(free)
    finally:
        _kill([holder])


# -- checkpoints and EDR tickets ----------------------------------------------------------------------------------
def test_checkpoints_and_edr_tickets_persist(state_db: StateDb) -> None:
    points = CheckpointStore(state_db.target("checkpoints"))
    assert points.get("splunk") is None
    points.put("splunk", "2026-03-02T10:00:00.000Z|abc")
    points.put("elastic", None)
    points.put("splunk", "2026-03-02T11:00:00.000Z|def")
    again = CheckpointStore(state_db.target("checkpoints"))
    assert (again.get("splunk"), again.get("elastic")) == ("2026-03-02T11:00:00.000Z|def", None)

    tickets = TicketStore(state_db.target("tickets"))
    assert tickets.get("case-1:isolate_host:WS-01") is None
    tickets.put("case-1:isolate_host:WS-01", {"ticket_id": "T-1", "state": "pending"})
    tickets.put("case-1:isolate_host:WS-01", {"ticket_id": "T-1", "state": "done"})
    assert TicketStore(state_db.target("tickets")).get("case-1:isolate_host:WS-01") == {"ticket_id": "T-1",
                                                                                      "state": "done"}


def test_an_upgraded_home_resumes_from_its_checkpoint_file(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-local.json").write_text(json.dumps({"checkpoint": "old"}), encoding="utf-8")
    points = CheckpointStore(tmp_path / "cases.db", legacy_dir=tmp_path)
    assert points.get("local") == "old"
    points.put("local", "new")
    assert points.get("local") == "new"


# -- flow persistence: paused here, resumed by another interpreter ------------------------------------------------
def _resume_elsewhere(target: str, flow_id: str, feedback: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "pausing_flow.py"), "resume", target, flow_id, feedback],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_flow_paused_in_one_process_resumes_in_another(state_db: StateDb) -> None:
    import pausing_flow

    target = state_db.target("flows")
    store = pausing_flow.persistence(target)
    flow_id = pausing_flow.pause(store)
    assert store.load_pending_feedback(flow_id) is not None
    state = _resume_elsewhere(target, flow_id, "approved by alice")
    begin, ask, finish = state["steps"]
    assert begin == f"begin@{os.getpid()}" and ask == f"ask@{os.getpid()}"
    assert finish.startswith("finish@") and finish != f"finish@{os.getpid()}"  # ran in the other process
    assert state["feedback"] == "approved by alice"
    assert store.load_pending_feedback(flow_id) is None
    with pytest.raises(ValueError):
        pausing_flow.PausingFlow.from_pending(flow_id, store)  # resumed once, never twice
    assert store.load_state(flow_id)["steps"] == state["steps"]
    with store._db.transaction(write=False) as conn:  # only the latest snapshot is kept
        assert conn.execute(text("SELECT count(*) FROM flow_states WHERE flow_uuid = :f"), {"f": flow_id}).scalar() == 1


def test_a_flow_paused_by_crewais_sqlite_persistence_resumes_after_the_upgrade(tmp_path: Path) -> None:
    import pausing_flow
    from crewai.flow.persistence import SQLiteFlowPersistence

    path = tmp_path / "flows.db"
    flow_id = pausing_flow.pause(SQLiteFlowPersistence(str(path)))
    state = pausing_flow.resume(pausing_flow.persistence(str(path)), flow_id, "ok")
    assert state["feedback"] == "ok" and len(state["steps"]) == 3


# -- the audit table --------------------------------------------------------------------------------------------
def _filled(db: Database, key: bytes | None = None, count: int = 5) -> TableAuditLog:
    log = TableAuditLog(db, key=key)
    for n in range(count):
        log.append("tool_call", "hunter", {"n": n, "api_token": "secret"}, case_id=f"case-{n % 2}")
    return log


def _sql(db: Database, statement: str) -> None:
    with db.transaction() as conn:
        conn.execute(text(statement))


def test_the_audit_table_chains_records_like_the_file(state_db: StateDb) -> None:
    db = state_db.database("audit")
    log = _filled(db)
    result = log.verify()
    assert result.ok and result.records == 5, result
    assert [r.data["n"] for r in log.read(case_id="case-1")] == [1, 3]
    assert all(r.data["api_token"] == "[redacted]" for r in log.read(kind="tool_call"))
    records = list(log.read())
    assert [r.seq for r in records] == [1, 2, 3, 4, 5] and records[1].prev == records[0].hash
    # the same record model and hashes as the file log
    file_log = AuditLog(Path(state_db.folder) / "same.jsonl")
    assert all(r.computed_hash() == r.hash for r in records) and file_log.verify().ok


@pytest.mark.parametrize("tamper, first_bad, words", [
    ("UPDATE audit_log SET line = replace(line, 'hunter', 'hunted') WHERE seq = 3", 3, "modified"),
    ("DELETE FROM audit_log WHERE seq = 5", 5, "truncated"),
    ("DELETE FROM audit_log WHERE seq = 2", 2, "missing"),
    ("UPDATE audit_log SET case_id = 'case-9' WHERE seq = 4", 4, "altered"),
])
def test_tampering_with_the_audit_table_is_named_and_refused(state_db: StateDb, tamper: str, first_bad: int,
                                                             words: str) -> None:
    db = state_db.database("audit")
    log = _filled(db)
    _sql(db, tamper)
    result = log.verify()
    assert not result.ok and result.first_bad == first_bad and words in result.reason, result
    if words == "truncated":  # the end no longer matches the anchor: appending is refused, as on the file
        with pytest.raises(AuditError, match="does not end at its head anchor"):
            log.append("late", "x", {})


def test_a_keyed_audit_table_needs_its_key(state_db: StateDb) -> None:
    db = state_db.database("audit")
    log = _filled(db, key=KEY)
    assert log.verify().ok
    assert not TableAuditLog(db).verify().ok
    with pytest.raises(AuditError, match="keyed"):
        TableAuditLog(db).append("x", "y", {})
    _sql(db, "DELETE FROM audit_log WHERE seq = 5")
    with db.transaction() as conn:
        conn.execute(text("UPDATE audit_head SET anchor = replace(anchor, :five, :four)"),
                     {"five": '"seq":5', "four": '"seq":4'})
    assert not log.verify().ok  # moving the anchor back needs the key


def test_the_storage_keeps_the_audit_in_a_file_or_a_table(state_db: StateDb, tmp_path: Path) -> None:
    storage = state_db.storage(tmp_path / "home")
    log = storage.audit_log()
    log.append("intake", "intake", {"alert": "a1"}, case_id="c1")
    assert isinstance(log, AuditLog if state_db.name == "sqlite" else TableAuditLog)
    assert (tmp_path / "home" / "audit.jsonl").exists() == (state_db.name == "sqlite")
    assert storage.exists("audit")


# -- the schema -------------------------------------------------------------------------------------------------
def test_a_database_written_by_a_newer_siemcrew_is_refused(state_db: StateDb) -> None:
    CheckpointStore(state_db.target("checkpoints"))
    db = state_db.database("cases")
    _sql(db, "UPDATE siemcrew_schema SET version = 99 WHERE store = 'checkpoints'")
    from siemcrew.crew.database import dispose_all

    dispose_all()  # as in a new process: nothing ensured yet
    with pytest.raises(StoreError, match="newer"):
        CheckpointStore(state_db.target("checkpoints"))
