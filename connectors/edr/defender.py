"""Microsoft Defender for Endpoint: Entra ID tokens, machines `$filter`, isolate/unisolate, Graph hunting.

Two tokens from the same app registration: one for the Defender API (machines, machine actions,
alerts) and one for Microsoft Graph (`security/runHuntingQuery`, which replaces the retiring
`/api/advancedqueries/run`). Defender has no isolation field on a machine, so containment is
read from the latest Isolate/Unisolate machine action. Calls are paced to Defender's published
limits (100/min for machine APIs, 45/min for hunting) so a busy crew waits instead of drawing 429s.
There is no kill-by-pid API in Defender, so `kill_process` raises `ActionNotSupported`.
`find_action` finds siemcrew's own Isolate/Unisolate in the machine-action list: `$filter` on machineId and type
(the properties Defender filters on), then siemcrew's marker in each action's `requestorComment`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from siemcrew.config.edr import DefenderSettings, required_secret
from siemcrew.connectors.base import ActionTicket, ConnectorError, HealthReport, HostContext, HostRef
from siemcrew.connectors.edr.auth import ClientCredentialsToken
from siemcrew.connectors.edr.common import (
    MAX_EVENTS,
    Containment,
    EdrBase,
    carries_marker,
    newest,
    safe_identifier,
    safe_ip,
)
from siemcrew.connectors.edr.http import ActionNotSupported, EdrApiError, EdrHttp, HttpOptions
from siemcrew.connectors.edr.mapping import map_records, within
from siemcrew.crew.models import TimeRange
from siemcrew.crew.timeutil import iso, parse_time

_ACTION_STATE = {
    "Pending": "pending",
    "InProgress": "pending",
    "Succeeded": "done",
    "Failed": "failed",
    "Cancelled": "failed",
    "TimeOut": "timed_out",
}

_ACTION_TYPE = {"contain": "Isolate", "release": "Unisolate"}
_PROCESS_COLUMNS = (
    "Timestamp, DeviceId, DeviceName, ProcessId, FileName, FolderPath, ProcessCommandLine, SHA256, "
    "InitiatingProcessId, InitiatingProcessFileName, InitiatingProcessFolderPath, "
    "InitiatingProcessCommandLine, AccountName, AccountDomain"
)


def defender_error(body: Any) -> str | None:
    """`{"error":{"code","message"}}` (Defender and Graph) or Entra's `{"error","error_description"}`."""
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return f"{error.get('code')}: {error.get('message')}"
    if isinstance(error, str):
        description = str(body.get("error_description") or "").split("\n")[0]
        return f"{error}: {description}" if description else error
    return None


def odata_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def kql_string(value: str) -> str:
    """A KQL string literal; control characters are refused rather than escaped."""
    if any(ord(ch) < 32 for ch in value):
        raise ConnectorError("refusing a KQL value with control characters")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def containment_from_actions(actions: list[dict[str, Any]]) -> Containment:
    """The newest Isolate/Unisolate action that did not fail decides; none means never isolated."""
    relevant = [a for a in actions if a.get("type") in ("Isolate", "Unisolate")]
    relevant.sort(key=lambda a: str(a.get("creationDateTimeUtc") or ""), reverse=True)
    for action in relevant:
        state = _ACTION_STATE.get(str(action.get("status")), "failed")
        if state == "pending":
            return "pending" if action["type"] == "Isolate" else "release_pending"
        if state == "done":
            return "contained" if action["type"] == "Isolate" else "normal"
    return "normal"


class DefenderEdr(EdrBase):
    name = "defender"

    def __init__(self, settings: DefenderSettings, options: HttpOptions | None = None) -> None:
        options = options or HttpOptions.from_section(settings)
        tenant = safe_identifier(settings.tenant_id, "tenant id")
        login = EdrHttp(self.name, settings.login_base, error_parser=defender_error, options=options)

        def form(scope: str) -> dict[str, str]:
            return {
                "grant_type": "client_credentials",
                "client_id": required_secret(self.name, settings.client_id_env, None, "client id"),
                "client_secret": required_secret(
                    self.name, settings.client_secret_env, settings.client_secret_file, "client secret"
                ),
                "scope": scope,
            }

        token_path = f"/{tenant}/oauth2/v2.0/token"
        self.api_token = ClientCredentialsToken(
            login, token_path, lambda: form(settings.api_scope), settings.token_refresh_margin_s, options.clock
        )
        self.graph_token = ClientCredentialsToken(
            login, token_path, lambda: form(settings.graph_scope), settings.token_refresh_margin_s, options.clock
        )
        super().__init__(
            EdrHttp(
                self.name,
                settings.machines_base,
                self.api_token,
                defender_error,
                options,
                rate_limit_per_minute=settings.rate_limit_per_minute,
            )
        )
        self.graph = EdrHttp(
            self.name,
            settings.graph_base,
            self.graph_token,
            defender_error,
            options,
            rate_limit_per_minute=settings.hunting_rate_limit_per_minute,
        )
        self.login = login
        self.settings = settings

    def close(self) -> None:
        for client in (self.http, self.graph, self.login):
            client.close()

    # -- hosts ------------------------------------------------------------------------------
    def find_host(self, name: str | None = None, ip: str | None = None, agent_id: str | None = None) -> HostRef | None:
        if agent_id:
            machine = self._machine(safe_identifier(agent_id, "machine id"))
            return self._ref(machine) if machine else None
        filters: list[str] = []
        if name:
            given = safe_identifier(name, "host name")
            filters = [f"computerDnsName eq {odata_string(v)}" for v in dict.fromkeys([given, given.lower()])]
            if "." not in given:  # Defender stores FQDNs; a short name matches its first label
                filters.append(f"startswith(computerDnsName,{odata_string(given.lower() + '.')})")
        elif ip:
            filters = [f"lastIpAddress eq {odata_string(safe_ip(ip))}"]
        for odata in filters:
            machines = self._pages("/api/machines", {"$filter": odata, "$top": 50}, limit=50)
            if machines:
                return self._ref(newest(machines, "lastSeen"))
        return None

    def host_context(self, host: HostRef) -> HostContext:
        machine_id = safe_identifier(host.id, "machine id")
        machine = self._machine(machine_id)
        if machine is None:
            raise ConnectorError(f"{self.name}: machine {machine_id} not found")
        actions = self._pages("/api/machineactions", {"$filter": f"machineId eq {odata_string(machine_id)}"}, limit=200)
        users = self.http.get(f"/api/machines/{machine_id}/logonusers")
        alerts = self._pages(f"/api/machines/{machine_id}/alerts", None, limit=MAX_EVENTS)
        health = machine.get("healthStatus")
        return HostContext(
            host=self._ref(machine),
            online=None if health is None else health == "Active",
            os=" ".join(str(x) for x in (machine.get("osPlatform"), machine.get("osVersion")) if x) or None,
            last_seen=parse_time(machine.get("lastSeen")),
            containment=containment_from_actions(actions),
            logged_on_users=[_account(u) for u in _values(users)],
            detections=sum(1 for a in alerts if a.get("status") != "Resolved"),
            detail={
                "healthStatus": health,
                "riskScore": machine.get("riskScore"),
                "exposureLevel": machine.get("exposureLevel"),
                "lastIpAddress": machine.get("lastIpAddress"),
            },
        )

    # -- alerts and hunting -----------------------------------------------------------------
    def detections(self, host: HostRef, time_range: TimeRange) -> list[dict[str, Any]]:
        machine_id = safe_identifier(host.id, "machine id")
        alerts = self._pages(f"/api/machines/{machine_id}/alerts", None, limit=MAX_EVENTS)
        events = map_records(self.name, "detection", alerts)
        return sorted((e for e in events if within(e, time_range)), key=lambda e: e.get("@timestamp", ""))

    def process_query(self, host: HostRef, time_range: TimeRange, pid: int | None = None) -> str:
        """The KQL sent to Graph: every value is validated or typed before it is written in."""
        lines = [
            "DeviceProcessEvents",
            f"| where Timestamp between (datetime({iso(time_range.start)}) .. datetime({iso(time_range.end)}))",
            f"| where DeviceId == {kql_string(safe_identifier(host.id, 'machine id'))}",
        ]
        if pid is not None:
            lines.append(f"| where ProcessId == {int(pid)} or InitiatingProcessId == {int(pid)}")
        lines += [f"| project {_PROCESS_COLUMNS}", "| order by Timestamp asc", f"| take {MAX_EVENTS}"]
        return "\n".join(lines)

    def process_events(self, host: HostRef, time_range: TimeRange, pid: int | None = None) -> list[dict[str, Any]]:
        body = self.graph.post(
            "/v1.0/security/runHuntingQuery", {"Query": self.process_query(host, time_range, pid)}, idempotent=True
        )
        rows = body.get("results") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise EdrApiError(self.name, "malformed hunting response: no results list")
        return map_records(self.name, "process", rows)

    # -- actions ----------------------------------------------------------------------------
    def contain(self, host: HostRef, comment: str) -> ActionTicket:
        return self._machine_action(
            "contain", host, "isolate", {"Comment": comment, "IsolationType": self.settings.isolation_type}
        )

    def release(self, host: HostRef, comment: str) -> ActionTicket:
        return self._machine_action("release", host, "unisolate", {"Comment": comment})

    def kill_process(self, host: HostRef, pid: int, comment: str) -> ActionTicket:
        raise ActionNotSupported(
            "defender: Defender for Endpoint has no kill-by-pid API (use live response or StopAndQuarantineFile)"
        )

    def _machine_action(self, action: str, host: HostRef, verb: str, body: dict[str, Any]) -> ActionTicket:
        machine_id = safe_identifier(host.id, "machine id")
        result = self.http.post(f"/api/machines/{machine_id}/{verb}", body)
        if not isinstance(result, dict) or not result.get("id"):
            raise EdrApiError(self.name, f"{verb} returned no machine action id")
        return self._ticket(
            ActionTicket(vendor=self.name, action=action, host_id=machine_id, ticket_id=str(result["id"])), result
        )  # type: ignore[arg-type]

    def find_action(self, host: HostRef, action: str, marker: str, since: datetime | None = None
                    ) -> ActionTicket | None:
        """The newest Isolate/Unisolate on this machine whose requestorComment carries `marker` (see ActionLookup)."""
        kind = _ACTION_TYPE.get(action)
        if kind is None:
            raise ActionNotSupported(f"{self.name}: no machine action lists a {action}")
        machine_id = safe_identifier(host.id, "machine id")
        odata = f"machineId eq {odata_string(machine_id)} and type eq {odata_string(kind)}"
        if since is not None:
            odata += f" and creationDateTimeUtc ge {iso(since)}"
        actions = self._pages("/api/machineactions", {"$filter": odata}, limit=MAX_EVENTS + 1)
        if len(actions) > MAX_EVENTS:
            raise EdrApiError(self.name, f"more than {MAX_EVENTS} {kind} actions on {machine_id}: cannot tell ours")
        ours = [a for a in actions if carries_marker(a.get("requestorComment"), marker) and a.get("id")]
        if not ours:
            return None
        found = newest(ours, "creationDateTimeUtc")
        ticket = ActionTicket(vendor=self.name, action=action, host_id=machine_id, ticket_id=str(found["id"]))  # type: ignore[arg-type]
        return self._ticket(ticket, found)

    def action_status(self, ticket: ActionTicket) -> ActionTicket:
        action_id = safe_identifier(ticket.ticket_id, "machine action id")
        return self._ticket(ticket, self.http.get(f"/api/machineactions/{action_id}"))

    def _ticket(self, ticket: ActionTicket, action: Any) -> ActionTicket:
        status = str(action.get("status")) if isinstance(action, dict) else "unknown"
        state = _ACTION_STATE.get(status)
        if state is None:
            raise EdrApiError(self.name, f"unknown machine action status {status!r}")
        return ticket.model_copy(update={"state": state, "detail": f"machine action status {status}"})

    def health(self) -> HealthReport:
        return self.health_check(lambda: self.http.get("/api/machines", {"$top": 1}))

    # -- helpers ----------------------------------------------------------------------------
    def _machine(self, machine_id: str) -> dict[str, Any] | None:
        try:
            machine = self.http.get(f"/api/machines/{machine_id}")
        except EdrApiError as exc:
            if exc.status == 404:
                return None
            raise
        return machine if isinstance(machine, dict) else None

    def _pages(self, path: str, params: dict[str, Any] | None, limit: int) -> list[dict[str, Any]]:
        """Follow `@odata.nextLink` (same origin only) until `limit` rows."""
        rows: list[dict[str, Any]] = []
        body = self.http.get(path, params)
        origin = urlsplit(str(self.http.client.base_url))
        while True:
            rows.extend(v for v in _values(body) if isinstance(v, dict))
            link = body.get("@odata.nextLink") if isinstance(body, dict) else None
            if not link or len(rows) >= limit:
                return rows[:limit]
            target = urlsplit(link)
            if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
                raise EdrApiError(self.name, f"refusing to follow a nextLink to another host: {target.netloc}")
            body = self.http.get(link)

    def _ref(self, machine: dict[str, Any]) -> HostRef:
        return HostRef(
            vendor=self.name,
            id=str(machine.get("id")),
            hostname=machine.get("computerDnsName"),
            ip=machine.get("lastIpAddress"),
        )


def _values(body: Any) -> list[Any]:
    values = body.get("value") if isinstance(body, dict) else None
    return values if isinstance(values, list) else []


def _account(user: dict[str, Any]) -> str:
    name, domain = user.get("accountName"), user.get("accountDomain")
    return f"{domain}\\{name}" if domain else str(name)
