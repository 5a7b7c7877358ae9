"""Does the audit log account for every action, and do the stores agree with it?

An intact chain proves the log was not edited; it does not prove that what ran was allowed. Actions
run on what the approval store and the ledger say (approvals.db and ledger.db in the home, or their
tables in the state database), and whoever can write the home can write those. So after
the chain, `verify_accounted` reads the log once and checks:

In the log (also on a shipped copy, without the stores):
- every `action_start` run by `policy:auto` follows a policy decision `auto` for exactly that case,
  action, target and arguments sha256 (the latest such decision before it);
- every other `action_start` follows a policy decision `approval_required` for those arguments and an
  `approval` record that approves them, by the actor who ran it, not expired when it started (the
  latest approval record for those arguments: a later denial undoes an earlier approval);
- every `action` result follows the `action_start` of its key.

Against the stores in the home (`stores`):
- every decision in approvals.db is an `approval` record in the log (same case, action, target,
  sha256, decision, approver and time); a logged approval an action ran on must be in approvals.db;
- every action_start has a row in ledger.db (the key, or its superseded copy); every ledger row has an
  action_start with its key and arguments.

Two states are crashes, not tampering, and are reported as notes: a logged approval that never
reached approvals.db with nothing run on it (the log is written before the decision commits), and a
ledger claim with no action_start (the process died between claiming and acting: nothing ran).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from siemcrew.crew.audit import AuditError, AuditRecord, VerifyResult, read, verify
from siemcrew.crew.audittable import TableAuditLog, verify_table
from siemcrew.crew.database import Database, StoreError
from siemcrew.crew.storage import Storage
from siemcrew.crew.timeutil import parse_time

AUTO_ACTOR = "policy:auto"
SUPERSEDED = "#superseded@"
MAX_LISTED = 100

ActionKey = tuple[str | None, str, str, str]
"""(case id, action, target, arguments sha256): what a decision or an approval binds to."""


def _bound(case_id: str | None, data: dict[str, Any]) -> ActionKey:
    return (case_id, str(data.get("action")), str(data.get("target")), str(data.get("args_sha256")))


def _when(value: Any) -> datetime | None:
    try:
        return parse_time(value)
    except (TypeError, ValueError):
        return None


def _approval_identity(case_id: Any, data: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree between a logged approval and a decision row (times compared as instants)."""
    return (case_id, data.get("action"), data.get("target"), data.get("args_sha256"), data.get("decision"),
            data.get("by"), _when(data.get("at")))


class _Walk:
    """One pass over the log: the latest decisions and approvals so far, and what each action ran on."""

    def __init__(self) -> None:
        self.policy: dict[ActionKey, str] = {}
        self.approvals: dict[ActionKey, AuditRecord] = {}
        self.logged_approvals: list[AuditRecord] = []
        self.starts: list[AuditRecord] = []
        self.relied: dict[int, AuditRecord] = {}  # action_start seq -> the approval record it ran on
        self.started_keys: set[str] = set()
        self.mismatches: list[tuple[int | None, str]] = []

    def see(self, record: AuditRecord) -> None:
        if record.kind == "policy":
            self.policy[_bound(record.case_id, record.data)] = str(record.data.get("outcome"))
        elif record.kind == "approval":
            self.approvals[_bound(record.case_id, record.data)] = record
            self.logged_approvals.append(record)
        elif record.kind == "action_start":
            self.starts.append(record)
            self.started_keys.add(str(record.data.get("key")))
            problem = self._unaccounted(record)
            if problem:
                self.mismatches.append((record.seq, f"{_describe(record)}: {problem}"))
        elif record.kind == "action" and record.data.get("state") != "skipped":
            if str(record.data.get("key")) not in self.started_keys:
                self.mismatches.append((record.seq, f"action result {record.seq} ({record.data.get('key')}) "
                                                    "has no action_start before it"))

    def _unaccounted(self, start: AuditRecord) -> str | None:
        """Why the log does not allow this action_start (None when it does)."""
        bound = _bound(start.case_id, start.data)
        outcome = self.policy.get(bound, "missing")
        if start.actor == AUTO_ACTOR:
            if outcome != "auto":
                return f"ran automatically, but the policy decision for these arguments is {outcome}, not auto"
            return None
        if outcome != "approval_required":
            return f"ran as approved by {start.actor}, but the policy decision for these arguments is {outcome}"
        approval = self.approvals.get(bound)
        if approval is None or approval.data.get("decision") != "approve" or approval.data.get("by") != start.actor:
            return f"no approval by {start.actor} of these arguments in the log before it"
        at, expires, started = _when(approval.data.get("at")), _when(approval.data.get("expires_at")), _when(start.ts)
        if at is None or expires is None or started is None or not at <= started < expires:
            return f"the approval by {start.actor} (record {approval.seq}) had expired or was not yet given"
        self.relied[start.seq] = approval
        return None


def _describe(start: AuditRecord) -> str:
    data = start.data
    return (f"action_start {start.seq} ({data.get('action')} {data.get('target')} on case {start.case_id}, "
            f"by {start.actor})")


def _stored(storage: Storage) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The approval decisions and the ledger rows, read without creating or changing a store."""
    try:
        decisions = [d.model_dump(mode="json") for d in storage.approvals(readonly=True).decisions()] \
            if storage.exists("approvals") else []
        ledger = storage.ledger(readonly=True).rows() if storage.exists("ledger") else []
    except StoreError as exc:
        raise AuditError(f"cannot read the stores to cross-check the audit log: {exc}") from None
    return decisions, ledger


def _against_stores(walk: _Walk, storage: Storage, notes: list[str]) -> list[tuple[int | None, str]]:
    mismatches: list[tuple[int | None, str]] = []
    decisions, ledger = _stored(storage)
    approvals_at, ledger_at = storage.label("approvals"), storage.label("ledger")
    stored = {_approval_identity(row["case_id"], row) for row in decisions}
    logged = {_approval_identity(record.case_id, record.data) for record in walk.logged_approvals}
    for row in decisions:
        if _approval_identity(row["case_id"], row) not in logged:
            mismatches.append((None, f"{approvals_at} holds a decision that is not in the audit log: {row['decision']} "
                                     f"of {row['action']} {row['target']} on case {row['case_id']} by {row['by']} "
                                     f"at {row['at']}"))
    relied_on = {approval.seq for approval in walk.relied.values()}
    for start in walk.starts:
        approval = walk.relied.get(start.seq)
        if approval is not None and _approval_identity(approval.case_id, approval.data) not in stored:
            mismatches.append((start.seq, f"{_describe(start)}: {approvals_at} has no decision matching the approval "
                                          f"it ran on (record {approval.seq})"))
    for approval in walk.logged_approvals:
        if approval.seq not in relied_on and _approval_identity(approval.case_id, approval.data) not in stored:
            notes.append(f"approval record {approval.seq} never reached {approvals_at} (a crash between the log and "
                         "the store, or the row was deleted); nothing ran on it")

    shas: dict[str, set[str]] = {}
    for start in walk.starts:
        shas.setdefault(str(start.data.get("key")), set()).add(str(start.data.get("args_sha256")))
    rows_by_key = {str(row["key"]).split(SUPERSEDED, 1)[0] for row in ledger}
    for start in walk.starts:
        if str(start.data.get("key")) not in rows_by_key:
            mismatches.append((start.seq, f"{_describe(start)}: no ledger row for {start.data.get('key')} in {ledger_at}"))
    for row in ledger:
        key = str(row["key"]).split(SUPERSEDED, 1)[0]
        if key not in shas and row["state"] == "claimed":
            notes.append(f"{ledger_at} claim {key} has no action_start: its process died before acting")
        elif key not in shas:
            mismatches.append((None, f"{ledger_at} row {row['key']} ({row['state']}) has no action_start in the audit log"))
        elif row["args_sha256"] not in shas[key]:
            mismatches.append((None, f"{ledger_at} row {row['key']} records arguments {row['args_sha256'][:16]}… that no "
                                     "action_start of its key ran with"))
    return mismatches


AuditSource = Path | str | Database
"""An audit log file, or the database holding the `audit_log` table."""


def verify_accounted(log: AuditSource, key: bytes | None = None, stores: Path | str | Storage | None = None
                     ) -> VerifyResult:
    """The chain is intact (see `audit.verify`) and accounts for every executed action; with `stores`
    (the home holding approvals.db and ledger.db, or the Storage holding them), the stores agree with the log.
    Fails on any mismatch, naming the first action_start it concerns (`first_bad`) and listing them all
    (`mismatches`)."""
    if isinstance(log, Database):
        chain, records = verify_table(log, key), TableAuditLog(log, key).read
    else:
        chain, records = verify(log, key=key), partial(read, log)
    if not chain.ok:
        return chain
    walk = _Walk()
    notes = list(chain.notes)
    storage = Storage(Path(stores)) if isinstance(stores, (Path, str)) else stores
    try:
        for record in records() if chain.records else ():
            walk.see(record)
        mismatches = walk.mismatches + (_against_stores(walk, storage, notes) if storage is not None else [])
    except (AuditError, StoreError) as exc:
        return VerifyResult(ok=False, records=chain.records, reason=str(exc), notes=notes)
    return _result(chain.records, mismatches, notes)


def _result(records: int, mismatches: Iterable[tuple[int | None, str]], notes: list[str]) -> VerifyResult:
    ordered = sorted(mismatches, key=lambda item: (item[0] is None, item[0] or 0))
    if not ordered:
        return VerifyResult(ok=True, records=records, reason=f"{records} records intact; every action accounted for",
                            notes=notes[:MAX_LISTED])
    more = f" (and {len(ordered) - 1} more mismatch(es))" if len(ordered) > 1 else ""
    return VerifyResult(ok=False, records=records, first_bad=ordered[0][0], reason=ordered[0][1] + more,
                        notes=notes[:MAX_LISTED], mismatches=[text for _, text in ordered[:MAX_LISTED]])
