"""One OTRF recording in Elasticsearch (as the Elastic Agent's Windows and System integrations index
it) and in the local store: the same internal-ECS hunts return the same events, group-bys count the
same, ES|QL agrees with the query DSL, a Sigma rule finds the same events, and Elastic Security
alerts for its labelled rows become alerts on the triggering events with internal-ECS entities.

The recording goes to the emulator through `emulators.winlogbeat` (written from the ingest
pipelines, not from siemcrew's profile) and to the local store as the raw files. `@timestamp` is
not compared: the Sysmon pipeline sets it from the event's UtcTime, the local store keeps the
collector's time (see test_elastic_profile.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from emulators import parity_hunts
from emulators.elastic import elastic_settings
from emulators.local_data import SIGMA, labelled_alerts, recording
from emulators.otrf_elastic import RecordingInElastic, alert_uuid, elastic_with_recording
from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.connectors.elastic import ElasticConnector
from siemcrew.connectors.local.connector import LocalConnector
from siemcrew.crew.models import TimeRange

DATASET = "SDWIN-190518202151_empire_mimikatz_logonpasswords"
WINDOW = TimeRange(start="2020-08-07T00:00:00Z", end="2020-08-08T00:00:00Z")
KEY_FIELDS = ("host.hostname", "host.name", "event.code", "event.action", "event.category", "process.pid",
              "process.entity_id", "process.executable", "process.command_line", "process.parent.pid",
              "process.parent.entity_id", "process.parent.executable", "user.name", "user.domain", "logon.id",
              "logon.type", "source.ip", "destination.ip", "destination.port", "network.direction",
              "target.process.executable", "target.process.entity_id", "registry.path", "file.path",
              "winlog.event_data.GrantedAccess", "winlog.channel")


@pytest.fixture(scope="module")
def local() -> LocalConnector:
    return LocalConnector.open(events=[recording(DATASET)])


@pytest.fixture(scope="module")
def recorded() -> Iterator[RecordingInElastic]:
    with elastic_with_recording(recording(DATASET), labelled_alerts(DATASET)) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def elastic(recorded: RecordingInElastic) -> Iterator[ElasticConnector]:
    with pytest.MonkeyPatch.context() as patch:
        # a whole recording: the emulator answers ES|QL slower than the fault tests' 5 s on a loaded machine
        connector = ElasticConnector(elastic_settings(recorded.emulator, patch, page_size=500, request_timeout=60.0))
        yield connector
        connector.close()


@pytest.fixture(scope="module")
def lsass_access(local: LocalConnector) -> dict[str, Any]:
    return parity_hunts.lsass_access(local, DATASET, WINDOW)


def keys(rows: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return parity_hunts.keys(rows, KEY_FIELDS)


def hunts(event: dict[str, Any]) -> list[list[Filter]]:
    return [*parity_hunts.hunts(event), [Filter(field="user.name", value="pgustavo"), Filter(field="event.code", op="in", value=["4656", "4663", "4688"])]]


def test_hunts_return_the_events_the_local_store_returns(local: LocalConnector, elastic: ElasticConnector,
                                                         lsass_access: dict[str, Any]) -> None:
    for filters in hunts(lsass_access):
        query = EventQuery(filters=filters, time_range=WINDOW, limit=2000)
        here, there = local.search(query), elastic.search(query)
        assert there.total == here.total > 0 or (there.total == here.total == 0 and filters[-1].negate), filters
        assert keys(there.events) == keys(here.events), filters


def test_esql_finds_what_the_query_dsl_finds(elastic: ElasticConnector, lsass_access: dict[str, Any]) -> None:
    for filters in hunts(lsass_access)[2:6]:
        query = EventQuery(filters=filters, time_range=WINDOW, limit=5000)  # ES|QL has no total: nothing cut off
        dsl, esql = elastic.search(query), elastic.search_esql(query)
        assert not dsl.truncated and esql.total == dsl.total > 0, filters
        assert keys(esql.events) == keys(dsl.events), filters
        assert "logon.id" not in esql.query and "host.hostname" not in esql.query  # native fields only


def test_grouped_hunts_count_the_same(local: LocalConnector, elastic: ElasticConnector) -> None:
    for group_by in (["host.hostname"], ["source.ip"], ["user.domain", "user.name"]):
        query = EventQuery(filters=[Filter(field="event.code", op="in", value=["1", "3", "10", "4624", "4688", "5156"])],
                           group_by=group_by, time_range=WINDOW, limit=50)
        here, there = local.search(query), elastic.search(query)
        assert there.total == here.total and sorted(map(str, there.events)) == sorted(map(str, here.events)), group_by


def test_a_sigma_rule_finds_the_same_events(local: LocalConnector, elastic: ElasticConnector) -> None:
    rule = (SIGMA / "rules-threat-hunting/windows/process_access/proc_access_win_lsass_powershell_access.yml").read_text()
    here, there = local.run_sigma(rule, time_range=WINDOW), elastic.run_sigma(rule, time_range=WINDOW)
    assert there.total == here.total > 0
    assert keys(there.events) == keys(here.events)


def test_security_alerts_for_the_labelled_rows_become_alerts_on_the_triggering_events(
        elastic: ElasticConnector, lsass_access: dict[str, Any]) -> None:
    rows = labelled_alerts(DATASET)
    alerts = elastic.fetch_alerts(None, limit=50).alerts
    assert {a.id for a in alerts} == {alert_uuid(r) for r in rows}
    for row in rows:
        alert = next(a for a in alerts if a.id == alert_uuid(row))
        assert alert.rule_name == row["rule_title"] and alert.severity == row["level"]
        assert alert.entities.hosts == [row["host"]]  # the internal short host name, as the local store has it
        assert alert.process is not None and alert.process.executable.lower() == row["sample_image"].lower()
        assert alert.event["event.code"] == row["sample_event"].rsplit("/", 1)[1]
        assert alert.event["winlog.channel"].lower() == row["sample_event"].rsplit("/", 1)[0].lower()
        assert "T1003.001" in alert.techniques
    lsass = next(a for a in alerts if a.rule_name == labelled_alerts(DATASET)[0]["rule_title"])
    assert lsass.process.entity_id == lsass_access["process.entity_id"]  # type: ignore[union-attr]
    assert keys([lsass.event]) == keys([lsass_access])  # the alert's event reads as the local store's event
