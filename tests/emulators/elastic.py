"""An Elasticsearch 9 + Kibana emulator on 127.0.0.1 for the real elasticsearch-py and httpx clients.

Protocol facts reproduced (see /work/shared/reference/elastic.md):
  * `X-Elastic-Product: Elasticsearch` on every response; compat media type echoed only when asked;
    errors as `application/json` with the `{"error": {"root_cause": [...]}, "status"}` envelope;
  * `_search` evaluated over stored documents (see `elastic_store`), PIT + `search_after` with the
    implicit `_shard_doc` tiebreaker and a frozen snapshot, `_count`, `PUT /_bulk` NDJSON with
    per-item errors (HTTP 200), index create with mappings, docs by id with `op_type=create` -> 409,
    the `logs-*-*` data-stream template clash, ES|QL (`POST /_query`) and EQL;
  * Kibana (separate port): API key / basic auth, `kbn-xsrf` on non-GET with the Boom envelope,
    `/s/{space}` prefixes, signals status, cases, comments (`elastic_kibana`).
Faults on demand: `fail_next("429"|"502"|"503"|"504"|"timeout"|"drop"|"bulk_item_429"|"pit_gone", n, server=...)`, and
modes `"es8"` (rejects compatible-with=9 like an 8.x cluster), `"no_product_header"`, `"opensearch"`.

A "timeout" fault applies the request and then sleeps past the client's timeout, so the client never
sees an answer to a request that did happen (the reason writes are not retried blindly). A "drop" fault
closes the connection unanswered WITHOUT applying the request (a proxy or load balancer cutting it).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from emulators.elastic_esql import run_eql, run_esql
from emulators.elastic_store import (
    MAX_RESULT_WINDOW,
    Doc,
    EsError,
    Index,
    Store,
    aggregate,
    field_caps,
    fields_option,
    filter_source,
    in_time,
    matches,
    parse_sort,
    SortKey,
    sort_docs,
)
from emulators.wire import hang_up

VERSION = "9.1.0"
COMPAT_JSON = "application/vnd.elasticsearch+json;compatible-with=9"
ES8_REJECTION = {
    "error": {
        "root_cause": [{"type": "media_type_header_exception", "reason": "Invalid media-type value on headers [Accept, Content-Type]"}],
        "type": "media_type_header_exception",
        "reason": "Invalid media-type value on headers [Accept, Content-Type]",
        "caused_by": {
            "type": "status_exception",
            "reason": "Accept version must be either version 8 or 7, but found 9. Accept=application/vnd.elasticsearch+json; compatible-with=9",
        },
    },
    "status": 400,
}
SEARCH_KEYS = {
    "query", "size", "from", "sort", "aggs", "aggregations", "_source", "fields", "track_total_hits", "search_after",
    "pit", "timeout", "terminate_after", "post_filter", "min_score", "highlight", "collapse", "version",
    "seq_no_primary_term", "track_scores", "stored_fields", "docvalue_fields", "indices_boost", "runtime_mappings",
}


@dataclass
class Recorded:
    server: str
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Fault:
    kind: str
    remaining: int
    server: str
    path: str | None
    retry_after: str
    method: str | None = None


@dataclass
class Pit:
    docs: list[Doc]
    expires: float


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = None
    delay: float = 0.0
    dropped: bool = False  # close the connection without answering


def make_test_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (ca.pem, cert.pem, key.pem)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "siemcrew test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; do not wait for delayed ACKs
    emulator: "ElasticEmulator"
    server_kind: str

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet test output
        return

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Encoding", "").lower() == "gzip" and raw:
            raw = gzip.decompress(raw)
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        multi = parse_qsl(parts.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        response = self.emulator.dispatch(self.server_kind, self.command, unquote(parts.path), params, multi, headers, raw)
        if response.dropped:
            hang_up(self)
            return
        self._send(response)

    def _send(self, response: Response) -> None:
        if isinstance(response.body, (dict, list)):
            payload = json.dumps(response.body).encode("utf-8")
        elif isinstance(response.body, str):
            payload = response.body.encode("utf-8")
        else:
            payload = response.body or b""
        try:
            if response.delay:
                time.sleep(response.delay)
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.content_type:
                self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle


class ElasticEmulator:
    """Elasticsearch + Kibana on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(
        self,
        tls: bool = False,
        cert_dir: Path | None = None,
        api_key: str = "c2llbWNyZXc6dGVzdC1rZXk=",
        username: str = "elastic",
        password: str = "changeme",
        timeout_delay: float = 1.0,
    ) -> None:
        from emulators.elastic_kibana import KibanaApi

        self.tls = tls
        self.cert_dir = cert_dir
        self.api_key = api_key
        self.username = username
        self.password = password
        self.timeout_delay = timeout_delay
        self.mode = "elasticsearch"
        self.store = Store()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self.pits: dict[str, Pit] = {}
        self.lock = threading.RLock()
        self.kibana = KibanaApi(self)
        self.ca_file: Path | None = None
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self.es_url = ""
        self.kibana_url = ""

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> "ElasticEmulator":
        context = None
        if self.tls:
            if self.cert_dir is None:
                raise ValueError("tls=True needs cert_dir (a temporary directory for the test CA)")
            ca, cert, key = make_test_certificates(self.cert_dir)
            self.ca_file = ca
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
        urls = []
        for kind in ("es", "kibana"):
            handler = type(f"{kind}Handler", (_Handler,), {"emulator": self, "server_kind": kind})
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            server.daemon_threads = True
            if context is not None:
                server.socket = context.wrap_socket(server.socket, server_side=True)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
            urls.append(f"{'https' if self.tls else 'http'}://127.0.0.1:{server.server_address[1]}")
        self.es_url, self.kibana_url = urls
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=2)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> "ElasticEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- test helpers ---------------------------------------------------------------------------
    def index(self, name: str, docs: list[dict[str, Any]], ids: list[str] | None = None, mappings: dict[str, Any] | None = None) -> Index:
        with self.store.lock:
            target = self.store.indices.get(name) or self.store.create(name, mappings)
            for number, doc in enumerate(docs):
                doc_id = ids[number] if ids else secrets.token_urlsafe(15)[:20]
                target.put(doc_id, json.loads(json.dumps(doc)))
            return target

    def add_alerts(self, docs: list[dict[str, Any]], space: str = "default") -> str:
        """Store Security alerts like Kibana: backing index + alias, `_id` = kibana.alert.uuid."""
        backing = f".internal.alerts-security.alerts-{space}-000001"
        mappings = {
            "properties": {
                "@timestamp": {"type": "date"},
                "kibana.alert.uuid": {"type": "keyword"},
                "kibana.alert.workflow_status": {"type": "keyword"},
                "kibana.alert.building_block_type": {"type": "keyword"},
                "kibana.alert.rule.uuid": {"type": "keyword"},
                "kibana.alert.rule.name": {"type": "keyword"},
                "kibana.alert.severity": {"type": "keyword"},
                "kibana.alert.risk_score": {"type": "float"},
                "kibana.alert.original_time": {"type": "date"},
                "host": {"properties": {"name": {"type": "keyword"}}},
                "user": {"properties": {"name": {"type": "keyword"}}},
            },
        }
        with self.store.lock:
            if backing not in self.store.indices:
                self.store.create(backing, mappings)
                self.store.aliases[f".alerts-security.alerts-{space}"] = [backing]
            uuids = [str(d.get("kibana.alert.uuid") or (d.get("kibana") or {}).get("alert", {}).get("uuid")) for d in docs]
            self.index(backing, docs, ids=uuids)
        return backing

    def docs(self, name: str) -> list[dict[str, Any]]:
        with self.store.lock:
            return [doc.source for index in self.store.resolve(name) for doc in index.docs.values()]

    def get_doc(self, name: str, doc_id: str) -> dict[str, Any] | None:
        with self.store.lock:
            for index in self.store.resolve(name, ignore_unavailable=True):
                if doc_id in index.docs:
                    return index.docs[doc_id].source
        return None

    def fail_next(
        self, kind: str, n: int = 1, server: str = "es", path: str | None = None, retry_after: str = "1", method: str | None = None
    ) -> None:
        """The next `n` matching requests fail with `kind` (429/502/503/504/timeout/drop/bulk_item_429/pit_gone)."""
        with self.lock:
            self.faults.append(Fault(kind, n, server, path, retry_after, method))

    def expire_pits(self) -> None:
        with self.lock:
            self.pits.clear()

    def calls(self, server: str = "es", method: str | None = None, path_contains: str = "") -> list[Recorded]:
        return [
            r for r in self.requests
            if r.server == server and (method is None or r.method == method) and path_contains in r.path
        ]

    @property
    def signal_status_updates(self) -> list[dict[str, Any]]:
        return self.kibana.status_updates

    @property
    def cases(self) -> dict[str, dict[str, Any]]:
        return self.kibana.cases

    # -- dispatch -------------------------------------------------------------------------------
    def dispatch(
        self, server: str, method: str, path: str, params: dict[str, str], multi: list[tuple[str, str]],
        headers: dict[str, str], raw: bytes,
    ) -> Response:
        body: Any = raw.decode("utf-8", "replace") if raw else None
        if body and "json" in headers.get("content-type", "") and "ndjson" not in headers.get("content-type", ""):
            try:
                body = json.loads(body)
            except json.JSONDecodeError:
                pass
        with self.lock:
            self.requests.append(Recorded(server, method, path, dict(params), dict(headers), body))
            fault = self._take_fault(server, path, ("429", "502", "503", "504", "timeout", "drop"), method)
            if self._take_fault(server, path, ("pit_gone",), method) is not None:
                self.pits.clear()
        if fault is not None and fault.kind == "drop":
            return Response(0, dropped=True)
        if fault is not None and fault.kind != "timeout":
            return self._fault_response(server, fault, headers)
        if server == "kibana":
            response = self.kibana.handle(method, path, params, multi, headers, raw)
        else:
            response = self._es(method, path, params, headers, raw)
        if fault is not None:
            response.delay = self.timeout_delay
        return response

    def _take_fault(self, server: str, path: str, kinds: tuple[str, ...], method: str | None = None) -> Fault | None:
        for fault in self.faults:
            if (
                fault.server == server and fault.kind in kinds and fault.remaining > 0
                and (fault.path is None or fault.path in path) and (fault.method is None or fault.method == method)
            ):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _fault_response(self, server: str, fault: Fault, headers: dict[str, str]) -> Response:
        status = int(fault.kind)
        extra = {"Retry-After": fault.retry_after} if status == 429 else {}
        if server == "kibana":
            error = {429: "Too Many Requests", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
            return Response(status, {"statusCode": status, "error": error, "message": error}, extra, "application/json; charset=utf-8")
        kind = {
            429: ("es_rejected_execution_exception", "rejected execution of coordinating operation [search]"),
            502: ("bad_gateway", "upstream proxy error"),
            503: ("cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];"),
            504: ("gateway_timeout", "upstream timed out"),
        }[status]
        error = EsError(status, kind[0], kind[1])
        return self._es_answer(Response(status, error.body(), extra), headers)

    # -- Elasticsearch ----------------------------------------------------------------------------
    def _es_answer(self, response: Response, headers: dict[str, str]) -> Response:
        if self.mode not in ("no_product_header", "opensearch"):
            response.headers.setdefault("X-Elastic-Product", "Elasticsearch")
        if response.content_type is None:
            compat = "compatible-with" in headers.get("accept", "")
            response.content_type = COMPAT_JSON if compat and response.status < 300 else "application/json; charset=UTF-8"
        return response

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        if auth == f"ApiKey {self.api_key}":
            return True
        expected = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return auth == f"Basic {expected}"

    def _es(self, method: str, path: str, params: dict[str, str], headers: dict[str, str], raw: bytes) -> Response:
        compat9 = "compatible-with=9" in headers.get("accept", "") + headers.get("content-type", "")
        if self.mode == "es8" and compat9:
            return self._es_answer(Response(400, ES8_REJECTION), headers)
        if self.mode == "opensearch" and "compatible-with" in headers.get("content-type", "") + headers.get("accept", ""):
            error = {"error": f"Content-Type header [{headers.get('content-type') or headers.get('accept')}] is not supported", "status": 406}
            return self._es_answer(Response(406, error, content_type="application/json; charset=UTF-8"), headers)
        if not self._authorized(headers):
            reason = "unable to authenticate with provided credentials and anonymous access is not allowed for this request"
            error = EsError(401, "security_exception", reason, header={"WWW-Authenticate": ['Basic realm="security", charset="UTF-8"', "ApiKey"]})
            return self._es_answer(Response(401, error.body(), {"WWW-Authenticate": "ApiKey"}), headers)
        try:
            response = self._route(method, path, params, headers, raw)
        except EsError as exc:
            response = Response(exc.status, exc.body())
        if params.get("filter_path") and response.status < 300 and isinstance(response.body, dict):
            response.body = filter_path(response.body, params["filter_path"].split(","))
        return self._es_answer(response, headers)

    def _json(self, raw: bytes) -> Any:
        if not raw:
            return None
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EsError(400, "x_content_parse_exception", f"[1:1] Unexpected character: {exc}") from None

    def _route(self, method: str, path: str, params: dict[str, str], headers: dict[str, str], raw: bytes) -> Response:
        segments = [s for s in path.split("/") if s]
        routes: list[tuple[set[str], str, Callable[..., Response]]] = [
            ({"GET", "HEAD"}, r"^$", lambda: Response(200, self._root())),
            ({"GET"}, r"^_cluster/health$", lambda: Response(200, {"cluster_name": "emulator", "status": "green", "number_of_nodes": 1})),
            ({"POST", "PUT"}, r"^(?:([^_/][^/]*)/)?_bulk$", lambda index=None: self._bulk(index, raw, params)),
            ({"GET", "POST"}, r"^(?:([^_/][^/]*)/)?_search$", lambda index=None: Response(200, self._search(index, self._json(raw) or {}, params))),
            ({"GET", "POST"}, r"^(?:([^_/][^/]*)/)?_count$", lambda index=None: Response(200, self._count(index, self._json(raw) or {}, params))),
            ({"POST"}, r"^([^_/][^/]*)/_pit$", lambda index: Response(200, self._open_pit(index, params))),
            ({"DELETE"}, r"^_pit$", lambda: self._close_pit(self._json(raw) or {})),
            ({"POST"}, r"^_query$", lambda: self._esql(self._json(raw) or {}, params)),
            ({"GET", "POST"}, r"^(?:([^_/][^/]*)/)?_field_caps$", lambda index=None: Response(200, self._field_caps(index, self._json(raw) or {}, params))),
            ({"GET", "POST"}, r"^([^_/][^/]*)/_eql/search$", lambda index: Response(200, self._eql(index, self._json(raw) or {}))),
            ({"POST", "GET"}, r"^([^_/][^/]*)/_refresh$", lambda index: Response(200, {"_shards": {"total": 1, "successful": 1, "failed": 0}})),
            ({"GET"}, r"^([^_/][^/]*)/_mapping$", lambda index: Response(200, self._mapping(index))),
            ({"PUT", "POST"}, r"^([^_/][^/]*)/_doc/([^/]+)$", lambda index, doc_id: self._write(index, doc_id, self._json(raw), params.get("op_type", "index"))),
            ({"POST"}, r"^([^_/][^/]*)/_doc$", lambda index: self._write(index, None, self._json(raw), params.get("op_type", "index"))),
            ({"PUT", "POST"}, r"^([^_/][^/]*)/_create/([^/]+)$", lambda index, doc_id: self._write(index, doc_id, self._json(raw), "create")),
            ({"POST"}, r"^([^_/][^/]*)/_update/([^/]+)$", lambda index, doc_id: self._update(index, doc_id, self._json(raw) or {})),
            ({"GET", "HEAD"}, r"^([^_/][^/]*)/_doc/([^/]+)$", lambda index, doc_id: self._get(index, doc_id)),
            ({"DELETE"}, r"^([^_/][^/]*)/_doc/([^/]+)$", lambda index, doc_id: self._delete(index, doc_id)),
            ({"HEAD"}, r"^([^_/][^/]*)$", lambda index: self._exists(index)),
            ({"PUT"}, r"^([^_/][^/]*)$", lambda index: self._create_index(index, self._json(raw) or {})),
            ({"GET"}, r"^([^_/][^/]*)$", lambda index: Response(200, self._mapping(index))),
            ({"DELETE"}, r"^([^_/][^/]*)$", lambda index: self._delete_index(index)),
        ]
        joined = "/".join(segments)
        for methods, pattern, handler in routes:
            match = re.match(pattern, joined)
            if match and method in methods:
                return handler(*[g for g in match.groups() if g is not None])
        raise EsError(400, "illegal_argument_exception", f"no handler found for uri [{path}] and method [{method}]")

    def _root(self) -> dict[str, Any]:
        return {
            "name": "emulator-node-1",
            "cluster_name": "siemcrew-emulator",
            "cluster_uuid": "qX1v9b6hT6yG0cS8kH2mUw",
            "version": {
                "number": "8.15.3" if self.mode == "es8" else VERSION,
                "build_flavor": "default", "build_type": "docker",
                "build_hash": "0" * 40, "build_date": "2025-07-24T00:00:00.000Z", "build_snapshot": False,
                "lucene_version": "10.2.2", "minimum_wire_compatibility_version": "8.19.0",
                "minimum_index_compatibility_version": "8.0.0",
            },
            "tagline": "You Know, for Search",
        }

    # search ----------------------------------------------------------------------------------
    def _search(self, index: str | None, body: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise EsError(400, "parsing_exception", "request body must be an object")
        unknown = sorted(set(body) - SEARCH_KEYS)
        if unknown:
            raise EsError(400, "parsing_exception", f"Unknown key for a START_OBJECT in [{unknown[0]}].", line=1, col=1)
        pit = body.get("pit")
        with self.store.lock:
            if pit:
                if index:
                    raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: [indices] cannot be used with point in time. Do not specify any index with point in time.;")
                docs = self._pit_docs(pit)
            else:
                indices = self.store.resolve(index, params.get("ignore_unavailable") == "true")
                docs = [doc for idx in indices for doc in idx.docs.values()]
            query = body.get("query") or {"match_all": {}}
            matched = [doc for doc in in_time(docs, query) if matches(query, doc)]
            shown = [doc for doc in matched if matches(body["post_filter"], doc)] if body.get("post_filter") else matched
            size = int(params.get("size", body.get("size", 10)))
            start = int(params.get("from", body.get("from", 0)))
            if start + size > MAX_RESULT_WINDOW:
                raise EsError(
                    400, "search_phase_execution_exception", "all shards failed",
                    caused_by={"type": "illegal_argument_exception", "reason": f"Result window is too large, from + size must be less than or equal to: [{MAX_RESULT_WINDOW}] but was [{start + size}]. See the scroll api for a more efficient way to request large data sets."},
                )
            keys = parse_sort(body["sort"]) if body.get("sort") is not None else []
            if pit and not any(k.field == "_shard_doc" for k in keys):
                keys.append(SortKey("_shard_doc", "asc"))
            after = body.get("search_after")
            if after is not None and not keys:
                raise EsError(400, "illegal_argument_exception", "[search_after] requires a sort")
            ordered = sort_docs(shown, keys, after) if keys else [(doc, None) for doc in shown]
            page = ordered[start : start + size]
            hits = []
            for doc, sort_values in page:
                hit: dict[str, Any] = {"_index": doc.index.name, "_id": doc.id, "_score": None if keys else 1.0}
                source = filter_source(doc.source, body.get("_source"))
                if source is not None:
                    hit["_source"] = source
                if body.get("fields"):
                    hit["fields"] = fields_option(doc, body["fields"])
                if keys:
                    hit["sort"] = sort_values
                hits.append(hit)
            result: dict[str, Any] = {
                "took": 1, "timed_out": False,
                "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
                "hits": {"max_score": None if keys or not hits else 1.0, "hits": hits},
            }
            track = body.get("track_total_hits", params.get("track_total_hits", 10_000))
            if str(track).lower() not in ("false",):
                limit = None if str(track).lower() == "true" else int(track)
                count = len(shown)
                relation = "gte" if limit is not None and count > limit else "eq"
                result["hits"]["total"] = {"value": min(count, limit) if limit is not None else count, "relation": relation}
            aggs = body.get("aggs") or body.get("aggregations")
            if aggs:
                result["aggregations"] = aggregate(aggs, matched)
            if pit:
                result["pit_id"] = pit["id"]
            return result

    def _count(self, index: str | None, body: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        unknown = sorted(set(body) - {"query"})
        if unknown:
            raise EsError(400, "parsing_exception", f"request does not support [{unknown[0]}]", line=1, col=1)
        with self.store.lock:
            indices = self.store.resolve(index, params.get("ignore_unavailable") == "true")
            query = body.get("query") or {"match_all": {}}
            count = sum(1 for doc in in_time([d for idx in indices for d in idx.docs.values()], query) if matches(query, doc))
        return {"count": count, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}

    def _open_pit(self, index: str, params: dict[str, str]) -> dict[str, Any]:
        if "keep_alive" not in params:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: [keep_alive] is not specified;")
        with self.store.lock:
            indices = self.store.resolve(index)
            snapshot = [doc for idx in indices for doc in idx.docs.values()]
        pit_id = base64.urlsafe_b64encode(secrets.token_bytes(48)).decode().rstrip("=")
        with self.lock:
            self.pits[pit_id] = Pit(snapshot, time.monotonic() + _seconds(params["keep_alive"]))
        return {"id": pit_id, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}

    def _pit_docs(self, pit: dict[str, Any]) -> list[Doc]:
        with self.lock:
            entry = self.pits.get(str(pit.get("id")))
            if entry is None or entry.expires < time.monotonic():
                self.pits.pop(str(pit.get("id")), None)
                raise EsError(404, "search_phase_execution_exception", "all shards failed", caused_by={"type": "search_context_missing_exception", "reason": "No search context found for id [1]"})
            if pit.get("keep_alive"):
                entry.expires = time.monotonic() + _seconds(pit["keep_alive"])
            return list(entry.docs)

    def _close_pit(self, body: dict[str, Any]) -> Response:
        with self.lock:
            found = self.pits.pop(str(body.get("id")), None) is not None
        return Response(200 if found else 404, {"succeeded": True, "num_freed": 1 if found else 0})

    def _esql(self, body: dict[str, Any], params: dict[str, str]) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            raise EsError(400, "parsing_exception", "[query] is required", line=1, col=1)
        unknown = sorted(set(body) - {"query", "filter", "params", "columnar", "locale", "profile", "include_ccs_metadata"})
        if unknown:
            raise EsError(400, "x_content_parse_exception", f"[1:2] [esql/query] unknown field [{unknown[0]}]")
        with self.store.lock:
            result = run_esql(self.store, body["query"], body.get("filter"))
        headers = {}
        if result.warnings:
            headers["Warning"] = f'299 Elasticsearch-{VERSION}-emulator "{result.warnings[0]}"'
        fmt = params.get("format")
        if fmt in ("csv", "tsv"):
            sep = "," if fmt == "csv" else "\t"
            lines = [sep.join(c["name"] for c in result.columns)] + [sep.join("" if v is None else str(v) for v in row) for row in result.values]
            return Response(200, "\n".join(lines) + "\n", headers, "text/csv; charset=utf-8" if fmt == "csv" else "text/tab-separated-values; charset=utf-8")
        values = result.values
        if body.get("columnar"):
            values = [list(column) for column in zip(*values)] if values else [[] for _ in result.columns]
        return Response(200, {"took": 3, "is_partial": False, "columns": result.columns, "values": values}, headers)

    def _field_caps(self, index: str | None, body: dict[str, Any], params: dict[str, str]) -> dict[str, Any]:
        wanted = params.get("fields") or body.get("fields")
        patterns = [p.strip() for p in (wanted.split(",") if isinstance(wanted, str) else wanted or []) if p.strip()]
        if not patterns:
            raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: specified fields can't be null or empty;")
        with self.store.lock:
            indices = self.store.resolve(index, params.get("ignore_unavailable") == "true")
            return field_caps(indices, patterns, params.get("include_unmapped") == "true")

    def _eql(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(body.get("query"), str):
            raise EsError(400, "parsing_exception", "[query] is required", line=1, col=1)
        with self.store.lock:
            indices = self.store.resolve(index)
            docs = run_eql(indices, body["query"], body.get("filter"), int(body.get("size", 10)))
            events = []
            for d in docs:
                event: dict[str, Any] = {"_index": d.index.name, "_id": d.id, "_source": d.source}
                if body.get("fields"):
                    event["fields"] = fields_option(d, body["fields"])
                events.append(event)
        return {"is_partial": False, "is_running": False, "took": 2, "timed_out": False,
                "hits": {"total": {"value": len(events), "relation": "eq"}, "events": events}}

    # documents --------------------------------------------------------------------------------
    def _data_stream_name(self, name: str) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(name, t) for t in self.store.data_stream_templates)

    def _write(self, index_name: str, doc_id: str | None, source: Any, op_type: str) -> Response:
        if not isinstance(source, dict):
            raise EsError(400, "mapper_parsing_exception", "failed to parse, document is empty" if source is None else "failed to parse")
        with self.store.lock:
            if self._data_stream_name(index_name) and op_type != "create":
                raise EsError(400, "illegal_argument_exception", f"only write ops with an op_type of create are allowed in data streams")
            index = self.store.for_write(index_name)
            doc_id = doc_id or secrets.token_urlsafe(15)[:20]
            if op_type == "create" and doc_id in index.docs:
                raise EsError(
                    409, "version_conflict_engine_exception",
                    f"[{doc_id}]: version conflict, document already exists (current version [{index.docs[doc_id].version}])",
                    index_uuid="emulator", shard="0", index=index.name,
                )
            doc, created = index.put(doc_id, source)
        return Response(201 if created else 200, _write_result(doc, "created" if created else "updated"))

    def _update(self, index_name: str, doc_id: str, body: dict[str, Any]) -> Response:
        if "script" in body:
            raise EsError(400, "illegal_argument_exception", "scripted updates are not supported by the emulator")
        with self.store.lock:
            index = self.store.for_write(index_name, auto_create=bool(body.get("doc_as_upsert")))
            existing = index.docs.get(doc_id)
            if existing is None and not body.get("doc_as_upsert"):
                raise EsError(404, "document_missing_exception", f"[{doc_id}]: document missing", index=index.name, shard="0")
            merged = _merge(existing.source if existing else {}, body.get("doc") or {})
            doc, created = index.put(doc_id, merged)
        return Response(201 if created else 200, _write_result(doc, "created" if created else "updated"))

    def _get(self, index_name: str, doc_id: str) -> Response:
        with self.store.lock:
            indices = self.store.resolve(index_name)
            for index in indices:
                doc = index.docs.get(doc_id)
                if doc:
                    return Response(200, {"_index": index.name, "_id": doc_id, "_version": doc.version, "_seq_no": doc.seq_no, "_primary_term": 1, "found": True, "_source": doc.source})
        return Response(404, {"_index": index_name, "_id": doc_id, "found": False})

    def _delete(self, index_name: str, doc_id: str) -> Response:
        with self.store.lock:
            index = self.store.for_write(index_name, auto_create=False)
            doc = index.docs.pop(doc_id, None)
        status = 200 if doc else 404
        return Response(status, {"_index": index_name, "_id": doc_id, "_version": (doc.version + 1) if doc else 1,
                                 "result": "deleted" if doc else "not_found", "_shards": {"total": 2, "successful": 1, "failed": 0}})

    def _exists(self, index_name: str) -> Response:
        with self.store.lock:
            try:
                self.store.resolve(index_name)
                return Response(200)
            except EsError:
                return Response(404)

    def _create_index(self, name: str, body: dict[str, Any]) -> Response:
        if self._data_stream_name(name):
            raise EsError(400, "illegal_argument_exception", f"cannot create index with name [{name}], because it matches with template [logs] that creates data streams only, use create data stream api instead")
        unknown = sorted(set(body) - {"settings", "mappings", "aliases"})
        if unknown:
            raise EsError(400, "parsing_exception", f"unknown key [{unknown[0]}] for create index", line=1, col=1)
        with self.store.lock:
            self.store.create(name, body.get("mappings") or {})
            for alias in body.get("aliases") or {}:
                self.store.aliases.setdefault(alias, []).append(name)
        return Response(200, {"acknowledged": True, "shards_acknowledged": True, "index": name})

    def _delete_index(self, name: str) -> Response:
        with self.store.lock:
            for index in self.store.resolve(name):
                del self.store.indices[index.name]
        return Response(200, {"acknowledged": True})

    def _mapping(self, name: str) -> dict[str, Any]:
        with self.store.lock:
            return {index.name: {"mappings": index.mappings} for index in self.store.resolve(name)}

    def _bulk(self, default_index: str | None, raw: bytes, params: dict[str, str]) -> Response:
        text = raw.decode("utf-8")
        if not text.endswith("\n"):
            raise EsError(400, "illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
        lines = [line for line in text.split("\n") if line.strip()]
        items: list[dict[str, Any]] = []
        i = 0
        while i < len(lines):
            try:
                action_line = json.loads(lines[i])
            except json.JSONDecodeError:
                raise EsError(400, "illegal_argument_exception", f"Malformed action/metadata line [{i + 1}], expected START_OBJECT but found [VALUE_STRING]") from None
            if not isinstance(action_line, dict) or len(action_line) != 1:
                raise EsError(400, "illegal_argument_exception", f"Malformed action/metadata line [{i + 1}], expected a single action")
            action, meta = next(iter(action_line.items()))
            if action not in ("index", "create", "update", "delete"):
                raise EsError(400, "illegal_argument_exception", f"Malformed action/metadata line [{i + 1}], expected one of [create, delete, index, update] but found [{action}]")
            index_name = meta.get("_index") or default_index
            doc_id = meta.get("_id")
            source = None
            if action != "delete":
                i += 1
                if i >= len(lines):
                    raise EsError(400, "action_request_validation_exception", "Validation Failed: 1: no requests added;")
                try:
                    source = json.loads(lines[i])
                except json.JSONDecodeError as exc:
                    items.append({action: {"_index": index_name, "_id": doc_id, "status": 400, "error": {"type": "document_parsing_exception", "reason": f"[1:1] failed to parse: {exc.msg}"}}})
                    i += 1
                    continue
            i += 1
            with self.lock:
                rejected = self._take_fault("es", "_bulk", ("bulk_item_429",))
            if rejected is not None:
                items.append({action: {"_index": index_name, "_id": doc_id, "status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "rejected execution of primary operation"}}})
                continue
            try:
                if action == "delete":
                    response = self._delete(index_name, doc_id)
                elif action == "update":
                    response = self._update(index_name, doc_id, source or {})
                else:
                    response = self._write(index_name, doc_id, source, "create" if action == "create" else "index")
                item = dict(response.body)
                item["status"] = response.status
            except EsError as exc:
                error = exc.body()["error"]
                error.pop("root_cause", None)
                item = {"_index": index_name, "_id": doc_id, "status": exc.status, "error": error}
            items.append({action: item})
        errors = any(next(iter(item.values()))["status"] >= 300 and not (next(iter(item.values())).get("result") == "not_found") for item in items)
        return Response(200, {"errors": errors, "took": 2, "items": items})


def filter_path(body: Any, paths: list[str]) -> Any:
    """`filter_path`: keep the dotted paths named (`*` matches one key; lists are walked through)."""
    includes = [p.split(".") for p in paths if p and not p.startswith("-")]

    def keep(node: Any, patterns: list[list[str]]) -> Any:
        if not patterns or any(not p for p in patterns):
            return node
        if isinstance(node, list):
            kept = [keep(item, patterns) for item in node]
            return [item for item in kept if item not in (None, {}, [])]
        if not isinstance(node, dict):
            return None
        out = {}
        for key, value in node.items():
            inner = [p[1:] for p in patterns if p[0] == "*" or p[0] == key]
            if inner:
                child = keep(value, inner)
                if child not in (None, {}, []) or any(not p for p in inner):
                    out[key] = child
        return out

    return keep(body, includes) if includes else body


def _write_result(doc: Doc, result: str) -> dict[str, Any]:
    return {
        "_index": doc.index.name, "_id": doc.id, "_version": doc.version, "result": result,
        "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": doc.seq_no, "_primary_term": 1,
    }


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(base))
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _seconds(keep_alive: str) -> float:
    match = re.match(r"^(\d+)(ms|s|m|h|d)?$", str(keep_alive))
    if not match:
        raise EsError(400, "illegal_argument_exception", f"failed to parse setting [keep_alive] with value [{keep_alive}] as a time value")
    unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "ms"]
    return int(match.group(1)) * unit


# -- pytest helpers ---------------------------------------------------------------------------------
import pytest  # noqa: E402  (kept at the end: the emulator itself does not need pytest)


@pytest.fixture
def elastic_emulator() -> Any:
    """A running plain-HTTP emulator (Elasticsearch + Kibana), stopped after the test."""
    with ElasticEmulator() as emulator:
        yield emulator


def elastic_settings(emulator: ElasticEmulator, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Any:
    """ElasticSettings pointing at the emulator, API key in an env var, fast retries."""
    from siemcrew.config.elastic import ElasticSettings

    monkeypatch.setenv("SIEMCREW_TEST_ES_API_KEY", emulator.api_key)
    values: dict[str, Any] = {
        "url": emulator.es_url,
        "kibana_url": emulator.kibana_url,
        "api_key_env": "SIEMCREW_TEST_ES_API_KEY",
        "retry_wait": 0.01,
        "retry_wait_max": 0.05,
        "request_timeout": 5.0,
    }
    values.update(overrides)
    return ElasticSettings(**values)
