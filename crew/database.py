"""One store's database: transactions that queue writers, tables created on first use, a schema version.

A `Database` is an engine plus the name of the store using it. The embedded default gives each store its
own SQLite file in the home (as before); with `database:` set, every store shares one PostgreSQL database
and one connection pool. The stores hold no SQL of either dialect: they write SQLAlchemy Core, and
`sqldialect` holds what the engines do differently.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, inspect, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from siemcrew.crew import sqldialect
from siemcrew.crew.sqldialect import AdvisoryLocks, FileLocks, SessionLocks
from siemcrew.crew.tables import SCHEMA_VERSION, metadata, schema_versions
from siemcrew.crew.timeutil import iso, utcnow


class StoreError(RuntimeError):
    """The database cannot be opened, stayed locked beyond the busy timeout, or holds a newer schema."""


class _Shared:
    """A PostgreSQL engine and its session locks, shared by every store of the process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.locks = AdvisoryLocks(engine)
        self.ensured: set[str] = set()


_SHARED: dict[str, _Shared] = {}
_SHARED_MUTEX = threading.Lock()


def _after_fork() -> None:
    """A forked child (a Celery or multiprocessing worker) must open connections of its own."""
    for shared in _SHARED.values():
        shared.engine.dispose(close=False)
        shared.locks.forget()


os.register_at_fork(after_in_child=_after_fork)


def _shared(url: URL, pool_size: int) -> _Shared:
    key = url.render_as_string(hide_password=False)
    with _SHARED_MUTEX:
        if key not in _SHARED:
            _SHARED[key] = _Shared(sqldialect.postgres_engine(url, pool_size))
        return _SHARED[key]


def dispose_all() -> None:
    """Close every pooled PostgreSQL connection of this process (tests; a clean shutdown)."""
    with _SHARED_MUTEX:
        shared = list(_SHARED.values())
        _SHARED.clear()
    for item in shared:
        item.locks.release_all()
        item.engine.dispose()


def _described(exc: BaseException) -> str:
    """A driver error in one line, without the statement and parameters SQLAlchemy appends."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return " ".join(str(exc.orig).split())[:500]
    return " ".join(str(exc).split("\n[SQL:")[0].split())[:500]


class Database:
    """One store (`cases`, `approvals`, …) on its engine."""

    def __init__(self, engine: Engine, store: str, where: str, locks: SessionLocks,
                 shared: _Shared | None = None, readonly: bool = False) -> None:
        self.engine = engine
        self.store = store
        self.where = where
        """What error messages name: the SQLite file, or the PostgreSQL URL without its password."""
        self.locks = locks
        self.readonly = readonly
        """Creates nothing (doctor, `audit verify`): no tables, no schema row; SQLite opens the file read-only."""
        self._ensured: set[str] = shared.ensured if shared is not None else set()

    @classmethod
    def sqlite(cls, path: Path | str, store: str, busy_timeout_s: float = 30.0, readonly: bool = False) -> "Database":
        path = Path(path)
        if not readonly:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sqldialect.sqlite_engine(path.resolve(), busy_timeout_s, readonly)
        return cls(engine, store, str(path), FileLocks(path.parent), readonly=readonly)

    @classmethod
    def postgres(cls, url: URL | str, store: str, pool_size: int = 5, readonly: bool = False) -> "Database":
        url = make_url(url) if isinstance(url, str) else url
        try:
            shared = _shared(url, pool_size)
        except ModuleNotFoundError:
            raise StoreError("PostgreSQL needs the psycopg driver: pip install 'siemcrew[postgresql]'") from None
        return cls(shared.engine, store, url.render_as_string(hide_password=True), shared.locks, shared, readonly)

    @classmethod
    def of(cls, target: "Database | Path | str", store: str, busy_timeout_s: float = 30.0) -> "Database":
        """A store's database from what a caller has: a Database, a SQLite file path, or a PostgreSQL URL."""
        if isinstance(target, Database):
            return target
        if isinstance(target, str) and target.startswith("postgresql"):
            return cls.postgres(target, store)
        return cls.sqlite(target, store, busy_timeout_s)

    # -- schema --------------------------------------------------------------------------------
    def ensure(self, tables: Sequence[Table]) -> None:
        """Create this store's tables if they are missing and record its schema version; refuse a database
        written by a newer siemcrew. Once per engine and store in a process (PostgreSQL: schema changes
        are serialized by an advisory lock, so workers starting together do not race)."""
        if self.readonly or self.store in self._ensured:
            return
        try:
            with self.engine.connect() as conn:
                sqldialect.mark_write(conn, True)
                with conn.begin():
                    sqldialect.lock_for_write(conn, "schema")
                    metadata.create_all(conn, tables=[schema_versions, *tables])
                    row = conn.execute(select(schema_versions.c.version).where(
                        schema_versions.c.store == self.store)).first()
                    if row is None:
                        conn.execute(schema_versions.insert().values(store=self.store, version=SCHEMA_VERSION,
                                                                     updated_at=iso(utcnow())))
                    elif row[0] > SCHEMA_VERSION:
                        raise StoreError(f"{self.where}: the {self.store} tables are at schema version {row[0]}, "
                                         f"newer than this siemcrew ({SCHEMA_VERSION}): upgrade siemcrew")
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.where}: cannot create the schema: {_described(exc)}") from None
        self._ensured.add(self.store)

    def probe(self) -> tuple[str, dict[str, int]]:
        """The server's version and each store's recorded schema version (creating nothing)."""
        try:
            with self.engine.connect() as conn:
                server = ".".join(str(part) for part in (conn.dialect.server_version_info or ()))
                if not inspect(conn).has_table(schema_versions.name):
                    return server, {}
                rows = conn.execute(select(schema_versions.c.store, schema_versions.c.version)).all()
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.where}: cannot open: {_described(exc)}") from None
        return server, {store: int(version) for store, version in rows}

    def has(self, table: Table) -> bool:
        """Does the table exist (without creating anything)?"""
        try:
            with self.engine.connect() as conn:
                return inspect(conn).has_table(table.name)
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.where}: cannot open: {_described(exc)}") from None

    # -- transactions ----------------------------------------------------------------------------
    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[Connection]:
        """A transaction; a write one queues behind the store's other writers up front (SQLite: BEGIN
        IMMEDIATE; PostgreSQL: an advisory lock per store), so read-check-write sequences never interleave."""
        try:
            conn = self.engine.connect()
        except SQLAlchemyError as exc:
            raise StoreError(f"{self.where}: cannot open: {_described(exc)}") from None
        try:
            sqldialect.mark_write(conn, write)
            try:
                transaction = conn.begin()
                if write:
                    sqldialect.lock_for_write(conn, self.store)
            except SQLAlchemyError as exc:
                raise StoreError(f"{self.where}: busy or unreachable: {_described(exc)}") from None
            try:
                yield conn
            except BaseException as exc:
                if transaction.is_active:
                    transaction.rollback()
                if isinstance(exc, SQLAlchemyError):
                    raise StoreError(f"{self.where}: {_described(exc)}") from exc
                raise
            try:
                transaction.commit()
            except SQLAlchemyError as exc:
                raise StoreError(f"{self.where}: commit failed: {_described(exc)}") from None
        finally:
            conn.close()

    @staticmethod
    def upsert(conn: Connection, table: Table, values: dict[str, Any], update: Iterable[str] | None = None,
               key: Sequence[str] | None = None) -> None:
        """INSERT the row, or UPDATE the `update` columns (default: every column given but the key) of the row
        with the same `key` (default: the primary key; else the columns of a unique constraint)."""
        keys = list(key) if key is not None else [column.name for column in table.primary_key]
        statement = sqldialect.insert(conn, table).values(**values)
        names = [name for name in values if name not in keys] if update is None else list(update)
        conn.execute(statement.on_conflict_do_update(index_elements=keys,
                                                     set_={name: statement.excluded[name] for name in names}))

    @staticmethod
    def insert_new(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
        """INSERT the row unless one with its primary key exists; True when it was inserted."""
        keys = [column.name for column in table.primary_key]
        statement = sqldialect.insert(conn, table).values(**values).on_conflict_do_nothing(index_elements=keys)
        return conn.execute(statement, execution_options={"preserve_rowcount": True}).rowcount == 1
