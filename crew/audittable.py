"""The audit log in the state database: an append-only table holding the same records, chain and (optional)
HMAC key as the file log (crew/audit.py), for when the state lives in PostgreSQL.

Each row holds one record's canonical line (`line`, exactly the file log's line) under its `seq`; `case_id`
and `kind` repeat what the line says, for reading one case's records. `audit_head` holds the head anchor,
as the `.head` file does, so cutting records off the end is detected too.

An append is one transaction: queue behind every other appender (an advisory transaction lock on
PostgreSQL, BEGIN IMMEDIATE on SQLite), prove the end of the table is where the anchor says, insert the
record, move the anchor, commit. A writer killed half-way leaves nothing, so the file log's announce and
recovery records are not needed here. The advisory lock, unlike `LOCK TABLE … IN EXCLUSIVE MODE`, needs no
UPDATE or DELETE privilege: both can be revoked on `audit_log` from the role siemcrew runs as (README).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select

from siemcrew.crew.audit import (GENESIS, Anchor, AuditError, AuditRecord, ChainCheck, VerifyResult, anchor_text,
                                 bounded, parse_anchor, parse_record, seal)
from siemcrew.crew.database import Database
from siemcrew.crew.tables import AUDIT_TABLES, audit_head, audit_log

A = audit_log.c
HEAD = "head"
_BATCH = 1000


class TableAuditLog:
    """Append records to the `audit_log` table; safe across threads, processes and machines."""

    def __init__(self, db: Database | Path | str, key: bytes | None = None) -> None:
        self.db = Database.of(db, "audit")
        self.db.ensure(AUDIT_TABLES)
        self.key = key

    def _refuse(self, why: str) -> AuditError:
        return AuditError(f"audit log {self.db.where}: {why}; run `siemcrew audit verify`")

    def append(self, kind: str, actor: str, data: dict[str, Any], case_id: str | None = None) -> AuditRecord:
        """Append one record (secrets redacted, bounded in size) and return it as written."""
        with self.db.transaction() as conn:
            anchor = self._head(conn)
            record = seal(anchor.seq + 1, anchor.hash, kind, actor, case_id, bounded(data), self.key)
            conn.execute(audit_log.insert().values(seq=record.seq, case_id=case_id, kind=kind, line=record.line()))
            self.db.upsert(conn, audit_head, {"name": HEAD,
                                              "anchor": anchor_text(Anchor(seq=record.seq, hash=record.hash), self.key)})
        return record

    def _head(self, conn: Connection) -> Anchor:
        """The anchor to append after, once the table is proven to end where it says (lock held)."""
        anchor = _anchor(conn, self.db.where)
        line = conn.execute(select(A.line).order_by(A.seq.desc()).limit(1)).scalar()
        if anchor is None:
            if line is not None:
                raise self._refuse("the head anchor row is missing")
            return Anchor(seq=0, hash=GENESIS)
        try:
            last = parse_record(line.encode("utf-8")) if line is not None else None
        except ValueError as exc:
            raise self._refuse(f"the last row is not a valid record ({exc})") from None
        end = (last.seq, last.hash) if last is not None else (0, GENESIS)
        if end != (anchor.seq, anchor.hash):
            raise self._refuse(f"it does not end at its head anchor (seq {anchor.seq}): rows were deleted, "
                               "changed or added without moving the anchor")
        if last is not None and last.mac and self.key is None:
            raise self._refuse("the chain is keyed (HMAC) and this process has no audit key")
        problem = anchor.problem(self.key, keyed_chain=bool(last and last.mac))
        problem = problem or (f"record {last.seq} {p}" if last and (p := last.problem(self.key)) else None)
        if problem:
            raise self._refuse(problem)
        return anchor

    def verify(self) -> VerifyResult:
        return verify_table(self.db, self.key)

    def read(self, case_id: str | None = None, kind: str | None = None) -> Iterator[AuditRecord]:
        """Records in order, optionally only one case's or one kind's; a damaged row raises AuditError."""
        query = select(A.seq, A.line).order_by(A.seq)
        if case_id is not None:
            query = query.where(A.case_id == case_id)
        if kind is not None:
            query = query.where(A.kind == kind)
        for seq, line in _rows(self.db, query):
            try:
                record = parse_record(line.encode("utf-8"))
            except ValueError as exc:
                raise AuditError(f"{self.db.where}: audit record {seq} is not valid: {exc}") from None
            if (case_id is None or record.case_id == case_id) and (kind is None or record.kind == kind):
                yield record


def _anchor(conn: Connection, where: str) -> Anchor | None:
    text = conn.execute(select(audit_head.c.anchor).where(audit_head.c.name == HEAD)).scalar()
    return parse_anchor(text, f"{where} (audit_head)") if text is not None else None


def _rows(db: Database, query: Any) -> Iterator[Any]:
    """Rows of a query in batches (a long log is never held in memory at once)."""
    with db.transaction(write=False) as conn:
        result = conn.execution_options(yield_per=_BATCH).execute(query)
        yield from result


def verify_table(db: Database, key: bytes | None = None) -> VerifyResult:
    """Walk the table's chain with the file log's checks (`ChainCheck`); a row whose `seq`, `case_id` or
    `kind` column disagrees with its record is named too (it would hide the record from a case's view)."""
    if not db.has(audit_log):
        return VerifyResult(ok=True, records=0, reason="empty log")
    try:
        with db.transaction(write=False) as conn:
            anchor = _anchor(conn, db.where)
    except AuditError as exc:
        return VerifyResult(ok=False, records=0, reason=str(exc))
    check = ChainCheck(key)
    for number, (seq, case_id, kind, line) in enumerate(_rows(db, select(A.seq, A.case_id, A.kind, A.line)
                                                              .order_by(A.seq)), start=1):
        failed = check.add(number, line.encode("utf-8"))
        if failed is not None:
            return failed
        record = check.last
        if record is not None and (record.seq, record.case_id, record.kind) != (seq, case_id, kind):
            return VerifyResult(ok=False, records=check.count - 1, first_bad=number,
                                reason=f"row {seq} says case {case_id}, kind {kind} but its record {record.seq} says "
                                       f"case {record.case_id}, kind {record.kind}: the row was altered")
    return check.end(anchor)
