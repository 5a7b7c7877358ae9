"""What the four EDR connectors share: tickets confirmed by host state, identifier hygiene, limits.

Falcon and SentinelOne have no action id for containment: their ticket is synthesised, and the
action is done only when re-reading the host shows the target state. Defender and Elastic return
action ids and report completion themselves.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any, Literal

from siemcrew.connectors.documents import is_ip
from siemcrew.config.settings import SettingsError
from siemcrew.connectors.base import ActionTicket, ConnectorError, HealthReport, HostContext, HostRef
from siemcrew.connectors.edr.http import EdrHttp
from siemcrew.crew.timeutil import iso, parse_time, utcnow

ContainAction = Literal["contain", "release"]
Containment = Literal["normal", "pending", "contained", "release_pending", "unknown"]

TARGET_STATE: dict[str, Containment] = {"contain": "contained", "release": "normal"}

MAX_EVENTS = 1000
"""Upper bound on rows one process/detection call returns (bounded samples; say so when cut)."""

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,254}$")
_MARKER = re.compile(r"(?<![\w:])siemcrew:[0-9a-f]{12}(?![0-9a-f])")


def action_marker(key: str) -> str:
    """`siemcrew:<12 hex of sha256(key)>`: the same for every process and run that handles this action key, and
    different for every other key, so a lookup by it finds exactly our request and never someone else's."""
    return "siemcrew:" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]


def with_marker(comment: str, marker: str) -> str:
    """The approval comment (case, action, approver) with the marker appended once, as `[siemcrew:…]`."""
    return comment if carries_marker(comment, marker) else f"{comment} [{marker}]".strip()


def carries_marker(text: Any, marker: str) -> bool:
    """True when `text` holds exactly this marker as a token (not a longer hex run that starts with it)."""
    return isinstance(text, str) and marker in _MARKER.findall(text)


def marker_in(text: str) -> str | None:
    """The first marker in a comment (Falcon RTR has no comment field: the marker becomes the session origin)."""
    found = _MARKER.search(text or "")
    return found.group(0) if found else None


def safe_identifier(value: str | None, what: str) -> str:
    """Host names and ids go into query languages (FQL, OData, KQL, S1QL): allow only plain ones."""
    text = (value or "").strip()
    if not _SAFE_ID.match(text):
        raise ConnectorError(f"refusing unusual {what} {text[:80]!r}: only letters, digits and . _ : - are allowed")
    return text


def safe_ip(value: str) -> str:
    """An IP address in canonical form, or a ConnectorError (it goes into query languages too)."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise ConnectorError(f"not an IP address: {value[:80]!r}") from None


def name_candidates(name: str) -> list[str]:
    """The name as given, then its short form: EDRs store `WS-042` where SIEMs say `ws-042.corp.local`."""
    text = name.strip()
    short = text.split(".", 1)[0]
    return [text] if short == text or is_ip(text) else [text, short]




def newest(records: list[dict[str, Any]], time_field: str) -> dict[str, Any]:
    """The most recently seen of several matches (a host re-imaged under the same name shows twice)."""
    epoch = parse_time(0)
    return max(records, key=lambda record: parse_time(record.get(time_field)) or epoch)


def state_ticket(vendor: str, action: ContainAction, host: HostRef) -> ActionTicket:
    """A ticket for vendors without action ids: confirmed later by re-reading the host."""
    return ActionTicket(
        vendor=vendor,
        action=action,
        host_id=host.id,
        ticket_id=f"{vendor}:{action}:{host.id}:{iso(utcnow())}",
        detail="sent; waiting for the host state to change",
    )


def ticket_from_state(ticket: ActionTicket, containment: Containment) -> ActionTicket:
    """Done when the host reports the target state; otherwise still pending (timeouts are the caller's)."""
    target = TARGET_STATE.get(ticket.action)
    if target is None:
        raise ConnectorError(f"{ticket.vendor}: no host state confirms a {ticket.action} action")
    state = "done" if containment == target else "pending"
    return ticket.model_copy(update={"state": state, "detail": f"host reports containment={containment}"})


class EdrBase:
    """The parts every connector has: a name, an HTTP client, health and the state-confirmed status."""

    name: str = "edr"

    def __init__(self, http: EdrHttp) -> None:
        self.http = http

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> EdrBase:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def host_context(self, host: HostRef) -> HostContext:  # pragma: no cover - each vendor implements
        raise NotImplementedError

    def confirm_by_state(self, ticket: ActionTicket) -> ActionTicket:
        return ticket_from_state(ticket, self.host_context(self._host_ref(ticket.host_id)).containment)

    def _host_ref(self, host_id: str) -> HostRef:
        return HostRef(vendor=self.name, id=host_id)

    def health_check(self, probe: Any) -> HealthReport:
        """Run a cheap authenticated call; report the error text (never credentials) on failure."""
        try:
            probe()
        except (ConnectorError, SettingsError) as exc:
            return HealthReport(connector=self.name, ok=False, detail=str(exc))
        return HealthReport(connector=self.name, ok=True, detail="authenticated")
