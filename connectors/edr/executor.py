"""Run an approved containment action exactly once, and report it done only when the vendor says so.

Every request carries a marker derived from its action key (`[siemcrew:<hash>]` in the comment, or the RTR
session origin on Falcon): vendors that keep a list of the actions sent to them (`ActionLookup`) can then be
asked "did our request arrive?" and answer with its real id and status, where a host snapshot only says what
the host looks like, not whose action made it so.

Three rules, in this order:
1. A ticket already recorded under the key is never re-sent: a finished one is returned as is, an
   unfinished one (pending, or timed out earlier) is polled again. Retries, crashes and a second
   approval therefore resume the first action instead of starting another.
2. With nothing recorded, the vendor decides first: an action of ours in its action list (the previous
   process crashed between the send and recording it) is adopted; a host already contained (or released)
   is reported done without a request — "by another actor" when the vendor's list holds no request of
   ours; an action already in flight is watched, not re-sent. A list that cannot be read stops the send.
3. The ticket is recorded BEFORE polling, and after every change; polling ends at done or failed,
   or at the deadline as `timed_out` — reported, never assumed.

A send that raises (refused, 5xx, or no answer at all) is read back at once (`_reread`): our request in the
vendor's list is adopted with its real id and status; else a host showing the target state (or the action in
flight) is recorded as observed; else the send provably did not land: a 4xx refusal stands (unrecorded), a 5xx or
lost connection is sent again (at most `SEND_ATTEMPTS` sends, each only after the vendor showed the previous one
did not land), and the last error stands unrecorded, so a later attempt reads the vendor again before sending
anything. When the vendor cannot be asked at all, a send that
was not plainly refused is recorded as `unconfirmed:` and polled like any ticket (ending `timed_out` if the vendor
stays silent): it may have run, so later runs ask again (`reconcile_containment`) and the analyst is told to check
the vendor console — never failed-for-good.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

from siemcrew.config.edr import EdrSettings
from siemcrew.connectors.base import ActionLookup, ActionTicket, ConnectorError, EdrConnector, HostRef
from siemcrew.connectors.edr.common import TARGET_STATE, action_marker, ticket_from_state, with_marker
from siemcrew.connectors.edr.http import ActionNotSupported, EdrApiError
from siemcrew.crew.timeutil import iso, utcnow

Action = Literal["contain", "release", "kill_process"]
FINAL = ("done", "failed")
OBSERVED = "observed:"
"""Ticket-id prefix for an action seen at the vendor only through the host's state: confirmed by host state."""
UNCONFIRMED = "unconfirmed:"
"""Ticket-id prefix for a send with no answer that the vendor could not be asked about: it may have run."""
IN_FLIGHT = {"contain": "pending", "release": "release_pending"}
LOOKBACK = timedelta(hours=1)
"""How far before a failed send its read-back looks in the vendor's list (generous: vendor clocks differ)."""
SEND_ATTEMPTS = 3
"""Sends of one action at most, each after the vendor showed the previous one did not land (never blind)."""
ANOTHER_ACTOR = "by another actor: the vendor's action list holds no request of siemcrew's for this key"


@dataclass(frozen=True)
class Lookup:
    """What the vendor's action list said: `looked` is False when the vendor keeps no list for this action."""

    looked: bool
    ticket: ActionTicket | None = None


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
        may_send: bool = True,
    ) -> ActionTicket:
        """Run rules 1-3 under `key`. With `may_send=False` (a later run asking about an earlier action) nothing is
        ever sent: with no ticket recorded, only the vendor's list and host state are read."""
        if action not in ("contain", "release", "kill_process"):
            raise ValueError(f"unknown EDR action {action!r}")
        if action == "kill_process" and pid is None:
            raise ValueError("kill_process needs a pid")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        interval = self.poll_interval_s if poll_interval_s is None else poll_interval_s

        marker = action_marker(key)
        recorded = idempotency.get(key)
        if recorded is not None:
            ticket = ActionTicket.model_validate(recorded)
            if ticket.state in FINAL:
                return ticket
        else:
            ticket = self._start(connector, action, host, with_marker(comment, marker), marker, pid, may_send)
            idempotency.put(key, ticket.model_dump(mode="json"))
        return self._poll(connector, ticket, idempotency, key, timeout, interval)

    # -- steps ---------------------------------------------------------------------------------
    def _start(self, connector: EdrConnector, action: Action, host: HostRef, comment: str, marker: str,
               pid: int | None, may_send: bool = True) -> ActionTicket:
        """Rule 2, then the send; a send that raises is read back at once."""
        found = self._lookup(connector, action, host, marker)
        if found.ticket is not None:
            return _note(found.ticket, "an earlier request of ours is in the vendor's action list; nothing sent")
        if action in TARGET_STATE:
            current = connector.host_context(host).containment
            if _shows(action, current):
                done = current == TARGET_STATE[action]
                why = (f"already {current}; nothing sent" if done else
                       f"an action is already in flight ({current}); watching the host instead of sending")
                ticket = _observed(connector, action, host, why + (f" ({ANOTHER_ACTOR})" if found.looked else ""))
                return ticket.model_copy(update={"state": "done"}) if done else ticket
        if not may_send:
            raise ConnectorError(f"{connector.name}: no {action} of ours is recorded or found at the vendor; "
                                 "not sent (only an approval sends)")
        for attempt in range(1, SEND_ATTEMPTS + 1):
            since = utcnow() - LOOKBACK
            try:
                return self._send(connector, action, host, comment, pid)
            except ActionNotSupported:
                raise
            except ConnectorError as exc:
                landed = self._reread(connector, action, host, marker, exc, since)
                if landed is not None:
                    return landed
                if _refused(exc) or attempt == SEND_ATTEMPTS:
                    raise
                self.sleep(self.poll_interval_s)  # it provably did not land: sending again cannot do it twice
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _send(connector: EdrConnector, action: Action, host: HostRef, comment: str, pid: int | None) -> ActionTicket:
        if action == "contain":
            return connector.contain(host, comment)
        if action == "release":
            return connector.release(host, comment)
        return connector.kill_process(host, int(pid or 0), comment)

    def _reread(self, connector: EdrConnector, action: Action, host: HostRef, marker: str, error: ConnectorError,
                since: datetime) -> ActionTicket | None:
        """A send that failed or got no answer may still have landed: the vendor's action list, then its host state,
        say. Ours found -> adopted; host in the target state or in flight -> observed; neither -> None: it did not
        land (the caller may send again). Vendor unreadable -> `unconfirmed:` unless plainly refused."""
        try:
            found = self._lookup(connector, action, host, marker, since)
            current = None
            if found.ticket is None and action in TARGET_STATE:
                current = connector.host_context(host).containment
        except ConnectorError as unreadable:
            if _refused(error):
                raise error from None
            return self._unconfirmed(connector, action, host, f"the send got no answer ({error}) and the vendor could "
                                                              f"not be asked ({unreadable})")
        if found.ticket is not None:
            return _note(found.ticket, f"the send failed ({error}); the vendor's action list has our request")
        if current is not None and _shows(action, current):
            who = f" ({ANOTHER_ACTOR})" if found.looked else ""
            ticket = _observed(connector, action, host, f"the send failed ({error}); the vendor shows the host "
                                                        f"{current}{who}")
            return ticket_from_state(ticket, current).model_copy(update={"detail": ticket.detail})
        if found.looked or action in TARGET_STATE:
            return None
        if _refused(error):
            raise error
        return self._unconfirmed(connector, action, host, f"the send got no answer ({error}) and {connector.name} "
                                                          f"keeps no list to find a {action} in")

    @staticmethod
    def _unconfirmed(connector: EdrConnector, action: Action, host: HostRef, why: str) -> ActionTicket:
        return ActionTicket(vendor=connector.name, action=action, host_id=host.id, ticket_id=f"{UNCONFIRMED}{host.id}",
                            detail=_may_have_run(connector.name, why))

    @staticmethod
    def _lookup(connector: EdrConnector, action: Action, host: HostRef, marker: str,
                since: datetime | None = None) -> Lookup:
        """Ask the vendor's action list for our request (raises ConnectorError when the list cannot be read)."""
        if not isinstance(connector, ActionLookup):
            return Lookup(looked=False)
        try:
            return Lookup(looked=True, ticket=connector.find_action(host, action, marker, since))
        except ActionNotSupported:
            return Lookup(looked=False)

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
        marker = action_marker(key)
        while ticket.state not in FINAL:
            try:
                polled = self._status(connector, ticket, marker)
            except ConnectorError as exc:  # transient: the HTTP layer already retried; try again later
                detail = (_may_have_run(connector.name, f"the vendor could not be asked ({exc})")
                          if ticket.ticket_id.startswith(UNCONFIRMED) else f"status check failed: {exc}")
                polled = ticket.model_copy(update={"state": "pending", "detail": detail})
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

    def _status(self, connector: EdrConnector, ticket: ActionTicket, marker: str) -> ActionTicket:
        """The vendor's word on a ticket. One it never issued an id for (observed, unconfirmed) or no longer knows
        (404) is first looked up by marker, so the case ends with the vendor's own action id and status."""
        host = HostRef(vendor=ticket.vendor, id=ticket.host_id)
        if not ticket.ticket_id.startswith((OBSERVED, UNCONFIRMED)):
            try:
                return connector.action_status(ticket)
            except EdrApiError as exc:
                if exc.status != 404:
                    raise
                found = self._lookup(connector, ticket.action, host, marker)
                if found.ticket is None:
                    raise
                return _note(found.ticket, f"the vendor no longer knows ticket {ticket.ticket_id}; found ours by marker")
        found = self._lookup(connector, ticket.action, host, marker)
        if found.ticket is not None:
            return _note(found.ticket, "found our request in the vendor's action list")
        if ticket.action in TARGET_STATE:
            current = connector.host_context(host).containment
            if ticket.ticket_id.startswith(UNCONFIRMED) and not _shows(ticket.action, current):
                return _did_not_land(ticket, f"{connector.name} shows no request of ours and the host is {current}")
            polled = ticket_from_state(ticket, current)
            who = f" ({ANOTHER_ACTOR})" if found.looked and ANOTHER_ACTOR in ticket.detail else ""
            return polled.model_copy(update={"detail": polled.detail + who})
        if found.looked and ticket.ticket_id.startswith(UNCONFIRMED):
            return _did_not_land(ticket, f"{connector.name} holds no {ticket.action} of ours")
        why = f"{connector.name} keeps no list to find a {ticket.action} in"
        return ticket.model_copy(update={"state": "pending", "detail": _may_have_run(connector.name, why)})


def _shows(action: str, containment: str) -> bool:
    """The host state shows this containment action landed (target state) or on its way (in flight)."""
    return containment in (TARGET_STATE[action], IN_FLIGHT[action])


def _did_not_land(ticket: ActionTicket, why: str) -> ActionTicket:
    """An unconfirmed send the vendor, asked later, shows no sign of: failed, and (rule 1) never sent again."""
    detail = f"the earlier send did not land: {why}; nothing was done and nothing is re-sent"
    return ticket.model_copy(update={"state": "failed", "detail": detail[:500]})


def _may_have_run(vendor: str, why: str) -> str:
    """What an unconfirmed ticket tells the analyst (built afresh each time, so repeated polls do not pile up)."""
    return f"{why}: it may have run; check the {vendor} console (later runs ask again)"[:500]


def _observed(connector: EdrConnector, action: Action, host: HostRef, detail: str) -> ActionTicket:
    return ActionTicket(vendor=connector.name, action=action, host_id=host.id, ticket_id=f"{OBSERVED}{host.id}",
                        detail=detail[:500])


def _note(ticket: ActionTicket, why: str) -> ActionTicket:
    """A ticket found by marker, its detail saying how it was found (and then what the vendor reports)."""
    return ticket.model_copy(update={"detail": f"{why}: {ticket.detail}"[:500]})


def _refused(error: ConnectorError) -> bool:
    """The vendor answered and refused (4xx, 429 included: rejected before processing): the send did not land."""
    return isinstance(error, EdrApiError) and error.status is not None and 400 <= error.status < 500
