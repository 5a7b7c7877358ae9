"""SentinelOne management API emulator (v2.1): ApiToken header, cursor paging, network quarantine, Deep Visibility.

Faithful to `shared/reference/edr.md`: every list is `{"pagination":{"totalItems","nextCursor"},
"errors":null,"data":[…]}`, errors are `{"errors":[{"code","detail","title"}]}`, only the
`Authorization: ApiToken <t>` header authenticates (the query-param form is refused here so a
leak into URLs shows up as a failure), disconnect/connect answer `{"data":{"affected":n}}` and
`networkStatus` moves through disconnecting/connecting, and Deep Visibility queries go
RUNNING → FINISHED | FAILED over status reads.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from emulators.edr_common import Advancer, EmulatorServer, Lifecycle, Reply, Request, running

API = "/web/api/v2.1"
TOKEN = "s1-test-api-token-value"

_DV_TERM = re.compile(r'^(\w+) = "([^"\\]*)"$')


class SentinelOneEmulator(EmulatorServer):
    def __init__(self) -> None:
        super().__init__()
        self.agents: list[dict[str, Any]] = []
        self.threats: list[dict[str, Any]] = []
        self.dv_events: list[dict[str, Any]] = []
        self.dv_lifecycle = Lifecycle(outcome="succeed", reads=2)
        self.dv_queries: dict[str, dict[str, Any]] = {}
        self.applied: list[tuple[str, str]] = []  # (disconnect | connect, agent id) the API acted on
        self.advancer = Advancer(self)
        self.dv_advancer = Advancer(self, self.dv_lifecycle)
        self.add("GET", f"{API}/agents", self.list_agents)
        self.add("POST", f"{API}/agents/actions/(?P<verb>disconnect|connect)", self.network_action)
        self.add("GET", f"{API}/threats", self.list_threats)
        self.add("POST", f"{API}/dv/init-query", self.dv_init)
        self.add("GET", f"{API}/dv/query-status", self.dv_status)
        self.add("GET", f"{API}/dv/events", self.dv_list)

    @staticmethod
    def error(status: int, code: int, title: str, detail: str | None = None) -> Reply:
        return Reply(status, {"errors": [{"code": code, "detail": detail, "title": title}]})

    def authenticate(self, request: Request) -> Reply | None:
        if request.header("authorization") != f"ApiToken {TOKEN}" or "APIToken" in request.query:
            return self.error(401, 4010010, "Authentication Failed")
        return None

    def too_many_requests(self, retry_after: float) -> Reply:
        reply = self.error(429, 4290010, "Too Many Requests", "API rate limit reached")
        reply.headers["Retry-After"] = str(max(1, round(retry_after)))
        return reply

    def not_found(self, request: Request) -> Reply:
        return self.error(404, 4040010, "Not Found", request.path)

    # -- test levers -------------------------------------------------------------------------
    def add_agent(self, agent_id: str, name: str, ip: str, **fields: Any) -> dict[str, Any]:
        agent = {
            "id": agent_id,
            "uuid": str(uuid.uuid4()),
            "computerName": name,
            "osName": "Windows 11 Pro",
            "osRevision": "22631",
            "lastActiveDate": "2025-06-02T07:10:00.000000Z",
            "isActive": True,
            "networkStatus": "connected",
            "activeThreats": 0,
            "infected": False,
            "lastLoggedInUserName": "alice",
            "siteName": "Default site",
            "networkInterfaces": [{"inet": [ip], "name": "Ethernet"}],
            **fields,
        }
        self.agents.append(agent)
        return agent

    def disconnect_requests(self) -> list[Request]:
        return self.requests("POST", f"{API}/agents/actions/disconnect")

    # -- paging ------------------------------------------------------------------------------
    @staticmethod
    def page(request: Request, rows: list[dict[str, Any]]) -> Reply:
        cursor = request.arg("cursor")
        try:
            offset = int(base64.b64decode(cursor).decode()) if cursor else 0
        except (ValueError, UnicodeDecodeError):
            return SentinelOneEmulator.error(400, 4000010, "Validation Error", "invalid cursor")
        limit = int(request.arg("limit", "10") or 10)
        chunk = rows[offset : offset + limit]
        following = offset + limit
        next_cursor = base64.b64encode(str(following).encode()).decode() if following < len(rows) else None
        return Reply(
            200, {"pagination": {"totalItems": len(rows), "nextCursor": next_cursor}, "errors": None, "data": chunk}
        )

    # -- agents ------------------------------------------------------------------------------
    def list_agents(self, request: Request, _: re.Match[str]) -> Reply:
        rows = self.agents
        if request.args("ids"):
            rows = [a for a in rows if a["id"] in request.args("ids")]
        if request.arg("computerName"):
            rows = [a for a in rows if a["computerName"].lower() == request.arg("computerName", "").lower()]
        if request.arg("networkInterfaceInet__contains"):
            needle = request.arg("networkInterfaceInet__contains", "")
            rows = [a for a in rows if any(needle in ip for nic in a["networkInterfaces"] for ip in nic["inet"])]
        for agent in rows:
            verdict = self.advancer.read(agent["id"])
            if verdict == "succeed":
                agent["networkStatus"] = "disconnected" if agent["networkStatus"] == "disconnecting" else "connected"
            elif verdict == "fail":
                agent["networkStatus"] = "connected" if agent["networkStatus"] == "disconnecting" else "disconnected"
        return self.page(request, rows)

    def network_action(self, request: Request, match: re.Match[str]) -> Reply:
        body = request.json() or {}
        ids = ((body.get("filter") or {}).get("ids")) or []
        if not ids:
            return self.error(400, 4000010, "Validation Error", "filter is required")
        moving, settled = (
            ("disconnecting", "disconnected") if match["verb"] == "disconnect" else ("connecting", "connected")
        )
        affected = 0
        for agent in self.agents:
            if agent["id"] in ids and agent["networkStatus"] not in (moving, settled):
                agent["networkStatus"] = moving
                self.advancer.start(agent["id"])
                self.applied.append((match["verb"], agent["id"]))
                affected += 1
        return Reply(200, {"data": {"affected": affected}})

    # -- threats -----------------------------------------------------------------------------
    def list_threats(self, request: Request, _: re.Match[str]) -> Reply:
        rows = [t for t in self.threats if t["agentRealtimeInfo"]["agentId"] in request.args("agentIds")]
        low, high = request.arg("createdAt__gte"), request.arg("createdAt__lte")
        rows = [
            t
            for t in rows
            if (not low or t["threatInfo"]["createdAt"] >= low) and (not high or t["threatInfo"]["createdAt"] <= high)
        ]
        return self.page(request, rows)

    # -- deep visibility ---------------------------------------------------------------------
    def dv_init(self, request: Request, _: re.Match[str]) -> Reply:
        body = request.json() or {}
        terms: dict[str, str] = {}
        for part in str(body.get("query") or "").split(" AND "):
            match = _DV_TERM.match(part.strip())
            if not match:
                return self.error(400, 4000010, "Validation Error", f"invalid query near {part!r}")
            terms[match[1]] = match[2]
        if not body.get("fromDate") or not body.get("toDate"):
            return self.error(400, 4000010, "Validation Error", "fromDate and toDate are required")
        query_id = "q" + uuid.uuid4().hex
        self.dv_queries[query_id] = {"terms": terms, "from": body["fromDate"], "to": body["toDate"], "state": "RUNNING"}
        self.dv_advancer.start(query_id)
        return Reply(200, {"data": {"queryId": query_id}})

    def dv_status(self, request: Request, _: re.Match[str]) -> Reply:
        query = self.dv_queries.get(request.arg("queryId") or "")
        if query is None:
            return self.error(404, 4040010, "Not Found", "query not found")
        verdict = self.dv_advancer.read(request.arg("queryId") or "")
        if verdict != "pending":
            query["state"] = "FINISHED" if verdict == "succeed" else "FAILED"
        return Reply(
            200,
            {"data": {"responseState": query["state"], "progressStatus": 100 if query["state"] != "RUNNING" else 40}},
        )

    def dv_list(self, request: Request, _: re.Match[str]) -> Reply:
        query = self.dv_queries.get(request.arg("queryId") or "")
        if query is None or query["state"] != "FINISHED":
            return self.error(400, 4000020, "Query Not Finished")
        field_map = {"AgentName": "agentName", "EventType": "eventType"}
        rows = [
            e
            for e in self.dv_events
            if all(str(e.get(field_map.get(k, k), "")).lower() == v.lower() for k, v in query["terms"].items())
            and query["from"] <= e["createdAt"] <= query["to"]
        ]
        return self.page(request, rows)


AGENT_ID = "1913920934584665209"


def dv_event(n: int, created: str, pid: int, parent: int, name: str, cmd: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"ev{n}",
        "agentId": AGENT_ID,
        "agentName": "WS-042",
        "eventType": "Process Creation",
        "createdAt": created,
        "pid": str(pid),
        "parentPid": str(parent),
        "processName": name,
        "processImagePath": f"C:\\Windows\\System32\\{name}",
        "processCmd": cmd,
        "parentProcessName": fields.pop("parent_name", "winword.exe"),
        "processUserName": "CONTOSO\\alice",
        "user": "CONTOSO\\alice",
        "sha256": "a" * 64,
        **fields,
    }


@pytest.fixture()
def sentinelone_emulator() -> Iterator[SentinelOneEmulator]:
    emulator = SentinelOneEmulator()
    emulator.add_agent(AGENT_ID, "WS-042", "10.3.0.42", activeThreats=2)
    for n in range(1, 6):
        emulator.add_agent(f"19139209345846652{n:02d}", f"LAB-{n:02d}", f"10.3.1.{n}")
    emulator.threats = [
        {
            "id": f"t{n}",
            "agentRealtimeInfo": {"agentId": AGENT_ID, "agentComputerName": "WS-042"},
            "threatInfo": {
                "threatName": name,
                "classification": "Malware",
                "confidenceLevel": "malicious",
                "mitigationStatus": "not_mitigated",
                "createdAt": created,
                "filePath": f"C:\\Users\\alice\\{name}",
                "processUser": "CONTOSO\\alice",
                "originatorProcess": "winword.exe",
                "sha256": "d" * 64,
            },
        }
        for n, (name, created) in enumerate(
            [
                ("invoice.docm", "2025-06-02T07:14:00.000000Z"),
                ("stage2.dll", "2025-06-02T07:21:00.000000Z"),
                ("dropper.exe", "2025-06-02T07:40:00.000000Z"),
                ("old.exe", "2025-05-01T00:00:00.000000Z"),
            ]
        )
    ]
    emulator.dv_events = [
        dv_event(1, "2025-06-02T07:15:00.000Z", 4242, 1000, "powershell.exe", "powershell.exe -enc SQBFAFgA"),
        dv_event(
            2,
            "2025-06-02T07:20:00.000Z",
            4300,
            4242,
            "rundll32.exe",
            "rundll32.exe comsvcs.dll MiniDump",
            parent_name="powershell.exe",
        ),
        dv_event(3, "2025-06-02T07:25:00.000Z", 5000, 700, "notepad.exe", "notepad.exe", parent_name="explorer.exe"),
        dv_event(
            4, "2025-06-01T01:00:00.000Z", 10, 4, "svchost.exe", "svchost.exe -k netsvcs", parent_name="services.exe"
        ),
    ]
    yield from running(emulator)
