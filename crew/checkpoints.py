"""Where `siemcrew run` resumes fetching: one checkpoint per SIEM connector, in the state database.

Earlier versions kept it in `<home>/checkpoint-<siem>.json`; `get` still reads that file while the
database has none, so an upgraded home resumes where it stopped instead of fetching everything again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import select

from siemcrew.crew.database import Database
from siemcrew.crew.tables import checkpoints


class CheckpointStore:
    def __init__(self, db: Database | Path | str, legacy_dir: Path | None = None) -> None:
        self.db = Database.of(db, "checkpoints")
        self.db.ensure([checkpoints])
        self.legacy_dir = legacy_dir

    def get(self, name: str) -> str | None:
        with self.db.transaction(write=False) as conn:
            row = conn.execute(select(checkpoints.c.value).where(checkpoints.c.name == name)).first()
        if row is not None:
            return row[0]
        legacy = self.legacy_dir / f"checkpoint-{name}.json" if self.legacy_dir else None
        if legacy is not None and legacy.is_file():
            return json.loads(legacy.read_text(encoding="utf-8")).get("checkpoint")
        return None

    def put(self, name: str, value: str | None) -> None:
        with self.db.transaction() as conn:
            self.db.upsert(conn, checkpoints, {"name": name, "value": value, "updated_at": time.time()})
