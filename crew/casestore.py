"""The persistent case store: alerts are deduplicated by id and duplicates of an open detection
are grouped into its case. Safe across processes (and, on PostgreSQL, across machines).

Leases give a case to one worker at a time. On SQLite a lease is a (host, pid) row that a live process
holds until it expires; one whose process died is taken over. On PostgreSQL a lease is a session advisory
lock (crew/sqldialect.py) that the server frees when the holder's connection ends, whatever machine it
ran on; the row then only says who holds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, func, select, update

from siemcrew.crew.database import Database
from siemcrew.crew.indicators import short_host
from siemcrew.crew.ledger import process_alive
from siemcrew.crew.models import STORED, Alert, Case, TimeRange
from siemcrew.crew.tables import CASE_TABLES, alerts, cases, grouped_alerts, intake_keys, leases, quarantine
from siemcrew.crew.timeutil import iso, utcnow

log = logging.getLogger("siemcrew")

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


C = cases.c
Bad = list[tuple[str, str, str]]
"""Cases read in a transaction that could not be (id, body, error): quarantined after it."""


class CaseStore:
    def __init__(self, db: Database | Path | str) -> None:
        self.db = Database.of(db, "cases")
        self.db.ensure(CASE_TABLES)

    def admit(self, alert: Alert) -> tuple[Case, bool]:
        """Return (case, is_new). A known alert id returns its case; a duplicate detection of an
        open case on the same host joins that case; anything else opens a new case."""
        alert_key = f"{alert.source}:{alert.id}"
        with self.db.transaction() as conn:
            known = conn.execute(select(alerts.c.case_id).where(alerts.c.alert_id == alert_key)).scalar()
            if known is not None:
                return self._load(conn, known), False
            host = short_host(alert.primary_host)
            rule = alert.rule_id or alert.rule_name
            start, end = iso(alert.timestamp - GROUP_WINDOW), iso(alert.timestamp + GROUP_WINDOW)
            rows = conn.execute(
                select(C.id, C.body).where(C.host == host, C.rule == rule, C.alert_time >= start, C.alert_time <= end,
                                           C.status.in_(OPEN)).order_by(C.alert_time).limit(20)).all()
            # A duplicate is the same detection of the same actor: another process tripping the same rule
            # on the same host is another alert, judged by its own chain.
            found = self._readable(conn, rows)
            same = [c for c in found if actor_of(c.alert) == actor_of(alert)]
            merged = bool(same)  # read in this transaction: nothing to merge on save
            if same:
                case = same[0]
                self._group(conn, case, alert)
                is_new = False
            else:
                case = Case(id=case_id_for(alert), alerts=[alert])
                case.note("intake", "case_opened", f"{alert.rule_name} on {host or '-'}")
                is_new = True
            self._save(conn, case, merged=merged)
            conn.execute(alerts.insert().values(alert_id=alert_key, case_id=case.id, received=iso(alert.timestamp)))
            return case, is_new

    @staticmethod
    def _group(conn: Connection, case: Case, alert: Alert) -> None:
        """Join a duplicate to its case: into the body up to ALERTS_IN_CASE, beside it after that."""
        if len(case.alerts) < ALERTS_IN_CASE:
            case.alerts.append(alert)
            case.note("intake", "alert_grouped", alert.id)
            return
        conn.execute(grouped_alerts.insert().values(alert_id=f"{alert.source}:{alert.id}", case_id=case.id,
                                                    body=alert.model_dump_json()))
        if not case.alerts_beyond:
            case.note("intake", "alerts_grouped_beyond",
                      f"more than {ALERTS_IN_CASE} duplicates: further ones are kept beside the case")
        case.alerts_beyond += 1

    def alerts_beyond(self, case_id: str, page: int = 500) -> Iterator[Alert]:
        """The duplicates kept beside a case body, in pages: a write-back reaches every one."""
        G, last = grouped_alerts.c, ""
        while True:
            with self.db.transaction(write=False) as conn:
                rows = conn.execute(select(G.alert_id, G.body).where(G.case_id == case_id, G.alert_id > last)
                                    .order_by(G.alert_id).limit(page)).all()
            for _, body in rows:
                yield Alert.model_validate_json(body, context={STORED: True})
            if len(rows) < page:
                return
            last = rows[-1][0]

    def lease(self, case_id: str) -> bool:
        """Take the case for this process (one worker per case, across `serve`, `run` and workers). A lease
        held by a live process elsewhere wins; one whose process died (or, on SQLite, that expired) is taken."""
        host, pid, now = socket.gethostname(), os.getpid(), time.time()
        mine = {"case_id": case_id, "host": host, "pid": pid, "expires": now + LEASE_SECONDS}
        if self.db.locks.across_hosts:
            if not self.db.locks.try_acquire(f"lease:{case_id}"):
                return False
            with self.db.transaction() as conn:
                self.db.upsert(conn, leases, mine)
            return True
        with self.db.transaction() as conn:
            row = conn.execute(select(leases).where(leases.c.case_id == case_id)).mappings().first()
            if row and (row["host"], row["pid"]) != (host, pid) and row["expires"] > now and not (
                    row["host"] == host and not process_alive(row["pid"])):
                return False
            self.db.upsert(conn, leases, mine)
            return True

    def renew(self, case_id: str) -> bool:
        """Push this process's lease on the case a lease-length further; False when it is no longer ours."""
        with self.db.transaction() as conn:
            renewed = conn.execute(update(leases).where(
                leases.c.case_id == case_id, leases.c.host == socket.gethostname(), leases.c.pid == os.getpid(),
            ).values(expires=time.time() + LEASE_SECONDS)).rowcount
        return renewed == 1

    @contextmanager
    def kept(self, case_id: str) -> Iterator[None]:
        """Renew a held lease every third of its length while the body runs: an investigation may outlast
        one lease (a slow model, a SIEM queue) without a second process taking the case from a live one."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(LEASE_SECONDS / 3):
                try:
                    if not self.renew(case_id):
                        log.warning("lease on %s is no longer held by this process", case_id)
                        return
                except Exception as exc:  # noqa: BLE001 - the store is down: try again next time
                    log.warning("lease on %s not renewed: %s", case_id, exc)

        keeper = threading.Thread(target=renew, name=f"lease-{case_id}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            done.set()
            keeper.join(timeout=5)

    def release(self, case_id: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(delete(leases).where(leases.c.case_id == case_id, leases.c.host == socket.gethostname(),
                                              leases.c.pid == os.getpid()))
        if self.db.locks.across_hosts:
            self.db.locks.release(f"lease:{case_id}")

    def known(self, alert: Alert) -> bool:
        with self.db.transaction(write=False) as conn:
            return conn.execute(select(alerts.c.alert_id).where(
                alerts.c.alert_id == f"{alert.source}:{alert.id}")).first() is not None

    def remember_intake(self, key: str, case_ids: list[str]) -> list[str] | None:
        """Idempotent intake (e.g. a Splunk sid): returns the earlier case ids if the key was seen."""
        with self.db.transaction() as conn:
            earlier = conn.execute(select(intake_keys.c.case_ids).where(intake_keys.c.key == key)).scalar()
            if earlier is not None:
                return [c for c in earlier.split(",") if c]
            conn.execute(intake_keys.insert().values(key=key, case_ids=",".join(case_ids), received=iso(utcnow())))
            return None

    def update_intake(self, key: str, case_ids: list[str]) -> None:
        with self.db.transaction() as conn:
            conn.execute(update(intake_keys).where(intake_keys.c.key == key).values(case_ids=",".join(case_ids)))

    def save(self, case: Case) -> None:
        with self.db.transaction() as conn:
            self._save(conn, case)

    def _save(self, conn: Connection, case: Case, merged: bool = False) -> None:
        """Write the case; unless it was just read in this transaction (`merged`), alerts grouped into it by
        intake while a flow was running are merged in first, so the flow's save cannot drop them."""
        body = None if merged else conn.execute(select(C.body).where(C.id == case.id)).scalar()
        stored = self._readable(conn, [(case.id, body)]) if body is not None else []
        if stored:
            known = {(a.source, a.id) for a in case.alerts}
            for alert in stored[0].alerts:
                if (alert.source, alert.id) not in known:
                    case.alerts.append(alert)
            case.alerts_beyond = max(case.alerts_beyond, stored[0].alerts_beyond)
        self.db.upsert(conn, cases, {
            "id": case.id, "status": case.status, "verdict": case.verdict, "host": short_host(case.alert.primary_host),
            "rule": case.alert.rule_id or case.alert.rule_name, "alert_time": iso(case.alert.timestamp),
            "flow_id": case.flow_id, "updated": iso(case.updated_at), "body": case.model_dump_json(),
        }, update=("status", "verdict", "flow_id", "updated", "body"))

    def _load(self, conn: Connection, case_id: str) -> Case:
        body = conn.execute(select(C.body).where(C.id == case_id)).scalar()
        found = self._readable(conn, [(case_id, body)]) if body is not None else []
        if not found:
            raise KeyError(case_id)
        return found[0]

    def _readable(self, conn: Connection, rows: Iterable[Any], bad: Bad | None = None) -> list[Case]:
        """The stored cases that read as cases. A body that no longer does (written by an older version,
        damaged, or a payload past today's limits) is moved to the quarantine: one bad row must never stop
        listing, `run` or `serve`. In a write transaction it moves at once; a reader passes `bad` and
        `_quarantine`s them after. `quarantined()` lists them (doctor shows them)."""
        found: list[Case] = []
        failed: Bad = []
        for case_id, body in rows:
            try:
                found.append(Case.model_validate_json(body, context={STORED: True}))
            except (ValueError, RecursionError) as exc:  # pydantic's ValidationError is a ValueError
                error = " ".join(str(exc).split())[:500]
                log.error("case %s cannot be read and is quarantined: %s", case_id, error)
                failed.append((case_id, body, error))
        if bad is None:
            self._move(conn, failed)
        else:
            bad.extend(failed)
        return found

    def _move(self, conn: Connection, bad: Bad) -> None:
        for case_id, body, error in bad:
            self.db.upsert(conn, quarantine, {"id": case_id, "body": body, "error": error, "at": iso(utcnow())})
            conn.execute(delete(cases).where(C.id == case_id, C.body == body))

    def _read_only(self, query: Any) -> list[Case]:
        """Cases a query selects (id, body), read without taking the write lock; unreadable ones quarantined."""
        bad: Bad = []
        with self.db.transaction(write=False) as conn:
            found = self._readable(conn, conn.execute(query).all(), bad)
        if bad:
            with self.db.transaction() as conn:
                self._move(conn, bad)
        return found

    def quarantined(self) -> list[dict[str, str]]:
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(select(quarantine.c.id, quarantine.c.error, quarantine.c.at)
                                .order_by(quarantine.c.at)).all()
        return [{"case": r[0], "error": r[1], "at": r[2]} for r in rows]

    def get(self, case_id: str) -> Case:
        found = self._read_only(select(C.id, C.body).where(C.id == case_id))
        if not found:
            raise KeyError(case_id)
        return found[0]

    def related(self, case: Case, host: str, window: TimeRange, limit: int = 10) -> list[dict[str, str]]:
        """Other cases on the host, a day either side of the window, whose verdict holds malice: the
        context a benign alert on a compromised host names instead of inheriting."""
        start, end = iso(window.start - RELATED_MARGIN), iso(window.end + RELATED_MARGIN)
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(C.id, C.verdict, C.status, C.rule, C.alert_time).where(
                    C.host == short_host(host), C.id != case.id, C.verdict.in_(("malicious", "suspicious")),
                    C.alert_time >= start, C.alert_time <= end).order_by(C.alert_time).limit(limit)).all()
        return [{"case": r[0], "verdict": r[1], "status": r[2], "rule": r[3], "alert_time": r[4]} for r in rows]

    def statuses(self) -> dict[str, int]:
        """How many cases are in each status, read from the index columns (no case body is parsed)."""
        with self.db.transaction(write=False) as conn:
            return {str(s): int(n) for s, n in conn.execute(select(C.status, func.count()).group_by(C.status)).all()}

    def list(self, status: str | None = None, limit: int = 200) -> list[Case]:
        query = select(C.id, C.body)
        if status:
            query = query.where(C.status == status)
        return self._read_only(query.order_by(C.alert_time.desc()).limit(limit))
