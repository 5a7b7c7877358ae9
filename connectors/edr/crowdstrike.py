"""CrowdStrike Falcon: OAuth2 client credentials, device queries, alerts v2, containment and RTR kill.

Containment has no action id: `devices-actions/v2` accepts the request and the device `status`
moves normal → containment_pending → contained, so the ticket is confirmed by re-reading the host.
The approval comment travels as the action's `note` parameter. `kill_process` uses Real Time
Response (`kill <pid>`), which has no comment field: the approval is on siemcrew's own record, and siemcrew's
marker becomes the RTR session's `origin`. `find_action` therefore finds a kill of ours (its session by origin,
then the session's command log, `with_command_info`); device actions keep no list to search, so containment is
confirmed by the device status alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from siemcrew.config.edr import CrowdStrikeSettings, required_secret
from siemcrew.connectors.base import ActionTicket, ConnectorError, HealthReport, HostContext, HostRef
from siemcrew.connectors.edr.auth import ClientCredentialsToken
from siemcrew.connectors.edr.common import (
    MAX_EVENTS,
    Containment,
    EdrBase,
    marker_in,
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
    "normal": "normal",
    "containment_pending": "pending",
    "contained": "contained",
    "lift_containment_pending": "release_pending",
}


def falcon_error(body: Any) -> str | None:
    """`{"meta":…,"resources":[],"errors":[{"code","message"}]}` → the first message."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if errors:
        first = errors[0]
        return f"{first.get('message')} (code {first.get('code')})"
    return None


class FalconEdr(EdrBase):
    name = "crowdstrike"

    def __init__(self, settings: CrowdStrikeSettings, options: HttpOptions | None = None) -> None:
        options = options or HttpOptions.from_section(settings)
        super().__init__(
            EdrHttp(
                self.name,
                settings.api_base,
                error_parser=falcon_error,
                options=options,
                rate_limit_per_minute=settings.rate_limit_per_minute,
            )
        )
        self.settings = settings

        def form() -> dict[str, str]:
            values = {
                "client_id": required_secret(self.name, settings.client_id_env, None, "client id"),
                "client_secret": required_secret(
                    self.name, settings.client_secret_env, settings.client_secret_file, "client secret"
                ),
            }
            if settings.member_cid:
                values["member_cid"] = settings.member_cid
            return values

        self.token = ClientCredentialsToken(
            self.http, "/oauth2/token", form, settings.token_refresh_margin_s, options.clock
        )
        self.http.auth = self.token

    # -- hosts ------------------------------------------------------------------------------
    def find_host(self, name: str | None = None, ip: str | None = None, agent_id: str | None = None) -> HostRef | None:
        if agent_id:
            device = self._device(safe_identifier(agent_id, "agent id"))
            return self._ref(device) if device else None
        filters: list[str] = []
        if name:
            filters = [f"hostname:'{safe_identifier(candidate, 'host name')}'" for candidate in name_candidates(name)]
        elif ip:
            filters = [f"local_ip:'{safe_ip(ip)}'"]
        for fql in filters:
            ids = self._resources(self.http.get("/devices/queries/devices/v1", {"filter": fql, "limit": 10}))
            devices = [d for d in (self._device(aid) for aid in ids) if d]
            if devices:
                return self._ref(newest(devices, "last_seen"))
        return None

    def host_context(self, host: HostRef) -> HostContext:
        aid = safe_identifier(host.id, "agent id")
        device = self._device(aid)
        if device is None:
            raise ConnectorError(f"{self.name}: host {aid} not found")
        online = self._resources(self.http.get("/devices/entities/online-state/v1", {"ids": aid}))
        state = online[0].get("state") if online and isinstance(online[0], dict) else None
        open_alerts = self.http.get(
            "/alerts/queries/alerts/v2", {"filter": f"device.device_id:'{aid}'+status:!'closed'", "limit": 1}
        )
        raw_status = str(device.get("status") or "")
        user = device.get("last_login_user")
        return HostContext(
            host=self._ref(device),
            online=None if state is None else state == "online",
            os=device.get("os_version") or device.get("platform_name"),
            last_seen=parse_time(device.get("last_seen")),
            containment=_CONTAINMENT.get(raw_status, "unknown"),
            logged_on_users=[user] if user else [],
            detections=_total(open_alerts),
            detail={
                "status": raw_status,
                "platform": device.get("platform_name"),
                "agent_version": device.get("agent_version"),
                "local_ip": device.get("local_ip"),
                "external_ip": device.get("external_ip"),
            },
        )

    # -- alerts and process data ------------------------------------------------------------
    def detections(self, host: HostRef, time_range: TimeRange) -> list[dict[str, Any]]:
        return [e for e in map_records(self.name, "detection", self._alerts(host, time_range)) if within(e, time_range)]

    def process_events(self, host: HostRef, time_range: TimeRange, pid: int | None = None) -> list[dict[str, Any]]:
        """Falcon's process facts come with its alerts: each alert names the process and its parent."""
        events = map_records(self.name, "process", self._alerts(host, time_range))
        return [e for e in events if within(e, time_range) and involves_pid(e, pid)]

    def _alerts(self, host: HostRef, time_range: TimeRange) -> list[dict[str, Any]]:
        aid = safe_identifier(host.id, "agent id")
        fql = f"device.device_id:'{aid}'+timestamp:>='{iso(time_range.start)}'+timestamp:<='{iso(time_range.end)}'"
        ids: list[str] = []
        while len(ids) < MAX_EVENTS:
            page = self.http.get(
                "/alerts/queries/alerts/v2",
                {"filter": fql, "limit": min(500, MAX_EVENTS - len(ids)), "offset": len(ids), "sort": "timestamp.asc"},
            )
            batch = [str(x) for x in self._resources(page)]
            ids.extend(batch)
            if not batch or len(ids) >= _total(page):
                break
        alerts: list[dict[str, Any]] = []
        for start in range(0, len(ids), 1000):
            body = self.http.post(
                "/alerts/entities/alerts/v2", {"composite_ids": ids[start : start + 1000]}, idempotent=True
            )
            alerts.extend(a for a in self._resources(body) if isinstance(a, dict))
        return alerts

    # -- actions ----------------------------------------------------------------------------
    def contain(self, host: HostRef, comment: str) -> ActionTicket:
        return self._device_action("contain", "contain", host, comment)

    def release(self, host: HostRef, comment: str) -> ActionTicket:
        return self._device_action("release", "lift_containment", host, comment)

    def _device_action(self, action: str, action_name: str, host: HostRef, comment: str) -> ActionTicket:
        aid = safe_identifier(host.id, "agent id")
        body = self.http.post(
            "/devices/entities/devices-actions/v2",
            {"ids": [aid], "action_parameters": [{"name": "note", "value": comment}]},
            params={"action_name": action_name},
        )
        accepted = {str(r.get("id")) for r in self._resources(body) if isinstance(r, dict)}
        if aid not in accepted:
            raise EdrApiError(
                self.name, f"{action_name} not accepted for {aid}: {falcon_error(body) or 'no resource returned'}"
            )
        return state_ticket(self.name, action, host)  # type: ignore[arg-type]

    def kill_process(self, host: HostRef, pid: int, comment: str) -> ActionTicket:
        """RTR `kill <pid>`; RTR has no comment field, so `comment` stays on siemcrew's record and its marker (if
        any) becomes the session's `origin`, where `find_action` looks for it."""
        aid = safe_identifier(host.id, "agent id")
        if int(pid) <= 0:
            raise ConnectorError(f"{self.name}: invalid pid {pid!r}")
        session = self._resources(
            self.http.post(
                "/real-time-response/entities/sessions/v1",
                {"device_id": aid, "origin": marker_in(comment) or "siemcrew", "queue_offline": False},
                idempotent=True,  # opening a session changes nothing on the host
            )
        )
        session_id = session[0].get("session_id") if session else None
        if not session_id:
            raise EdrApiError(self.name, f"no RTR session for {aid}")
        command = self._resources(
            self.http.post(
                "/real-time-response/entities/active-responder-command/v1",
                {
                    "base_command": "kill",
                    "command_string": f"kill {int(pid)}",
                    "session_id": session_id,
                    "persist": False,
                },
            )
        )
        request_id = command[0].get("cloud_request_id") if command else None
        if not request_id:
            raise EdrApiError(self.name, "RTR kill was not queued")
        return ActionTicket(
            vendor=self.name,
            action="kill_process",
            host_id=aid,
            ticket_id=f"rtr:{request_id}",
            detail="RTR kill queued (Falcon RTR has no comment field)",
        )

    def find_action(self, host: HostRef, action: str, marker: str, since: datetime | None = None
                    ) -> ActionTicket | None:
        """A `kill` in the command log of an RTR session of ours on this device whose origin is `marker`."""
        if action != "kill_process":
            raise ActionNotSupported(f"{self.name}: device actions keep no list; the device status confirms {action}")
        aid = safe_identifier(host.id, "agent id")
        origin = safe_identifier(marker, "marker")  # it goes into FQL
        fql = f"origin:'{origin}'" + (f"+created_at:>='{iso(since)}'" if since is not None else "")
        ids = self._resources(self.http.get("/real-time-response/queries/sessions/v1", {"filter": fql, "limit": 100}))
        if not ids:
            return None
        sessions = self._resources(
            self.http.post(
                "/real-time-response/entities/sessions/GET/v1",
                {"ids": [str(i) for i in ids]},
                params={"with_command_info": "true"},
                idempotent=True,  # reading sessions changes nothing
            )
        )
        logs = [
            log
            for session in sessions
            if isinstance(session, dict) and session.get("origin") == marker and session.get("device_id") == aid
            for log in session.get("logs") or []
            if isinstance(log, dict) and log.get("base_command") == "kill" and log.get("cloud_request_id")
        ]
        if not logs:
            return None
        log = newest(logs, "created_at")
        ticket = ActionTicket(vendor=self.name, action="kill_process", host_id=aid,
                              ticket_id=f"rtr:{log['cloud_request_id']}", detail=f"RTR {log.get('command_string')}")
        return self.action_status(ticket)

    def action_status(self, ticket: ActionTicket) -> ActionTicket:
        if ticket.action != "kill_process":
            return self.confirm_by_state(ticket)
        request_id = ticket.ticket_id.removeprefix("rtr:")
        rows = self._resources(
            self.http.get(
                "/real-time-response/entities/active-responder-command/v1",
                {"cloud_request_id": request_id, "sequence_id": 0},
            )
        )
        row = rows[0] if rows and isinstance(rows[0], dict) else {}
        if not row.get("complete"):
            return ticket.model_copy(update={"state": "pending", "detail": "RTR command not complete"})
        if row.get("stderr"):
            return ticket.model_copy(update={"state": "failed", "detail": str(row["stderr"])[:300]})
        return ticket.model_copy(update={"state": "done", "detail": str(row.get("stdout") or "killed")[:300]})

    def health(self) -> HealthReport:
        return self.health_check(lambda: self.http.get("/devices/queries/devices/v1", {"limit": 1}))

    # -- helpers ----------------------------------------------------------------------------
    def _device(self, aid: str) -> dict[str, Any] | None:
        try:
            body = self.http.get("/devices/entities/devices/v2", {"ids": aid})
        except EdrApiError as exc:
            if exc.status == 404:
                return None
            raise
        devices = [d for d in self._resources(body) if isinstance(d, dict)]
        return devices[0] if devices else None

    def _ref(self, device: dict[str, Any]) -> HostRef:
        return HostRef(
            vendor=self.name,
            id=str(device.get("device_id")),
            hostname=device.get("hostname"),
            ip=device.get("local_ip"),
        )

    def _resources(self, body: Any) -> list[Any]:
        resources = body.get("resources") if isinstance(body, dict) else None
        if resources is None:
            return []
        if not isinstance(resources, list):
            raise EdrApiError(self.name, "malformed response: resources is not a list")
        return resources


def _total(body: Any) -> int:
    try:
        return int(body["meta"]["pagination"]["total"])
    except (KeyError, TypeError, ValueError):
        resources = body.get("resources") if isinstance(body, dict) else None
        return len(resources) if isinstance(resources, list) else 0
