"""Does the SIEM's data carry what the investigation reads? `siemcrew doctor` samples the configured
event scope once per evidence kind (`config/data_checks.yaml`) through the connector, exactly as the
tools search it, and reports which fields are present, in how many events, under which native name,
and what investigations will miss without them. A connection that works on data it cannot read is
the failure this catches: every search answers, and nothing is found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from siemcrew.config.settings import CONFIG_DIR, load_yaml
from siemcrew.connectors.base import ConnectorError, EventQuery, Filter
from siemcrew.crew.models import TimeRange
from siemcrew.crew.timeutil import utcnow

SAMPLE = 200


@dataclass
class FieldReport:
    field: str
    present: int
    native: list[str]
    missing_means: str


@dataclass
class ProbeReport:
    name: str
    what: str
    events: int
    fields: list[FieldReport] = field(default_factory=list)
    error: str | None = None
    essential: bool = False  # no events of this kind at all means the investigation is blind

    @property
    def missing(self) -> list[FieldReport]:
        return [f for f in self.fields if self.events and f.present == 0]

    @property
    def ok(self) -> bool:
        if self.error is not None or self.missing:
            return False
        return self.events > 0 or not self.essential

    def summary(self) -> str:
        if self.error:
            return f"{self.what}: search failed: {self.error}"
        if not self.events:
            return f"{self.what}: no events in scope — investigations will not see this kind of activity"
        parts = [f"{f.field}{'=' + '/'.join(f.native[:2]) if f.native else ''} {f.present}/{self.events}"
                 for f in self.fields]
        text = f"{self.events} event(s); " + ", ".join(parts)
        if self.missing:
            text += " | MISSING: " + "; ".join(f"{f.field} ({f.missing_means})" for f in self.missing)
        return text


def probes() -> dict[str, dict[str, Any]]:
    return (load_yaml(CONFIG_DIR / "data_checks.yaml") or {}).get("probes") or {}


def check_data(connector: Any, days: int = 7, whole: bool = False) -> list[ProbeReport]:
    """One sample per evidence kind over the last `days` of the connector's scope (or all of it)."""
    window = None if whole else TimeRange(start=utcnow() - timedelta(days=days), end=utcnow())
    native = getattr(connector, "native_fields", None)
    reports: list[ProbeReport] = []
    for name, spec in probes().items():
        filters = [Filter(field=f, op="in", value=[str(v) for v in values]) for f, values in (spec.get("where") or {}).items()]
        query = EventQuery(filters=filters, time_range=window, limit=SAMPLE, order="desc")
        report = ProbeReport(name=name, what=str(spec.get("what", name)), events=0, essential=bool(spec.get("essential")))
        try:
            rows = connector.search(query).events
        except ConnectorError as exc:
            report.error = str(exc)[:300]
            reports.append(report)
            continue
        report.events = len(rows)
        for ecs, means in (spec.get("fields") or {}).items():
            present = sum(1 for row in rows if row.get(ecs) not in (None, "", []))
            report.fields.append(FieldReport(field=ecs, present=present, native=list(native(ecs)) if native else [],
                                             missing_means=str(means)))
        reports.append(report)
    if reports and not any(r.events for r in reports):  # nothing of any kind: the scope or the mapping is wrong
        for report in reports:
            report.essential = True
    return reports
