"""A small HTTP(S) emulator harness for the EDR vendor emulators (stdlib only, 127.0.0.1).

Each vendor emulator subclasses `EmulatorServer`, registers routes, and says how it spells
authentication failures and rate limits. The harness gives every emulator the same test levers:
a request log, queued fault replies (5xx, malformed bodies), lost replies (the request is applied, then the
connection is closed unanswered), a request budget per time window that answers 429 with Retry-After, and a
lifecycle that decides how asynchronous actions end.
"""

from __future__ import annotations

import json
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from emulators.wire import hang_up

Handler = Callable[["Request", re.Match[str]], "Reply"]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        """Repeated and comma-separated values (`ids=a&ids=b` or `ids=a,b`)."""
        out: list[str] = []
        for value in self.query.get(name, []):
            out.extend(part for part in value.split(",") if part)
        return out

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8")) if self.body else None

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode("utf-8")).items()}


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    lost: bool = False  # applied, but the connection is closed before any answer


@dataclass
class Fault:
    """A queued fault reply for the requests that match (`method`, a part of the path); `skip` matching requests
    are served normally before it applies."""

    reply: Reply
    method: str | None = None
    path_part: str = ""
    skip: int = 0

    def matches(self, request: Request) -> bool:
        return self.method in (None, request.method) and self.path_part in request.path


@dataclass
class Lifecycle:
    """How an emulated asynchronous action ends: after `reads` status reads, succeed, fail or never."""

    outcome: Literal["succeed", "fail", "never"] = "succeed"
    reads: int = 2


class EmulatorServer:
    """Routing, auth hook, request log, fault injection and rate limiting for one vendor API."""

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = []
        self.log: list[Request] = []
        self.faults: list[Fault] = []
        self.delays: list[tuple[float, str | None]] = []
        self.lost_replies: list[tuple[str | None, str]] = []
        self.window_limit: tuple[int, float] | None = None
        self.lifecycle = Lifecycle()
        self.lock = threading.RLock()
        self._window: list[float] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- to override -------------------------------------------------------------------------
    def authenticate(self, request: Request) -> Reply | None:
        """None when the request may proceed; otherwise the vendor's 401 reply."""
        return None

    def too_many_requests(self, retry_after: float) -> Reply:
        return Reply(429, {"error": "too many requests"}, {"Retry-After": _seconds(retry_after)})

    def not_found(self, request: Request) -> Reply:
        return Reply(404, {"error": f"no route {request.method} {request.path}"})

    def decorate(self, reply: Reply) -> Reply:
        """Add headers every response carries (e.g. Falcon's X-Ratelimit-*)."""
        return reply

    # -- test levers -------------------------------------------------------------------------
    def add(self, method: str, pattern: str, handler: Handler, public: bool = False) -> None:
        """Route `method path-regex` to `handler`; `public` routes (token endpoints) skip auth."""
        self.routes.append((method, re.compile(f"^{pattern}$"), handler, public))

    def fail_next(self, *replies: Reply, after: int = 0, method: str | None = None, path_contains: str = "") -> None:
        """Answer the next requests with these replies before any routing (after the log); with `after=k` the
        next k requests are served normally first (so a fault can land on a send rather than a read). With
        `method` / `path_contains`, only matching requests count and get the faults (the vendor refuses them
        unapplied)."""
        with self.lock:
            self.faults.extend(
                Fault(reply, method, path_contains, after if n == 0 else 0) for n, reply in enumerate(replies)
            )

    def delay_next(self, seconds: float, method: str | None = None) -> None:
        """Process the next (`method`) request normally but answer only after `seconds` (client timeouts)."""
        with self.lock:
            self.delays.append((seconds, method))

    def lose_reply_next(self, method: str | None = None, path_contains: str = "", n: int = 1) -> None:
        """The next `n` matching requests are APPLIED, then the connection is closed unanswered: the client
        cannot know whether its write happened (as splunkd's `lost_reply`)."""
        with self.lock:
            self.lost_replies.extend([(method, path_contains)] * n)

    def throttle(self, max_requests: int, window_s: float) -> None:
        """Allow `max_requests` per `window_s`; the rest get 429 with the remaining wait."""
        with self.lock:
            self.window_limit = (max_requests, window_s)
            self._window.clear()

    def requests(self, method: str | None = None, path: str | None = None) -> list[Request]:
        with self.lock:
            return [r for r in self.log if (method is None or r.method == method) and (path is None or r.path == path)]

    # -- dispatch ----------------------------------------------------------------------------
    def handle(self, request: Request) -> Reply:
        with self.lock:
            reply = self._dispatch(request)
            if self.delays and self.delays[0][1] in (None, request.method):
                reply.delay_s = self.delays.pop(0)[0]
            for rule in self.lost_replies:
                if rule[0] in (None, request.method) and rule[1] in request.path:
                    self.lost_replies.remove(rule)
                    reply.lost = True
                    break
            return reply

    def _dispatch(self, request: Request) -> Reply:
        with self.lock:
            self.log.append(request)
            fault = next((f for f in self.faults if f.matches(request)), None)
            if fault is not None and fault.skip > 0:
                fault.skip -= 1
            elif fault is not None:
                self.faults.remove(fault)
                return self.decorate(fault.reply)
            limited = self._rate_limited()
            if limited is not None:
                return self.decorate(self.too_many_requests(limited))
            for method, pattern, handler, is_public in self.routes:
                match = pattern.match(request.path)
                if match and method == request.method:
                    if not is_public:
                        denied = self.authenticate(request)
                        if denied is not None:
                            return self.decorate(denied)
                    return self.decorate(handler(request, match))
            return self.decorate(self.not_found(request))

    def _rate_limited(self) -> float | None:
        if self.window_limit is None:
            return None
        limit, window = self.window_limit
        now = time.monotonic()
        self._window = [t for t in self._window if now - t < window]
        if len(self._window) >= limit:
            return window - (now - self._window[0])
        self._window.append(now)
        return None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        emulator = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stalls

            def log_message(self, format: str, *args: Any) -> None:
                return None

            def _serve(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = Request(
                    method=self.command,
                    path=unquote(parts.path),
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                try:
                    reply = emulator.handle(request)
                except Exception as exc:  # an emulator bug must show up as a 500, not a hang
                    reply = Reply(500, {"emulator_error": repr(exc)})
                payload = (
                    reply.body
                    if isinstance(reply.body, bytes)
                    else (b"" if reply.body is None else json.dumps(reply.body).encode("utf-8"))
                )
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                if reply.lost:
                    hang_up(self)
                    return
                try:
                    self.send_response(reply.status)
                    headers = {"Content-Type": "application/json", **reply.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        scheme = "http"
        if ssl_context is not None:
            server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
            scheme = "https"
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, name=type(self).__name__, daemon=True
        )
        self._thread.start()
        self.base_url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def running(emulator: EmulatorServer, ssl_context: ssl.SSLContext | None = None) -> Iterator[EmulatorServer]:
    """Fixture body: start on an ephemeral 127.0.0.1 port, yield, shut down."""
    emulator.start(ssl_context)
    try:
        yield emulator
    finally:
        emulator.stop()


class Advancer:
    """Counts status reads of asynchronous actions and says when each one ends, per the lifecycle."""

    def __init__(self, emulator: EmulatorServer, lifecycle: Lifecycle | None = None) -> None:
        self.emulator = emulator
        self.own_lifecycle = lifecycle
        self._reads: dict[str, int] = {}

    def start(self, key: str) -> None:
        self._reads[key] = 0

    def active(self, key: str) -> bool:
        return key in self._reads

    def read(self, key: str) -> Literal["pending", "succeed", "fail"]:
        """One status read; the verdict once `reads` reads have happened (never: always pending)."""
        if key not in self._reads:
            return "pending"
        self._reads[key] += 1
        lifecycle = self.own_lifecycle or self.emulator.lifecycle
        if lifecycle.outcome == "never" or self._reads[key] < lifecycle.reads:
            return "pending"
        del self._reads[key]
        return lifecycle.outcome


def resolve(node: Any, path: str) -> Any:
    """Dotted lookup through nested dicts (the emulators' own, independent of siemcrew's)."""
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _seconds(value: float) -> str:
    rounded = max(0.1, round(value, 1))
    return str(int(rounded)) if rounded == int(rounded) else str(rounded)
