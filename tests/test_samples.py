"""The sample data in examples/ must be valid, linked like real Windows telemetry, and true to its ground truth.

The demo and the brains' tests trust these files; these checks are what makes that trust earned:
alerts parse as the domain model and point at real events, every raw event has the fields its
channel and event id carry in the OTRF recordings, process GUIDs / logon ids / IPs link up, the
ground truth's key evidence and prevalence claims hold, and the files are what the generator
writes today (so nobody edits generated data by hand).
"""

from __future__ import annotations

import filecmp
import json
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from siemcrew.crew.models import Alert
from siemcrew.crew.timeutil import parse_time

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SYSMON = "microsoft-windows-sysmon/operational"
SECURITY = "security"
SYSTEM = "system"
POWERSHELL = "microsoft-windows-powershell/operational"
COMMON_FIELDS = ("@timestamp", "EventTime", "Hostname", "host", "Channel", "SourceName", "EventID", "RecordNumber")
REQUIRED: dict[tuple[str, int], tuple[str, ...]] = {
    (SYSMON, 1): (
        "UtcTime",
        "ProcessGuid",
        "ProcessId",
        "Image",
        "CommandLine",
        "CurrentDirectory",
        "User",
        "LogonGuid",
        "LogonId",
        "TerminalSessionId",
        "IntegrityLevel",
        "Hashes",
        "Company",
        "Description",
        "Product",
        "FileVersion",
        "OriginalFileName",
        "ParentProcessGuid",
        "ParentProcessId",
        "ParentImage",
        "ParentCommandLine",
    ),
    (SYSMON, 3): (
        "UtcTime",
        "ProcessGuid",
        "ProcessId",
        "Image",
        "User",
        "Protocol",
        "Initiated",
        "SourceIp",
        "SourcePort",
        "SourceHostname",
        "DestinationIp",
        "DestinationPort",
        "DestinationHostname",
    ),
    (SYSMON, 10): (
        "UtcTime",
        "SourceProcessGUID",
        "SourceProcessId",
        "SourceImage",
        "TargetProcessGUID",
        "TargetProcessId",
        "TargetImage",
        "GrantedAccess",
        "CallTrace",
    ),
    (SYSMON, 11): ("UtcTime", "ProcessGuid", "ProcessId", "Image", "TargetFilename", "CreationUtcTime"),
    (SYSMON, 13): ("UtcTime", "EventType", "ProcessGuid", "ProcessId", "Image", "TargetObject", "Details"),
    (SECURITY, 4624): (
        "SubjectUserSid",
        "SubjectUserName",
        "SubjectDomainName",
        "SubjectLogonId",
        "TargetUserSid",
        "TargetUserName",
        "TargetDomainName",
        "TargetLogonId",
        "LogonType",
        "LogonProcessName",
        "AuthenticationPackageName",
        "WorkstationName",
        "LogonGuid",
        "IpAddress",
        "IpPort",
        "ProcessId",
        "ProcessName",
        "ElevatedToken",
        "ImpersonationLevel",
        "KeyLength",
        "LmPackageName",
    ),
    (SECURITY, 4672): ("SubjectUserSid", "SubjectUserName", "SubjectDomainName", "SubjectLogonId", "PrivilegeList"),
    (SECURITY, 4688): (
        "SubjectUserSid",
        "SubjectUserName",
        "SubjectDomainName",
        "SubjectLogonId",
        "NewProcessId",
        "NewProcessName",
        "ProcessId",
        "ParentProcessName",
        "CommandLine",
        "TokenElevationType",
        "MandatoryLabel",
        "TargetUserName",
    ),
    (SECURITY, 4697): (
        "SubjectUserSid",
        "SubjectUserName",
        "SubjectDomainName",
        "SubjectLogonId",
        "ServiceName",
        "ServiceFileName",
        "ServiceType",
        "ServiceStartType",
        "ServiceAccount",
    ),
    (SECURITY, 4698): (
        "SubjectUserSid",
        "SubjectUserName",
        "SubjectDomainName",
        "SubjectLogonId",
        "TaskName",
        "TaskContent",
    ),
    (SECURITY, 4799): (
        "SubjectUserSid",
        "SubjectUserName",
        "SubjectDomainName",
        "SubjectLogonId",
        "TargetUserName",
        "TargetDomainName",
        "TargetSid",
        "CallerProcessId",
        "CallerProcessName",
    ),
    (SYSTEM, 7045): ("ServiceName", "ImagePath", "ServiceType", "StartType", "AccountName"),
    (SYSTEM, 5011): ("AppPoolID", "ProcessID"),
    (POWERSHELL, 4104): (
        "ScriptBlockText",
        "ScriptBlockId",
        "MessageNumber",
        "MessageTotal",
        "ExecutionProcessID",
        "UserID",
    ),
}
HEX = re.compile(r"^0x[0-9a-f]+$")
DECIMAL = re.compile(r"^[0-9]+$")
GUID = re.compile(r"^\{[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\}$")
HASHES = re.compile(r"^SHA1=[0-9A-F]{40},MD5=[0-9A-F]{32},SHA256=[0-9A-F]{64},IMPHASH=[0-9A-F]{32}$")
UTC_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}$")
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
# raw field name -> the ECS field that carries it in the nested export
ECS_ALIASES = {
    "CommandLine": "process.command_line",
    "Image": "process.executable",
    "DestinationIp": "destination.ip",
    "ServiceName": "service.name",
    "TargetUserName": "group.name",
}


def read_ndjson(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def short(hostname: str) -> str:
    return hostname.split(".")[0].upper()


def when(event: dict[str, Any]) -> datetime:
    moment = parse_time(event["@timestamp"])
    assert moment is not None, event["@timestamp"]
    return moment


def sysmon_time(event: dict[str, Any]) -> datetime:
    moment = parse_time(event["UtcTime"])
    assert moment is not None
    return moment


def is_(event: dict[str, Any], channel: str, event_id: int) -> bool:
    return event["Channel"].lower() == channel and event["EventID"] == event_id


def flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def ecs_as_raw(nested: dict[str, Any]) -> dict[str, Any]:
    """The raw-named view of an ECS export event, enough to count it in prevalence checks."""
    flat = flatten(nested)
    view = {
        key.removeprefix("winlog.event_data."): value
        for key, value in flat.items()
        if key.startswith("winlog.event_data.")
    }
    view.update(
        {
            "@timestamp": flat["@timestamp"],
            "Hostname": flat["host.name"],
            "EventID": int(flat["event.code"]),
            "Channel": flat["winlog.channel"],
        }
    )
    for raw_name, ecs_name in ECS_ALIASES.items():
        if ecs_name in flat:
            view[raw_name] = flat[ecs_name]
    return view


def matches(event: dict[str, Any], criteria: dict[str, Any]) -> bool:
    return all(str(event.get(key)) == str(value) for key, value in criteria.items())


@pytest.fixture(scope="module")
def raw_files() -> dict[str, list[dict[str, Any]]]:
    files = {path.name: list(read_ndjson(path)) for path in sorted((EXAMPLES / "events").glob("*.ndjson"))}
    assert "background.ndjson" in files and len(files) >= 7
    return files


@pytest.fixture(scope="module")
def raw_events(raw_files: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [event for rows in raw_files.values() for event in rows]


@pytest.fixture(scope="module")
def ecs_events() -> list[dict[str, Any]]:
    paths = sorted((EXAMPLES / "events" / "ecs").glob("*.ndjson"))
    assert paths, "the ECS-nested export is missing"
    return [event for path in paths for event in read_ndjson(path)]


@pytest.fixture(scope="module")
def all_events(raw_events: list[dict[str, Any]], ecs_events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return raw_events + [ecs_as_raw(event) for event in ecs_events]


@pytest.fixture(scope="module")
def alerts() -> dict[str, dict[str, Any]]:
    documents = {
        path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted((EXAMPLES / "alerts").glob("*.json"))
    }
    assert len(documents) == 6
    return documents


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads((EXAMPLES / "expected.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def org(expected: dict[str, Any]) -> dict[str, Any]:
    return expected["org"]


# -- alerts -----------------------------------------------------------------------------------


def test_every_alert_parses_as_the_alert_model(
    alerts: dict[str, dict[str, Any]], raw_events: list[dict[str, Any]]
) -> None:
    for stem, document in alerts.items():
        alert = Alert.model_validate(document)
        assert alert.id == stem
        assert alert.timestamp == parse_time(document["raw"]["@timestamp"])
        assert alert.entities.hosts and alert.entities.users and alert.process is not None
        assert alert.event["host.name"] == document["raw"]["Hostname"]
        assert document["raw"] in raw_events, f"{stem}: the raw triggering event is not in the events files"


def test_every_alert_points_at_matching_events(
    alerts: dict[str, dict[str, Any]], all_events: list[dict[str, Any]]
) -> None:
    """Same host, same executable, within 2 minutes; the user, process GUID and hash are there too."""
    for stem, document in alerts.items():
        alert = Alert.model_validate(document)
        host, executable = alert.entities.hosts[0], alert.process.executable if alert.process else None
        assert executable and executable in alert.entities.processes
        near = [
            e
            for e in all_events
            if short(e["Hostname"]) == host and abs(when(e) - alert.timestamp) <= timedelta(minutes=2)
        ]
        executables = {
            str(e.get(field, "")).lower()
            for e in near
            for field in ("Image", "NewProcessName", "ImagePath", "ServiceFileName")
        }
        assert executable.lower() in executables, f"{stem}: no event runs {executable} on {host}"
        user = alert.entities.users[0].split("\\")[-1].lower()
        users = {
            str(e.get(field, "")).split("\\")[-1].lower()
            for e in near
            for field in ("User", "TargetUserName", "SubjectUserName", "AccountName")
        }
        assert user in users, f"{stem}: {user} not seen on {host} near the alert"
        started = [e for e in near if is_(e, SYSMON, 1) and e["ProcessGuid"] == alert.process.entity_id]
        assert len(started) == 1, f"{stem}: process {alert.process.entity_id} not started on {host}"
        assert int(started[0]["ProcessId"]) == alert.process.pid
        assert started[0]["ParentProcessGuid"] == alert.process.parent_entity_id
        assert started[0]["CommandLine"] == alert.process.command_line
        for digest in alert.entities.hashes:
            assert digest.upper() in started[0]["Hashes"]


def test_rule_names_and_techniques_do_not_give_the_verdict_away(
    alerts: dict[str, dict[str, Any]], expected: dict[str, Any]
) -> None:
    """Each benign alert shares an ATT&CK technique with a malicious one: only the evidence separates them."""
    by_verdict: dict[str, set[str]] = defaultdict(set)
    for stem, document in alerts.items():
        by_verdict[expected["alerts"][stem]["verdict"]].update(document["techniques"])
    for stem, document in alerts.items():
        if expected["alerts"][stem]["verdict"] == "benign" and stem != "demo-6-remote-service":
            assert set(document["techniques"]) & by_verdict["malicious"], stem


# -- raw event shape --------------------------------------------------------------------------


def test_every_raw_event_has_the_fields_of_its_channel_and_event_id(raw_events: list[dict[str, Any]]) -> None:
    seen: Counter[tuple[str, int]] = Counter()
    for event in raw_events:
        for name in COMMON_FIELDS:
            assert event.get(name) not in (None, ""), (name, event)
        assert isinstance(event["EventID"], int)
        assert event["host"] == "wec.contoso.local"
        assert event["Hostname"].endswith(".contoso.local") and event["Hostname"].split(".")[0].isupper()
        key = (event["Channel"].lower(), event["EventID"])
        assert key in REQUIRED, f"event type without a field contract: {key}"
        seen[key] += 1
        for name in REQUIRED[key]:
            assert event.get(name) not in (None, ""), (name, key, event["@timestamp"])
        if event["Channel"].lower() == SYSMON:
            assert UTC_TIME.match(event["UtcTime"])
            for name in ("ProcessId", "SourceProcessId", "TargetProcessId", "ParentProcessId"):
                if name in event:
                    assert DECIMAL.match(event[name]), (name, event[name])
            for name in ("ProcessGuid", "ParentProcessGuid", "SourceProcessGUID", "TargetProcessGUID", "LogonGuid"):
                if name in event:
                    assert GUID.match(event[name]), (name, event[name])
        if key == (SYSMON, 1):
            assert HASHES.match(event["Hashes"]) and "\\" in event["User"] and HEX.match(event["LogonId"])
            assert event["IntegrityLevel"] in ("Medium", "High", "System")
        if key == (SYSMON, 13):
            assert event["TargetObject"].startswith(("HKU\\", "HKLM\\")) and event["EventType"] == "SetValue"
        if key == (SECURITY, 4624):
            assert event["LogonType"] in ("2", "3", "4", "5", "10") and HEX.match(event["TargetLogonId"])
        if key == (SECURITY, 4688):
            assert HEX.match(event["NewProcessId"]) and HEX.match(event["ProcessId"])
    assert len(seen) == len(REQUIRED), f"event types never produced: {set(REQUIRED) - set(seen)}"


def test_timestamps_parse_are_in_the_window_and_files_are_sorted(
    raw_files: dict[str, list[dict[str, Any]]], ecs_events: list[dict[str, Any]], org: dict[str, Any]
) -> None:
    start, end = parse_time(org["window"]["start"]), parse_time(org["window"]["end"])
    assert start is not None and end is not None
    for name, rows in [*raw_files.items(), ("ecs", ecs_events)]:
        stamps = [row["@timestamp"] for row in rows]
        assert all(ISO_Z.match(stamp) for stamp in stamps), name
        moments = [parse_time(stamp) for stamp in stamps]
        assert moments == sorted(moments), f"{name} is not sorted by @timestamp"
        assert all(start <= moment < end + timedelta(minutes=1) for moment in moments), name
    for rows in raw_files.values():
        for row in rows:
            if "UtcTime" in row:  # the collector's @timestamp lags the event, never leads it
                assert timedelta(0) <= when(row) - sysmon_time(row) <= timedelta(seconds=3)


def test_the_data_stays_small(raw_events: list[dict[str, Any]], ecs_events: list[dict[str, Any]]) -> None:
    size = sum(path.stat().st_size for path in (EXAMPLES / "events").rglob("*.ndjson"))
    assert len(raw_events) + len(ecs_events) <= 15_000
    assert size <= 8.5 * 1024 * 1024  # 8.06 MiB with demo-6's two deployment windows


# -- linkage ----------------------------------------------------------------------------------


def test_process_guids_link_children_to_parents(raw_events: list[dict[str, Any]]) -> None:
    starts = [e for e in raw_events if is_(e, SYSMON, 1)]
    by_guid = {(e["Hostname"], e["ProcessGuid"]): e for e in starts}
    assert len(by_guid) == len(starts), "a ProcessGuid was started twice"
    linked = 0
    for child in starts:
        parent = by_guid.get((child["Hostname"], child["ParentProcessGuid"]))
        if parent is None:
            continue  # a parent that started before the window (services.exe, winlogon.exe, ...)
        linked += 1
        assert (parent["Image"], parent["ProcessId"], parent["CommandLine"]) == (
            child["ParentImage"],
            child["ParentProcessId"],
            child["ParentCommandLine"],
        )
        assert sysmon_time(parent) <= sysmon_time(child)
    assert linked > len(starts) // 3
    for event in raw_events:  # every other Sysmon event names a process that exists on its host
        if event["Channel"].lower() == SYSMON and event["EventID"] in (3, 11, 13) and event["Image"] != "System":
            started = by_guid.get((event["Hostname"], event["ProcessGuid"]))
            if started is not None:
                assert started["Image"] == event["Image"] and started["ProcessId"] == event["ProcessId"]


def test_sysmon_and_security_agree_on_each_process_start(raw_events: list[dict[str, Any]]) -> None:
    """Sysmon PIDs are decimal, Security's are hex: both must name the same process and parent."""
    security = {
        (e["Hostname"], int(e["NewProcessId"], 16), e["NewProcessName"]): e
        for e in raw_events
        if is_(e, SECURITY, 4688)
    }
    for event in raw_events:
        if is_(event, SYSMON, 1):
            twin = security.get((event["Hostname"], int(event["ProcessId"]), event["Image"]))
            assert twin is not None, event["ProcessGuid"]
            assert (
                int(twin["ProcessId"], 16) == int(event["ParentProcessId"])
                and twin["CommandLine"] == event["CommandLine"]
            )


def test_domain_users_processes_run_in_a_logged_on_session(raw_events: list[dict[str, Any]]) -> None:
    """Sysmon LogonId = 4624 TargetLogonId on the same host, for the same account, logged before."""
    logons = {(e["Hostname"], e["TargetLogonId"]): e for e in raw_events if is_(e, SECURITY, 4624)}
    assert len(logons) == sum(1 for e in raw_events if is_(e, SECURITY, 4624)), "a logon id was reused on a host"
    for event in raw_events:
        if is_(event, SYSMON, 1) and event["User"].startswith("CONTOSO\\"):
            logon = logons.get((event["Hostname"], event["LogonId"]))
            assert logon is not None, (event["Hostname"], event["User"], event["LogonId"])
            assert logon["TargetUserName"] == event["User"].split("\\")[1]
            assert when(logon) <= when(event) + timedelta(seconds=3)


def test_each_host_has_one_address(raw_events: list[dict[str, Any]], org: dict[str, Any]) -> None:
    ips = {name: host["ip"] for name, host in org["hosts"].items()}
    assert len(set(ips.values())) == len(ips)
    owner = {ip: name for name, ip in ips.items()}
    for event in raw_events:
        if is_(event, SYSMON, 3):
            local = event["SourceIp"] if event["Initiated"] == "true" else event["DestinationIp"]
            assert local == ips[short(event["Hostname"])], event
        if is_(event, SECURITY, 4624) and event["IpAddress"] in owner and event["WorkstationName"] != "-":
            assert event["WorkstationName"] == owner[event["IpAddress"]]


def test_hashes_are_stable_per_binary(raw_events: list[dict[str, Any]], org: dict[str, Any]) -> None:
    images_by_hash: dict[str, set[str]] = defaultdict(set)
    hashes_by_image: dict[str, set[str]] = defaultdict(set)
    for event in raw_events:
        if is_(event, SYSMON, 1):
            images_by_hash[event["Hashes"]].add(event["Image"].lower())
            hashes_by_image[event["Image"].lower()].add(event["Hashes"])
    assert all(len(images) == 1 for images in images_by_hash.values())
    assert all(len(variants) <= 2 for variants in hashes_by_image.values())  # workstation and server builds
    for software in org["known_software"]:
        for path in software["paths"]:
            if path.lower() in hashes_by_image:
                assert len(hashes_by_image[path.lower()]) == 1, path


# -- ground truth -----------------------------------------------------------------------------


def test_expected_covers_every_alert(
    expected: dict[str, Any], alerts: dict[str, dict[str, Any]], org: dict[str, Any]
) -> None:
    assert set(expected["alerts"]) == set(alerts)
    for stem, truth in expected["alerts"].items():
        assert truth["verdict"] in ("malicious", "suspicious", "benign")
        assert all((EXAMPLES / name).is_file() for name in truth["events_files"])
        assert truth["key_evidence"] and truth["summary"]
        assert set(truth["affected_hosts"]) <= set(org["hosts"])
        if truth["verdict"] == "malicious":
            assert alerts[stem]["entities"]["hosts"][0] in truth["affected_hosts"]
            assert alerts[stem]["entities"]["users"][0] in truth["affected_accounts"]
        else:
            assert truth["affected_hosts"] == [] and truth["affected_accounts"] == []
    verdicts = Counter(truth["verdict"] for truth in expected["alerts"].values())
    assert verdicts == {"malicious": 3, "benign": 3}


def test_key_evidence_is_in_the_events(expected: dict[str, Any], raw_events: list[dict[str, Any]]) -> None:
    for stem, truth in expected["alerts"].items():
        for item in truth["key_evidence"]:
            found = [e for e in raw_events if short(e["Hostname"]) == item["host"] and matches(e, item["match"])]
            assert found, f"{stem}: no event for '{item['what']}'"


def test_prevalence_claims_hold(expected: dict[str, Any], all_events: list[dict[str, Any]]) -> None:
    checked = 0
    for stem, truth in expected["alerts"].items():
        for claim in truth["prevalence"]:
            found = [e for e in all_events if matches(e, claim["match"])]
            hosts = {short(e["Hostname"]) for e in found}
            days = {e["@timestamp"][:10] for e in found}
            label = f"{stem}: {claim['what']}"
            assert found, label
            assert len(hosts) >= claim.get("min_hosts", 0) and len(hosts) <= claim.get("max_hosts", 10**6), label
            assert len(days) >= claim.get("min_days", 0), label
            assert claim.get("min_count", 0) <= len(found) <= claim.get("max_count", 10**6), label
            if "hosts" in claim:
                assert hosts == set(claim["hosts"]), label
            for field, values in claim.get("field_values", {}).items():
                assert {e[field] for e in found} == set(values), label
            checked += 1
    assert checked >= 12


def test_the_second_host_is_reached_only_through_logons(
    expected: dict[str, Any], raw_events: list[dict[str, Any]], org: dict[str, Any]
) -> None:
    """Scenario 1: nothing on SRV-FS01 names WS-FIN-07 except network data (the IP), which is the point of the pivot."""
    ws_ip = org["hosts"]["WS-FIN-07"]["ip"]
    on_fs = [e for e in raw_events if short(e["Hostname"]) == "SRV-FS01" and "2026-11-19T14:1" in e["@timestamp"]]
    from_ws = [e for e in on_fs if ws_ip in (e.get("IpAddress"), e.get("SourceIp"))]
    assert {e["EventID"] for e in from_ws} == {3, 4624}
    assert "SRV-FS01" in expected["alerts"]["demo-1-lsass-comsvcs"]["affected_hosts"]


# -- ECS export -------------------------------------------------------------------------------


def test_ecs_export_is_nested_and_does_not_duplicate_raw_events(
    ecs_events: list[dict[str, Any]], raw_files: dict[str, list[dict[str, Any]]]
) -> None:
    ecs_hosts = set()
    for event in ecs_events:
        assert set(event) >= {"@timestamp", "host", "event", "winlog"} and "host.name" not in event
        assert isinstance(event["event"]["code"], str) and isinstance(event["event"]["category"], list)
        ecs_hosts.add(short(event["host"]["name"]))
        if event["event"]["code"] in ("1", "4688"):
            assert {"pid", "executable", "command_line", "parent"} <= set(event["process"])
    assert len(ecs_hosts) == 3
    raw_monitoring_hosts = {short(e["Hostname"]) for e in raw_files["monitoring_agent.ndjson"]}
    assert not ecs_hosts & raw_monitoring_hosts
    raw_keys = {(e["Hostname"], e["Channel"], str(e["RecordNumber"])) for rows in raw_files.values() for e in rows}
    ecs_keys = {(e["host"]["name"], e["winlog"]["channel"], e["winlog"]["record_id"]) for e in ecs_events}
    assert not raw_keys & ecs_keys


# -- the generator ----------------------------------------------------------------------------


def test_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    """Deterministic (fixed seed, no clock) and current: regenerating reproduces every file byte for byte."""
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "build_samples.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    generated = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    shipped = sorted(
        str(p.relative_to(EXAMPLES))
        for p in [*EXAMPLES.glob("events/**/*.ndjson"), *EXAMPLES.glob("alerts/*.json"), EXAMPLES / "expected.json"]
    )
    assert generated == shipped
    _, mismatch, errors = filecmp.cmpfiles(tmp_path, EXAMPLES, generated, shallow=False)
    assert not mismatch and not errors, mismatch or errors


def test_readme_documents_every_alert(alerts: dict[str, dict[str, Any]], expected: dict[str, Any]) -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for stem in alerts:
        assert stem in readme
        assert expected["alerts"][stem]["verdict"] in readme
