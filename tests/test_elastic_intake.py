"""Elastic Security alerts -> Alert, from the alerts index (flat kibana.* + nested ECS) and from a webhook."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from siemcrew.connectors.elastic import AlertDocError, alert_from_doc, alerts_from_webhook

REFERENCE = Path("/work/shared/reference/elastic")
ALERT_DOC = json.loads((REFERENCE / "alert_doc.json").read_text())
WEBHOOK = json.loads((REFERENCE / "webhook_payload.json").read_text())
UUID = "4c9f0e1a7b2d4e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f"


def test_the_alerts_own_events_are_its_source_event_or_its_suppressed_span() -> None:
    """`last_detected` is when the rule last ran: it never bounds the alert's events; a suppressing rule
    names their span in `kibana.alert.suppression.start/end`."""
    doc = copy.deepcopy(ALERT_DOC["_source"])
    doc.update({"kibana.alert.original_time": "2025-06-02T07:05:00.000Z",
                "kibana.alert.last_detected": "2025-06-02T07:08:52.956Z"})
    alert = alert_from_doc(doc)
    assert alert.first_seen == alert.last_seen and alert.last_seen.isoformat() == "2025-06-02T07:05:00+00:00"
    doc.update({"kibana.alert.suppression.start": "2025-06-02T07:05:00.000Z",
                "kibana.alert.suppression.end": "2025-06-02T07:06:30.000Z"})
    alert = alert_from_doc(doc)
    assert (alert.first_seen.isoformat(), alert.last_seen.isoformat()) == \
        ("2025-06-02T07:05:00+00:00", "2025-06-02T07:06:30+00:00")


def test_alert_document_is_normalized() -> None:
    alert = alert_from_doc(ALERT_DOC["_source"], ALERT_DOC["_index"])
    assert alert.id == UUID and alert.source == "elastic"
    assert alert.rule_name == "Suspicious PowerShell Encoded Command from Office"
    assert alert.rule_id == "0945c418-c530-45ea-b998-02350c260c5b"
    assert (alert.severity, alert.risk_score) == ("high", 73.0)
    assert alert.description.startswith("process event with process powershell.exe")
    assert alert.techniques == ["T1059", "T1059.001"] and alert.tactics == ["execution"]
    assert alert.timestamp.isoformat() == "2025-06-02T07:08:52.956000+00:00"
    assert alert.entities.hosts == ["ws-01"]
    assert alert.entities.users == ["CORP\\alice"]
    assert alert.entities.ips == ["10.20.30.41"]
    assert alert.entities.processes == ["C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"]
    assert alert.entities.hashes == ["de96a6e69944335375dc1ac238336066889d9ffc7d73628ef4fe1b1b160ab32c"]
    assert alert.process is not None
    assert (alert.process.pid, alert.process.parent_pid) == (7412, 5120)
    assert alert.process.command_line.endswith("SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAKQA=")
    assert alert.process.parent_entity_id.startswith("YjM1YjU5NjIt")
    assert alert.event["agent.id"] == "b35b5962-0c75-4cc5-9f51-8304680f6e92"
    assert alert.event["event.kind"] == "event"  # the source event's kind, not the alert's "signal"
    assert alert.event["@timestamp"] == "2025-06-02T07:08:52.956Z"
    assert alert.event["process.args"][-2] == "-EncodedCommand"
    assert not [k for k in alert.event if k.startswith("kibana.")]
    assert alert.tags == ["Domain: Endpoint", "OS: Windows", "Tactic: Execution"]
    assert alert.raw["_index"] == ".internal.alerts-security.alerts-default-000001"
    assert alert.raw["kibana.alert.uuid"] == UUID


def test_webhook_alert_equals_the_indexed_alert() -> None:
    [from_hook] = alerts_from_webhook(WEBHOOK)
    from_index = alert_from_doc(ALERT_DOC["_source"], ALERT_DOC["_index"])
    assert from_hook.model_dump(exclude={"raw", "link"}) == from_index.model_dump(exclude={"raw", "link"})
    assert from_hook.link == WEBHOOK["results_link"]
    assert from_hook.raw["_index"] == ".internal.alerts-security.alerts-default-000001"


def test_webhook_variants_are_accepted() -> None:
    twice = copy.deepcopy(WEBHOOK)
    twice["alerts"] = twice["alerts"] * 2
    assert len(alerts_from_webhook(twice)) == 1
    as_string = copy.deepcopy(WEBHOOK)
    as_string["alerts"] = json.dumps(WEBHOOK["alerts"])
    as_string["alerts_count"] = ""
    as_string["extra_field_from_a_custom_template"] = {"x": 1}
    assert [a.id for a in alerts_from_webhook(as_string)] == [UUID]
    assert alerts_from_webhook({**WEBHOOK, "alerts": []}) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({**WEBHOOK, "alerts": "not json"}, "alerts is a string that is not JSON"),
        ({**WEBHOOK, "alerts": [1, 2]}, "alerts.0"),
        ({**WEBHOOK, "alerts": [{"host": {"name": "x"}}]}, "alerts\\[0\\]: alert has no kibana.alert.uuid"),
        ({**WEBHOOK, "alerts": [{"kibana": {"alert": {"uuid": "u1"}}}]}, "neither kibana.alert.original_time nor @timestamp"),
        ({**WEBHOOK, "alerts": [{"kibana.alert.uuid": "u1", "@timestamp": "yesterday-ish"}]}, "not usable: timestamp"),
        ({**WEBHOOK, "alerts_count": "many"}, "alerts_count"),
    ],
)
def test_bad_webhook_bodies_give_clear_errors(body: dict, message: str) -> None:
    with pytest.raises(AlertDocError, match=message):
        alerts_from_webhook(body)


def test_fields_api_and_legacy_signal_documents() -> None:
    fields_style = {
        "kibana.alert.uuid": ["u-2"],
        "@timestamp": ["2025-06-02T07:00:00.000Z"],
        "kibana.alert.rule.threat.technique.id": ["T1110"],
        "kibana.alert.rule.threat.technique.subtechnique.id": ["T1110.003"],
        "host.name": ["dc01"],
        "user.name": ["svc_backup"],
        "destination.ip": ["10.0.0.5"],
        "signal.rule.name": ["Password spraying"],
    }
    alert = alert_from_doc(fields_style)
    assert alert.id == "u-2" and alert.rule_name == "Password spraying"
    assert alert.techniques == ["T1110", "T1110.003"]
    assert alert.entities.hosts == ["dc01"] and alert.entities.users == ["svc_backup"]
    assert alert.entities.ips == ["10.0.0.5"] and alert.process is None and alert.severity == "medium"


EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "elastic"


def test_example_config_and_rule_action_fit_the_code() -> None:
    import yaml

    from siemcrew.config.elastic import ElasticSettings

    config = yaml.safe_load((EXAMPLES / "siemcrew.yaml").read_text())
    settings = ElasticSettings(**config["elastic"])
    assert config["source"] == "elastic" and settings.alerts_index == ".alerts-security.alerts-default"
    connector = json.loads((EXAMPLES / "kibana_webhook_connector.json").read_text())
    assert connector["config"]["url"].endswith("/v1/alerts/elastic") and "X-Siemcrew-Secret" in connector["config"]["headers"]
    template = json.loads((EXAMPLES / "kibana_rule_action.json").read_text())["actions"][0]["params"]["body"]
    # Render it the way Kibana does for this payload: {{x}} JSON-string-escaped, {{{x}}} raw.
    values = {
        "rule.id": WEBHOOK["rule_id"], "rule.name": WEBHOOK["rule_name"], "rule.spaceId": "default", "date": WEBHOOK["date"],
        "state.signals_count": "1", "context.results_link": WEBHOOK["results_link"],
        "context.alerts.asJSON": json.dumps(WEBHOOK["alerts"]),
    }
    rendered = template
    for name, value in values.items():
        rendered = rendered.replace("{{{" + name + "}}}", value).replace("{{" + name + "}}", json.dumps(value)[1:-1])
    assert "{{" not in rendered
    [alert] = alerts_from_webhook(json.loads(rendered))
    assert alert.id == UUID and alert.link == WEBHOOK["results_link"]
