"""The hunts both SIEM parity tests run on one OTRF recording, and how their rows are compared with
the local store's (tests/test_splunk_parity.py, tests/test_elastic_parity.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from emulators.local_data import labelled_alerts
from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.crew.models import TimeRange


def keys(rows: list[dict[str, Any]], fields: Sequence[str]) -> list[tuple[str, ...]]:
    return sorted(tuple(str(row.get(f)) for f in fields) for row in rows)


def lsass_access(local: Any, dataset: str, window: TimeRange) -> dict[str, Any]:
    """The labelled attack event: PowerShell opening LSASS (Sysmon 10), read from the local store."""
    row = labelled_alerts(dataset)[0]
    found = local.search(EventQuery(filters=[Filter(field="host.hostname", value=row["host"]),
                                             Filter(field="event.code", value="10"),
                                             Filter(field="target.process.executable", op="endswith", value="\\lsass.exe"),
                                             Filter(field="process.executable", value=row["sample_image"])],
                                    time_range=window, limit=10))
    assert found.total >= 1
    return found.events[0]


def hunts(event: dict[str, Any]) -> list[list[Filter]]:
    """What the tools ask around an alert: the host's events of a kind, the process, its session, its children."""
    host = Filter(field="host.hostname", value=event["host.hostname"])
    return [
        [host, Filter(field="event.code", value="4688")],
        [host, Filter(field="event.code", op="in", value=["1", "10", "4656"])],
        [Filter(field="process.entity_id", value=event["process.entity_id"])],
        [Filter(field="process.pid", value=event["process.pid"]), host],
        [Filter(field="process.parent.pid", value=event["process.pid"]), host],
        [Filter(field="logon.id", value="0x2ba622")],
        [host, Filter(field="network.direction", value="outbound")],
        [host, Filter(field="event.code", value="4624"), Filter(field="logon.type", value="3", negate=True)],
    ]
