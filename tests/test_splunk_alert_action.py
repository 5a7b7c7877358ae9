"""The app's alert action script, run as splunkd runs it, against a recording HTTP receiver.

`python3 bin/siemcrew_investigate.py --execute` with the JSON payload on stdin and a gzipped CSV
results file (multivalue `__mv_` columns included). The receiver answers like `siemcrew serve`'s
`/v1/alerts/splunk` contract and like splunkd's storage/passwords endpoint for the token.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from emulators.splunkd import make_tls_material
from siemcrew.connectors.splunk.app_builder import APP_SOURCE
from siemcrew.connectors.splunk.intake import SplunkActionHandoff

SCRIPT = APP_SOURCE / "bin" / "siemcrew_investigate.py"
SESSION_KEY = "onrmI0ToM9zNp5BLDl_EXAMPLE"
SERVE_TOKEN = "serve-token-123"
SID = "scheduler__admin__search__RMD5e7649a8a42798738_at_1714557600_2"
STORE_PATH = "/servicesNS/nobody/siemcrew/storage/passwords/siemcrew%3Aserve_token%3A"


@dataclass
class Receiver:
    """siemcrew serve's hand-off endpoint and splunkd's credential store, recording what they get."""

    token: str = SERVE_TOKEN
    stored_token: str | None = SERVE_TOKEN
    answers: list[int] = field(default_factory=list)
    posts: list[dict[str, Any]] = field(default_factory=list)
    lookups: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[str, list[str]] = field(default_factory=dict)
    url: str = ""


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def reply(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            receiver.lookups.append({"path": self.path, "authorization": self.headers.get("Authorization")})
            if not self.path.startswith(STORE_PATH) or self.headers.get("Authorization") != f"Splunk {SESSION_KEY}":
                return self.reply(401, {"messages": [{"type": "ERROR", "text": "Unauthorized"}]})
            if receiver.stored_token is None:
                return self.reply(404, {"messages": [{"type": "ERROR", "text": "Could not find object"}]})
            entry = {"name": "siemcrew:serve_token:", "content": {"clear_password": receiver.stored_token, "realm": "siemcrew"}}
            self.reply(200, {"entry": [entry]})

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            receiver.posts.append({"path": self.path, "headers": dict(self.headers), "raw": raw})
            if self.path != "/v1/alerts/splunk":
                return self.reply(404, {"detail": "not found"})
            if self.headers.get("Authorization") != f"Bearer {receiver.token}":
                return self.reply(401, {"detail": "bad token"})
            if receiver.answers:
                status = receiver.answers.pop(0)
                return self.reply(status, {"detail": f"injected {status}"})
            try:
                body = SplunkActionHandoff.model_validate_json(raw)
            except ValueError as exc:
                return self.reply(422, {"detail": str(exc)[:200]})
            if body.sid in receiver.accepted:
                return self.reply(200, {"accepted": 0, "case_ids": receiver.accepted[body.sid], "duplicate": True})
            receiver.accepted[body.sid] = [f"case-{len(receiver.accepted) + 1}"]
            self.reply(202, {"accepted": len(body.rows), "case_ids": receiver.accepted[body.sid], "duplicate": False})

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    yield from _serve(Receiver())


def _serve(state: Receiver, context: ssl.SSLContext | None = None) -> Iterator[Receiver]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    state.url = f"{'https' if context else 'http'}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def results_file(directory: Path, rows: list[dict[str, Any]] | None = None) -> Path:
    """A results.csv.gz as splunkd writes it: multivalue fields joined by newlines plus `__mv_` columns."""
    rows = rows if rows is not None else [
        {"_time": "1714557600", "src": "10.0.0.5", "dest": "dc01", "user": ["alice", "svc$backup"], "count": "42"},
        {"_time": "1714557660", "src": "10.0.0.9", "dest": "dc02", "user": "bob", "count": "17"},
    ]
    names = [k for row in rows for k in row]
    names = list(dict.fromkeys(names))
    mv_names = [n for n in names if any(isinstance(row.get(n), list) for row in rows)]
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(names + [f"__mv_{n}" for n in mv_names])
    for row in rows:
        plain = ["\n".join(row[n]) if isinstance(row.get(n), list) else row.get(n, "") for n in names]
        encoded = ["".join(f"${v.replace('$', '$$')}$;" for v in row[n])[:-1] if isinstance(row.get(n), list) else "" for n in mv_names]
        writer.writerow(plain + encoded)
    path = directory / "results.csv.gz"
    path.write_bytes(gzip.compress(buffer.getvalue().encode("utf-8")))
    return path


def payload(receiver: Receiver, results: Path, **config: str) -> dict[str, Any]:
    return {
        "app": "search",
        "owner": "admin",
        "results_file": str(results),
        "results_link": f"http://sh01.example.com:8000/app/search/@go?sid={SID}",
        "search_uri": "/servicesNS/admin/search/saved/searches/SOC+-+Excessive+Failed+Logins",
        "server_host": "sh01.example.com",
        "server_uri": receiver.url,
        "session_key": SESSION_KEY,
        "sid": SID,
        "search_name": "SOC - Excessive Failed Logins",
        "configuration": {"serve_url": receiver.url, "max_rows": "100", "timeout": "5", "retries": "3",
                          "siemcrew_token": "must-not-travel", **config},
        "result": {"_time": "1714557600", "src": "10.0.0.5", "dest": "dc01", "user": ["alice", "svc_backup"], "count": "42"},
    }


def run(body: Any, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("SIEMCREW_SERVE_TOKEN", "SPLUNK_HOME")}
    environment.update(env or {})
    stdin = body if isinstance(body, str) else json.dumps(body)
    argv = [sys.executable, "-B", str(SCRIPT), *(args or ("--execute",))]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, env=environment)


def test_rows_are_handed_off_with_the_stored_token_and_no_session_key(receiver: Receiver, tmp_path: Path) -> None:
    started = time.monotonic()
    done = run(payload(receiver, results_file(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 10
    assert done.stderr.startswith("INFO ") and "accepted" in done.stderr and "case-1" in done.stderr
    [post] = receiver.posts
    assert post["headers"]["Authorization"] == f"Bearer {SERVE_TOKEN}"
    assert post["headers"]["Content-Type"] == "application/json"
    body = json.loads(post["raw"])
    assert set(body) == {"sid", "search_name", "app", "owner", "results_link", "server_uri", "configuration", "rows"}
    assert body["sid"] == SID and body["search_name"] == "SOC - Excessive Failed Logins"
    assert body["rows"] == [
        {"_time": "1714557600", "src": "10.0.0.5", "dest": "dc01", "user": ["alice", "svc$backup"], "count": "42"},
        {"_time": "1714557660", "src": "10.0.0.9", "dest": "dc02", "user": "bob", "count": "17"},
    ]
    assert "siemcrew_token" not in body["configuration"] and body["configuration"]["serve_url"] == receiver.url
    assert SESSION_KEY.encode() not in post["raw"] and b"must-not-travel" not in post["raw"]
    assert receiver.lookups == [{"path": STORE_PATH + "?output_mode=json", "authorization": f"Splunk {SESSION_KEY}"}]


def test_a_retried_alert_is_recognised_as_a_duplicate(receiver: Receiver, tmp_path: Path) -> None:
    body = payload(receiver, results_file(tmp_path))
    assert run(body).returncode == 0
    again = run(body)
    assert again.returncode == 0 and "already handed off" in again.stderr
    assert len(receiver.posts) == 2 and list(receiver.accepted) == [SID]


def test_5xx_answers_are_retried_with_backoff(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answers = [503, 502]
    done = run(payload(receiver, results_file(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert len(receiver.posts) == 3 and done.stderr.count("WARN hand-off attempt") == 2


def test_a_rejected_token_fails_the_action_without_retrying(receiver: Receiver, tmp_path: Path) -> None:
    receiver.stored_token = "stale-token"
    done = run(payload(receiver, results_file(tmp_path)))
    assert done.returncode == 2 and "ERROR" in done.stderr and "rejected the token" in done.stderr
    assert "stale-token" not in done.stderr and len(receiver.posts) == 1


def test_a_refused_payload_is_not_retried(receiver: Receiver, tmp_path: Path) -> None:
    receiver.answers = [422]
    done = run(payload(receiver, results_file(tmp_path)))
    assert done.returncode == 2 and "HTTP 422" in done.stderr and len(receiver.posts) == 1


def test_an_unreachable_service_fails_within_seconds(receiver: Receiver, tmp_path: Path) -> None:
    body = payload(receiver, results_file(tmp_path), serve_url="http://127.0.0.1:9", retries="1")
    started = time.monotonic()
    done = run(body)
    assert done.returncode == 2 and "unreachable after 2 attempts" in done.stderr
    assert time.monotonic() - started < 10


def test_without_execute_the_script_refuses(receiver: Receiver, tmp_path: Path) -> None:
    done = run(payload(receiver, results_file(tmp_path)), "--setup")
    assert done.returncode == 1 and done.stderr.startswith("FATAL") and not receiver.posts


def test_a_malformed_payload_fails_cleanly(receiver: Receiver) -> None:
    done = run("{not json")
    assert done.returncode == 2 and done.stderr.startswith("ERROR invalid alert payload") and "Traceback" not in done.stderr


def test_the_token_can_come_from_splunkds_environment(receiver: Receiver, tmp_path: Path) -> None:
    receiver.stored_token = None
    done = run(payload(receiver, results_file(tmp_path)), env={"SIEMCREW_SERVE_TOKEN": SERVE_TOKEN})
    assert done.returncode == 0, done.stderr
    assert "WARN credential store lookup failed (404)" in done.stderr


def test_no_token_anywhere_is_a_clear_error(receiver: Receiver, tmp_path: Path) -> None:
    receiver.stored_token = None
    done = run(payload(receiver, results_file(tmp_path)))
    assert done.returncode == 2 and "no siemcrew serve token" in done.stderr and not receiver.posts


def test_max_rows_caps_the_handoff(receiver: Receiver, tmp_path: Path) -> None:
    rows = [{"_time": str(1714557600 + i), "dest": f"wks-{i}"} for i in range(5)]
    done = run(payload(receiver, results_file(tmp_path, rows), max_rows="2"))
    assert done.returncode == 0, done.stderr
    assert [r["dest"] for r in json.loads(receiver.posts[0]["raw"])["rows"]] == ["wks-0", "wks-1"]
    assert "WARN 5 result rows; handing off the first 2" in done.stderr


def test_without_a_results_file_the_first_result_is_handed_off(receiver: Receiver, tmp_path: Path) -> None:
    done = run(payload(receiver, tmp_path / "gone.csv.gz"))
    assert done.returncode == 0, done.stderr
    assert json.loads(receiver.posts[0]["raw"])["rows"] == [payload(receiver, tmp_path)["result"]]


def test_tls_is_verified_for_serve_and_for_splunkd(tmp_path: Path) -> None:
    tls = make_tls_material(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    splunk_home = tmp_path / "splunk"
    (splunk_home / "etc" / "auth").mkdir(parents=True)
    (splunk_home / "etc" / "auth" / "cacert.pem").write_bytes(tls.ca_file.read_bytes())
    for state in _serve(Receiver(), context):
        results = results_file(tmp_path)
        untrusted = run(payload(state, results, retries="0"), env={"SPLUNK_HOME": str(splunk_home)})
        assert untrusted.returncode == 2 and "not trusted" in untrusted.stderr and not state.posts
        trusted = run(payload(state, results, ca_file=str(tls.ca_file)), env={"SPLUNK_HOME": str(splunk_home)})
        assert trusted.returncode == 0, trusted.stderr
        assert len(state.posts) == 1 and state.lookups[-1]["authorization"] == f"Splunk {SESSION_KEY}"
