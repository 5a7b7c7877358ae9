"""The persistent case store: alerts are deduplicated by id and duplicates of an open detection
are grouped into its case. SQLite, safe across processes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sqlite3
import time
import threading
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Iterator

from siemcrew.crew.indicators import short_host
from siemcrew.crew.ledger import process_alive
from siemcrew.crew.models import STORED, Alert, Case, TimeRange
from siemcrew.crew.timeutil import iso, utcnow

log = logging.getLogger("siemcrew")

SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
  id TEXT PRIMARY KEY, status TEXT NOT NULL, verdict TEXT NOT NULL, host TEXT, rule TEXT,
  alert_time TEXT, flow_id TEXT, updated TEXT NOT NULL, body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
  alert_id TEXT PRIMARY KEY, case_id TEXT NOT NULL, received TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS intake_keys (
  key TEXT PRIMARY KEY, case_ids TEXT NOT NULL, received TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
  case_id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS grouped_alerts (
  alert_id TEXT PRIMARY KEY, case_id TEXT NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS grouped_alerts_case ON grouped_alerts (case_id);
CREATE TABLE IF NOT EXISTS quarantine (
  id TEXT PRIMARY KEY, body TEXT NOT NULL, error TEXT NOT NULL, at TEXT NOT NULL
);
"""
LEASE_SECONDS = 1800.0
GROUP_WINDOW = timedelta(hours=1)
RELATED_MARGIN = timedelta(days=1)
OPEN = ("new", "investigating", "awaiting_approval")
ALERTS_IN_CASE = 25
"""Duplicates a case body keeps; a noisy rule's further duplicates are kept beside it (`grouped_alerts`) and
still written back with the case, so the body a flow loads and saves stays small however often a rule fires."""


def case_id_for(alert: Alert) -> str:
    return "case-" + hashlib.sha256(f"{alert.source}:{alert.id}".encode()).hexdigest()[:12]


def actor_of(alert: Alert) -> tuple[str, ...]:
    """What an alert is about beyond its rule and host: its process, else its service or account."""
    proc = alert.process
    if proc and proc.entity_id:
        return ("entity", proc.entity_id.lower())
    if proc and (proc.executable or proc.pid is not None):
        return ("process", str(proc.executable or "").lower(), str(proc.pid or ""))
    service = alert.event.get("service.name") or alert.event.get("service.executable")
    if service:
        return ("service", str(service).lower())
    return ("users", *sorted(u.lower() for u in alert.entities.users))


class CaseStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        db = sqlite3.connect(self.path, timeout=30)
        try:
            db.executescript(SCHEMA)
        finally:
            db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            finally:
                db.close()

    def admit(self, alert: Alert) -> tuple[Case, bool]:
        """Return (case, is_new). A known alert id returns its case; a duplicate detection of an
        open case on the same host joins that case; anything else opens a new case."""
        with self._tx() as db:
            row = db.execute("SELECT case_id FROM alerts WHERE alert_id = ?", (f"{alert.source}:{alert.id}",)).fetchone()
            if row:
                return self._load(db, row[0]), False
            host = short_host(alert.primary_host)
            rule = alert.rule_id or alert.rule_name
            start, end = iso(alert.timestamp - GROUP_WINDOW), iso(alert.timestamp + GROUP_WINDOW)
            rows = db.execute(
                f"SELECT id, body FROM cases WHERE host = ? AND rule = ? AND alert_time BETWEEN ? AND ? "
                f"AND status IN ({','.join('?' * len(OPEN))}) ORDER BY alert_time LIMIT 20",
                (host, rule, start, end, *OPEN),
            ).fetchall()
            # A duplicate is the same detection of the same actor: another process tripping the same rule
            # on the same host is another alert, judged by its own chain.
            found = (self._read(db, r[0], r[1]) for r in rows)
            same = [c for c in found if c is not None and actor_of(c.alert) == actor_of(alert)]
            if same:
                case = same[0]
                if len(case.alerts) < ALERTS_IN_CASE:
                    case.alerts.append(alert)
                    case.note("intake", "alert_grouped", alert.id)
                else:
                    db.execute("INSERT INTO grouped_alerts VALUES (?, ?, ?)",
                               (f"{alert.source}:{alert.id}", case.id, alert.model_dump_json()))
                    if not case.alerts_beyond:
                        case.note("intake", "alerts_grouped_beyond",
                                  f"more than {ALERTS_IN_CASE} duplicates: further ones are kept beside the case")
                    case.alerts_beyond += 1
                self._save(db, case, merged=True)
                db.execute("INSERT INTO alerts VALUES (?, ?, ?)", (f"{alert.source}:{alert.id}", case.id, iso(alert.timestamp)))
                return case, False
            case = Case(id=case_id_for(alert), alerts=[alert])
            case.note("intake", "case_opened", f"{alert.rule_name} on {host or '-'}")
            self._save(db, case)
            db.execute("INSERT INTO alerts VALUES (?, ?, ?)", (f"{alert.source}:{alert.id}", case.id, iso(alert.timestamp)))
            return case, True

    def lease(self, case_id: str) -> bool:
        """Take the case for this process (one worker per case, across `serve` and `run`). A lease held
        by a live process elsewhere wins; one whose process died or that expired is taken over."""
        host, pid, now = socket.gethostname(), os.getpid(), time.time()
        with self._tx() as db:
            row = db.execute("SELECT host, pid, expires FROM leases WHERE case_id = ?", (case_id,)).fetchone()
            if row and (row[0], row[1]) != (host, pid) and row[2] > now and not (row[0] == host and not process_alive(row[1])):
                return False
            db.execute("INSERT OR REPLACE INTO leases VALUES (?, ?, ?, ?)", (case_id, host, pid, now + LEASE_SECONDS))
            return True

    def release(self, case_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM leases WHERE case_id = ? AND host = ? AND pid = ?",
                       (case_id, socket.gethostname(), os.getpid()))

    def known(self, alert: Alert) -> bool:
        with self._tx() as db:
            return db.execute("SELECT 1 FROM alerts WHERE alert_id = ?", (f"{alert.source}:{alert.id}",)).fetchone() is not None

    def remember_intake(self, key: str, case_ids: list[str]) -> list[str] | None:
        """Idempotent intake (e.g. a Splunk sid): returns the earlier case ids if the key was seen."""
        with self._tx() as db:
            row = db.execute("SELECT case_ids FROM intake_keys WHERE key = ?", (key,)).fetchone()
            if row:
                return [c for c in row[0].split(",") if c]
            db.execute("INSERT INTO intake_keys VALUES (?, ?, datetime('now'))", (key, ",".join(case_ids)))
            return None

    def update_intake(self, key: str, case_ids: list[str]) -> None:
        with self._tx() as db:
            db.execute("UPDATE intake_keys SET case_ids = ? WHERE key = ?", (",".join(case_ids), key))

    def save(self, case: Case) -> None:
        with self._tx() as db:
            self._save(db, case)

    def _save(self, db: sqlite3.Connection, case: Case, merged: bool = False) -> None:
        """Write the case; unless it was just read in this transaction (`merged`), alerts grouped into it by
        intake while a flow was running are merged in first, so the flow's save cannot drop them."""
        row = None if merged else db.execute("SELECT body FROM cases WHERE id = ?", (case.id,)).fetchone()
        stored = self._read(db, case.id, row[0]) if row else None
        if stored is not None:
            known = {(a.source, a.id) for a in case.alerts}
            for alert in stored.alerts:
                if (alert.source, alert.id) not in known:
                    case.alerts.append(alert)
            case.alerts_beyond = max(case.alerts_beyond, stored.alerts_beyond)
        db.execute(
            "INSERT INTO cases (id, status, verdict, host, rule, alert_time, flow_id, updated, body) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET status=excluded.status, "
            "verdict=excluded.verdict, flow_id=excluded.flow_id, updated=excluded.updated, body=excluded.body",
            (case.id, case.status, case.verdict, short_host(case.alert.primary_host),
             case.alert.rule_id or case.alert.rule_name, iso(case.alert.timestamp), case.flow_id,
             iso(case.updated_at), case.model_dump_json()),
        )

    def _load(self, db: sqlite3.Connection, case_id: str) -> Case:
        row = db.execute("SELECT body FROM cases WHERE id = ?", (case_id,)).fetchone()
        if not row:
            raise KeyError(case_id)
        case = self._read(db, case_id, row[0])
        if case is None:
            raise KeyError(case_id)
        return case

    def _read(self, db: sqlite3.Connection, case_id: str, body: str) -> Case | None:
        """The stored case, or None after moving a body that no longer reads as a case (written by an older
        version, damaged, or a payload past today's limits) to the quarantine: one bad row must never stop
        listing, `run` or `serve`. `quarantined()` lists them (doctor shows them)."""
        try:
            return Case.model_validate_json(body, context={STORED: True})
        except (ValueError, RecursionError) as exc:  # pydantic's ValidationError is a ValueError
            error = " ".join(str(exc).split())[:500]
            log.error("case %s cannot be read and is quarantined: %s", case_id, error)
            db.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?, ?, ?)", (case_id, body, error, iso(utcnow())))
            db.execute("DELETE FROM cases WHERE id = ?", (case_id,))
            return None

    def alerts_beyond(self, case_id: str, page: int = 500) -> Iterator[Alert]:
        """The duplicates kept beside a case body (ALERTS_IN_CASE), in pages: a write-back reaches every one."""
        last = ""
        while True:
            with self._tx() as db:
                rows = db.execute("SELECT alert_id, body FROM grouped_alerts WHERE case_id = ? AND alert_id > ? "
                                  "ORDER BY alert_id LIMIT ?", (case_id, last, page)).fetchall()
            for _, body in rows:
                yield Alert.model_validate_json(body, context={STORED: True})
            if len(rows) < page:
                return
            last = rows[-1][0]

    def quarantined(self) -> list[dict[str, str]]:
        with self._tx() as db:
            rows = db.execute("SELECT id, error, at FROM quarantine ORDER BY at").fetchall()
        return [{"case": r[0], "error": r[1], "at": r[2]} for r in rows]

    def get(self, case_id: str) -> Case:
        with self._tx() as db:
            return self._load(db, case_id)

    def related(self, case: Case, host: str, window: TimeRange, limit: int = 10) -> list[dict[str, str]]:
        """Other cases on the host, a day either side of the window, whose verdict holds malice: the
        context a benign alert on a compromised host names instead of inheriting."""
        start, end = iso(window.start - RELATED_MARGIN), iso(window.end + RELATED_MARGIN)
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, verdict, status, rule, alert_time FROM cases WHERE host = ? AND id != ? "
                "AND verdict IN ('malicious', 'suspicious') AND alert_time BETWEEN ? AND ? "
                "ORDER BY alert_time LIMIT ?", (short_host(host), case.id, start, end, limit)).fetchall()
        return [{"case": r[0], "verdict": r[1], "status": r[2], "rule": r[3], "alert_time": r[4]} for r in rows]

    def list(self, status: str | None = None, limit: int = 200) -> list[Case]:
        with self._tx() as db:
            if status:
                rows = db.execute("SELECT id, body FROM cases WHERE status = ? ORDER BY alert_time DESC LIMIT ?", (status, limit))
            else:
                rows = db.execute("SELECT id, body FROM cases ORDER BY alert_time DESC LIMIT ?", (limit,))
            read = [self._read(db, r[0], r[1]) for r in rows.fetchall()]
            return [case for case in read if case is not None]
