"""Shared test data for the local store tests: paths into ../shared and small event builders."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

SHARED = Path(__file__).resolve().parents[3] / "shared"
OTRF = SHARED / "datasets" / "otrf"
OTRF_DEV = OTRF / "dev"
DATASETS = (OTRF, SHARED / "datasets" / "otrf-dev2")  # the labelled sets `make eval` scores
SIGMA = SHARED / "datasets" / "detection-content" / "sigma"
FIELD_EXAMPLES = OTRF / "field_examples.json"
LABELLED_ALERTS = OTRF / "alerts_dev_labelled.csv"


def recording(name: str) -> Path:
    """The folder of one OTRF dev recording."""
    path = OTRF_DEV / name
    assert path.is_dir(), f"missing dataset {path}: ../shared must sit beside the checkout"
    return path


def field_examples() -> dict[str, dict[str, Any]]:
    return json.loads(FIELD_EXAMPLES.read_text(encoding="utf-8"))


def labelled_alerts(dataset: str) -> list[dict[str, str]]:
    with LABELLED_ALERTS.open(encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row["dataset"] == dataset]


def sysmon_process(
    when: str,
    command_line: str,
    host: str = "WORKSTATION5.theshire.local",
    image: str = "C:\\Windows\\System32\\cmd.exe",
    user: str = "THESHIRE\\pgustavo",
    pid: int = 4242,
    **extra: Any,
) -> dict[str, Any]:
    """A raw Sysmon EID 1 event as NXLog writes it (flat keys, string PIDs)."""
    event = {
        "@timestamp": when,
        "EventID": 1,
        "Channel": "Microsoft-Windows-Sysmon/Operational",
        "Hostname": host,
        "SourceName": "Microsoft-Windows-Sysmon",
        "Image": image,
        "CommandLine": command_line,
        "User": user,
        "ProcessId": str(pid),
        "ProcessGuid": "{00000000-0000-0000-0000-%012d}" % pid,
        "ParentImage": "C:\\Windows\\explorer.exe",
        "ParentProcessId": "1000",
        "AccountName": "SYSTEM",
        "Domain": "NT AUTHORITY",
    }
    event.update(extra)
    return event


def write_ndjson(path: Path, events: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(event) + "\n" for event in events), encoding="utf-8")
    return path
