"""The reliability matrix: SIEM faults at each stage of a cron `run` (alert fetch, searches, write-back,
case record) against the splunkd emulator, each with its expected outcome — retried (the run ends clean),
surfaced (the run lists what is pending and a later run completes it) or refused — and, for every one, 0
alerts lost and 0 write-backs duplicated. The README's matrix is this table; crash points (kill -9 between
steps) are in test_spine_e2e.py and test_audit.py, poison inputs in test_poison_intake.py and the guard
corpora.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES
from emulators.e2e_helpers import notable, splunk_events
from emulators.splunkd import SplunkdEmulator, connector_settings

from siemcrew.config.settings import Settings
from siemcrew.crew.operations import run
from siemcrew.crew.runtime import Runtime

ATTACK, BENIGN = "demo-2-encoded-powershell", "demo-4-procdump"
NOW = 1795392000.0
IDS = {ATTACK: "0000A1B2-E2E0-4C1A-9D5B-3F2A1C0E9B70@@notable@@0abc",
       BENIGN: "0000A1B3-E2E0-4C1A-9D5B-3F2A1C0E9B71@@notable@@1abc"}


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: what splunkd does wrong, where, and what the run must make of it."""

    stage: str
    kind: str
    count: int
    outcome: str  # "retried": the first run ends clean | "surfaced": listed, completed by the next run
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.stage}: {self.kind} x{self.count} -> {self.outcome}"


MATRIX = [
    Fault("alert fetch", "status", 1, "retried", {"path": "search/v2/jobs", "code": 500}),
    Fault("alert fetch", "drop", 1, "retried", {"path": "search/v2/jobs"}),
    Fault("alert fetch", "expire", 1, "retried"),
    Fault("search", "quota", 3, "retried", {"after": 4}),
    Fault("search", "slow", 3, "retried", {"after": 6, "polls": 4}),
    Fault("search", "drop", 2, "retried", {"path": "/results", "after": 10}),
    Fault("write-back", "status", 1, "retried", {"path": "notable_update", "code": 503}),
    Fault("write-back", "lost_reply", 1, "retried", {"path": "notable_update"}),
    Fault("write-back", "status", 40, "surfaced", {"path": "notable_update", "code": 500}),
    Fault("case record", "hec_busy", 1, "retried"),
    Fault("case record", "hec_busy", 200, "surfaced"),
]


@pytest.fixture
def splunkd(tmp_path: Path) -> Iterator[SplunkdEmulator]:
    with SplunkdEmulator(splunk_events(ATTACK, BENIGN), tls=True, tls_dir=tmp_path / "tls", now=NOW) as emulator:
        emulator.load([], [notable(ATTACK, IDS[ATTACK]), notable(BENIGN, IDS[BENIGN])])
        yield emulator


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"SPLUNK_TOKEN": "test-bearer-token", "SPLUNK_HEC_TOKEN": "test-hec-token",
                       "SPLUNK_PASSWORD": "changeme"}.items():
        monkeypatch.setenv(key, value)


def _runtime(tmp_path: Path, emulator: SplunkdEmulator) -> Runtime:
    splunk = connector_settings(emulator, auth="password", username="admin")
    splunk["hec"]["ca_file"] = str(emulator.tls.ca_file)  # type: ignore[union-attr]
    return Runtime(Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path / "home"), source="splunk",
                                 splunk=splunk, local={"events": [], "alerts": []}))


def _written(emulator: SplunkdEmulator, name: str) -> list[dict[str, Any]]:
    return [u for u in emulator.notable_updates if u["ruleUIDs"] == [IDS[name]]]


@pytest.mark.parametrize("fault", MATRIX, ids=[f.label for f in MATRIX])
def test_every_fault_is_retried_or_surfaced_and_nothing_is_lost_or_done_twice(
        tmp_path: Path, splunkd: SplunkdEmulator, fault: Fault) -> None:
    splunkd.fail_next(fault.kind, fault.count, **fault.options)
    rt = _runtime(tmp_path, splunkd)
    first = run(rt)
    assert first.fetched == 2 and first.failed == 0, first.errors  # nothing lost: both admitted
    assert not [f for f in splunkd.faults if f.remaining and f.kind != "hec_busy" and fault.outcome == "retried"]
    if fault.outcome == "retried":
        assert not first.incomplete, (first.writeback_pending, first.rejected_inputs)
    else:
        assert first.writeback_pending and first.incomplete  # surfaced: run exits 4, naming what is pending
        for pending in splunkd.faults:
            pending.remaining = 0  # splunkd recovers
        second = run(rt)
        assert second.fetched == 0 and not second.incomplete, second.writeback_pending
    # every notable carries its verdict, each write-back landed once (a retry never writes twice)
    for name in (ATTACK, BENIGN):
        updates = _written(splunkd, name)
        assert updates and len({u["comment"] for u in updates}) == len(updates), updates
        state = splunkd.review[IDS[name]]
        assert state["status"] == ("5" if name == BENIGN else "2")
    cases = rt.cases.list()
    assert sorted(c.alert.id for c in cases) == sorted(IDS.values())
    assert not rt.outbox.pending()
