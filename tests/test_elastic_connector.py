"""ElasticConnector searches through the real elasticsearch-py against the emulator."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from emulators.elastic import ElasticEmulator, elastic_emulator, elastic_settings  # noqa: F401  (fixture)
from siemcrew.connectors.base import ConnectorError, EventQuery, Filter, QueryRefused, SiemConnector
from siemcrew.connectors.elastic import ClusterTooOld, ElasticConnector, NotElasticsearch
from siemcrew.crew.models import TimeRange

SIGMA_RULE = Path(
    "/work/shared/datasets/detection-content/sigma/rules-threat-hunting/windows/process_creation/"
    "proc_creation_win_wscript_cscript_script_exec.yml"
)


def _event(minute: int, host: str, exe: str, command: str, user: str = "alice", pid: int = 1000, **extra: object) -> dict:
    name = exe.rsplit("\\", 1)[-1]
    doc = {
        "@timestamp": f"2025-06-02T07:{minute:02d}:00.000Z",
        "host": {"name": host},
        "user": {"name": user, "domain": "CORP"},
        "event": {"category": ["process"], "type": ["start"], "action": "start"},
        "process": {"pid": pid + minute, "executable": exe, "name": name, "command_line": command,
                    "pe": {"original_file_name": name}},
    }
    doc.update(extra)
    return doc


def _load(emulator: ElasticEmulator) -> None:
    docs = [
        _event(0, "WS-01", "C:\\Windows\\System32\\cmd.exe", "cmd.exe /c whoami"),
        _event(1, "ws-01", "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe", "powershell.exe -NoP -EncodedCommand SQBFAFgA"),
        _event(2, "ws-02", "C:\\Windows\\System32\\wscript.exe", "wscript.exe C:\\Users\\bob\\invoice.js", user="bob"),
        _event(3, "ws-02", "C:\\Windows\\System32\\wscript.exe", "wscript.exe /?", user="bob"),
        _event(4, "srv-db-02", "C:\\Program Files\\ContosoBackup\\cbagent.exe", "cbagent.exe --nightly", user="svc_backup"),
        _event(5, "ws-01", "C:\\Tools\\odd*name?.exe", "C:\\Tools\\odd*name?.exe run", user="alice"),
        {"@timestamp": "2025-06-02T07:06:00.000Z", "host": {"name": "ws-01"}, "source": {"ip": "10.20.30.41"},
         "destination": {"ip": "203.0.113.10", "port": 443}, "event": {"category": ["network"], "action": "connection"}},
    ]
    docs += [_event(10 + i, "ws-03", "C:\\Windows\\System32\\svchost.exe", f"svchost.exe -k netsvcs -p {i}", user="SYSTEM") for i in range(11)]
    emulator.index("logs-endpoint.events-default", docs)


@pytest.fixture
def connector(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> ElasticConnector:
    _load(elastic_emulator)
    conn = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, page_size=4))
    yield conn
    conn.close()


def _sent_bodies(emulator: ElasticEmulator, path: str = "_search") -> list[dict]:
    return [r.body for r in emulator.calls(path_contains=path)]


def test_implements_the_protocol(connector: ElasticConnector) -> None:
    assert isinstance(connector, SiemConnector)
    assert (connector.name, connector.language) == ("elastic", "dsl")


def test_search_filters_case_insensitively_and_records_the_exact_body(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    result = connector.search(EventQuery(filters=[Filter(field="host.name", value="ws-01"), Filter(field="event.category", value="process")], limit=4))
    assert sorted(e["process.name"] for e in result.events) == ["cmd.exe", "odd*name?.exe", "powershell.exe"]
    assert result.total == 3 and not result.truncated
    assert json.loads(result.query) == _sent_bodies(elastic_emulator)[-1]
    assert result.events[0]["host.name"] == "WS-01" and result.events[0]["event.category"] == ["process"]

    encoded = connector.search(EventQuery(filters=[Filter(field="process.command_line", op="contains", value="-encodedcommand")]))
    assert [e["process.name"] for e in encoded.events] == ["powershell.exe"]
    literal = connector.search(EventQuery(filters=[Filter(field="process.executable", op="endswith", value="*NAME?.exe")]))
    assert [e["process.name"] for e in literal.events] == ["odd*name?.exe"]  # * and ? are literal characters


def test_negation_groups_categories_time_and_order(connector: ElasticConnector) -> None:
    window = TimeRange(start=datetime(2025, 6, 2, 7, 1, tzinfo=timezone.utc), end=datetime(2025, 6, 2, 7, 6, tzinfo=timezone.utc))
    result = connector.search(
        EventQuery(
            time_range=window,
            filters=[Filter(field="user.name", value="SVC_BACKUP", negate=True)],
            any_of=[[Filter(field="host.name", value="ws-02"), Filter(field="process.pid", value=1001)]],
            categories=["process"],
            order="desc",
        )
    )
    assert [e["@timestamp"] for e in result.events] == ["2025-06-02T07:03:00.000Z", "2025-06-02T07:02:00.000Z", "2025-06-02T07:01:00.000Z"]
    network = connector.search(EventQuery(filters=[Filter(field="destination.ip", value="203.0.113.10"), Filter(field="destination.port", op="gte", value=400)]))
    assert network.total == 1 and network.events[0]["source.ip"] == "10.20.30.41"


def test_large_results_page_with_a_point_in_time(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    result = connector.search(EventQuery(filters=[Filter(field="host.name", value="ws-03")], limit=100))
    assert len(result.events) == 11 and result.total == 11 and not result.truncated
    assert len({e["process.command_line"] for e in result.events}) == 11
    assert [e["@timestamp"] for e in result.events] == sorted(e["@timestamp"] for e in result.events)
    assert len(elastic_emulator.calls(method="POST", path_contains="_pit")) == 1
    assert len(elastic_emulator.calls(method="DELETE", path_contains="_pit")) == 1
    pages = [b for b in _sent_bodies(elastic_emulator) if "pit" in b]
    assert len(pages) == 3 and "search_after" not in pages[0] and all(len(p["search_after"]) == 2 for p in pages[1:])
    assert not elastic_emulator.pits  # closed

    capped = connector.search(EventQuery(filters=[Filter(field="host.name", value="ws-03")], limit=6))
    assert len(capped.events) == 6 and capped.total == 11 and capped.truncated


def test_group_by_counts_every_group_across_composite_pages(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    result = connector.search(EventQuery(categories=["process"], group_by=["host.name", "user.name"], limit=3))
    assert result.total == 5  # WS-01 and ws-01 are distinct keyword values; ws-02, srv-db-02, ws-03
    assert result.truncated and len(result.events) == 3
    assert result.events[0] == {"host.name": "ws-03", "user.name": "SYSTEM", "count": 11}
    composite_calls = [b for b in _sent_bodies(elastic_emulator) if "aggs" in b]
    assert len(composite_calls) >= 2 and "after" in composite_calls[-1]["aggs"]["groups"]["composite"]
    with_missing = connector.search(EventQuery(group_by=["process.name"], limit=50))
    assert {"process.name": None, "count": 1} in with_missing.events


def test_esql_translation_finds_the_same_events_as_the_dsl(connector: ElasticConnector) -> None:
    query = EventQuery(filters=[Filter(field="host.name", value="WS-02"), Filter(field="process.command_line", op="contains", value=".JS")])
    dsl = connector.search(query)
    esql = connector.search_esql(query)
    assert [e["process.pid"] for e in dsl.events] == [e["process.pid"] for e in esql.events] == [1002]
    grouped = connector.search_esql(EventQuery(filters=[Filter(field="user.name", value="system")], group_by=["host.name"]))
    assert grouped.events == [{"count": 11, "host.name": "ws-03"}]


def test_run_native_languages(connector: ElasticConnector, elastic_emulator: ElasticEmulator) -> None:
    esql = connector.run_native('FROM logs-* | WHERE host.name == "ws-02" | KEEP process.name, user.name', limit=5)
    assert esql.language == "esql" and esql.query.endswith("| LIMIT 5")
    assert esql.events == [{"process.name": "wscript.exe", "user.name": "bob"}] * 2
    commented = connector.run_native("FROM logs-* | KEEP user.name // every user", limit=3)
    assert commented.query.endswith("\n| LIMIT 3") and len(commented.events) == 3  # the comment kept no limit away
    window = TimeRange(start=datetime(2025, 6, 2, 7, 2, tzinfo=timezone.utc), end=datetime(2025, 6, 2, 7, 2, tzinfo=timezone.utc))
    dsl = connector.run_native('{"query": {"term": {"user.name": "bob"}}}', time_range=window)
    assert dsl.total == 1 and dsl.events[0]["process.command_line"].endswith("invoice.js")
    aggs = connector.run_native('{"size": 0, "aggs": {"users": {"terms": {"field": "user.name"}}}}')
    assert aggs.events[0] == {"aggregation": "users", "key": "SYSTEM", "doc_count": 11} and not aggs.truncated
    count = connector.run_native("GET logs-*/_count")
    assert count.events[0]["count"] == 18
    counted = connector.run_native('POST logs-*/_count {"query": {"term": {"host.name": "ws-03"}}}')
    assert counted.events[0]["count"] == 11
    paged = connector.run_native("GET logs-*/_search?q=host.name:ws-03&size=2&from=1")
    assert [e["process.command_line"][-1] for e in paged.events] == ["1", "2"] and paged.total == 11
    console = connector.run_native('GET logs-endpoint.events-default/_search {"query": {"term": {"process.name": "cmd.exe"}}}')
    assert [e["process.name"] for e in console.events] == ["cmd.exe"]
    eql = connector.run_native('process where process.name : "WSCRIPT.EXE" and process.command_line : "*.js"')
    assert eql.language == "eql" and [e["user.name"] for e in eql.events] == ["bob"]
    sent = len(elastic_emulator.requests)
    for refused in ("POST logs-*/_delete_by_query {}", '{"query": {"script": {"script": "1"}}}', "FROM x | COMPLETION y", "DROP TABLE events"):
        with pytest.raises(QueryRefused):
            connector.run_native(refused)
    assert len(elastic_emulator.requests) == sent  # refused queries never reach the server


def test_sigma_rule_runs_as_lucene_esql_and_eql(connector: ElasticConnector, elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    rule = SIGMA_RULE.read_text()
    lucene = connector.run_sigma(rule)
    assert lucene.language == "sigma" and [e["process.command_line"] for e in lucene.events] == ["wscript.exe C:\\Users\\bob\\invoice.js"]
    body = json.loads(lucene.query)
    assert body["query"]["bool"]["filter"][0]["query_string"]["query"].startswith("((process.pe.original_file_name:")
    outside = TimeRange(start=datetime(2025, 6, 2, 8, tzinfo=timezone.utc), end=datetime(2025, 6, 2, 9, tzinfo=timezone.utc))
    assert connector.run_sigma(rule, time_range=outside).total == 0
    for language in ("esql", "eql"):
        other = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, sigma_language=language))
        result = other.run_sigma(rule)
        assert [e["process.command_line"] for e in result.events] == ["wscript.exe C:\\Users\\bob\\invoice.js"], language
    with pytest.raises(ConnectorError, match="cannot be parsed"):
        connector.run_sigma("title: broken\ndetection: [")


def test_health_and_compatibility_failures(connector: ElasticConnector, elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    report = connector.health()
    assert report.ok and report.version == "9.1.0" and "Kibana 9.1.0 available" in report.detail
    elastic_emulator.mode = "es8"
    report = connector.health()
    assert not report.ok and "8.x cluster" in report.detail and "upgrade the cluster to 9.x" in report.detail
    before = len(elastic_emulator.requests)
    with pytest.raises(ClusterTooOld):
        connector.search(EventQuery())
    assert len(elastic_emulator.requests) == before + 1  # not retried
    for mode in ("no_product_header", "opensearch"):
        elastic_emulator.mode = mode
        fresh = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch))
        report = fresh.health()
        assert not report.ok and "not Elasticsearch" in report.detail, mode
        with pytest.raises(NotElasticsearch):
            fresh.search(EventQuery())


def test_credentials_come_from_the_environment_and_never_leak(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIEMCREW_TEST_MISSING", raising=False)
    missing = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, api_key_env="SIEMCREW_TEST_MISSING"))
    with pytest.raises(ConnectorError, match="environment variable SIEMCREW_TEST_MISSING is not set"):
        missing.search(EventQuery())
    monkeypatch.setenv("SIEMCREW_TEST_WRONG", "d3Jvbmc6a2V5")
    wrong = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, api_key_env="SIEMCREW_TEST_WRONG"))
    with pytest.raises(ConnectorError) as caught:
        wrong.search(EventQuery())
    assert "HTTP 401" in str(caught.value) and "check the API key" in str(caught.value)
    assert "d3Jvbmc6a2V5" not in str(caught.value) and "d3Jvbmc6a2V5" not in repr(wrong.settings)
    monkeypatch.setenv("SIEMCREW_TEST_PASSWORD", elastic_emulator.password)
    basic = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, api_key_env=None, username="elastic", password_env="SIEMCREW_TEST_PASSWORD"))
    assert basic.health().ok
    with pytest.raises(ValueError, match="not both"):
        elastic_settings(elastic_emulator, monkeypatch, username="elastic", password_env="X")
    with pytest.raises(ValueError, match="must not contain credentials"):
        elastic_settings(elastic_emulator, monkeypatch, url="https://elastic:secret@localhost:9200")


def test_tls_verification_is_on_and_takes_a_ca_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ElasticEmulator(tls=True, cert_dir=tmp_path / "pki") as emulator:
        _load(emulator)
        assert emulator.es_url.startswith("https://")
        trusted = ElasticConnector(elastic_settings(emulator, monkeypatch, ca_file=emulator.ca_file))
        assert trusted.health().ok
        assert trusted.search(EventQuery(filters=[Filter(field="host.name", value="ws-02")])).total == 2
        untrusted = ElasticConnector(elastic_settings(emulator, monkeypatch, retries=0))
        report = untrusted.health()
        assert not report.ok and "TLS" in report.detail and emulator.api_key not in report.detail


def test_compressed_requests_and_a_missing_alerts_index(elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _load(elastic_emulator)
    compressed = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, http_compress=True))
    assert compressed.search(EventQuery(filters=[Filter(field="user.name", value="BOB")], limit=10)).total == 2
    assert elastic_emulator.calls(path_contains="_search")[-1].headers.get("content-encoding") == "gzip"
    with pytest.raises(ConnectorError, match="alerts index .alerts-security.alerts-default does not exist"):
        compressed.fetch_alerts(None)
