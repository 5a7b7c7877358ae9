"""The small protocols every connector implements, and the value types they exchange.

A hunt is written once as an `EventQuery` over ECS field names and translated per dialect
(SQL for the local store, SPL, query DSL / ES|QL). Events travel as flat dicts keyed by dotted
ECS names (`host.name`, `process.command_line`, ...).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from siemcrew.crew.models import Alert, Case, TimeRange

FilterOp = Literal["eq", "in", "contains", "startswith", "endswith", "exists", "gte", "lte"]


class ConnectorError(RuntimeError):
    """A connector failed in a way the caller should report (not a programming error)."""


class QueryRefused(ConnectorError):
    """The read-only guard refused a query (it writes, sends, runs scripts or calls REST)."""


class Filter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str
    op: FilterOp = "eq"
    value: Any = None
    negate: bool = False

    def values(self) -> list[Any]:
        return list(self.value) if isinstance(self.value, (list, tuple, set)) else [self.value]


class EventQuery(BaseModel):
    """A dialect-neutral hunt: AND of `filters`, AND of OR-groups in `any_of`.

    String comparisons are case-insensitive in every dialect, as Sigma's are.
    With `group_by`, the result is one row per distinct combination with a `count`.
    """

    model_config = ConfigDict(extra="forbid")

    time_range: TimeRange | None = None
    filters: list[Filter] = Field(default_factory=list)
    any_of: list[list[Filter]] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    group_by: list[str] = Field(default_factory=list)
    limit: int = 200
    order: Literal["asc", "desc"] = "asc"
    scope: str | None = None

    def where(self, field: str, value: Any, op: FilterOp = "eq", negate: bool = False) -> "EventQuery":
        self.filters.append(Filter(field=field, op=op, value=value, negate=negate))
        return self


class SearchResult(BaseModel):
    """What a search returned: the exact query text sent, how many matched, and a page of rows."""

    model_config = ConfigDict(extra="forbid")

    connector: str
    language: str
    query: str
    total: int
    events: list[dict[str, Any]] = Field(default_factory=list)
    truncated: bool = False


class AlertBatch(BaseModel):
    alerts: list[Alert]
    checkpoint: str | None = None
    problems: list[str] = Field(default_factory=list)
    """Inputs that could not be read as alerts (a file that is not JSON, a row without the fields an alert
    needs): `run` lists them and exits 4, they are never skipped in silence."""


class AlertUpdate(BaseModel):
    """A verdict written back to the source: workflow status plus a human-readable comment."""

    status: Literal["in_progress", "acknowledged", "closed", "escalated"]
    retry: bool = False
    """A retry of a write-back that failed before (crew/outbox.py): where the earlier write may have landed
    with its answer lost, the connector reads back first and does not write it twice."""
    verdict: str
    comment: str
    summary: str = ""
    report_link: str | None = None
    urgency: str | None = None
    owner: str | None = None


class HealthReport(BaseModel):
    connector: str
    ok: bool
    detail: str = ""
    version: str | None = None


@runtime_checkable
class SiemConnector(Protocol):
    name: str
    language: str

    def fetch_alerts(self, checkpoint: str | None, limit: int = 100) -> AlertBatch: ...

    def search(self, query: EventQuery) -> SearchResult: ...

    def run_native(self, query: str, time_range: TimeRange | None = None, limit: int = 200) -> SearchResult: ...

    def run_sigma(self, rule_yaml: str, time_range: TimeRange | None = None, limit: int = 200) -> SearchResult: ...

    def update_alert(self, alert: Alert, update: AlertUpdate) -> None: ...

    def publish_case(self, case: Case) -> None: ...

    def health(self) -> HealthReport: ...


class HostRef(BaseModel):
    vendor: str
    id: str
    hostname: str | None = None
    ip: str | None = None


class HostContext(BaseModel):
    host: HostRef
    online: bool | None = None
    os: str | None = None
    last_seen: datetime | None = None
    containment: Literal["normal", "pending", "contained", "release_pending", "unknown"] = "unknown"
    logged_on_users: list[str] = Field(default_factory=list)
    detections: int = 0
    detail: dict[str, Any] = Field(default_factory=dict)


class ActionTicket(BaseModel):
    """A vendor action in flight; done only when the vendor says so."""

    vendor: str
    action: Literal["contain", "release", "kill_process"]
    host_id: str
    ticket_id: str
    state: Literal["pending", "done", "failed", "timed_out"] = "pending"
    detail: str = ""


@runtime_checkable
class EdrConnector(Protocol):
    name: str

    def find_host(self, name: str | None = None, ip: str | None = None, agent_id: str | None = None) -> HostRef | None: ...

    def host_context(self, host: HostRef) -> HostContext: ...

    def process_events(self, host: HostRef, time_range: TimeRange, pid: int | None = None) -> list[dict[str, Any]]: ...

    def detections(self, host: HostRef, time_range: TimeRange) -> list[dict[str, Any]]: ...

    def contain(self, host: HostRef, comment: str) -> ActionTicket: ...

    def release(self, host: HostRef, comment: str) -> ActionTicket: ...

    def kill_process(self, host: HostRef, pid: int, comment: str) -> ActionTicket: ...

    def action_status(self, ticket: ActionTicket) -> ActionTicket: ...

    def health(self) -> HealthReport: ...


@runtime_checkable
class ActionLookup(Protocol):
    """The optional capability of EDRs that keep a list of the actions sent to them (Defender's machine actions,
    Elastic Defend's response actions, Falcon RTR sessions): find the action siemcrew sent under `marker`.

    Why: a send whose reply was lost may still have run. Finding the vendor's own record of it, by the marker
    siemcrew wrote into the action's comment (or RTR session origin), gives its real ticket and final state; a
    host snapshot only says what the host looks like, not whose action made it so. Returns None when no action
    of this kind on this host carries the marker; raises `ActionNotSupported` for an action the vendor keeps no
    list of (such actions stay confirmed by host state), `ConnectorError` when the list cannot be read.
    """

    def find_action(self, host: HostRef, action: str, marker: str, since: datetime | None = None
                    ) -> ActionTicket | None: ...
