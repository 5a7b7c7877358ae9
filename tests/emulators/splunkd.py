"""A splunkd on 127.0.0.1 that the real splunk-sdk talks to (HTTP or HTTPS with a throwaway CA).

It reproduces what the SDK depends on (see shared/reference/splunk.md): login and bearer auth,
server/info choosing v1 or v2 job paths by version, job create -> 204 on the first status poll ->
Atom status -> one-line JSON results with the 100-row default and paging, NDJSON export with
preview sets for transforming searches, saved searches and dispatch, ES `notable_update` with
the `notable` macro reading the review state back, HEC with its error codes, receivers/simple,
and XML `<msg>` errors. Searches are evaluated over the loaded events by `splunk_spl`, in the
search mode the job asks for: REST jobs run in fast mode unless `adhoc_search_level` says otherwise,
so results carry only the default fields and the fields the search names (or `rf` requires).
Windows events are best loaded as the Splunk add-ons index them (`splunk_ta.py`).

Faults on demand with `fail_next(kind, n, **options)`:
  "expire"      the session keys expire: the next n authenticated requests get 401
  "quota"       503 concurrency-limit answer on the next n search dispatches
  "slow"        the next n jobs stay RUNNING for `polls` status polls (default 3)
  "job_failed"  the next n jobs end FAILED with a fatal message
  "drop"        the next n requests whose path contains `path` get the connection closed unanswered
  "cut_export"  the next n export streams are cut after the first line
  "hec_busy"    HEC answers 503 "Server is busy" (code 9) n times
  "status"      the next n requests whose path contains `path` get HTTP `code` (default 500)
  "garbage"     the next n requests whose path contains `path` get 200 with a body that is not JSON/XML
  "lost_reply"  the next n requests whose path contains `path` are APPLIED, then the connection is closed
                unanswered (a timeout as the client sees it: it cannot know whether the write happened)
Every fault takes `after=k`: the first k matching requests pass untouched, so a fault can land in
the middle of a run rather than on its first request.

Latency and capacity, for benchmarks: `search_delay_s` makes every search take that long (a job stays
RUNNING, oneshot and export answer after it) and `max_running_searches` caps the searches running at once
(a dispatch beyond it gets the 503 role-quota answer, as Splunk does when a user's quota is reached).

The credential store (`storage/passwords`, JSON) serves `passwords[(realm, username)]` to a valid
session, as the Splunk app's alert action reads its serve token.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, unquote_plus, urlsplit
from xml.sax.saxutils import escape

from emulators.splunk_spl import SplEngine, SplError, parse_time_arg, render_row
from emulators.wire import hang_up

STATUS_LABELS = {"0": "Unassigned", "1": "New", "2": "In Progress", "3": "Pending", "4": "Resolved", "5": "Closed"}
MAX_RESULT_ROWS = 50_000
ATOM_NS = (
    'xmlns="http://www.w3.org/2005/Atom" xmlns:s="http://dev.splunk.com/ns/rest" '
    'xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/"'
)
QUOTA_MESSAGE = (
    "Search not executed: The maximum number of concurrent historical searches for this user based on their "
    'role quota has been reached., concurrency_category="historical", concurrency_context="user_instance-wide", '
    "current_concurrency=3, concurrency_limit=3"
)


# -- TLS material -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TlsMaterial:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls_material(directory: Path) -> TlsMaterial:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "siemcrew test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    material = TlsMaterial(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    material.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    material.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    material.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return material


# -- state --------------------------------------------------------------------------------------
@dataclass
class RequestLog:
    method: str
    path: str
    endpoint: str
    params: dict[str, list[str]]
    auth: str | None
    status: int = 0


@dataclass
class Job:
    sid: str
    search: str
    params: dict[str, str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    event_count: int = 0
    status_polls: int = 0
    running_polls: int = 0
    failed: str | None = None
    cancelled: bool = False
    ready_at: float = 0.0  # time.monotonic() when the search is done (search_delay_s after dispatch)


@dataclass
class Fault:
    kind: str
    remaining: int
    options: dict[str, Any]


@dataclass
class SavedSearch:
    name: str
    search: str
    app: str = "search"
    owner: str = "admin"
    earliest: str = "-15m"
    latest: str = "now"
    actions: dict[str, str] = field(default_factory=dict)
    dispatched: list[str] = field(default_factory=list)


def to_epoch(value: Any) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    parsed = parse_time_arg(str(value).replace(" UTC", "+00:00").replace(" ", "T", 1), 0.0)
    if parsed is None:
        raise ValueError(f"event has no usable _time: {value!r}")
    return parsed


class SplunkdEmulator:
    """Start with `.start()`, point the connector at `.url`, inspect `.requests` and the stores."""

    def __init__(
        self,
        events: list[dict[str, Any]] | None = None,
        notables: list[dict[str, Any]] | None = None,
        *,
        tls: bool = False,
        tls_dir: Path | None = None,
        version: str = "9.2.1",
        users: dict[str, str] | None = None,
        tokens: set[str] | None = None,
        hec_tokens: set[str] | None = None,
        hec_indexes: set[str] | None = None,
        saved_searches: list[SavedSearch] | None = None,
        now: float | None = None,
        passwords: dict[tuple[str, str], str] | None = None,
        search_delay_s: float = 0.0,
        max_running_searches: int | None = None,
    ) -> None:
        self.version = version
        # a search takes this long (its job stays RUNNING, oneshot and export answer after it), and at most
        # this many run at once: a dispatch beyond it gets the 503 role-quota answer (benchmarks/scale.py)
        self.search_delay_s = search_delay_s
        self.max_running_searches = max_running_searches
        self.users = users if users is not None else {"admin": "changeme"}
        self.tokens = tokens if tokens is not None else {"test-bearer-token"}
        self.hec_tokens = hec_tokens if hec_tokens is not None else {"test-hec-token"}
        self.hec_indexes = hec_indexes
        self.fixed_now = now
        self.sessions: set[str] = set()
        self.jobs: dict[str, Job] = {}
        self.faults: list[Fault] = []
        self.requests: list[RequestLog] = []
        self.hec_events: list[dict[str, Any]] = []
        self.receiver_events: list[dict[str, Any]] = []
        self.notable_updates: list[dict[str, Any]] = []
        self.review: dict[str, dict[str, Any]] = {}
        self.saved = {s.name: s for s in (saved_searches or [])}
        self.passwords = dict(passwords or {})
        self.logins = 0
        self.max_active_jobs = 0
        self._lock = threading.RLock()
        self._sid_counter = 0
        self.events: list[dict[str, Any]] = []
        self.load(events or [], notables or [])
        self.engine = SplEngine(
            self.events,
            macros={"notable": "index=notable | lookup_incident_review"},
            commands={"lookup_incident_review": self._overlay_review},
        )
        self.tls = make_tls_material(tls_dir) if tls and tls_dir else None
        if tls and not tls_dir:
            raise ValueError("tls=True needs tls_dir for the generated CA and certificate")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- data ------------------------------------------------------------------------------
    def load(self, events: list[dict[str, Any]], notables: list[dict[str, Any]] | None = None) -> None:
        for event in events:
            row = dict(event)
            row["_time"] = to_epoch(row.get("_time", self.now()))
            row.setdefault("index", "main")
            self.events.append(row)
        for notable in notables or []:
            row = dict(notable)
            row["_time"] = to_epoch(row["_time"])
            row["index"] = "notable"
            row.setdefault("sourcetype", "stash")
            self.events.append(row)
            self.review[str(row["event_id"])] = {
                "status": str(row.get("status", "1")),
                "urgency": row.get("urgency", "medium"),
                "owner": row.get("owner", "unassigned"),
                "comments": [],
            }

    def _overlay_review(self, rows: list[dict[str, Any]], args: str) -> list[dict[str, Any]]:
        out = []
        for row in rows:
            state = self.review.get(str(row.get("event_id")))
            if state:
                row = {**row, "status": state["status"], "status_label": STATUS_LABELS.get(state["status"], "Unknown"),
                       "urgency": state["urgency"], "owner": state["owner"]}
                if state["comments"]:
                    row["comment"] = state["comments"][-1]
            out.append(row)
        return out

    def now(self) -> float:
        return self.fixed_now if self.fixed_now is not None else time.time()

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def port(self) -> int:
        assert self._server is not None, "emulator not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> "SplunkdEmulator":
        emulator = self

        class Handler(_Handler):
            server_version = "Splunkd"
            sys_version = ""
            app = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert_file, self.tls.key_file)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "SplunkdEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- faults ----------------------------------------------------------------------------
    def fail_next(self, kind: str, n: int = 1, **options: Any) -> None:
        known = {"expire", "quota", "slow", "job_failed", "drop", "cut_export", "hec_busy", "status", "garbage",
                 "lost_reply"}
        if kind not in known:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(known)}")
        with self._lock:
            if kind == "expire" and not options.get("after"):
                self.sessions.clear()
            self.faults.append(Fault(kind, n, options))

    def take_fault(self, kind: str, path: str = "") -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.kind == kind and fault.remaining > 0 and fault.options.get("path", "") in path:
                    if fault.options.get("after", 0) > 0:
                        fault.options["after"] -= 1
                        continue
                    fault.remaining -= 1
                    return fault
        return None

    # -- views for tests -------------------------------------------------------------------
    def calls(self, endpoint_part: str, method: str | None = None) -> list[RequestLog]:
        return [r for r in self.requests if endpoint_part in r.endpoint and (method is None or r.method == method)]

    def running_searches(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for job in self.jobs.values() if job.ready_at > now and not job.cancelled)

    def new_sid(self) -> str:
        with self._lock:
            self._sid_counter += 1
            return f"{int(self.now())}.{self._sid_counter}"

    @property
    def v2(self) -> bool:
        return tuple(int(p) for p in self.version.split(".")) >= (9, 0, 2)


# -- HTTP ---------------------------------------------------------------------------------------
class _Reply(Exception):
    def __init__(self, status: int, body: str | bytes = b"", content_type: str = "text/xml; charset=utf-8") -> None:
        super().__init__(status)
        self.status = status
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.content_type = content_type


class _Drop(Exception):
    """Close the connection without an answer."""


def xml_messages(text: str, kind: str = "ERROR") -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<response>\n  <messages>\n'
        f'    <msg type="{kind}">{escape(text)}</msg>\n  </messages>\n</response>\n'
    )


def _s_value(value: Any, indent: str) -> str:
    if isinstance(value, dict):
        inner = "".join(f'{indent}  <s:key name="{escape(str(k))}">{_s_value(v, indent + "  ")}</s:key>\n' for k, v in value.items())
        return f"\n{indent}<s:dict>\n{inner}{indent}</s:dict>\n{indent}" if value else "<s:dict/>"
    if isinstance(value, list):
        items = "".join(f"<s:item>{escape(str(v))}</s:item>" for v in value)
        return f"<s:list>{items}</s:list>"
    return escape(str(value))


def atom_entry(title: str, href: str, content: dict[str, Any], links: dict[str, str], root: bool = False) -> str:
    link_xml = "".join(f'  <link href="{href}{suffix}" rel="{rel}"/>\n' for rel, suffix in links.items())
    ns = f" {ATOM_NS}" if root else ""
    return (
        f"<entry{ns}>\n  <title>{escape(title)}</title>\n  <id>https://localhost:8089{href}</id>\n"
        f"  <updated>2024-05-01T10:00:00+00:00</updated>\n{link_xml}"
        f"  <author>\n    <name>admin</name>\n  </author>\n"
        f'  <content type="text/xml">{_s_value(content, "    ")}</content>\n</entry>\n'
    )


def atom_feed(title: str, href: str, entries: list[str], version: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<feed {ATOM_NS}>\n  <title>{escape(title)}</title>\n'
        f"  <id>https://localhost:8089{href}</id>\n  <updated>2024-05-01T10:00:00+00:00</updated>\n"
        f'  <generator build="bf0ff7c2ab8b" version="{version}"/>\n  <author>\n    <name>Splunk</name>\n  </author>\n'
        f"  <opensearch:totalResults>{len(entries)}</opensearch:totalResults>\n"
        f"  <opensearch:itemsPerPage>30</opensearch:itemsPerPage>\n  <opensearch:startIndex>0</opensearch:startIndex>\n"
        f"  <s:messages/>\n{''.join(entries)}</feed>\n"
    )


def one_line(obj: Any) -> bytes:
    """splunkd's results JSON is one line; JSONResultsReader depends on it."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    app: SplunkdEmulator

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing ----------------------------------------------------------------------------
    def _handle(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        params = parse_qs(parts.query, keep_blank_values=True)
        content_type = self.headers.get("Content-Type", "")
        endpoint, ns = _endpoint(parts.path)
        is_form = method == "POST" and "json" not in content_type and not endpoint.startswith(("collector", "receivers"))
        if is_form:
            for key, values in parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True).items():
                params.setdefault(key, []).extend(values)
        log = RequestLog(method, parts.path, endpoint, params, _auth_kind(self.headers.get("Authorization")))
        self.app.requests.append(log)
        try:
            if self.app.take_fault("drop", parts.path):
                raise _Drop()
            if self.app.take_fault("garbage", parts.path):
                raise _Reply(200, b'\xff\xfe{"preview":false,"results":[{"trunc', "application/json")
            status_fault = self.app.take_fault("status", parts.path)
            if status_fault:
                code = int(status_fault.options.get("code", 500))
                raise _Reply(code, xml_messages(f"Injected HTTP {code}"))
            lost = self.app.take_fault("lost_reply", parts.path)
            try:
                self._route(method, endpoint, ns, params, raw, log)
            except _Reply as reply:
                if lost and not isinstance(reply, _Done):
                    raise _Drop() from None
                raise
        except _Done:
            log.status = 200
            return
        except _Drop:
            log.status = -1
            hang_up(self)
            return
        except _Reply as reply:
            log.status = reply.status
            self._send(reply.status, reply.body, reply.content_type)

    def _send(self, status: int, body: bytes, content_type: str = "text/xml; charset=utf-8") -> None:
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        if status != 204 and body:
            self.wfile.write(body)
        self.close_connection = True

    def _authenticate(self, hec: bool = False) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, credential = header.partition(" ")
        app = self.app
        if hec:
            return
        if app.take_fault("expire"):
            with app._lock:
                app.sessions.clear()
            raise _Reply(401, xml_messages("call not properly authenticated"))
        if scheme == "Splunk" and credential in app.sessions:
            return
        if scheme == "Bearer" and credential in app.tokens:
            return
        raise _Reply(401, xml_messages("call not properly authenticated"))

    # -- routing -----------------------------------------------------------------------------
    def _route(self, method: str, endpoint: str, ns: tuple[str, str] | None, params: dict[str, list[str]], raw: bytes, log: RequestLog) -> None:
        app = self.app
        one = {k: v[-1] for k, v in params.items() if v}
        if endpoint == "auth/login" and method == "POST":
            return self._login(one)
        if endpoint.startswith("collector"):
            return self._hec(endpoint, raw)
        self._authenticate()
        if endpoint == "server/info":
            return self._server_info()
        segments = endpoint.split("/")
        if segments[:2] == ["search", "v2"]:
            if not app.v2:
                raise _Reply(404, xml_messages(f"Not Found: {endpoint}"))
            segments = ["search"] + segments[2:]
        if segments[:2] == ["search", "jobs"]:
            return self._jobs(method, segments[2:], {**one, **_required_fields(params)}, endpoint)
        if segments[:2] == ["saved", "searches"]:
            return self._saved(method, segments[2:], one, ns)
        if endpoint == "notable_update" and method == "POST":
            return self._notable_update(params)
        if endpoint == "receivers/simple" and method == "POST":
            return self._receivers_simple(one, raw)
        if segments[:2] == ["storage", "passwords"] and method == "GET":
            return self._password(segments[2:])
        raise _Reply(404, xml_messages(f"Not Found: {endpoint}"))

    def _login(self, form: dict[str, str]) -> None:
        app = self.app
        if form.get("username") in app.users and app.users[form["username"]] == form.get("password"):
            key = secrets.token_hex(16)
            with app._lock:
                app.sessions.add(key)
                app.logins += 1
            raise _Reply(200, f"<response>\n  <sessionKey>{key}</sessionKey>\n</response>\n")
        raise _Reply(401, xml_messages("Login failed", "WARN"))

    def _server_info(self) -> None:
        app = self.app
        content = {
            "build": "bf0ff7c2ab8b", "cpu_arch": "x86_64", "guid": "E216546D-B3D6-4A21-9BB6-B4EA28F4EE87",
            "isFree": "0", "licenseState": "OK", "mode": "normal", "os_name": "Linux",
            "product_type": "enterprise", "serverName": "emulated-sh01", "version": app.version,
            "eai:acl": {"app": "", "owner": "system", "sharing": "system"},
        }
        entry = atom_entry("server-info", "/services/server/info/server-info", content, {"alternate": "", "list": ""})
        raise _Reply(200, atom_feed("server-info", "/services/server/info", [entry], app.version))

    # -- search jobs -------------------------------------------------------------------------
    def _dispatch(self, search: str, params: dict[str, str], keep: bool = True) -> Job:
        app = self.app
        if app.take_fault("quota") or (app.max_running_searches is not None
                                       and app.running_searches() >= app.max_running_searches):
            raise _Reply(503, xml_messages(QUOTA_MESSAGE, "WARN"))
        sid = app.new_sid()
        job = Job(sid, search, params, ready_at=time.monotonic() + app.search_delay_s)
        try:
            result = app.engine.run(search, params.get("earliest_time"), params.get("latest_time"), now=app.now(),
                                    **_search_mode(params))
        except SplError as exc:
            raise _Reply(400, xml_messages(str(exc), "FATAL")) from None
        job.rows = [render_row(r) for r in result.rows]
        job.event_count = result.event_count
        slow = app.take_fault("slow")
        if slow:
            job.running_polls = int(slow.options.get("polls", 3))
        if app.take_fault("job_failed"):
            job.failed = "Error in 'search' command: Unable to parse the search: unbalanced parentheses."
            job.rows = []
        if keep:
            with app._lock:
                app.jobs[sid] = job
                app.max_active_jobs = max(app.max_active_jobs, len(app.jobs))
        return job

    def _jobs(self, method: str, rest: list[str], form: dict[str, str], endpoint: str) -> None:
        app = self.app
        if not rest or rest == [""]:
            if method != "POST":
                raise _Reply(200, atom_feed("jobs", "/services/search/jobs", [], app.version))
            search = form.get("search", "")
            if form.get("exec_mode") == "oneshot":
                job = self._dispatch(search, form, keep=False)
                time.sleep(max(0.0, job.ready_at - time.monotonic()))
                raise _Reply(200, self._results_body(job, form), "application/json")
            job = self._dispatch(search, form)
            if form.get("output_mode") == "json":
                raise _Reply(201, one_line({"sid": job.sid}), "application/json")
            raise _Reply(201, f'<?xml version="1.0" encoding="UTF-8"?>\n<response>\n  <sid>{job.sid}</sid>\n</response>\n')
        if rest[0] == "export":
            return self._export(form, endpoint)
        sid = unquote(rest[0])
        job = app.jobs.get(sid)
        if job is None:
            raise _Reply(404, xml_messages("Unknown sid.", "FATAL"))
        action = rest[1] if len(rest) > 1 else ""
        if action == "":
            return self._job_status(job)
        if action == "results":
            raise _Reply(200, self._results_body(job, form), "application/json")
        if action == "control" and method == "POST":
            if form.get("action") == "cancel":
                job.cancelled = True
                with app._lock:
                    app.jobs.pop(sid, None)
                raise _Reply(200, xml_messages("Search job cancelled.", "INFO"))
            raise _Reply(200, xml_messages(f"Action {form.get('action')} done.", "INFO"))
        raise _Reply(404, xml_messages(f"Not Found: {action}"))

    def _job_status(self, job: Job) -> None:
        job.status_polls += 1
        if job.status_polls == 1:
            raise _Reply(204, b"")  # right after create: not ready yet
        if job.running_polls > 0 or time.monotonic() < job.ready_at:
            job.running_polls = max(0, job.running_polls - 1)
            state, done, failed, progress = "RUNNING", "0", "0", "0.42000"
        elif job.failed:
            state, done, failed, progress = "FAILED", "1", "1", "1.00000"
        else:
            state, done, failed, progress = "DONE", "1", "0", "1.00000"
        content = {
            "dispatchState": state, "doneProgress": progress, "eventCount": str(job.event_count),
            "isDone": done, "isFailed": failed, "isFinalized": "0", "isPaused": "0", "isZombie": "0",
            "resultCount": str(len(job.rows) if done == "1" else 0), "sid": job.sid, "ttl": "600",
            "messages": {"fatal": [job.failed]} if job.failed and done == "1" else {},
            "request": {"search": job.search},
            "eai:acl": {"owner": "admin", "app": "search", "sharing": "global"},
        }
        links = {"alternate": "", "results": "/results", "control": "/control", "events": "/events"}
        raise _Reply(200, '<?xml version="1.0" encoding="UTF-8"?>\n' + atom_entry(job.search, f"/services/search/jobs/{job.sid}", content, links, root=True))

    def _results_body(self, job: Job, form: dict[str, str]) -> bytes:
        count = int(form.get("count", 100))  # the 100-row default the SDK inherits
        offset = int(form.get("offset", 0))
        limit = MAX_RESULT_ROWS if count == 0 else min(count, MAX_RESULT_ROWS)
        page = job.rows[offset : offset + limit]
        names: list[str] = []
        for row in page:
            names.extend(k for k in row if k not in names)
        return one_line({
            "preview": False, "init_offset": offset, "messages": [], "fields": [{"name": n} for n in names],
            "results": page, "highlighted": {},
        })

    def _export(self, form: dict[str, str], endpoint: str) -> None:
        app = self.app
        if app.take_fault("quota"):
            raise _Reply(503, xml_messages(QUOTA_MESSAGE, "WARN"))
        time.sleep(app.search_delay_s)
        search = form.get("search", "")
        try:
            mode = _search_mode(form)
            final = app.engine.run(search, form.get("earliest_time"), form.get("latest_time"), now=app.now(), **mode)
            preview = (
                app.engine.run(search, form.get("earliest_time"), form.get("latest_time"), now=app.now(),
                               event_fraction=0.5, **mode)
                if final.transforming else None
            )
        except SplError as exc:
            raise _Reply(400, xml_messages(str(exc), "FATAL")) from None
        lines: list[bytes] = []
        for is_preview, result in ((True, preview), (False, final)):
            if result is None:
                continue
            rows = [render_row(r) for r in result.rows]
            if not rows:
                if not is_preview:
                    lines.append(one_line({"preview": False, "lastrow": True}))
                continue
            for offset, row in enumerate(rows):
                item: dict[str, Any] = {"preview": is_preview, "offset": offset}
                if offset == len(rows) - 1:
                    item["lastrow"] = True
                item["result"] = row
                lines.append(one_line(item))
        cut = app.take_fault("cut_export")
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        for index, line in enumerate(lines):
            data = line + b"\n"
            self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
            if cut and index == 0:
                self.close_connection = True
                self.connection.shutdown(2)
                raise _Drop()
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True
        raise _Done()

    # -- saved searches ----------------------------------------------------------------------
    def _saved_entry(self, saved: SavedSearch) -> str:
        href = f"/servicesNS/{saved.owner}/{saved.app}/saved/searches/{quote(saved.name)}"
        content: dict[str, Any] = {
            "search": saved.search, "dispatch.earliest_time": saved.earliest, "dispatch.latest_time": saved.latest,
            "is_scheduled": "1", "disabled": "0", "actions": ",".join(k.split(".")[1] for k in saved.actions if k.count(".") == 1),
            **saved.actions,
            "eai:acl": {"app": saved.app, "owner": saved.owner, "sharing": "app", "can_write": "1"},
        }
        links = {"alternate": "", "list": "", "edit": "", "dispatch": "/dispatch", "history": "/history"}
        return atom_entry(saved.name, href, content, links)

    def _saved(self, method: str, rest: list[str], form: dict[str, str], ns: tuple[str, str] | None) -> None:
        app = self.app
        if not rest or rest == [""]:
            entries = [self._saved_entry(s) for s in app.saved.values()]
            raise _Reply(200, atom_feed("savedsearch", "/services/saved/searches", entries, app.version))
        name = unquote_plus(rest[0])
        saved = app.saved.get(name)
        if saved is None:
            raise _Reply(404, xml_messages(f"In handler 'savedsearch': Could not find object id={name}"))
        action = rest[1] if len(rest) > 1 else ""
        if action == "" and method == "GET":
            raise _Reply(200, atom_feed("savedsearch", "/services/saved/searches", [self._saved_entry(saved)], app.version))
        if action == "dispatch" and method == "POST":
            params = {
                "earliest_time": form.get("dispatch.earliest_time", saved.earliest),
                "latest_time": form.get("dispatch.latest_time", saved.latest),
            }
            search = saved.search if saved.search.lstrip().startswith(("|", "search ")) else f"search {saved.search}"
            job = self._dispatch(search, params)
            saved.dispatched.append(job.sid)
            raise _Reply(201, f'<?xml version="1.0" encoding="UTF-8"?>\n<response>\n  <sid>{job.sid}</sid>\n</response>\n')
        raise _Reply(404, xml_messages(f"Not Found: {action}"))

    # -- ES and ingestion ----------------------------------------------------------------------
    def _notable_update(self, params: dict[str, list[str]]) -> None:
        app = self.app
        one = {k: v[-1] for k, v in params.items() if v}
        ids = params.get("ruleUIDs", [])
        changes = {k: one[k] for k in ("status", "urgency", "newOwner", "comment") if one.get(k)}
        if not ids or not changes:
            raise _Reply(400, one_line({"success": False, "message": "ValueError: ruleUIDs and one of comment, newOwner, status, urgency are required."}), "application/json")
        if "status" in changes and changes["status"] not in STATUS_LABELS:
            raise _Reply(400, one_line({"success": False, "message": f"ValueError: Invalid status value {changes['status']}."}), "application/json")
        if "newOwner" in changes and changes["newOwner"] not in set(app.users) | {"unassigned"}:
            raise _Reply(400, one_line({"success": False, "message": "ValueError: Invalid owner value."}), "application/json")
        done = failed = 0
        with app._lock:
            for event_id in ids:
                state = app.review.get(event_id)
                if state is None:
                    failed += 1
                    continue
                done += 1
                if "status" in changes:
                    state["status"] = changes["status"]
                if "urgency" in changes:
                    state["urgency"] = changes["urgency"]
                if "newOwner" in changes:
                    state["owner"] = changes["newOwner"]
                if "comment" in changes:
                    state["comments"].append(changes["comment"])
            app.notable_updates.append({"ruleUIDs": list(ids), **changes})
        message = f"{done} event{'s' if done != 1 else ''} updated successfully"
        raise _Reply(200, one_line({"success": done > 0 and failed == 0, "message": message, "details": {},
                                    "success_count": done, "failure_count": failed}), "application/json")

    def _password(self, rest: list[str]) -> None:
        """One credential-store entry by its `realm:username:` name (JSON, clear_password included)."""
        realm, _, username = unquote(rest[0] if rest else "").rstrip(":").partition(":")
        stored = self.app.passwords.get((realm, username))
        if stored is None:
            raise _Reply(404, xml_messages(f"In handler 'passwords': Could not find object id={realm}:{username}:"))
        entry = {"name": f"{realm}:{username}:", "content": {"clear_password": stored, "password": "********",
                                                             "realm": realm, "username": username}}
        raise _Reply(200, one_line({"entry": [entry], "paging": {"total": 1, "perPage": 30, "offset": 0}}),
                     "application/json")

    def _receivers_simple(self, form: dict[str, str], raw: bytes) -> None:
        self.app.receiver_events.append({"params": form, "body": raw.decode("utf-8", "replace")})
        fields = {"_index": form.get("index", "default"), "bytes": str(len(raw)), "host": form.get("host", "127.0.0.1"),
                  "source": form.get("source", "http-simple"), "sourcetype": form.get("sourcetype", "unknown")}
        inner = "".join(f'      <field k="{k}">\n        <value>\n          <text>{escape(v)}</text>\n        </value>\n      </field>\n' for k, v in fields.items())
        raise _Reply(200, f'<?xml version="1.0" encoding="UTF-8"?>\n<response>\n  <results>\n    <result>\n{inner}    </result>\n  </results>\n</response>\n')

    def _hec(self, endpoint: str, raw: bytes) -> None:
        app = self.app

        def answer(status: int, text: str, code: int, **extra: Any) -> None:
            raise _Reply(status, one_line({"text": text, "code": code, **extra}), "application/json")

        if endpoint == "collector/health":
            answer(200, "HEC is healthy", 17)
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if not token:
            answer(401, "Token is required", 2)
        if scheme != "Splunk":
            answer(401, "Invalid authorization", 3)
        if token not in app.hec_tokens:
            answer(403, "Invalid token", 4)
        if app.take_fault("hec_busy"):
            answer(503, "Server is busy", 9)
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            answer(400, "No data", 5)
        decoder = json.JSONDecoder()
        objects: list[Any] = []
        position = 0
        while position < len(text):
            try:
                obj, end = decoder.raw_decode(text, position)
            except ValueError:
                answer(400, "Invalid data format", 6)
            objects.append(obj)
            position = end
            while position < len(text) and text[position].isspace():
                position += 1
        for number, obj in enumerate(objects):
            if not isinstance(obj, dict) or "event" not in obj:
                answer(400, "Event field is required", 12, **{"invalid-event-number": number})
            if obj["event"] in ("", None, {}):
                answer(400, "Event field cannot be blank", 13, **{"invalid-event-number": number})
            if app.hec_indexes is not None and obj.get("index") and obj["index"] not in app.hec_indexes:
                answer(400, "Incorrect index", 7, **{"invalid-event-number": number})
        app.hec_events.extend(objects)
        answer(200, "Success", 0)


class _Done(_Reply):
    """The response was streamed already."""

    def __init__(self) -> None:
        super().__init__(200)


def _endpoint(path: str) -> tuple[str, tuple[str, str] | None]:
    """The REST endpoint under /services/ or /servicesNS/{owner}/{app}/, trailing slashes dropped.

    Segments stay URL-encoded; each route decodes its entity names (saved search names with
    unquote_plus, as the SDK encodes them with quote_plus).
    """
    segments = [s for s in path.split("/") if s != ""]
    ns = None
    if segments and segments[0] == "servicesNS" and len(segments) >= 3:
        ns = (unquote(segments[1]), unquote(segments[2]))
        segments = segments[3:]
    elif segments and segments[0] == "services":
        segments = segments[1:]
    return "/".join(segments), ns


def _required_fields(params: dict[str, list[str]]) -> dict[str, str]:
    """`rf` (repeatable) and the older comma-separated `required_field_list`, as one comma-joined value."""
    names = [n.strip() for v in params.get("rf", []) + params.get("required_field_list", []) for n in v.split(",")]
    return {"rf": ",".join(n for n in names if n)} if any(names) else {}


def _search_mode(form: dict[str, str]) -> dict[str, Any]:
    """The job's search level (REST jobs default to fast) and required fields, for the SPL engine."""
    required = tuple(n for n in form.get("rf", "").split(",") if n)
    return {"level": form.get("adhoc_search_level") or "fast", "required": required}


def _auth_kind(header: str | None) -> str | None:
    if not header:
        return None
    return header.split(" ", 1)[0].lower()



# -- sample data and pytest fixtures for the siemcrew tests ---------------------------------------
T0 = 1714557600.0  # 2024-05-01T10:00:00Z
NOW = T0 + 3600


def _windows(when: float, channel: str, event_id: int, host: str, **data: Any) -> dict[str, Any]:
    """A raw Windows event as NXLog exports it (the OTRF recordings' shape)."""
    provider = {"Security": "Microsoft-Windows-Security-Auditing"}.get(channel, "Microsoft-Windows-Sysmon")
    return {"@timestamp": datetime_iso(when), "EventID": event_id, "Channel": channel, "Hostname": host,
            "SourceName": provider, "EventType": "AUDIT_SUCCESS" if channel == "Security" else "INFO",
            "Keywords": -9214364837600034816 if channel == "Security" else -9223372036854775808,
            "ExecutionProcessID": 4 if channel == "Security" else 3284, **data}


def datetime_iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def sample_raw_events(background: int = 260) -> list[dict[str, Any]]:
    """A small intrusion on wks-7 among enough noise to need paging, as raw Windows events."""
    sysmon = "Microsoft-Windows-Sysmon/Operational"
    events: list[dict[str, Any]] = [
        _windows(T0 + 10, sysmon, 1, "wks-7", Image="C:\\Windows\\System32\\whoami.exe", CommandLine="whoami /all",
                 User="THESHIRE\\pgustavo", ProcessId="4242", ProcessGuid="{7c9e-0000-4242}",
                 ParentImage="C:\\Windows\\System32\\cmd.exe", ParentProcessId="4100", ParentProcessGuid="{7c9e-0000-4100}",
                 ParentCommandLine="cmd.exe", LogonId="0x2ba622"),
        _windows(T0 + 20, sysmon, 1, "wks-7", Image="C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe",
                 CommandLine="powershell.exe -nop -w hidden -enc SQBFAFgA", User="THESHIRE\\pgustavo", ProcessId="4300",
                 ProcessGuid="{7c9e-0000-4300}", ParentImage="C:\\Windows\\System32\\cmd.exe", ParentProcessId="4100",
                 ParentProcessGuid="{7c9e-0000-4100}", LogonId="0x2ba622"),
        _windows(T0 + 30, "Security", 4624, "dc01", TargetUserName="pgustavo", TargetDomainName="THESHIRE",
                 TargetLogonId="0x3e1f00", LogonType="3", IpAddress="10.0.0.5", IpPort="50123",
                 SubjectUserName="-", SubjectLogonId="0x0", ProcessId="0x0", ProcessName="-"),
        _windows(T0 + 40, sysmon, 3, "wks-7", Image="C:\\Users\\Public\\a*b.exe", ProcessId="5100",
                 ProcessGuid="{7c9e-0000-5100}", User="THESHIRE\\pgustavo", Protocol="tcp", Initiated="true",
                 SourceIp="10.0.0.7", SourcePort="51000", DestinationIp="203.0.113.9", DestinationPort="443"),
    ]
    for i in range(background):
        events.append(_windows(T0 - 600 + i, "Security", 4688, f"srv-{i % 4}", SubjectUserName="svc_backup",
                               SubjectDomainName="CORP", SubjectLogonId="0x3e7", TargetUserName="-",
                               NewProcessName="C:\\Program Files\\Backup\\agent.exe", NewProcessId=hex(0x1000 + i),
                               ProcessId="0x2f0", CommandLine=f"agent.exe --job {i}"))
    return events


def sample_events(background: int = 260) -> list[dict[str, Any]]:
    """`sample_raw_events` as the Splunk add-ons index them (index main)."""
    from emulators.splunk_ta import ta_event

    return [ta_event(raw, index="main") for raw in sample_raw_events(background)]


def sample_notables() -> list[dict[str, Any]]:
    """ES notables as the `notable` macro returns them (three share one timestamp)."""
    base = {"rule_name": "Excessive Failed Logins", "search_name": "Access - Excessive Failed Logins - Rule",
            "security_domain": "access", "severity": "high", "urgency": "high", "status": "1", "owner": "unassigned",
            "src": "10.0.0.5", "dest": "dc01", "user": "alice", "risk_score": "80",
            "drilldown_search": "index=auth action=failure src=10.0.0.5", "orig_sid": "scheduler__admin_RMD5abc_at_1714557600_42"}
    rows = []
    for index, (offset, status) in enumerate([(7, "1"), (7, "1"), (7, "0"), (60, "1"), (120, "2"), (180, "1")]):
        rows.append({**base, "_time": T0 + offset, "status": status,
                     "event_id": f"AE5D0C7A-{index:04d}@@notable@@b6a3f2e1d0c9b8a7f6e5d4c3b2a1f0e{index}",
                     "rule_id": f"AE5D0C7A-{index:04d}@@notable@@b6a3f2e1d0c9b8a7f6e5d4c3b2a1f0e{index}",
                     "annotations.mitre_attack": ["T1110", "T1110.001"] if index == 0 else "T1110"})
    return rows


def connector_settings(emulator: SplunkdEmulator, **overrides: Any) -> dict[str, Any]:
    """Settings (as the `splunk:` YAML section) pointing at `emulator`, with test-sized waits."""
    settings: dict[str, Any] = {
        "url": emulator.url,
        "ca_file": str(emulator.tls.ca_file) if emulator.tls else None,
        "timeout_s": 5,
        "retry": {"attempts": 4, "initial_wait_s": 0.01, "max_wait_s": 0.05},
        "search": {"poll_interval_s": 0.01, "job_timeout_s": 5},
        "alerts": {"initial_lookback": "0"},
        "hec": {"url": emulator.url, "host": "siemcrew-test"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(settings.get(key), dict):
            settings[key] = {**settings[key], **value}
        else:
            settings[key] = value
    return settings
