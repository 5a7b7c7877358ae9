"""`audit verify` proves what happened: every executed action is accounted for by a policy decision or an
approval in the log, and the approvals and ledger stores agree with the log. An approval inserted
straight into approvals.db once let `isolate_host` run "approved by ceo" while verify said intact."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import awaiting_isolation_on, run_cli
from servers.postgres import StateDb
from sqlalchemy import text

from siemcrew.crew.approvals import ApprovalStore
from siemcrew.crew.audit import AuditLog
from siemcrew.crew.auditcheck import verify_accounted
from siemcrew.crew.ledger import ActionLedger
from siemcrew.crew.models import ActionProposal, Case, PolicyDecision
from siemcrew.crew.operations import decide
from siemcrew.crew.runtime import Runtime
from siemcrew.crew.timeutil import iso, utcnow

ISOLATE = ActionProposal(action="isolate_host", target="WS-01", args={"host": "WS-01"})
UPDATE = ActionProposal(action="update_alert", target="a1", args={"status": "escalated", "verdict": "malicious"})


# -- through the runtime: the attack and the legitimate path, on SQLite and on PostgreSQL ------------------------
@pytest.fixture
def awaiting(state_db: StateDb, tmp_path: Path) -> tuple[Runtime, Case]:
    """`awaiting_isolation` with its state on the engine under test (the log: a file, or the audit_log table)."""
    return awaiting_isolation_on(tmp_path, state_db.config())


def _verify(rt: Runtime):  # noqa: ANN202
    return verify_accounted(rt.storage.audit_source(), stores=rt.storage)


def test_an_approved_isolation_is_accounted_for(awaiting: tuple[Runtime, Case]) -> None:
    rt, case = awaiting
    (pending,) = rt.approvals.pending(case.id)
    _, final = decide(rt, case.id, "isolate_host", "approve", by="alice", reason="confirmed",
                      sha256=pending.args_sha256)
    assert [(r.action, r.state) for r in final.results] == [("isolate_host", "dry_run"), ("update_alert", "done")]
    result = _verify(rt)
    assert result.ok and result.mismatches == [], result


def test_an_approval_inserted_into_the_approval_store_is_caught(awaiting: tuple[Runtime, Case]) -> None:
    rt, case = awaiting
    now = utcnow()
    with rt.approvals.db.transaction() as db:  # the attacker can write the store, not the log
        request_id, sha = db.execute(text("SELECT id, args_sha256 FROM approval_requests WHERE state='pending'")).one()
        db.execute(text("UPDATE approval_requests SET state='decided' WHERE id=:id"), {"id": request_id})
        db.execute(text("INSERT INTO approval_decisions (request_id, case_id, action, target, args_sha256, decision, by,"
                        " reason, at, expires_at) VALUES (:id, :case, 'isolate_host', 'WS-01', :sha, 'approve', 'ceo',"
                        " 'trust me', :at, :expires)"),
                   {"id": request_id, "case": case.id, "sha": sha, "at": iso(now), "expires": iso(now + timedelta(hours=1))})
    rt.act(case)
    assert [(r.action, r.state) for r in case.results][0] == ("isolate_host", "dry_run")  # it ran, "approved by ceo"
    result = _verify(rt)
    assert not result.ok
    start = next(r for r in rt.audit.read(kind="action_start") if r.data["action"] == "isolate_host")
    assert result.first_bad == start.seq
    assert any("no approval" in m and "ceo" in m for m in result.mismatches), result.mismatches
    assert any(rt.storage.label("approvals") in m and "not in the audit log" in m for m in result.mismatches), result

    proc = run_cli("audit", "verify", "--config", str(rt.settings.config_path), "--json")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["first_bad"] == start.seq


def test_a_ledger_row_without_its_action_in_the_log_is_caught(awaiting: tuple[Runtime, Case]) -> None:
    rt, case = awaiting
    key = ISOLATE.key(case.id)
    rt.ledger.claim(key, "isolate_host", "WS-01", ISOLATE.args_sha256)
    assert _verify(rt).ok  # claimed and never started: a process died before acting, nothing happened
    rt.ledger.update(key, "done", "contained by hand")
    result = _verify(rt)
    assert not result.ok and any(key in m and rt.storage.label("ledger") in m for m in result.mismatches), result


def test_an_executed_action_missing_from_the_ledger_is_caught(awaiting: tuple[Runtime, Case]) -> None:
    rt, case = awaiting
    with rt.ledger.db.transaction() as db:
        db.execute(text("DELETE FROM actions WHERE action='update_alert'"))
    result = _verify(rt)
    assert not result.ok and any("update_alert" in m and "no ledger row" in m for m in result.mismatches), result


# -- the log's own accounting (a shipped copy has no stores) ----------------------------------------------------
def _policy(log: AuditLog, proposal: ActionProposal, outcome: str) -> None:
    decision = PolicyDecision(action=proposal.action, target=proposal.target, args_sha256=proposal.args_sha256,
                              outcome=outcome)  # type: ignore[arg-type]
    log.append("policy", "policy", decision.model_dump(mode="json"), case_id="c1")


def _approval(log: AuditLog, proposal: ActionProposal, by: str, decision: str = "approve",
              ttl: timedelta = timedelta(hours=1)) -> None:
    now = utcnow()
    log.append("approval", by, {"case_id": "c1", "action": proposal.action, "target": proposal.target,
                                "args_sha256": proposal.args_sha256, "decision": decision, "by": by, "reason": "r",
                                "at": iso(now), "expires_at": iso(now + ttl)}, case_id="c1")


def _start(log: AuditLog, proposal: ActionProposal, who: str) -> int:
    return log.append("action_start", who, {"key": proposal.key("c1"), "action": proposal.action,
                                            "target": proposal.target, "args_sha256": proposal.args_sha256},
                      case_id="c1").seq


def test_an_automatic_action_needs_an_auto_policy_decision(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    _policy(log, UPDATE, "auto")
    _start(log, UPDATE, "policy:auto")
    assert verify_accounted(log.path).ok
    _policy(log, ISOLATE, "approval_required")
    seq = _start(log, ISOLATE, "policy:auto")
    result = verify_accounted(log.path)
    assert not result.ok and result.first_bad == seq and "approval_required" in result.reason, result


@pytest.mark.parametrize(("approver", "decision", "ttl", "words"), [
    ("bob", "approve", timedelta(hours=1), "no approval"),          # someone else approved
    ("alice", "deny", timedelta(hours=1), "no approval"),           # it was denied
    ("alice", "approve", timedelta(seconds=-1), "expired"),         # too late
])
def test_an_approved_action_needs_its_actors_unexpired_approval(tmp_path: Path, approver: str, decision: str,
                                                                 ttl: timedelta, words: str) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    _policy(log, ISOLATE, "approval_required")
    _approval(log, ISOLATE, approver, decision, ttl)
    seq = _start(log, ISOLATE, "alice")
    result = verify_accounted(log.path)
    assert not result.ok and result.first_bad == seq and words in result.reason, result


def test_an_approval_for_other_arguments_does_not_account_for_an_action(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    changed = ISOLATE.model_copy(update={"args": {"host": "WS-01", "comment": "changed"}})
    _policy(log, changed, "approval_required")
    _approval(log, ISOLATE, "alice")
    _start(log, changed, "alice")
    assert not verify_accounted(log.path).ok


def test_a_logged_approval_the_store_never_committed_is_a_note_not_a_mismatch(tmp_path: Path) -> None:
    """The log is written before the decision commits; a crash in between leaves a logged approval that
    never took effect. Nothing ran on it, so it is reported, not failed."""
    log = AuditLog(tmp_path / "audit.jsonl")
    ApprovalStore(tmp_path / "approvals.db")
    ActionLedger(tmp_path / "ledger.db")
    _policy(log, ISOLATE, "approval_required")
    _approval(log, ISOLATE, "alice")
    result = verify_accounted(log.path, stores=tmp_path)
    assert result.ok and any("never reached approvals.db" in n for n in result.notes), result
    _start(log, ISOLATE, "alice")
    result = verify_accounted(log.path, stores=tmp_path)
    assert not result.ok and any("approvals.db has no" in m for m in result.mismatches), result
