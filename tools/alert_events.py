"""The alert's own events: the first evidence of every case, and where its causal chain starts."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, Field

from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.connectors.slots import CRITICAL
from siemcrew.crew.context import InvestigationContext
from siemcrew.crew.indicators import short_host
from siemcrew.crew.models import Alert, Evidence, TimeRange
from siemcrew.tools.base import EvidenceTool, Search, rank_by_malice, record_searches, scoped


def host_filter(host: str) -> Filter:
    return Filter(field="host.hostname", value=short_host(host))


class AlertEventsTool(EvidenceTool):
    name: str = "alert_events"
    description: str = "Fetch the events that triggered the alert (its host, time span, event code and process)."

    class Args(BaseModel):
        alert_id: str = Field(description="the alert id")

    args_schema: type[BaseModel] = Args

    def investigate(self, alert_id: str) -> tuple[list[Evidence], str]:
        alert = next((a for a in self.ctx.case.alerts if a.id == alert_id), self.ctx.alert)
        item, _ = record_searches(self.ctx, [alert_events_search(self.ctx, alert)])[0]
        return [item], ""


def alert_events_search(ctx: InvestigationContext, alert: Alert) -> Search:
    """The alert's own events only: the same host and event code within the alert's time span,
    and the alert's process when it names one — not whatever else the host did meanwhile."""
    host = alert.primary_host
    first = alert.first_seen or alert.timestamp
    last = alert.last_seen or alert.timestamp
    window = TimeRange(start=first - timedelta(seconds=2), end=last + timedelta(seconds=2))
    query = scoped(ctx, EventQuery(time_range=window, limit=5000))
    if host:
        query.filters.append(host_filter(host))
    if alert.event.get("event.code"):
        query.filters.append(Filter(field="event.code", value=str(alert.event["event.code"])))
    proc = alert.process
    # The process narrows the search only when the triggering event is that process's own: a service
    # install (7045) or a logon names the service's or session's process nowhere in its fields.
    event = alert.event
    if event.get("event.code") and not any(event.get(f) for f in ("process.entity_id", "process.pid",
                                                                    "process.executable")):
        proc = None
    if proc and proc.entity_id:
        query.filters.append(Filter(field="process.entity_id", value=proc.entity_id))
    elif proc and proc.executable:
        query.filters.append(Filter(field="process.executable", value=proc.executable))
    return Search(tool=AlertEventsTool.model_fields["name"].default, kind="alert_events", entity_type="host",
                  entity=host, run=lambda: ctx.runtime.siem.search(query), time_range=window, rank=rank_by_malice,
                  priority=CRITICAL)
