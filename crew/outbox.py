"""The outbox: every write-back to the SIEM that failed is kept here until it lands.

A verdict that never reaches the SIEM is a verdict lost: the alert stays New/open and the analyst
never sees it. So a write-back (the alert's status and comment, closing it, the case published to HEC,
the cases index or a Kibana case) that still fails after the connector's own retries is recorded here,
durably, and tried again with a growing delay by the same `run`, by every later `run` and by `serve`
(`drain`) until it lands. The connectors read back before a retry where the earlier write may have
landed (a lost answer), so a retry never writes twice. `run` exits 4 and lists what is still pending;
`cases list --status writeback_pending` and `doctor` show it too.

Items: `action` (an update_alert / close_alert / add_case_comment whose ledger row failed: the retry is
the executor taking the failed claim over) and `publish` (the case record). One row per key; states
pending -> done.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from siemcrew.crew.ledger import SqliteFile
from siemcrew.crew.models import Model

OutboxKind = Literal["action", "publish"]
# seconds before the n-th retry (then the last one, hourly): a blip is retried within the same run, an
# outage is retried by every run and by serve without hammering the SIEM
BACKOFF_S = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY,
    case_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_at REAL NOT NULL,
    last_error TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at);
CREATE INDEX IF NOT EXISTS outbox_by_case ON outbox (case_id, state);
"""


class OutboxItem(Model):
    key: str
    case_id: str
    kind: OutboxKind
    action: str
    target: str
    state: Literal["pending", "done"]
    attempts: int
    next_at: datetime
    last_error: str = ""
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> "OutboxItem":
        values = dict(row)
        for name in ("next_at", "created_at", "updated_at"):
            values[name] = datetime.fromtimestamp(values[name], tz=timezone.utc)
        return cls.model_validate(values)

    def line(self) -> str:
        """One line for a run summary or doctor: what, for which case, how often tried, the last error."""
        return f"{self.key}: {self.attempts} attempt(s), last error: {self.last_error}"[:400]


def backoff(attempts: int) -> float:
    return BACKOFF_S[min(max(attempts, 1), len(BACKOFF_S)) - 1]


class Outbox:
    def __init__(self, path: Path) -> None:
        self.db = SqliteFile(path, _SCHEMA)

    def failed(self, key: str, case_id: str, kind: OutboxKind, action: str, target: str, error: str,
               now: float | None = None) -> OutboxItem:
        """Record a failed attempt: a new pending item, or one more attempt of a pending one."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            row = conn.execute("SELECT attempts FROM outbox WHERE key=?", (key,)).fetchone()
            attempts = (row["attempts"] if row is not None else 0) + 1
            conn.execute(
                "INSERT INTO outbox (key, case_id, kind, action, target, state, attempts, next_at, last_error,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?)"
                " ON CONFLICT(key) DO UPDATE SET state='pending', attempts=excluded.attempts,"
                " next_at=excluded.next_at, last_error=excluded.last_error, updated_at=excluded.updated_at",
                (key, case_id, kind, action, target, attempts, now + backoff(attempts), error[:500], now, now))
            return OutboxItem.from_row(conn.execute("SELECT * FROM outbox WHERE key=?", (key,)).fetchone())

    def done(self, key: str, now: float | None = None) -> bool:
        """The write landed: True when a pending item was waiting for it."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            cursor = conn.execute("UPDATE outbox SET state='done', updated_at=? WHERE key=? AND state='pending'",
                                  (now, key))
            return cursor.rowcount > 0

    def due(self, now: float | None = None) -> list[OutboxItem]:
        now = time.time() if now is None else now
        with self.db.transaction(write=False) as conn:
            rows = conn.execute("SELECT * FROM outbox WHERE state='pending' AND next_at<=? ORDER BY next_at, key",
                                (now,)).fetchall()
        return [OutboxItem.from_row(r) for r in rows]

    def pending(self, case_id: str | None = None) -> list[OutboxItem]:
        query, params = "SELECT * FROM outbox WHERE state='pending'", ()
        if case_id is not None:
            query, params = query + " AND case_id=?", (case_id,)
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(query + " ORDER BY created_at, key", params).fetchall()
        return [OutboxItem.from_row(r) for r in rows]
