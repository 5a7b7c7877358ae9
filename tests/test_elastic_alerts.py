"""Alerts in (checkpointed feed) and verdicts out (signals status, Kibana cases, siemcrew-cases index)."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from emulators.elastic import ElasticEmulator, elastic_emulator, elastic_settings  # noqa: F401  (fixture)
from siemcrew.connectors.base import AlertUpdate, ConnectorError
from siemcrew.connectors.elastic import ElasticConnector
from siemcrew.crew.models import Alert, Case

ALERT = json.loads(Path("/work/shared/reference/elastic/alert_doc.json").read_text())["_source"]


def _alert_doc(uuid: str, timestamp: str, status: str = "open", rule: str = "Suspicious PowerShell", **extra: object) -> dict:
    doc = copy.deepcopy(ALERT)
    doc.update({"kibana.alert.uuid": uuid, "@timestamp": timestamp, "kibana.alert.workflow_status": status,
                "kibana.alert.original_time": timestamp, "kibana.alert.rule.name": rule})
    doc.update(extra)
    return doc


def _feed(emulator: ElasticEmulator, space: str = "default") -> list[str]:
    docs = [
        _alert_doc("a-1", "2025-06-02T07:00:00.000Z"),
        _alert_doc("c-3", "2025-06-02T07:01:00.000Z"),
        _alert_doc("a-3", "2025-06-02T07:01:00.000Z"),
        _alert_doc("b-3", "2025-06-02T07:01:00.000Z"),
        _alert_doc("d-4", "2025-06-02T07:02:00.000Z", status="acknowledged"),
        _alert_doc("e-5", "2025-06-02T07:03:00.000Z", status="closed"),
        _alert_doc("f-6", "2025-06-02T07:04:00.000Z", **{"kibana.alert.building_block_type": "default"}),
        _alert_doc("g-7", "2025-06-02T07:05:00.000Z"),
    ]
    for doc in docs:
        doc["kibana.space_ids"] = [space]
    emulator.add_alerts(docs, space)
    return ["a-1", "a-3", "b-3", "c-3", "g-7"]


@pytest.fixture
def connector(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> ElasticConnector:
    conn = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, page_size=2))
    yield conn
    conn.close()


def test_feed_pages_through_open_alerts_once_each(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    expected = _feed(elastic_emulator)
    seen: list[str] = []
    checkpoint = None
    for _ in range(4):
        batch = connector.fetch_alerts(checkpoint, limit=2)
        seen.extend(a.id for a in batch.alerts)
        checkpoint = batch.checkpoint
    assert seen == expected  # (timestamp, uuid) order; the three alerts at 07:01 neither skipped nor repeated
    assert connector.fetch_alerts(checkpoint).alerts == []
    assert connector.fetch_alerts(checkpoint).checkpoint == checkpoint
    elastic_emulator.add_alerts([_alert_doc("c-4", "2025-06-02T07:05:00.000Z"), _alert_doc("h-8", "2025-06-02T07:06:00.000Z")])
    assert [a.id for a in connector.fetch_alerts(checkpoint).alerts] == ["h-8"]  # c-4 sorts before g-7 at the same time
    first = connector.fetch_alerts(None, limit=1).alerts[0]
    assert first.raw["_index"] == ".internal.alerts-security.alerts-default-000001"
    assert first.link == f"{elastic_emulator.kibana_url}/app/security/alerts/redirect/a-1?index=.internal.alerts-security.alerts-default-000001&timestamp=2025-06-02T07:00:00.000Z"


def test_feed_options_and_bad_input(connector: ElasticConnector, elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _feed(elastic_emulator)
    with_blocks = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, include_building_blocks=True))
    assert "f-6" in [a.id for a in with_blocks.fetch_alerts(None).alerts]
    with pytest.raises(ConnectorError, match="checkpoint was not written by the Elastic connector"):
        connector.fetch_alerts("bm90LWEtY2hlY2twb2ludA==")
    elastic_emulator.add_alerts([_alert_doc("h-8", "2025-06-02T07:06:00.000Z", **{"kibana.alert.original_time": "garbage"})])
    with caplog.at_level(logging.WARNING):
        batch = connector.fetch_alerts(None, limit=50)
    assert "h-8" not in [a.id for a in batch.alerts] and len(batch.alerts) == 5
    assert "skipping unreadable alert h-8" in caplog.text
    assert connector.fetch_alerts(batch.checkpoint).alerts == []  # the checkpoint moved past it


def _alert(connector: ElasticConnector, uuid: str) -> Alert:
    return next(a for a in connector.fetch_alerts(None, limit=50).alerts if a.id == uuid)


def test_update_alert_sets_workflow_status_with_reasons(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    _feed(elastic_emulator)
    connector.update_alert(_alert(connector, "a-1"), AlertUpdate(status="in_progress", verdict="inconclusive", comment="looking"))
    connector.update_alert(_alert(connector, "a-3"), AlertUpdate(status="closed", verdict="benign", comment="sanctioned"))
    connector.update_alert(_alert(connector, "b-3"), AlertUpdate(status="closed", verdict="false_positive", comment="rule noise"))
    connector.update_alert(_alert(connector, "c-3"), AlertUpdate(status="closed", verdict="whatever", comment="?"))
    updates = [(u["signal_ids"], u["status"], u.get("reason")) for u in elastic_emulator.signal_status_updates]
    assert updates == [
        (["a-1"], "acknowledged", None),
        (["a-3"], "closed", "benign_positive"),
        (["b-3"], "closed", "false_positive"),
        (["c-3"], "closed", "other"),
    ]
    assert elastic_emulator.get_doc(".alerts-security.alerts-default", "a-3")["kibana.alert.workflow_status"] == "closed"
    assert [a.id for a in connector.fetch_alerts(None).alerts] == ["g-7"]
    kibana_writes = elastic_emulator.calls("kibana", method="POST")
    assert kibana_writes and all(r.headers.get("kbn-xsrf") == "true" for r in kibana_writes)


def test_close_falls_back_when_kibana_has_no_reason_field(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    _feed(elastic_emulator)
    elastic_emulator.kibana.supports_reason = False
    connector.update_alert(_alert(connector, "g-7"), AlertUpdate(status="closed", verdict="benign", comment="ok"))
    assert elastic_emulator.get_doc(".alerts-security.alerts-default", "g-7")["kibana.alert.workflow_status"] == "closed"
    assert [u.get("reason") for u in elastic_emulator.signal_status_updates] == [None]
    assert len(elastic_emulator.calls("kibana", path_contains="signals/status")) == 2


def _case(alerts: list[Alert], **fields: object) -> Case:
    values: dict = {"id": "case-1", "status": "escalated", "verdict": "malicious", "confidence": "high",
                    "summary": "Encoded PowerShell from winword.exe on ws-01.", "alerts": alerts, "affected_hosts": ["ws-01"]}
    values.update(fields)
    return Case(**values)


def test_publish_escalated_case_creates_one_kibana_case(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    _feed(elastic_emulator)
    alerts = [_alert(connector, "a-1"), _alert(connector, "a-3")]
    alerts.append(Alert.model_validate({**_alert(connector, "g-7").model_dump(), "rule_id": "other-rule", "rule_name": "Other rule"}))
    connector.publish_case(_case(alerts))
    [kibana_case] = elastic_emulator.cases.values()
    assert "siemcrew-case:case-1" in kibana_case["tags"] and "siemcrew-alert:a-1" in kibana_case["tags"]
    assert kibana_case["severity"] == "high" and kibana_case["owner"] == "securitySolution"
    alert_comments = [c for c in kibana_case["comments"] if c["type"] == "alert"]
    assert sorted(map(tuple, (c["alertId"] for c in alert_comments))) == [("a-1", "a-3"), ("g-7",)]
    assert all(c["index"] == [".internal.alerts-security.alerts-default-000001"] * len(c["alertId"]) for c in alert_comments)
    notes = [c["comment"] for c in kibana_case["comments"] if c["type"] == "user"]
    assert len(notes) == 1 and "verdict malicious" in notes[0] and "Encoded PowerShell" in notes[0]
    stored = elastic_emulator.get_doc("siemcrew-cases", "case-1")
    assert stored["kibana_case_id"] == kibana_case["id"] and stored["verdict"] == "malicious"
    assert stored["case"]["id"] == "case-1" and stored["alert_ids"] == ["a-1", "a-3", "g-7"]
    mapping = elastic_emulator.store.indices["siemcrew-cases"].mappings
    assert mapping["dynamic"] is False and mapping["properties"]["case"] == {"type": "object", "enabled": False}

    connector.publish_case(_case(alerts))  # same case again: nothing new
    assert len(elastic_emulator.cases) == 1 and len(kibana_case["comments"]) == 3
    connector.publish_case(_case(alerts, summary="Confirmed: credential theft followed."))
    assert len(elastic_emulator.cases) == 1 and len([c for c in kibana_case["comments"] if c["type"] == "user"]) == 2
    assert len(elastic_emulator.docs("siemcrew-cases")) == 1


def test_escalated_alert_and_case_share_one_kibana_case(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    _feed(elastic_emulator)
    alert = _alert(connector, "a-1")
    update = AlertUpdate(status="escalated", verdict="malicious", comment="needs a human", summary="encoded PowerShell")
    connector.update_alert(alert, update)
    connector.update_alert(alert, update)  # a retried write-back adds nothing
    assert elastic_emulator.get_doc(".alerts-security.alerts-default", "a-1")["kibana.alert.workflow_status"] == "acknowledged"
    [kibana_case] = elastic_emulator.cases.values()
    assert [c["type"] for c in kibana_case["comments"]] == ["alert", "user"]
    connector.publish_case(_case([alert], id="case-9"))
    assert len(elastic_emulator.cases) == 1
    assert elastic_emulator.get_doc("siemcrew-cases", "case-9")["kibana_case_id"] == kibana_case["id"]
    assert [c["type"] for c in kibana_case["comments"]] == ["alert", "user", "user"]


def test_benign_case_is_indexed_without_a_kibana_case(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    _feed(elastic_emulator)
    connector.publish_case(_case([_alert(connector, "a-1")], status="closed", verdict="benign"))
    assert elastic_emulator.cases == {}
    assert elastic_emulator.get_doc("siemcrew-cases", "case-1")["kibana_case_id"] is None
    assert len(elastic_emulator.calls(method="PUT", path_contains="siemcrew-cases")) == 2  # create index + document


def test_kibana_failure_keeps_the_case_document(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    _feed(elastic_emulator)
    alert = _alert(connector, "a-1")
    elastic_emulator.fail_next("503", 20, server="kibana")
    with pytest.raises(ConnectorError, match="case case-1 indexed, but the Kibana case failed: .*HTTP 503"):
        connector.publish_case(_case([alert]))
    assert elastic_emulator.get_doc("siemcrew-cases", "case-1")["verdict"] == "malicious"
    elastic_emulator.faults.clear()
    connector.publish_case(_case([alert]))
    assert len(elastic_emulator.cases) == 1


def test_spaces_prefix_kibana_calls_and_read_their_alert_index(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _feed(elastic_emulator, space="soc")
    connector = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, space="soc"))
    alerts = connector.fetch_alerts(None).alerts
    assert [a.id for a in alerts] == ["a-1", "a-3", "b-3", "c-3", "g-7"]
    assert "/s/soc/app/security/alerts/redirect/a-1" in (alerts[0].link or "")
    connector.update_alert(alerts[0], AlertUpdate(status="acknowledged", verdict="suspicious", comment="x"))
    assert elastic_emulator.calls("kibana", path_contains="/s/soc/api/detection_engine/signals/status")
    assert elastic_emulator.signal_status_updates[0]["space"] == "soc"
    # An alert from another space (e.g. a webhook from a rule there) is updated in its own space.
    default_space = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch))
    default_space.update_alert(alerts[1], AlertUpdate(status="escalated", verdict="malicious", comment="y"))
    assert elastic_emulator.signal_status_updates[1]["space"] == "soc"
    assert [c["_space"] for c in elastic_emulator.cases.values()] == ["soc"]


def test_an_alert_kibana_cannot_find_is_an_error_not_a_silent_no_op(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    _feed(elastic_emulator)
    alert = _alert(connector, "a-1")
    ghost = alert.model_copy(update={"id": "no-such-alert"})
    with pytest.raises(ConnectorError, match="Kibana found no alert no-such-alert in space 'default'"):
        connector.update_alert(ghost, AlertUpdate(status="closed", verdict="benign", comment="x"))
