"""SentinelOne: `ApiToken` header, cursor-paged agents and threats, disconnect/connect, Deep Visibility.

Network quarantine has no action id: `agents/actions/disconnect` answers `{"data":{"affected":n}}`
and the agent's `networkStatus` moves connected → disconnecting → disconnected, so the ticket is
confirmed by re-reading the agent. The disconnect/connect API has no comment field: the approval
comment stays on siemcrew's own record (the ticket says so). There is no kill-by-pid API (S1
mitigates threats, not processes), so `kill_process` raises `ActionNotSupported`. There is no `find_action`
either: without a comment field no request can carry siemcrew's marker, so a lost reply is reconciled by the
agent's networkStatus alone (and a host already disconnected cannot be told apart from someone else's work).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from siemcrew.config.edr import SentinelOneSettings, required_secret
from siemcrew.connectors.base import ActionTicket, ConnectorError, HealthReport, HostContext, HostRef
from siemcrew.connectors.edr.auth import HeaderToken
from siemcrew.connectors.edr.common import (
    MAX_EVENTS,
    Containment,
    EdrBase,
    name_candidates,
    newest,
    safe_identifier,
    safe_ip,
    state_ticket,
)
from siemcrew.connectors.edr.http import ActionNotSupported, EdrApiError, EdrHttp, HttpOptions
from siemcrew.connectors.edr.mapping import involves_pid, map_records, within
from siemcrew.crew.models import TimeRange
from siemcrew.crew.timeutil import iso, parse_time

_CONTAINMENT: dict[str, Containment] = {
    "connected": "normal",
    "disconnecting": "pending",
    "disconnected": "contained",
    "connecting": "release_pending",
}
_DV_FAILED = {"FAILED", "ERROR", "QUERY_CANCELLED", "TIMED_OUT", "QUERY_EXPIRED"}


def sentinelone_error(body: Any) -> str | None:
    """`{"errors":[{"code":4010010,"detail":null,"title":"Authentication Failed"}]}` → title: detail."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors and isinstance(errors, list):
        first = errors[0]
        detail = f": {first['detail']}" if first.get("detail") else ""
        return f"{first.get('title')}{detail} (code {first.get('code')})"
    return None


class SentinelOneEdr(EdrBase):
    name = "sentinelone"

    def __init__(self, settings: SentinelOneSettings, options: HttpOptions | None = None) -> None:
        options = options or HttpOptions.from_section(settings)
        auth = HeaderToken(
            "Authorization",
            lambda: "ApiToken " + required_secret(self.name, settings.token_env, settings.token_file, "API token"),
        )
        super().__init__(
            EdrHttp(
                self.name,
                settings.api_base,
                auth,
                sentinelone_error,
                options,
                rate_limit_per_minute=settings.rate_limit_per_minute,
            )
        )
        self.settings = settings
        self.options = options

    # -- paging -----------------------------------------------------------------------------
    def paged(self, path: str, params: dict[str, Any], limit: int = MAX_EVENTS) -> Iterator[dict[str, Any]]:
        """Rows across `nextCursor` pages, at most `limit`."""
        cursor: str | None = None
        seen = 0
        while True:
            query = {**params, "limit": self.settings.page_size, **({"cursor": cursor} if cursor else {})}
            body = self.http.get(path, query)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise EdrApiError(self.name, f"malformed response from {path}: no data list")
            for row in data:
                if isinstance(row, dict):
                    yield row
                    seen += 1
                    if seen >= limit:
                        return
            cursor = ((body.get("pagination") or {}).get("nextCursor")) if isinstance(body, dict) else None
            if not cursor or not data:
                return

    def agents(self, **filters: Any) -> list[dict[str, Any]]:
        return list(self.paged("/agents", filters))

    # -- hosts ------------------------------------------------------------------------------
    def find_host(self, name: str | None = None, ip: str | None = None, agent_id: str | None = None) -> HostRef | None:
        queries: list[dict[str, str]] = []
        if agent_id:
            queries = [{"ids": safe_identifier(agent_id, "agent id")}]
        elif name:
            queries = [{"computerName": safe_identifier(c, "host name")} for c in name_candidates(name)]
        elif ip:
            queries = [{"networkInterfaceInet__contains": safe_ip(ip)}]
        for query in queries:
            found = self.agents(**query)
            if found:
                return self._ref(newest(found, "lastActiveDate"))
        return None

    def host_context(self, host: HostRef) -> HostContext:
        agent = self._agent(host.id)
        status = str(agent.get("networkStatus") or "")
        user = agent.get("lastLoggedInUserName")
        return HostContext(
            host=self._ref(agent),
            online=agent.get("isActive"),
            os=" ".join(str(x) for x in (agent.get("osName"), agent.get("osRevision")) if x) or None,
            last_seen=parse_time(agent.get("lastActiveDate")),
            containment=_CONTAINMENT.get(status, "unknown"),
            logged_on_users=[user] if user else [],
            detections=int(agent.get("activeThreats") or 0),
            detail={"networkStatus": status, "infected": agent.get("infected"), "siteName": agent.get("siteName")},
        )

    # -- threats and Deep Visibility --------------------------------------------------------
    def detections(self, host: HostRef, time_range: TimeRange) -> list[dict[str, Any]]:
        params = {
            "agentIds": safe_identifier(host.id, "agent id"),
            "createdAt__gte": iso(time_range.start),
            "createdAt__lte": iso(time_range.end),
        }
        events = map_records(self.name, "detection", list(self.paged("/threats", params)))
        return [e for e in events if within(e, time_range)]

    def process_events(self, host: HostRef, time_range: TimeRange, pid: int | None = None) -> list[dict[str, Any]]:
        """Deep Visibility: init-query, poll query-status until FINISHED, then page through events."""
        name = host.hostname or self._agent(host.id).get("computerName")
        query = f'AgentName = "{safe_identifier(name, "host name")}" AND EventType = "Process Creation"'
        started = self.http.post(
            "/dv/init-query",
            {
                "query": query,
                "fromDate": iso(time_range.start),
                "toDate": iso(time_range.end),
                "limit": MAX_EVENTS,
                "queryType": ["events"],
            },
            idempotent=True,  # a query reads; starting it twice costs only quota
        )
        query_id = (started.get("data") or {}).get("queryId") if isinstance(started, dict) else None
        if not query_id:
            raise EdrApiError(self.name, "Deep Visibility returned no queryId")
        self._wait_for_query(str(query_id))
        events = map_records(self.name, "process", list(self.paged("/dv/events", {"queryId": query_id})))
        return [e for e in events if within(e, time_range) and involves_pid(e, pid)]

    def _wait_for_query(self, query_id: str) -> None:
        deadline = self.options.clock() + self.settings.dv_timeout_s
        while True:
            body = self.http.get("/dv/query-status", {"queryId": query_id})
            state = str(((body or {}).get("data") or {}).get("responseState") or "")
            if state == "FINISHED":
                return
            if state in _DV_FAILED:
                raise ConnectorError(f"{self.name}: Deep Visibility query {state}")
            if self.options.clock() >= deadline:
                waited = f"{self.settings.dv_timeout_s:g}s"
                raise ConnectorError(f"{self.name}: Deep Visibility query still {state or 'unknown'} after {waited}")
            self.options.sleep(1.0)

    # -- actions ----------------------------------------------------------------------------
    def contain(self, host: HostRef, comment: str) -> ActionTicket:
        return self._network_action("contain", "disconnect", host)

    def release(self, host: HostRef, comment: str) -> ActionTicket:
        return self._network_action("release", "connect", host)

    def _network_action(self, action: str, verb: str, host: HostRef) -> ActionTicket:
        agent_id = safe_identifier(host.id, "agent id")
        body = self.http.post(f"/agents/actions/{verb}", {"filter": {"ids": [agent_id]}})
        affected = ((body or {}).get("data") or {}).get("affected") if isinstance(body, dict) else None
        if affected != 1:
            raise EdrApiError(self.name, f"{verb} affected {affected!r} agents, expected 1")
        ticket = state_ticket(self.name, action, host)  # type: ignore[arg-type]
        return ticket.model_copy(
            update={"detail": ticket.detail + " (SentinelOne has no comment field for this action)"}
        )

    def kill_process(self, host: HostRef, pid: int, comment: str) -> ActionTicket:
        raise ActionNotSupported("sentinelone: SentinelOne has no kill-by-pid API (threat mitigation only)")

    def action_status(self, ticket: ActionTicket) -> ActionTicket:
        return self.confirm_by_state(ticket)

    def health(self) -> HealthReport:
        return self.health_check(lambda: self.http.get("/agents", {"limit": 1}))

    # -- helpers ----------------------------------------------------------------------------
    def _agent(self, agent_id: str) -> dict[str, Any]:
        found = self.agents(ids=safe_identifier(agent_id, "agent id"))
        if not found:
            raise ConnectorError(f"{self.name}: agent {agent_id} not found")
        return found[0]

    def _ref(self, agent: dict[str, Any]) -> HostRef:
        ips = [ip for nic in agent.get("networkInterfaces") or [] for ip in nic.get("inet") or []]
        return HostRef(
            vendor=self.name, id=str(agent.get("id")), hostname=agent.get("computerName"), ip=ips[0] if ips else None
        )
