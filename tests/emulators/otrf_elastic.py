"""OTRF recordings in the Elasticsearch emulator, the way a customer's Elastic Agent indexes them.

`load_recording` turns every raw event of a recording into its Winlogbeat / Agent document
(`winlogbeat.py`) in its data stream (`logs-windows.sysmon_operational-default`, ...), with the
integrations' mappings, on the hosts' Windows clocks (`clock_errors`: some exports' time stamps are
hours off the clock Sysmon's own UtcTime shows, which the Sysmon pipeline makes `@timestamp`). `elastic_with_recording` starts the Elasticsearch + Kibana emulator with a
recording and one Elastic Security detection alert per labelled row (the triggering event's
document copied as the detection engine copies it, the rule's ATT&CK mapping from the row's
`attack_tags` unless `with_threat=False`): what the evaluation needs to run siemcrew against
Elastic on the same data as the local store.
"""

from __future__ import annotations

import hashlib
import statistics
import uuid as uuidlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulators.elastic import ElasticEmulator
from emulators.elastic_security import Rule, detection_alert, threat_from_tags
from emulators.winlogbeat import _moment, _timestamp, index_mappings, winlogbeat_document

from siemcrew.connectors.local.loader import iter_units

IMAGE_FIELDS = ("Image", "SourceImage", "NewProcessName", "ProcessName", "Application", "CallerProcessName")


def _span_s(row: Mapping[str, str]) -> float | None:
    """A labelled alert over several events is, in Elastic Security, one alert whose rule suppresses
    per host: how long after its first event its last one came."""
    first, last = _moment(row.get("first", "")), _moment(row.get("last", ""))
    return (last - first).total_seconds() if first and last and last > first else None


@dataclass
class IndexedEvent:
    """One raw event and the document it became."""

    raw: dict[str, Any]
    stream: str
    doc_id: str
    doc: dict[str, Any]


@dataclass
class RecordingInElastic:
    emulator: ElasticEmulator
    events: list[IndexedEvent]
    alerts: list[tuple[Mapping[str, str], dict[str, Any]]] = field(default_factory=list)  # (row, alert document)

    @property
    def streams(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for event in self.events:
            counts[event.stream] = counts.get(event.stream, 0) + 1
        return counts


def clock_errors(raws: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Per host (short, lower-case name): seconds to add to the export's time stamps to get the Windows clock.

    Sysmon writes its own UtcTime and the Sysmon pipeline makes it the document's `@timestamp`;
    every other record's `@timestamp` is its SystemTime, which an export carries as TimeCreated or
    @timestamp. On a live host both come from the same clock. Some OTRF exports are off that clock
    (by hours: a time zone applied twice; or by the collector's minute of delay), which would put a
    host's Sysmon events hours away from its Security events in Elasticsearch, though not in the
    local store (which keeps the export's times for all). The median of UtcTime - export time over a
    host's Sysmon events restores the clock for its other records; hosts without Sysmon take the
    recording's median. Computed from the data, never from names.
    """
    per_host: dict[str, list[float]] = {}
    for raw in raws:
        if not str(raw.get("Channel", "")).lower().startswith("microsoft-windows-sysmon"):
            continue
        utc, exported = _moment(raw.get("UtcTime")), _moment(raw.get("TimeCreated") or raw.get("@timestamp"))
        if utc is not None and exported is not None:
            per_host.setdefault(_short(raw.get("Hostname")), []).append((utc - exported).total_seconds())
    errors = {host: statistics.median(values) for host, values in per_host.items()}
    errors[""] = statistics.median([v for values in per_host.values() for v in values]) if per_host else 0.0
    return errors


def recording_events(folder: Path) -> list[IndexedEvent]:
    """Every Windows event of a recording folder (zip / NDJSON), as Agent documents (id = sha1 of the line),
    on the hosts' Windows clocks (`clock_errors`)."""
    raws = [
        (event_id, raw) for unit in iter_units(Path(folder)) for event_id, raw in unit.objects
        if isinstance(raw, dict) and raw.get("EventID") is not None and raw.get("Channel")
    ]
    errors = clock_errors(raw for _, raw in raws)
    out: list[IndexedEvent] = []
    for event_id, raw in raws:
        stream, doc = winlogbeat_document(raw, clock_error_s=errors.get(_short(raw.get("Hostname")), errors[""]))
        if doc.get("@timestamp"):
            out.append(IndexedEvent(raw, stream, event_id, doc))
    return out


def load_recording(emulator: ElasticEmulator, folder: Path) -> list[IndexedEvent]:
    events = recording_events(folder)
    by_stream: dict[str, list[IndexedEvent]] = {}
    for event in events:
        by_stream.setdefault(event.stream, []).append(event)
    for stream, items in by_stream.items():
        emulator.index(stream, [e.doc for e in items], ids=[e.doc_id for e in items], mappings=index_mappings())
    return events


def _short(host: Any) -> str:
    return str(host or "").split(".", 1)[0].lower()


def trigger_event(events: Iterable[IndexedEvent], row: Mapping[str, str]) -> IndexedEvent:
    """The event a labelled row's alert fired on: its host, channel/event id and first time (and image)."""
    channel, _, event_id = str(row["sample_event"]).rpartition("/")
    first = _timestamp(row["first"])
    candidates = [
        e for e in events
        if _short(e.raw.get("Hostname")) == _short(row["host"]) and str(e.raw.get("Channel", "")).lower() == channel.lower()
        and str(e.raw.get("EventID")) == event_id and _timestamp(e.raw.get("@timestamp") or e.raw.get("TimeCreated")) == first
    ]
    image = str(row.get("sample_image") or "").lower()
    matching = [e for e in candidates if image and any(str(e.raw.get(f, "")).lower() == image for f in IMAGE_FIELDS)]
    chosen = matching or candidates
    if not chosen:
        raise LookupError(f"no {row['sample_event']} event on {row['host']} at {row['first']} for {row['rule_title']!r}")
    return chosen[0]


def rule_of(row: Mapping[str, str], with_threat: bool = True) -> Rule:
    tags = str(row.get("attack_tags") or "").replace(";", " ").replace(",", " ").split()
    rule_id = str(row.get("rule_id") or row["rule_title"])
    return Rule(
        name=row["rule_title"], rule_id=rule_id, uuid=str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, rule_id)),
        severity=str(row.get("level") or "medium"), risk_score={"low": 21, "medium": 47, "high": 73, "critical": 99}.get(
            str(row.get("level") or "medium"), 47),
        tags=tags, threat=threat_from_tags(tags) if with_threat else [],
    )


def alert_uuid(row: Mapping[str, str]) -> str:
    key = "|".join(str(row.get(k, "")) for k in ("dataset", "rule_id", "rule_title", "host", "first"))
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@contextmanager
def elastic_with_recording(
    folder: Path, rows: Iterable[Mapping[str, str]], with_threat: bool = True, **emulator_options: Any,
) -> Iterator[RecordingInElastic]:
    """A running ES + Kibana emulator holding `folder`'s events and one detection alert per row.

    `rows` are labelled alert rows (dataset, rule_title, rule_id, level, attack_tags, host, first,
    last, sample_event, sample_image). `emulator_options` go to `ElasticEmulator` (tls, cert_dir, ...).
    """
    with ElasticEmulator(**emulator_options) as emulator:
        events = load_recording(emulator, folder)
        loaded = RecordingInElastic(emulator, events)
        docs = []
        for row in rows:
            trigger = trigger_event(events, row)
            alert = detection_alert(trigger.doc, trigger.stream, trigger.doc_id, alert_uuid(row), rule_of(row, with_threat),
                                    suppressed_for_s=_span_s(row))
            loaded.alerts.append((row, alert))
            docs.append(alert)
        if docs:
            emulator.add_alerts(docs)
        yield loaded
