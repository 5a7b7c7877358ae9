"""Elastic Defend through Kibana: endpoint metadata, isolate/unisolate/kill_process, action details.

Kibana's response actions return action ids; an action is done when `GET /api/endpoint/action/{id}`
says `isCompleted` and `wasSuccessful` (`isExpired` is a timeout). Containment state is the
endpoint's `Endpoint.state.isolation` flag plus Kibana's pending-action counts. Process events
come from the `logs-endpoint.events.process-*` data stream when an `elasticsearch_url` is set
(queried with the real elasticsearch-py client); otherwise from a `running-processes` action,
which is a live snapshot rather than history (rows say so with `event.kind: state`).
`find_action` finds siemcrew's own isolate / unisolate / kill-process in Kibana's response-action list
(`GET /api/endpoint/action` filtered by agentIds and commands), by siemcrew's marker in each action's `comment`.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta
from typing import Any

from elasticsearch import ApiError, Elasticsearch, TransportError

from siemcrew.config.edr import ElasticDefendSettings, required_secret
from siemcrew.connectors.base import ActionTicket, ConnectorError, HealthReport, HostContext, HostRef
from siemcrew.connectors.edr.auth import HeaderToken
from siemcrew.connectors.edr.common import (
    MAX_EVENTS,
    Containment,
    EdrBase,
    carries_marker,
    name_candidates,
    newest,
    safe_identifier,
    safe_ip,
)
from siemcrew.connectors.edr.http import EdrApiError, EdrHttp, HttpOptions, Retryable, parse_retry_after, retrying
from siemcrew.connectors.edr.mapping import involves_pid, map_records, resolve, within
from siemcrew.crew.models import TimeRange
from siemcrew.crew.timeutil import iso, parse_time, utcnow

_COMMANDS = {"contain": "isolate", "release": "unisolate", "kill_process": "kill_process"}
"""The POST path of each action; the action list names the same commands `isolate`, `unisolate`, `kill-process`."""
_LISTED = {"contain": "isolate", "release": "unisolate", "kill_process": "kill-process"}
_LIST_PAGE = 100  # the largest page Kibana's action list serves
_LIST_PAGES = 10
_LIST_HISTORY = timedelta(days=90)
"""How far back a lookup without `since` asks: always an explicit startDate, never the list's own default window."""
_OFFLINE = {"offline", "inactive", "unenrolled"}


def kibana_error(body: Any) -> str | None:
    """Kibana's Boom envelope `{"statusCode","error","message"}`."""
    if isinstance(body, dict) and body.get("message"):
        return f"{body.get('error') or 'Error'}: {body['message']}"
    return None


class ElasticDefendEdr(EdrBase):
    name = "elastic_defend"

    def __init__(self, settings: ElasticDefendSettings, options: HttpOptions | None = None) -> None:
        options = options or HttpOptions.from_section(settings)
        self.settings = settings
        self.options = options
        super().__init__(
            EdrHttp(
                self.name,
                settings.kibana_base,
                HeaderToken("Authorization", self._authorization),
                kibana_error,
                options,
                headers={"kbn-xsrf": "true", "elastic-api-version": "2023-10-31"},
                rate_limit_per_minute=settings.rate_limit_per_minute,
            )
        )
        self._es: Elasticsearch | None = None

    def _credentials(self) -> str | tuple[str, str]:
        """The encoded API key, or (username, password) for basic auth; read at the moment of use."""
        s = self.settings
        if s.username:
            return s.username, required_secret(self.name, s.password_env, s.password_file, "password")
        return required_secret(self.name, s.api_key_env, s.api_key_file, "API key")

    def _authorization(self) -> str:
        credentials = self._credentials()
        if isinstance(credentials, tuple):
            return "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        return f"ApiKey {credentials}"

    def close(self) -> None:
        super().close()
        if self._es is not None:
            self._es.close()

    # -- hosts ------------------------------------------------------------------------------
    def find_host(self, name: str | None = None, ip: str | None = None, agent_id: str | None = None) -> HostRef | None:
        if agent_id:
            info = self._endpoint(safe_identifier(agent_id, "agent id"))
            return self._ref(info) if info else None
        prefix = self.settings.metadata_field_prefix
        kueries: list[str] = []
        if name:
            kueries = [f'{prefix}host.hostname:"{safe_identifier(c, "host name")}"' for c in name_candidates(name)]
        elif ip:
            kueries = [f'{prefix}host.ip:"{safe_ip(ip)}"']
        for kuery in kueries:
            body = self.http.get("/api/endpoint/metadata", {"kuery": kuery, "page": 0, "pageSize": 50})
            found = [h for h in (body or {}).get("data") or [] if isinstance(h, dict)]
            if found:
                return self._ref(newest(found, "last_checkin"))
        return None

    def host_context(self, host: HostRef) -> HostContext:
        agent_id = safe_identifier(host.id, "agent id")
        info = self._endpoint(agent_id)
        if info is None:
            raise ConnectorError(f"{self.name}: endpoint {agent_id} not found")
        metadata = info.get("metadata") or {}
        pending = self._pending_actions(agent_id)
        isolated = bool(resolve(metadata, "Endpoint.state.isolation"))
        containment: Containment = (
            "pending"
            if pending.get("isolate")
            else "release_pending"
            if pending.get("unisolate")
            else "contained"
            if isolated
            else "normal"
        )
        status = str(info.get("host_status") or "")
        user = resolve(metadata, "user.name")
        return HostContext(
            host=self._ref(info),
            online=None if not status else status not in _OFFLINE,
            os=resolve(metadata, "host.os.full") or resolve(metadata, "host.os.name"),
            last_seen=parse_time(info.get("last_checkin") or metadata.get("@timestamp")),
            containment=containment,
            logged_on_users=[user] if isinstance(user, str) else [],
            detections=self._alerts_total(agent_id),
            detail={
                "host_status": status,
                "isolation": isolated,
                "pending_actions": pending,
                "policy": resolve(metadata, "Endpoint.policy.applied.name"),
            },
        )

    # -- detections and process data --------------------------------------------------------
    def detections(self, host: HostRef, time_range: TimeRange) -> list[dict[str, Any]]:
        body = self.http.post(
            "/api/detection_engine/signals/search",
            {
                "query": self._host_window(host, time_range),
                "size": MAX_EVENTS,
                "sort": [{"@timestamp": {"order": "asc"}}],
            },
            idempotent=True,
        )
        return [e for e in map_records(self.name, "detection", _sources(body)) if within(e, time_range)]

    def process_events(self, host: HostRef, time_range: TimeRange, pid: int | None = None) -> list[dict[str, Any]]:
        if self.settings.elasticsearch_url:
            return self._process_history(host, time_range, pid)
        return self._running_processes(host, pid)

    def process_search(self, host: HostRef, time_range: TimeRange, pid: int | None) -> dict[str, Any]:
        """The query DSL for process events of one endpoint (sent as-is to the data stream)."""
        query = self._host_window(host, time_range)
        query["bool"]["filter"].append({"term": {"event.category": "process"}})
        if pid is not None:
            query["bool"]["filter"].append(
                {
                    "bool": {
                        "should": [{"term": {"process.pid": int(pid)}}, {"term": {"process.parent.pid": int(pid)}}],
                        "minimum_should_match": 1,
                    }
                }
            )
        return query

    def _process_history(self, host: HostRef, time_range: TimeRange, pid: int | None) -> list[dict[str, Any]]:
        query = self.process_search(host, time_range, pid)

        def attempt() -> Any:
            try:
                return self.es.search(
                    index=self.settings.process_index,
                    query=query,
                    size=MAX_EVENTS,
                    sort=[{"@timestamp": {"order": "asc"}}],
                )
            except ApiError as exc:
                error = EdrApiError(self.name, f"Elasticsearch: {exc.message}", exc.meta.status)
                if exc.meta.status == 429 or exc.meta.status >= 500:
                    raise Retryable(error, parse_retry_after(exc.meta.headers.get("Retry-After"))) from None
                raise error from None
            except TransportError as exc:
                raise Retryable(EdrApiError(self.name, f"Elasticsearch unreachable: {exc.message}")) from None

        body = retrying(self.options, attempt)
        events = map_records(self.name, "process", _sources(body.body))
        return [e for e in events if within(e, time_range) and involves_pid(e, pid)]

    @property
    def es(self) -> Elasticsearch:
        if self._es is None:
            credentials = self._credentials()
            auth: dict[str, Any] = (
                {"basic_auth": credentials} if isinstance(credentials, tuple) else {"api_key": credentials}
            )
            self._es = Elasticsearch(
                self.settings.elasticsearch_url,
                verify_certs=self.settings.verify,
                ca_certs=self.settings.ca_file,
                request_timeout=self.options.timeout_s,
                max_retries=0,  # retries happen in `retrying`, with backoff and Retry-After
                **auth,
            )
        return self._es

    def _running_processes(self, host: HostRef, pid: int | None) -> list[dict[str, Any]]:
        """A live `running-processes` snapshot, awaited up to `action_poll_timeout_s`."""
        agent_id = safe_identifier(host.id, "agent id")
        started = self.http.post(
            "/api/endpoint/action/running_procs",
            {"endpoint_ids": [agent_id], "comment": "siemcrew: process listing for an investigation"},
            idempotent=True,  # listing processes changes nothing on the host
        )
        action_id = _action_id(started)
        deadline = self.options.clock() + self.settings.action_poll_timeout_s
        while True:
            details = _data(self.http.get(f"/api/endpoint/action/{safe_identifier(action_id, 'action id')}"))
            if details.get("isCompleted"):
                break
            if details.get("isExpired") or self.options.clock() >= deadline:
                raise ConnectorError(f"{self.name}: running-processes action {action_id} did not complete")
            self.options.sleep(1.0)
        if not details.get("wasSuccessful"):
            raise ConnectorError(f"{self.name}: running-processes action failed: {details.get('errors')}")
        entries = resolve((details.get("outputs") or {}).get(agent_id) or {}, "content.entries") or []
        events = map_records(self.name, "running_process", entries)
        snapshot = {
            "@timestamp": iso(parse_time(details.get("completedAt")) or parse_time(0)),
            "host.id": agent_id,
            "event.kind": "state",
        }
        if host.hostname:
            snapshot["host.name"] = host.hostname
        return [{**snapshot, **e} for e in events if involves_pid(e, pid)]

    # -- actions ----------------------------------------------------------------------------
    def contain(self, host: HostRef, comment: str) -> ActionTicket:
        return self._action("contain", host, {"comment": comment})

    def release(self, host: HostRef, comment: str) -> ActionTicket:
        return self._action("release", host, {"comment": comment})

    def kill_process(self, host: HostRef, pid: int, comment: str) -> ActionTicket:
        if int(pid) <= 0:
            raise ConnectorError(f"{self.name}: invalid pid {pid!r}")
        return self._action("kill_process", host, {"comment": comment, "parameters": {"pid": int(pid)}})

    def _action(self, action: str, host: HostRef, extra: dict[str, Any]) -> ActionTicket:
        agent_id = safe_identifier(host.id, "agent id")
        body = self.http.post(
            f"/api/endpoint/action/{_COMMANDS[action]}", {"endpoint_ids": [agent_id], "agent_type": "endpoint", **extra}
        )
        ticket = ActionTicket(vendor=self.name, action=action, host_id=agent_id, ticket_id=_action_id(body))  # type: ignore[arg-type]
        return self._ticket(ticket, _data(body))

    def find_action(self, host: HostRef, action: str, marker: str, since: datetime | None = None
                    ) -> ActionTicket | None:
        """The newest response action of this command on this endpoint whose `comment` carries `marker` (the list
        comes newest first; at most `_LIST_PAGES` pages are read)."""
        agent_id = safe_identifier(host.id, "agent id")
        params: dict[str, Any] = {"agentIds": agent_id, "commands": _LISTED[action], "pageSize": _LIST_PAGE,
                                  "startDate": iso(since or utcnow() - _LIST_HISTORY)}
        for page in range(1, _LIST_PAGES + 1):
            body = self.http.get("/api/endpoint/action", {**params, "page": page})
            rows = body.get("data") if isinstance(body, dict) else None
            if not isinstance(rows, list):
                raise EdrApiError(self.name, "malformed action list: no data list")
            for row in rows:
                if isinstance(row, dict) and carries_marker(row.get("comment"), marker) and agent_id in (
                        row.get("agents") or []) and row.get("id"):
                    ticket = ActionTicket(vendor=self.name, action=action, host_id=agent_id, ticket_id=str(row["id"]))  # type: ignore[arg-type]
                    return self._ticket(ticket, row)
            if page * _LIST_PAGE >= int(body.get("total") or 0):
                return None
        raise EdrApiError(self.name, f"more than {_LIST_PAGES * _LIST_PAGE} {_LISTED[action]} actions on {agent_id}: "
                                     "cannot tell whether one is ours")

    def action_status(self, ticket: ActionTicket) -> ActionTicket:
        action_id = safe_identifier(ticket.ticket_id, "action id")
        return self._ticket(ticket, _data(self.http.get(f"/api/endpoint/action/{action_id}")))

    @staticmethod
    def _ticket(ticket: ActionTicket, details: dict[str, Any]) -> ActionTicket:
        if details.get("isExpired"):
            state, detail = "timed_out", "action expired before the endpoint answered"
        elif details.get("isCompleted"):
            ok = bool(details.get("wasSuccessful"))
            state = "done" if ok else "failed"
            detail = "completed" if ok else f"failed: {details.get('errors') or details.get('status')}"
        else:
            state, detail = "pending", f"status {details.get('status') or 'pending'}"
        return ticket.model_copy(update={"state": state, "detail": str(detail)[:300]})

    def health(self) -> HealthReport:
        return self.health_check(lambda: self.http.get("/api/endpoint/metadata", {"page": 0, "pageSize": 1}))

    # -- helpers ----------------------------------------------------------------------------
    def _endpoint(self, agent_id: str) -> dict[str, Any] | None:
        try:
            info = self.http.get(f"/api/endpoint/metadata/{agent_id}")
        except EdrApiError as exc:
            if exc.status == 404:
                return None
            raise
        return info if isinstance(info, dict) else None

    def _pending_actions(self, agent_id: str) -> dict[str, int]:
        body = self.http.get("/api/endpoint/action_status", {"agent_ids": agent_id})
        for row in (body or {}).get("data") or []:
            if isinstance(row, dict) and row.get("agent_id") == agent_id:
                return {k: int(v) for k, v in (row.get("pending_actions") or {}).items() if v}
        return {}

    def _alerts_total(self, agent_id: str) -> int:
        body = self.http.post(
            "/api/detection_engine/signals/search",
            {
                "query": {
                    "bool": {
                        "filter": [{"term": {"agent.id": agent_id}}, {"term": {"kibana.alert.workflow_status": "open"}}]
                    }
                },
                "size": 0,
                "track_total_hits": True,
            },
            idempotent=True,
        )
        total = resolve(body or {}, "hits.total")
        return int(total.get("value", 0)) if isinstance(total, dict) else int(total or 0)

    @staticmethod
    def _host_window(host: HostRef, time_range: TimeRange) -> dict[str, Any]:
        return {
            "bool": {
                "filter": [
                    {"term": {"agent.id": safe_identifier(host.id, "agent id")}},
                    {"range": {"@timestamp": {"gte": iso(time_range.start), "lte": iso(time_range.end)}}},
                ]
            }
        }

    def _ref(self, info: dict[str, Any]) -> HostRef:
        metadata = info.get("metadata") or {}
        ips = resolve(metadata, "host.ip")
        return HostRef(
            vendor=self.name,
            id=str(resolve(metadata, "agent.id")),
            hostname=resolve(metadata, "host.hostname") or resolve(metadata, "host.name"),
            ip=(ips[0] if isinstance(ips, list) and ips else ips if isinstance(ips, str) else None),
        )


def _data(body: Any) -> dict[str, Any]:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise EdrApiError("elastic_defend", "malformed action response: no data object")
    return data


def _action_id(body: Any) -> str:
    action_id = _data(body).get("id") or (body.get("action") if isinstance(body, dict) else None)
    if not action_id:
        raise EdrApiError("elastic_defend", "response action returned no id")
    return str(action_id)


def _sources(body: Any) -> list[dict[str, Any]]:
    hits = resolve(body or {}, "hits.hits")
    if hits is None:
        return []
    if not isinstance(hits, list):
        raise EdrApiError("elastic_defend", "malformed search response: hits.hits is not a list")
    return [h["_source"] for h in hits if isinstance(h, dict) and isinstance(h.get("_source"), dict)]
