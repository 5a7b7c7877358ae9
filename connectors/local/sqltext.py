"""SQL text for the embedded store: quoting, the read-only guard, and scope/time restriction.

The guard is the first of two walls: the agent connection itself is `query_only` with an
authorizer that allows reads only (see store.py). Restriction works by shadowing the `events`
table with a CTE of the same name, so any query over `events` sees only the requested window.
"""

from __future__ import annotations

import re

from siemcrew.connectors.base import QueryRefused
from siemcrew.crew.models import TimeRange
from siemcrew.crew.timeutil import iso

FIELD_NAME = re.compile(r"^[A-Za-z_@][A-Za-z0-9_.@\-]{0,127}$")
_FORBIDDEN = (
    "PRAGMA", "ATTACH", "DETACH", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER",
    "REPLACE", "VACUUM", "REINDEX", "ANALYZE", "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT",
    "RELEASE", "LOAD_EXTENSION",
)  # fmt: skip
# String literals, quoted identifiers and comments, in the order SQLite's tokenizer sees them.
_OPAQUE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`[^`]*`|\[[^\]]*\]|--[^\n]*|/\*.*?(?:\*/|$)", re.DOTALL)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_field(name: str) -> str:
    """Field names reach SQL as quoted identifiers; refuse anything that is not a plain dotted name."""
    if not isinstance(name, str) or not FIELD_NAME.match(name):
        raise QueryRefused(f"invalid field name {str(name)[:80]!r}: use letters, digits, '.', '_', '@' or '-'")
    return name


def check_read_only(sql: str) -> str:
    """The statement without a trailing ';' if it is exactly one SELECT/WITH query; else QueryRefused."""
    text = sql.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise QueryRefused("empty query")
    skeleton = _OPAQUE.sub(" ", text)
    if ";" in skeleton:
        raise QueryRefused("only one SQL statement is allowed (found ';' chaining)")
    words = _WORD.findall(skeleton)
    if not words or words[0].upper() not in ("SELECT", "WITH"):
        raise QueryRefused("only SELECT or WITH ... SELECT queries are allowed on the local store")
    for match in _WORD.finditer(skeleton):
        word = match.group(0).upper()
        if word in _FORBIDDEN:
            if word == "REPLACE" and skeleton[match.end():].lstrip().startswith("("):
                continue  # the replace(x, y, z) string function, not REPLACE INTO
            raise QueryRefused(f"{word} is not allowed: the local store is read-only for queries")
    return text


def restriction(scope: str | None = None, time_range: TimeRange | None = None) -> str | None:
    """The WHERE text that limits events to a scope and a time window, or None for no limit."""
    parts = []
    if scope is not None:
        parts.append(f'"scope" = {literal(scope)}')
    if time_range is not None:
        parts.append(
            f'"@timestamp" >= {literal(iso(time_range.start))} AND "@timestamp" <= {literal(iso(time_range.end))}'
        )
    return " AND ".join(parts) or None


def restrict(sql: str, scope: str | None = None, time_range: TimeRange | None = None) -> str:
    """`sql` with `events` shadowed by a CTE holding only the scope/time window's rows."""
    where = restriction(scope, time_range)
    if where is None:
        return sql
    cte = f"events AS (SELECT * FROM main.events WHERE {where})"
    head = re.match(r"^\s*WITH\s+(RECURSIVE\s+)?", sql, re.IGNORECASE)
    if head:
        return f"WITH {head.group(1) or ''}{cte}, {sql[head.end():]}"
    return f"WITH {cte} {sql}"
