"""CrowdStrike Falcon API emulator: OAuth2 tokens that expire, FQL filters, hosts, alerts v2, RTR.

Faithful to `shared/reference/edr.md`: every body is the `{"meta","resources","errors"}` envelope,
tokens come from `POST /oauth2/token` (form) and last `token_ttl` seconds, containment moves a
device's `status` through `containment_pending` before `contained` (as many host reads as the
lifecycle says), and every response carries `X-Ratelimit-Limit` / `X-Ratelimit-Remaining`. RTR sessions keep
their `origin` and a command log (`logs`: base_command, command_string, cloud_request_id, created_at), listed by
`GET /real-time-response/queries/sessions/v1` (FQL filter, the caller's own sessions only) and read by
`POST /real-time-response/entities/sessions/GET/v1`, whose `logs` appear only `with_command_info=true`.
"""

from __future__ import annotations

import re
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from emulators.edr_common import Advancer, EmulatorServer, Reply, Request, resolve, running

CLIENT_ID = "falcon-test-client"
CLIENT_SECRET = "falcon-test-secret-value"

_TERM = re.compile(r"^(?P<field>[\w.]+):(?P<op>!|>=|<=|>|<)?'(?P<value>[^']*)'$")


class FalconEmulator(EmulatorServer):
    def __init__(self) -> None:
        super().__init__()
        self.token_ttl = 1799.0
        self.tokens: dict[str, float] = {}
        self.token_requests = 0
        self.devices: dict[str, dict[str, Any]] = {}
        self.online: dict[str, str] = {}
        self.alerts: list[dict[str, Any]] = []
        self.processes: dict[str, set[int]] = {}
        self.actions: list[dict[str, Any]] = []
        self.commands: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self._before: dict[str, str] = {}
        self.advancer = Advancer(self)
        self.add("POST", "/oauth2/token", self.token, public=True)
        self.add("GET", "/devices/queries/devices/v1", self.query_devices)
        self.add("GET", "/devices/entities/devices/v2", self.get_devices)
        self.add("GET", "/devices/entities/online-state/v1", self.online_state)
        self.add("POST", "/devices/entities/devices-actions/v2", self.device_action)
        self.add("GET", "/alerts/queries/alerts/v2", self.query_alerts)
        self.add("POST", "/alerts/entities/alerts/v2", self.get_alerts)
        self.add("POST", "/real-time-response/entities/sessions/v1", self.rtr_session)
        self.add("GET", "/real-time-response/queries/sessions/v1", self.rtr_query_sessions)
        self.add("POST", "/real-time-response/entities/sessions/GET/v1", self.rtr_get_sessions)
        self.add("POST", "/real-time-response/entities/active-responder-command/v1", self.rtr_command)
        self.add("GET", "/real-time-response/entities/active-responder-command/v1", self.rtr_status)

    # -- envelope ----------------------------------------------------------------------------
    @staticmethod
    def envelope(
        resources: list[Any] | None = None, errors: list[dict[str, Any]] | None = None, **meta: Any
    ) -> dict[str, Any]:
        return {
            "meta": {"query_time": 0.004, "powered_by": "emulator", "trace_id": str(uuid.uuid4()), **meta},
            "resources": resources if resources is not None else [],
            "errors": errors or [],
        }

    def error(self, status: int, message: str) -> Reply:
        return Reply(status, self.envelope(errors=[{"code": status, "message": message}]))

    def authenticate(self, request: Request) -> Reply | None:
        header = request.header("authorization") or ""
        token = header.removeprefix("Bearer ").strip()
        if not header.startswith("Bearer ") or self.tokens.get(token, 0) <= time.monotonic():
            return self.error(401, "access denied, authorization failed")
        return None

    def too_many_requests(self, retry_after: float) -> Reply:
        """As Falcon answers it: no Retry-After, but `X-RateLimit-RetryAfter`, the epoch second from which
        calls are accepted again (falconpy `_result/_headers.py`)."""
        reply = self.error(429, "API rate limit exceeded.")
        reply.headers["X-RateLimit-RetryAfter"] = str(int(time.time() + max(1, round(retry_after))))
        reply.headers["X-Ratelimit-Remaining"] = "0"
        return reply

    def not_found(self, request: Request) -> Reply:
        return self.error(404, f"no route {request.path}")

    def decorate(self, reply: Reply) -> Reply:
        reply.headers.setdefault("X-Ratelimit-Limit", "6000")
        reply.headers.setdefault("X-Ratelimit-Remaining", "5999")
        return reply

    # -- test levers -------------------------------------------------------------------------
    def add_device(self, aid: str, hostname: str, **fields: Any) -> dict[str, Any]:
        device = {
            "device_id": aid,
            "hostname": hostname,
            "local_ip": fields.pop("local_ip", "10.0.0.10"),
            "platform_name": "Windows",
            "os_version": "Windows 11",
            "agent_version": "7.18.18607.0",
            "external_ip": "198.51.100.7",
            "last_seen": "2025-06-02T07:10:00Z",
            "status": "normal",
            "last_login_user": "alice",
            **fields,
        }
        self.devices[aid] = device
        self.online[aid] = "online"
        self.processes.setdefault(aid, set())
        return device

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def kill_requests(self) -> list[Request]:
        return self.requests("POST", "/real-time-response/entities/active-responder-command/v1")

    def contain_requests(self) -> list[Request]:
        return [
            r
            for r in self.requests("POST", "/devices/entities/devices-actions/v2")
            if r.arg("action_name") == "contain"
        ]

    # -- auth --------------------------------------------------------------------------------
    def token(self, request: Request, _: re.Match[str]) -> Reply:
        self.token_requests += 1
        form = request.form()
        if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
            return self.error(403, "Failed to issue access token - Not Authorized")
        token = secrets.token_hex(16)
        self.tokens[token] = time.monotonic() + self.token_ttl
        return Reply(201, {"access_token": token, "token_type": "bearer", "expires_in": int(self.token_ttl)})

    # -- devices -----------------------------------------------------------------------------
    def query_devices(self, request: Request, _: re.Match[str]) -> Reply:
        matcher = fql(request.arg("filter"))
        if matcher is None:
            return self.error(400, "Invalid filter")
        ids = sorted(aid for aid, d in self.devices.items() if matcher(d))
        offset, limit = int(request.arg("offset", "0") or 0), int(request.arg("limit", "100") or 100)
        page = ids[offset : offset + limit]
        return Reply(200, self.envelope(page, pagination={"offset": offset, "limit": limit, "total": len(ids)}))

    def get_devices(self, request: Request, _: re.Match[str]) -> Reply:
        found = []
        for aid in request.args("ids"):
            if aid in self.devices:
                self._advance(aid)
                found.append(dict(self.devices[aid]))
        if not found:
            return Reply(404, self.envelope(errors=[{"code": 404, "message": "Device not found"}]))
        return Reply(200, self.envelope(found))

    def online_state(self, request: Request, _: re.Match[str]) -> Reply:
        return Reply(
            200, self.envelope([{"id": aid, "state": self.online.get(aid, "unknown")} for aid in request.args("ids")])
        )

    def device_action(self, request: Request, _: re.Match[str]) -> Reply:
        action = request.arg("action_name")
        pending = {"contain": "containment_pending", "lift_containment": "lift_containment_pending"}
        if action not in pending:
            return self.error(400, f"invalid action_name {action!r}")
        body = request.json() or {}
        params = {p.get("name"): p.get("value") for p in body.get("action_parameters") or []}
        resources, errors = [], []
        for aid in body.get("ids") or []:
            device = self.devices.get(aid)
            if device is None:
                errors.append({"code": 404, "message": f"Device {aid} not found"})
                continue
            self.actions.append({"id": aid, "action_name": action, "note": params.get("note")})
            done = "contained" if action == "contain" else "normal"
            if device["status"] != done:  # containing a contained host converges, as Falcon's does
                self._before[aid] = device["status"]
                device["status"] = pending[action]
                self.advancer.start(aid)
            resources.append({"id": aid, "path": ""})
        return Reply(202 if resources else 404, self.envelope(resources, errors))

    def _advance(self, aid: str) -> None:
        verdict = self.advancer.read(aid)
        device = self.devices[aid]
        if verdict == "succeed":
            device["status"] = "contained" if device["status"] == "containment_pending" else "normal"
        elif verdict == "fail":
            device["status"] = self._before.get(aid, "normal")

    # -- alerts ------------------------------------------------------------------------------
    def query_alerts(self, request: Request, _: re.Match[str]) -> Reply:
        matcher = fql(request.arg("filter"))
        if matcher is None:
            return self.error(400, "Invalid filter")
        rows = sorted((a for a in self.alerts if matcher(a)), key=lambda a: a["timestamp"])
        offset, limit = int(request.arg("offset", "0") or 0), int(request.arg("limit", "100") or 100)
        ids = [a["composite_id"] for a in rows[offset : offset + limit]]
        return Reply(200, self.envelope(ids, pagination={"offset": offset, "limit": limit, "total": len(rows)}))

    def get_alerts(self, request: Request, _: re.Match[str]) -> Reply:
        wanted = set((request.json() or {}).get("composite_ids") or [])
        return Reply(200, self.envelope([a for a in self.alerts if a["composite_id"] in wanted]))

    # -- real time response ------------------------------------------------------------------
    def rtr_session(self, request: Request, _: re.Match[str]) -> Reply:
        body = request.json() or {}
        aid = body.get("device_id")
        if aid not in self.devices:
            return self.error(404, "Device not found")
        session_id = str(uuid.uuid4())
        self.sessions[session_id] = {
            "id": session_id,
            "device_id": aid,
            "hostname": self.devices[aid]["hostname"],
            "origin": body.get("origin") or "",
            "user_id": CLIENT_ID,
            "created_at": _now(),
            "logs": [],
        }
        return Reply(201, self.envelope([{"session_id": session_id, "scripts": [], "existing_aid_sessions": 1}]))

    def rtr_query_sessions(self, request: Request, _: re.Match[str]) -> Reply:
        matcher = fql(request.arg("filter"))
        if matcher is None:
            return self.error(400, "Invalid filter")
        ids = [s["id"] for s in sorted(self.sessions.values(), key=lambda s: s["created_at"]) if matcher(s)]
        offset, limit = int(request.arg("offset", "0") or 0), int(request.arg("limit", "100") or 100)
        page = ids[offset : offset + limit]
        return Reply(200, self.envelope(page, pagination={"offset": offset, "limit": limit, "total": len(ids)}))

    def rtr_get_sessions(self, request: Request, _: re.Match[str]) -> Reply:
        with_logs = (request.arg("with_command_info") or "").lower() in ("true", "1")
        found = []
        for session_id in (request.json() or {}).get("ids") or []:
            session = self.sessions.get(session_id)
            if session is not None:
                shown = {k: v for k, v in session.items() if k != "logs"}
                found.append({**shown, "logs": [dict(log) for log in session["logs"]]} if with_logs else shown)
        return Reply(200, self.envelope(found))

    def rtr_command(self, request: Request, _: re.Match[str]) -> Reply:
        body = request.json() or {}
        session = self.sessions.get(body.get("session_id"))
        if session is None:
            return self.error(404, "Session not found")
        aid = session["device_id"]
        match = re.fullmatch(r"kill (\d+)", body.get("command_string") or "")
        if body.get("base_command") != "kill" or not match:
            return self.error(400, "unsupported command")
        request_id = str(uuid.uuid4())
        session["logs"].append({
            "id": len(session["logs"]) + 1,
            "session_id": session["id"],
            "cloud_request_id": request_id,
            "base_command": "kill",
            "command_string": body["command_string"],
            "current_directory": "C:\\",
            "created_at": _now(),
            "updated_at": _now(),
        })
        self.commands[request_id] = {"aid": aid, "pid": int(match.group(1)), "complete": False, "stderr": ""}
        self.advancer.start(request_id)
        return Reply(
            201,
            self.envelope(
                [{"cloud_request_id": request_id, "session_id": body["session_id"], "queued_command_offline": False}]
            ),
        )

    def rtr_status(self, request: Request, _: re.Match[str]) -> Reply:
        command = self.commands.get(request.arg("cloud_request_id") or "")
        if command is None:
            return self.error(404, "Command not found")
        verdict = self.advancer.read(request.arg("cloud_request_id") or "")
        if verdict != "pending" and not command["complete"]:
            command["complete"] = True
            live = self.processes.setdefault(command["aid"], set())
            if verdict == "fail" or command["pid"] not in live:
                command["stderr"] = f"Cannot find process with pid {command['pid']}"
            else:
                live.discard(command["pid"])
                command["stdout"] = f"Process {command['pid']} killed"
        return Reply(
            200,
            self.envelope(
                [
                    {
                        "session_id": "",
                        "task_id": "t1",
                        "complete": command["complete"],
                        "stdout": command.get("stdout", ""),
                        "stderr": command["stderr"],
                        "base_command": "kill",
                    }
                ]
            ),
        )


def fql(expression: str | None):
    """A predicate for the FQL subset connectors send: `a:'x'+b:!'y'+c:>='t'`; None when unparsable."""
    if not expression:
        return lambda record: True
    tests = []
    for term in expression.split("+"):
        match = _TERM.match(term.strip())
        if not match:
            return None
        tests.append((match["field"], match["op"] or "", match["value"]))

    def predicate(record: dict[str, Any]) -> bool:
        for field_name, op, expected in tests:
            actual = resolve(record, field_name)
            if op in ("", "!"):
                same = str(actual).lower() == expected.lower()
                if same == (op == "!"):
                    return False
            else:
                left, right = _moment(actual), _moment(expected)
                if left is None or right is None:
                    return False
                if not {">=": left >= right, "<=": left <= right, ">": left > right, "<": left < right}[op]:
                    return False
        return True

    return predicate


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _moment(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def sample_alert(
    aid: str, hostname: str, n: int, timestamp: str, pid: int, parent_pid: int, **fields: Any
) -> dict[str, Any]:
    return {
        "composite_id": f"cid:ind:{aid}:{n}",
        "device": {"device_id": aid, "hostname": hostname},
        "timestamp": timestamp,
        "created_timestamp": timestamp,
        "display_name": fields.pop("display_name", "EncodedPowerShell"),
        "name": "EncodedPowerShell",
        "description": "A process launched PowerShell with an encoded command.",
        "severity_name": "High",
        "status": fields.pop("status", "new"),
        "tactic": "Execution",
        "technique_id": "T1059.001",
        "filename": "powershell.exe",
        "filepath": "\\Device\\HarddiskVolume3\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
        "cmdline": "powershell.exe -enc SQBFAFgA",
        "local_process_id": str(pid),
        "user_name": "alice",
        "sha256": "a" * 64,
        "parent_details": {
            "filename": "winword.exe",
            "filepath": "\\Device\\HarddiskVolume3\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE",
            "cmdline": "WINWORD.EXE /n invoice.docm",
            "local_process_id": str(parent_pid),
        },
        **fields,
    }


@pytest.fixture()
def falcon_emulator() -> Iterator[FalconEmulator]:
    emulator = FalconEmulator()
    emulator.add_device("4f1c0e5a9b2d4c6e8f0a1b2c3d4e5f60", "WS-042", local_ip="10.1.2.42")
    emulator.add_device("9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d", "SRV-DB01", local_ip="10.1.9.5", last_login_user="svc_sql")
    emulator.processes["4f1c0e5a9b2d4c6e8f0a1b2c3d4e5f60"] = {4242, 1000}
    emulator.alerts = [
        sample_alert("4f1c0e5a9b2d4c6e8f0a1b2c3d4e5f60", "WS-042", 1, "2025-06-02T07:15:00Z", 4242, 1000),
        sample_alert(
            "4f1c0e5a9b2d4c6e8f0a1b2c3d4e5f60",
            "WS-042",
            2,
            "2025-06-02T07:20:00Z",
            4300,
            4242,
            display_name="CredentialDumping",
            cmdline="rundll32.exe comsvcs.dll MiniDump",
            filename="rundll32.exe",
        ),
        sample_alert("4f1c0e5a9b2d4c6e8f0a1b2c3d4e5f60", "WS-042", 3, "2025-05-01T00:00:00Z", 77, 1, status="closed"),
        sample_alert("9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d", "SRV-DB01", 4, "2025-06-02T07:16:00Z", 900, 4),
    ]
    yield from running(emulator)
