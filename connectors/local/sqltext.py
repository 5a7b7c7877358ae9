"""SQL text for the embedded store: quoting, the read-only guard, and the scope/time restriction.

The guard is the first wall and gives a plain reason for the common refusals. It is not what
confines a query: the store runs written SQL on a sandbox connection whose authorizer admits reads
of the window view `events` only (see store.py), whatever the text looks like.
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
    """The statement without what follows its ';' if it is exactly one SELECT/WITH query; else QueryRefused.

    The text is kept as written (comments included) up to a final ';'; only whitespace and comments
    may follow that ';'. An unterminated /* comment is refused: SQLite would let it run to the end
    of the text, so the query could not be wrapped (for counting) without swallowing the wrapper.
    """
    text = sql.strip()
    for token in _OPAQUE.finditer(text):
        if token.group(0).startswith("/*") and (len(token.group(0)) < 4 or not token.group(0).endswith("*/")):
            raise QueryRefused("unterminated /* comment")
    # Literals, identifiers and comments blanked to the same length: positions still match `text`.
    skeleton = _OPAQUE.sub(lambda m: " " * len(m.group(0)), text)
    end = skeleton.find(";")
    if end >= 0:
        if skeleton[end:].strip(" \t\r\n;"):
            raise QueryRefused("only one SQL statement is allowed (found ';' chaining)")
        text, skeleton = text[:end].rstrip(), skeleton[:end].rstrip()
    if not text:
        raise QueryRefused("empty query")
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
