"""Everything that differs between SQLite and PostgreSQL, in one place.

The stores write one set of SQLAlchemy Core statements; what the engines do differently lives here:
- engines: SQLite is one file per store, a fresh connection per operation (WAL, full sync, busy
  timeout); PostgreSQL is one pooled engine per URL, shared by every store of the process;
- write transactions: `BEGIN IMMEDIATE` takes SQLite's file write lock up front; on PostgreSQL a
  transaction-scoped advisory lock per store (`pg_advisory_xact_lock`) queues writers the same way,
  so read-check-write sequences behave identically on both (released by COMMIT or ROLLBACK);
- upserts: each dialect's `insert()` (both offer `on_conflict_do_update/nothing` and `excluded`);
- session locks (the run lock, PostgreSQL leases): an `fcntl` lock file beside the SQLite files, or a
  session advisory lock (`pg_try_advisory_lock`) on a connection held for as long as the lock is, so it
  frees itself when the holder dies (server-side TCP keepalives bound how long a vanished host holds it).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.pool import NullPool

_WRITE = "siemcrew_write"
# Seconds before the server probes an idle lock-holding connection, between probes, and probes lost before
# it gives up: a holder whose machine vanished frees its locks after about 2 minutes.
KEEPALIVES = {"tcp_keepalives_idle": 60, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 6}


class LockBusy(RuntimeError):
    """Another process holds the lock (e.g. another `siemcrew run`)."""


def lock_key(name: str) -> int:
    """A signed 64-bit advisory-lock key for a name (siemcrew's namespace; collisions are negligible)."""
    return int.from_bytes(hashlib.sha256(f"siemcrew:{name}".encode()).digest()[:8], "big", signed=True)


def sqlite_engine(path: Path, busy_timeout_s: float, readonly: bool = False) -> Engine:
    """One SQLite file: a fresh connection per operation (as safe across fork as across processes)."""
    url = f"sqlite:///file:{path}?mode=ro&uri=true" if readonly else f"sqlite:///{path}"
    engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": busy_timeout_s})

    @event.listens_for(engine, "connect")
    def _connect(dbapi: Any, _record: Any) -> None:
        dbapi.isolation_level = None  # transactions are begun below, not by the driver
        cursor = dbapi.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        if not readonly:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


def postgres_engine(url: URL, pool_size: int = 5) -> Engine:
    """One pooled engine per database URL (pre-pinged, so a restarted server costs one retry, not an error)."""
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=2 * pool_size,
                         connect_args={"connect_timeout": 10, "application_name": "siemcrew"})


def mark_write(conn: Connection, write: bool) -> None:
    """Say, before the transaction begins, whether it writes (SQLite then begins it IMMEDIATE)."""
    conn.execution_options(**{_WRITE: write})


def lock_for_write(conn: Connection, store: str) -> None:
    """Inside a write transaction: queue behind the other writers of this store (PostgreSQL only;
    SQLite's BEGIN IMMEDIATE already did)."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(lock_key(f"store:{store}"))))


def insert(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT, which knows `on_conflict_do_update` / `on_conflict_do_nothing`."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


class SessionLocks(Protocol):
    """Named locks held by this process until released (or until it dies)."""

    across_hosts: bool
    """True when the lock also excludes processes on other machines and frees itself when its holder dies."""

    def try_acquire(self, name: str) -> bool: ...

    def release(self, name: str) -> None: ...

    def where(self, name: str) -> str: ...


@contextmanager
def hold(locks: SessionLocks, name: str, what: str) -> Iterator[None]:
    """Hold a named lock for the block; LockBusy when another process holds it."""
    if not locks.try_acquire(name):
        raise LockBusy(f"another siemcrew {what} holds {locks.where(name)}")
    try:
        yield
    finally:
        locks.release(name)


class FileLocks:
    """SQLite's session locks: `fcntl` locks on `<name>.lock` files in the folder of the database files
    (the kernel frees them when the process dies; they exclude processes of this machine only)."""

    across_hosts = False

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._held: dict[str, IO[str]] = {}
        self._mutex = threading.Lock()

    def where(self, name: str) -> str:
        return str(self.folder / f"{name}.lock")

    def try_acquire(self, name: str) -> bool:
        with self._mutex:
            if name in self._held:
                return True
            self.folder.mkdir(parents=True, exist_ok=True)
            handle = open(self.folder / f"{name}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                return False
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            self._held[name] = handle
            return True

    def release(self, name: str) -> None:
        with self._mutex:
            handle = self._held.pop(name, None)
        if handle is not None:
            handle.close()


class AdvisoryLocks:
    """PostgreSQL's session locks: `pg_try_advisory_lock` on a connection kept for as long as the lock is
    held. The server frees the lock when that session ends: a killed worker's locks free at once, a vanished
    machine's once the keepalives give up. One registry per engine, so every store of a process shares it."""

    across_hosts = True

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._held: dict[str, Connection] = {}
        self._mutex = threading.Lock()

    def where(self, name: str) -> str:
        return f"the advisory lock {name!r} in {self.engine.url.render_as_string(hide_password=True)}"

    def try_acquire(self, name: str) -> bool:
        with self._mutex:
            if name in self._held:
                return True
            conn = self.engine.connect()
            try:
                for setting, value in KEEPALIVES.items():
                    conn.execute(text(f"SET {setting} = {int(value)}"))
                got = bool(conn.execute(select(func.pg_try_advisory_lock(lock_key(name)))).scalar())
                conn.commit()  # a session lock outlives the transaction; no transaction stays open
            except BaseException:
                conn.close()
                raise
            if not got:
                conn.close()
                return False
            self._held[name] = conn
            return True

    def release(self, name: str) -> None:
        with self._mutex:
            conn = self._held.pop(name, None)
        if conn is None:
            return
        try:
            conn.execute(select(func.pg_advisory_unlock(lock_key(name))))
            conn.commit()
        finally:
            conn.close()

    def release_all(self) -> None:
        for name in list(self._held):
            self.release(name)

    def forget(self) -> None:
        """After fork: the parent's held connections are not this process's to use or close."""
        self._held = {}
        self._mutex = threading.Lock()
