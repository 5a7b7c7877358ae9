"""Bound approvals: a human's yes or no to one exact action, stored in SQLite and shared across processes.

A request records the case, action, target and the sha256 of the canonical arguments that the policy
evaluated. A decision binds to exactly that sha256: if the responder later changes any argument,
the approval no longer applies (`valid_for` returns None) and a new request is needed. Approvals
expire. A newer request for the same (case, action, target) with other arguments supersedes the old
pending one, so at most one request per target is pending. Deciding runs in a BEGIN IMMEDIATE
transaction: of two processes deciding the same request, exactly one wins; the other gets an
ApprovalError ("already decided").

A denied request stays denied: requesting the same exact action again returns the decided request
instead of asking again. An expired approval is asked again.

What the approver reviewed is named by the full sha256 of the arguments (64 hex digits; a prefix could
match other arguments) and compared in the same transaction that picks the request, so nothing can
change between the check and the decision. The decision's audit record (`record`) is written inside
that transaction too, before it commits: a decision that can let an action run is never in the store
without being on the record.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from siemcrew.crew.ledger import SqliteFile
from siemcrew.crew.models import ActionProposal, Approval, Model, PolicyDecision, canonical_json
from siemcrew.crew.timeutil import iso, parse_time, utcnow

RequestState = Literal["pending", "decided", "superseded"]
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ApprovalError(ValueError):
    """An approval call that cannot be honoured: nothing pending, ambiguous, already decided, bad input."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS approval_requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    case_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    args_sha256 TEXT NOT NULL,
    args TEXT NOT NULL,
    reason TEXT NOT NULL,
    policy_reasons TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    flow_id TEXT,
    state TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS approval_one_pending
    ON approval_requests (case_id, action, target) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS approval_requests_by_key
    ON approval_requests (case_id, action, target, args_sha256);
CREATE TABLE IF NOT EXISTS approval_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id INTEGER NOT NULL UNIQUE REFERENCES approval_requests (id),
    case_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    args_sha256 TEXT NOT NULL,
    decision TEXT NOT NULL,
    by TEXT NOT NULL,
    reason TEXT NOT NULL,
    at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approval_decisions_by_case ON approval_decisions (case_id, action, target);
"""


class PendingApproval(Model):
    """A request for a human decision on one exact action."""

    id: int
    case_id: str
    action: str
    target: str
    args: dict[str, Any] = Field(default_factory=dict)
    args_sha256: str
    reason: str = ""
    """The responder's stated reason for the action (display only; never read by a gate)."""
    policy_reasons: list[str] = Field(default_factory=list)
    """Why the policy asked for approval."""
    requested_at: datetime
    flow_id: str | None = None
    state: RequestState = "pending"

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "PendingApproval":
        values = dict(row)
        values["args"] = json.loads(values["args"])
        values["policy_reasons"] = json.loads(values["policy_reasons"])
        values["requested_at"] = parse_time(values["requested_at"])
        return cls(**values)


def _stored(moment: datetime) -> datetime:
    """A time as it reads back from the store (millisecond precision), so returned and stored agree."""
    return parse_time(iso(moment))  # type: ignore[return-value]


def _approval(row: sqlite3.Row) -> Approval:
    return Approval(
        case_id=row["case_id"],
        action=row["action"],
        target=row["target"],
        args_sha256=row["args_sha256"],
        decision=row["decision"],
        by=row["by"],
        reason=row["reason"],
        at=parse_time(row["at"]),
        expires_at=parse_time(row["expires_at"]),
    )


class ApprovalStore:
    """Pending requests and decisions in one SQLite file."""

    def __init__(self, db_path: Path | str, busy_timeout_s: float = 30.0) -> None:
        self.db = SqliteFile(db_path, _SCHEMA, busy_timeout_s)

    def request(
        self, case_id: str, proposal: ActionProposal, decision: PolicyDecision, flow_id: str | None = None
    ) -> PendingApproval:
        """Record that this exact action awaits a human (idempotent for the same arguments)."""
        if decision.outcome != "approval_required":
            raise ApprovalError(f"policy outcome is {decision.outcome}, not approval_required: nothing to approve")
        if (decision.action, decision.target, decision.args_sha256) != (
            proposal.action,
            proposal.target,
            proposal.args_sha256,
        ):
            raise ApprovalError("the policy decision was made for a different action, target or arguments")
        sha = proposal.args_sha256
        with self.db.transaction() as conn:
            pending = conn.execute(
                "SELECT * FROM approval_requests WHERE case_id=? AND action=? AND target=? AND state='pending'",
                (case_id, proposal.action, proposal.target),
            ).fetchone()
            if pending is not None and pending["args_sha256"] == sha:
                return PendingApproval.from_row(pending)
            if pending is not None:
                conn.execute("UPDATE approval_requests SET state='superseded' WHERE id=?", (pending["id"],))
            decided = conn.execute(
                "SELECT r.*, d.decision, d.expires_at FROM approval_requests r JOIN approval_decisions d"
                " ON d.request_id = r.id WHERE r.case_id=? AND r.action=? AND r.target=? AND r.args_sha256=?"
                " ORDER BY d.id DESC LIMIT 1",
                (case_id, proposal.action, proposal.target, sha),
            ).fetchone()
            if decided is not None and (decided["decision"] == "deny" or parse_time(decided["expires_at"]) > utcnow()):
                return PendingApproval.from_row(self._request_row(conn, decided["id"]))
            cursor = conn.execute(
                "INSERT INTO approval_requests (case_id, action, target, args_sha256, args, reason, policy_reasons,"
                " requested_at, flow_id, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')",
                (
                    case_id,
                    proposal.action,
                    proposal.target,
                    sha,
                    canonical_json(proposal.args),
                    proposal.reason,
                    json.dumps(decision.reasons),
                    iso(utcnow()),
                    flow_id,
                ),
            )
            return PendingApproval.from_row(self._request_row(conn, cursor.lastrowid))

    def pending(self, case_id: str | None = None) -> list[PendingApproval]:
        """Requests awaiting a decision, oldest first (optionally for one case)."""
        query = "SELECT * FROM approval_requests WHERE state='pending'"
        params: tuple[Any, ...] = ()
        if case_id is not None:
            query, params = query + " AND case_id=?", (case_id,)
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(query + " ORDER BY id", params).fetchall()
        return [PendingApproval.from_row(row) for row in rows]

    def decide(
        self,
        case_id: str,
        action: str,
        decision: Literal["approve", "deny"],
        by: str,
        reason: str,
        ttl_seconds: float = 3600,
        target: str | None = None,
        args_sha256: str | None = None,
        record: Callable[[Approval], None] | None = None,
    ) -> Approval:
        """Approve or deny the pending request for (case, action[, target]); binds to its args sha256.

        With `args_sha256` (the full sha256 the approver reviewed) the decision is refused unless the
        pending request has exactly those arguments. `record` writes the decision to the audit log
        before it commits; if it raises, nothing is decided."""
        if args_sha256 is not None:
            args_sha256 = args_sha256.strip().lower()
            if not SHA256_HEX.match(args_sha256):
                raise ApprovalError("the reviewed arguments must be named by their full sha256 (64 hex digits)")
        if decision not in ("approve", "deny"):
            raise ApprovalError(f"decision must be 'approve' or 'deny', not {decision!r}")
        if not by or not by.strip():
            raise ApprovalError("an approval needs `by`: who decided")
        if not reason or not reason.strip():
            raise ApprovalError("an approval needs a `reason`")
        if ttl_seconds <= 0:
            raise ApprovalError("ttl_seconds must be positive")
        what = f"{action} on case {case_id}" + (f" for target {target}" if target is not None else "")
        with self.db.transaction() as conn:
            query = "SELECT * FROM approval_requests WHERE case_id=? AND action=? AND state='pending'"
            params: tuple[Any, ...] = (case_id, action)
            if target is not None:
                query, params = query + " AND target=?", (*params, target)
            rows = conn.execute(query + " ORDER BY id", params).fetchall()
            if not rows:
                raise ApprovalError(self._why_nothing_pending(conn, case_id, action, target, what))
            if len(rows) > 1:
                targets = ", ".join(row["target"] for row in rows)
                raise ApprovalError(f"several targets await approval for {what}: {targets}; name one with target")
            row = rows[0]
            if args_sha256 is not None and row["args_sha256"] != args_sha256:
                raise ApprovalError(self._why_not_these_args(conn, row, args_sha256, what))
            now = _stored(utcnow())
            approval = Approval(
                case_id=case_id,
                action=action,
                target=row["target"],
                args_sha256=row["args_sha256"],
                decision=decision,
                by=by.strip(),
                reason=reason.strip(),
                at=now,
                expires_at=_stored(now + timedelta(seconds=ttl_seconds)),
            )
            conn.execute("UPDATE approval_requests SET state='decided' WHERE id=?", (row["id"],))
            conn.execute(
                "INSERT INTO approval_decisions (request_id, case_id, action, target, args_sha256, decision, by,"
                " reason, at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row["id"],
                    case_id,
                    action,
                    approval.target,
                    approval.args_sha256,
                    decision,
                    approval.by,
                    approval.reason,
                    iso(approval.at),
                    iso(approval.expires_at),
                ),
            )
            if record is not None:
                record(approval)
            return approval

    def valid_for(self, case_id: str, proposal: ActionProposal, now: datetime | None = None) -> Approval | None:
        """The approval that lets exactly this proposal run now, or None (denied, expired, args changed)."""
        latest = self.decision_for(case_id, proposal)
        if latest is not None and latest.decision == "approve" and latest.applies_to(case_id, proposal, now):
            return latest
        return None

    def decision_for(self, case_id: str, proposal: ActionProposal) -> Approval | None:
        """The latest decision on exactly this proposal (same args sha256), whatever it was; for resuming flows."""
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM approval_decisions WHERE case_id=? AND action=? AND target=? AND args_sha256=?"
                " ORDER BY id DESC LIMIT 1",
                (case_id, proposal.action, proposal.target, proposal.args_sha256),
            ).fetchone()
        return _approval(row) if row is not None else None

    def decisions(self, case_id: str) -> list[Approval]:
        """Every decision on a case, oldest first."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute("SELECT * FROM approval_decisions WHERE case_id=? ORDER BY id", (case_id,)).fetchall()
        return [_approval(row) for row in rows]

    @staticmethod
    def _request_row(conn: sqlite3.Connection, request_id: int | None) -> sqlite3.Row:
        return conn.execute("SELECT * FROM approval_requests WHERE id=?", (request_id,)).fetchone()

    @staticmethod
    def _why_not_these_args(conn: sqlite3.Connection, row: sqlite3.Row, sha: str, what: str) -> str:
        """A replay of a decision already taken on these arguments, or arguments that changed since review."""
        decided = conn.execute(
            "SELECT * FROM approval_decisions WHERE case_id=? AND action=? AND target=? AND args_sha256=?"
            " ORDER BY id DESC LIMIT 1",
            (row["case_id"], row["action"], row["target"], sha),
        ).fetchone()
        if decided is not None:
            return (f"{what} with arguments sha256 {sha} was already decided: {decided['decision']} by "
                    f"{decided['by']} at {decided['at']} (the pending request has other arguments)")
        return (f"the arguments of {what} changed since they were reviewed: the pending request has sha256 "
                f"{row['args_sha256']}, not {sha}")

    @staticmethod
    def _why_nothing_pending(conn: sqlite3.Connection, case_id: str, action: str, target: str | None, what: str) -> str:
        query = "SELECT * FROM approval_decisions WHERE case_id=? AND action=?"
        params: tuple[Any, ...] = (case_id, action)
        if target is not None:
            query, params = query + " AND target=?", (*params, target)
        last = conn.execute(query + " ORDER BY id DESC LIMIT 1", params).fetchone()
        if last is None:
            return f"nothing is pending for {what}"
        return f"{what} was already decided: {last['decision']} by {last['by']} at {last['at']}"
