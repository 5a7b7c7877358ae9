"""Run an approved containment action exactly once, and report it done only when the vendor says so.

Three rules, in this order:
1. A ticket already recorded under the key is never re-sent: a finished one is returned as is, an
   unfinished one (pending, or timed out earlier) is polled again. Retries, crashes and a second
   approval therefore resume the first action instead of starting another.
2. With nothing recorded, the vendor's current state decides first: a host already contained (or
   released) is reported done without a request; one with an action already in flight (say, the
   previous process crashed between the POST and recording it) is watched, not re-sent.
3. The ticket is recorded BEFORE polling, and after every change; polling ends at done or failed,
   or at the deadline as `timed_out` — reported, never assumed.

A send that raises is checked at once against the vendor's host state (`_reread`): if the host shows the
action landed or in flight, that is recorded and watched; if not, the send did not land and the error
stands, unrecorded, so the next attempt re-reads the vendor state (rule 2) before sending anything.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from siemcrew.config.edr import EdrSettings
from siemcrew.connectors.base import ActionTicket, ConnectorError, EdrConnector, HostRef
from siemcrew.connectors.edr.common import TARGET_STATE, ticket_from_state
from siemcrew.crew.timeutil import iso, utcnow

Action = Literal["contain", "release", "kill_process"]
FINAL = ("done", "failed")
OBSERVED = "observed:"
"""Ticket-id prefix for an action found in flight at the vendor: confirmed by host state."""


class IdempotencyStore(Protocol):
    """Where a ticket is recorded under its action key (the lead adapts the action ledger to this)."""

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, ticket_json: dict[str, Any]) -> None: ...


class SqliteIdempotencyStore:
    """A one-table SQLite implementation: survives crashes, shared by processes using the same file."""

    def __init__(self, path: str | Path = ":memory:") -> None:
        self._db = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS edr_action_tickets "
            "(key TEXT PRIMARY KEY, ticket TEXT NOT NULL, updated_at TEXT NOT NULL)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT ticket FROM edr_action_tickets WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, ticket_json: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO edr_action_tickets (key, ticket, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET ticket = excluded.ticket, updated_at = excluded.updated_at",
                (key, json.dumps(ticket_json, sort_keys=True), iso(utcnow())),
            )

    def close(self) -> None:
        self._db.close()


class ContainmentExecutor:
    """Executes contain / release / kill_process idempotently under an action key."""

    def __init__(
        self,
        timeout_s: float = 300.0,
        poll_interval_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.sleep = sleep
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: EdrSettings) -> "ContainmentExecutor":
        return cls(timeout_s=settings.action_timeout_s, poll_interval_s=settings.poll_interval_s)

    def execute(
        self,
        connector: EdrConnector,
        action: Action,
        host: HostRef,
        comment: str,
        idempotency: IdempotencyStore,
        key: str,
        pid: int | None = None,
        timeout_s: float | None = None,
        poll_interval_s: float | None = None,
    ) -> ActionTicket:
        if action not in ("contain", "release", "kill_process"):
            raise ValueError(f"unknown EDR action {action!r}")
        if action == "kill_process" and pid is None:
            raise ValueError("kill_process needs a pid")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        interval = self.poll_interval_s if poll_interval_s is None else poll_interval_s

        recorded = idempotency.get(key)
        if recorded is not None:
            ticket = ActionTicket.model_validate(recorded)
            if ticket.state in FINAL:
                return ticket
        else:
            try:
                ticket = self._start(connector, action, host, comment, pid)
            except ConnectorError as exc:
                ticket = self._reread(connector, action, host, exc)
            idempotency.put(key, ticket.model_dump(mode="json"))
        return self._poll(connector, ticket, idempotency, key, timeout, interval)

    # -- steps ---------------------------------------------------------------------------------
    def _start(
        self, connector: EdrConnector, action: Action, host: HostRef, comment: str, pid: int | None
    ) -> ActionTicket:
        if action in TARGET_STATE:
            current = connector.host_context(host).containment
            if current == TARGET_STATE[action]:
                return ActionTicket(
                    vendor=connector.name,
                    action=action,
                    host_id=host.id,
                    ticket_id=f"{OBSERVED}{host.id}",
                    state="done",
                    detail=f"already {current}; nothing sent",
                )
            in_flight = {"contain": "pending", "release": "release_pending"}[action]
            if current == in_flight:
                return ActionTicket(
                    vendor=connector.name,
                    action=action,
                    host_id=host.id,
                    ticket_id=f"{OBSERVED}{host.id}",
                    detail=f"an action is already in flight ({current}); watching the host instead of sending",
                )
        if action == "contain":
            return connector.contain(host, comment)
        if action == "release":
            return connector.release(host, comment)
        return connector.kill_process(host, int(pid or 0), comment)

    @staticmethod
    def _reread(connector: EdrConnector, action: Action, host: HostRef, error: ConnectorError) -> ActionTicket:
        """A send that failed or got no answer may still have landed: the vendor's host state says. Contained
        (or released) -> done; in flight -> watched; neither -> the send did not land, and the error stands
        (nothing is recorded, so a later attempt reads the state again before sending)."""
        if action not in TARGET_STATE:
            raise error
        try:
            current = connector.host_context(host).containment
        except ConnectorError:
            raise error from None
        in_flight = {"contain": "pending", "release": "release_pending"}[action]
        if current not in (TARGET_STATE[action], in_flight):
            raise error
        ticket = ActionTicket(vendor=connector.name, action=action, host_id=host.id, ticket_id=f"{OBSERVED}{host.id}",
                              detail=f"the send failed ({error}); the vendor shows the host {current}")
        return ticket_from_state(ticket, current)

    def _poll(
        self,
        connector: EdrConnector,
        ticket: ActionTicket,
        idempotency: IdempotencyStore,
        key: str,
        timeout: float,
        interval: float,
    ) -> ActionTicket:
        deadline = self.clock() + timeout
        while ticket.state not in FINAL:
            try:
                polled = self._status(connector, ticket)
            except ConnectorError as exc:  # transient: the HTTP layer already retried; try again later
                polled = ticket.model_copy(update={"state": "pending", "detail": f"status check failed: {exc}"})
            if polled.state == "pending" and self.clock() >= deadline:
                detail = f"no confirmation within {timeout:g}s; last status: {polled.detail}"
                polled = polled.model_copy(update={"state": "timed_out", "detail": detail[:500]})
            if polled != ticket:
                idempotency.put(key, polled.model_dump(mode="json"))
            ticket = polled
            if ticket.state == "timed_out":
                return ticket
            if ticket.state not in FINAL:
                self.sleep(interval)
        return ticket

    @staticmethod
    def _status(connector: EdrConnector, ticket: ActionTicket) -> ActionTicket:
        if ticket.ticket_id.startswith(OBSERVED):
            ref = HostRef(vendor=ticket.vendor, id=ticket.host_id)
            return ticket_from_state(ticket, connector.host_context(ref).containment)
        return connector.action_status(ticket)
