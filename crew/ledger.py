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

The `SqliteFile` helper (one short-lived connection per operation, WAL, busy timeout, BEGIN
IMMEDIATE transactions) is shared with the approval store.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, get_args

from siemcrew.crew.models import Model

LedgerState = Literal["claimed", "pending", "done", "failed", "timed_out", "dry_run", "skipped"]
STATES: frozenset[str] = frozenset(get_args(LedgerState))
RATE_COUNTED_STATES = ("claimed", "pending", "done", "timed_out")
TERMINAL_STATES = frozenset({"done", "dry_run", "skipped"})


class StoreError(RuntimeError):
    """The SQLite file cannot be opened or stayed locked beyond the busy timeout."""


class LedgerError(ValueError):
    """A ledger call was wrong for the row's state (unknown key, bad state, terminal row)."""


class SqliteFile:
    """One SQLite file shared by threads and processes: a fresh connection per operation."""

    def __init__(self, path: Path | str, schema: str, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        try:
            conn = self._connect()
            try:
                conn.executescript("BEGIN IMMEDIATE;" + schema + "COMMIT;")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot create the schema: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A transaction; a write one (BEGIN IMMEDIATE) takes the write lock up front so that
        concurrent read-check-write sequences queue up instead of interleaving."""
        try:
            conn = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from None
        try:
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.path}: busy beyond {self.busy_timeout_s:g}s: {exc}") from None
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"{self.path}: commit failed: {exc}") from None
        finally:
            conn.close()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    key TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    args_sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    ticket TEXT,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    claimed_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_action ON actions (action, claimed_at);
CREATE INDEX IF NOT EXISTS actions_by_state ON actions (state, updated_at);
"""


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
    def from_row(cls, row: sqlite3.Row, acquired: bool = False) -> "Claim":
        values = dict(row)
        for field in ("claimed_at", "updated_at"):
            values[field] = datetime.fromtimestamp(values[field], tz=timezone.utc)
        return cls(**values, acquired=acquired)


class ActionLedger:
    """Idempotent execution records in one SQLite file."""

    def __init__(self, db_path: Path | str, busy_timeout_s: float = 30.0) -> None:
        self.db = SqliteFile(db_path, _SCHEMA, busy_timeout_s)

    def claim(self, key: str, action: str, target: str, args_sha256: str, now: float | None = None) -> Claim:
        """Insert the key as `claimed` by this process, or return the existing row (acquired=False)."""
        stamp = time.time() if now is None else now
        with self.db.transaction() as conn:
            inserted = conn.execute(
                "INSERT OR IGNORE INTO actions"
                " (key, action, target, args_sha256, state, pid, host, claimed_at, updated_at, version)"
                " VALUES (?, ?, ?, ?, 'claimed', ?, ?, ?, ?, 1)",
                (key, action, target, args_sha256, os.getpid(), socket.gethostname(), stamp, stamp),
            ).rowcount
            return Claim.from_row(self._require(conn, key), acquired=inserted == 1)

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
            changed = conn.execute(
                "UPDATE actions SET state='claimed', pid=?, host=?, claimed_at=?, updated_at=?, detail='',"
                " args_sha256=?, version=version+1 WHERE key=? AND version=?",
                (
                    os.getpid(),
                    socket.gethostname(),
                    stamp,
                    stamp,
                    args_sha256 or seen.args_sha256,
                    seen.key,
                    seen.version,
                ),
            ).rowcount
            return Claim.from_row(self._require(conn, seen.key), acquired=changed == 1)

    def update(self, key: str, state: LedgerState, detail: str = "", ticket: str | None = None) -> Claim:
        """Record progress or the outcome; a final state (done, dry_run, skipped) is never overwritten."""
        if state not in STATES:
            raise LedgerError(f"unknown ledger state {state!r}; expected one of {sorted(STATES)}")
        with self.db.transaction() as conn:
            row = self._require(conn, key)
            if row["state"] in TERMINAL_STATES and row["state"] != state:
                raise LedgerError(f"{key} is already {row['state']}; refusing to change it to {state}")
            conn.execute(
                "UPDATE actions SET state=?, detail=?, ticket=COALESCE(?, ticket), updated_at=?, version=version+1"
                " WHERE key=?",
                (state, detail, ticket, time.time(), key),
            )
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
            conn.execute("UPDATE actions SET key=?, updated_at=?, version=version+1 WHERE key=?", (kept, stamp, key))
            return Claim.from_row(self._require(conn, kept))

    def get(self, key: str) -> Claim | None:
        with self.db.transaction(write=False) as conn:
            row = self._row(conn, key)
        return Claim.from_row(row) if row is not None else None

    def count_since(self, action: str, since_epoch: float) -> int:
        """Executions of `action` claimed at or after `since_epoch` that may have had an effect."""
        marks = ",".join("?" for _ in RATE_COUNTED_STATES)
        with self.db.transaction(write=False) as conn:
            (count,) = conn.execute(
                f"SELECT COUNT(*) FROM actions WHERE action=? AND claimed_at>=? AND state IN ({marks})",
                (action, since_epoch, *RATE_COUNTED_STATES),
            ).fetchone()
        return int(count)

    def stale_claims(self, older_than_s: float, now: float | None = None) -> list[Claim]:
        """Claims with no outcome after `older_than_s`, except those whose process is still alive here."""
        cutoff = (time.time() if now is None else now) - older_than_s
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(
                "SELECT * FROM actions WHERE state='claimed' AND updated_at<? ORDER BY claimed_at", (cutoff,)
            ).fetchall()
        here = socket.gethostname()
        return [Claim.from_row(row) for row in rows if not (row["host"] == here and process_alive(row["pid"]))]

    def in_state(self, state: LedgerState) -> list[Claim]:
        """Every row in `state`, oldest claim first (e.g. timed_out actions to ask the vendor about again)."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute("SELECT * FROM actions WHERE state=? ORDER BY claimed_at", (state,)).fetchall()
        return [Claim.from_row(row) for row in rows]

    @staticmethod
    def _row(conn: sqlite3.Connection, key: str) -> sqlite3.Row | None:
        return conn.execute("SELECT * FROM actions WHERE key=?", (key,)).fetchone()

    def _require(self, conn: sqlite3.Connection, key: str) -> sqlite3.Row:
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
