"""The action ledger: each (case, action, target) is executed at most once, across processes and crashes.

Before executing, the executor `claim`s the action key. Exactly one caller ever gets `acquired=True`
for a key; everyone else gets the existing row and must not execute. The executor then records the
outcome with `update`. A claim whose process died before recording an outcome shows up in
`stale_claims`: the executor checks the vendor's state before deciding anything (never a blind
re-run), then records the outcome or takes the key over with `reclaim` (compare-and-set on the
row version).

States: claimed (executing now) | pending (vendor accepted, completion not yet confirmed) | done |
failed | timed_out | dry_run | skipped.

Rate limits: `count_since` counts executions that may have had an effect - claimed, pending, done
and timed_out - by the time they were claimed. failed (the vendor refused), dry_run and skipped do
not count.

The rows live in the `actions` table (crew/tables.py), on SQLite or PostgreSQL (crew/database.py).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

from sqlalchemy import Connection, func, select, update

from siemcrew.crew.database import Database, StoreError
from siemcrew.crew.models import Model
from siemcrew.crew.tables import actions

__all__ = ["ActionLedger", "Claim", "LedgerError", "StoreError", "process_alive"]

LedgerState = Literal["claimed", "pending", "done", "failed", "timed_out", "dry_run", "skipped"]
STATES: frozenset[str] = frozenset(get_args(LedgerState))
RATE_COUNTED_STATES = ("claimed", "pending", "done", "timed_out")
TERMINAL_STATES = frozenset({"done", "dry_run", "skipped"})


class LedgerError(ValueError):
    """A ledger call was wrong for the row's state (unknown key, bad state, terminal row)."""


class Claim(Model):
    """A ledger row; `acquired` is True only for the caller that may execute now."""

    key: str
    action: str
    target: str
    args_sha256: str
    state: LedgerState
    detail: str = ""
    ticket: str | None = None
    pid: int
    host: str
    claimed_at: datetime
    updated_at: datetime
    version: int
    """Bumped on every change; `reclaim` compares it to take a row over atomically."""
    acquired: bool = False

    @classmethod
    def from_row(cls, row: Mapping[str, Any], acquired: bool = False) -> "Claim":
        values = dict(row)
        for field in ("claimed_at", "updated_at"):
            values[field] = datetime.fromtimestamp(values[field], tz=timezone.utc)
        return cls(**values, acquired=acquired)


class ActionLedger:
    """Idempotent execution records (the `actions` table)."""

    def __init__(self, db: Database | Path | str, busy_timeout_s: float = 30.0) -> None:
        self.db = Database.of(db, "ledger", busy_timeout_s)
        self.db.ensure([actions])

    def claim(self, key: str, action: str, target: str, args_sha256: str, now: float | None = None) -> Claim:
        """Insert the key as `claimed` by this process, or return the existing row (acquired=False)."""
        stamp = time.time() if now is None else now
        with self.db.transaction() as conn:
            inserted = self.db.insert_new(conn, actions, {
                "key": key, "action": action, "target": target, "args_sha256": args_sha256, "state": "claimed",
                "pid": os.getpid(), "host": socket.gethostname(), "claimed_at": stamp, "updated_at": stamp, "version": 1})
            return Claim.from_row(self._require(conn, key), acquired=inserted)

    def reclaim(self, seen: Claim, args_sha256: str | None = None, now: float | None = None) -> Claim:
        """Take a key over iff its row is still exactly as `seen` (after a failure, or a checked stale claim).

        Compare-and-set on the row version: of several processes reclaiming from the same snapshot,
        exactly one gets acquired=True. Final rows (done, dry_run, skipped) are never taken over.
        `args_sha256` records the arguments of the new attempt when they differ (a re-approved action).
        """
        if seen.state in TERMINAL_STATES:
            raise LedgerError(f"{seen.key}: a {seen.state} action is final and cannot be executed again")
        stamp = time.time() if now is None else now
        with self.db.transaction() as conn:
            changed = conn.execute(update(actions).where(actions.c.key == seen.key, actions.c.version == seen.version)
                                   .values(state="claimed", pid=os.getpid(), host=socket.gethostname(),
                                           claimed_at=stamp, updated_at=stamp, detail="",
                                           args_sha256=args_sha256 or seen.args_sha256,
                                           version=actions.c.version + 1)).rowcount
            return Claim.from_row(self._require(conn, seen.key), acquired=changed == 1)

    def update(self, key: str, state: LedgerState, detail: str = "", ticket: str | None = None) -> Claim:
        """Record progress or the outcome; a final state (done, dry_run, skipped) is never overwritten."""
        if state not in STATES:
            raise LedgerError(f"unknown ledger state {state!r}; expected one of {sorted(STATES)}")
        with self.db.transaction() as conn:
            row = self._require(conn, key)
            if row["state"] in TERMINAL_STATES and row["state"] != state:
                raise LedgerError(f"{key} is already {row['state']}; refusing to change it to {state}")
            conn.execute(update(actions).where(actions.c.key == key).values(
                state=state, detail=detail, ticket=func.coalesce(ticket, actions.c.ticket), updated_at=time.time(),
                version=actions.c.version + 1))
            return Claim.from_row(self._require(conn, key))

    def supersede(self, key: str, now: float | None = None) -> Claim | None:
        """Free a finished key for one more execution, keeping its row under `<key>#superseded@<time>`.

        Only for SIEM write-backs whose outcome a later attempt must replace (the alert status written when
        a case was halted, before `rerun` continues it); a claim in progress or pending is never touched.
        Returns the kept row, or None when there was nothing to supersede.
        """
        stamp = time.time() if now is None else now
        with self.db.transaction() as conn:
            row = self._row(conn, key)
            if row is None:
                return None
            if row["state"] in ("claimed", "pending"):
                raise LedgerError(f"{key} is {row['state']}; it cannot be superseded while it may still act")
            kept = f"{key}#superseded@{stamp:.6f}"
            conn.execute(update(actions).where(actions.c.key == key).values(
                key=kept, updated_at=stamp, version=actions.c.version + 1))
            return Claim.from_row(self._require(conn, kept))

    def get(self, key: str) -> Claim | None:
        with self.db.transaction(write=False) as conn:
            row = self._row(conn, key)
        return Claim.from_row(row) if row is not None else None

    def count_since(self, action: str, since_epoch: float) -> int:
        """Executions of `action` claimed at or after `since_epoch` that may have had an effect."""
        with self.db.transaction(write=False) as conn:
            count = conn.execute(select(func.count()).select_from(actions).where(
                actions.c.action == action, actions.c.claimed_at >= since_epoch,
                actions.c.state.in_(RATE_COUNTED_STATES))).scalar_one()
        return int(count)

    def stale_claims(self, older_than_s: float, now: float | None = None) -> list[Claim]:
        """Claims with no outcome after `older_than_s`, except those whose process is still alive here."""
        cutoff = (time.time() if now is None else now) - older_than_s
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(select(actions).where(actions.c.state == "claimed", actions.c.updated_at < cutoff)
                                .order_by(actions.c.claimed_at)).mappings().all()
        here = socket.gethostname()
        return [Claim.from_row(row) for row in rows if not (row["host"] == here and process_alive(row["pid"]))]

    def in_state(self, state: LedgerState) -> list[Claim]:
        """Every row in `state`, oldest claim first (e.g. timed_out actions to ask the vendor about again)."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(select(actions).where(actions.c.state == state)
                                .order_by(actions.c.claimed_at)).mappings().all()
        return [Claim.from_row(row) for row in rows]

    def rows(self) -> list[dict[str, Any]]:
        """Every row (key, action, target, args sha256, state): what the audit cross-check compares."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(select(actions.c.key, actions.c.action, actions.c.target, actions.c.args_sha256,
                                       actions.c.state)).mappings().all()
        return [dict(row) for row in rows]

    @staticmethod
    def _row(conn: Connection, key: str) -> Mapping[str, Any] | None:
        return conn.execute(select(actions).where(actions.c.key == key)).mappings().first()

    def _require(self, conn: Connection, key: str) -> Mapping[str, Any]:
        row = self._row(conn, key)
        if row is None:
            raise LedgerError(f"no ledger entry for {key}")
        return row


def process_alive(pid: int) -> bool:
    """Is a process with this pid running on this machine (best effort; pids can be reused)?"""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
