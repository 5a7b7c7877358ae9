"""The read-only guard: agents reach only read endpoints with read queries.

Three doors lead into Elasticsearch from an agent, and each has an allowlist:
  * ES|QL text: only known read commands (no COMPLETION/RERANK, which ship rows to inference
    endpoints, and nothing unknown);
  * query-DSL bodies: only search keys, and no scripts anywhere (agents need none, and scripts
    are how a "search" turns into work or side effects);
  * console requests (`GET logs-*/_search {...}` as in Kibana Dev Tools): only read endpoints,
    only harmless URL parameters, no path tricks.
Anything else raises `QueryRefused` with the reason, for the tool layer to audit.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from siemcrew.connectors.base import QueryRefused

ESQL_READ_COMMANDS = frozenset(
    {
        "from", "row", "show", "ts", "where", "eval", "stats", "inlinestats", "sort", "limit", "keep",
        "drop", "rename", "dissect", "grok", "enrich", "mv_expand", "lookup", "sample", "change_point",
    }
)
ESQL_REFUSED = {
    "completion": "COMPLETION sends rows to an inference endpoint",
    "rerank": "RERANK sends rows to an inference endpoint",
}
DSL_KEYS = frozenset(
    {
        "query", "size", "from", "sort", "aggs", "aggregations", "_source", "fields", "track_total_hits",
        "search_after", "timeout", "terminate_after", "highlight", "collapse", "post_filter", "min_score",
        "docvalue_fields", "stored_fields", "version", "seq_no_primary_term", "track_scores",
        "indices_boost", "filter", "params", "columnar", "locale", "event_category_field",
        "timestamp_field", "tiebreaker_field", "fetch_size", "result_position",
    }
)
DSL_REFUSED_ANYWHERE = {
    "script": "scripts are refused",
    "scripted_metric": "scripts are refused",
    "runtime_mappings": "runtime fields run scripts; refused",
    "script_fields": "scripts are refused",
    "stored_script": "scripts are refused",
}
READ_ENDPOINTS: tuple[tuple[frozenset[str], re.Pattern[str]], ...] = (
    (frozenset({"GET", "POST"}), re.compile(r"^/([^/_][^/]*/)?_(search|count|field_caps|validate/query|mget)$")),
    (frozenset({"GET", "POST"}), re.compile(r"^/[^/_][^/]*/_eql/search$")),
    (frozenset({"GET", "POST"}), re.compile(r"^/[^/_][^/]*/_explain/[^/]+$")),
    (frozenset({"POST"}), re.compile(r"^/_query$")),
    (frozenset({"GET"}), re.compile(r"^/[^/_][^/]*/_doc/[^/]+$")),
    (frozenset({"GET"}), re.compile(r"^/([^/_][^/]*/)?_mapping$")),
    (frozenset({"GET"}), re.compile(r"^/_cat/[a-z_]+(/[^/]+)?$")),
    (frozenset({"GET"}), re.compile(r"^/_resolve/index/[^/]+$")),
    (frozenset({"GET"}), re.compile(r"^/(_cluster/health)?$")),
)
READ_PARAMS = frozenset(
    {
        "size", "from", "q", "df", "default_operator", "analyze_wildcard", "lenient", "ignore_unavailable",
        "allow_no_indices", "expand_wildcards", "track_total_hits", "filter_path", "format", "pretty", "human",
        "sort", "_source", "_source_includes", "_source_excludes", "timeout", "terminate_after", "v", "h", "s",
        "bytes", "help", "level", "error_trace",
    }
)
_METHOD = re.compile(r"^(GET|POST|PUT|DELETE|HEAD|PATCH)\s+(\S+)\s*(.*)$", re.S | re.I)


def split_pipes(text: str) -> list[str]:
    """ES|QL commands: split on | outside string literals ("..." and triple-quoted)."""
    parts: list[str] = []
    current: list[str] = []
    i, quote = 0, ""
    while i < len(text):
        if not quote and text.startswith('"""', i):
            quote = '"""'
            current.append(quote)
            i += 3
            continue
        if quote == '"""' and text.startswith('"""', i):
            quote = ""
            current.append('"""')
            i += 3
            continue
        char = text[i]
        if quote == '"' and char == "\\":
            current.append(text[i : i + 2])
            i += 2
            continue
        if not quote and char == '"':
            quote = '"'
        elif quote == '"' and char == '"':
            quote = ""
        if char == "|" and not quote:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    if quote:
        raise QueryRefused("ES|QL query has an unterminated string literal")
    parts.append("".join(current).strip())
    return parts


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))


def check_esql(text: str) -> list[str]:
    """Validate an ES|QL query and return its commands; raise QueryRefused if it is not a read."""
    commands = split_pipes(_strip_comments(text).strip())
    if not commands or not commands[0]:
        raise QueryRefused("empty ES|QL query")
    for index, command in enumerate(commands):
        if not command:
            raise QueryRefused("empty ES|QL command between pipes")
        word = command.split(None, 1)[0].lower()
        if word in ESQL_REFUSED:
            raise QueryRefused(f"ES|QL command {word.upper()} refused: {ESQL_REFUSED[word]}")
        if word not in ESQL_READ_COMMANDS:
            raise QueryRefused(f"ES|QL command {word.upper()!r} is not on the read-only allowlist")
        if index == 0 and word not in {"from", "row", "show", "ts"}:
            raise QueryRefused("an ES|QL query must start with FROM, ROW, SHOW or TS")
    return commands


def _walk_refused(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            if key in DSL_REFUSED_ANYWHERE:
                raise QueryRefused(f"query DSL key {key!r} at {path or 'top level'}: {DSL_REFUSED_ANYWHERE[key]}")
            _walk_refused(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for number, item in enumerate(value):
            _walk_refused(item, f"{path}[{number}]")


def check_dsl(body: Any) -> dict[str, Any]:
    """Validate a search body: an object with search keys only, and no scripts anywhere."""
    if not isinstance(body, dict):
        raise QueryRefused("a query-DSL body must be a JSON object")
    _walk_refused(body, "")
    unknown = sorted(set(body) - DSL_KEYS)
    if unknown:
        raise QueryRefused(f"query-DSL keys not allowed for agents: {', '.join(unknown)} (search bodies only)")
    return body


def check_endpoint(method: str, target: str) -> tuple[str, str, dict[str, str]]:
    """Validate a console request line; return (METHOD, path, params)."""
    method = method.upper()
    parts = urlsplit(target if target.startswith("/") else "/" + target)
    path = parts.path
    if "%" in target or "\\" in target or "/../" in f"{path}/" or "/./" in f"{path}/":
        raise QueryRefused(f"request path {target!r} refused: encoded or relative segments")
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    bad = sorted(set(params) - READ_PARAMS)
    if bad:
        raise QueryRefused(f"URL parameters not allowed for agents: {', '.join(bad)}")
    for methods, pattern in READ_ENDPOINTS:
        if method in methods and pattern.match(path):
            return method, path, params
    raise QueryRefused(f"{method} {path} is not a read endpoint (agents may only search, count and read)")


def parse_console(text: str) -> tuple[str, str, dict[str, str], dict[str, Any] | None]:
    """`GET index/_search {json}` (Kibana Dev Tools form) -> checked (method, path, params, body)."""
    match = _METHOD.match(text.strip())
    if not match:
        raise QueryRefused("not a console request (expected 'GET /index/_search {...}')")
    method, path, params = check_endpoint(match.group(1), match.group(2))
    raw_body = match.group(3).strip()
    body: dict[str, Any] | None = None
    if raw_body:
        try:
            parsed = json.loads(raw_body)
        except json.JSONDecodeError as exc:
            raise QueryRefused(f"request body is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        body = parsed if path == "/_query" and isinstance(parsed, dict) else check_dsl(parsed)
        if path == "/_query":
            check_esql(str(body.get("query", "")))
            _walk_refused(body, "")
    return method, path, params, body
