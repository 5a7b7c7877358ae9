"""Microsoft Defender for Endpoint emulator: Entra ID tokens, OData machines, machine actions, Graph hunting.

Faithful to `shared/reference/edr.md`: tokens from `/{tenant}/oauth2/v2.0/token` are scoped to one
audience (Defender API or Graph), errors are `{"error":{"code","message","target"}}` (Entra's own
`{"error","error_description"}` on the token endpoint), `$filter` works only on the properties each list
documents (machines: computerDnsName, lastIpAddress, …; machine actions: id, status, machineId, type, requestor,
creationDateTimeUtc — not requestorComment), with `eq`, `startswith` and date comparisons (`ge`, `gt`, `le`,
`lt`), lists page with `@odata.nextLink`, machine actions go
Pending → InProgress → Succeeded | Failed | TimeOut, and a second isolation while one is pending
is refused with `ActiveRequestAlreadyExists`. `runHuntingQuery` executes the small KQL subset the
connector writes (table, where ==/=~/between/or, project, order by, take) and rejects the rest.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest

from emulators.edr_common import Advancer, EmulatorServer, Reply, Request, running

TENANT = "contoso-tenant-0001"
CLIENT_ID = "mde-test-client"
CLIENT_SECRET = "mde-test-secret-value"
API_SCOPE = "https://api.securitycenter.microsoft.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"

_ODATA_EQ = re.compile(r"^(\w+) eq '((?:[^']|'')*)'$")
_ODATA_DATE = re.compile(r"^(\w+) (ge|gt|le|lt) (\d{4}-\d{2}-\d{2}T[\d:.]+Z)$")
_FILTERABLE = {
    "Machines": {"computerDnsName", "id", "lastIpAddress", "healthStatus", "osPlatform", "riskScore", "lastSeen",
                 "exposureLevel", "machineTags", "rbacGroupId", "aadDeviceId", "onboardingStatus", "version"},
    "MachineActions": {"id", "status", "machineId", "type", "requestor", "creationDateTimeUtc"},
    "Alerts": {"alertCreationTime", "lastUpdateTime", "incidentId", "InvestigationId", "id", "asssignedTo",
               "detectionSource", "lastEventTime", "status", "severity", "category"},
}
_ODATA_STARTSWITH = re.compile(r"^startswith\((\w+),'((?:[^']|'')*)'\)$")
_WHERE_CMP = re.compile(r'^(\w+) (==|=~) ("(?:[^"\\]|\\.)*"|-?\d+)$')
_BETWEEN = re.compile(r"^Timestamp between \(datetime\(([^)]+)\) \.\. datetime\(([^)]+)\)\)$")


class DefenderEmulator(EmulatorServer):
    def __init__(self) -> None:
        super().__init__()
        self.tokens: dict[str, tuple[str, float]] = {}
        self.token_requests = 0
        self.page_size = 50
        self.machines: dict[str, dict[str, Any]] = {}
        self.logon_users: dict[str, list[dict[str, Any]]] = {}
        self.alerts: list[dict[str, Any]] = []
        self.machine_actions: dict[str, dict[str, Any]] = {}
        self.process_events: list[dict[str, Any]] = []
        self.hunting_queries: list[str] = []
        self.fail_status = "Failed"
        self.advancer = Advancer(self)
        self.add("POST", r"/(?P<tenant>[^/]+)/oauth2/v2\.0/token", self.token, public=True)
        self.add("GET", "/api/machines", self.list_machines)
        self.add("GET", r"/api/machines/(?P<id>[^/]+)", self.get_machine)
        self.add("GET", r"/api/machines/(?P<id>[^/]+)/logonusers", self.get_logon_users)
        self.add("GET", r"/api/machines/(?P<id>[^/]+)/alerts", self.get_machine_alerts)
        self.add("POST", r"/api/machines/(?P<id>[^/]+)/(?P<verb>isolate|unisolate)", self.isolate)
        self.add("GET", "/api/machineactions", self.list_actions)
        self.add("GET", r"/api/machineactions/(?P<id>[^/]+)", self.get_action)
        self.add("POST", "/v1.0/security/runHuntingQuery", self.hunt)

    # -- envelope ----------------------------------------------------------------------------
    @staticmethod
    def error(status: int, code: str, message: str) -> Reply:
        return Reply(status, {"error": {"code": code, "message": message, "target": str(uuid.uuid4())}})

    def authenticate(self, request: Request) -> Reply | None:
        token = (request.header("authorization") or "").removeprefix("Bearer ").strip()
        scope, expires = self.tokens.get(token, ("", 0.0))
        wanted = GRAPH_SCOPE if request.path.startswith("/v1.0/") else API_SCOPE
        if expires <= time.monotonic() or scope != wanted:
            return self.error(401, "Unauthorized", "Authorization has been denied for this request.")
        return None

    def too_many_requests(self, retry_after: float) -> Reply:
        reply = self.error(429, "TooManyRequests", "API calls quota exceeded! Maximum allowed 100 per 1 minute.")
        reply.headers["Retry-After"] = str(max(1, round(retry_after)))
        return reply

    def not_found(self, request: Request) -> Reply:
        return self.error(404, "ResourceNotFound", f"No route {request.path}")

    # -- test levers -------------------------------------------------------------------------
    def add_machine(self, machine_id: str, dns_name: str, **fields: Any) -> dict[str, Any]:
        machine = {
            "id": machine_id,
            "computerDnsName": dns_name,
            "osPlatform": "Windows11",
            "osVersion": "10.0.22631",
            "lastSeen": "2025-06-02T07:10:00Z",
            "healthStatus": "Active",
            "riskScore": "High",
            "exposureLevel": "Medium",
            "lastIpAddress": "10.2.0.42",
            **fields,
        }
        self.machines[machine_id] = machine
        return machine

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def add_action(self, machine_id: str, kind: str, comment: str, status: str = "Succeeded",
                   requestor: str = "analyst@contoso.com") -> dict[str, Any]:
        """A machine action someone else sent (from the portal or another tool); `Pending` ones advance as ours do."""
        now = _utc_now()
        action = {"id": str(uuid.uuid4()), "type": kind, "scope": "Full" if kind == "Isolate" else None,
                  "requestor": requestor, "requestorComment": comment, "status": status, "machineId": machine_id,
                  "computerDnsName": self.machines[machine_id]["computerDnsName"], "creationDateTimeUtc": now,
                  "lastUpdateDateTimeUtc": now}
        self.machine_actions[action["id"]] = action
        if status == "Pending":
            self.advancer.start(action["id"])
        return action

    def isolate_requests(self) -> list[Request]:
        return [r for r in self.requests("POST") if r.path.endswith("/isolate")]

    # -- token -------------------------------------------------------------------------------
    def token(self, request: Request, match: re.Match[str]) -> Reply:
        self.token_requests += 1
        form = request.form()
        if match["tenant"] != TENANT:
            return Reply(
                400,
                {
                    "error": "invalid_request",
                    "error_description": f"AADSTS90002: Tenant '{match['tenant']}' not found.",
                },
            )
        if form.get("grant_type") != "client_credentials" or form.get("scope") not in (API_SCOPE, GRAPH_SCOPE):
            return Reply(
                400,
                {
                    "error": "invalid_scope",
                    "error_description": "AADSTS70011: The provided value for scope is not valid.",
                },
            )
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return Reply(
                401,
                {
                    "error": "invalid_client",
                    "error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 0000",
                    "error_codes": [7000215],
                },
            )
        token = secrets.token_hex(16)
        self.tokens[token] = (form["scope"], time.monotonic() + 3599)
        return Reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token})

    # -- OData lists -------------------------------------------------------------------------
    def odata(self, request: Request, rows: list[dict[str, Any]], context: str) -> Reply:
        expression = request.arg("$filter")
        if expression:
            tests = []
            for clause in expression.split(" and "):
                clause = clause.strip()
                match = _ODATA_EQ.match(clause) or _ODATA_STARTSWITH.match(clause) or _ODATA_DATE.match(clause)
                if not match:
                    return self.error(400, "ODataError", f"Invalid filter clause: {clause}")
                if match[1] not in _FILTERABLE[context]:
                    return self.error(400, "ODataError", f"Filtering on property {match[1]} is not supported")
                tests.append(_odata_test(match))
            rows = [r for r in rows if all(test(r) for test in tests)]
        skip = int(request.arg("$skip", "0") or 0)
        top = min(int(request.arg("$top", str(self.page_size)) or self.page_size), self.page_size)
        body: dict[str, Any] = {
            "@odata.context": f"{self.base_url}/api/$metadata#{context}",
            "value": rows[skip : skip + top],
        }
        if skip + top < len(rows):
            query = {"$top": top, "$skip": skip + top, **({"$filter": expression} if expression else {})}
            body["@odata.nextLink"] = f"{self.base_url}{request.path}?{urlencode(query)}"
        return Reply(200, body)

    # -- machines ----------------------------------------------------------------------------
    def list_machines(self, request: Request, _: re.Match[str]) -> Reply:
        return self.odata(request, list(self.machines.values()), "Machines")

    def _machine_or_404(self, machine_id: str) -> Reply | None:
        if machine_id not in self.machines:
            return self.error(404, "ResourceNotFound", f"Machine {machine_id} was not found")
        return None

    def get_machine(self, request: Request, match: re.Match[str]) -> Reply:
        return self._machine_or_404(match["id"]) or Reply(200, self.machines[match["id"]])

    def get_logon_users(self, request: Request, match: re.Match[str]) -> Reply:
        return self._machine_or_404(match["id"]) or Reply(200, {"value": self.logon_users.get(match["id"], [])})

    def get_machine_alerts(self, request: Request, match: re.Match[str]) -> Reply:
        missing = self._machine_or_404(match["id"])
        rows = [a for a in self.alerts if a["machineId"] == match["id"]]
        return missing or self.odata(request, rows, "Alerts")

    # -- machine actions ---------------------------------------------------------------------
    def isolate(self, request: Request, match: re.Match[str]) -> Reply:
        missing = self._machine_or_404(match["id"])
        if missing:
            return missing
        body = request.json() or {}
        if not body.get("Comment"):
            return self.error(400, "BadRequest", "Comment is required")
        kind = "Isolate" if match["verb"] == "isolate" else "Unisolate"
        if kind == "Isolate" and body.get("IsolationType") not in ("Full", "Selective"):
            return self.error(400, "BadRequest", "IsolationType must be Full or Selective")
        for existing in self.machine_actions.values():
            if (
                existing["machineId"] == match["id"]
                and existing["type"] == kind
                and existing["status"] in ("Pending", "InProgress")
            ):
                return self.error(400, "ActiveRequestAlreadyExists", f"{kind} action is already in progress")
        action_id = str(uuid.uuid4())
        now = _utc_now()
        action = {
            "id": action_id,
            "type": kind,
            "scope": body.get("IsolationType") if kind == "Isolate" else None,
            "requestor": CLIENT_ID,
            "requestorComment": body["Comment"],
            "status": "Pending",
            "machineId": match["id"],
            "computerDnsName": self.machines[match["id"]]["computerDnsName"],
            "creationDateTimeUtc": now,
            "lastUpdateDateTimeUtc": now,
        }
        self.machine_actions[action_id] = action
        self.advancer.start(action_id)
        return Reply(201, dict(action))

    def list_actions(self, request: Request, _: re.Match[str]) -> Reply:
        for action_id in list(self.machine_actions):
            self._advance(action_id)
        return self.odata(request, list(self.machine_actions.values()), "MachineActions")

    def get_action(self, request: Request, match: re.Match[str]) -> Reply:
        if match["id"] not in self.machine_actions:
            return self.error(404, "ResourceNotFound", f"Machine action {match['id']} was not found")
        self._advance(match["id"])
        return Reply(200, dict(self.machine_actions[match["id"]]))

    def _advance(self, action_id: str) -> None:
        action = self.machine_actions[action_id]
        if not self.advancer.active(action_id):
            return
        verdict = self.advancer.read(action_id)
        if verdict == "pending":
            action["status"] = "InProgress"
        else:
            action["status"] = "Succeeded" if verdict == "succeed" else self.fail_status
        action["lastUpdateDateTimeUtc"] = _utc_now()

    # -- hunting -----------------------------------------------------------------------------
    def hunt(self, request: Request, _: re.Match[str]) -> Reply:
        query = str((request.json() or {}).get("Query") or "")
        self.hunting_queries.append(query)
        try:
            rows = run_kql(query, {"DeviceProcessEvents": self.process_events})
        except ValueError as exc:
            return self.error(400, "BadRequest", f"Query could not be parsed: {exc}")
        schema = [{"name": k, "type": "String"} for k in (rows[0] if rows else {})]
        return Reply(
            200,
            {
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#microsoft.graph.security.huntingQueryResults",
                "schema": schema,
                "results": rows,
            },
        )


def _odata_test(match: re.Match[str]) -> Callable[[dict[str, Any]], bool]:
    """One `$filter` clause as a row predicate (eq, startswith, or a date comparison)."""
    field_name = match[1]
    if match.re is _ODATA_DATE:
        bound, op = _instant(match[3]), match[2]
        compare = {"ge": bound.__le__, "gt": bound.__lt__, "le": bound.__ge__, "lt": bound.__gt__}[op]
        return lambda row: row.get(field_name) is not None and compare(_instant(str(row[field_name])))
    value = match[2].replace("''", "'")
    if match.re is _ODATA_STARTSWITH:
        return lambda row: str(row.get(field_name)).startswith(value)
    return lambda row: str(row.get(field_name)) == value


def _utc_now() -> str:
    """Defender's timestamps: UTC with a `Z` (e.g. 2018-12-04T12:18:27.1293487Z)."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def run_kql(query: str, tables: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Execute the KQL subset; ValueError for anything else (as Graph would refuse it)."""
    stages = [s.strip() for s in re.split(r"\n\s*\|", query)]
    if not stages or stages[0] not in tables:
        raise ValueError(f"unknown table {stages[0] if stages else ''!r}")
    rows = list(tables[stages[0]])
    for stage in stages[1:]:
        if stage.startswith("where "):
            rows = [r for r in rows if _where(stage[6:].strip())(r)]
        elif stage.startswith("project "):
            columns = [c.strip() for c in stage[8:].split(",")]
            rows = [{c: r.get(c) for c in columns} for r in rows]
        elif match := re.fullmatch(r"order by (\w+) (asc|desc)", stage):
            rows.sort(key=lambda r: str(r.get(match[1])), reverse=match[2] == "desc")
        elif match := re.fullmatch(r"take (\d+)", stage):
            rows = rows[: int(match[1])]
        else:
            raise ValueError(f"unsupported operator in {stage!r}")
    return rows


def _where(clause: str):
    between = _BETWEEN.match(clause)
    if between:
        start, end = (datetime.fromisoformat(v.replace("Z", "+00:00")) for v in between.groups())
        return lambda r: start <= datetime.fromisoformat(str(r["Timestamp"]).replace("Z", "+00:00")) <= end
    tests = []
    for part in clause.split(" or "):
        match = _WHERE_CMP.match(part.strip())
        if not match:
            raise ValueError(f"cannot parse where clause {part!r}")
        field_name, op, literal = match.groups()
        value: Any = int(literal) if not literal.startswith('"') else re.sub(r"\\(.)", r"\1", literal[1:-1])
        tests.append((field_name, op, value))

    def predicate(row: dict[str, Any]) -> bool:
        for field_name, op, value in tests:
            actual = row.get(field_name)
            if op == "=~" and str(actual).lower() == str(value).lower():
                return True
            if op == "==" and actual == value:
                return True
        return False

    return predicate


MACHINE_ID = "7b1f4967d9728e5aa3c06a9f617b3cb1a3a3b8e7"


@pytest.fixture()
def defender_emulator() -> Iterator[DefenderEmulator]:
    emulator = DefenderEmulator()
    emulator.add_machine(MACHINE_ID, "ws-042.contoso.com")
    emulator.add_machine(
        "1e5c0b7ad3a1b1f4c1b4e2d4a6f1f0c9e8d7c6b5",
        "srv-db01.contoso.com",
        lastIpAddress="10.2.9.5",
        healthStatus="Inactive",
    )
    emulator.logon_users[MACHINE_ID] = [{"accountName": "alice", "accountDomain": "CONTOSO"}]
    emulator.alerts = [
        {
            "id": f"da63780{n}",
            "machineId": MACHINE_ID,
            "computerDnsName": "ws-042.contoso.com",
            "title": title,
            "description": "",
            "severity": "High",
            "status": status,
            "category": "Execution",
            "mitreTechniques": ["T1059.001"],
            "alertCreationTime": created,
        }
        for n, (title, status, created) in enumerate(
            [
                ("Suspicious PowerShell command line", "New", "2025-06-02T07:15:00Z"),
                ("Credential dumping via comsvcs.dll", "InProgress", "2025-06-02T07:20:00Z"),
                ("Old resolved alert", "Resolved", "2025-05-01T00:00:00Z"),
            ]
        )
    ]
    emulator.process_events = [
        {
            "Timestamp": "2025-06-02T07:15:00Z",
            "DeviceId": MACHINE_ID,
            "DeviceName": "ws-042.contoso.com",
            "ProcessId": 4242,
            "FileName": "powershell.exe",
            "FolderPath": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
            "ProcessCommandLine": "powershell.exe -enc SQBFAFgA",
            "SHA256": "a" * 64,
            "InitiatingProcessId": 1000,
            "InitiatingProcessFileName": "winword.exe",
            "InitiatingProcessFolderPath": "C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE",
            "InitiatingProcessCommandLine": "WINWORD.EXE /n invoice.docm",
            "AccountName": "alice",
            "AccountDomain": "contoso",
        },
        {
            "Timestamp": "2025-06-02T07:20:00Z",
            "DeviceId": MACHINE_ID,
            "DeviceName": "ws-042.contoso.com",
            "ProcessId": 4300,
            "FileName": "rundll32.exe",
            "FolderPath": "C:\\Windows\\System32\\rundll32.exe",
            "ProcessCommandLine": "rundll32.exe comsvcs.dll MiniDump",
            "SHA256": "b" * 64,
            "InitiatingProcessId": 4242,
            "InitiatingProcessFileName": "powershell.exe",
            "InitiatingProcessFolderPath": "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
            "InitiatingProcessCommandLine": "powershell.exe -enc SQBFAFgA",
            "AccountName": "alice",
            "AccountDomain": "contoso",
        },
        {
            "Timestamp": "2025-06-01T03:00:00Z",
            "DeviceId": MACHINE_ID,
            "DeviceName": "ws-042.contoso.com",
            "ProcessId": 9,
            "FileName": "svchost.exe",
            "FolderPath": "C:\\Windows\\System32\\svchost.exe",
            "ProcessCommandLine": "svchost.exe -k netsvcs",
            "SHA256": "c" * 64,
            "InitiatingProcessId": 4,
            "InitiatingProcessFileName": "services.exe",
            "InitiatingProcessFolderPath": "C:\\Windows\\System32\\services.exe",
            "InitiatingProcessCommandLine": "services.exe",
            "AccountName": "system",
            "AccountDomain": "nt authority",
        },
    ]
    yield from running(emulator)
