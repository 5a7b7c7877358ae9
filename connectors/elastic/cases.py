"""Where a finished investigation goes in Elastic: a `siemcrew-cases` document and a Kibana case.

The document holds the whole case (stored, not indexed, under `case`) plus the few fields worth
searching. The Kibana case is found before it is made: by the id remembered in the document, then
by tag (`siemcrew-case:<id>`, or `siemcrew-alert:<uuid>` for a case opened from one escalated
alert). Alerts are attached only if not attached yet, and the report note carries a marker so that
publishing the same case twice adds nothing twice, even when a POST timed out after Kibana had
applied it.
"""

from __future__ import annotations

from typing import Any

from siemcrew.config.elastic import ElasticSettings
from siemcrew.connectors.elastic.kibana import KibanaClient
from siemcrew.connectors.elastic.retry import write_verified
from siemcrew.crew.models import Alert, Case, sha256_of
from siemcrew.crew.timeutil import iso

MAX_ALERTS_PER_CASE = 1000
MAX_ALERT_TAGS = 50
SEVERITY_ORDER = ("low", "medium", "high", "critical")

CASES_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "@timestamp": {"type": "date"},
        "id": {"type": "keyword"},
        "status": {"type": "keyword"},
        "verdict": {"type": "keyword"},
        "confidence": {"type": "keyword"},
        "severity": {"type": "keyword"},
        "summary": {"type": "text"},
        "created_at": {"type": "date"},
        "updated_at": {"type": "date"},
        "alert_ids": {"type": "keyword"},
        "rule_names": {"type": "keyword"},
        "techniques": {"type": "keyword"},
        "affected_hosts": {"type": "keyword"},
        "affected_users": {"type": "keyword"},
        "kibana_case_id": {"type": "keyword"},
        "evidence_count": {"type": "integer"},
        "finding_count": {"type": "integer"},
        "actions": {
            "properties": {"action": {"type": "keyword"}, "target": {"type": "keyword"}, "state": {"type": "keyword"}}
        },
        "case": {"type": "object", "enabled": False},
    },
}


def is_escalation(case: Case) -> bool:
    return case.status == "escalated" or case.verdict in ("malicious", "suspicious")


def case_severity(case: Case) -> str:
    if case.impact is not None:
        return case.impact.severity
    levels = [a.severity for a in case.alerts if a.severity in SEVERITY_ORDER]
    return max(levels, key=SEVERITY_ORDER.index) if levels else "medium"


def case_document(case: Case, kibana_case_id: str | None) -> dict[str, Any]:
    return {
        "@timestamp": iso(case.updated_at),
        "id": case.id,
        "status": case.status,
        "verdict": case.verdict,
        "confidence": case.confidence,
        "severity": case_severity(case),
        "summary": case.summary,
        "created_at": iso(case.created_at),
        "updated_at": iso(case.updated_at),
        "alert_ids": [a.id for a in case.alerts],
        "rule_names": sorted({a.rule_name for a in case.alerts}),
        "techniques": sorted({t for a in case.alerts for t in a.techniques}),
        "affected_hosts": case.affected_hosts,
        "affected_users": case.affected_users,
        "kibana_case_id": kibana_case_id,
        "evidence_count": len(case.evidence),
        "finding_count": len(case.findings),
        "actions": [{"action": r.action, "target": r.target, "state": r.state} for r in case.results],
        "case": case.model_dump(mode="json"),
    }


def case_tag(case_id: str) -> str:
    return f"siemcrew-case:{case_id}"


def alert_tag(alert_id: str) -> str:
    return f"siemcrew-alert:{alert_id}"


def note_marker(key: str, text: str) -> str:
    return f"[siemcrew:{key}:{sha256_of(text)[:12]}]"


class KibanaCases:
    """Idempotent Kibana case operations on top of `KibanaClient`."""

    def __init__(self, kibana: KibanaClient, settings: ElasticSettings) -> None:
        self.kibana = kibana
        self.settings = settings

    def ensure_case(self, known_id: str | None, lookup_tags: list[str], new_case: dict[str, Any]) -> str:
        """The id of the Kibana case: the known one if it still exists, else a tagged one, else a new one."""
        if known_id and self.kibana.get_case(known_id) is not None:
            return known_id

        def find() -> str | None:
            for tag in lookup_tags:
                found = self.kibana.find_cases([tag], self.settings.case_owner)
                if found:
                    return str(found[0]["id"])
            return None

        existing = find()
        if existing:
            return existing
        def found() -> dict[str, Any] | None:
            case_id = find()
            return {"id": case_id} if case_id else None

        created = write_verified(self.settings, lambda: self.kibana.create_case(new_case), found)
        return str(created["id"])

    def new_case_body(self, title: str, description: str, severity: str, tags: list[str]) -> dict[str, Any]:
        return {
            "title": title[:160],
            "description": description[:30000] or title,
            "tags": list(dict.fromkeys(self.settings.case_tags + tags)),
            "owner": self.settings.case_owner,
            "severity": severity if severity in SEVERITY_ORDER else "medium",
            "connector": {"id": "none", "name": "none", "type": ".none", "fields": None},
            "settings": {"syncAlerts": True},
        }

    def _attached(self, case_id: str) -> tuple[set[str], str]:
        alert_ids: set[str] = set()
        notes: list[str] = []
        for comment in self.kibana.case_comments(case_id):
            if comment.get("type") == "alert":
                ids = comment.get("alertId")
                alert_ids.update(ids if isinstance(ids, list) else [ids])
            elif comment.get("type") == "user":
                notes.append(str(comment.get("comment") or ""))
        return alert_ids, "\n".join(notes)

    def attach_alerts(self, case_id: str, alerts: list[Alert]) -> int:
        """Attach the alerts not attached yet, one comment per rule (Kibana's rule). Returns how many."""
        attached, _ = self._attached(case_id)
        missing = [a for a in alerts if a.source == "elastic" and a.id not in attached]
        room = MAX_ALERTS_PER_CASE - len(attached)
        by_rule: dict[tuple[str, str], list[Alert]] = {}
        for alert in missing[: max(0, room)]:
            by_rule.setdefault((alert.rule_id or "", alert.rule_name), []).append(alert)
        for (rule_id, rule_name), group in by_rule.items():
            body = {
                "type": "alert",
                "owner": self.settings.case_owner,
                "alertId": [a.id for a in group],
                "index": [str(a.raw.get("_index") or self.settings.alerts_index) for a in group],
                "rule": {"id": rule_id or None, "name": rule_name},
            }
            wanted = {a.id for a in group}

            def done(wanted: set[str] = wanted) -> dict[str, Any] | None:
                return {"id": case_id} if wanted <= self._attached(case_id)[0] else None

            write_verified(self.settings, lambda body=body: self.kibana.add_comment(case_id, body), done)
        return sum(len(group) for group in by_rule.values())

    def add_note(self, case_id: str, key: str, text: str) -> bool:
        """Add a user comment once per distinct text (a marker in the note says which)."""
        marker = note_marker(key, text)

        def done() -> dict[str, Any] | None:
            return {"id": case_id} if marker in self._attached(case_id)[1] else None

        if done():
            return False
        body = {"type": "user", "owner": self.settings.case_owner, "comment": f"{text}\n\n{marker}"}
        write_verified(self.settings, lambda: self.kibana.add_comment(case_id, body), done)
        return True
