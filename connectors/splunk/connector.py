"""`SplunkConnector`: the `SiemConnector` protocol on splunkd through splunk-sdk.

Searches (EventQuery through `SplDialect`, native SPL, Sigma through pySigma's Splunk backend) all
pass the read-only guard and return flat ECS rows, read through the configured data profile
(`profile.py`: by default the Splunk Add-ons for Windows and Sysmon). Event searches ask for the
fields the tools read (REST jobs run in fast mode) and never search alerts or siemcrew's own output
(`scope.py`). Alerts come from ES notables or a saved search with an opaque checkpoint; verdicts go
back through `notable_update`, cases to HEC.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from datetime import datetime
from typing import Any

from splunklib import client

from siemcrew.config.settings import SettingsError
from siemcrew.config.splunk import SplunkSettings
from siemcrew.connectors.base import (
    AlertBatch,
    AlertUpdate,
    ConnectorError,
    EventQuery,
    HealthReport,
    SearchResult,
)
from siemcrew.connectors.splunk.alerts import alert_from_notable, alert_from_row, first
from siemcrew.connectors.splunk.checkpoint import AlertCheckpoint, Stamped
from siemcrew.connectors.splunk.dialect import SplDialect
from siemcrew.connectors.splunk.guard import READ_ONLY_COMMANDS, SplGuard
from siemcrew.connectors.splunk.hec import HecClient, hec_record
from siemcrew.connectors.splunk.grouping import merge_groups
from siemcrew.connectors.splunk.profile import SplunkProfile, load_profile
from siemcrew.connectors.splunk.scope import event_scope
from siemcrew.connectors.splunk.search import SearchRunner
from siemcrew.connectors.splunk.sigma import SigmaSearch, SplunkSigma
from siemcrew.connectors.splunk.session import call_read, call_write, call_write_verified, open_service
from siemcrew.crew.models import Alert, Case, TimeRange, canonical_json

log = logging.getLogger("siemcrew.splunk")

NOTABLE_STATUS = {"in_progress": 2, "acknowledged": 2, "escalated": 2}
CIM_SIGMA_MACROS = frozenset({"drop_dm_object_name"})  # what pySigma's data-model output calls
MAX_COMMENT = 4000
SAVED_SEARCH_MAX_ROWS = 50_000
HEALTH_SPL = "| makeresults count=1"
COVERAGE_SAMPLE = 10_000  # events of a rule's log source sampled to tell which fields the data has
_NAMES_INDEX = re.compile(r"(?<![\w.])index\s*(=|!=|\s+IN\b)", re.IGNORECASE)


class SplunkConnector:
    name = "splunk"
    language = "spl"

    def __init__(self, settings: SplunkSettings) -> None:
        self.settings = settings
        try:
            self.profile: SplunkProfile = load_profile(settings.search.profile)
            self.sigma = SplunkSigma(self.profile.sigma, settings.search.sigma_pipeline)
        except SettingsError as exc:
            raise ConnectorError(str(exc)) from None
        self.scope = event_scope(settings)
        macros = frozenset(settings.search.macros)
        if self.sigma.data_model:
            macros |= CIM_SIGMA_MACROS
        self.guard = SplGuard(allowed_macros=macros, allowed_commands=READ_ONLY_COMMANDS)
        self.runner = SearchRunner(settings, self.service)
        self._service: client.Service | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: SplunkSettings | dict[str, Any]) -> "SplunkConnector":
        return cls(settings if isinstance(settings, SplunkSettings) else SplunkSettings.model_validate(settings))

    def service(self) -> client.Service:
        """The logged-in splunk-sdk Service, created on first use."""
        with self._lock:
            if self._service is None:
                try:
                    self._service = open_service(self.settings)
                except SettingsError as exc:
                    raise ConnectorError(str(exc)) from None
            return self._service

    # -- searching -------------------------------------------------------------------------
    def search(self, query: EventQuery) -> SearchResult:
        scope = self.scope
        if query.scope:
            scope = query.scope if "=" in query.scope else f'index="{query.scope}"'
        dialect = SplDialect(self.profile, scope=scope)
        if query.group_by:
            return self._grouped(dialect.translate(query), query)
        spl = dialect.translate(query.model_copy(update={"limit": query.limit + 1}))
        # an ungrouped EventQuery is `search ... | sort | head`: the job's eventCount is what matched
        return self._run(spl, query.time_range, query.limit, count_matched=True)

    def native_fields(self, field: str) -> list[str]:
        """The Splunk fields an internal field is read from under the data profile (for `doctor`)."""
        return self.profile.native_names(field)

    def _grouped(self, spl: str, query: EventQuery) -> SearchResult:
        """Groups of the Splunk fields feeding the group-by fields, read as ECS and merged: one row
        per distinct ECS combination with its count, largest first, as the local store returns."""
        self.guard.check(spl)
        earliest, latest = _window(query.time_range)
        rows = self.runner.rows(spl, earliest=earliest, latest=latest, max_rows=SAVED_SEARCH_MAX_ROWS)
        groups = merge_groups(rows, query.group_by, self.profile.to_ecs)
        return SearchResult(connector=self.name, language=self.language, query=spl, total=len(groups),
                            events=groups[: query.limit], truncated=len(groups) > query.limit)

    def run_native(self, query: str, time_range: TimeRange | None = None, limit: int = 200) -> SearchResult:
        level = self.settings.search.native_search_level
        return self._run(self._searchable(query), time_range, limit, params={"adhoc_search_level": level})

    def run_sigma(self, rule_yaml: str, time_range: TimeRange | None = None, limit: int = 200) -> SearchResult:
        searches = self.sigma.convert(rule_yaml)
        spls = [self._sigma_spl(item) for item in searches]
        for spl in spls:
            self.guard.check(spl)
        events: list[dict[str, Any]] = []
        total = 0
        truncated = False
        for spl in spls:
            part = self._run(spl, time_range, limit)
            total += part.total
            truncated = truncated or part.truncated
            events.extend(part.events[: max(limit - len(events), 0)])
        if total == 0 and not self.sigma.data_model:  # data-model searches name no raw fields to check
            self._check_answerable(searches, time_range)
        return SearchResult(
            connector=self.name, language=self.language, query="\n".join(spls), total=total, events=events,
            truncated=truncated or total > len(events),
        )

    def _sigma_spl(self, item: SigmaSearch) -> str:
        spl = self._searchable(item.spl)
        if spl.startswith("|"):
            return spl
        return f"{spl} | fields {', '.join(self.profile.requested(item.fields))}"

    def _check_answerable(self, searches: list[SigmaSearch], time_range: TimeRange | None) -> None:
        """No hits: fine if some search's log source has events carrying every field its detection
        needs; otherwise 0 says nothing about the activity, and that is an error, not an empty result."""
        reasons: list[str] = []
        for item in searches:
            if not item.fields or item.answerable(set()):
                return  # nothing known to check: the 0 stands
            source = " ".join(
                f"{name}={_spl_value(values[0])}" if len(values) == 1
                else f"{name} IN ({', '.join(_spl_value(v) for v in values)})"
                for name, values in item.logsource
            )
            counts = ", ".join(f'count({name}) AS "{name}"' for name in item.fields)
            spl = self._searchable(f"{source} | head {COVERAGE_SAMPLE} | stats {counts}, count AS events")
            self.guard.check(spl)
            earliest, latest = _window(time_range)
            rows = self.runner.rows(spl, earliest=earliest, latest=latest, max_rows=1)
            found = rows[0] if rows else {}
            if int(first(found, "events") or 0) == 0:
                reasons.append(f"{item.variant}: no events of {source or 'its log source'} in the time range")
                continue
            present = {name for name in item.fields if int(first(found, name) or 0) > 0}
            if item.answerable(present):
                return
            missing = [name for name in item.fields if name not in present]
            reasons.append(f"{item.variant}: field(s) {', '.join(missing)} absent from {source or 'the events'}")
        raise ConnectorError("splunk: the Sigma rule found nothing, but the data cannot show what it looks for ("
                             + "; ".join(reasons) + "); 0 hits is not evidence of absence")

    def _searchable(self, spl: str) -> str:
        """SPL as splunkd wants it: generating searches keep their pipe, others start with `search`,
        and the event scope is added when the search names no index of its own."""
        text = spl.strip()
        if text.startswith("|"):
            return text
        body = text[len("search "):].lstrip() if text.lower().startswith("search ") else text
        if self.scope and not _NAMES_INDEX.search(body.split("|", 1)[0]):
            body = f"{self.scope} {body}"
        return f"search {body}"

    def _run(self, spl: str, time_range: TimeRange | None, limit: int, count_matched: bool = False,
             params: dict[str, str] | None = None) -> SearchResult:
        """Run and map to ECS; `count_matched` reports the events the search matched (not just the
        rows fetched) when the result is cut at `limit` and splunkd counted them."""
        self.guard.check(spl)
        earliest, latest = _window(time_range)
        found = self.runner.search(spl, earliest=earliest, latest=latest, max_rows=limit + 1, params=params)
        rows = found.rows
        total = len(rows)
        if count_matched and total > limit and found.matched is not None:
            total = max(total, found.matched)
        return SearchResult(
            connector=self.name,
            language=self.language,
            query=spl,
            total=total,
            events=[self.profile.to_ecs(row) for row in rows[:limit]],
            truncated=len(rows) > limit,
        )

    # -- alerts in -------------------------------------------------------------------------
    def fetch_alerts(self, checkpoint: str | None, limit: int = 100) -> AlertBatch:
        state = AlertCheckpoint.decode(checkpoint)
        alerts_cfg = self.settings.alerts
        since = state.earliest(alerts_cfg.overlap_s)
        earliest = _epoch_value(since) if since is not None else alerts_cfg.initial_lookback
        wanted = limit + len(state.seen)
        if alerts_cfg.source == "notable":
            rows = self.runner.rows(self.notable_spl(wanted), earliest=earliest, latest="now", max_rows=wanted)
            candidates = [self._stamped(alert_from_notable(row, self.profile.to_ecs)) for row in rows
                          if first(row, "event_id")]
        else:
            name = alerts_cfg.saved_search or ""
            rows = self.runner.saved_search_rows(name, earliest=earliest, latest="now", max_rows=SAVED_SEARCH_MAX_ROWS)
            candidates = [self._stamped(alert_from_row(row, alert_id=_row_id(name, row), rule_name=name,
                                                       to_ecs=self.profile.to_ecs)) for row in rows]
        alerts, after = state.advance(candidates, limit, alerts_cfg.overlap_s)
        return AlertBatch(alerts=alerts, checkpoint=after.encode())

    def notable_spl(self, head: int) -> str:
        statuses = ", ".join(f'"{s}"' for s in self.settings.alerts.statuses)
        spl = f"search `notable` | search status IN ({statuses}) | sort 0 +_time +event_id | head {int(head)}"
        self.guard.check(spl)
        return spl

    @staticmethod
    def _stamped(alert: Alert) -> Stamped[Alert]:
        return Stamped(id=alert.id, time=alert.timestamp.timestamp(), item=alert)

    # -- verdicts out ----------------------------------------------------------------------
    def update_alert(self, alert: Alert, update: AlertUpdate) -> None:
        """notable_update for ES notables; alerts that are not notables have nothing to update."""
        event_id = first(alert.raw, "event_id")
        if not event_id:
            log.info("splunk: alert %s is not an ES notable; its verdict goes out with publish_case", alert.id)
            return
        form: dict[str, Any] = {
            "ruleUIDs": [event_id],
            "status": str(self.settings.alerts.closed_status if update.status == "closed" else NOTABLE_STATUS[update.status]),
            "comment": notable_comment(update),
            "output_mode": "json",
        }
        urgency = update.urgency or ("high" if update.status == "escalated" else None)
        if urgency:
            form["urgency"] = urgency
        if update.owner:
            form["newOwner"] = update.owner

        if update.retry and self._notable_shows(alert, event_id, form):
            log.info("splunk: notable %s already shows this update (an earlier answer was lost)", event_id)
            return

        def send() -> None:
            response = self.service().post("/services/notable_update", **form)
            _check_notable_answer(response.body.read(), event_id)

        call_write_verified(self.settings, send, lambda: self._notable_shows(alert, event_id, form),
                            f"notable_update {event_id}")

    def _notable_shows(self, alert: Alert, event_id: str, form: dict[str, Any]) -> bool:
        """Whether the notable's review state already carries this update (status and comment)."""
        moment = alert.timestamp.timestamp()
        spl = f'search `notable` | search event_id="{_spl_quote(event_id)}" | head 1'
        self.guard.check(spl)
        rows = self.runner.rows(spl, earliest=_epoch_value(moment - 1), latest=_epoch_value(moment + 1), max_rows=1)
        if not rows:
            return False
        return first(rows[0], "status") == form["status"] and first(rows[0], "comment") == form["comment"].strip()

    def publish_case(self, case: Case) -> None:
        record = hec_record(case, self.settings)
        if self.settings.hec.url:
            try:
                hec = HecClient(self.settings)
                try:
                    hec.send(record)
                finally:
                    hec.close()
            except SettingsError as exc:
                raise ConnectorError(str(exc)) from None
            return
        params = {k: record[k] for k in ("host", "source", "sourcetype", "index") if record.get(k)}
        call_write(
            self.settings,
            lambda: self.service().post("/services/receivers/simple", body=canonical_json(record["event"]), **params),
            f"receivers/simple for case {case.id}",
        )

    # -- health ----------------------------------------------------------------------------
    def health(self) -> HealthReport:
        try:
            info = call_read(self.settings, lambda: self.service().info, "server/info")
            self.run_native(HEALTH_SPL, limit=1)
        except ConnectorError as exc:
            return HealthReport(connector=self.name, ok=False, detail=str(exc))
        version = str(info.get("version") or "") or None
        return HealthReport(
            connector=self.name, ok=True, version=version,
            detail=f"{info.get('serverName', self.settings.host)}: server/info and a test search answered",
        )


def notable_comment(update: AlertUpdate) -> str:
    """The analyst-facing comment: verdict first, then summary, report link and the crew's note."""
    parts = [f"siemcrew verdict: {update.verdict}"]
    if update.summary:
        parts.append(update.summary)
    if update.report_link:
        parts.append(f"Report: {update.report_link}")
    if update.comment:
        parts.append(update.comment)
    text = "\n".join(parts)
    return text if len(text) <= MAX_COMMENT else text[: MAX_COMMENT - 1] + "…"


def _check_notable_answer(body: bytes, event_id: str) -> None:
    try:
        answer = json.loads(body or b"{}")
    except ValueError:
        raise ConnectorError(f"splunk notable_update {event_id}: unreadable answer {body[:120]!r}") from None
    if not answer.get("success", False) or int(answer.get("failure_count", 0) or 0) > 0:
        raise ConnectorError(f"splunk notable_update {event_id}: {answer.get('message') or 'not updated'}")


def _spl_quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _spl_value(value: str) -> str:
    return value if value.isdigit() else f'"{_spl_quote(value)}"'


def _window(time_range: TimeRange | None) -> tuple[str | None, str | None]:
    return (_epoch(time_range.start), _epoch(time_range.end)) if time_range else (None, None)


def _epoch(moment: datetime) -> str:
    return _epoch_value(moment.timestamp())


def _epoch_value(seconds: float) -> str:
    return f"{seconds:.3f}"


def _row_id(search_name: str, row: dict[str, Any]) -> str:
    """Saved-search rows carry no id: derive a stable one (the notable event_id when the row has it)."""
    return first(row, "event_id") or "splunk:" + hashlib.sha256(canonical_json([search_name, row]).encode()).hexdigest()[:24]
