"""Injected faults: reads retry with backoff, writes never happen twice, nothing is lost."""

from __future__ import annotations

import time

import pytest

from emulators.elastic import ElasticEmulator, elastic_emulator, elastic_settings  # noqa: F401  (fixture)
from siemcrew.connectors.base import AlertUpdate, ConnectorError, EventQuery, Filter
from siemcrew.connectors.elastic import ElasticConnector
from siemcrew.crew.models import Case

from test_elastic_alerts import _alert_doc, _feed


def _connector(emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch, **overrides: object) -> ElasticConnector:
    return ElasticConnector(elastic_settings(emulator, monkeypatch, **overrides))


def _events(emulator: ElasticEmulator, n: int = 7) -> None:
    emulator.index("logs-app-default", [
        {"@timestamp": f"2025-06-02T07:{i:02d}:00.000Z", "host": {"name": "ws-01"}, "event": {"sequence": i}} for i in range(n)
    ])


def test_429_waits_for_retry_after(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _events(elastic_emulator)
    connector = _connector(elastic_emulator, monkeypatch, retry_wait_max=2.0)
    elastic_emulator.fail_next("429", 1, retry_after="0.4")
    started = time.monotonic()
    result = connector.search(EventQuery(filters=[Filter(field="host.name", value="WS-01")]))
    assert time.monotonic() - started >= 0.4
    assert result.total == 7
    assert len(elastic_emulator.calls(path_contains="_search")) == 2


def test_503_and_timeouts_on_reads_are_retried(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _events(elastic_emulator)
    elastic_emulator.timeout_delay = 1.0
    connector = _connector(elastic_emulator, monkeypatch, request_timeout=0.5, page_size=3)
    elastic_emulator.fail_next("503", 1, path="_search")
    elastic_emulator.fail_next("timeout", 1, path="_search")
    elastic_emulator.fail_next("502", 1, path="_pit")
    result = connector.search(EventQuery(limit=50))
    assert [e["event.sequence"] for e in result.events] == list(range(7))  # paging lost and repeated nothing
    assert len(elastic_emulator.calls(method="POST", path_contains="_pit")) == 2


def test_exhausted_retries_are_a_clear_error(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    connector = _connector(elastic_emulator, monkeypatch, retries=2)
    elastic_emulator.fail_next("503", 10)
    with pytest.raises(ConnectorError, match="Elasticsearch search failed: HTTP 503 cluster_block_exception"):
        connector.search(EventQuery(limit=5))
    assert len(elastic_emulator.requests) == 3  # 1 + 2 retries, none by the client itself


def test_feed_survives_faults_without_loss_or_repeats(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _feed(elastic_emulator)
    elastic_emulator.timeout_delay = 1.0
    connector = _connector(elastic_emulator, monkeypatch, page_size=2, request_timeout=0.5)
    seen: list[str] = []
    checkpoint = None
    faults = ["429", "timeout", "503", "504"]
    for _ in range(4):
        if faults:
            elastic_emulator.fail_next(faults.pop(0), 1)
        batch = connector.fetch_alerts(checkpoint, limit=2)
        seen.extend(a.id for a in batch.alerts)
        checkpoint = batch.checkpoint
    assert seen == expected


def test_kibana_writes_that_time_out_are_checked_not_repeated(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _feed(elastic_emulator)
    elastic_emulator.timeout_delay = 1.0
    connector = _connector(elastic_emulator, monkeypatch, request_timeout=0.5)
    alert = next(a for a in connector.fetch_alerts(None).alerts if a.id == "a-1")
    # the create is applied but its answer lost; the same for the alert attachment; then a 429 on the note
    elastic_emulator.fail_next("timeout", 1, server="kibana", path="/api/cases", method="POST")
    elastic_emulator.fail_next("timeout", 1, server="kibana", path="/comments", method="POST")
    elastic_emulator.fail_next("429", 1, server="kibana", path="/comments", method="POST")
    case = Case(id="case-7", status="escalated", verdict="malicious", summary="s", alerts=[alert])
    connector.publish_case(case)
    [kibana_case] = elastic_emulator.cases.values()
    assert [c["type"] for c in kibana_case["comments"]] == ["alert", "user"]
    creates = elastic_emulator.calls("kibana", method="POST", path_contains="/api/cases")
    assert len([r for r in creates if r.path == "/api/cases"]) == 1  # verified by a lookup, never re-posted
    assert len([r for r in creates if r.path.endswith("/comments")]) == 3  # alert (timed out, found), note (429, re-sent)
    assert not elastic_emulator.faults
    assert elastic_emulator.get_doc("siemcrew-cases", "case-7")["kibana_case_id"] == kibana_case["id"]


def test_idempotent_writes_retry_safely(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _feed(elastic_emulator)
    elastic_emulator.timeout_delay = 1.0
    connector = _connector(elastic_emulator, monkeypatch, request_timeout=0.5)
    alert = next(a for a in connector.fetch_alerts(None).alerts if a.id == "g-7")
    elastic_emulator.fail_next("502", 1, server="kibana", path="signals/status")
    elastic_emulator.fail_next("timeout", 1, server="kibana", path="signals/status")
    connector.update_alert(alert, AlertUpdate(status="closed", verdict="benign", comment="ok"))
    assert elastic_emulator.get_doc(".alerts-security.alerts-default", "g-7")["kibana.alert.workflow_status"] == "closed"
    elastic_emulator.fail_next("timeout", 1, path="/siemcrew-cases/_doc/", method="PUT")
    connector.publish_case(Case(id="case-8", status="closed", verdict="benign", alerts=[alert]))
    assert len(elastic_emulator.docs("siemcrew-cases")) == 1  # PUT with the case id: a retry overwrites
    assert len(elastic_emulator.calls(method="PUT", path_contains="/siemcrew-cases/_doc/case-8")) == 2


def test_bulk_load_retries_rejected_items_and_never_duplicates(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    connector = _connector(elastic_emulator, monkeypatch)
    docs = [{"@timestamp": f"2025-06-02T07:0{i}:00.000Z", "message": f"line {i}"} for i in range(5)]
    elastic_emulator.fail_next("bulk_item_429", 2)
    assert connector.bulk_index("soc-notes", docs) == {"created": 5, "existing": 0, "failed": 0}
    sent = [r.body for r in elastic_emulator.calls(path_contains="_bulk")]
    assert len(sent) == 2 and sent[1].count('"create"') == 2  # only the rejected items went again
    elastic_emulator.fail_next("timeout", 1, path="_bulk")
    elastic_emulator.timeout_delay = 1.0
    slow = _connector(elastic_emulator, monkeypatch, request_timeout=0.5)
    assert slow.bulk_index("soc-notes", docs + [{"message": "new"}]) == {"created": 0, "existing": 6, "failed": 0}
    assert len(elastic_emulator.docs("soc-notes")) == 6
    bad = connector.bulk_index("logs-soc-default", [{"message": "no id"}], id_field="missing")
    assert bad == {"created": 1, "existing": 0, "failed": 0}


def test_expired_point_in_time_is_a_clear_error(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _events(elastic_emulator)
    connector = _connector(elastic_emulator, monkeypatch, page_size=2)
    elastic_emulator.fail_next("pit_gone", 1, path="_search")
    elastic_emulator.fail_next("pit_gone", 1, path="_search")
    with pytest.raises(ConnectorError, match="point in time expired while paging"):
        connector.search(EventQuery(limit=50))


def test_alert_writes_need_kibana(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    elastic_emulator.add_alerts([_alert_doc("z-1", "2025-06-02T07:00:00.000Z")])
    connector = _connector(elastic_emulator, monkeypatch, kibana_url=None)
    alert = connector.fetch_alerts(None).alerts[0]
    assert alert.link is None
    with pytest.raises(ConnectorError, match="Kibana is not configured"):
        connector.update_alert(alert, AlertUpdate(status="acknowledged", verdict="x", comment="y"))
    connector.publish_case(Case(id="case-z", status="escalated", verdict="malicious", alerts=[alert]))
    assert elastic_emulator.get_doc("siemcrew-cases", "case-z")["kibana_case_id"] is None
