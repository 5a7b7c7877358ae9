"""One OTRF recording in Splunk (as the Windows add-ons index it) and in the local store: the same hunts
return the same events, the same Sigma rule the same hits, and ES notables for its labelled alerts
become the alerts the local evaluation builds from the same events.

The recording goes to the emulator through `emulators.splunk_ta` (written from the add-ons'
definitions) and to the local store as the raw files. Fields the collector (NXLog) added to what
Windows logged are not compared: an add-on event does not have them (see test_splunk_profile.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from emulators import parity_hunts
from emulators.local_data import SIGMA, labelled_alerts, recording
from emulators.splunk_ta import notable_id, recording_splunkd
from emulators.splunkd import SplunkdEmulator, connector_settings
from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.connectors.local.connector import LocalConnector
from siemcrew.connectors.splunk.connector import SplunkConnector
from siemcrew.crew.models import TimeRange

DATASET = "SDWIN-190518202151_empire_mimikatz_logonpasswords"
WINDOW = TimeRange(start="2020-08-07T00:00:00Z", end="2020-08-08T00:00:00Z")
KEY_FIELDS = ("@timestamp", "host.hostname", "event.code", "event.action", "process.pid", "process.entity_id",
              "process.executable", "process.command_line", "process.parent.pid", "process.parent.entity_id",
              "process.parent.executable", "logon.id", "logon.type", "source.ip", "destination.ip",
              "destination.port", "network.direction", "target.process.executable", "registry.path",
              "winlog.event_data.GrantedAccess")


@pytest.fixture(scope="module")
def local() -> LocalConnector:
    return LocalConnector.open(events=[recording(DATASET)])


@pytest.fixture(scope="module")
def splunkd() -> Iterator[SplunkdEmulator]:
    with recording_splunkd(recording(DATASET), labelled_alerts(DATASET)) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def splunk(splunkd: SplunkdEmulator) -> Iterator[SplunkConnector]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPLUNK_TOKEN", "test-bearer-token")
        yield SplunkConnector.from_settings(connector_settings(splunkd, alerts={"initial_lookback": "0"}))


@pytest.fixture(scope="module")
def lsass_access(local: LocalConnector) -> dict[str, Any]:
    return parity_hunts.lsass_access(local, DATASET, WINDOW)


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return parity_hunts.keys(rows, KEY_FIELDS)


hunts = parity_hunts.hunts


def test_hunts_return_the_events_the_local_store_returns(local: LocalConnector, splunk: SplunkConnector,
                                                         lsass_access: dict[str, Any]) -> None:
    for filters in hunts(lsass_access):
        query = EventQuery(filters=filters, time_range=WINDOW, limit=2000)
        here, there = local.search(query), splunk.search(query)
        assert there.total == here.total > 0 or (there.total == here.total == 0 and filters[-1].negate), filters
        assert keys(there.events) == keys(here.events), filters


def test_grouped_hunts_count_the_same(local: LocalConnector, splunk: SplunkConnector) -> None:
    for group_by in (["host.hostname"], ["source.ip"], ["process.executable"]):
        query = EventQuery(filters=[Filter(field="event.code", op="in", value=["1", "3", "4688", "5156"])],
                           group_by=group_by, time_range=WINDOW, limit=50)
        here, there = local.search(query), splunk.search(query)
        assert there.total == here.total and sorted(map(str, there.events)) == sorted(map(str, here.events)), group_by


def test_a_sigma_rule_finds_the_same_events(local: LocalConnector, splunk: SplunkConnector) -> None:
    rule = (SIGMA / "rules-threat-hunting/windows/process_access/proc_access_win_lsass_powershell_access.yml").read_text()
    here, there = local.run_sigma(rule, time_range=WINDOW), splunk.run_sigma(rule, time_range=WINDOW)
    assert there.total == here.total > 0
    assert keys(there.events) == keys(here.events)


def test_es_notables_for_the_labelled_alerts_become_alerts_on_the_triggering_events(
        splunk: SplunkConnector, lsass_access: dict[str, Any]) -> None:
    rows = labelled_alerts(DATASET)
    alerts = splunk.fetch_alerts(None, limit=50).alerts
    expected_ids = {notable_id(r["dataset"], r["rule_id"], r["host"], r["first"]) for r in rows}
    assert {a.id for a in alerts} == expected_ids
    for row in rows:
        alert = next(a for a in alerts if a.id == notable_id(row["dataset"], row["rule_id"], row["host"], row["first"]))
        assert alert.rule_name == row["rule_title"] and alert.severity == row["level"]
        assert alert.first_seen is not None and alert.first_seen.isoformat().startswith(row["first"][:19])
        assert alert.entities.hosts == [row["host"]]
        assert alert.process is not None and alert.process.executable.lower() == row["sample_image"].lower()
        assert alert.event["event.code"] == row["sample_event"].rsplit("/", 1)[1]
        assert "T1003.001" in alert.techniques
    lsass = next(a for a in alerts if a.rule_name == rows[0]["rule_title"])
    assert lsass.process.entity_id == lsass_access["process.entity_id"]  # type: ignore[union-attr]
