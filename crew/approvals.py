"""Bound approvals: a human's yes or no to one exact action, stored in the state database, shared across processes.

A request records the case, action, target and the sha256 of the canonical arguments that the policy
evaluated. A decision binds to exactly that sha256: if the responder later changes any argument,
the approval no longer applies (`valid_for` returns None) and a new request is needed. Approvals
expire. A newer request for the same (case, action, target) with other arguments supersedes the old
pending one, so at most one request per target is pending. Deciding runs in a write transaction
that queues behind every other writer (crew/database.py): of two processes deciding the same request, exactly one wins; the other gets an
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
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from sqlalchemy import Connection, Select, select, update

from siemcrew.crew.database import Database
from siemcrew.crew.models import ActionProposal, Approval, Model, PolicyDecision, canonical_json
from siemcrew.crew.tables import APPROVAL_TABLES, approval_decisions, approval_requests
from siemcrew.crew.timeutil import iso, parse_time, utcnow

RequestState = Literal["pending", "decided", "superseded"]
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class ApprovalError(ValueError):
    """An approval call that cannot be honoured: nothing pending, ambiguous, already decided, bad input."""


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
    def from_row(cls, row: Mapping[str, Any]) -> "PendingApproval":
        values = dict(row)
        values["args"] = json.loads(values["args"])
        values["policy_reasons"] = json.loads(values["policy_reasons"])
        values["requested_at"] = parse_time(values["requested_at"])
        return cls(**values)


def _stored(moment: datetime) -> datetime:
    """A time as it reads back from the store (millisecond precision), so returned and stored agree."""
    return parse_time(iso(moment))  # type: ignore[return-value]


def _approval(row: Mapping[str, Any]) -> Approval:
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


R, D = approval_requests.c, approval_decisions.c


def _decisions_on(case_id: str, action: str, target: str | None = None, sha: str | None = None) -> Select[Any]:
    """The decisions on (case, action[, target[, arguments]]), newest first."""
    query = select(approval_decisions).where(D.case_id == case_id, D.action == action)
    if target is not None:
        query = query.where(D.target == target)
    if sha is not None:
        query = query.where(D.args_sha256 == sha)
    return query.order_by(D.id.desc())


class ApprovalStore:
    """Pending requests and decisions (the `approval_requests` and `approval_decisions` tables)."""

    def __init__(self, db: Database | Path | str, busy_timeout_s: float = 30.0) -> None:
        self.db = Database.of(db, "approvals", busy_timeout_s)
        self.db.ensure(APPROVAL_TABLES)

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
            pending = conn.execute(select(approval_requests).where(
                R.case_id == case_id, R.action == proposal.action, R.target == proposal.target, R.state == "pending",
            )).mappings().first()
            if pending is not None and pending["args_sha256"] == sha:
                return PendingApproval.from_row(pending)
            if pending is not None:
                conn.execute(update(approval_requests).where(R.id == pending["id"]).values(state="superseded"))
            decided = conn.execute(
                select(R.id, D.decision, D.expires_at).join(approval_decisions, D.request_id == R.id)
                .where(R.case_id == case_id, R.action == proposal.action, R.target == proposal.target,
                       R.args_sha256 == sha).order_by(D.id.desc()).limit(1)
            ).mappings().first()
            if decided is not None and (decided["decision"] == "deny" or parse_time(decided["expires_at"]) > utcnow()):
                return PendingApproval.from_row(self._request_row(conn, decided["id"]))
            inserted = conn.execute(approval_requests.insert().values(
                case_id=case_id,
                action=proposal.action,
                target=proposal.target,
                args_sha256=sha,
                args=canonical_json(proposal.args),
                reason=proposal.reason,
                policy_reasons=json.dumps(decision.reasons),
                requested_at=iso(utcnow()),
                flow_id=flow_id,
                state="pending",
            ))
            return PendingApproval.from_row(self._request_row(conn, inserted.inserted_primary_key[0]))

    def pending(self, case_id: str | None = None) -> list[PendingApproval]:
        """Requests awaiting a decision, oldest first (optionally for one case)."""
        query = select(approval_requests).where(R.state == "pending")
        if case_id is not None:
            query = query.where(R.case_id == case_id)
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(query.order_by(R.id)).mappings().all()
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
            query = select(approval_requests).where(R.case_id == case_id, R.action == action, R.state == "pending")
            if target is not None:
                query = query.where(R.target == target)
            rows = conn.execute(query.order_by(R.id)).mappings().all()
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
            conn.execute(update(approval_requests).where(R.id == row["id"]).values(state="decided"))
            conn.execute(approval_decisions.insert().values(
                request_id=row["id"],
                case_id=case_id,
                action=action,
                target=approval.target,
                args_sha256=approval.args_sha256,
                decision=decision,
                by=approval.by,
                reason=approval.reason,
                at=iso(approval.at),
                expires_at=iso(approval.expires_at),
            ))
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
            row = conn.execute(_decisions_on(case_id, proposal.action, proposal.target, proposal.args_sha256)
                               .limit(1)).mappings().first()
        return _approval(row) if row is not None else None

    def decisions(self, case_id: str | None = None) -> list[Approval]:
        """Every decision on a case (or on every case), oldest first."""
        query = select(approval_decisions)
        if case_id is not None:
            query = query.where(D.case_id == case_id)
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(query.order_by(D.id)).mappings().all()
        return [_approval(row) for row in rows]

    @staticmethod
    def _request_row(conn: Connection, request_id: int | None) -> Mapping[str, Any]:
        return conn.execute(select(approval_requests).where(R.id == request_id)).mappings().one()

    @staticmethod
    def _why_not_these_args(conn: Connection, row: Mapping[str, Any], sha: str, what: str) -> str:
        """A replay of a decision already taken on these arguments, or arguments that changed since review."""
        decided = conn.execute(_decisions_on(row["case_id"], row["action"], row["target"], sha)
                               .limit(1)).mappings().first()
        if decided is not None:
            return (f"{what} with arguments sha256 {sha} was already decided: {decided['decision']} by "
                    f"{decided['by']} at {decided['at']} (the pending request has other arguments)")
        return (f"the arguments of {what} changed since they were reviewed: the pending request has sha256 "
                f"{row['args_sha256']}, not {sha}")

    @staticmethod
    def _why_nothing_pending(conn: Connection, case_id: str, action: str, target: str | None, what: str) -> str:
        last = conn.execute(_decisions_on(case_id, action, target).limit(1)).mappings().first()
        if last is None:
            return f"nothing is pending for {what}"
        return f"{what} was already decided: {last['decision']} by {last['by']} at {last['at']}"
