"""Splunk rows (ES notables, saved-search results, alert-action rows) as normalized `Alert`s.

One mapping for every way a Splunk alert reaches siemcrew, so a notable fetched by `siemcrew run`
and the same row handed off by the alert action name the same entities. The row's event part reads
as ECS through the data profile; when it is a Windows event (an ES notable copies its triggering
event's fields), its entities and process are that event's, as the local store would name them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from siemcrew.connectors.documents import is_ip
from siemcrew.connectors.local.alerts import entities_from_events, process_ref_from_event
from siemcrew.connectors.splunk.mapping import splunk_time
from siemcrew.connectors.splunk.profile import load_profile
from siemcrew.crew.models import Alert, Entities, ProcessRef
from siemcrew.crew.timeutil import utcnow

_PLACEHOLDERS = {"", "-", "unknown", "n/a", "na", "null", "none"}
_TECHNIQUE = re.compile(r"^T\d{4}(\.\d{3})?$", re.IGNORECASE)
_SEVERITIES = {"informational": "low", "info": "low", "low": "low", "medium": "medium", "high": "high", "critical": "critical"}


def values(row: dict[str, Any], *fields: str) -> list[str]:
    """The non-placeholder values of `fields` in order, multivalue fields flattened, duplicates dropped."""
    out: list[str] = []
    for field in fields:
        raw = row.get(field)
        for item in raw if isinstance(raw, list) else [raw]:
            text = str(item).strip() if item is not None else ""
            if text.lower() not in _PLACEHOLDERS and text not in out:
                out.append(text)
    return out


def first(row: dict[str, Any], *fields: str) -> str | None:
    found = values(row, *fields)
    return found[0] if found else None




def _merge(*groups: Iterable[str]) -> list[str]:
    out: list[str] = []
    for group in groups:
        out.extend(item for item in group if item not in out)
    return out


def entities_from_row(row: dict[str, Any]) -> Entities:
    """CIM fields -> entities; `host` counts only when no dest names a host (on notables it is the
    search head; on a network event dest is the remote address)."""
    addresses = values(row, "src", "src_ip", "dest_ip")
    destinations = values(row, "dest", "dest_host", "dest_nt_host")
    host_names = [h for h in destinations if not is_ip(h)] or values(row, "host")
    return Entities(
        hosts=_merge([h for h in host_names if not is_ip(h)], [a for a in addresses if not is_ip(a)]),
        users=values(row, "user", "src_user"),
        ips=_merge([a for a in addresses if is_ip(a)], [h for h in destinations + host_names if is_ip(h)]),
        processes=values(row, "process_path") or values(row, "process"),
        hashes=values(row, "file_hash", "process_hash"),
        files=values(row, "file_path"),
    )


def process_from_row(row: dict[str, Any]) -> ProcessRef | None:
    ref = ProcessRef(
        executable=first(row, "process_path"),
        command_line=first(row, "process"),
        pid=_int(first(row, "process_id")),
        parent_executable=first(row, "parent_process_path"),
        parent_command_line=first(row, "parent_process"),
        parent_pid=_int(first(row, "parent_process_id")),
    )
    return ref if ref.model_dump(exclude_none=True) else None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0) if text.lower().startswith("0x") else int(float(text))
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def techniques_from_row(row: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key in row:
        if key.startswith("annotations.mitre_attack"):
            found.extend(v for v in values(row, key) if _TECHNIQUE.match(v))
    return found


def is_windows_event(event: dict[str, Any]) -> bool:
    return bool(event.get("winlog.channel")) and event.get("event.code") not in (None, "")


def merged_entities(cim: Entities, event: dict[str, Any]) -> Entities:
    """A Windows event's own entities (read as ECS, as the local store reads them); the CIM fields
    otherwise. The add-ons' CIM aliases of a Windows event only restate it, sometimes misleadingly
    (dest is the remote address on a network event, the FQDN beside the host name elsewhere)."""
    return entities_from_events([event]) if is_windows_event(event) else cim


def merged_process(cim: ProcessRef | None, event: dict[str, Any]) -> ProcessRef | None:
    """A Windows event's acting process (a Sysmon 10's source, where the CIM process is the target)."""
    if not is_windows_event(event):
        return cim
    ref = process_ref_from_event(event)
    return ref if ref.model_dump(exclude_none=True) else cim


def alert_from_row(
    row: dict[str, Any],
    *,
    alert_id: str,
    rule_name: str | None = None,
    link: str | None = None,
    to_ecs: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Alert:
    """The shared mapping; a given `rule_name` wins over the rule the row names. `to_ecs` reads the
    row's event part (the connector's data profile; the default profile otherwise)."""
    severity = first(row, "urgency", "severity") or "medium"
    security_domain = first(row, "security_domain")
    read = to_ecs or load_profile().to_ecs
    # an ES notable's _time is when the correlation search ran; orig_time is the event's
    event = read({**row, "_time": row.get("orig_time") or row.get("_time")})
    first_seen, last_seen = _event_span(row)
    return Alert(
        id=alert_id,
        source="splunk",
        rule_name=rule_name or first(row, "rule_name", "rule_title", "search_name") or "Splunk alert",
        rule_id=first(row, "rule_id"),
        severity=_SEVERITIES.get(severity.lower(), severity.lower()),
        risk_score=_float(first(row, "risk_score")),
        description=first(row, "rule_description", "description") or "",
        timestamp=splunk_time(row.get("_time")) or utcnow(),
        first_seen=first_seen,
        last_seen=last_seen,
        techniques=techniques_from_row(row),
        tags=[f"security_domain:{security_domain}"] if security_domain else [],
        entities=merged_entities(entities_from_row(row), event),
        process=merged_process(process_from_row(row), event),
        event=event,
        drilldown=first(row, "drilldown_search"),
        link=link,
        raw=dict(row),
    )


def _event_span(row: dict[str, Any]) -> tuple[Any, Any]:
    """When the alert's own events happened. An ES notable's `_time` is when its correlation search ran, so
    it never bounds them: an aggregating search names its span in `firstTime`/`lastTime` (the Splunk
    security_content convention, epoch or `security_content_ctime` text); otherwise the notable stands for
    the one event at `orig_time`. A plain saved-search result's `_time` is its event's."""
    first_seen = splunk_time(row.get("firstTime")) or splunk_time(row.get("orig_time"))
    last_seen = splunk_time(row.get("lastTime")) or splunk_time(row.get("orig_time"))
    if first_seen and last_seen and last_seen < first_seen:
        first_seen, last_seen = last_seen, first_seen
    return first_seen, last_seen


def alert_from_notable(row: dict[str, Any], to_ecs: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Alert:
    """An ES notable (from the `notable` macro): the alert id is the notable's `event_id`."""
    event_id = first(row, "event_id")
    if not event_id:
        raise ValueError("notable row has no event_id")
    return alert_from_row(row, alert_id=event_id, to_ecs=to_ecs)
