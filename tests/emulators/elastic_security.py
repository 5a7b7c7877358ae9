"""Elastic Security detection alerts as the detection engine writes them (`.alerts-security.alerts-<space>`).

Shape from /work/shared/reference/elastic/alert_doc.json (a 9.x export): the source event's
document is copied (nested ECS objects), `event.kind` becomes "signal" (a flat key) and the
source's `event.*` is kept under `kibana.alert.original_event.*`; the rule and the alert itself
are flat `kibana.alert.*` keys; `_id` is `kibana.alert.uuid`. The rule's ATT&CK mapping, when the
rule has one, is `kibana.alert.rule.threat`.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

TACTICS = {  # enterprise ATT&CK tactics: id -> name
    "TA0001": "Initial Access", "TA0002": "Execution", "TA0003": "Persistence", "TA0004": "Privilege Escalation",
    "TA0005": "Defense Evasion", "TA0006": "Credential Access", "TA0007": "Discovery", "TA0008": "Lateral Movement",
    "TA0009": "Collection", "TA0010": "Exfiltration", "TA0011": "Command and Control", "TA0040": "Impact",
    "TA0042": "Resource Development", "TA0043": "Reconnaissance",
}
_TACTIC_IDS = {name.lower().replace(" ", "_"): tid for tid, name in TACTICS.items()}


@dataclass
class Rule:
    """What an alert says about the rule that raised it."""

    name: str
    rule_id: str
    uuid: str
    severity: str = "medium"
    risk_score: float = 47.0
    description: str = ""
    tags: list[str] = field(default_factory=list)
    threat: list[dict[str, Any]] = field(default_factory=list)
    query: str = ""
    language: str = "eql"


def threat_from_tags(tags: list[str] | str) -> list[dict[str, Any]]:
    """Sigma-style `attack.t1003.001` / `attack.credential_access` tags -> the rule's `threat` array."""
    items = tags.split() if isinstance(tags, str) else list(tags)
    techniques: list[str] = []
    tactics: list[str] = []
    for tag in items:
        text = str(tag).strip().lower().removeprefix("attack.")
        if re.fullmatch(r"t\d{4}(\.\d{3})?", text):
            techniques.append(text.upper())
        elif text in _TACTIC_IDS:
            tactics.append(_TACTIC_IDS[text])
    if not techniques and not tactics:
        return []
    tactic_id = tactics[0] if tactics else "TA0002"
    threat: dict[str, Any] = {
        "framework": "MITRE ATT&CK",
        "tactic": {"id": tactic_id, "name": TACTICS[tactic_id], "reference": f"https://attack.mitre.org/tactics/{tactic_id}/"},
        "technique": [],
    }
    for technique in dict.fromkeys(t.split(".")[0] for t in techniques):
        subs = [t for t in techniques if t.startswith(technique + ".")]
        threat["technique"].append({
            "id": technique, "name": technique, "reference": f"https://attack.mitre.org/techniques/{technique}/",
            "subtechnique": [{"id": s, "name": s, "reference": f"https://attack.mitre.org/techniques/{s.replace('.', '/')}/"} for s in subs],
        })
    return [threat]


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def detection_alert(source: dict[str, Any], source_index: str, source_id: str, uuid: str, rule: Rule,
                    detected_after_s: float = 60.0, space: str = "default",
                    suppressed_for_s: float | None = None) -> dict[str, Any]:
    """The alert document for one source event (its `_source`, index and id). `suppressed_for_s`: the rule
    suppresses alerts per host, and the host's events that many seconds after this one were folded into
    this alert (Elastic Security's `kibana.alert.suppression.*` fields)."""
    original_time = source["@timestamp"]
    detected = _iso(datetime.fromisoformat(original_time.replace("Z", "+00:00")) + timedelta(seconds=detected_after_s))
    doc = copy.deepcopy(source)
    original_event = dict(doc.pop("event", {}) or {})
    event = {k: v for k, v in original_event.items() if k != "kind"}
    if event:
        doc["event"] = event
    doc.update({
        "@timestamp": detected,
        "event.kind": "signal",
        "kibana.version": "9.1.0",
        "kibana.space_ids": [space],
        "kibana.alert.uuid": uuid,
        "kibana.alert.status": "active",
        "kibana.alert.workflow_status": "open",
        "kibana.alert.workflow_tags": [],
        "kibana.alert.workflow_assignee_ids": [],
        "kibana.alert.severity": rule.severity,
        "kibana.alert.risk_score": rule.risk_score,
        "kibana.alert.reason": rule.description or f"{rule.name} matched an event on {source.get('host', {}).get('name', '?')}",
        "kibana.alert.original_time": original_time,
        "kibana.alert.start": detected,
        "kibana.alert.last_detected": detected,
        "kibana.alert.depth": 1,
        "kibana.alert.ancestors": [{"id": source_id, "type": "event", "index": source_index, "depth": 0}],
        "kibana.alert.rule.uuid": rule.uuid,
        "kibana.alert.rule.rule_id": rule.rule_id,
        "kibana.alert.rule.name": rule.name,
        "kibana.alert.rule.description": rule.description,
        "kibana.alert.rule.type": rule.language,
        "kibana.alert.rule.rule_type_id": "siem.eqlRule" if rule.language == "eql" else "siem.queryRule",
        "kibana.alert.rule.consumer": "siem",
        "kibana.alert.rule.producer": "siem",
        "kibana.alert.rule.severity": rule.severity,
        "kibana.alert.rule.risk_score": rule.risk_score,
        "kibana.alert.rule.tags": list(rule.tags),
        "kibana.alert.rule.threat": copy.deepcopy(rule.threat),
        "kibana.alert.rule.parameters": {"type": rule.language, "language": rule.language, "query": rule.query,
                                         "index": ["logs-*"], "threat": copy.deepcopy(rule.threat)},
    })
    for key, value in original_event.items():
        doc[f"kibana.alert.original_event.{key}"] = value
    if suppressed_for_s:
        host = (source.get("host") or {}).get("name")
        end = datetime.fromisoformat(original_time.replace("Z", "+00:00")) + timedelta(seconds=suppressed_for_s)
        doc.update({"kibana.alert.suppression.start": original_time,
                    "kibana.alert.suppression.end": _iso(end),
                    "kibana.alert.suppression.terms": [{"field": "host.name", "value": [host]}]})
    return doc
