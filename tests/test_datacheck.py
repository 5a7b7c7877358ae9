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
