"""EDR action tickets under their action key: the `IdempotencyStore` the containment executor records in
(connectors/edr/executor.py), kept in the state database so that any worker polls the ticket another
recorded instead of sending the action again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from siemcrew.crew.database import Database
from siemcrew.crew.tables import edr_action_tickets
from siemcrew.crew.timeutil import iso, utcnow

T = edr_action_tickets.c


class TicketStore:
    def __init__(self, db: Database | Path | str) -> None:
        self.db = Database.of(db, "tickets")
        self.db.ensure([edr_action_tickets])

    def get(self, key: str) -> dict[str, Any] | None:
        with self.db.transaction(write=False) as conn:
            ticket = conn.execute(select(T.ticket).where(T.key == key)).scalar()
        return json.loads(ticket) if ticket is not None else None

    def put(self, key: str, ticket_json: dict[str, Any]) -> None:
        with self.db.transaction() as conn:
            self.db.upsert(conn, edr_action_tickets, {
                "key": key, "ticket": json.dumps(ticket_json, sort_keys=True), "updated_at": iso(utcnow())})

    def close(self) -> None:
        """Nothing to close (connections are per operation); kept for the executor's callers."""
