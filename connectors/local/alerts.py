"""Alerts from local sources: alert JSON files, and Sigma rule hits grouped per rule, scope and host.

`entities_from_events` and `process_ref_from_event` are generic over flat ECS events; the
evaluation also uses them to build Alerts from labelled rows and their matching events.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.local.sigma import RuleMeta
from siemcrew.connectors.local.transforms import short_host, to_int
from siemcrew.crew.models import Alert, Entities, ProcessRef, sha256_of

log = logging.getLogger(__name__)

SERVICE_ACCOUNTS = frozenset(
    ["system", "local service", "network service", "anonymous logon", "localsystem", "-", ""]
)
SERVICE_DOMAINS = frozenset(["nt authority", "window manager", "font driver host", "nt service"])
CHECKPOINT_VERSION = 1


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, (dict, list)):
        return None
    text = str(value).strip()
    return text if text and text != "-" else None


def _add(items: list[str], value: str | None) -> None:
    if value and value not in items:
        items.append(value)


def user_of(event: dict[str, Any]) -> str | None:
    """`DOMAIN\\name` (or `name`) for a human or service identity; None for built-in and machine accounts."""
    name = _text(event.get("user.name"))
    if not name or name.lower() in SERVICE_ACCOUNTS or name.endswith("$"):
        return None
    if name.upper().startswith(("DWM-", "UMFD-")):
        return None
    domain = _text(event.get("user.domain"))
    if domain and domain.lower() in SERVICE_DOMAINS:
        return None
    return f"{domain}\\{name}" if domain else name


def routable_ip(value: Any) -> str | None:
    """The address unless it is loopback, link-local, unspecified or not an address at all."""
    text = _text(value)
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_loopback or address.is_link_local or address.is_unspecified:
        return None
    return str(address)


def host_of(event: dict[str, Any]) -> str | None:
    name = _text(event.get("host.hostname")) or _text(event.get("host.name"))
    return short_host(name) if name else None


def entities_from_events(events: Iterable[dict[str, Any]]) -> Entities:
    """Hosts, users, processes, ips, hashes and files named by flat ECS events, first-seen order."""
    entities = Entities()
    for event in events:
        _add(entities.hosts, host_of(event))
        _add(entities.users, user_of(event))
        _add(entities.processes, _text(event.get("process.executable")))
        _add(entities.ips, routable_ip(event.get("source.ip")))
        _add(entities.ips, routable_ip(event.get("destination.ip")))
        _add(entities.hashes, _text(event.get("process.hash.sha256")))
        _add(entities.files, _text(event.get("file.path")))
    return entities


def process_ref_from_event(event: dict[str, Any]) -> ProcessRef:
    """The acting process of one flat ECS event."""

    def pid(field: str) -> int | None:
        value = event.get(field)
        return to_int(value) if value is not None else None

    return ProcessRef(
        executable=_text(event.get("process.executable")),
        command_line=_text(event.get("process.command_line")),
        pid=pid("process.pid"),
        entity_id=_text(event.get("process.entity_id")),
        parent_executable=_text(event.get("process.parent.executable")),
        parent_command_line=_text(event.get("process.parent.command_line")),
        parent_pid=pid("process.parent.pid"),
        parent_entity_id=_text(event.get("process.parent.entity_id")),
        hash_sha256=_text(event.get("process.hash.sha256")),
    )


def alert_from_hits(meta: RuleMeta, scope: str, hits: Sequence[dict[str, Any]], query: str) -> Alert:
    """One Alert for one rule's hits on one host of one scope (hits sorted by time)."""
    first, last = hits[0], hits[-1]
    host = host_of(first) or ""
    key = {"rule": meta.id or meta.title, "scope": scope, "host": host, "first_event": first.get("event.id")}
    return Alert(
        id="local-" + sha256_of(key)[:20],
        source="local",
        rule_name=meta.title,
        rule_id=meta.id,
        rule_path=meta.path or None,
        severity=meta.level or "medium",
        description=meta.description,
        timestamp=first["@timestamp"],
        first_seen=first["@timestamp"],
        last_seen=last["@timestamp"],
        techniques=meta.techniques,
        tactics=meta.tactics,
        tags=meta.tags,
        entities=entities_from_events(hits),
        process=process_ref_from_event(first),
        event=first,
        scope=scope,
        drilldown=query,
        raw={"n_events": len(hits), "event_ids": [hit.get("event.id") for hit in hits[:50]]},
    )


def read_alert_files(paths: Iterable[Path]) -> tuple[list[Alert], list[tuple[str, str]]]:
    """Alerts from JSON files (one Alert or a list each); directories give their *.json files."""
    alerts: list[Alert] = []
    problems: list[tuple[str, str]] = []
    files: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        files.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8-sig"))
            items = data if isinstance(data, list) else [data]
            parsed = [Alert.model_validate(item) for item in items]
        except (OSError, UnicodeDecodeError, ValueError, ValidationError) as exc:
            reason = str(exc).splitlines()[0][:200]
            log.warning("skipped alert file %s: %s", file, reason)
            problems.append((str(file), reason))
            continue
        alerts.extend(parsed)
    return alerts, problems


def encode_checkpoint(emitted: set[str]) -> str:
    return json.dumps({"v": CHECKPOINT_VERSION, "emitted": sorted(emitted)}, separators=(",", ":"))


def decode_checkpoint(checkpoint: str | None) -> set[str]:
    """The alert ids already handed out; a checkpoint this connector did not write is an error."""
    if not checkpoint:
        return set()
    try:
        data = json.loads(checkpoint)
        if data.get("v") != CHECKPOINT_VERSION or not isinstance(data.get("emitted"), list):
            raise ValueError("unknown layout")
        return {str(item) for item in data["emitted"]}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ConnectorError(f"unreadable local alert checkpoint ({exc})") from None


def next_batch(alerts: Iterable[Alert], checkpoint: str | None, limit: int) -> tuple[list[Alert], str]:
    """The oldest `limit` alerts not yet emitted, and the checkpoint that remembers them too.

    Remembering ids (not a time watermark) is what keeps alerts that share a timestamp, or that
    arrive late with an older one, from being skipped.
    """
    emitted = decode_checkpoint(checkpoint)
    unique: dict[str, Alert] = {}
    for alert in alerts:
        if alert.id not in emitted:
            unique.setdefault(alert.id, alert)
    batch = sorted(unique.values(), key=lambda alert: (alert.timestamp, alert.id))[: max(0, limit)]
    return batch, encode_checkpoint(emitted | {alert.id for alert in batch})
