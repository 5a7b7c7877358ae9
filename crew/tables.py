"""Every table siemcrew keeps, defined once for SQLite and PostgreSQL (SQLAlchemy Core).

The SQLite definitions match the files earlier versions wrote, so an existing home keeps working.
Text that is compared or sorted (keys, ISO times) uses byte order on PostgreSQL too (collation "C"), as
SQLite does; times are ISO-8601 text or epoch seconds computed by siemcrew, never by the server.
`siemcrew_schema` records each store's schema version, for a later migration to read.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, ForeignKey, Index, Integer, MetaData, Table, Text, text

SCHEMA_VERSION = 1

metadata = MetaData()

Key = Text().with_variant(Text(collation="C"), "postgresql")
"""Text compared and ordered byte by byte on both engines. (Values bound to it are cast with the collation,
which PostgreSQL's `BETWEEN … AND …` cannot parse: compare with `>=` and `<=` instead.)"""
RowId = BigInteger().with_variant(Integer(), "sqlite")
"""An auto-increment id (SQLite: the rowid alias, never reused)."""

schema_versions = Table(
    "siemcrew_schema", metadata,
    Column("store", Key, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("updated_at", Key, nullable=False),
)

# -- cases (crew/casestore.py) -------------------------------------------------------------------
cases = Table(
    "cases", metadata,
    Column("id", Key, primary_key=True),
    Column("status", Key, nullable=False),
    Column("verdict", Key, nullable=False),
    Column("host", Key),
    Column("rule", Key),
    Column("alert_time", Key),
    Column("flow_id", Key),
    Column("updated", Key, nullable=False),
    Column("body", Text, nullable=False),
)
alerts = Table(
    "alerts", metadata,
    Column("alert_id", Key, primary_key=True),
    Column("case_id", Key, nullable=False),
    Column("received", Key, nullable=False),
)
intake_keys = Table(
    "intake_keys", metadata,
    Column("key", Key, primary_key=True),
    Column("case_ids", Text, nullable=False),
    Column("received", Key, nullable=False),
)
leases = Table(
    "leases", metadata,
    Column("case_id", Key, primary_key=True),
    Column("host", Key, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("expires", Float, nullable=False),
)
quarantine = Table(
    "quarantine", metadata,
    Column("id", Key, primary_key=True),
    Column("body", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("at", Key, nullable=False),
)
checkpoints = Table(
    "checkpoints", metadata,
    Column("name", Key, primary_key=True),
    Column("value", Text),
    Column("updated_at", Float, nullable=False),
)
grouped_alerts = Table(
    "grouped_alerts", metadata,
    Column("alert_id", Key, primary_key=True),
    Column("case_id", Key, nullable=False, index=True),
    Column("body", Text, nullable=False),
)
"""A noisy detection's duplicates beyond those its case body keeps (crew/casestore.py ALERTS_IN_CASE)."""

CASE_TABLES = (cases, alerts, intake_keys, leases, quarantine, grouped_alerts)

# -- approvals (crew/approvals.py) ---------------------------------------------------------------
approval_requests = Table(
    "approval_requests", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("case_id", Key, nullable=False),
    Column("action", Key, nullable=False),
    Column("target", Key, nullable=False),
    Column("args_sha256", Key, nullable=False),
    Column("args", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("policy_reasons", Text, nullable=False),
    Column("requested_at", Key, nullable=False),
    Column("flow_id", Key),
    Column("state", Key, nullable=False),
    Index("approval_one_pending", "case_id", "action", "target", unique=True,
          sqlite_where=text("state = 'pending'"), postgresql_where=text("state = 'pending'")),
    Index("approval_requests_by_key", "case_id", "action", "target", "args_sha256"),
    sqlite_autoincrement=True,
)
approval_decisions = Table(
    "approval_decisions", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("request_id", RowId, ForeignKey("approval_requests.id"), nullable=False, unique=True),
    Column("case_id", Key, nullable=False),
    Column("action", Key, nullable=False),
    Column("target", Key, nullable=False),
    Column("args_sha256", Key, nullable=False),
    Column("decision", Key, nullable=False),
    Column("by", Key, nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", Key, nullable=False),
    Column("expires_at", Key, nullable=False),
    Index("approval_decisions_by_case", "case_id", "action", "target"),
    sqlite_autoincrement=True,
)
APPROVAL_TABLES = (approval_requests, approval_decisions)

# -- the action ledger (crew/ledger.py) ----------------------------------------------------------
actions = Table(
    "actions", metadata,
    Column("key", Key, primary_key=True),
    Column("action", Key, nullable=False),
    Column("target", Key, nullable=False),
    Column("args_sha256", Key, nullable=False),
    Column("state", Key, nullable=False),
    Column("detail", Text, nullable=False, server_default=""),
    Column("ticket", Text),
    Column("pid", Integer, nullable=False),
    Column("host", Key, nullable=False),
    Column("claimed_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("version", Integer, nullable=False),
    Index("actions_by_action", "action", "claimed_at"),
    Index("actions_by_state", "state", "updated_at"),
)

# -- the outbox (crew/outbox.py) -----------------------------------------------------------------
outbox = Table(
    "outbox", metadata,
    Column("key", Key, primary_key=True),
    Column("case_id", Key, nullable=False),
    Column("kind", Key, nullable=False),
    Column("action", Key, nullable=False),
    Column("target", Key, nullable=False),
    Column("state", Key, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_at", Float, nullable=False),
    Column("last_error", Text, nullable=False, server_default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Index("outbox_due", "state", "next_at"),
    Index("outbox_by_case", "case_id", "state"),
)

# -- EDR action tickets (crew/tickets.py) --------------------------------------------------------
edr_action_tickets = Table(
    "edr_action_tickets", metadata,
    Column("key", Key, primary_key=True),
    Column("ticket", Text, nullable=False),
    Column("updated_at", Key, nullable=False),
)

# -- flow persistence (crew/flowstore.py; the columns of crewAI's SQLiteFlowPersistence) ---------
flow_states = Table(
    "flow_states", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("flow_uuid", Key, nullable=False),
    Column("method_name", Key, nullable=False),
    Column("timestamp", Key, nullable=False),
    Column("state_json", Text, nullable=False),
    Index("idx_flow_states_uuid", "flow_uuid"),
    sqlite_autoincrement=True,
)
pending_feedback = Table(
    "pending_feedback", metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("flow_uuid", Key, nullable=False, unique=True),
    Column("context_json", Text, nullable=False),
    Column("state_json", Text, nullable=False),
    Column("created_at", Key, nullable=False),
    Index("idx_pending_feedback_uuid", "flow_uuid"),
    sqlite_autoincrement=True,
)
FLOW_TABLES = (flow_states, pending_feedback)

# -- the audit log in a database (crew/audittable.py) --------------------------------------------
audit_log = Table(
    "audit_log", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("case_id", Key),
    Column("kind", Key, nullable=False),
    Column("line", Text, nullable=False),
    Index("audit_log_by_case", "case_id", "seq"),
)
audit_head = Table(
    "audit_head", metadata,
    Column("name", Key, primary_key=True),
    Column("anchor", Text, nullable=False),
)
AUDIT_TABLES = (audit_log, audit_head)
