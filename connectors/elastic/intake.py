"""Elastic Security alerts -> `Alert`: from the alerts index and from a Kibana rule webhook.

An alert document keeps `kibana.*` as flat dotted keys and the source event's ECS fields as nested
objects; a webhook renders everything nested. Both are read through `docs.get_path`. The `event`
of the Alert is the *source* event: ECS fields without `kibana.*`, with `kibana.alert.original_event.*`
restored over `event.*` (the alert overwrites `event.kind` with "signal") and `@timestamp` set to
the original event time, read back through the data profile (readback.py) into internal ECS, so
that an alert on a Winlogbeat event names the same entities a hunt on that event finds.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.elastic.docs import all_values, first, flatten, get_path
from siemcrew.connectors.elastic.profile import Profile
from siemcrew.connectors.elastic.readback import Readback
from siemcrew.crew.models import Alert, Entities, ProcessRef

UUID = "kibana.alert.uuid"
_DROP_PREFIXES = ("kibana.", "signal.", "_")
_PROCESS_FIELDS = {
    "executable": ("process.executable",),
    "command_line": ("process.command_line",),
    "pid": ("process.pid",),
    "entity_id": ("process.entity_id",),
    "parent_executable": ("process.parent.executable",),
    "parent_command_line": ("process.parent.command_line",),
    "parent_pid": ("process.parent.pid",),
    "parent_entity_id": ("process.parent.entity_id",),
    "hash_sha256": ("process.hash.sha256",),
}


class AlertDocError(ConnectorError):
    """An alert document or webhook body that cannot be read as an Elastic Security alert."""


def _shortname(tactic_name: str) -> str:
    return tactic_name.strip().lower().replace(" ", "-")


def _mitre(doc: dict[str, Any]) -> tuple[list[str], list[str]]:
    threats = get_path(doc, "kibana.alert.rule.threat") or []
    techniques: list[str] = []
    tactics: list[str] = []
    if isinstance(threats, dict):
        threats = [threats]
    for threat in threats if isinstance(threats, list) else []:
        if not isinstance(threat, dict):
            continue
        techniques.extend(str(t) for t in all_values(threat, "technique.id", "technique.subtechnique.id"))
        for name in all_values(threat, "tactic.name"):
            tactics.append(_shortname(str(name)))
    # `fields`-style flattened documents carry the ids directly.
    techniques.extend(
        str(t)
        for t in all_values(doc, "kibana.alert.rule.threat.technique.id", "kibana.alert.rule.threat.technique.subtechnique.id")
    )
    return list(dict.fromkeys(techniques)), list(dict.fromkeys(tactics))


def default_readback() -> Readback:
    return Readback(Profile.load())


def source_event(doc: dict[str, Any]) -> dict[str, Any]:
    """The flattened source-event ECS fields of an alert (no kibana.*, original event restored)."""
    flat = flatten(doc)
    event = {key: value for key, value in flat.items() if not key.startswith(_DROP_PREFIXES)}
    for key, value in flat.items():
        if key.startswith("kibana.alert.original_event."):
            event["event." + key.removeprefix("kibana.alert.original_event.")] = value
    original_time = first(doc, "kibana.alert.original_time")
    if original_time:
        event["@timestamp"] = original_time
    return event


def _users(doc: dict[str, Any]) -> list[str]:
    name, domain = first(doc, "user.name"), first(doc, "user.domain")
    users = [f"{domain}\\{name}" if domain and "\\" not in str(name) else str(name)] if name else []
    return users + [str(u) for u in all_values(doc, "user.name")[1:]]


def _process(doc: dict[str, Any]) -> ProcessRef | None:
    values = {name: first(doc, *paths) for name, paths in _PROCESS_FIELDS.items()}
    for key in ("pid", "parent_pid"):
        try:
            values[key] = int(values[key]) if values[key] is not None else None
        except (TypeError, ValueError):
            values[key] = None
    values = {k: (v if isinstance(v, int) or v is None else str(v)) for k, v in values.items()}
    return ProcessRef(**values) if any(v is not None for v in values.values()) else None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def alert_from_doc(doc: dict[str, Any], index: str | None = None, readback: Readback | None = None) -> Alert:
    """One alert document (`_source`, or a webhook alert object) -> Alert; `raw` keeps it (+ `_index`).

    The event and the entities are those of the source event in internal ECS (`readback`, by
    default through the built-in profile).
    """
    if not isinstance(doc, dict):
        raise AlertDocError(f"an alert must be a JSON object, got {type(doc).__name__}")
    uuid = first(doc, UUID) or doc.get("_id")
    if not uuid:
        raise AlertDocError("alert has no kibana.alert.uuid")
    timestamp = first(doc, "kibana.alert.original_time", "@timestamp", "kibana.alert.start")
    if not timestamp:
        raise AlertDocError(f"alert {uuid} has neither kibana.alert.original_time nor @timestamp")
    techniques, tactics = _mitre(doc)
    raw = dict(doc)
    if index and "_index" not in raw:
        raw["_index"] = index
    event = (readback or default_readback()).internal(source_event(doc))
    agent_id = first(doc, "agent.id")
    if agent_id:
        event["agent.id"] = agent_id
    windows = bool(event.get("winlog.channel"))
    try:
        return Alert(
            id=str(uuid),
            source="elastic",
            rule_name=str(first(doc, "kibana.alert.rule.name", "signal.rule.name") or "Elastic Security alert"),
            rule_id=str(first(doc, "kibana.alert.rule.uuid", "signal.rule.id") or "") or None,
            severity=str(first(doc, "kibana.alert.severity", "kibana.alert.rule.severity") or "medium").lower(),
            risk_score=_float(first(doc, "kibana.alert.risk_score", "kibana.alert.rule.risk_score")),
            description=str(first(doc, "kibana.alert.reason", "kibana.alert.rule.description") or ""),
            timestamp=timestamp,
            # the alert's own events: its source event, or the span of the events a suppressing rule folded
            # into it; `last_detected` is when the rule last ran, it never bounds them
            first_seen=first(doc, "kibana.alert.suppression.start", "kibana.alert.original_time") or timestamp,
            last_seen=first(doc, "kibana.alert.suppression.end", "kibana.alert.original_time") or timestamp,
            techniques=techniques,
            tactics=tactics,
            tags=[str(t) for t in all_values(doc, "kibana.alert.rule.tags")],
            entities=Entities(
                hosts=[str(h) for h in all_values(event if windows else doc, "host.hostname" if windows else "host.name")],
                users=_users(event),
                processes=[str(p) for p in all_values(event, "process.executable")],
                ips=[str(i) for i in all_values(event, "source.ip", "destination.ip")],
                hashes=[str(h) for h in all_values(event, "process.hash.sha256", "process.hash.md5", "file.hash.sha256")],
                files=[str(f) for f in all_values(event, "file.path")],
            ),
            process=_process(event),
            event=event,
            raw=raw,
        )
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise AlertDocError(f"alert {uuid} is not usable: {problems}") from None


class WebhookBody(BaseModel):
    """The body a Kibana rule action sends with `examples/elastic/kibana_rule_action.json`'s template."""

    model_config = ConfigDict(extra="allow")

    source: str = "elastic-security"
    rule_id: str | None = None
    rule_name: str | None = None
    space_id: str = "default"
    date: str | None = None
    alerts_count: int | None = None
    results_link: str | None = None
    alerts: list[dict[str, Any]] = Field(default_factory=list)

    @field_validator("alerts", mode="before")
    @classmethod
    def _alerts(cls, value: Any) -> Any:
        # `"alerts": "{{context.alerts}}"` (double braces) renders a JSON *string*; accept it.
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError:
                raise ValueError("alerts is a string that is not JSON; use {{{context.alerts.asJSON}}}") from None
        if isinstance(value, dict):
            value = [value]
        return value

    @field_validator("alerts_count", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        return None if value in ("", None) else value


def alerts_from_webhook(body: dict[str, Any], readback: Readback | None = None) -> list[Alert]:
    """Validate a webhook body and normalize its alerts (deduplicated by uuid, order kept)."""
    try:
        payload = WebhookBody.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise AlertDocError(f"invalid Kibana webhook body: {problems}") from None
    alerts: dict[str, Alert] = {}
    for number, doc in enumerate(payload.alerts):
        try:
            alert = alert_from_doc(doc, doc.get("_index"), readback)
        except AlertDocError as exc:
            raise AlertDocError(f"invalid Kibana webhook body: alerts[{number}]: {exc}") from None
        if payload.results_link and not alert.link:
            alert.link = payload.results_link
        alerts.setdefault(alert.id, alert)
    return list(alerts.values())
