"""The embedded event store: one SQLite table `events`, loaded from files, queried read-only.

Why SQLite: it ships with Python, runs in-process on a file or in memory, and pySigma's sqlite
backend targets it. Every TEXT column is `COLLATE NOCASE`, so `=`, `IN` and `LIKE` compare
case-insensitively as Sigma does. Columns are the fixed ECS fields the crew relies on, plus one
column per raw Windows field name (added as new names appear) so Sigma SQL runs as generated.
The full ECS event is kept as JSON in `doc`, which is what searches return.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from siemcrew.connectors.base import ConnectorError, QueryRefused
from siemcrew.connectors.local.loader import MAX_ARCHIVE_BYTES, LoadReport, Unit, default_scope, iter_units
from siemcrew.connectors.local.normalize import EVENT_DATA_PREFIX, Normalized, Normalizer, WindowsMapping, dumps

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
_READ_ACTIONS = frozenset(
    [sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, getattr(sqlite3, "SQLITE_RECURSIVE", 33)]
)
_DENIED_FUNCTIONS = frozenset(["load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"])


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@lru_cache(maxsize=512)
def _pattern(expression: str) -> re.Pattern[str]:
    return re.compile(expression, re.IGNORECASE)


def regexp(expression: str | None, value: Any) -> int | None:
    """SQLite's `value REGEXP expression`: Python `re`, case-insensitive, search semantics."""
    if expression is None or value is None:
        return None
    return 1 if _pattern(expression).search(str(value)) else 0


def _read_only_authorizer(action: int, arg1: str | None, arg2: str | None, _db: str | None, _src: str | None) -> int:
    """Defence in depth under the text guard: the agent connection may only read."""
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
    """SQLite events table with a loader, a writer connection and a read-only agent connection."""

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
        self._deadline = float("inf")
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

    # -- connections ---------------------------------------------------------------------
    @staticmethod
    def _connect(uri: str) -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        conn.create_function("REGEXP", 2, regexp, deterministic=True)
        return conn

    def _over_budget(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def close(self) -> None:
        with self._lock:
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
        """Run one read-only statement on the agent connection, within the time budget."""
        with self._lock:
            self._deadline = time.monotonic() + self.query_timeout
            try:
                cursor = self._reader.execute(sql, params)
                names = [item[0] for item in cursor.description or ()]
                rows = cursor.fetchmany(max_rows) if max_rows is not None else cursor.fetchall()
                cursor.close()
            except sqlite3.DatabaseError as exc:
                text = str(exc)
                if "interrupted" in text:
                    raise ConnectorError(f"local query exceeded its {self.query_timeout:g}s budget") from None
                if "not authorized" in text or "readonly" in text or "read-only" in text:
                    raise QueryRefused(f"the local store is read-only for queries: {text}") from None
                raise ConnectorError(f"local query failed: {text}") from None
            except (sqlite3.Error, OverflowError, ValueError) as exc:
                raise ConnectorError(f"local query failed: {exc}") from None
            finally:
                self._deadline = float("inf")
        return names, rows

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
