"""SplunkConnector searches against the splunkd emulator through the real splunk-sdk.

Covers auth (bearer, password + autologin on expiry), TLS verification with a private CA, v1/v2
job paths, paging past the 100-row default, export without preview rows, the guard, Sigma, and
injected faults (quota, expiry, dropped connections, slow and failed jobs) recovering without
losing or duplicating rows.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from emulators.splunkd import NOW, T0, SplunkdEmulator, connector_settings, sample_events, sample_notables
from siemcrew.config.splunk import SplunkSettings
from siemcrew.connectors.base import ConnectorError, EventQuery, Filter, QueryRefused, SiemConnector
from siemcrew.connectors.splunk.connector import SplunkConnector
from siemcrew.crew.models import TimeRange

TOKEN = "test-bearer-token"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLUNK_TOKEN", TOKEN)
    monkeypatch.setenv("SPLUNK_PASSWORD", "changeme")
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", "test-hec-token")


@pytest.fixture
def splunkd() -> Iterator[SplunkdEmulator]:
    with SplunkdEmulator(sample_events(), sample_notables(), now=NOW) as emulator:
        yield emulator


def connect(emulator: SplunkdEmulator, **overrides: Any) -> SplunkConnector:
    return SplunkConnector.from_settings(connector_settings(emulator, **overrides))


def whole_day() -> TimeRange:
    return TimeRange(start=T0 - 3600, end=T0 + 3600)


def test_connector_implements_the_protocol(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd)
    assert isinstance(connector, SiemConnector)
    assert (connector.name, connector.language) == ("splunk", "spl")


def test_https_with_private_ca_and_bearer_token_returns_flat_ecs_events(tmp_path: Path) -> None:
    with SplunkdEmulator(sample_events(), tls=True, tls_dir=tmp_path, now=NOW) as splunkd:
        connector = connect(splunkd)
        result = connector.search(EventQuery(filters=[Filter(field="process.command_line", op="contains", value="WHOAMI")], time_range=whole_day()))
    assert result.total == 1 and not result.truncated
    event = result.events[0]
    assert (event["host.name"], event["host.hostname"]) == ("wks-7", "WKS-7")
    assert event["process.executable"] == "C:\\Windows\\System32\\whoami.exe"
    assert event["process.command_line"] == "whoami /all"
    assert event["process.parent.executable"] == "C:\\Windows\\System32\\cmd.exe"
    assert event["@timestamp"] == "2024-05-01T10:00:10.000Z"
    assert result.query.startswith("search index=* NOT index=notable NOT index=risk NOT index=summary* "
                                   'NOT sourcetype="siemcrew:case" ')
    assert 'CommandLine="*WHOAMI*"' in result.query and "| head 201 | fields _time, " in result.query
    api = [r for r in splunkd.requests if "jobs" in r.endpoint]
    assert api and all(r.auth == "bearer" for r in api)
    assert all("/v2/" in r.path for r in api), "Splunk 9.2 must be searched through search/v2/jobs"
    created = splunkd.calls("search/v2/jobs", "POST")[0]
    assert created.params["earliest_time"] == [f"{T0 - 3600:.3f}"] and created.params["latest_time"] == [f"{T0 + 3600:.3f}"]


def test_tls_verification_is_on_by_default(tmp_path: Path) -> None:
    with SplunkdEmulator(sample_events(), tls=True, tls_dir=tmp_path, now=NOW) as splunkd:
        connector = connect(splunkd, ca_file=None)
        with pytest.raises(ConnectorError, match="not trusted"):
            connector.run_native("index=main | head 1")
    assert not splunkd.calls("jobs"), "no request may pass an unverified TLS handshake"


def test_password_auth_logs_in_again_when_the_session_expires(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd, auth="password", username="admin")
    first = connector.run_native("index=main host=wks-7", time_range=whole_day())
    splunkd.fail_next("expire")
    second = connector.run_native("index=main host=wks-7", time_range=whole_day())
    assert splunkd.logins == 2
    assert second.events == first.events and first.total == 3
    assert any(r.status == 401 for r in splunkd.requests)


def test_an_expired_bearer_token_is_a_clear_error_without_the_token(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd)
    splunkd.fail_next("expire")
    with pytest.raises(ConnectorError, match="authentication failed") as failure:
        connector.run_native("index=main | head 1")
    assert TOKEN not in str(failure.value)


def test_missing_secret_names_the_variable(splunkd: SplunkdEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPLUNK_TOKEN")
    with pytest.raises(ConnectorError, match="SPLUNK_TOKEN"):
        connect(splunkd).run_native("index=main | head 1")


def test_results_page_past_the_100_row_default(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd, search={"page_size": 100})
    result = connector.run_native("index=main EventCode=4688", time_range=whole_day(), limit=250)
    assert len(result.events) == 250 and result.truncated and result.total == 251
    pages = splunkd.calls("/results")
    assert [p.params["count"] for p in pages] == [["100"], ["100"], ["51"]]
    assert [p.params["offset"] for p in pages] == [["0"], ["100"], ["200"]]
    assert len({e["process.command_line"] for e in result.events}) == 250


def test_all_rows_when_under_the_limit(splunkd: SplunkdEmulator) -> None:
    result = connect(splunkd).run_native("index=main EventCode=4688", time_range=whole_day(), limit=1000)
    assert result.total == 260 and len(result.events) == 260 and not result.truncated


@pytest.mark.parametrize(
    ("filters", "any_of", "categories", "expected"),
    [
        ([Filter(field="host.name", value="WKS-7")], [], [], 3),
        ([Filter(field="process.executable", op="endswith", value="\\whoami.exe")], [], [], 1),
        ([Filter(field="process.executable", op="contains", value="a*b")], [], [], 1),
        ([Filter(field="process.executable", op="contains", value="a\\b")], [], [], 0),
        ([Filter(field="event.code", op="in", value=[1, 3])], [], [], 3),
        ([Filter(field="host.name", value="wks-7"), Filter(field="event.code", value=1, negate=True)], [], [], 1),
        ([], [[Filter(field="source.ip", value="10.0.0.5"), Filter(field="destination.ip", value="203.0.113.9")]], [], 2),
        ([Filter(field="process.parent.executable", op="exists")], [], [], 2),
        ([Filter(field="process.command_line", op="startswith", value="powershell.exe -nop")], [], [], 1),
        ([], [], ["network"], 1),
        ([Filter(field="host.name", op="startswith", value="srv-")], [], ["process"], 260),
    ],
)
def test_event_queries_select_what_the_filters_say(
    splunkd: SplunkdEmulator, filters: list[Filter], any_of: list[list[Filter]], categories: list[str], expected: int
) -> None:
    query = EventQuery(filters=filters, any_of=any_of, categories=categories, time_range=whole_day(), limit=500, scope="main")
    result = connect(splunkd).search(query)
    assert result.query.startswith('search index="main" ')
    assert result.total == expected


def test_time_range_limits_the_search(splunkd: SplunkdEmulator) -> None:
    narrow = TimeRange(start=T0 + 15, end=T0 + 35)
    result = connect(splunkd).search(EventQuery(filters=[Filter(field="host.name", op="exists")], time_range=narrow))
    assert [e["@timestamp"] for e in result.events] == ["2024-05-01T10:00:20.000Z", "2024-05-01T10:00:30.000Z"]


def test_group_by_returns_counts_per_group_in_ecs(splunkd: SplunkdEmulator) -> None:
    query = EventQuery(filters=[Filter(field="user.name", value="svc_backup")], group_by=["host.name"], time_range=whole_day())
    result = connect(splunkd).search(query)
    counts = {row["host.name"]: int(row["count"]) for row in result.events}
    assert counts == {"srv-0": 65, "srv-1": 65, "srv-2": 65, "srv-3": 65}


def test_export_mode_streams_final_rows_and_skips_preview_sets(splunkd: SplunkdEmulator) -> None:
    spl = "index=main user=svc_backup | stats count by dest"
    by_job = connect(splunkd).run_native(spl, time_range=whole_day())
    by_export = connect(splunkd, search={"mode": "export"}).run_native(spl, time_range=whole_day())
    assert by_export.events == by_job.events
    assert sorted(int(r["count"]) for r in by_export.events) == [65, 65, 65, 65]
    assert splunkd.calls("jobs/export", "POST")


def test_an_empty_export_is_an_empty_result(splunkd: SplunkdEmulator) -> None:
    result = connect(splunkd, search={"mode": "export"}).run_native("index=main dest=nowhere", time_range=whole_day())
    assert result.total == 0 and result.events == []


def test_a_cut_export_stream_is_restarted_without_duplicates(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd, search={"mode": "export"})
    splunkd.fail_next("cut_export")
    result = connector.run_native("index=main host=wks-7", time_range=whole_day())
    assert result.total == 3 and len({e["@timestamp"] for e in result.events}) == 3
    assert len(splunkd.calls("jobs/export")) == 2


def test_old_splunk_is_searched_through_v1_paths_with_get(splunkd: SplunkdEmulator) -> None:
    with SplunkdEmulator(sample_events(), version="8.2.12", now=NOW) as old:
        result = connect(old).run_native("index=main host=wks-7", time_range=whole_day())
    assert result.total == 3
    assert not [r for r in old.requests if "/v2/" in r.path]
    assert old.calls("/results") and all(r.method == "GET" for r in old.calls("/results"))


def test_search_quota_503_is_retried_with_backoff(splunkd: SplunkdEmulator) -> None:
    splunkd.fail_next("quota", 2)
    result = connect(splunkd).run_native("index=main host=wks-7", time_range=whole_day())
    assert result.total == 3
    creates = splunkd.calls("search/v2/jobs", "POST")
    assert [r.status for r in creates if r.endpoint.rstrip("/").endswith("jobs")] == [503, 503, 201]


def test_quota_that_never_clears_is_a_clear_error(splunkd: SplunkdEmulator) -> None:
    splunkd.fail_next("quota", 10)
    with pytest.raises(ConnectorError, match="concurrent historical searches"):
        connect(splunkd, retry={"attempts": 3}).run_native("index=main | head 1")


def test_a_dropped_results_page_is_fetched_again_without_duplicates(splunkd: SplunkdEmulator) -> None:
    clean = connect(splunkd, search={"page_size": 100}).run_native("index=main EventCode=4688", time_range=whole_day(), limit=300)
    splunkd.fail_next("drop", 1, path="/results")
    again = connect(splunkd, search={"page_size": 100}).run_native("index=main EventCode=4688", time_range=whole_day(), limit=300)
    assert again.events == clean.events and again.total == 260
    assert any(r.status == -1 for r in splunkd.calls("/results"))


def test_a_dropped_job_create_is_retried(splunkd: SplunkdEmulator) -> None:
    splunkd.fail_next("drop", 1, path="/jobs")
    assert connect(splunkd).run_native("index=main host=wks-7", time_range=whole_day()).total == 3


def test_slow_jobs_are_polled_until_done(splunkd: SplunkdEmulator) -> None:
    splunkd.fail_next("slow", polls=4)
    result = connect(splunkd).run_native("index=main host=wks-7", time_range=whole_day())
    assert result.total == 3
    statuses = [r.status for r in splunkd.requests if r.method == "GET" and r.endpoint.count("/") == 3 and "jobs" in r.endpoint]
    assert statuses[:1] == [204] and statuses.count(200) >= 5


def test_a_job_that_never_finishes_times_out_and_is_cancelled(splunkd: SplunkdEmulator) -> None:
    splunkd.fail_next("slow", polls=10_000)
    with pytest.raises(ConnectorError, match="did not finish"):
        connect(splunkd, search={"job_timeout_s": 0.2}).run_native("index=main | head 1")
    cancels = splunkd.calls("/control", "POST")
    assert cancels and cancels[-1].params["action"] == ["cancel"]


def test_a_failed_job_reports_splunks_message(splunkd: SplunkdEmulator) -> None:
    splunkd.fail_next("job_failed")
    with pytest.raises(ConnectorError, match="failed: Error in 'search' command"):
        connect(splunkd).run_native("index=main | head 1")


def test_a_search_splunk_cannot_parse_is_a_clear_error(splunkd: SplunkdEmulator) -> None:
    with pytest.raises(ConnectorError, match="Unknown search command 'eventstats'"):
        connect(splunkd).run_native("index=main | eventstats count")


def test_writing_spl_is_refused_before_anything_is_sent(splunkd: SplunkdEmulator) -> None:
    with pytest.raises(QueryRefused, match="outputlookup"):
        connect(splunkd).run_native("index=main | outputlookup stolen.csv")
    assert not splunkd.requests


def test_sigma_rules_run_through_pysigmas_splunk_backend(splunkd: SplunkdEmulator) -> None:
    rule = """
title: Whoami Execution
id: e28a5a99-da44-436d-b7a0-2afc20a5f413
status: test
logsource:
  category: process_creation
  product: windows
detection:
  selection:
    Image|endswith: '\\whoami.exe'
    CommandLine|contains: '/all'
  condition: selection
level: medium
"""
    result = connect(splunkd).run_sigma(rule, time_range=whole_day())
    first_search = result.query.splitlines()[0]
    assert first_search.startswith('search index=* NOT index=notable NOT index=risk NOT index=summary* '
                                   'NOT sourcetype="siemcrew:case" Channel="Microsoft-Windows-Sysmon/Operational" EventCode=1 Image=')
    assert result.total == 1 and result.events[0]["process.executable"].endswith("whoami.exe")


def test_a_broken_sigma_rule_is_a_clear_error(splunkd: SplunkdEmulator) -> None:
    with pytest.raises(ConnectorError, match="cannot be converted"):
        connect(splunkd).run_sigma("title: x\nlogsource: {}\ndetection: {}\n")


def test_concurrent_searches_are_capped(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd, search={"max_concurrent": 1})
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(connector.run_native("index=main host=wks-7", time_range=whole_day()).total)) for _ in range(3)]
    for _ in range(3):
        splunkd.fail_next("slow", polls=3)
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert results == [3, 3, 3]
    assert splunkd.max_active_jobs == 1


def test_health_reports_version_and_a_test_search(splunkd: SplunkdEmulator) -> None:
    report = connect(splunkd).health()
    assert report.ok and report.version == "9.2.1"
    assert splunkd.calls("search/v2/jobs", "POST")[0].params["search"] == ["| makeresults count=1"]


def test_health_is_not_ok_with_a_bad_token(splunkd: SplunkdEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLUNK_TOKEN", "wrong")
    report = connect(splunkd).health()
    assert not report.ok and "authentication failed" in report.detail and "wrong" not in report.detail


def test_settings_validate_what_they_can() -> None:
    with pytest.raises(ValueError):
        SplunkSettings(url="splunk.example.com:8089")
    with pytest.raises(ValueError, match="username"):
        SplunkSettings(auth="password")
    with pytest.raises(ValueError, match="saved_search"):
        SplunkSettings(alerts={"source": "saved_search"})


def test_the_example_config_section_is_valid() -> None:
    import yaml

    example = Path(__file__).resolve().parents[1] / "examples" / "splunk" / "siemcrew.yaml"
    settings = SplunkSettings.model_validate(yaml.safe_load(example.read_text())["splunk"])
    assert settings.verify and settings.auth == "token" and settings.hec.sourcetype == "siemcrew:case"


def test_sigma_with_the_cim_pipeline_searches_the_data_model(splunkd: SplunkdEmulator) -> None:
    rule = "title: w\nlogsource: {category: process_creation, product: windows}\ndetection: {sel: {Image|endswith: '\\\\whoami.exe'}, condition: sel}\n"
    with pytest.raises(ConnectorError, match="HTTP 400"):  # the emulator has no data models or ES content macros
        connect(splunkd, search={"sigma_pipeline": "splunk_cim"}).run_sigma(rule)
    sent = splunkd.calls("search/v2/jobs", "POST")[0].params["search"][0]
    assert sent.startswith("| tstats") and "from datamodel=Endpoint.Processes" in sent and "`drop_dm_object_name(Processes)`" in sent


@pytest.mark.parametrize(
    ("native", "sent"),
    [
        ("host=wks-7", 'search index=main NOT sourcetype="siemcrew:case" host=wks-7'),
        ("search host=wks-7 | head 2", 'search index=main NOT sourcetype="siemcrew:case" host=wks-7 | head 2'),
        ("index=notable dest=dc01", "search index=notable dest=dc01"),
        ("search index IN (main, notable) dest=dc01", "search index IN (main, notable) dest=dc01"),
        ("| makeresults count=2", "| makeresults count=2"),
    ],
)
def test_native_spl_gets_search_and_the_scope_only_when_it_names_no_index(splunkd: SplunkdEmulator, native: str, sent: str) -> None:
    result = connect(splunkd, search={"scope": "index=main", "exclude": []}).run_native(native, time_range=whole_day())
    assert result.query == sent
    assert splunkd.calls("search/v2/jobs", "POST")[0].params["search"] == [sent]


@pytest.mark.parametrize("path", ["/results", "server/info", "/jobs/"])
def test_a_malformed_answer_is_a_clear_error(splunkd: SplunkdEmulator, path: str) -> None:
    splunkd.fail_next("garbage", 1, path=path)
    with pytest.raises(ConnectorError, match="malformed answer from splunkd"):
        connect(splunkd).run_native("index=main host=wks-7", time_range=whole_day())


def test_a_wrong_password_is_a_clear_error(splunkd: SplunkdEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLUNK_PASSWORD", "not-the-password")
    with pytest.raises(ConnectorError, match="login as admin failed") as failure:
        connect(splunkd, auth="password", username="admin").run_native("index=main | head 1")
    assert "not-the-password" not in str(failure.value)
