"""Elastic Defend connector against the Kibana/Elasticsearch emulator (real httpx and elasticsearch-py)."""

from __future__ import annotations

import pytest
from emulators.edr_elastic_defend import AGENT_ID, API_KEY, ElasticDefendEmulator, elastic_defend_emulator  # noqa: F401
from emulators.edr_testkit import SleepRecorder, fast_options, sleeps  # noqa: F401

from siemcrew.config.edr import ElasticDefendSettings
from siemcrew.connectors.base import ConnectorError, EdrConnector, HostRef
from siemcrew.connectors.edr.elastic_defend import ElasticDefendEdr
from siemcrew.crew.models import TimeRange

WINDOW = TimeRange(start="2025-06-02T07:00:00Z", end="2025-06-02T08:00:00Z")


def make(emulator: ElasticDefendEmulator, sleeps: SleepRecorder, **extra: object) -> ElasticDefendEdr:
    return ElasticDefendEdr(ElasticDefendSettings(kibana_url=emulator.base_url, **extra), fast_options(sleeps))


@pytest.fixture()
def elastic(
    elastic_defend_emulator: ElasticDefendEmulator, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder
) -> ElasticDefendEdr:
    monkeypatch.setenv("KIBANA_API_KEY", API_KEY)
    connector = make(elastic_defend_emulator, sleeps, elasticsearch_url=elastic_defend_emulator.base_url)
    yield connector
    connector.close()


def host() -> HostRef:
    return HostRef(vendor="elastic_defend", id=AGENT_ID, hostname="ws-042")


def test_implements_the_protocol(elastic: ElasticDefendEdr) -> None:
    assert isinstance(elastic, EdrConnector)


def test_find_host_by_kuery(elastic: ElasticDefendEdr, elastic_defend_emulator: ElasticDefendEmulator) -> None:
    ref = elastic.find_host(name="WS-042.corp.example")
    assert ref is not None and ref.id == AGENT_ID and ref.hostname == "ws-042" and ref.ip == "10.4.0.42"
    kueries = [r.arg("kuery") for r in elastic_defend_emulator.requests("GET", "/api/endpoint/metadata")]
    assert kueries == ['united.endpoint.host.hostname:"WS-042.corp.example"', 'united.endpoint.host.hostname:"WS-042"']
    assert elastic.find_host(ip="10.4.9.5").hostname == "srv-db01"
    assert elastic.find_host(agent_id=AGENT_ID).id == AGENT_ID
    assert elastic.find_host(agent_id="00000000-0000-0000-0000-000000000000") is None


def test_host_context(elastic: ElasticDefendEdr) -> None:
    ctx = elastic.host_context(host())
    assert ctx.containment == "normal" and ctx.online is True and ctx.os == "Windows 11 Pro 22631"
    assert ctx.detections == 1  # only the open alert
    offline = elastic.host_context(elastic.find_host(name="srv-db01"))
    assert offline.online is False


def test_isolate_with_comment_then_release(elastic: ElasticDefendEdr, elastic_defend_emulator: ElasticDefendEmulator) -> None:
    ticket = elastic.contain(host(), "siemcrew case C-3 action contain approved by alice")
    request = elastic_defend_emulator.action_requests("isolate")[0]
    assert request.header("kbn-xsrf") == "true"
    assert request.json() == {
        "endpoint_ids": [AGENT_ID],
        "agent_type": "endpoint",
        "comment": "siemcrew case C-3 action contain approved by alice",
    }
    assert ticket.state == "pending"
    assert elastic.host_context(host()).containment == "pending"  # reading the host is the first status read
    assert elastic.action_status(ticket).state == "done"
    assert elastic.host_context(host()).containment == "contained"
    release = elastic.release(host(), "siemcrew case C-3 action release approved by bob")
    assert elastic.host_context(host()).containment == "release_pending"
    elastic.action_status(release)
    assert elastic.action_status(release).state == "done"
    assert elastic.host_context(host()).containment == "normal"


def test_failed_and_expired_actions(elastic: ElasticDefendEdr, elastic_defend_emulator: ElasticDefendEmulator) -> None:
    elastic_defend_emulator.lifecycle.outcome = "fail"
    ticket = elastic.contain(host(), "c")
    elastic.action_status(ticket)
    failed = elastic.action_status(ticket)
    assert failed.state == "failed" and "did not acknowledge" in failed.detail
    elastic_defend_emulator.expire_instead_of_fail = True
    ticket = elastic.contain(host(), "c")
    elastic.action_status(ticket)
    assert elastic.action_status(ticket).state == "timed_out"


def test_kill_process_by_pid(elastic: ElasticDefendEdr, elastic_defend_emulator: ElasticDefendEmulator) -> None:
    ticket = elastic.kill_process(host(), 4242, "siemcrew case C-3 action kill_process approved by alice")
    body = elastic_defend_emulator.action_requests("kill_process")[0].json()
    assert body["parameters"] == {"pid": 4242} and body["comment"].endswith("approved by alice")
    elastic.action_status(ticket)
    assert elastic.action_status(ticket).state == "done"


def test_isolation_needs_platinum_but_release_does_not(
    elastic: ElasticDefendEdr, elastic_defend_emulator: ElasticDefendEmulator
) -> None:
    elastic_defend_emulator.license = "basic"
    with pytest.raises(ConnectorError, match="license level"):
        elastic.contain(host(), "c")
    assert elastic.release(host(), "c").state == "pending"


def test_detections_via_signals_search(elastic: ElasticDefendEdr) -> None:
    detections = elastic.detections(host(), WINDOW)
    assert [d["rule.name"] for d in detections] == ["Encoded PowerShell", "LSASS access via comsvcs"]
    assert detections[0]["threat.technique.id"] == ["T1059.001"] and detections[0]["threat.tactic.name"] == [
        "Execution"
    ]
    assert detections[0]["event.status"] == "open" and detections[0]["process.pid"] == 4242


def test_process_history_through_elasticsearch_client(
    elastic: ElasticDefendEdr, elastic_defend_emulator: ElasticDefendEmulator
) -> None:
    events = elastic.process_events(host(), WINDOW)
    assert [e["process.pid"] for e in events] == [4242, 4300]
    assert (
        events[0]["process.parent.pid"] == 1000 and events[0]["process.command_line"] == "powershell.exe -enc SQBFAFgA"
    )
    assert events[0]["user.name"] == "alice" and events[0]["host.name"] == "ws-042" and events[0]["host.id"] == AGENT_ID
    assert [e["process.pid"] for e in elastic.process_events(host(), WINDOW, pid=4300)] == [4300]
    search = elastic_defend_emulator.requests("POST", "/logs-endpoint.events.process-*/_search")
    assert len(search) == 2 and search[0].header("authorization") == f"ApiKey {API_KEY}"


def test_elasticsearch_5xx_is_retried(
    elastic: ElasticDefendEdr, elastic_defend_emulator: ElasticDefendEmulator, sleeps: SleepRecorder
) -> None:
    from emulators.edr_common import Reply

    elastic_defend_emulator.fail_next(
        Reply(
            503,
            {"error": {"type": "unavailable_shards_exception", "reason": "busy"}, "status": 503},
            {"X-Elastic-Product": "Elasticsearch"},
        )
    )
    assert len(elastic.process_events(host(), WINDOW)) == 2
    assert len(sleeps.waits) == 1


def test_running_processes_fallback_without_elasticsearch(
    elastic_defend_emulator: ElasticDefendEmulator,
    monkeypatch: pytest.MonkeyPatch,
    sleeps: SleepRecorder,
) -> None:
    monkeypatch.setenv("KIBANA_API_KEY", API_KEY)
    connector = make(elastic_defend_emulator, sleeps)
    events = connector.process_events(host(), WINDOW)
    assert [e["process.pid"] for e in events] == [4242, 700]
    assert events[0]["event.kind"] == "state" and events[0]["host.name"] == "ws-042"
    assert sleeps.waits == [1.0]
    assert [e["process.pid"] for e in connector.process_events(host(), WINDOW, pid=700)] == [700]


def test_space_prefix_and_basic_auth(elastic_defend_emulator: ElasticDefendEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KIBANA_PASSWORD", "kibana-pass")
    connector = make(
        elastic_defend_emulator,
        SleepRecorder(),
        space="soc",
        api_key_env=None,
        username="soc-crew",
        password_env="KIBANA_PASSWORD",
    )
    assert connector.find_host(agent_id=AGENT_ID) is not None
    assert elastic_defend_emulator.requests()[-1].path == f"/s/soc/api/endpoint/metadata/{AGENT_ID}"
    missing = make(
        elastic_defend_emulator,
        SleepRecorder(),
        space="nope",
        api_key_env=None,
        username="soc-crew",
        password_env="KIBANA_PASSWORD",
    )
    assert missing.health().ok is False


def test_unauthorized_is_reported_in_boom_words(
    elastic_defend_emulator: ElasticDefendEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KIBANA_API_KEY", "d3Jvbmc6a2V5")
    report = make(elastic_defend_emulator, SleepRecorder()).health()
    assert not report.ok and "Unauthorized" in report.detail and "d3Jvbmc6a2V5" not in report.detail
