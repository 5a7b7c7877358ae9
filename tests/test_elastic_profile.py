"""The Elastic data profile (config/mappings/elastic_winlogbeat.yaml): internal ECS filters land on
the fields Winlogbeat / the Elastic Agent write, and their documents read back as the rows the local
store makes of the same raw events.

Documents come from `emulators.winlogbeat`, written from the integrations' ingest pipelines, not
from the profile. What those pipelines drop or rewrite cannot come back and is not compared:
Sysmon's `@timestamp` is its UtcTime (the local store keeps the collector's time); line ends are LF
(the beat reads XML); the PowerShell 4103 ContextInfo/Payload texts are rebuilt from their parts
(lines the pipeline drops, such as `Severity`, are gone); `::ffff:` is cut from Security source
addresses; raw fields an NXLog export adds beside Windows' own (Sysmon 10's ProcessId) are not
indexed; `winlog.event_data.EventType` is NXLog's record type, which the beat records as `log.level`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from emulators.elastic import ElasticEmulator, elastic_settings
from emulators.elastic_store import compiled
from emulators.local_data import field_examples, recording
from emulators.otrf_elastic import load_recording
from emulators.winlogbeat import winlogbeat_document
from siemcrew.connectors.base import ConnectorError, EventQuery, Filter
from siemcrew.connectors.elastic import ElasticConnector
from siemcrew.connectors.elastic.dsl import DslDialect
from siemcrew.connectors.elastic.esql import esql_for
from siemcrew.connectors.elastic.profile import Profile
from siemcrew.connectors.elastic.readback import Readback
from siemcrew.connectors.local.normalize import Normalizer

PROFILE = Profile.load()
DSL = DslDialect(profile=PROFILE)
FILTER_FIELDS = (
    "event.code", "process.entity_id", "process.pid", "source.ip", "registry.path", "network.direction", "user.name",
    "process.executable", "logon.id", "host.hostname", "winlog.channel", "process.parent.pid",
    "process.parent.executable", "process.parent.entity_id", "process.command_line", "destination.ip",
    "target.process.entity_id", "source.port", "service.name", "process.hash.sha256", "logon.type", "file.path",
    "file.hash.sha256", "event.category", "destination.domain", "user.domain", "host.name", "dll.path",
    "service.executable", "target.process.executable", "task.name", "event.action", "registry.data.strings",
)
NOT_INDEXED = {"winlog.event_data.ProcessId"}  # Sysmon 10 in OTRF exports: NXLog's, not the event's
SYSMON_DROPS = ("-", "{00000000-0000-0000-0000-000000000000}")  # the Sysmon pipeline removes these event_data values


def local_values(raw: dict[str, Any], local: dict[str, Any]) -> dict[str, Any]:
    """The local row's FILTER_FIELDS, less the values the Sysmon pipeline drops before indexing."""
    sysmon = "sysmon" in str(raw.get("Channel", "")).lower()
    return {f: None if sysmon and local.get(f) in SYSMON_DROPS else local.get(f) for f in FILTER_FIELDS}


def fields_in(node: Any) -> set[str]:
    """Every field a query-DSL body names."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("term", "terms", "wildcard", "match_phrase", "range") and isinstance(value, dict):
                found.update(value)
            elif key == "exists":
                found.add(value["field"])
            else:
                found |= fields_in(value)
    elif isinstance(node, list):
        for item in node:
            found |= fields_in(item)
    return found


def dsl(*filters: Filter) -> dict[str, Any]:
    return DSL.translate(EventQuery(filters=list(filters)))["query"]


# -- queries -------------------------------------------------------------------------------------
def test_equality_lands_on_the_native_fields_with_native_values() -> None:
    host = dsl(Filter(field="host.hostname", value="WORKSTATION5"))
    assert fields_in(host) == {"winlog.computer_name", "host.name", "winlog.channel"}
    text = json.dumps(host)
    assert '"WORKSTATION5.*"' in text  # the short name also finds the FQDN Windows logs
    direction = json.dumps(dsl(Filter(field="network.direction", value="inbound")))
    assert '"ingress"' in direction and '"%%14592"' in direction and "inbound" not in direction
    pid = json.dumps(dsl(Filter(field="process.pid", value=1648)))
    assert '{"term": {"process.pid": 1648}}' in pid and '"0x670"' in pid  # Security logs some PIDs in hex
    logon = dsl(Filter(field="logon.id", value="0x2ba622"))
    assert "logon.id" not in fields_in(logon)
    assert {"winlog.event_data.LogonId", "winlog.event_data.TargetLogonId", "winlog.event_data.SubjectLogonId"} <= fields_in(logon)


@pytest.mark.parametrize(
    ("flt", "native", "shown"),
    [
        (Filter(field="user.name", op="in", value=["pgustavo", "svc"]), "winlog.event_data.SubjectUserName", "pgustavo"),
        (Filter(field="process.command_line", op="contains", value="-enc"), "process.command_line", "*-enc*"),
        (Filter(field="registry.path", op="startswith", value="HKLM\\Software"), "registry.path", "HKLM\\\\\\\\Software*"),
        (Filter(field="process.executable", op="endswith", value="\\powershell.exe"), "winlog.event_data.ProcessName", "*\\\\\\\\powershell.exe"),
        (Filter(field="file.path", op="exists"), "winlog.event_data.ShareName", "exists"),
        (Filter(field="target.process.executable", value="C:\\lsass.exe", negate=True), "winlog.event_data.TargetImage", "must_not"),
        (Filter(field="dll.path", op="endswith", value="\\comsvcs.dll"), "file.path", "*\\\\\\\\comsvcs.dll"),
    ],
)
def test_every_op_lands_on_winlogbeat_fields(flt: Filter, native: str, shown: str) -> None:
    """The query DSL and ES|QL read the same native fields for the same internal filter (the internal
    name itself only where it is also a native home, e.g. documents that are no Windows event records)."""
    body = dsl(flt)
    assert native in fields_in(body) and shown in json.dumps(body)
    esql = esql_for(EventQuery(filters=[flt]), "logs-*", PROFILE)
    assert set(re.findall(r"`([^`]+)`", esql)) - {"@timestamp"} == fields_in(body)
    homes = {home.field for home in PROFILE.homes(flt.field)}
    assert native in homes and (flt.field in homes or f"`{flt.field}`" not in esql)


def test_categories_are_the_events_the_local_mapping_gives_them() -> None:
    body = DSL.translate(EventQuery(categories=["registry"]))["query"]
    text = json.dumps(body)
    assert fields_in(body) == {"winlog.channel", "event.code", "event.category"}
    assert "[12, 13, 14]" in text and "[4657]" in text  # Sysmon 12-14, Security 4657; Winlogbeat says configuration too


def test_negation_is_null_safe_in_esql() -> None:
    esql = esql_for(EventQuery(filters=[Filter(field="logon.type", value="3", negate=True)]), "logs-*", PROFILE)
    assert esql.startswith("FROM logs-* | WHERE NOT (") and "COALESCE(" in esql


def test_group_by_asks_for_the_fields_the_value_is_built_from() -> None:
    fields = PROFILE.group_natives(["user.name"])
    assert {"user.name", "user.domain", "winlog.event_data.SubjectUserName", "winlog.user.name", "winlog.channel"} <= set(fields)
    assert "process.entity_id" not in fields  # parts of composite texts would only split the groups


# -- results -------------------------------------------------------------------------------------
def comparable(doc: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in doc.items():
        if key in ("@timestamp", "message", "powershell.command.invocation") or key in NOT_INDEXED:
            continue
        if key in ("winlog.event_data.ContextInfo", "winlog.event_data.Payload"):
            continue
        if key == "winlog.event_data.EventType" and raw.get("EventType") in (None, "INFO", "AUDIT_SUCCESS", "AUDIT_FAILURE"):
            continue
        if key == "winlog.event_data.IpAddress":
            value = str(value).removeprefix("::ffff:")
        if isinstance(value, str):
            value = "\n".join(line.rstrip() for line in value.replace("\r\n", "\n").split("\n")).strip()
        out[key] = value
    return out


@pytest.mark.parametrize("kind", sorted(field_examples()))
def test_a_winlogbeat_document_reads_back_as_the_local_store_row(kind: str) -> None:
    raw = field_examples()[kind]
    stream, doc = winlogbeat_document(raw)
    local = Normalizer().normalize(raw).doc
    back = Readback(PROFILE).internal(doc)
    assert comparable(back, raw) == comparable(local, raw), kind
    assert stream.startswith("logs-") and "winlog" in doc and not any(k.startswith("winlog.event_data.") for k in doc)
    if kind.startswith("sysmon:"):  # the pipeline's date processor: the event's own time
        assert back["@timestamp"][:19].replace("T", " ") == raw["UtcTime"][:19]
    else:
        assert back["@timestamp"] == local["@timestamp"]


def test_the_pipelines_moved_what_the_profile_restores() -> None:
    """Sanity of the emulator side: the Sysmon fields really are gone from event_data, and come back."""
    raw = field_examples()["sysmon:1"]
    _, doc = winlogbeat_document(raw)
    assert "Image" not in doc["winlog"]["event_data"] and doc["process"]["executable"] == raw["Image"]
    assert doc["user"] == {"id": "S-1-5-18", "domain": "THESHIRE", "name": "pgustavo"}
    back = Readback(PROFILE).internal(doc)
    assert back["winlog.event_data.Image"] == raw["Image"] and back["process.hash.sha256"] == raw["Hashes"].split("SHA256=")[1].split(",")[0].lower()


@pytest.fixture(scope="module")
def recorded() -> tuple[list[Any], dict[str, Any]]:
    with ElasticEmulator() as emulator:
        events = load_recording(emulator, recording("SDWIN-190518202151_empire_mimikatz_logonpasswords"))
        docs = {doc_id: doc for index in emulator.store.indices.values() for doc_id, doc in index.docs.items()}
    return events, docs


def test_every_event_is_found_by_each_of_its_field_values(recorded: tuple[list[Any], dict[str, Any]]) -> None:
    """For each event of a recording, a query on each field the tools filter on, with the value the
    local store has, finds that event's document (evaluated by the emulator's query engine)."""
    events, docs = recorded
    normalizer, checked, missed = Normalizer(), 0, []
    for event in events:
        local = local_values(event.raw, normalizer.normalize(event.raw).doc)
        doc = docs[event.doc_id]
        for field in FILTER_FIELDS:
            value = local[field]
            if value in (None, "") or isinstance(value, (list, dict)):
                continue
            checked += 1
            if not compiled(dsl(Filter(field=field, value=value)))(doc):
                missed.append((event.raw.get("Channel"), event.raw.get("EventID"), field, value))
    assert checked > 30_000 and missed == []


def test_every_document_reads_back_with_the_local_values_of_those_fields(recorded: tuple[list[Any], dict[str, Any]]) -> None:
    events, docs = recorded
    readback, normalizer = Readback(PROFILE), Normalizer()
    for event in events:
        local, back = normalizer.normalize(event.raw).doc, readback.internal(docs[event.doc_id].source)
        assert {f: back.get(f) for f in FILTER_FIELDS} == local_values(event.raw, local), event.raw.get("EventID")


# -- overriding -----------------------------------------------------------------------------------
CUSTOM = """
version: 1
name: acme-flat
fields:
  host.hostname: [{field: computer, fqdn: true}]
  process.entity_id: [proc_guid]
readback: {common: {"@timestamp": "@timestamp"}}
"""


def test_a_profile_is_replaced_in_yaml(tmp_path: Path, elastic_emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "acme.yaml"
    path.write_text(CUSTOM)
    elastic_emulator.index("logs-acme-default", [
        {"@timestamp": "2025-06-02T07:00:00.000Z", "computer": "WS-01.acme.local", "proc_guid": "{1}"},
        {"@timestamp": "2025-06-02T07:01:00.000Z", "computer": "WS-02.acme.local", "proc_guid": "{1}"},
    ])
    connector = ElasticConnector(elastic_settings(elastic_emulator, monkeypatch, profile=str(path)))
    assert connector.profile.name == "acme-flat"
    found = connector.search(EventQuery(filters=[Filter(field="host.hostname", value="ws-01"), Filter(field="process.entity_id", value="{1}")]))
    assert found.total == 1 and found.events[0]["computer"] == "WS-01.acme.local"
    body = json.loads(found.query)
    assert fields_in(body["query"]) == {"computer", "proc_guid"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [("fields: {host.name: [{when: {channel: x}}]}", "is invalid"), ("fields: [", "not valid YAML"),
     ("fields: {x: [{field: y, formats: [oct]}]}", "formats are dec and hex")],
)
def test_a_broken_profile_is_a_clear_error(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ConnectorError, match=reason):
        Profile.load(path)
    with pytest.raises(ConnectorError, match="cannot read"):
        Profile.load(tmp_path / "missing.yaml")


from emulators.elastic import elastic_emulator  # noqa: E402,F401  (fixture)
