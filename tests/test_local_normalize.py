"""Raw Windows / evtx-JSON / ECS events -> flat ECS, checked on real OTRF events (field_examples.json)."""

from __future__ import annotations

import copy
import json

import pytest
from emulators.local_data import SIGMA, field_examples

from siemcrew.connectors.local import transforms
from siemcrew.connectors.local.normalize import Normalizer


@pytest.fixture(scope="module")
def normalizer() -> Normalizer:
    return Normalizer()


@pytest.fixture(scope="module")
def examples() -> dict[str, dict]:
    return field_examples()


def ecs(normalizer: Normalizer, event: dict) -> dict:
    result = normalizer.normalize(event)
    assert result is not None, "event not recognised"
    return result.doc


def test_sysmon_process_create(normalizer, examples):
    doc = ecs(normalizer, examples["sysmon:1"])
    assert doc["@timestamp"] == "2020-08-07T14:32:47.591Z"
    assert doc["event.code"] == "1" and doc["winlog.event_id"] == 1
    assert (doc["event.category"], doc["event.action"]) == ("process", "process_start")
    assert doc["process.pid"] == 6504 and doc["process.parent.pid"] == 1648
    assert doc["process.entity_id"] == "{297bc33e-660d-5f2d-8407-000000000400}"
    assert doc["process.name"] == "whoami.exe"
    assert doc["process.parent.name"] == "powershell.exe"
    # User "THESHIRE\pgustavo" is split; AccountName (SYSTEM, the Sysmon service) is not the user.
    assert (doc["user.domain"], doc["user.name"]) == ("THESHIRE", "pgustavo")
    assert doc["process.hash.sha256"] == "a8a4c4719113b071bb50d67f6e12c188b92c70eeafdfcd6f5da69b6aaa99a7fd"
    assert doc["process.hash.md5"] == "2eeeec89e705f73ffbcae014e1828788"
    assert doc["process.integrity_level"] == "High"
    assert doc["process.pe.original_file_name"] == "whoami.exe"
    assert doc["logon.id"] == "0x2ba622"
    # `host` is the collector; Hostname is the endpoint.
    assert doc["host.name"] == "WORKSTATION5.theshire.local" and doc["host.hostname"] == "WORKSTATION5"
    assert doc["winlog.event_data.Image"] == "C:\\Windows\\System32\\whoami.exe"
    assert "winlog.event_data.host" not in doc and "winlog.event_data.AccountName" not in doc


def test_security_4688_hex_pids_and_subject_user(normalizer, examples):
    doc = ecs(normalizer, examples["security:4688"])
    assert doc["process.pid"] == 0x1968 == 6504
    assert doc["process.parent.pid"] == 0x670 == 1648
    assert doc["process.executable"] == "C:\\Windows\\System32\\whoami.exe"
    assert doc["process.command_line"] == '"C:\\windows\\system32\\whoami.exe" /user'
    assert (doc["user.domain"], doc["user.name"]) == ("THESHIRE", "pgustavo")  # TargetUserName is "-"
    assert doc["logon.id"] == "0x2ba622"
    assert doc["process.integrity_level"] == "High"  # S-1-16-12288
    assert "process.entity_id" not in doc


def test_security_4688_machine_account_kept_as_is(normalizer, examples):
    event = copy.deepcopy(examples["security:4688"])
    event.update(SubjectUserName="WORKSTATION5$", SubjectDomainName="THESHIRE")
    assert ecs(normalizer, event)["user.name"] == "WORKSTATION5$"


def test_lower_case_security_channel_service_install(normalizer, examples):
    event = examples["security:4697"]
    assert event["Channel"] == "security"
    doc = ecs(normalizer, event)
    assert doc["winlog.channel"] == "security"
    assert (doc["event.category"], doc["event.action"]) == ("configuration", "service_install")
    assert doc["service.name"] == "Updater"
    assert doc["service.executable"].startswith("%COMSPEC% /C start /b")
    assert doc["user.name"] == "pgustavo" and doc["event.outcome"] == "success"


def test_logon_target_user_and_string_logon_type(normalizer, examples):
    doc = ecs(normalizer, examples["security:4624"])
    assert (doc["user.domain"], doc["user.name"]) == ("THESHIRE.LOCAL", "pgustavo")
    assert doc["logon.type"] == "3" and doc["logon.id"] == "0x824909"
    assert doc["source.ip"] == "172.18.39.5" and doc["source.port"] == 59696
    assert doc["event.action"] == "logon" and doc["event.outcome"] == "success"
    assert "source.user.name" not in doc  # SubjectUserName is "-"


def test_failed_logon(normalizer, examples):
    doc = ecs(normalizer, examples["security:4625"])
    assert doc["event.action"] == "logon_failed" and doc["event.outcome"] == "failure"
    assert doc["user.name"] == "pedro.gustavo" and doc["source.user.name"] == "PRD01$"
    assert doc["process.pid"] == 0x1E98
    assert "user.id" not in doc  # S-1-0-0, the NULL SID, means no account


def test_kerberos_upn_user_and_mapped_ipv4(normalizer, examples):
    doc = ecs(normalizer, examples["security:4769"])
    assert doc["user.name"] == "pgustavo" and doc["source.ip"] == "172.18.39.5"


def test_scheduled_task_content_unescaped(normalizer, examples):
    doc = ecs(normalizer, examples["security:4698"])
    assert doc["task.name"] == "\\MordorSchtask"
    assert doc["task.content"].startswith('<?xml version="1.0"')
    assert doc["event.action"] == "scheduled_task_create"


def test_network_connection_direction_and_ports(normalizer, examples):
    doc = ecs(normalizer, examples["sysmon:3"])
    assert doc["network.direction"] == "inbound"  # Initiated: "false"
    assert doc["destination.port"] == 445 and doc["destination.ip"] == "172.18.38.5"
    assert doc["user.name"] == "SYSTEM" and doc["user.domain"] == "NT AUTHORITY"
    assert "destination.domain" not in doc  # "-"


def test_process_access_source_and_target(normalizer, examples):
    doc = ecs(normalizer, examples["sysmon:10"])
    assert doc["event.action"] == "process_access"
    assert doc["process.executable"] == "C:\\windows\\system32\\svchost.exe" and doc["process.pid"] == 440
    assert doc["target.process.pid"] == 2456
    assert doc["target.process.entity_id"] == "{7d3be4b5-0df0-5f2a-4600-000000000400}"
    assert doc["winlog.event_data.GrantedAccess"] == "0x1000"


def test_registry_and_file_events(normalizer, examples):
    reg = ecs(normalizer, examples["sysmon:13"])
    assert reg["registry.path"].endswith("\\Scheduler\\Cleanup the UsoSession map")
    assert reg["registry.value"] == "Cleanup the UsoSession map"
    assert reg["registry.data.strings"] == "QWORD (0x01d66aef-0x0bbf6930)"
    created = ecs(normalizer, examples["sysmon:11"])
    assert created["file.name"] == "SVCHOST.EXE-4AE18004.pf" and created["event.category"] == "file"


def test_system_service_install(normalizer, examples):
    doc = ecs(normalizer, examples["system:7045"])
    assert doc["service.name"] == "Updater" and doc["service.executable"].startswith("%COMSPEC%")
    assert doc["winlog.provider_name"] == "Service Control Manager"


def test_powershell_script_block_and_module(normalizer, examples):
    block = ecs(normalizer, examples["ps:4104"])
    assert block["event.category"] == "powershell" and block["event.action"] == "script_block"
    assert block["powershell.script_block_text"].startswith("If($PSVErSiOnTablE")
    module = ecs(normalizer, examples["ps:4103"])
    assert (module["user.domain"], module["user.name"]) == ("THESHIRE", "pgustavo")
    assert module["process.command_line"].startswith("C:\\windows\\System32\\WindowsPowerShell")


def test_powershell_user_from_context_info_wins(normalizer, examples):
    event = copy.deepcopy(examples["ps:4103"])
    event["ContextInfo"] = "        Host Name = ConsoleHost\r\n        User = CONTOSO\\alice\r\n        Shell ID = x\r\n"
    event.update(AccountName="SYSTEM", Domain="NT AUTHORITY")
    doc = ecs(normalizer, event)
    assert (doc["user.domain"], doc["user.name"]) == ("CONTOSO", "alice")


def test_timestamp_fallbacks_utctime_then_zoneless_timecreated(normalizer, examples):
    sysmon = copy.deepcopy(examples["sysmon:1"])
    del sysmon["@timestamp"]
    assert ecs(normalizer, sysmon)["@timestamp"] == "2020-08-07T14:32:45.881Z"
    lab_vm = {k: v for k, v in examples["security:4688"].items() if k != "@timestamp"}
    lab_vm["TimeCreated"] = "2020-10-18 07:50:06.220"
    assert ecs(normalizer, lab_vm)["@timestamp"] == "2020-10-18T07:50:06.220Z"


def test_message_is_truncated_to_2kb(normalizer, examples):
    event = copy.deepcopy(examples["sysmon:1"])
    event["Message"] = "é" * 5000
    doc = ecs(normalizer, event)
    assert len(doc["message"].encode("utf-8")) <= 2048 and doc["message"].startswith("éé")


def test_evtx_json_form_is_understood(normalizer):
    path = next((SIGMA / "regression_data").rglob("5a6b7c8d-9e0f-1a2b-3c4d-5e6f7a8b9c0d.json"))
    result = normalizer.normalize(json.loads(path.read_text(encoding="utf-8")))
    assert result is not None
    doc = result.doc
    assert doc["winlog.channel"] == "Microsoft-Windows-Sysmon/Operational" and doc["event.code"] == "1"
    assert doc["process.executable"] == "C:\\Windows\\System32\\cmd.exe"
    assert doc["host.hostname"] == "SWACHCHHANDA"
    assert result.raw["Image"] == "C:\\Windows\\System32\\cmd.exe" and result.raw["EventID"] == 1


def test_nested_ecs_is_flattened_with_raw_view(normalizer):
    event = {
        "@timestamp": "2024-05-01T10:00:00Z",
        "host": {"name": "web01.corp.example"},
        "event": {"code": 4688},
        "winlog": {"channel": "Security", "event_id": 4688, "event_data": {"NewProcessName": "C:\\x.exe"}},
        "process": {"pid": 12, "executable": "C:\\x.exe"},
    }
    result = normalizer.normalize(event)
    assert result is not None
    assert result.doc["@timestamp"] == "2024-05-01T10:00:00.000Z"
    assert result.doc["host.hostname"] == "WEB01" and result.doc["event.code"] == "4688"
    assert result.doc["process.pid"] == 12
    assert result.raw == {"NewProcessName": "C:\\x.exe", "EventID": 4688, "Channel": "Security", "Hostname": "web01.corp.example"}


@pytest.mark.parametrize(
    "value",
    [
        {"ts": 1600000000.1, "uid": "C1", "id.orig_h": "10.0.0.1", "proto": "tcp"},  # Zeek JSON
        {"hello": "world"},
        ["not", "an", "object"],
        {"@timestamp": "2024-01-01T00:00:00Z", "host": "collector01"},  # a plain string host is not ECS
    ],
)
def test_non_events_are_not_recognised(normalizer, value):
    assert normalizer.normalize(value) is None


def test_transforms():
    assert transforms.to_int("0x1890") == 6288 and transforms.to_int("6504") == 6504
    assert transforms.to_int("abc") is None and transforms.to_int(True) is None
    assert transforms.account_name("pgustavo@THESHIRE.LOCAL") == "pgustavo"
    assert transforms.account_domain("THESHIRE\\pgustavo") == "THESHIRE"
    assert transforms.basename("C:\\Windows\\System32\\cmd.exe") == "cmd.exe"
    assert transforms.short_host("workstation6.theshire.local") == "WORKSTATION6"
    assert transforms.hash_of("SHA1=AA,MD5=BB,SHA256=CC", "sha256") == "cc"
    assert transforms.outcome(-9214364837600034816) == "success"  # Keywords 0x8020000000000000
    assert transforms.outcome("0x8010000000000000") == "failure"
    assert transforms.direction("%%14593") == "outbound"
    assert transforms.timestamp("2020-10-18 07:50:06.220") == "2020-10-18T07:50:06.220Z"
    assert transforms.timestamp("not a time") is None
    with pytest.raises(ValueError):
        transforms.resolve("no_such_transform")
