"""ElasticConnector: Elastic Security as a `SiemConnector` (elasticsearch-py 9 + Kibana over httpx).

Searches go through the query DSL (`dsl.py`), ES|QL or EQL; large results page with a point in
time and `search_after`. Queries speak siemcrew's internal ECS and the data profile (`profile.py`,
Winlogbeat / Elastic Agent ECS by default) places them on the customer's fields; rows come back
through the same profile (`readback.py`) as the internal rows the local store would give. Searches
ask only for the fields those rows are rebuilt from, and never read the alerts or cases indices
(`scope.py`). Alerts come from the Security alerts index; verdicts go back through Kibana (alert
workflow status, cases) and the whole case is indexed into `siemcrew-cases`.

The client's own retries are switched off (`max_retries=0`): reads and idempotent writes retry
here with tenacity backoff (honouring Retry-After), other writes look before they retry.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Callable, Sequence, TypeVar

from elasticsearch import Elasticsearch, NotFoundError

from siemcrew.config.elastic import ElasticSettings
from siemcrew.connectors.base import (
    AlertBatch,
    AlertUpdate,
    ConnectorError,
    EventQuery,
    HealthReport,
    QueryRefused,
    SearchResult,
)
from siemcrew.connectors.elastic import feed, guard, sigma
from siemcrew.connectors.elastic.cases import (
    CASES_MAPPING,
    KibanaCases,
    alert_tag,
    case_document,
    case_severity,
    case_tag,
    is_escalation,
    MAX_ALERT_TAGS,
)
from siemcrew.connectors.elastic.docs import first, flatten
from siemcrew.connectors.elastic.dsl import DslDialect
from siemcrew.connectors.elastic.errors import ElasticCompatibilityError, ElasticRequestError, KibanaError, describe
from siemcrew.connectors.elastic.esql import esql_for
from siemcrew.connectors.elastic.fieldcaps import FieldCaps, field_test
from siemcrew.connectors.elastic.intake import AlertDocError, alert_from_doc
from siemcrew.connectors.elastic.kibana import KibanaClient
from siemcrew.connectors.elastic.profile import Profile
from siemcrew.connectors.elastic.readback import Readback
from siemcrew.connectors.elastic.retry import call_with_retries
from siemcrew.connectors.elastic.scope import events_expression
from siemcrew.crew.models import Alert, Case, TimeRange, canonical_json, sha256_of
from siemcrew.crew.timeutil import iso

log = logging.getLogger(__name__)
T = TypeVar("T")

_EQL_START = re.compile(r"^\s*(sequence\b|sample\b|[a-z_]+\s+where\b)", re.I)
_ESQL_START = re.compile(r"^\s*(from|row|show|ts)\b", re.I)
_CONSOLE_START = re.compile(r"^\s*(GET|POST|PUT|DELETE|HEAD|PATCH)\s+\S", re.I)
_LIMIT_TAIL = re.compile(r"^limit\s+(\d+)\s*$", re.I)
MAX_GROUPS = 10_000  # a group-by over a high-cardinality field stops here (the result says truncated)
EQL_FIELDS_ONLY = [
    "hits.total", "hits.events._index", "hits.events._id", "hits.events.fields",
    "hits.sequences.events._index", "hits.sequences.events._id", "hits.sequences.events.fields",
]


class ElasticConnector:
    name = "elastic"
    language = "dsl"

    def __init__(
        self, settings: ElasticSettings, client: Elasticsearch | None = None, read_fields: Sequence[str] | None = None,
    ) -> None:
        """`read_fields`: the internal fields callers read from rows (default: all the profile knows)."""
        self.settings = settings
        self.profile = Profile.load(settings.profile)
        self.readback = Readback(self.profile)
        self.dsl = DslDialect(profile=self.profile)
        self.read_fields = list(read_fields) if read_fields else self.profile.default_read_fields()
        self.source_fields = self.profile.natives_for(self.read_fields)
        self.field_caps = FieldCaps(self._fetch_field_caps, ttl=settings.field_caps_ttl)
        self._es = client
        self._kibana: dict[str, KibanaClient] = {}
        self._cases_index_ready = False

    # -- clients ------------------------------------------------------------------------------
    @property
    def es(self) -> Elasticsearch:
        if self._es is None:
            s = self.settings
            options: dict[str, Any] = dict(
                hosts=s.url,
                request_timeout=s.request_timeout,
                max_retries=0,
                retry_on_timeout=False,
                verify_certs=s.verify,
                http_compress=s.http_compress,
            )
            if s.ca_file:
                options["ca_certs"] = str(s.ca_file)
            if not s.verify:
                options["ssl_show_warn"] = False
            try:
                self._es = Elasticsearch(**options, **s.credentials())
            except ValueError as exc:
                raise ConnectorError(f"Elasticsearch client settings are invalid: {exc}") from None
        return self._es

    def kibana(self, space: str | None = None) -> KibanaClient:
        """The Kibana client for a space (the configured one by default)."""
        space = space or self.settings.space
        if space not in self._kibana:
            self._kibana[space] = KibanaClient(self.settings, space)
        return self._kibana[space]

    def _space_of(self, alerts: list[Alert]) -> str:
        """Kibana acts on an alert in its own space (`kibana.space_ids`), else the configured one."""
        for alert in alerts:
            if alert.source == "elastic":
                space = first(alert.raw, "kibana.space_ids")
                if space:
                    return str(space)
        return self.settings.space

    def close(self) -> None:
        if self._es is not None:
            self._es.close()
        for client in self._kibana.values():
            client.close()

    def _call(self, action: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A read or idempotent write with retries; failures become ConnectorErrors."""
        try:
            return call_with_retries(self.settings, fn, *args, **kwargs)
        except ConnectorError:
            raise
        except Exception as exc:  # client errors of every kind -> one clear sentence
            raise describe(exc, action) from None

    # -- searching ----------------------------------------------------------------------------
    def events_index(self, scope: str | None = None) -> str:
        """The index expression hunts run on: the configured patterns minus alerts and cases."""
        return events_expression(scope or self.settings.events_index, self.settings.cases_index)

    def _fetch_field_caps(self, index: str) -> Any:
        return self._call(
            "field capabilities", self.es.field_caps, index=index, fields="*", ignore_unavailable=True, allow_no_indices=True,
        )

    def search(self, query: EventQuery) -> SearchResult:
        index = self.events_index(query.scope)
        body = self.dsl.translate(query, self.settings.page_size)
        if query.group_by:
            natives = self.dsl.group_fields(query.group_by)
            rows, complete = self._group_rows(index, body, natives)
            rows = self._internal_groups(rows, query.group_by)
            rows.sort(key=lambda row: -row["count"])
            truncated = not complete or len(rows) > query.limit
            return self._result("dsl", body, len(rows), rows[: query.limit], truncated)
        body["_source"] = {"includes": self.source_fields}
        return self._hits_result("dsl", index, body, query.limit, self.readback.internal)

    def native_fields(self, field: str) -> list[str]:
        """The index fields an internal ECS field is read from under the active profile (for `doctor`)."""
        return self.profile.native_names(field)

    def _internal_groups(self, rows: list[dict[str, Any]], group_by: list[str]) -> list[dict[str, Any]]:
        """Native group rows -> internal group rows (groups that read the same internally merge)."""
        merged: dict[tuple[str, ...], dict[str, Any]] = {}
        for row in rows:
            native = {k: v for k, v in row.items() if k != "count" and v is not None}
            internal = self.readback.internal(native) if native else {}
            values = {field: internal.get(field) for field in group_by}
            key = tuple(canonical_json(values.get(field)) for field in group_by)
            target = merged.setdefault(key, {**values, "count": 0})
            target["count"] += int(row.get("count") or 0)
        return list(merged.values())

    def _result(self, language: str, query: Any, total: int, events: list[dict[str, Any]], truncated: bool) -> SearchResult:
        text = query if isinstance(query, str) else canonical_json(query)
        return SearchResult(
            connector=self.name, language=language, query=text, total=total, events=events, truncated=truncated
        )

    def _hits_result(
        self, language: str, index: str, body: dict[str, Any], limit: int,
        reader: Callable[[dict[str, Any]], dict[str, Any]] = flatten,
    ) -> SearchResult:
        body = {**body, "size": min(limit, self.settings.page_size)}
        total, hits = self._search_hits(index, body, limit)
        events = [reader(hit.get("_source") or {}) for hit in hits]
        return self._result(language, body, total, events, total > len(events))

    def _search_hits(self, index: str, body: dict[str, Any], limit: int) -> tuple[int, list[dict[str, Any]]]:
        """Up to `limit` hits; one request when it fits a page, else PIT + search_after."""
        page = self.settings.page_size
        if limit <= page:
            answer = self._call("search", self.es.search, index=index, body=body)
            return _total(answer), list(answer["hits"]["hits"])
        keep_alive = self.settings.pit_keep_alive
        pit = self._call("open point in time", self.es.open_point_in_time, index=index, keep_alive=keep_alive)
        pit_id = pit["id"]
        hits: list[dict[str, Any]] = []
        total = 0
        after: list[Any] | None = None
        try:
            while len(hits) < limit:
                page_body = {**body, "size": min(page, limit - len(hits)), "pit": {"id": pit_id, "keep_alive": keep_alive}}
                page_body["track_total_hits"] = after is None and body.get("track_total_hits", True)
                if after is not None:
                    page_body["search_after"] = after
                try:
                    answer = self._call("search (point in time)", self.es.search, body=page_body)
                except ConnectorError as exc:
                    if "search_context_missing_exception" in str(exc):
                        raise ConnectorError(
                            f"the point in time expired while paging after {len(hits)} hits; raise elastic.pit_keep_alive"
                        ) from None
                    raise
                pit_id = answer.get("pit_id", pit_id)
                if after is None:
                    total = _total(answer)
                batch = list(answer["hits"]["hits"])
                hits.extend(batch)
                if len(batch) < page_body["size"]:
                    break
                after = batch[-1]["sort"]
        finally:
            self._close_pit(pit_id)
        return total, hits

    def _close_pit(self, pit_id: str) -> None:
        try:
            self.es.close_point_in_time(id=pit_id)
        except NotFoundError:
            return  # already gone (expired)
        except Exception as exc:  # it expires by itself; never hide the search result for this
            log.warning("closing the point in time failed (it will expire by itself): %s", describe(exc, "close PIT"))

    def _group_rows(self, index: str, body: dict[str, Any], fields: list[str]) -> tuple[list[dict[str, Any]], bool]:
        """The groups of a composite aggregation, paged by `after_key` (up to MAX_GROUPS; False if cut)."""
        rows: list[dict[str, Any]] = []
        request = json.loads(json.dumps(body))
        composite = request["aggs"][self.dsl.group_agg_name]["composite"]
        while True:
            answer = self._call("search (group by)", self.es.search, index=index, body=request)
            agg = (answer.get("aggregations") or {}).get(self.dsl.group_agg_name) or {}
            for bucket in agg.get("buckets") or []:
                key = bucket.get("key") or {}
                row = {field: key.get(f"g{i}") for i, field in enumerate(fields)}
                row["count"] = int(bucket.get("doc_count") or 0)
                rows.append(row)
            after = agg.get("after_key")
            if not after or len(agg.get("buckets") or []) < composite["size"]:
                return rows, True
            if len(rows) >= MAX_GROUPS:
                return rows, False
            composite["after"] = after

    def search_esql(self, query: EventQuery) -> SearchResult:
        """The same hunt as `search`, written in ES|QL (see `esql.py` for its multi-value semantics)."""
        index = self.events_index(query.scope)
        exists = self.field_caps.exists(index)
        text = esql_for(query, index, self.profile, exists, self._columns(exists))
        result = self._esql(text, None, query.limit, "esql")
        if query.group_by:
            rows = self._internal_groups(result.events, query.group_by)
            rows.sort(key=lambda row: -row["count"])
            return result.model_copy(update={"events": rows, "total": len(rows)})
        return result.model_copy(update={"events": [self._row(event) for event in result.events]})

    def _columns(self, exists: Callable[[str], bool]) -> list[str]:
        """The native columns rows are rebuilt from, that some index has (ES|QL rejects the others)."""
        return [name for name in self.source_fields if exists(name)]

    def _row(self, columns: dict[str, Any]) -> dict[str, Any]:
        """An ES|QL row or an EQL `fields` map (flat, nulls for absent) -> the internal row."""
        present = {k: (v[0] if isinstance(v, list) and len(v) == 1 else v) for k, v in columns.items() if v not in (None, [])}
        return self.readback.internal(present)

    # -- native queries -----------------------------------------------------------------------
    def run_native(self, query: str, time_range: TimeRange | None = None, limit: int = 200) -> SearchResult:
        """ES|QL (`FROM ...`), EQL (`process where ...`), a JSON DSL body, or `GET index/_search {...}`.

        A DSL body or EQL query runs on the default event scope (alerts and cases excluded); ES|QL
        and console requests name their own indices.
        """
        text = query.strip()
        if _ESQL_START.match(text):
            return self._esql(text, time_range, limit, "esql")
        if text.startswith("{"):
            try:
                body = json.loads(text)
            except json.JSONDecodeError as exc:
                raise QueryRefused(f"query is not valid JSON: {exc.msg} at line {exc.lineno}") from None
            return self._dsl(self.events_index(), guard.check_dsl(body), time_range, limit, "dsl")
        if _CONSOLE_START.match(text):
            return self._console(text, time_range, limit)
        if _EQL_START.match(text):
            return self._eql(self.events_index(), text, time_range, limit, "eql")
        raise QueryRefused("not a query this connector runs: expected ES|QL (FROM ...), EQL, a JSON DSL body or 'GET index/_search {...}'")

    def _time_filter(self, time_range: TimeRange) -> dict[str, Any]:
        return {"range": {"@timestamp": {"gte": iso(time_range.start), "lte": iso(time_range.end), "format": "strict_date_optional_time"}}}

    def _dsl(self, index: str, body: dict[str, Any], time_range: TimeRange | None, limit: int, language: str) -> SearchResult:
        body = dict(body)
        if time_range is not None:
            body["query"] = {"bool": {"filter": [self._time_filter(time_range), body.get("query") or {"match_all": {}}]}}
        body.setdefault("sort", [{"@timestamp": {"order": "asc", "unmapped_type": "date"}}])
        body["track_total_hits"] = True
        size = int(body.get("size", limit))
        if body.get("aggs") or body.get("aggregations"):
            body["size"] = min(size, limit)
            answer = self._call("search", self.es.search, index=index, body=body)
            events = [flatten(h.get("_source") or {}) for h in answer["hits"]["hits"]]
            total = _total(answer)
            truncated = body["size"] > 0 and len(events) < total
            rows = events + aggregation_rows(answer.get("aggregations") or {})
            return self._result(language, body, total, rows, truncated)
        body["size"] = min(size, limit)
        if body.get("from") or "search_after" in body:  # explicit paging by the caller: one page, no PIT
            body["size"] = min(body["size"], self.settings.page_size)
        return self._hits_result(language, index, body, body["size"])

    def _esql(self, text: str, time_range: TimeRange | None, limit: int, language: str) -> SearchResult:
        commands = guard.check_esql(text)
        tail = _LIMIT_TAIL.match(commands[-1])
        # the LIMIT on a line of its own: a trailing `// comment` in the query cannot swallow it
        sent = text if tail and int(tail.group(1)) <= limit else f"{text.rstrip()}\n| LIMIT {int(limit)}"
        kwargs: dict[str, Any] = {"query": sent}
        if time_range is not None:
            kwargs["filter"] = self._time_filter(time_range)
        answer = self._call("ES|QL query", self.es.esql.query, **kwargs)
        columns = [c["name"] for c in answer.get("columns") or []]
        rows = [dict(zip(columns, values)) for values in answer.get("values") or []]
        return self._result(language, sent, len(rows), rows[:limit], len(rows) >= limit)

    def _eql(
        self, index: str, text: str, time_range: TimeRange | None, limit: int, language: str, fields: list[str] | None = None,
    ) -> SearchResult:
        """EQL; with `fields`, only those come back (`fields` + `filter_path`) and rows are read back."""
        kwargs: dict[str, Any] = {"index": index, "query": text, "size": limit}
        if time_range is not None:
            kwargs["filter"] = self._time_filter(time_range)
        if fields:
            kwargs["fields"] = fields
            kwargs["filter_path"] = EQL_FIELDS_ONLY
        answer = self._call("EQL search", self.es.eql.search, **kwargs)
        hits = answer.get("hits") or {}

        def row(event: dict[str, Any]) -> dict[str, Any]:
            return self._row(event.get("fields") or {}) if fields else flatten(event.get("_source") or {})

        events = [row(e) for e in hits.get("events") or []]
        for sequence in hits.get("sequences") or []:
            events.extend(row(e) for e in sequence.get("events") or [])
        total = int((hits.get("total") or {}).get("value") or len(events))
        return self._result(language, text, total, events[:limit], total > len(events[:limit]))

    def _console(self, text: str, time_range: TimeRange | None, limit: int) -> SearchResult:
        method, path, params, body = guard.parse_console(text)
        if path == "/_query":
            return self._esql(str((body or {}).get("query") or ""), time_range, limit, "esql")
        search = re.match(r"^/([^/]+)/_search$", path)
        if search:
            merged = dict(body or {})
            for name in ("size", "from"):
                if name in params:
                    merged[name] = int(params[name]) if params[name].isdigit() else params[name]
            if "q" in params:
                merged["query"] = {"query_string": {"query": params["q"]}}
            return self._dsl(search.group(1), guard.check_dsl(merged), time_range, limit, "dsl")
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/json"
        answer = self._call(
            f"{method} {path}", self.es.perform_request, method, path, params=params or None, headers=headers, body=body
        )
        payload = answer.body
        rows = payload if isinstance(payload, list) else [payload if isinstance(payload, dict) else {"text": payload}]
        return self._result("dsl", text, len(rows), rows[:limit], len(rows) > limit)

    def run_sigma(self, rule_yaml: str, time_range: TimeRange | None = None, limit: int = 200) -> SearchResult:
        """A Sigma rule on the events index, converted onto the fields its indices have (`sigma.py`).

        A rule that can only match through fields none of the indices has raises a ConnectorError
        naming them (the evidence says "could not look", not "nothing found"); so does an ES|QL or
        EQL conversion that still names a missing field (both languages reject unknown columns).
        """
        index = self.events_index()
        language = self.settings.sigma_language
        available = self.field_caps.fields(index)
        exists = field_test(available)
        conversions = sigma.convert_rules(rule_yaml, language, index, available, self.profile)
        for conversion in conversions:
            if conversion.unanswerable or (conversion.missing and language != "lucene"):
                why = "can never match there" if conversion.unanswerable else f"would fail in {language} (unknown columns)"
                raise ConnectorError(
                    f"Sigma rule {conversion.title!r} {why}: none of the indices in {index} has "
                    f"{', '.join(conversion.missing)} (checked with _field_caps)"
                )
        if language == "lucene":
            texts = [c.text for c in conversions]
            lucene = texts[0] if len(texts) == 1 else " OR ".join(f"({text})" for text in texts)
            filters: list[dict[str, Any]] = [{"query_string": {"query": lucene, "analyze_wildcard": True}}]
            if time_range is not None:
                filters.append(self._time_filter(time_range))
            body = {
                "query": {"bool": {"filter": filters}},
                "sort": [{"@timestamp": {"order": "asc", "unmapped_type": "date"}}],
                "track_total_hits": True,
                "_source": {"includes": self.source_fields},
            }
            return self._hits_result("sigma", index, body, limit, self.readback.internal)
        if len(conversions) != 1:
            raise ConnectorError(f"run one Sigma rule at a time with {language} (this YAML converts to {len(conversions)} queries)")
        if language == "esql":
            columns = self._columns(exists)
            text = conversions[0].text + (" | KEEP " + ", ".join(columns) if columns else "")
            result = self._esql(text, time_range, limit, "sigma")
            return result.model_copy(update={"events": [self._row(event) for event in result.events]})
        return self._eql(index, conversions[0].text, time_range, limit, "sigma", fields=self._columns(exists))

    # -- alerts in ----------------------------------------------------------------------------
    def fetch_alerts(self, checkpoint: str | None, limit: int = 100) -> AlertBatch:
        after = feed.decode_checkpoint(checkpoint)
        alerts: list[Alert] = []
        seen = 0
        while seen < limit:
            size = min(self.settings.page_size, limit - seen)
            body = feed.open_alerts_body(after, size, self.settings.include_building_blocks)
            try:
                answer = self._call("alert search", self.es.search, index=self.settings.alerts_index, body=body)
            except ElasticRequestError as exc:
                if exc.status == 404:
                    raise ConnectorError(
                        f"the alerts index {self.settings.alerts_index} does not exist: is Elastic Security set up in "
                        f"space '{self.settings.space}' (open the Security app once), or is elastic.alert_index wrong?"
                    ) from None
                raise
            hits = list(answer["hits"]["hits"])
            for hit in hits:
                try:
                    alert = alert_from_doc(hit.get("_source") or {}, hit.get("_index"), self.readback)
                except AlertDocError as exc:
                    log.warning("skipping unreadable alert %s: %s", hit.get("_id"), exc)
                    continue
                alert.link = self._alert_link(alert)
                alerts.append(alert)
            seen += len(hits)
            if hits:
                after = hits[-1]["sort"]
            if len(hits) < size:
                break
        return AlertBatch(alerts=alerts, checkpoint=feed.encode_checkpoint(after) if after else checkpoint)

    def _alert_link(self, alert: Alert) -> str | None:
        if not self.settings.kibana_url:
            return None
        space = "" if self.settings.space == "default" else f"/s/{self.settings.space}"
        index = alert.raw.get("_index") or self.settings.alerts_index
        return f"{self.settings.kibana_url}{space}/app/security/alerts/redirect/{alert.id}?index={index}&timestamp={iso(alert.timestamp)}"

    # -- verdicts out -------------------------------------------------------------------------
    def update_alert(self, alert: Alert, update: AlertUpdate) -> None:
        kibana = self.kibana(self._space_of([alert]))
        if update.status in ("in_progress", "acknowledged", "escalated"):
            self._set_status(kibana, alert, "acknowledged")
        else:
            self._close(kibana, alert, update)
        if update.status == "escalated" and self.settings.kibana_cases:
            cases = KibanaCases(kibana, self.settings)
            title = f"siemcrew: {alert.rule_name}" + (f" on {alert.primary_host}" if alert.primary_host else "")
            body = cases.new_case_body(title, update.summary or update.comment, alert.severity, [alert_tag(alert.id)])
            case_id = cases.ensure_case(None, [alert_tag(alert.id)], body)
            cases.attach_alerts(case_id, [alert])
            note = "\n\n".join(part for part in (update.comment, update.summary, update.report_link or "") if part)
            if note:
                cases.add_note(case_id, f"alert:{alert.id}", f"siemcrew verdict: {update.verdict}\n\n{note}")

    def _close(self, kibana: KibanaClient, alert: Alert, update: AlertUpdate) -> None:
        reason = self.settings.close_reasons.get(update.verdict.lower(), "other")
        try:
            self._set_status(kibana, alert, "closed", reason)
        except KibanaError as exc:
            if exc.status != 400 or "reason" not in str(exc):
                raise
            log.warning("Kibana does not accept a closing reason; closing without it")
            self._set_status(kibana, alert, "closed")

    @staticmethod
    def _set_status(kibana: KibanaClient, alert: Alert, status: str, reason: str | None = None) -> None:
        answer = kibana.set_alert_status([alert.id], status, reason)
        if not answer.get("total") and not answer.get("version_conflicts"):
            raise ConnectorError(
                f"Kibana found no alert {alert.id} in space '{kibana.space}' to set to {status} "
                "(deleted, or in another space?)"
            )

    def publish_case(self, case: Case) -> None:
        self._ensure_cases_index()
        kibana_id = self._stored_kibana_case_id(case.id)
        kibana_error: ConnectorError | None = None
        if is_escalation(case) and self.settings.kibana_cases and self.settings.kibana_url:
            try:
                kibana_id = self._sync_kibana_case(case, kibana_id)
            except ConnectorError as exc:
                kibana_error = exc
        document = case_document(case, kibana_id)
        self._call("index case", self.es.index, index=self.settings.cases_index, id=case.id, document=document)
        if kibana_error is not None:
            raise ConnectorError(f"case {case.id} indexed, but the Kibana case failed: {kibana_error}")

    def _sync_kibana_case(self, case: Case, known_id: str | None) -> str:
        cases = KibanaCases(self.kibana(self._space_of(case.alerts)), self.settings)
        alert_tags = [alert_tag(a.id) for a in case.alerts if a.source == "elastic"][:MAX_ALERT_TAGS]
        first = case.alerts[0] if case.alerts else None
        title = f"siemcrew {case.verdict}: " + (first.rule_name if first else case.id)
        if case.affected_hosts or (first and first.primary_host):
            title += f" on {', '.join(case.affected_hosts[:3]) or first.primary_host}"  # type: ignore[union-attr]
        body = cases.new_case_body(
            title, case.summary or title, case_severity(case), [case_tag(case.id), *alert_tags]
        )
        kibana_id = cases.ensure_case(known_id, [case_tag(case.id), *alert_tags], body)
        cases.attach_alerts(kibana_id, case.alerts)
        report = f"siemcrew case {case.id}: verdict {case.verdict} ({case.confidence} confidence), status {case.status}"
        if case.summary:
            report += f"\n\n{case.summary}"
        cases.add_note(kibana_id, f"case:{case.id}", report)
        return kibana_id

    def _ensure_cases_index(self) -> None:
        if self._cases_index_ready:
            return
        index = self.settings.cases_index
        if not self._call("check cases index", self.es.indices.exists, index=index):
            try:
                self._call("create cases index", self.es.indices.create, index=index, mappings=CASES_MAPPING)
            except ConnectorError as exc:
                if "resource_already_exists_exception" not in str(exc):
                    raise
        self._cases_index_ready = True

    def _stored_kibana_case_id(self, case_id: str) -> str | None:
        try:
            answer = call_with_retries(self.settings, self.es.get, index=self.settings.cases_index, id=case_id)
        except NotFoundError:
            return None
        except Exception as exc:
            raise describe(exc, "read case document") from None
        return (answer.get("_source") or {}).get("kibana_case_id")

    # -- bulk loading -------------------------------------------------------------------------
    def bulk_index(self, index: str, documents: list[dict[str, Any]], id_field: str | None = None) -> dict[str, int]:
        """Load documents with `create` actions and stable ids, so a repeated load adds nothing twice.

        A 409 means the document is already there (success); per-item 429s are sent again, other
        item errors are counted and reported. Returns {"created", "existing", "failed"}.
        """
        pending = [(str(doc.get(id_field)) if id_field and doc.get(id_field) else sha256_of(doc)[:40], doc) for doc in documents]
        counts = {"created": 0, "existing": 0, "failed": 0}
        errors: list[str] = []
        for attempt in range(self.settings.retries + 1):
            if not pending:
                break
            lines: list[dict[str, Any]] = []
            for doc_id, doc in pending:
                lines.extend(({"create": {"_index": index, "_id": doc_id}}, doc))
            answer = self._call("bulk", self.es.bulk, operations=lines)
            retry_later = []
            for (doc_id, doc), item in zip(pending, answer["items"]):
                result = item.get("create") or next(iter(item.values()))
                status = int(result.get("status") or 0)
                if status in (200, 201):
                    counts["created"] += 1
                elif status == 409:
                    counts["existing"] += 1
                elif status == 429 and attempt < self.settings.retries:
                    retry_later.append((doc_id, doc))
                else:
                    counts["failed"] += 1
                    error = result.get("error") or {}
                    errors.append(f"{doc_id}: {error.get('type')}: {error.get('reason')}")
            pending = retry_later
            if pending:
                time.sleep(min(self.settings.retry_wait_max, self.settings.retry_wait * 2**attempt))
        if errors:
            log.warning("bulk load into %s: %d documents failed, first: %s", index, len(errors), errors[0])
        return counts

    # -- health -------------------------------------------------------------------------------
    def health(self) -> HealthReport:
        try:
            info = self._call("cluster info", self.es.info)
        except ElasticCompatibilityError as exc:
            return HealthReport(connector=self.name, ok=False, detail=str(exc))
        except ConnectorError as exc:
            return HealthReport(connector=self.name, ok=False, detail=str(exc))
        version = str((info.get("version") or {}).get("number") or "")
        details = [f"Elasticsearch {version} ({info.get('cluster_name')})"]
        ok = True
        try:
            count = self._call("count alerts", self.es.count, index=self.settings.alerts_index)
            details.append(f"{count['count']} alerts in {self.settings.alerts_index}")
        except ConnectorError as exc:
            details.append(f"alerts index not readable: {exc}")
        if self.settings.kibana_url:
            try:
                status = self.kibana().status()
                level = ((status.get("status") or {}).get("overall") or {}).get("level", "unknown")
                details.append(f"Kibana {(status.get('version') or {}).get('number', '?')} {level}")
                ok = level == "available"
            except ConnectorError as exc:
                details.append(f"Kibana unreachable: {exc}")
                ok = False
        return HealthReport(connector=self.name, ok=ok, detail="; ".join(details), version=version or None)


def _total(answer: Any) -> int:
    total = answer["hits"].get("total")
    if isinstance(total, dict):
        return int(total.get("value") or 0)
    return int(total or 0)


def aggregation_rows(aggs: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Aggregation results as flat rows: one per bucket (with its metric values), one per metric."""
    rows: list[dict[str, Any]] = []
    for name, agg in aggs.items():
        if not isinstance(agg, dict):
            continue
        buckets = agg.get("buckets")
        if isinstance(buckets, dict):
            buckets = [{"key": key, **value} for key, value in buckets.items()]
        if isinstance(buckets, list):
            for bucket in buckets:
                key = bucket.get("key_as_string", bucket.get("key"))
                row: dict[str, Any] = {"aggregation": prefix + name, "key": key, "doc_count": bucket.get("doc_count")}
                nested: dict[str, Any] = {}
                for sub_name, sub in bucket.items():
                    if isinstance(sub, dict) and "value" in sub:
                        row[sub_name] = sub.get("value_as_string", sub["value"])
                    elif isinstance(sub, dict) and "buckets" in sub:
                        nested[sub_name] = sub
                rows.append(row)
                rows.extend(aggregation_rows(nested, f"{prefix}{name}[{key}]."))
        elif "value" in agg:
            rows.append({"aggregation": prefix + name, "value": agg.get("value_as_string", agg["value"])})
    return rows
