"""crewAI flow persistence on the state database, so a flow paused in one process (or on one machine)
resumes in any other: `Flow.from_pending(flow_id, persistence).resume(...)`.

State snapshots and pending feedback (one row per paused flow) keep the columns of crewAI's
`SQLiteFlowPersistence`, so an embedded home's `flows.db` reads as before. Unlike crewAI's, a flow keeps only
its latest snapshot: `load_state` reads nothing else, and a row per finished method (each a whole case with
its evidence) grew the store by ~1.6 MB per case. The audit log is the history.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from crewai.flow.persistence.base import FlowPersistence
from pydantic import BaseModel, Field, PrivateAttr
from sqlalchemy import Connection, delete, select

from siemcrew.crew.database import Database
from siemcrew.crew.tables import FLOW_TABLES, flow_states, pending_feedback

if TYPE_CHECKING:
    from crewai.flow.async_feedback.types import PendingFeedbackContext

F, P = flow_states.c, pending_feedback.c


def _json(value: Any) -> str:
    return json.dumps(value, default=_plain)


def _plain(value: Any) -> Any:
    """What crewAI's SQLite persistence stores for values JSON cannot hold."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _state_dict(state: dict[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(state, BaseModel):
        return state.model_dump(mode="json")
    if isinstance(state, dict):
        return state
    raise ValueError(f"state_data must be either a Pydantic BaseModel or dict, got {type(state)}")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class SqlFlowPersistence(FlowPersistence):
    """Flow states and pending feedback in the `flow_states` / `pending_feedback` tables."""

    persistence_type: str = Field(default="SqlFlowPersistence")
    where: str = ""
    """The database, for display (a SQLite file or a URL without its password)."""
    _db: Database = PrivateAttr()

    @classmethod
    def on(cls, db: Database) -> "SqlFlowPersistence":
        persistence = cls(where=db.where)
        persistence._db = db
        persistence.init_db()
        return persistence

    def init_db(self) -> None:
        if getattr(self, "_db", None) is not None:
            self._db.ensure(FLOW_TABLES)

    def save_state(self, flow_uuid: str, method_name: str, state_data: dict[str, Any] | BaseModel) -> None:
        with self._db.transaction() as conn:
            self._snapshot(conn, flow_uuid, method_name, _json(_state_dict(state_data)))

    @staticmethod
    def _snapshot(conn: Connection, flow_uuid: str, method_name: str, state: str) -> None:
        """The flow's latest state replaces its earlier snapshots (in the caller's transaction)."""
        conn.execute(delete(flow_states).where(F.flow_uuid == flow_uuid))
        conn.execute(flow_states.insert().values(flow_uuid=flow_uuid, method_name=method_name, timestamp=_now(),
                                                 state_json=state))

    def load_state(self, flow_uuid: str) -> dict[str, Any] | None:
        with self._db.transaction(write=False) as conn:
            text = conn.execute(select(F.state_json).where(F.flow_uuid == flow_uuid)
                                .order_by(F.id.desc()).limit(1)).scalar()
        state = json.loads(text) if text is not None else None
        return state if isinstance(state, dict) else None

    def save_pending_feedback(self, flow_uuid: str, context: PendingFeedbackContext,
                              state_data: dict[str, Any] | BaseModel) -> None:
        """The snapshot and the paused flow's context, in one transaction."""
        state = _json(_state_dict(state_data))
        with self._db.transaction() as conn:
            self._snapshot(conn, flow_uuid, context.method_name, state)
            self._db.upsert(conn, pending_feedback, {"flow_uuid": flow_uuid, "context_json": _json(context.to_dict()),
                                                     "state_json": state, "created_at": _now()}, key=("flow_uuid",))

    def load_pending_feedback(self, flow_uuid: str) -> tuple[dict[str, Any], PendingFeedbackContext] | None:
        from crewai.flow.async_feedback.types import PendingFeedbackContext

        with self._db.transaction(write=False) as conn:
            row = conn.execute(select(P.state_json, P.context_json).where(P.flow_uuid == flow_uuid)).first()
        if row is None:
            return None
        return json.loads(row[0]), PendingFeedbackContext.from_dict(json.loads(row[1]))

    def clear_pending_feedback(self, flow_uuid: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(delete(pending_feedback).where(P.flow_uuid == flow_uuid))
