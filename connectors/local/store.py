"""The embedded event store: one SQLite table `events`, loaded from files, queried read-only.

Why SQLite: it ships with Python, runs in-process on a file or in memory, and pySigma's sqlite
backend targets it. Every TEXT column is `COLLATE NOCASE`, so `=`, `IN` and `LIKE` compare
case-insensitively as Sigma does. Columns are the fixed ECS fields the crew relies on, plus one
column per raw Windows field name (added as new names appear) so Sigma SQL runs as generated.
The full ECS event is kept as JSON in `doc`, which is what searches return.

Three connections: a writer (loading, verdicts), a read-only reader for SQL the code builds, and a
sandbox for SQL a user or a model writes. The sandbox sees the events of one scope/time window as
the view `events` and nothing else: SQLite's own authorizer, consulted for every table, column and
function a statement touches while it is prepared, refuses anything outside that view (see
`_confined`). Every statement runs within a time budget, REGEXP included (see `_regexp`).
"""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from re import _constants as sre_constants  # re's own parser: the syntax REGEXP has always accepted
from re import _parser as sre_parse
from typing import Any

import regex

from siemcrew.connectors.base import ConnectorError, QueryRefused
from siemcrew.connectors.local.loader import MAX_ARCHIVE_BYTES, LoadReport, Unit, default_scope, iter_units
from siemcrew.connectors.local.normalize import EVENT_DATA_PREFIX, Normalized, Normalizer, WindowsMapping, dumps
from siemcrew.connectors.local.sqltext import restriction
from siemcrew.crew.models import TimeRange

log = logging.getLogger(__name__)

TABLE = "events"
INTEGER_COLUMNS = frozenset(
    ["winlog.event_id", "process.pid", "process.parent.pid", "source.port", "destination.port", "target.process.pid"]
)
ECS_COLUMNS = (
    "@timestamp", "event.code", "event.category", "event.action", "event.outcome",
    "winlog.channel", "winlog.event_id", "winlog.provider_name", "host.name", "host.hostname",
    "user.name", "user.domain", "user.id", "process.pid", "process.entity_id", "process.executable",
    "process.name", "process.command_line", "process.parent.pid", "process.parent.entity_id",
    "process.parent.executable", "process.parent.name", "process.parent.command_line",
    "process.hash.sha256", "process.hash.md5", "process.integrity_level",
    "process.pe.original_file_name", "process.pe.company", "process.pe.description",
    "source.ip", "source.port", "destination.ip", "destination.port", "destination.domain",
    "network.protocol", "network.direction", "file.path", "file.name", "file.hash.sha256", "registry.path",
    "registry.value", "registry.data.strings", "dll.path", "service.name", "service.executable",
    "task.name", "task.content", "target.process.executable", "target.process.pid",
    "target.process.entity_id", "logon.type", "logon.id", "source.user.name",
    "powershell.script_block_text", "group.name",
)  # fmt: skip
RESERVED = ("scope", "event.id", "doc")
INDEXED = ("@timestamp", "host.hostname", "process.entity_id", "process.parent.entity_id", "scope")
MAX_COLUMNS = 1900  # SQLite's default limit is 2000 columns per table
_FIXED = frozenset(name.lower() for name in ECS_COLUMNS + RESERVED + ("rowid", "oid", "_rowid_"))
_INT64 = (-(2**63), 2**63 - 1)
_RECURSIVE = getattr(sqlite3, "SQLITE_RECURSIVE", 33)
_READ_ACTIONS = frozenset([sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, _RECURSIVE])
_DENIED_FUNCTIONS = frozenset(["load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"])

VIEW = TABLE
"""What sandboxed SQL reads: a TEMP view that shadows `main.events` (SQLite resolves temp names first)."""
WINDOW_VIEW = "siemcrew_window"
"""The one reader of `main.events` in the sandbox. Reserved: no sandboxed query may contain this name.

SQLite tells the authorizer which view or CTE a read comes from by name only, so a query could
define a CTE of the window view's name over `main.events` and pass for it. `events` cannot be that
view (queries may legitimately name a CTE `events`); a name they may not write at all can.
"""
MAX_REGEX_SIZE = 100_000  # compiled nodes of one REGEXP pattern: about 0.1 s to compile (see _weight)
MAX_VALUE_BYTES = 64 * 1024 * 1024  # one string or blob in the sandbox; events are far smaller
# Functions sandboxed SQL may call: computation on values only (core, date, aggregate, window, math,
# JSON scalar functions and REGEXP). Not: extension loading, FTS/R*Tree internals, connection state
# (changes(), last_insert_rowid()), the error log, or blobs sized by the query (randomblob, zeroblob).
ALLOWED_FUNCTIONS = frozenset("""
    abs char coalesce concat concat_ws format glob hex ifnull iif if instr length like likelihood likely
    lower ltrim max min nullif octet_length printf quote random replace round rtrim sign soundex substr
    substring trim typeof unhex unicode unistr unlikely upper
    date time datetime julianday unixepoch strftime timediff current_date current_time current_timestamp
    avg count group_concat string_agg sum total median
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
    acos acosh asin asinh atan atan2 atanh ceil ceiling cos cosh degrees exp floor ln log log10 log2 mod pi
    pow power radians sin sinh sqrt tan tanh trunc
    json jsonb json_array jsonb_array json_array_length json_error_position json_extract jsonb_extract
    json_insert jsonb_insert json_object jsonb_object json_patch jsonb_patch json_pretty json_quote
    json_remove jsonb_remove json_replace jsonb_replace json_set jsonb_set json_type json_valid
    json_group_array jsonb_group_array json_group_object jsonb_group_object -> ->>
    regexp
""".split())  # fmt: skip
_ACTION_NAMES = {
    getattr(sqlite3, "SQLITE_" + name): name
    for name in (
        "CREATE_INDEX CREATE_TABLE CREATE_TEMP_INDEX CREATE_TEMP_TABLE CREATE_TEMP_TRIGGER CREATE_TEMP_VIEW "
        "CREATE_TRIGGER CREATE_VIEW DELETE DROP_INDEX DROP_TABLE DROP_TEMP_INDEX DROP_TEMP_TABLE "
        "DROP_TEMP_TRIGGER DROP_TEMP_VIEW DROP_TRIGGER DROP_VIEW INSERT PRAGMA TRANSACTION UPDATE ATTACH "
        "DETACH ALTER_TABLE REINDEX ANALYZE CREATE_VTABLE DROP_VTABLE SAVEPOINT"
    ).split()
    if hasattr(sqlite3, "SQLITE_" + name)
}
_REGEX_TIMEOUT = "timeout"
_REDEFINING = "(window view being redefined)"  # a window no query sees: the '' read rule stays shut


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _weight(items: Any) -> int:
    """About how many nodes a parsed pattern compiles to: a bounded repeat counts its body that often.

    `regex` compiles in time proportional to this (about a microsecond per node), and nothing bounds
    compiling: `((((a{20}){20}){20}){20}){20}` takes seconds before any timeout applies.
    """
    total = 0
    for op, av in items:
        if op in (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT):
            low, high, body = av
            total += max(low if high == sre_constants.MAXREPEAT else high, 1) * _weight(body)
        elif op == sre_constants.SUBPATTERN:
            total += _weight(av[-1])
        elif op == sre_constants.BRANCH:
            total += sum(_weight(branch) for branch in av[1])
        elif op in (sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            total += _weight(av[1])
        elif op == sre_constants.ATOMIC_GROUP:
            total += _weight(av)
        elif op == sre_constants.GROUPREF_EXISTS:
            total += _weight(av[1]) + (_weight(av[2]) if av[2] else 0)
        else:
            total += 1
    return total


@lru_cache(maxsize=512)
def _pattern(expression: str) -> regex.Pattern[str]:
    """The compiled REGEXP pattern: `re`'s syntax, `regex`'s engine (whose matches take a timeout).

    The pattern is parsed as `re` parses it, so what the store accepted before is accepted now and
    nothing more; one that would take long to compile is refused before compiling (see _weight).
    """
    try:
        size = _weight(sre_parse.parse(expression, re.IGNORECASE))
    except (re.error, RecursionError, OverflowError) as exc:
        raise regex.error(str(exc) or type(exc).__name__) from None
    if size > MAX_REGEX_SIZE:
        raise regex.error(f"too large to compile within a query budget ({size} nodes; at most {MAX_REGEX_SIZE})")
    return regex.compile(expression, regex.IGNORECASE)


def _read_only_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None) -> int:
    """Defence in depth for the reader, which runs SQL the code builds: it may only read."""
    if action not in _READ_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def sql_value(value: Any) -> Any:
    """A Python value as the column stores it: booleans as 'true'/'false' (Sigma compares those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value if _INT64[0] <= value <= _INT64[1] else str(value)
    if isinstance(value, (str, float)) or value is None:
        return value
    return dumps(value)


class EventStore:
    """SQLite events table with a loader, a writer, a reader for code-built SQL and a sandbox for written SQL."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        mapping: str | Path | None = None,
        query_timeout: float = 30.0,
    ) -> None:
        self.path = str(path)
        self.query_timeout = query_timeout
        self.normalizer = Normalizer(WindowsMapping(mapping))
        self._lock = threading.RLock()
        self._deadline = math.inf
        self._failure: str | None = None  # why a REGEXP raised inside SQLite, read back by _execute
        self._denials: list[str] = []  # what the sandbox authorizer refused while preparing
        self._window: str | None = None  # the WHERE text of the sandbox's window view (None: every event)
        self._column_warning = False
        self.memory = self.path == ":memory:"
        if self.memory:
            uri = f"file:/siemcrew-{uuid.uuid4().hex}?vfs=memdb"
            reader_uri = uri
        else:
            file = Path(self.path).expanduser().resolve()
            file.parent.mkdir(parents=True, exist_ok=True)
            uri = file.as_uri()
            reader_uri = uri + "?mode=ro"
        self._db = self._connect(uri)
        self._db.execute("PRAGMA journal_mode=" + ("MEMORY" if self.memory else "WAL"))
        self._create_schema()
        self._columns = {name.lower(): name for name in self._table_columns()}
        self._reader = self._connect(reader_uri)
        self._reader.execute("PRAGMA query_only=ON")
        self._reader.set_authorizer(_read_only_authorizer)
        self._reader.set_progress_handler(self._over_budget, 10_000)
        # Tables and views of the file, which an unqualified name in a count(*) may be (see _confined).
        self._catalog = frozenset(
            row[0].lower() for row in self._db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        )
        self._sandbox = self._open_sandbox(reader_uri)

    # -- connections ---------------------------------------------------------------------
    def _connect(self, uri: str, cached_statements: int = 128) -> sqlite3.Connection:
        conn = sqlite3.connect(
            uri, uri=True, check_same_thread=False, isolation_level=None, cached_statements=cached_statements
        )
        conn.create_function("REGEXP", 2, self._regexp, deterministic=True)
        return conn

    def _open_sandbox(self, uri: str) -> sqlite3.Connection:
        """The connection for written SQL: two TEMP views, no ATTACH, bounded values, the confining authorizer.

        No statement cache: the authorizer judges a statement when it is prepared. Setting it again
        (as _set_window does) expires prepared statements, so a cached `PRAGMA query_only=OFF` from
        _set_window would be judged anew anyway; without a cache that does not rest on it.
        """
        conn = self._connect(uri, cached_statements=0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        conn.execute(f"CREATE TEMP VIEW {WINDOW_VIEW} AS SELECT * FROM main.{TABLE}")
        conn.execute(f"CREATE TEMP VIEW {VIEW} AS SELECT * FROM temp.{WINDOW_VIEW}")
        conn.execute("PRAGMA query_only=ON")
        conn.set_authorizer(self._confined)
        conn.set_progress_handler(self._over_budget, 10_000)
        return conn

    def _over_budget(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def _regexp(self, expression: str | None, value: Any) -> int | None:
        """SQLite's `value REGEXP expression`: case-insensitive search, bounded by the query's deadline.

        SQLite's progress handler cannot interrupt a Python callback, and `re` backtracks without
        bound (`'aaa…a!' REGEXP '^(a|a)*$'` doubles per character). `regex` takes a timeout, which
        it counts in CPU time: a match gets what is left of the budget, running out fails the whole
        query (see _translate), and the GIL is released while it matches so other threads go on.
        """
        if expression is None or value is None:
            return None
        try:
            pattern = _pattern(expression)
        except regex.error as exc:
            self._failure = f"invalid regular expression {expression[:200]!r}: {exc}"
            raise
        left = self._deadline - time.monotonic()
        timeout = None if math.isinf(left) else max(left, 0.0)
        try:
            return 1 if pattern.search(str(value), concurrent=True, timeout=timeout) else 0
        except TimeoutError:
            self._failure = _REGEX_TIMEOUT
            raise

    def _confined(self, action: int, arg1: str | None, arg2: str | None, db: str | None, src: str | None) -> int:
        """The sandbox's authorizer: reads of the window view, and pure functions; nothing else.

        SQLite asks it, while preparing, for every table column read (with the view or CTE the read
        comes from), every function called, and every other action (PRAGMA, ATTACH, writes,
        transactions, DDL), so a reference it does not allow fails the statement before it runs,
        however the SQL text spells it.
        """
        if action in (sqlite3.SQLITE_SELECT, _RECURSIVE):
            return sqlite3.SQLITE_OK
        if action == sqlite3.SQLITE_FUNCTION:
            if (arg2 or "").lower() in ALLOWED_FUNCTIONS:
                return sqlite3.SQLITE_OK
            return self._deny(f"function {arg2}() is not allowed")
        if action == sqlite3.SQLITE_READ:
            table, schema = (arg1 or "").lower(), (db or "").lower()
            if schema == "temp" and table in (VIEW, WINDOW_VIEW):
                return sqlite3.SQLITE_OK  # the views themselves
            if schema == "main" and table == TABLE and src == WINDOW_VIEW:
                return sqlite3.SQLITE_OK  # the window view reading the table
            if arg2 == "":
                # A table counted but not read (count(*), SELECT 1 FROM t) is reported with an empty
                # column, no view, and no schema unless the query wrote one.
                if db is None and (table == VIEW or (table not in self._catalog and not table.startswith("sqlite_"))):
                    return sqlite3.SQLITE_OK  # a CTE or subquery (unqualified `events` is the view)
                if schema == "main" and table == TABLE and self._window is None:
                    return sqlite3.SQLITE_OK  # no window: the view has no WHERE, so count(*) is the table's
            where = f"{db or 'main'}.{arg1}"
            return self._deny(f"reading {where} is not allowed: queries read the events view ({VIEW}) only")
        name = _ACTION_NAMES.get(action, f"action {action}")
        if action in (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE) and arg1:
            name += f" on {arg1}"  # DDL shows as a write to the catalog, a table function as its declaration
        return self._deny(f"{name} is not allowed: the store is read-only")

    def _deny(self, reason: str) -> int:
        self._denials.append(reason)
        return sqlite3.SQLITE_DENY

    def _set_window(self, where: str | None) -> None:
        """Redefine the window view as `main.events` [WHERE where]; the authorizer is off for that moment only."""
        if where == self._window:
            return
        conn = self._sandbox
        conn.set_authorizer(None)
        self._window = _REDEFINING
        try:
            conn.execute("PRAGMA query_only=OFF")
            conn.execute(f"DROP VIEW IF EXISTS temp.{WINDOW_VIEW}")
            condition = f" WHERE {where}" if where else ""
            conn.execute(f"CREATE TEMP VIEW {WINDOW_VIEW} AS SELECT * FROM main.{TABLE}{condition}")
            self._window = where
        finally:
            conn.execute("PRAGMA query_only=ON")
            conn.set_authorizer(self._confined)

    def close(self) -> None:
        with self._lock:
            self._sandbox.close()
            self._reader.close()
            self._db.close()

    def _create_schema(self) -> None:
        columns = [
            f'{quote_identifier("scope")} TEXT COLLATE NOCASE NOT NULL',
            f'{quote_identifier("event.id")} TEXT COLLATE NOCASE NOT NULL',
            f'{quote_identifier("doc")} TEXT COLLATE NOCASE NOT NULL',
        ]
        for name in ECS_COLUMNS:
            kind = "INTEGER" if name in INTEGER_COLUMNS else "TEXT COLLATE NOCASE"
            columns.append(f"{quote_identifier(name)} {kind}")
        columns.append('UNIQUE ("scope", "event.id")')
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({', '.join(columns)})")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS verdicts (alert_id TEXT COLLATE NOCASE NOT NULL, "
            "status TEXT COLLATE NOCASE, verdict TEXT COLLATE NOCASE, comment TEXT COLLATE NOCASE, "
            "at TEXT COLLATE NOCASE NOT NULL)"
        )

    def _table_columns(self) -> list[str]:
        return [row[1] for row in self._db.execute(f"PRAGMA table_info({TABLE})")]

    def _create_indexes(self) -> None:
        for name in INDEXED:
            index = "ix_events_" + re.sub(r"\W", "_", name)
            self._db.execute(f"CREATE INDEX IF NOT EXISTS {index} ON {TABLE} ({quote_identifier(name)})")

    # -- schema ----------------------------------------------------------------------------
    def columns(self) -> set[str]:
        with self._lock:
            return set(self._columns.values())

    def ensure_columns(self, names: Iterable[str]) -> dict[str, str]:
        """Column name per requested name (case-insensitive), adding absent ones as empty TEXT."""
        resolved: dict[str, str] = {}
        with self._lock:
            for name in names:
                key = name.lower()
                if key not in self._columns:
                    if len(self._columns) >= MAX_COLUMNS:
                        if not self._column_warning:
                            log.warning("events table reached %d columns; further fields stay in doc only", MAX_COLUMNS)
                            self._column_warning = True
                        continue
                    self._db.execute(f"ALTER TABLE {TABLE} ADD COLUMN {quote_identifier(name)} TEXT COLLATE NOCASE")
                    self._columns[key] = name
                resolved[name] = self._columns[key]
        return resolved

    # -- loading ---------------------------------------------------------------------------
    def load(self, paths: str | Path | Sequence[str | Path], scope: str | None = None,
             max_archive_bytes: int = MAX_ARCHIVE_BYTES) -> LoadReport:
        """Load files, zips and directories; each path's scope is `scope` or its folder/file stem."""
        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        report = LoadReport()
        started = time.perf_counter()
        with self._lock:
            self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("PRAGMA temp_store=MEMORY")
            before = self._db.total_changes
            offered = 0
            self._db.execute("BEGIN")
            try:
                for item in items:
                    path = Path(item).expanduser()
                    for unit in iter_units(path, max_archive_bytes):
                        offered += self._load_unit(unit, scope or default_scope(path), report)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._columns = {name.lower(): name for name in self._table_columns()}  # ALTERs rolled back too
                raise
            finally:
                self._db.execute("PRAGMA synchronous=" + ("OFF" if self.memory else "NORMAL"))
            report.events = self._db.total_changes - before
            self._create_indexes()
            self._db.execute("ANALYZE")
        report.duplicates = offered - report.events
        report.seconds = round(time.perf_counter() - started, 3)
        log.info("loaded %d events from %d files (%d skipped)", report.events, report.files_loaded, report.files_skipped)
        return report

    def _load_unit(self, unit: Unit, scope: str, report: LoadReport) -> int:
        """Insert one file's events; returns how many were offered (duplicates are ignored)."""
        if unit.error:
            report.skip(unit.name, unit.error)
            return 0
        groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = defaultdict(list)
        unrecognized = 0
        for event_id, obj in unit.objects:
            try:
                normalized = self.normalizer.normalize(obj)
            except Exception as exc:  # noqa: BLE001 - one odd event must not stop a load
                log.debug("cannot normalize an event in %s: %s", unit.name, exc)
                normalized = None
            if normalized is None:
                unrecognized += 1
                continue
            columns = self._row_columns(normalized, event_id)
            signature = tuple(columns)
            groups[signature].append((scope, event_id, dumps(normalized.doc), *columns.values()))
        events = sum(len(rows) for rows in groups.values())
        if not events:
            reason = unit.first_bad if not unit.objects else f"no Windows or ECS events in {len(unit.objects)} JSON values"
            report.skip(unit.name, f"not event JSON: {reason or 'no events'}")
            return 0
        if unit.warning:
            report.warn(unit.name, unit.warning)
        if unit.bad_lines or unrecognized:
            report.warn(unit.name, f"{unit.bad_lines} unparseable and {unrecognized} non-event lines skipped")
        report.files_loaded += 1
        report.bad_lines += unit.bad_lines + unrecognized
        for signature, rows in groups.items():
            names = self.ensure_columns(signature)
            targets = ["scope", "event.id", "doc"] + [names.get(key, "") for key in signature]
            keep = [i for i, target in enumerate(targets) if target]
            if len(keep) < len(targets):  # columns over the table limit stay in doc only
                rows = [tuple(row[i] for i in keep) for row in rows]
                targets = [targets[i] for i in keep]
            placeholders = ", ".join("?" * len(targets))
            sql = f"INSERT OR IGNORE INTO {TABLE} ({', '.join(map(quote_identifier, targets))}) VALUES ({placeholders})"
            self._db.executemany(sql, rows)
        return events

    @staticmethod
    def _row_columns(normalized: Normalized, event_id: str) -> dict[str, Any]:
        """Column name -> value: ECS fields, then raw Windows names (raw wins unless the name is fixed)."""
        doc = normalized.doc
        if "event.id" in doc and doc["event.id"] != event_id:
            doc["event.source_id"] = doc["event.id"]
        doc["event.id"] = event_id
        by_key: dict[str, tuple[str, Any]] = {}
        for key, value in doc.items():
            lowered = key.lower()
            if value is not None and not key.startswith(EVENT_DATA_PREFIX) and lowered not in ("scope", "event.id", "doc"):
                by_key[lowered] = (key, value)
        for key, value in normalized.raw.items():
            name = str(key)
            lowered = name.lower()
            if value is None or lowered in _FIXED or not name or len(name) > 128:
                continue
            by_key[lowered] = (name, value)
        return {name: sql_value(value) for _, (name, value) in sorted(by_key.items())}

    # -- reading ---------------------------------------------------------------------------
    def query(self, sql: str, params: Sequence[Any] = (), max_rows: int | None = None) -> tuple[list[str], list[tuple]]:
        """Run one read-only statement the code built on the reader connection, within the time budget."""
        with self._lock:
            return self._execute(self._reader, sql, params, max_rows)

    def query_events(
        self,
        sql: str,
        scope: str | None = None,
        time_range: TimeRange | None = None,
        max_rows: int | None = None,
    ) -> tuple[list[str], list[tuple]]:
        """Run written SQL (a user's, a model's, a Sigma rule's) in the sandbox, within the time budget.

        It reads the view `events`, which holds only the rows of `scope` and `time_range`; every other
        table, schema, pragma, write or non-pure function is refused by the authorizer (QueryRefused).
        """
        if WINDOW_VIEW in sql.lower():
            raise QueryRefused(f"the name {WINDOW_VIEW!r} is reserved by the local store")
        with self._lock:
            try:
                self._set_window(restriction(scope, time_range))
            except (sqlite3.Error, ValueError) as exc:  # e.g. a NUL in the scope
                raise ConnectorError(f"local query failed: cannot set its window: {exc}") from None
            return self._execute(self._sandbox, sql, (), max_rows)

    def _execute(
        self, conn: sqlite3.Connection, sql: str, params: Sequence[Any], max_rows: int | None
    ) -> tuple[list[str], list[tuple]]:
        """One statement under the lock: deadline set, failures named, the deadline cleared whatever happens."""
        self._deadline = time.monotonic() + self.query_timeout
        self._failure = None
        self._denials.clear()
        try:
            cursor = conn.execute(sql, params)
            names = [item[0] for item in cursor.description or ()]
            rows = cursor.fetchmany(max_rows) if max_rows is not None else cursor.fetchall()
            cursor.close()
        except sqlite3.DatabaseError as exc:
            raise self._translate(str(exc)) from None
        except (sqlite3.Error, OverflowError, ValueError) as exc:
            raise ConnectorError(f"local query failed: {exc}") from None
        finally:
            self._deadline = math.inf
        return names, rows

    def _translate(self, text: str) -> ConnectorError:
        """The error a failed statement means: refused, over budget (REGEXP included), or failed."""
        if self._denials:
            return QueryRefused(f"query refused by the local store: {self._denials[0]}")
        if "interrupted" in text or self._failure == _REGEX_TIMEOUT:
            what = " (a REGEXP match ran out of time)" if self._failure == _REGEX_TIMEOUT else ""
            return ConnectorError(f"local query exceeded its {self.query_timeout:g}s budget{what}")
        if self._failure:
            return ConnectorError(f"local query failed: {self._failure}")
        if "one statement at a time" in text:
            return QueryRefused("only one SQL statement is allowed")
        if "not authorized" in text or "readonly" in text or "read-only" in text:
            return QueryRefused(f"the local store is read-only for queries: {text}")
        return ConnectorError(f"local query failed: {text}")

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        _, rows = self.query(sql, params, max_rows=1)
        return rows[0][0] if rows else None

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """A statement on the writer connection (verdicts); never reachable from agent queries."""
        with self._lock:
            self._db.execute(sql, params)

    def count(self, scope: str | None = None) -> int:
        if scope is None:
            return int(self.scalar(f"SELECT COUNT(*) FROM {TABLE}") or 0)
        return int(self.scalar(f'SELECT COUNT(*) FROM {TABLE} WHERE "scope" = ?', (scope,)) or 0)

    def scopes(self) -> list[str]:
        _, rows = self.query(f'SELECT DISTINCT "scope" FROM {TABLE} ORDER BY "scope"')
        return [row[0] for row in rows]
