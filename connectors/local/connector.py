"""`LocalConnector`: the SiemConnector over the embedded store (the offline default).

Hunts arrive as `EventQuery` and become SQL through `SqlDialect` (run on the store's reader);
native SQL passes the read-only guard and Sigma rules are converted with pySigma, and both run in the
store's sandbox, where `events` is a view of the requested scope/time window and nothing else is
readable. Every result carries the exact SQL sent.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from siemcrew.connectors.base import (
    AlertBatch,
    AlertUpdate,
    ConnectorError,
    EventQuery,
    Filter,
    HealthReport,
    SearchResult,
)
from siemcrew.connectors.dialect import SqlDialect
from siemcrew.connectors.local import sqltext
from siemcrew.connectors.local.alerts import alert_from_hits, host_of, next_batch, read_alert_files
from siemcrew.connectors.local.normalize import EVENT_DATA_PREFIX
from siemcrew.connectors.local.sigma import RuleMeta, SigmaConverter
from siemcrew.connectors.local.store import TABLE, EventStore
from siemcrew.connectors.local.transforms import timestamp
from siemcrew.crew.models import Alert, Case, TimeRange
from siemcrew.crew.timeutil import iso, utcnow

log = logging.getLogger(__name__)

MAX_RULE_HITS = 5000


def _parse_doc(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


MISSING_COLUMN = re.compile(r"no such column: \"?([^\"\s]+)\"?")
MISSING_COLUMN_RETRIES = 16
T = TypeVar("T")


class LocalConnector:
    """SiemConnector over an `EventStore`, with alert JSON files and Sigma rules as alert sources."""

    name = "local"
    language = "sql"

    def __init__(
        self,
        store: EventStore,
        alert_files: Sequence[Path | str] = (),
        sigma_rules: Sequence[Path | str] = (),
        cases_dir: Path | str | None = None,
        sigma_config: Path | str | None = None,
    ) -> None:
        self.store = store
        self.alert_files = [Path(p).expanduser() for p in alert_files]
        self.sigma_rules = [Path(p).expanduser() for p in sigma_rules]
        self.cases_dir = Path(cases_dir).expanduser() if cases_dir else None
        self.sigma = SigmaConverter(sigma_config)
        self.alert_problems: list[tuple[str, str]] = []

    @classmethod
    def open(
        cls,
        db: str | Path = ":memory:",
        events: Sequence[str | Path] = (),
        alerts: Sequence[str | Path] = (),
        sigma_rules: Sequence[str | Path] = (),
        cases_dir: str | Path | None = None,
    ) -> "LocalConnector":
        """Build a store at `db`, load `events` (one scope per path) and wire the alert sources."""
        store = EventStore(db)
        if events:
            store.load(list(events))
        return cls(store, alert_files=list(alerts), sigma_rules=list(sigma_rules), cases_dir=cases_dir)

    # -- hunting -------------------------------------------------------------------------------
    def _field_map(self, fields: Sequence[str]) -> dict[str, str]:
        """ECS field -> column; `winlog.event_data.X` reads the raw column X. Absent columns are added empty."""
        wanted: dict[str, str] = {}
        for field in fields:
            sqltext.check_field(field)
            column = field[len(EVENT_DATA_PREFIX):] if field.startswith(EVENT_DATA_PREFIX) else field
            wanted[field] = column
        resolved = self.store.ensure_columns(wanted.values())
        missing = [f for f, c in wanted.items() if c not in resolved]
        if missing:
            raise ConnectorError(f"the local store cannot add more columns for {missing}")
        return {field: resolved[column] for field, column in wanted.items()}

    def search(self, query: EventQuery) -> SearchResult:
        scoped = query.model_copy(deep=True)
        scoped.limit = max(0, int(scoped.limit))  # SQLite reads a negative LIMIT as "no limit"
        if scoped.scope is not None:
            scoped.filters.append(Filter(field="scope", op="eq", value=scoped.scope))
        every = [*scoped.filters, *(flt for group in scoped.any_of for flt in group)]
        for flt in every:  # stored as ISO-8601 ms Z text: compare like with like
            if flt.field == "@timestamp" and flt.op in ("eq", "in", "gte", "lte"):
                stamps = [timestamp(value) or value for value in flt.values()]
                flt.value = stamps if flt.op == "in" else stamps[0]
        fields = [flt.field for flt in every]
        fields += list(scoped.group_by) + (["event.category"] if scoped.categories else [])
        dialect = SqlDialect(field_map=self._field_map(fields), table=TABLE)
        sql = dialect.translate(scoped)
        names, rows = self.store.query(sql)
        limit = scoped.limit
        if scoped.group_by:
            events = [dict(zip([*scoped.group_by, "count"], row)) for row in rows]
            count_sql = (
                f"SELECT COUNT(*) FROM (SELECT 1 FROM {TABLE} WHERE {dialect.where(scoped)} GROUP BY "
                + ", ".join(dialect.quote_field(f) for f in scoped.group_by)
                + ")"
            )
        else:
            position = names.index("doc")
            events = [_parse_doc(row[position]) for row in rows]
            count_sql = f"SELECT COUNT(*) FROM {TABLE} WHERE {dialect.where(scoped)}"
        total = len(rows) if len(rows) < limit else int(self.store.scalar(count_sql) or 0)
        return SearchResult(
            connector=self.name, language=self.language, query=sql, total=total, events=events, truncated=total > limit
        )

    def _run(
        self, sql: str, limit: int, language: str, time_range: TimeRange | None = None, scope: str | None = None
    ) -> SearchResult:
        """Run written SQL in the sandbox, keep `limit` rows, count the rest; rows with a `doc` become that doc."""
        limit = max(0, int(limit))
        names, rows = self.store.query_events(sql, scope, time_range, max_rows=limit + 1)
        total = len(rows)
        if total > limit:
            # The query on lines of its own: a trailing `-- comment` must not swallow the ")".
            counted = f"SELECT COUNT(*) FROM (\n{sql}\n)"
            total = int(self.store.query_events(counted, scope, time_range, max_rows=1)[1][0][0] or 0)
            rows = rows[:limit]
        if "doc" in names:
            position = names.index("doc")
            events = [_parse_doc(row[position]) for row in rows]
        else:
            events = [dict(zip(names, row)) for row in rows]
        return SearchResult(
            connector=self.name, language=language, query=sql, total=total, events=events, truncated=total > limit
        )

    def run_native(self, query: str, time_range: TimeRange | None = None, limit: int = 200) -> SearchResult:
        """One read-only SELECT/WITH statement over `events`, the view of `time_range`'s rows."""
        return self._run(sqltext.check_read_only(query), limit, self.language, time_range=time_range)

    def sigma_sql(self, rule_yaml: str) -> str:
        """The rule as one SELECT over `events`; the scope/time window is the view's, not the text's."""
        converted = self.sigma.convert(rule_yaml)
        return f'SELECT * FROM {TABLE} WHERE {converted.where} ORDER BY "@timestamp" ASC'

    def run_sigma(
        self, rule_yaml: str, time_range: TimeRange | None = None, limit: int = 200, scope: str | None = None
    ) -> SearchResult:
        """Convert with pySigma's sqlite backend (variants in sigma_local.yaml) and run over the store.

        A field no loaded event carries is no error: it is added as an empty column, so the rule
        simply matches nothing there (as it would on a SIEM without that field).
        """
        sql = self.sigma_sql(rule_yaml)
        return self._absent_fields_are_empty(lambda: self._run(sql, limit, "sigma", time_range, scope))

    def _absent_fields_are_empty(self, run: Callable[[], T]) -> T:
        """Rules name fields no loaded event carries; add them as empty columns and run again."""
        for _ in range(MISSING_COLUMN_RETRIES):
            try:
                return run()
            except ConnectorError as exc:
                missing = MISSING_COLUMN.search(str(exc))
                if not missing:
                    raise
                self.store.ensure_columns([missing.group(1)])
        return run()

    # -- alerts --------------------------------------------------------------------------------
    def _rule_files(self) -> list[Path]:
        files: list[Path] = []
        for path in self.sigma_rules:
            if path.is_dir():
                files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in (".yml", ".yaml")))
            else:
                files.append(path)
        return files

    def sigma_alerts(self) -> list[Alert]:
        """Each configured rule run over the whole store, hits grouped per (scope, host) into one Alert."""
        alerts: list[Alert] = []
        for path in self._rule_files():
            try:
                text = path.read_text(encoding="utf-8")
                sql = self.sigma_sql(text)
                meta = self.sigma.convert(text).meta.model_copy(update={"path": str(path)})
                names, rows = self._absent_fields_are_empty(
                    lambda: self.store.query_events(sql, max_rows=MAX_RULE_HITS + 1))
            except (OSError, UnicodeDecodeError, ConnectorError) as exc:
                log.warning("skipped Sigma rule %s: %s", path, exc)
                self.alert_problems.append((str(path), str(exc)))
                continue
            if len(rows) > MAX_RULE_HITS:
                log.warning("Sigma rule %s hit more than %d events; alerting on the first %d", path, MAX_RULE_HITS, MAX_RULE_HITS)
                rows = rows[:MAX_RULE_HITS]
            alerts.extend(self._group_hits(meta, names, rows, sql))
        return alerts

    @staticmethod
    def _group_hits(meta: RuleMeta, names: list[str], rows: list[tuple], sql: str) -> list[Alert]:
        doc_at, scope_at = names.index("doc"), names.index("scope")
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            doc = _parse_doc(row[doc_at])
            if doc.get("@timestamp"):
                groups[(row[scope_at], host_of(doc) or "")].append(doc)
        alerts = []
        for (scope, _host), hits in sorted(groups.items()):
            hits.sort(key=lambda hit: (hit["@timestamp"], hit.get("event.id") or ""))
            alerts.append(alert_from_hits(meta, scope, hits, sql))
        return alerts

    def fetch_alerts(self, checkpoint: str | None, limit: int = 100) -> AlertBatch:
        """Alerts not yet emitted under `checkpoint`, oldest first; the returned checkpoint includes them."""
        file_alerts, problems = read_alert_files(self.alert_files)
        self.alert_problems = problems
        batch, new_checkpoint = next_batch([*file_alerts, *self.sigma_alerts()], checkpoint, limit)
        return AlertBatch(alerts=batch, checkpoint=new_checkpoint,
                          problems=[f"{name}: {reason}" for name, reason in problems])

    # -- write-back ------------------------------------------------------------------------------
    def update_alert(self, alert: Alert, update: AlertUpdate) -> None:
        self.store.write(
            "INSERT INTO verdicts (alert_id, status, verdict, comment, at) VALUES (?, ?, ?, ?, ?)",
            (alert.id, update.status, update.verdict, update.comment, iso(utcnow())),
        )

    def verdicts(self, alert_id: str) -> list[dict[str, Any]]:
        names, rows = self.store.query(
            "SELECT alert_id, status, verdict, comment, at FROM verdicts WHERE alert_id = ? ORDER BY rowid", (alert_id,)
        )
        return [dict(zip(names, row)) for row in rows]

    def publish_case(self, case: Case) -> None:
        """Write `<cases_dir>/<case id>.json` atomically (temp file + rename), so readers never see half a case."""
        if self.cases_dir is None:
            log.info("no cases_dir configured; case %s not published", case.id)
            return
        self.cases_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", case.id).lstrip(".") or "case"
        target = self.cases_dir / f"{safe}.json"
        handle, temp = tempfile.mkstemp(prefix=f".{safe}.", suffix=".tmp", dir=self.cases_dir)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(case.model_dump_json(indent=2))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise

    def health(self) -> HealthReport:
        try:
            count = self.store.count()
            scopes = self.store.scopes()
        except (ConnectorError, sqlite3.Error) as exc:
            return HealthReport(connector=self.name, ok=False, detail=str(exc), version=sqlite3.sqlite_version)
        shown = ", ".join(scopes[:10]) + (" ..." if len(scopes) > 10 else "")
        return HealthReport(
            connector=self.name,
            ok=True,
            detail=f"{count} events in {len(scopes)} scopes" + (f": {shown}" if scopes else ""),
            version=f"sqlite {sqlite3.sqlite_version}",
        )
