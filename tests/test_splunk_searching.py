"""What the Splunk connector searches and gets back on add-on data, through the real splunk-sdk.

* Fast mode: REST search jobs return only Splunk's default fields and the fields a search names, so
  generated searches name what the tools read; native SPL runs in smart mode, as in Splunk Web.
* Scope: event searches leave out ES notables, risk and summary indexes and siemcrew's own cases.
* Sigma: rules are converted for the Windows add-ons' data (XML Channel, EventCode, both the Sysmon
  and the Security 4688 forms), and a rule the data cannot answer is an error, not "0 hits".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from splunklib import client, results

from emulators.splunkd import NOW, T0, SplunkdEmulator, connector_settings, sample_events, sample_raw_events
from emulators.splunk_spl import DEFAULT_FIELDS
from emulators.splunk_ta import ta_event
from siemcrew.connectors.base import ConnectorError, EventQuery, Filter
from siemcrew.connectors.splunk.connector import SplunkConnector
from siemcrew.crew.models import TimeRange

TOKEN = "test-bearer-token"
WHOAMI_GUID = "{7c9e-0000-4242}"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLUNK_TOKEN", TOKEN)
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", "test-hec-token")


@pytest.fixture
def splunkd() -> Iterator[SplunkdEmulator]:
    with SplunkdEmulator(sample_events(), now=NOW) as emulator:
        yield emulator


def connect(emulator: SplunkdEmulator, **overrides: Any) -> SplunkConnector:
    return SplunkConnector.from_settings(connector_settings(emulator, **overrides))


def whole_day() -> TimeRange:
    return TimeRange(start=T0 - 3600, end=T0 + 3600)


def sdk_rows(emulator: SplunkdEmulator, spl: str, **params: Any) -> list[dict[str, Any]]:
    """A search job exactly as any splunk-sdk program runs one (no siemcrew code involved)."""
    service = client.Service(scheme="http", host="127.0.0.1", port=emulator.port, splunkToken=TOKEN)
    job = service.jobs.create(spl, earliest_time=str(T0 - 3600), latest_time=str(T0 + 3600), **params)
    while not job.is_done():
        time.sleep(0.01)
    reader = results.JSONResultsReader(job.results(output_mode="json", count=0))
    return [row for row in reader if isinstance(row, dict)]


# -- fast mode ------------------------------------------------------------------------------------
def test_splunkd_returns_only_default_and_named_fields_in_fast_mode(splunkd: SplunkdEmulator) -> None:
    spl = f'search index=main ProcessGuid="{WHOAMI_GUID}"'
    fast = sdk_rows(splunkd, spl)
    assert len(fast) == 1 and set(fast[0]) <= set(DEFAULT_FIELDS) | {"ProcessGuid"}
    assert "CommandLine" not in fast[0] and "ParentImage" not in fast[0]
    named = sdk_rows(splunkd, spl + " | fields CommandLine, ParentImage")
    assert (named[0]["CommandLine"], named[0]["ParentImage"]) == ("whoami /all", "C:\\Windows\\System32\\cmd.exe")
    required = sdk_rows(splunkd, spl, rf=["CommandLine", "ParentCommandLine"])
    assert "CommandLine" in required[0] and "ParentCommandLine" in required[0] and "Image" not in required[0]
    for level in ("verbose", "smart"):
        everything = sdk_rows(splunkd, spl, adhoc_search_level=level)
        assert {"CommandLine", "ParentImage", "process", "parent_process_path"} <= set(everything[0])
    assert "CommandLine" in sdk_rows(splunkd, spl + " | table *")[0]


def test_generated_searches_get_command_lines_and_parents_back_in_fast_mode(splunkd: SplunkdEmulator) -> None:
    query = EventQuery(filters=[Filter(field="process.entity_id", value=WHOAMI_GUID)], time_range=whole_day())
    result = connect(splunkd).search(query)
    event = result.events[0]
    assert result.total == 1
    assert event["process.command_line"] == "whoami /all"
    assert (event["process.parent.executable"], event["process.parent.command_line"]) == (
        "C:\\Windows\\System32\\cmd.exe", "cmd.exe")
    assert (event["process.parent.pid"], event["process.parent.entity_id"]) == (4100, "{7c9e-0000-4100}")
    assert (event["user.name"], event["logon.id"], event["host.hostname"]) == ("pgustavo", "0x2ba622", "WKS-7")
    sent = splunkd.calls("search/v2/jobs", "POST")[0].params
    assert "adhoc_search_level" not in sent  # a plain REST job: fast mode
    assert " | fields " in sent["search"][0]
    # the same search without its `| fields` clause would have come back without them
    bare = sdk_rows(splunkd, sent["search"][0].split(" | fields ", 1)[0])
    assert bare and "CommandLine" not in bare[0] and "ParentImage" not in bare[0]


def test_export_streams_ask_for_the_fields_too(splunkd: SplunkdEmulator) -> None:
    query = EventQuery(filters=[Filter(field="host.hostname", value="WKS-7"), Filter(field="event.code", value=1)],
                       time_range=whole_day())
    result = connect(splunkd, search={"mode": "export"}).search(query)
    assert result.total == 2 and all(e["process.command_line"] and e["process.parent.executable"] for e in result.events)


def test_native_spl_runs_in_smart_mode_as_in_splunk_web(splunkd: SplunkdEmulator) -> None:
    spl = f'index=main ProcessGuid="{WHOAMI_GUID}"'
    smart = connect(splunkd).run_native(spl, time_range=whole_day())
    assert smart.events[0]["process.command_line"] == "whoami /all"
    assert splunkd.calls("search/v2/jobs", "POST")[0].params["adhoc_search_level"] == ["smart"]
    fast = connect(splunkd, search={"native_search_level": "fast"}).run_native(spl, time_range=whole_day())
    assert fast.total == 1 and "process.command_line" not in fast.events[0]


def test_grouped_searches_count_per_ecs_value_across_raw_fields(splunkd: SplunkdEmulator) -> None:
    """user.name is SubjectUserName in a 4688, TargetUserName in a 4624 and User in Sysmon events."""
    result = connect(splunkd).search(EventQuery(group_by=["user.name"], time_range=whole_day(), limit=10))
    counts = {row["user.name"]: row["count"] for row in result.events}
    assert counts == {"svc_backup": 260, "pgustavo": 4}
    assert result.total == 2 and not result.truncated


# -- scope ----------------------------------------------------------------------------------------
def _not_activity() -> list[dict[str, Any]]:
    """Events about wks-7 that are not its activity: alerts, risk, summaries, siemcrew's own cases."""
    copy = ta_event(sample_raw_events(0)[0])
    return [
        {**copy, "index": "risk", "sourcetype": "stash", "risk_object": "wks-7", "risk_score": "80"},
        {**copy, "index": "summary", "sourcetype": "stash", "search_name": "hourly process summary"},
        {**copy, "index": "summary_endpoint", "sourcetype": "stash"},
        {**copy, "index": "siemcrew", "sourcetype": "siemcrew:case", "case_id": "case-1"},
        {**copy, "index": "main", "sourcetype": "siemcrew:case", "case_id": "case-2"},  # HEC token's default index
        {**copy, "index": "_internal", "sourcetype": "splunkd"},
    ]


def test_event_searches_leave_out_alerts_summaries_and_siemcrews_own_output() -> None:
    notable = {**ta_event(sample_raw_events(0)[0]), "event_id": "N@@notable@@1", "rule_name": "whoami", "_time": T0 + 70}
    with SplunkdEmulator(sample_events(0) + _not_activity(), [notable], now=NOW) as splunkd:
        connector = connect(splunkd, hec={"index": "siemcrew"})
        query = EventQuery(filters=[Filter(field="process.entity_id", value=WHOAMI_GUID)], time_range=whole_day())
        result = connector.search(query)
        assert result.total == 1, [e.get("winlog.event_data.index") for e in result.events]
        assert result.query.startswith('search index=* NOT index=notable NOT index=risk NOT index=summary* '
                                       'NOT index="siemcrew" NOT sourcetype="siemcrew:case" ')
        native = connector.run_native(f'ProcessGuid="{WHOAMI_GUID}"', time_range=whole_day())
        assert native.total == 1 and native.query.startswith("search index=* NOT index=notable")
        # without the exclusions, the same search would have found the copies
        unscoped = connect(splunkd, search={"exclude": []}).search(query)
        assert unscoped.total == 1 + 4  # + notable, risk, summary, summary_endpoint; never _internal, never own cases


# -- Sigma on the add-ons' data ---------------------------------------------------------------------
PROCESS_RULE = """
title: Backup agent runs
id: 0b1e5f2c-5d1e-4a53-9a0e-9d9c8f1a2b3c
status: test
logsource: {category: process_creation, product: windows}
detection:
  selection:
    Image|endswith: '\\\\agent.exe'
    CommandLine|contains: '--job'
  condition: selection
level: low
"""


def test_a_process_creation_rule_finds_sysmon_and_security_4688_events(splunkd: SplunkdEmulator) -> None:
    result = connect(splunkd).run_sigma(PROCESS_RULE, time_range=whole_day(), limit=500)
    sysmon, security = result.query.splitlines()
    assert 'Channel="Microsoft-Windows-Sysmon/Operational" EventCode=1 Image="*\\\\agent.exe"' in sysmon
    assert 'Channel="Security" EventCode=4688 NewProcessName="*\\\\agent.exe"' in security
    assert "WinEventLog:" not in result.query and " | fields " in security
    assert result.total == 260 and result.events[0]["process.command_line"].startswith("agent.exe --job")


def test_a_rule_that_matches_nothing_on_fields_the_data_has_is_a_real_zero(splunkd: SplunkdEmulator) -> None:
    rule = PROCESS_RULE.replace("agent.exe", "nothing-like-this.exe")
    result = connect(splunkd).run_sigma(rule, time_range=whole_day())
    assert result.total == 0 and result.events == []


def test_a_rule_on_fields_the_data_lacks_is_an_error_not_zero_hits(splunkd: SplunkdEmulator) -> None:
    rule = PROCESS_RULE.replace("CommandLine|contains: '--job'", "OriginalFileName: 'agent.exe'")
    with pytest.raises(ConnectorError, match=r"OriginalFileName.*0 hits is not evidence of absence") as failure:
        connect(splunkd).run_sigma(rule, time_range=whole_day())
    assert "sysmon: field(s)" in str(failure.value) and "security_audit: field(s)" in str(failure.value)


def test_a_rule_whose_log_source_has_no_events_is_an_error(splunkd: SplunkdEmulator) -> None:
    rule = """
title: Mimikatz in a script block
logsource: {category: ps_script, product: windows}
detection: {selection: {ScriptBlockText|contains: 'Invoke-Mimikatz'}, condition: selection}
"""
    with pytest.raises(ConnectorError, match="no events of Channel IN"):
        connect(splunkd).run_sigma(rule, time_range=whole_day())


def test_an_or_of_selections_is_answerable_when_one_side_is(splunkd: SplunkdEmulator) -> None:
    rule = """
title: Either form
logsource: {category: process_creation, product: windows}
detection:
  a: {OriginalFileName: 'x.exe'}
  b: {Image|endswith: '\\\\nothing-like-this.exe'}
  condition: a or b
"""
    assert connect(splunkd).run_sigma(rule, time_range=whole_day()).total == 0
