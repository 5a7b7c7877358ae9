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

import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select, update

from siemcrew.crew.database import Database
from siemcrew.crew.models import Model
from siemcrew.crew.tables import outbox

OutboxKind = Literal["action", "publish"]
# seconds before the n-th retry (then the last one, hourly): a blip is retried within the same run, an
# outage is retried by every run and by serve without hammering the SIEM
BACKOFF_S = (5.0, 30.0, 120.0, 600.0, 1800.0, 3600.0)

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
    def from_row(cls, row: Mapping[str, Any]) -> "OutboxItem":
        values = dict(row)
        for name in ("next_at", "created_at", "updated_at"):
            values[name] = datetime.fromtimestamp(values[name], tz=timezone.utc)
        return cls.model_validate(values)

    def line(self) -> str:
        """One line for a run summary or doctor: what, for which case, how often tried, the last error."""
        return f"{self.key}: {self.attempts} attempt(s), last error: {self.last_error}"[:400]


def backoff(attempts: int) -> float:
    return BACKOFF_S[min(max(attempts, 1), len(BACKOFF_S)) - 1]


O = outbox.c


class Outbox:
    def __init__(self, db: Database | Path | str) -> None:
        self.db = Database.of(db, "outbox")
        self.db.ensure([outbox])

    def failed(self, key: str, case_id: str, kind: OutboxKind, action: str, target: str, error: str,
               now: float | None = None) -> OutboxItem:
        """Record a failed attempt: a new pending item, or one more attempt of a pending one."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            earlier = conn.execute(select(O.attempts).where(O.key == key)).scalar()
            attempts = (earlier or 0) + 1
            self.db.upsert(conn, outbox, {
                "key": key, "case_id": case_id, "kind": kind, "action": action, "target": target, "state": "pending",
                "attempts": attempts, "next_at": now + backoff(attempts), "last_error": error[:500], "created_at": now,
                "updated_at": now}, update=("state", "attempts", "next_at", "last_error", "updated_at"))
            return OutboxItem.from_row(conn.execute(select(outbox).where(O.key == key)).mappings().one())

    def done(self, key: str, now: float | None = None) -> bool:
        """The write landed: True when a pending item was waiting for it."""
        now = time.time() if now is None else now
        with self.db.transaction() as conn:
            changed = conn.execute(update(outbox).where(O.key == key, O.state == "pending")
                                   .values(state="done", updated_at=now)).rowcount
            return changed > 0

    def due(self, now: float | None = None) -> list[OutboxItem]:
        now = time.time() if now is None else now
        return self._select(select(outbox).where(O.state == "pending", O.next_at <= now).order_by(O.next_at, O.key))

    def pending(self, case_id: str | None = None) -> list[OutboxItem]:
        query = select(outbox).where(O.state == "pending")
        if case_id is not None:
            query = query.where(O.case_id == case_id)
        return self._select(query.order_by(O.created_at, O.key))

    def _select(self, query: Any) -> list[OutboxItem]:
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(query).mappings().all()
        return [OutboxItem.from_row(r) for r in rows]
