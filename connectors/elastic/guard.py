"""The read-only guard: agents reach only read endpoints with read queries.

Three doors lead into Elasticsearch from an agent, and each has an allowlist:
  * ES|QL text: only known read commands (no COMPLETION/RERANK/EMBED, which ship rows to inference
    endpoints, no COLLECT, which writes them to an index, and nothing unknown), and no function
    that calls an inference endpoint (TEXT_EMBEDDING...). The text is tokenised as Elasticsearch's
    lexer reads it, in one pass: "..." strings with their escapes, triple-quoted strings, `quoted`
    names, // and /* */ comments. So a comment marker inside a string, or a pipe inside a comment,
    can neither hide nor invent a command. Where ES|QL versions or lexer modes disagree (before
    8.15 FROM reads `"` as a name character, since then a backtick; nested block comments), the
    query is refused rather than guessed at;
  * query-DSL bodies: only search keys, and no scripts anywhere (agents need none, and scripts
    are how a "search" turns into work or side effects);
  * console requests (`GET logs-*/_search {...}` as in Kibana Dev Tools): only read endpoints,
    only harmless URL parameters, no path tricks, no duplicate JSON keys; a `POST _query` body
    holds an ES|QL query checked as above, an optional DSL filter and no parameters.
Anything else raises `QueryRefused` with the reason, for the tool layer to audit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from siemcrew.connectors.base import QueryRefused
from siemcrew.connectors.guardtext import refuse_control_characters, refuse_lookalike

ESQL_READ_COMMANDS = frozenset(
    {
        "from", "row", "show", "ts", "where", "eval", "stats", "inlinestats", "sort", "limit", "keep",
        "drop", "rename", "dissect", "grok", "enrich", "mv_expand", "lookup", "sample", "change_point",
    }
)
ESQL_SOURCE_COMMANDS = frozenset({"from", "row", "show", "ts"})
ESQL_REFUSED = {
    "completion": "COMPLETION sends rows to an inference endpoint",
    "rerank": "RERANK sends rows to an inference endpoint",
    "embed": "EMBED sends rows to an inference endpoint",
    "collect": "COLLECT writes rows into an index",
}
ESQL_REFUSED_FUNCTIONS = {
    name: "calls an inference endpoint"
    for name in ("text_embedding", "embed_text", "text_similarity", "completion", "rerank", "embed")
}
# Commands whose arguments every ES|QL version lexes in expression mode, where "..." is always a
# string. Elsewhere (FROM, KEEP, RENAME, ENRICH...) some versions read `"` or a backtick as a plain
# name character, so strings and quoted names there may hold nothing that could be structure.
ESQL_EXPRESSION_COMMANDS = frozenset({"where", "eval", "stats", "inlinestats", "sort", "limit", "row", "dissect", "grok"})
ESQL_UNSAFE_IN_NAMES = frozenset('|[]()/`";\r\n')
ESQL_STRUCTURAL = '|[]()"`/;*?'
ESQL_SPACE = " \t\r\n"
ESQL_ESCAPES = frozenset('tnr"\\')
ESQL_BODY_KEYS = frozenset(
    {"query", "filter", "columnar", "locale", "time_zone", "profile", "include_ccs_metadata", "include_execution_metadata"}
)
_ESQL_WORD = re.compile(r"[A-Za-z0-9_@.]+")
_ESQL_COMMAND = re.compile(r"^[A-Za-z_]+$")
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


EsqlKind = Literal["word", "string", "name", "pipe", "open", "close", "op"]


@dataclass(frozen=True)
class EsqlToken:
    kind: EsqlKind
    text: str
    start: int
    end: int


def esql_tokens(text: str) -> tuple[list[EsqlToken], str]:
    """ES|QL text -> tokens (comments and whitespace dropped) and the text with comments blanked.

    Strings, quoted names and comments are read in one pass, as Elasticsearch's lexer does; what
    its versions or lexer modes could read differently raises `QueryRefused`.
    """
    refuse_control_characters(text, "ES|QL")
    tokens: list[EsqlToken] = []
    blanked = list(text)
    index = 0
    while index < len(text):
        char = text[index]
        if char in ESQL_SPACE:
            index += 1
            continue
        if text.startswith("//", index) or text.startswith("/*", index):
            end = _esql_comment_end(text, index)
            blanked[index:end] = " " * (end - index)
            index = end
            continue
        kind: EsqlKind
        if text.startswith('"""', index):
            end, kind = _esql_triple_end(text, index), "string"
        elif char == '"':
            end, kind = _esql_string_end(text, index), "string"
        elif char == "`":
            end, kind = _esql_name_end(text, index), "name"
        elif char == ";":
            raise QueryRefused(f"ES|QL refused: ';' at offset {index} (statements and SET settings are refused)")
        elif char in "|([)]":
            end, kind = index + 1, "pipe" if char == "|" else "open" if char in "([" else "close"
        else:
            word = _ESQL_WORD.match(text, index)
            if word:
                end, kind = word.end(), "word"
            else:
                refuse_lookalike(char, ESQL_STRUCTURAL, "ES|QL", index)
                end, kind = index + 1, "op"
        tokens.append(EsqlToken(kind, text[index:end], index, end))
        index = end
    return tokens, "".join(blanked)


def _esql_comment_end(text: str, start: int) -> int:
    if text.startswith("//", start):
        ends = [i for i in (text.find("\r", start), text.find("\n", start)) if i != -1]
        return min(ends) if ends else len(text)
    end = text.find("*/", start + 2)
    if end == -1:
        raise QueryRefused(f"ES|QL refused: unterminated /* comment at offset {start}")
    if "/*" in text[start + 2 : end]:
        raise QueryRefused(f"ES|QL refused: nested /* inside the comment at offset {start} (where it ends is read differently)")
    return end + 2


def _esql_triple_end(text: str, start: int) -> int:
    close = text.find('"""', start + 3)
    if close == -1 or "\r" in text[start:close] or "\n" in text[start:close]:
        raise QueryRefused(f"ES|QL refused: unterminated triple-quoted string at offset {start} (it may not span lines)")
    end = close + 3
    for _ in range(2):  # the lexer takes up to two more quotes into the string
        if text.startswith('"', end):
            end += 1
    return end


def _esql_string_end(text: str, start: int) -> int:
    index = start + 1
    while index < len(text):
        char = text[index]
        if char == "\\":
            if index + 1 >= len(text) or text[index + 1] not in ESQL_ESCAPES:
                raise QueryRefused(f"ES|QL refused: invalid escape {text[index:index + 2]!r} in the string at offset {start}")
            index += 2
            continue
        if char in "\r\n":
            break
        if char == '"':
            return index + 1
        index += 1
    raise QueryRefused(f"ES|QL refused: unterminated string literal at offset {start} (strings may not span lines)")


def _esql_name_end(text: str, start: int) -> int:
    end = text.find("`", start + 1)
    if end == -1:
        raise QueryRefused(f"ES|QL refused: unterminated `quoted name` at offset {start}")
    if end == start + 1 or text.startswith("`", end + 1):
        raise QueryRefused(f"ES|QL refused: empty or ``-escaped quoted name at offset {start}")
    return end + 1


def _content(token: EsqlToken) -> str:
    if token.kind == "name":
        return token.text[1:-1]
    quotes = 3 if token.text.startswith('"""') else 1
    return token.text[quotes:-quotes]


def check_esql(text: str) -> list[str]:
    """Validate an ES|QL query and return its commands (comments removed); raise QueryRefused if it is not a read.

    Every `|` outside strings, names and comments ends a command wherever it stands (FROM and IN
    subqueries are pipelines in parentheses), so every command after a pipe is checked.
    """
    tokens, blanked = esql_tokens(text)
    if not tokens:
        raise QueryRefused("empty ES|QL query")
    commands: list[list[EsqlToken]] = [[]]
    bounds = [0]
    for token in tokens:
        if token.kind == "pipe":
            commands.append([])
            bounds += [token.start, token.end]
        else:
            commands[-1].append(token)
    bounds.append(len(text))
    for position, command in enumerate(commands):
        if not command:
            raise QueryRefused("empty ES|QL command between pipes")
        _check_esql_arguments(_esql_command(command[0], first=position == 0), command)
    return [blanked[bounds[2 * i] : bounds[2 * i + 1]].strip() for i in range(len(commands))]


def _esql_command(token: EsqlToken, first: bool) -> str:
    if token.kind != "word" or not _ESQL_COMMAND.match(token.text):
        raise QueryRefused(f"ES|QL refused: expected a command name, found {token.text!r}")
    word = token.text.lower()
    if word in ESQL_REFUSED:
        raise QueryRefused(f"ES|QL command {word.upper()} refused: {ESQL_REFUSED[word]}")
    if word not in ESQL_READ_COMMANDS:
        raise QueryRefused(f"ES|QL command {word.upper()!r} is not on the read-only allowlist")
    if first and word not in ESQL_SOURCE_COMMANDS:
        raise QueryRefused("an ES|QL query must start with FROM, ROW, SHOW or TS")
    return word


def _check_esql_arguments(command: str, tokens: list[EsqlToken]) -> None:
    """Inference functions, refused commands opening a parenthesised group, parameters, and strings
    or quoted names that some lexer mode could read as structure."""
    for token, following in zip(tokens, [*tokens[1:], None]):
        if token.kind == "name" or (token.kind == "string" and command not in ESQL_EXPRESSION_COMMANDS):
            unsafe = sorted(ESQL_UNSAFE_IN_NAMES & set(_content(token)))
            if unsafe:
                raise QueryRefused(
                    f"ES|QL refused: {token.text!r} in {command.upper()} holds {''.join(unsafe)!r} "
                    "(some ES|QL versions read it there as structure, not as part of a name)"
                )
        if token.kind == "op" and token.text == "?":
            raise QueryRefused("ES|QL refused: query parameters ('?') are not sent by siemcrew and could name functions or fields")
        callee = token.text.lower() if token.kind == "word" else _content(token).lower() if token.kind == "name" else ""
        if callee in ESQL_REFUSED_FUNCTIONS and following is not None and following.text == "(":
            raise QueryRefused(f"ES|QL function {callee.upper()} refused: it {ESQL_REFUSED_FUNCTIONS[callee]}")
        if token.kind == "open" and following is not None and following.kind == "word" and following.text.lower() in ESQL_REFUSED:
            word = following.text.lower()
            raise QueryRefused(f"ES|QL command {word.upper()} refused: {ESQL_REFUSED[word]}")


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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads hook: a repeated key is refused (parsers disagree on which copy counts)."""
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise QueryRefused(f"request body repeats the key(s) {', '.join(repeated)} (parsers disagree on which one counts)")
    return dict(pairs)


def check_esql_body(body: Any) -> dict[str, Any]:
    """A `POST _query` body: an ES|QL query string, an optional DSL filter without scripts, no params
    (siemcrew sends none, and parameters could name functions or fields the guard never sees)."""
    if not isinstance(body, dict):
        raise QueryRefused("a _query body must be a JSON object")
    unknown = sorted(set(body) - ESQL_BODY_KEYS)
    if unknown:
        raise QueryRefused(f"_query body keys not allowed for agents: {', '.join(unknown)}")
    query = body.get("query")
    if not isinstance(query, str):
        raise QueryRefused("a _query body needs an ES|QL query string")
    check_esql(query)
    _walk_refused(body, "")
    return body


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
            parsed = json.loads(raw_body, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            raise QueryRefused(f"request body is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        body = check_esql_body(parsed) if path == "/_query" else check_dsl(parsed)
    elif path == "/_query":
        raise QueryRefused("POST _query needs a body with an ES|QL query")
    return method, path, params, body
