"""What the Elastic connector asks Elasticsearch for, and where, on Winlogbeat / Elastic Agent data.

* Searches name the fields rows are rebuilt from (`_source` includes, ES|QL `KEEP`, EQL `fields`),
  and the emulator, like Elasticsearch, answers with those only.
* The default event scope never reads Elastic Security alerts (they copy their event's fields) nor
  siemcrew's own cases index.
* Sigma conversions use the fields the indices have (`_field_caps`, asked once per index pattern
  within `field_caps_ttl`): Elastic Defend's `.caseless` fields fall back to the keyword field
  matched case-insensitively; a rule that can only match through missing fields is an error that
  names them, and the investigation records it as evidence in status error, not as "nothing found".
* `native_fields` says which index fields an internal field is read from (`siemcrew doctor`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from emulators.elastic import ElasticEmulator, elastic_settings
from emulators.elastic_security import Rule, detection_alert, threat_from_tags
from emulators.local_data import sysmon_process
from emulators.winlogbeat import index_mappings, winlogbeat_document
from siemcrew.connectors.base import ConnectorError, EventQuery, Filter
from siemcrew.connectors.elastic import ElasticConnector
from siemcrew.connectors.elastic.readback import flat_fields

HOST = "WORKSTATION5"
RULE = """
title: Whoami written in capitals
id: 6d3b5c1e-0a51-4c43-9a55-3f1f0e5c2a01
status: test
logsource: {product: windows, category: process_creation}
detection:
  selection:
    Image|endswith: '\\WHOAMI.EXE'
  condition: selection
level: medium
tags: [attack.discovery, attack.t1033]
"""
MISSING = """
title: Whoami with a field nobody indexes
id: 6d3b5c1e-0a51-4c43-9a55-3f1f0e5c2a02
status: test
logsource: {product: windows, category: process_creation}
detection:
  selection:
    Image|endswith: '\\whoami.exe'
    ImpersonationToken: 'x'
  condition: selection
level: medium
tags: [attack.discovery, attack.t1033]
"""
PARTLY = MISSING.replace("a02", "a03").replace("condition: selection", "condition: selection or other").replace(
    "  condition", "  other:\n    Image|endswith: '\\whoami.exe'\n  condition")


def _raw_events() -> list[dict[str, Any]]:
    return [
        sysmon_process("2025-06-02T07:00:00.000Z", "whoami /all", image="C:\\Windows\\System32\\whoami.exe", pid=4100),
        sysmon_process("2025-06-02T07:01:00.000Z", "cmd.exe /c dir", pid=4101),
        sysmon_process("2025-06-02T07:02:00.000Z", "notepad.exe", host="WORKSTATION6.theshire.local",
                       image="C:\\Windows\\System32\\notepad.exe", pid=4102),
    ]


@pytest.fixture
def loaded() -> Iterator[tuple[ElasticEmulator, list[tuple[str, dict[str, Any]]]]]:
    """Three Sysmon process creations in their data stream, an Elastic Security alert copying the
    first (with an ATT&CK mapping) and one without, and a siemcrew case document naming the host."""
    with ElasticEmulator() as emulator:
        docs = [winlogbeat_document(raw) for raw in _raw_events()]
        stream = docs[0][0]
        emulator.index(stream, [d for _, d in docs], ids=[f"e{i}" for i in range(len(docs))], mappings=index_mappings())
        rule = Rule(name="Whoami", rule_id="r-1", uuid="u-1", tags=["attack.t1033"], threat=threat_from_tags(["attack.t1033"]))
        emulator.add_alerts([detection_alert(docs[0][1], stream, "e0", "a" * 64, rule),
                             detection_alert(docs[1][1], stream, "e1", "b" * 64, Rule(name="Dir", rule_id="r-2", uuid="u-2"))])
        emulator.index("siemcrew-cases", [{"@timestamp": "2025-06-02T07:05:00.000Z", "case_id": "c-1",
                                           "host": {"name": HOST.lower()}, "winlog": {"computer_name": HOST}}])
        yield emulator, docs


@pytest.fixture
def connector(loaded: tuple[ElasticEmulator, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[ElasticConnector]:
    conn = ElasticConnector(elastic_settings(loaded[0], monkeypatch))
    yield conn
    conn.close()


def _requested(name: str, patterns: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatchcase(name, p) for p in patterns)


HOST_QUERY = EventQuery(filters=[Filter(field="host.hostname", value=HOST)], limit=50)


# -- fields requested ------------------------------------------------------------------------------
def test_searches_ask_only_for_the_fields_rows_are_rebuilt_from(connector: ElasticConnector) -> None:
    result = connector.search(HOST_QUERY)
    assert result.total == 2 and {e["process.pid"] for e in result.events} == {4100, 4101}
    body = json.loads(result.query)
    includes = body["_source"]["includes"]
    assert includes == connector.source_fields and "winlog.event_data.*" in includes
    assert not [f for f in includes if f.startswith(("agent", "ecs", "data_stream", "related"))]
    answer = connector.es.search(index=connector.events_index(), body=body)
    returned = {k for hit in answer["hits"]["hits"] for k in flat_fields(hit["_source"])}
    assert returned and all(_requested(k, includes) for k in returned)
    full = connector.es.search(index=connector.events_index(), query=body["query"])  # unfiltered: the whole document
    assert "agent.version" in {k for hit in full["hits"]["hits"] for k in flat_fields(hit["_source"])}

    esql = connector.search_esql(HOST_QUERY)
    assert "| KEEP " in esql.query and {e["process.pid"] for e in esql.events} == {4100, 4101}
    columns = [c["name"] for c in connector.es.esql.query(query=esql.query)["columns"]]
    assert columns and all(_requested(c, includes) for c in columns) and "agent.version" not in columns


def test_eql_sigma_asks_for_fields_not_sources(loaded: tuple[ElasticEmulator, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    emulator, _ = loaded
    connector = ElasticConnector(elastic_settings(emulator, monkeypatch, sigma_language="eql"))
    result = connector.run_sigma(RULE)
    assert [e["process.pid"] for e in result.events] == [4100] and result.events[0]["host.hostname"] == HOST
    sent = emulator.calls(path_contains="_eql/search")[-1]
    assert sent.body["fields"] == connector._columns(connector.field_caps.exists(connector.events_index()))
    assert "hits.events.fields" in sent.params["filter_path"]
    raw = connector.es.eql.search(index=connector.events_index(), query=sent.body["query"], fields=sent.body["fields"],
                                  filter_path=sent.params["filter_path"].split(","))
    assert all("_source" not in event for event in raw["hits"]["events"])


def test_alerts_with_and_without_an_attack_mapping_name_their_event(connector: ElasticConnector) -> None:
    """Detection alerts copy their event's document; a rule without `threat` gives an alert without
    techniques, with the same internal entities (the investigation does not depend on the mapping)."""
    alerts = {a.id: a for a in connector.fetch_alerts(None).alerts}
    mapped, unmapped = alerts["a" * 64], alerts["b" * 64]
    assert mapped.techniques == ["T1033"] and unmapped.techniques == [] and unmapped.tactics == []
    for alert, pid in ((mapped, 4100), (unmapped, 4101)):
        assert alert.entities.hosts == [HOST] and alert.entities.users == ["THESHIRE\\pgustavo"]
        assert alert.process is not None and alert.process.pid == pid and alert.event["event.code"] == "1"


# -- default scope ---------------------------------------------------------------------------------
@pytest.mark.parametrize("events_index", ["logs-*,winlogbeat-*", "*", "logs-*,siemcrew-*"])
def test_the_default_scope_never_reads_alerts_or_cases(loaded: tuple[ElasticEmulator, Any], monkeypatch: pytest.MonkeyPatch,
                                                       events_index: str) -> None:
    emulator, _ = loaded
    connector = ElasticConnector(elastic_settings(emulator, monkeypatch, events_index=events_index))
    scope = connector.events_index()
    assert scope.startswith(events_index) and {"-.alerts-*", "-.internal.alerts-*", "-siemcrew-cases"} <= set(scope.split(","))
    assert connector.search(HOST_QUERY).total == 2  # the events, not their alerts' copies nor the case
    assert len(connector.search_esql(HOST_QUERY).events) == 2
    assert connector.run_sigma(RULE).total == 1
    assert connector.run_native('{"query": {"match_all": {}}}').total == 3
    everything = connector.es.search(index=f"{events_index},.alerts-*", query={"match_all": {}}, size=0)
    assert everything["hits"]["total"]["value"] >= 5  # what an unscoped search would have counted


def test_an_events_index_naming_alerts_or_cases_is_refused(loaded: tuple[ElasticEmulator, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    emulator, _ = loaded
    for named in (".alerts-security.alerts-default", "logs-*,siemcrew-cases", ".siem-signals-default"):
        connector = ElasticConnector(elastic_settings(emulator, monkeypatch, events_index=named))
        with pytest.raises(ConnectorError, match="alerts or siemcrew's own cases"):
            connector.search(HOST_QUERY)


# -- Sigma on the fields the indices have ----------------------------------------------------------
@pytest.mark.parametrize("language", ["lucene", "esql", "eql"])
def test_caseless_fields_fall_back_to_case_insensitive_matches(loaded: tuple[ElasticEmulator, Any], language: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """pySigma's ECS pipeline asks for `process.executable.caseless` (Elastic Defend's); Winlogbeat has
    the keyword field only, so the rule's `\\WHOAMI.EXE` must still find `...\\whoami.exe`."""
    emulator, _ = loaded
    connector = ElasticConnector(elastic_settings(emulator, monkeypatch, sigma_language=language))
    result = connector.run_sigma(RULE)
    assert ".caseless" not in result.query and "process.executable" in result.query
    assert [e["process.executable"] for e in result.events] == ["C:\\Windows\\System32\\whoami.exe"]


@pytest.mark.parametrize("language", ["lucene", "esql", "eql"])
def test_a_rule_that_can_only_match_through_missing_fields_is_an_error_naming_them(
        loaded: tuple[ElasticEmulator, Any], language: str, monkeypatch: pytest.MonkeyPatch) -> None:
    emulator, _ = loaded
    connector = ElasticConnector(elastic_settings(emulator, monkeypatch, sigma_language=language))
    with pytest.raises(ConnectorError, match=r"can never match there: .*winlog\.event_data\.ImpersonationToken.*_field_caps"):
        connector.run_sigma(MISSING)
    if language == "lucene":  # another branch can still match: Lucene searches it, the missing one finds nothing
        assert connector.run_sigma(PARTLY).total == 1
    else:  # ES|QL and EQL reject unknown columns: say so instead of sending it
        with pytest.raises(ConnectorError, match="unknown columns"):
            connector.run_sigma(PARTLY)


def test_field_caps_are_asked_once_per_index_pattern_within_the_ttl(loaded: tuple[ElasticEmulator, Any],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    emulator, _ = loaded
    cached = ElasticConnector(elastic_settings(emulator, monkeypatch))
    for _ in range(3):
        cached.run_sigma(RULE)
    cached.search_esql(HOST_QUERY)
    asked = emulator.calls(path_contains="_field_caps")
    assert len(asked) == 1
    uncached = ElasticConnector(elastic_settings(emulator, monkeypatch, field_caps_ttl=0))
    uncached.run_sigma(RULE)
    uncached.run_sigma(RULE)
    assert len(emulator.calls(path_contains="_field_caps")) == 3


def test_a_missing_field_reaches_the_case_as_error_evidence(loaded: tuple[ElasticEmulator, Any], connector: ElasticConnector,
                                                            tmp_path: Path) -> None:
    """Through the sigma_hunt tool: the rule on missing fields is evidence in status error with the
    reason (the verifier then knows it could not look), the answerable rule is evidence found."""
    from siemcrew.config.settings import Settings
    from siemcrew.crew.context import InvestigationContext
    from siemcrew.crew.models import Case
    from siemcrew.crew.runtime import Runtime
    from siemcrew.tools.investigation import SigmaHuntTool

    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "whoami_caps.yml").write_text(RULE)
    (rules / "whoami_missing.yml").write_text(MISSING)
    settings = Settings.load(None, home=str(tmp_path / "home"), investigation={"sigma_rules_dir": str(rules)})
    runtime = Runtime(settings, siem=connector)
    alert = connector.fetch_alerts(None).alerts[0]
    ctx = InvestigationContext(case=Case(id="case-1", alerts=[alert]), runtime=runtime)
    items, _ = SigmaHuntTool(ctx=ctx).investigate(techniques=["T1033"], host=HOST)
    by_status = {item.status: item for item in items}
    assert set(by_status) == {"ok", "error"}
    assert "ImpersonationToken" in (by_status["error"].error or "") and "_field_caps" in (by_status["error"].error or "")
    assert by_status["ok"].count == 1


# -- doctor ------------------------------------------------------------------------------------------
def test_native_fields_name_where_the_profile_reads_an_internal_field(connector: ElasticConnector) -> None:
    assert connector.native_fields("host.hostname") == ["winlog.computer_name", "host.name"]
    assert connector.native_fields("process.command_line") == ["process.command_line"]
    logon = connector.native_fields("logon.id")
    assert "winlog.event_data.SubjectLogonId" in logon and "logon.id" not in logon
    assert {"user.name", "winlog.event_data.SubjectUserName", "winlog.user.name"} <= set(connector.native_fields("user.name"))
    assert connector.native_fields("winlog.event_data.Image") == ["winlog.event_data.Image", "process.executable"]
    assert connector.native_fields("event.category") == ["winlog.channel", "event.code", "event.category"]
    assert connector.native_fields("x.unknown") == ["x.unknown"]


def test_the_doctor_samples_winlogbeat_data_and_names_the_native_fields(connector: ElasticConnector) -> None:
    from siemcrew.crew.datacheck import check_data

    reports = {r.name: r for r in check_data(connector, whole=True)}
    creation = reports["process_creation"]
    assert creation.events == 3 and creation.error is None
    fields = {f.field: f for f in creation.fields}
    assert fields["host.hostname"].present == 3 and fields["host.hostname"].native[0] == "winlog.computer_name"
    assert fields["process.entity_id"].present == 3 and fields["logon.id"].native[0] == "winlog.event_data.LogonId"
    assert reports["logons"].events == 0
