"""`siemcrew doctor` checks the data, not just the connection: it names the fields the investigation
reads that the events in scope do not carry, and what investigations will miss without them."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from conftest import run_cli
from scenes import T0, Scene, security_process

from siemcrew.config.settings import Settings
from siemcrew.connectors.local.factory import local_connector
from siemcrew.crew.datacheck import check_data


def _settings(tmp_path: Path, scene: Scene) -> Path:
    events = scene.write(tmp_path / "events.ndjson")
    config = tmp_path / "siemcrew.yaml"
    config.write_text(f"home: {tmp_path / 'home'}\nlocal: {{events: ['{events}']}}\n", encoding="utf-8")
    return config


def test_missing_command_lines_and_parents_are_named_with_what_they_cost(tmp_path: Path) -> None:
    scene = Scene()
    for index in range(3):  # Security 4688 without command-line auditing: no CommandLine, no parent name
        event = security_process("WS-1", T0 + timedelta(seconds=index), 0x100 + index, r"C:\Windows\System32\cmd.exe",
                                 "", 0x10, "", "CONTOSO\\dana", "0x5000")
        event.pop("CommandLine")
        event.pop("ParentProcessName")
        scene.events.append(event)
    config = _settings(tmp_path, scene)
    reports = {r.name: r for r in check_data(local_connector(Settings.load(config)), whole=True)}
    creation = reports["process_creation"]
    assert creation.events == 3 and not creation.ok
    missing = {f.field for f in creation.missing}
    assert {"process.command_line", "process.parent.executable"} <= missing
    assert "process.executable" not in missing
    assert "encoded PowerShell" in creation.summary()
    assert reports["logons"].events == 0 and not reports["logons"].ok  # no logons in scope at all: blind
    assert reports["registry"].events == 0 and reports["registry"].ok  # a kind that is only missing warns
    assert "no events in scope" in reports["registry"].summary()

    result = run_cli("doctor", "--config", str(config), "--json")
    assert result.returncode == 1, result.stderr
    rows = {r["check"]: r for r in json.loads(result.stdout)["checks"]}
    assert not rows["data: process_creation"]["ok"]
    assert "MISSING: " in rows["data: process_creation"]["detail"]
    assert "process.command_line" in rows["data: process_creation"]["detail"]
    skipped = run_cli("doctor", "--config", str(config), "--json", "--no-data")
    assert not [r for r in json.loads(skipped.stdout)["checks"] if r["check"].startswith("data")]


def test_the_demo_data_carries_every_field_the_tools_read(demo_settings) -> None:  # noqa: ANN001
    reports = check_data(local_connector(demo_settings), whole=True)
    assert reports and all(r.ok for r in reports), [r.summary() for r in reports if not r.ok]


def test_on_splunk_add_on_data_the_doctor_names_the_missing_fields_by_their_splunk_names(
        monkeypatch, tmp_path: Path) -> None:  # noqa: ANN001
    """A Security 4688 stream without command-line auditing, indexed by the Windows add-on: the doctor
    samples it through the real splunk-sdk and says which add-on fields to turn on."""
    from emulators.splunkd import SplunkdEmulator, connector_settings
    from emulators.splunk_ta import ta_event
    from siemcrew.connectors.splunk.connector import SplunkConnector

    monkeypatch.setenv("SPLUNK_TOKEN", "test-bearer-token")
    events = []
    for index in range(3):
        raw = security_process("WS-1", T0 + timedelta(seconds=index), 0x100 + index, r"C:\Windows\System32\cmd.exe",
                               "whoami", 0x10, r"C:\Windows\explorer.exe", "CONTOSO\\dana", "0x5000")
        raw.pop("CommandLine")
        events.append(ta_event(raw))
    with SplunkdEmulator(events, now=T0.timestamp() + 3600) as emulator:
        connector = SplunkConnector.from_settings(connector_settings(emulator))
        reports = {r.name: r for r in check_data(connector, whole=True)}
    creation = reports["process_creation"]
    assert creation.events == 3 and not creation.ok
    missing = {f.field: f.native for f in creation.missing}
    assert "process.command_line" in missing and "process.executable" not in missing
    assert "CommandLine" in missing["process.command_line"]
    assert "process.command_line=CommandLine" in creation.summary()
    present = {f.field: f for f in creation.fields if f.present}
    assert present["process.parent.executable"].present == 3 and "ParentProcessName" in present["process.parent.executable"].native
    assert present["host.hostname"].native == ["Computer"]
