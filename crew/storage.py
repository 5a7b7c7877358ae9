"""Where the state lives: the embedded SQLite files in the home, or one PostgreSQL database.

Embedded (no `database:` setting, zero set-up), as in every earlier version:
  <home>/cases.db (cases, alerts, intake keys, leases, quarantine, checkpoints), approvals.db, ledger.db,
  outbox.db, edr_tickets.db, flows.db, audit.jsonl (+ .head, .lock), run.lock.
PostgreSQL (`database: postgresql+psycopg://…`): every one of those is a table of that database, the run
lock and the leases are advisory locks, and the audit log is the `audit_log` table. The home still holds
crewAI's scratch folder and the local connector's files.

The stores take a `Database` (crew/database.py) and never ask which engine it is.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sqlalchemy import Table
from sqlalchemy.engine import URL, make_url

from siemcrew.crew.database import Database, StoreError
from siemcrew.crew.sqldialect import hold
from siemcrew.crew.tables import (SCHEMA_VERSION, actions, approval_decisions, audit_log, cases, edr_action_tickets,
                                  flow_states, outbox)

FILES = {"cases": "cases.db", "checkpoints": "cases.db", "approvals": "approvals.db", "ledger": "ledger.db",
         "outbox": "outbox.db", "tickets": "edr_tickets.db", "flows": "flows.db"}
"""The SQLite file of each store in the home."""
MAIN_TABLE: dict[str, Table] = {"cases": cases, "approvals": approval_decisions, "ledger": actions, "outbox": outbox,
                                "tickets": edr_action_tickets, "flows": flow_states, "audit": audit_log}
"""The table whose presence says a store was ever written (doctor and verify never create one)."""
AUDIT_FILE = "audit.jsonl"


class Storage:
    def __init__(self, home: Path, url: URL | None = None, pool_size: int = 5) -> None:
        self.home = home
        self.url = url
        self.pool_size = pool_size

    @classmethod
    def from_settings(cls, settings: Any) -> "Storage":
        database = settings.database
        if database is None:
            return cls(settings.home_path)
        url = make_url(database.url).set(drivername="postgresql+psycopg")
        password = database.password()
        if password:
            url = url.set(password=password)
        return cls(settings.home_path, url, database.pool_size)

    @property
    def engine(self) -> str:
        return "postgresql" if self.url is not None else "sqlite"

    def describe(self) -> str:
        """Where the state is, for people: the URL with its password masked, or the home's files."""
        if self.url is None:
            return f"embedded SQLite files in {self.home}"
        return self.url.render_as_string(hide_password=True)

    def label(self, store: str) -> str:
        """How messages name a store: its file in the home, or its table."""
        return FILES[store] if self.url is None else f"table {MAIN_TABLE[store].name}"

    def database(self, store: str, readonly: bool = False) -> Database:
        if self.url is not None:
            return Database.postgres(self.url, store, self.pool_size, readonly=readonly)
        return Database.sqlite(self.home / FILES[store], store, readonly=readonly)

    def exists(self, store: str) -> bool:
        """Was this store ever written? (Creates nothing: doctor and `audit verify` only look.)"""
        if self.url is None:
            return (self.home / (AUDIT_FILE if store == "audit" else FILES[store])).exists()
        return self.database(store, readonly=True).has(MAIN_TABLE[store])

    def check(self) -> str:
        """Doctor's row: the database answers, and which stores have tables at which schema version
        (missing ones are created on first use; a newer schema than this siemcrew's is an error)."""
        if self.url is None:
            return self.describe()
        db = self.database("cases", readonly=True)
        server, versions = db.probe()
        newer = {store: version for store, version in versions.items() if version > SCHEMA_VERSION}
        if newer:
            raise StoreError(f"{self.describe()}: tables of a newer siemcrew (schema {newer}); this one knows "
                             f"version {SCHEMA_VERSION}")
        missing = sorted(set(MAIN_TABLE) - set(versions))
        return (f"{self.describe()}: PostgreSQL {server}, schema version {SCHEMA_VERSION}; "
                + (f"created on first use: {', '.join(missing)}" if missing else "every store's tables present"))

    # -- the stores ----------------------------------------------------------------------------
    def cases(self) -> Any:
        from siemcrew.crew.casestore import CaseStore

        return CaseStore(self.database("cases"))

    def approvals(self, readonly: bool = False) -> Any:
        from siemcrew.crew.approvals import ApprovalStore

        return ApprovalStore(self.database("approvals", readonly))

    def ledger(self, readonly: bool = False) -> Any:
        from siemcrew.crew.ledger import ActionLedger

        return ActionLedger(self.database("ledger", readonly))

    def outbox(self) -> Any:
        from siemcrew.crew.outbox import Outbox

        return Outbox(self.database("outbox"))

    def tickets(self) -> Any:
        from siemcrew.crew.tickets import TicketStore

        return TicketStore(self.database("tickets"))

    def checkpoints(self) -> Any:
        from siemcrew.crew.checkpoints import CheckpointStore

        return CheckpointStore(self.database("checkpoints"), legacy_dir=self.home if self.url is None else None)

    def audit_log(self, key: bytes | None = None) -> Any:
        """The audit log: the file in the home, or the `audit_log` table."""
        if self.url is None:
            from siemcrew.crew.audit import AuditLog

            return AuditLog(self.home / AUDIT_FILE, key=key)
        from siemcrew.crew.audittable import TableAuditLog

        return TableAuditLog(self.database("audit"), key=key)

    def audit_source(self) -> Path | Database:
        """What `audit verify` reads (creating nothing): the file, or the database holding the table."""
        return self.home / AUDIT_FILE if self.url is None else self.database("audit", readonly=True)

    def flow_persistence(self) -> Any:
        from siemcrew.crew.flowstore import SqlFlowPersistence

        return SqlFlowPersistence.on(self.database("flows"))

    def run_lock(self) -> AbstractContextManager[None]:
        """Held while `siemcrew run` works; LockBusy when another run holds it (exit 3)."""
        return hold(self.database("cases").locks, "run", "run")
