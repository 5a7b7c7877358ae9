"""The default Splunk data profile (Windows add-ons): filters as SPL, rows as ECS, fields asked for.

The reference for "right" is the local store: the same raw Windows events, normalized by
siemcrew's own mapping, must read the same through the profile (rows) and be selected by the same
filters (SPL run by the emulator's engine over the events as the add-ons index them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from emulators.local_data import field_examples, recording, write_ndjson
from emulators.splunk_spl import SplEngine, render_row
from emulators.splunk_ta import raw_events, ta_event
from siemcrew.config.splunk import SplunkSettings
from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.connectors.local.connector import LocalConnector
from siemcrew.connectors.local.normalize import Normalizer
from siemcrew.connectors.splunk.dialect import SplDialect
from siemcrew.connectors.splunk.profile import MAPPINGS_DIR, CimProfile, load_profile
from siemcrew.connectors.splunk.ta_profile import WindowsTaProfile
from siemcrew.tools.base import SAMPLE_FIELDS

PROFILE = load_profile()
RECORDING = "SDWIN-190518202151_empire_mimikatz_logonpasswords"
# NXLog adds these to what Windows logged (its own rendering and account lookups); an event indexed
# by the Splunk add-ons from the XML does not have them.
COLLECTOR_ONLY = ("AccountName", "Domain", "AccountType", "Message")


def windows_event_only(raw: dict[str, Any]) -> dict[str, Any]:
    """The raw event without what the collector added (NXLog's EventType too, unless it was kept aside)."""
    return {k: v for k, v in raw.items()
            if k not in COLLECTOR_ONLY and not (k == "EventType" and "EventTypeOrignal" not in raw)}


def where(*filters: Filter, **query: Any) -> str:
    return SplDialect(PROFILE, scope="").where(EventQuery(filters=list(filters), **query))


# -- filters as SPL ----------------------------------------------------------------------------
def test_the_default_profile_reads_windows_add_on_data() -> None:
    assert isinstance(PROFILE, WindowsTaProfile) and PROFILE.name == "splunk_ta_windows"
    assert SplunkSettings().search.profile == "splunk_ta_windows"


def test_a_host_is_its_computer_name_short_or_qualified() -> None:
    assert where(Filter(field="host.hostname", value="WKS7")) == 'Computer IN ("WKS7", "WKS7.*")'
    assert where(Filter(field="host.name", value="wks7.corp.example")) == 'Computer="wks7.corp.example"'


def test_event_codes_are_searched_as_the_add_ons_name_them() -> None:
    assert where(Filter(field="event.code", op="in", value=["4624", 4625])) == "EventCode IN (4624, 4625)"
    assert where(Filter(field="winlog.channel", value="Security")) == 'Channel="Security"'


def test_a_pid_matches_decimal_and_hex_in_the_channel_and_event_that_carry_it() -> None:
    """A Security 4688's ProcessId is its parent's PID, in hex; Sysmon's ParentProcessId is decimal."""
    assert where(Filter(field="process.parent.pid", value=1648)) == (
        '(((Channel="microsoft-windows-sysmon/operational" EventCode=1) ParentProcessId IN (1648, "0x670")) OR '
        '((Channel="security" EventCode=4688) ProcessId IN (1648, "0x670")))'
    )


def test_a_field_read_from_several_sources_matches_the_first_present_one() -> None:
    """4688 reads user.name from TargetUserName, else (empty or '-') SubjectUserName."""
    text = where(Filter(field="user.name", value="bob"))
    assert ('((Channel="security" EventCode=4688) (TargetUserName="bob" OR (NOT ((TargetUserName=* '
            'NOT (TargetUserName IN ("-", "S-1-0-0")))) SubjectUserName="bob")))') in text
    assert 'User IN ("bob", "*\\\\bob", "bob@*")' in text  # Sysmon's DOMAIN\\user


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (Filter(field="network.direction", value="outbound"),
         'Initiated IN ("true", 1, "%%14593", "outbound")'),
        (Filter(field="process.hash.sha256", value="ab12"), 'Hashes IN ("*SHA256=ab12", "*SHA256=ab12,*")'),
        (Filter(field="source.ip", value="10.1.2.3"), 'IpAddress IN ("10.1.2.3", "::ffff:10.1.2.3")'),
        (Filter(field="logon.type", value="3"), "LogonType=3"),
        (Filter(field="process.command_line", op="contains", value='a "b" *c'), 'CommandLine="*a \\"b\\" \\*c*"'),
        (Filter(field="process.executable", op="startswith", value="C:\\Temp"), 'Image="C:\\\\Temp*"'),
        (Filter(field="process.executable", op="endswith", value="\\cmd.exe"), 'NewProcessName="*\\\\cmd.exe"'),
        (Filter(field="process.entity_id", op="exists"), '(ProcessGuid=* NOT (ProcessGuid IN ("-", "S-1-0-0")))'),
        (Filter(field="winlog.event_data.GrantedAccess", value="0x1010"), 'GrantedAccess="0x1010"'),
        (Filter(field="process.pid", op="gte", value=4), "ProcessId>=4"),
    ],
)
def test_each_operator_and_value_form_has_its_spl(flt: Filter, expected: str) -> None:
    assert expected in where(flt)


def test_negation_never_matches_events_without_the_field_as_in_the_local_store() -> None:
    assert where(Filter(field="host.hostname", value="X", negate=True)) == (
        '((Computer=* NOT (Computer IN ("-", "S-1-0-0"))) NOT (Computer IN ("X", "X.*")))')
    assert where(Filter(field="host.hostname", op="exists", negate=True)) == (
        'NOT ((Computer=* NOT (Computer IN ("-", "S-1-0-0"))))')


def test_categories_are_the_channels_and_event_ids_the_mapping_files_under_them() -> None:
    assert where(categories=["network"]).startswith('((Channel="microsoft-windows-sysmon/operational" EventCode IN (3, 22))')


def test_time_filters_compare_time() -> None:
    assert where(Filter(field="@timestamp", op="gte", value="2024-05-01T10:00:00Z")) == "_time>=1714557600.000"


def test_event_searches_ask_for_every_field_the_tools_read() -> None:
    """Fast mode returns only named fields: every field the reasoning reads must be fed by a named one."""
    text = SplDialect(PROFILE, scope="index=*").translate(EventQuery(filters=[Filter(field="event.code", value=1)]))
    named = set(text.split(" | fields ", 1)[1].split(", "))
    for field in SAMPLE_FIELDS:
        if field == "count":
            continue
        if field.startswith("winlog.event_data."):
            assert set(PROFILE.splunk_names(field.split(".", 2)[2])) <= named, field
            continue
        branches = PROFILE.plans.branches(field)
        assert any(not b.plan.empty for b in branches), f"{field}: the Windows mapping never produces it"
        sources = {name for b in branches for s in b.plan.sources for name in PROFILE.splunk_names(s.name)}
        assert sources <= named, (field, sources - named)


def test_grouped_searches_group_by_the_raw_fields_and_channel() -> None:
    text = SplDialect(PROFILE, scope="index=*").translate(EventQuery(group_by=["host.hostname"], limit=10))
    assert text == 'search index=* * | fillnull value="-" Channel EventCode Computer | stats count by Channel EventCode Computer | head 50000'


# -- rows as ECS ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(field_examples()))
def test_an_add_on_row_reads_as_the_local_store_reads_the_same_windows_event(kind: str) -> None:
    raw = field_examples()[kind]
    row = render_row(ta_event(raw))  # as splunkd's JSON results carry it
    assert PROFILE.to_ecs(row) == Normalizer().normalize(windows_event_only(raw)).doc


def test_every_event_of_a_recording_reads_the_same() -> None:
    normalizer = Normalizer()
    raws = raw_events(recording(RECORDING))
    assert len(raws) > 5000
    mismatched = [raw.get("EventID") for raw in raws
                  if PROFILE.to_ecs(render_row(ta_event(raw))) != normalizer.normalize(windows_event_only(raw)).doc]
    assert mismatched == []


def test_rows_that_are_not_windows_events_read_through_the_cim_fallback() -> None:
    row = {"_time": "2024-05-01T10:00:00.000+00:00", "dest": "fw01", "src": "10.0.0.5", "action": "blocked",
           "sourcetype": "pan:traffic"}
    ecs = PROFILE.to_ecs(row)
    assert (ecs["host.name"], ecs["source.ip"], ecs["event.action"]) == ("fw01", "10.0.0.5", "blocked")


def test_a_notable_copying_its_event_reads_as_that_event_without_es_bookkeeping() -> None:
    raw = field_examples()["sysmon:10"]
    notable = {**render_row(ta_event(raw)), "event_id": "X@@notable@@1", "rule_name": "LSASS", "urgency": "high",
               "orig_time": "1596810777.589", "index": "notable", "sourcetype": "stash"}
    ecs = PROFILE.to_ecs(notable)
    assert ecs["target.process.executable"] == raw["TargetImage"] and ecs["process.executable"] == raw["SourceImage"]
    assert not [k for k in ecs if k.split(".")[-1] in ("rule_name", "urgency", "orig_time", "sourcetype")]


# -- the same events selected -------------------------------------------------------------------
FILTER_FIELDS = ("host.hostname", "event.code", "process.entity_id", "process.pid", "process.parent.pid",
                 "process.parent.entity_id", "process.executable", "process.parent.executable", "logon.id",
                 "logon.type", "user.name", "source.ip", "destination.ip", "source.port", "network.direction",
                 "registry.path", "file.path", "target.process.entity_id", "service.name", "winlog.channel",
                 "process.hash.sha256", "process.command_line", "destination.port", "event.category")


@pytest.fixture(scope="module")
def both_stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalConnector, SplEngine, list[dict[str, Any]]]:
    """One slice of a recording plus every field example: in the local store and as add-on events."""
    raws = [windows_event_only(r) for r in raw_events(recording(RECORDING))[::6]]
    raws += [windows_event_only(r) for r in field_examples().values()]
    path = write_ndjson(tmp_path_factory.mktemp("events") / "slice.ndjson", raws)
    local = LocalConnector.open(events=[path])
    events = [ta_event(raw) for raw in raws]
    normalizer = Normalizer()
    docs = [normalizer.normalize(raw).doc for raw in raws]
    return local, SplEngine(events), docs


def _key(doc: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(doc.get(f)) for f in ("@timestamp", "host.name", "winlog.channel", "winlog.record_id", "event.code"))


def _cases(docs: list[dict[str, Any]]) -> list[Filter]:
    cases: list[Filter] = []
    for field in FILTER_FIELDS:
        values = list(dict.fromkeys(json.dumps(d[field]) for d in docs if d.get(field) not in (None, "", [])))[:4]
        for value in values:
            cases.append(Filter(field=field, value=json.loads(value)))
        if values:
            cases.append(Filter(field=field, value=json.loads(values[0]), negate=True))
            cases.append(Filter(field=field, op="exists"))
    return cases


def test_every_filter_selects_the_events_the_local_store_selects(both_stores: Any) -> None:
    local, engine, docs = both_stores
    failures = []
    for flt in _cases(docs):
        if flt.field == "event.category":  # a list in ECS: searched as a category
            flt = Filter(field="event.category", op="in", value=flt.value if isinstance(flt.value, list) else [flt.value])
        query = EventQuery(filters=[flt], limit=100_000)
        wanted = sorted(_key(e) for e in local.search(query).events)
        rows = engine.run(SplDialect(PROFILE, scope="").translate(query), level="fast").rows
        got = sorted(_key(PROFILE.to_ecs(render_row(r))) for r in rows)
        if got != wanted:
            failures.append((flt.field, flt.op, flt.value, flt.negate, len(got), len(wanted)))
    assert failures == []


# -- choosing a profile ---------------------------------------------------------------------------
def test_the_cim_profile_stays_selectable() -> None:
    assert isinstance(load_profile("splunk_cim"), CimProfile)


def test_a_customer_profile_file_overrides_the_packaged_one(tmp_path: Path) -> None:
    """Events collected on another convention: the channel in `LogName`, the computer in `ComputerName`."""
    data = yaml.safe_load((MAPPINGS_DIR / "splunk_ta_windows.yaml").read_text(encoding="utf-8"))
    data["channel_field"] = "LogName"
    data["system"]["ComputerName"] = "Hostname"
    del data["system"]["Computer"]
    path = tmp_path / "my_profile.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    profile = load_profile(str(path))
    text = SplDialect(profile, scope="").where(EventQuery(filters=[Filter(field="host.hostname", value="WKS7"),
                                                                   Filter(field="process.parent.pid", value=10)]))
    assert 'ComputerName IN ("WKS7", "WKS7.*")' in text and 'LogName="security"' in text
    row = {"_time": "2024-05-01T10:00:00.000+00:00", "LogName": "Security", "EventCode": "4688",
           "ComputerName": "wks7.corp", "NewProcessName": "C:\\x.exe", "ProcessId": "0xa"}
    ecs = profile.to_ecs(row)
    assert (ecs["host.hostname"], ecs["process.parent.pid"], ecs["winlog.channel"]) == ("WKS7", 10, "Security")
    assert SplunkSettings.model_validate({"search": {"profile": str(path)}}).search.profile == str(path)
