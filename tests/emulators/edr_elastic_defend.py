"""Elastic Defend emulator: Kibana endpoint/response-action APIs plus the Elasticsearch search they sit on.

Faithful to `shared/reference/edr.md` and `elastic.md`: Kibana answers errors in the Boom envelope
`{"statusCode","error","message"}`, refuses non-GET requests without `kbn-xsrf`, serves spaces under
`/s/{space}`, gates isolation (not release) on a Platinum licence, and reports response actions as
`{"data":{id,isCompleted,wasSuccessful,isExpired,status,outputs}}` (POSTs also carry a top-level
`action`). `GET /api/endpoint/action` lists them newest first, each with its `comment`, filtered by `agentIds`,
`commands` (named `isolate`, `unisolate`, `kill-process`, `running-processes`), `startDate`/`endDate` and paged
by `page` (from 1) / `pageSize`. The Elasticsearch side (`/{index}/_search`) sends `X-Elastic-Product: Elasticsearch` so
the real elasticsearch-py 9 client accepts it, and errors in the ES envelope.
"""

from __future__ import annotations

import base64
import fnmatch
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from emulators.edr_common import Advancer, EmulatorServer, Reply, Request, resolve, running

API_KEY = base64.b64encode(b"key-id:elastic-test-api-key").decode()
SPACE = r"(?:/s/(?P<space>[a-z0-9_-]+))?"
_COMMAND_NAMES = {
    "isolate": "isolate",
    "unisolate": "unisolate",
    "kill_process": "kill-process",
    "running_procs": "running-processes",
}
_KUERY = re.compile(r'^(?P<field>[\w.]+):"?(?P<value>[^"]*)"?$')
_KUERY_FIELDS = {
    "united.endpoint.host.hostname": "host.hostname",
    "united.endpoint.host.name": "host.name",
    "united.endpoint.host.ip": "host.ip",
    "united.endpoint.agent.id": "agent.id",
}


class ElasticDefendEmulator(EmulatorServer):
    def __init__(self) -> None:
        super().__init__()
        self.spaces = {"default", "soc"}
        self.license = "platinum"
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.actions: dict[str, dict[str, Any]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.process_docs: list[dict[str, Any]] = []
        self.running: dict[str, list[dict[str, Any]]] = {}
        self.expire_instead_of_fail = False
        self.advancer = Advancer(self)
        self.add("GET", f"{SPACE}/api/endpoint/metadata", self.list_metadata)
        self.add("GET", f"{SPACE}/api/endpoint/metadata/(?P<id>[^/]+)", self.get_metadata)
        self.add("GET", f"{SPACE}/api/endpoint/action_status", self.action_status)
        self.add(
            "POST",
            f"{SPACE}/api/endpoint/action/(?P<command>isolate|unisolate|kill_process|running_procs)",
            self.create_action,
        )
        self.add("GET", f"{SPACE}/api/endpoint/action", self.list_actions)
        self.add("GET", f"{SPACE}/api/endpoint/action/(?P<id>[^/]+)", self.get_action)
        self.add("POST", f"{SPACE}/api/detection_engine/signals/search", self.signals_search)
        self.add("POST", "/(?P<index>[^/_][^/]*)/_search", self.es_search)

    # -- envelopes ---------------------------------------------------------------------------
    @staticmethod
    def boom(status: int, error: str, message: str) -> Reply:
        return Reply(status, {"statusCode": status, "error": error, "message": message})

    def authenticate(self, request: Request) -> Reply | None:
        header = request.header("authorization") or ""
        basic = "Basic " + base64.b64encode(b"soc-crew:kibana-pass").decode()
        if header not in (f"ApiKey {API_KEY}", basic):
            return self.boom(
                401,
                "Unauthorized",
                "[security_exception\n\tRoot causes:\n\t\tsecurity_exception: unable "
                "to authenticate with provided credentials and anonymous access is not allowed for this request]",
            )
        if request.method != "GET" and "/api/" in request.path and request.header("kbn-xsrf") is None:
            return self.boom(400, "Bad Request", "Request must contain a kbn-xsrf header.")
        space = re.match(r"^/s/([^/]+)/", request.path)
        if space and space.group(1) not in self.spaces:
            return self.boom(404, "Not Found", f"Saved object [space/{space.group(1)}] not found")
        return None

    def too_many_requests(self, retry_after: float) -> Reply:
        reply = self.boom(429, "Too Many Requests", "Too many requests")
        reply.headers["Retry-After"] = str(max(1, round(retry_after)))
        return reply

    def not_found(self, request: Request) -> Reply:
        return self.boom(404, "Not Found", "Not Found")

    # -- test levers -------------------------------------------------------------------------
    def add_endpoint(self, agent_id: str, hostname: str, ip: str, **fields: Any) -> dict[str, Any]:
        info = {
            "metadata": {
                "@timestamp": "2025-06-02T07:10:00.000Z",
                "agent": {"id": agent_id, "type": "endpoint", "version": "8.17.0"},
                "host": {
                    "hostname": hostname,
                    "name": hostname,
                    "ip": [ip],
                    "os": {"name": "Windows", "full": "Windows 11 Pro 22631"},
                },
                "Endpoint": {
                    "state": {"isolation": False},
                    "status": "enrolled",
                    "policy": {"applied": {"name": "Protect", "status": "success"}},
                },
            },
            "host_status": fields.pop("host_status", "healthy"),
            "last_checkin": "2025-06-02T07:10:00.000Z",
        }
        self.endpoints[agent_id] = info
        return info

    def add_action(self, agent_id: str, command: str, comment: str, created_by: str = "analyst") -> dict[str, Any]:
        """A completed response action someone else sent from the Kibana console (its effect applied)."""
        action = {"id": str(uuid.uuid4()), "agents": [agent_id], "agentType": "endpoint", "command": command,
                  "comment": comment, "parameters": None, "createdBy": created_by, "startedAt": _now(),
                  "isCompleted": False, "isExpired": False, "wasSuccessful": False, "status": "pending", "errors": [],
                  "outputs": {}}
        self.actions[action["id"]] = action
        self._complete(action)
        return action

    def action_requests(self, command: str) -> list[Request]:
        return [r for r in self.requests("POST") if r.path.endswith(f"/api/endpoint/action/{command}")]

    # -- metadata ----------------------------------------------------------------------------
    def list_metadata(self, request: Request, _: re.Match[str]) -> Reply:
        rows = list(self.endpoints.values())
        kuery = request.arg("kuery")
        if kuery:
            match = _KUERY.match(kuery.strip())
            if not match or match["field"] not in _KUERY_FIELDS:
                return self.boom(400, "Bad Request", f"Invalid kuery: {kuery}")
            path = _KUERY_FIELDS[match["field"]]
            rows = [r for r in rows if _matches(resolve(r["metadata"], path), match["value"])]
        page, size = int(request.arg("page", "0") or 0), int(request.arg("pageSize", "10") or 10)
        return Reply(
            200,
            {
                "data": rows[page * size : (page + 1) * size],
                "total": len(rows),
                "page": page,
                "pageSize": size,
                "sortField": "enrolled_at",
                "sortDirection": "desc",
            },
        )

    def get_metadata(self, request: Request, match: re.Match[str]) -> Reply:
        info = self.endpoints.get(match["id"])
        return Reply(200, info) if info else self.boom(404, "Not Found", f"Endpoint {match['id']} not found")

    # -- response actions --------------------------------------------------------------------
    def create_action(self, request: Request, match: re.Match[str]) -> Reply:
        body = request.json() or {}
        ids = body.get("endpoint_ids") or []
        command = match["command"]
        if not ids or any(i not in self.endpoints for i in ids):
            return self.boom(400, "Bad Request", "[request body.endpoint_ids]: unknown or missing endpoint ids")
        if command == "isolate" and self.license not in ("platinum", "enterprise"):
            return self.boom(403, "Forbidden", "Your license level does not allow for this action.")
        if command == "kill_process" and not (body.get("parameters") or {}).keys() & {"pid", "entity_id"}:
            return self.boom(400, "Bad Request", "[request body.parameters]: pid or entity_id is required")
        action_id = str(uuid.uuid4())
        action = {
            "id": action_id,
            "agents": ids,
            "agentType": body.get("agent_type", "endpoint"),
            "command": _COMMAND_NAMES[command],
            "comment": body.get("comment"),
            "parameters": body.get("parameters"),
            "createdBy": "soc-crew",
            "startedAt": _now(),
            "isCompleted": False,
            "isExpired": False,
            "wasSuccessful": False,
            "status": "pending",
            "errors": [],
            "outputs": {},
        }
        self.actions[action_id] = action
        self.advancer.start(action_id)
        return Reply(200, {"action": action_id, "data": dict(action)})

    def list_actions(self, request: Request, _: re.Match[str]) -> Reply:
        """Kibana's response-action list: newest first, filtered and paged as its query schema allows."""
        commands, agent_ids = request.args("commands"), request.args("agentIds")
        unknown = set(commands) - set(_COMMAND_NAMES.values())
        if unknown or len(agent_ids) > 50:
            return self.boom(400, "Bad Request", f"[request query]: invalid commands {sorted(unknown)} or >50 agentIds")
        page, size = int(request.arg("page", "1") or 1), int(request.arg("pageSize", "10") or 10)
        if page < 1 or not 1 <= size <= 10000:
            return self.boom(400, "Bad Request", "[request query.page]: page >= 1, 1 <= pageSize <= 10000")
        start, end = _time(request.arg("startDate")), _time(request.arg("endDate"))
        rows = [
            a
            for a in self.actions.values()
            if (not commands or a["command"] in commands)
            and (not agent_ids or set(a["agents"]) & set(agent_ids))
            and (start is None or _time(a["startedAt"]) >= start)
            and (end is None or _time(a["startedAt"]) <= end)
        ]
        rows.sort(key=lambda a: a["startedAt"], reverse=True)
        for action in rows:
            if self.advancer.active(action["id"]):
                self._tick(action)
        body = {
            "page": page,
            "pageSize": size,
            "total": len(rows),
            "startDate": request.arg("startDate"),
            "endDate": request.arg("endDate"),
            "elasticAgentIds": agent_ids,
            "commands": commands,
            "data": [{k: v for k, v in a.items() if k != "outputs"} for a in rows[(page - 1) * size : page * size]],
        }
        return Reply(200, body)

    def get_action(self, request: Request, match: re.Match[str]) -> Reply:
        action = self.actions.get(match["id"])
        if action is None:
            return self.boom(404, "Not Found", f"Action with id '{match['id']}' not found.")
        self._tick(action)
        return Reply(200, {"data": dict(action)})

    def _tick(self, action: dict[str, Any]) -> None:
        """One status read (of the action, or of its host's pending actions) moves it on."""
        verdict = self.advancer.read(action["id"])
        if verdict == "succeed":
            self._complete(action)
        elif verdict == "fail":
            if self.expire_instead_of_fail:
                action.update(isExpired=True, status="failed")
            else:
                action.update(
                    isCompleted=True,
                    wasSuccessful=False,
                    status="failed",
                    completedAt=_now(),
                    errors=["Endpoint did not acknowledge the action"],
                )

    def _complete(self, action: dict[str, Any]) -> None:
        action.update(isCompleted=True, wasSuccessful=True, status="successful", completedAt=_now())
        for agent_id in action["agents"]:
            state = self.endpoints[agent_id]["metadata"]["Endpoint"]["state"]
            if action["command"] == "isolate":
                state["isolation"] = True
            elif action["command"] == "unisolate":
                state["isolation"] = False
            elif action["command"] == "running-processes":
                action["outputs"][agent_id] = {"type": "json", "content": {"entries": self.running.get(agent_id, [])}}

    def action_status(self, request: Request, _: re.Match[str]) -> Reply:
        rows = []
        for agent_id in request.args("agent_ids"):
            pending: dict[str, int] = {}
            for action in self.actions.values():
                if agent_id in action["agents"] and self.advancer.active(action["id"]):
                    self._tick(action)
                if agent_id in action["agents"] and not action["isCompleted"] and not action["isExpired"]:
                    pending[action["command"]] = pending.get(action["command"], 0) + 1
            rows.append({"agent_id": agent_id, "pending_actions": pending})
        return Reply(200, {"data": rows})

    # -- search (Kibana signals and Elasticsearch) -------------------------------------------
    def signals_search(self, request: Request, _: re.Match[str]) -> Reply:
        try:
            return Reply(200, search_response(".alerts-security.alerts-default", self.alerts, request.json() or {}))
        except ValueError as exc:
            return self.boom(400, "Bad Request", str(exc))

    def es_search(self, request: Request, match: re.Match[str]) -> Reply:
        headers = {"X-Elastic-Product": "Elasticsearch"}
        if "compatible-with" in (request.header("accept") or ""):
            headers["Content-Type"] = "application/vnd.elasticsearch+json;compatible-with=9"
        if not fnmatch.fnmatch("logs-endpoint.events.process-default", match["index"]):
            body = {
                "error": {
                    "root_cause": [
                        {"type": "index_not_found_exception", "reason": f"no such index [{match['index']}]"}
                    ],
                    "type": "index_not_found_exception",
                    "reason": f"no such index [{match['index']}]",
                },
                "status": 404,
            }
            return Reply(404, body, headers)
        try:
            body = search_response(
                ".ds-logs-endpoint.events.process-default-000001", self.process_docs, request.json() or {}
            )
        except ValueError as exc:
            body = {
                "error": {
                    "root_cause": [{"type": "parsing_exception", "reason": str(exc)}],
                    "type": "parsing_exception",
                    "reason": str(exc),
                },
                "status": 400,
            }
            return Reply(400, body, headers)
        return Reply(200, body, headers)


def search_response(index: str, docs: list[dict[str, Any]], request: dict[str, Any]) -> dict[str, Any]:
    """An ES search response over `docs` for the query subset connectors send (term, range, bool)."""
    predicate = _query(request.get("query") or {"match_all": {}})
    hits = [d for d in docs if predicate(d)]
    for sort in request.get("sort") or []:
        for field_name, spec in sort.items():
            order = spec.get("order", "asc") if isinstance(spec, dict) else spec
            hits.sort(key=lambda d: str(_lookup(d, field_name)), reverse=order == "desc")
    size = int(request.get("size", 10))
    return {
        "took": 1,
        "timed_out": False,
        "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
        "hits": {
            "total": {"value": len(hits), "relation": "eq"},
            "max_score": None,
            "hits": [{"_index": index, "_id": str(n), "_score": None, "_source": d} for n, d in enumerate(hits[:size])],
        },
    }


def _lookup(doc: dict[str, Any], field_name: str) -> Any:
    return doc[field_name] if field_name in doc else resolve(doc, field_name)


def _matches(actual: Any, expected: Any) -> bool:
    values = actual if isinstance(actual, list) else [actual]
    return any(str(v).lower() == str(expected).lower() for v in values)


def _query(clause: dict[str, Any]):
    ((kind, spec),) = clause.items()
    if kind == "match_all":
        return lambda d: True
    if kind == "term":
        ((field_name, value),) = spec.items()
        value = value.get("value") if isinstance(value, dict) else value
        return lambda d: _matches(_lookup(d, field_name), value)
    if kind == "range":
        ((field_name, bounds),) = spec.items()

        def in_range(d: dict[str, Any]) -> bool:
            moment = _time(_lookup(d, field_name))
            low, high = _time(bounds.get("gte")), _time(bounds.get("lte"))
            return moment is not None and (low is None or moment >= low) and (high is None or moment <= high)

        return in_range
    if kind == "bool":
        musts = [_query(c) for c in (spec.get("filter") or []) + (spec.get("must") or [])]
        shoulds = [_query(c) for c in spec.get("should") or []]
        need = int(spec.get("minimum_should_match", 1 if shoulds and not musts else 0))
        return lambda d: all(m(d) for m in musts) and sum(1 for s in shoulds if s(d)) >= need
    raise ValueError(f"unsupported query clause [{kind}]")


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


AGENT_ID = "b35b5962-0c75-4cc5-9f51-8304680f6e92"


def process_doc(
    ts: str, pid: int, parent: int, name: str, cmd: str, parent_name: str = "winword.exe"
) -> dict[str, Any]:
    return {
        "@timestamp": ts,
        "agent": {"id": AGENT_ID, "type": "endpoint"},
        "host": {"name": "ws-042", "hostname": "ws-042"},
        "event": {"category": ["process"], "type": ["start"], "action": "start"},
        "process": {
            "pid": pid,
            "entity_id": f"ent-{pid}",
            "name": name,
            "executable": f"C:\\Windows\\System32\\{name}",
            "command_line": cmd,
            "parent": {
                "pid": parent,
                "name": parent_name,
                "entity_id": f"ent-{parent}",
                "executable": f"C:\\Program Files\\{parent_name}",
            },
        },
        "user": {"name": "alice", "domain": "CONTOSO"},
    }


@pytest.fixture()
def elastic_defend_emulator() -> Iterator[ElasticDefendEmulator]:
    emulator = ElasticDefendEmulator()
    emulator.add_endpoint(AGENT_ID, "ws-042", "10.4.0.42")
    emulator.add_endpoint("0f0e0d0c-0b0a-4909-8807-060504030201", "srv-db01", "10.4.9.5", host_status="offline")
    emulator.alerts = [
        {
            "@timestamp": ts,
            "kibana.alert.uuid": f"u{n}",
            "kibana.alert.rule.name": name,
            "kibana.alert.severity": "high",
            "kibana.alert.workflow_status": status,
            "kibana.alert.reason": f"{name} on ws-042",
            "kibana.alert.rule.threat": [{"tactic": {"name": "Execution"}, "technique": [{"id": "T1059.001"}]}],
            "agent": {"id": AGENT_ID},
            "host": {"name": "ws-042"},
            "user": {"name": "alice"},
            "process": {"pid": 4242, "command_line": "powershell.exe -enc SQBFAFgA"},
        }
        for n, (ts, name, status) in enumerate(
            [
                ("2025-06-02T07:15:00.000Z", "Encoded PowerShell", "open"),
                ("2025-06-02T07:20:00.000Z", "LSASS access via comsvcs", "acknowledged"),
                ("2025-05-01T00:00:00.000Z", "Old alert", "closed"),
            ]
        )
    ]
    emulator.process_docs = [
        process_doc("2025-06-02T07:15:00.000Z", 4242, 1000, "powershell.exe", "powershell.exe -enc SQBFAFgA"),
        process_doc(
            "2025-06-02T07:20:00.000Z",
            4300,
            4242,
            "rundll32.exe",
            "rundll32.exe comsvcs.dll MiniDump",
            "powershell.exe",
        ),
        process_doc("2025-06-01T00:00:00.000Z", 12, 4, "svchost.exe", "svchost.exe -k netsvcs", "services.exe"),
    ]
    emulator.running[AGENT_ID] = [
        {
            "command": "C:\\Windows\\System32\\powershell.exe -enc SQBFAFgA",
            "pid": 4242,
            "entity_id": "ent-4242",
            "user": "alice",
        },
        {"command": "C:\\Windows\\explorer.exe", "pid": 700, "entity_id": "ent-700", "user": "alice"},
    ]
    yield from running(emulator)
