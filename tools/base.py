"""The one way a tool runs: validate, call a connector, record Evidence, audit, return fenced data.

Log content is attacker-controlled. What a tool returns to a model is fenced between markers with
a per-call nonce (so event text cannot close the fence), and only compact fields are shown.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import siemcrew.crew.offline  # noqa: F401  (before crewai)
from crewai.tools import BaseTool
from pydantic import ConfigDict, Field

from siemcrew.connectors.base import ConnectorError, EventQuery, SearchResult
from siemcrew.connectors.slots import CONTEXT, with_priority
from siemcrew.crew.context import InvestigationContext
from siemcrew.crew.fencing import fenced, new_nonce
from siemcrew.crew.indicators import IndicatorSet
from siemcrew.crew.knowledge import knowledge_fields
from siemcrew.crew.models import Evidence, TimeRange, sha256_of

SUMMARY_FIELDS = (
    "@timestamp",
    "host.hostname",
    "host.name",
    "event.code",
    "event.action",
    "user.domain",
    "user.name",
    "process.pid",
    "process.entity_id",
    "process.executable",
    "process.command_line",
    "process.parent.executable",
    "process.parent.command_line",
    "target.process.executable",
    "winlog.event_data.GrantedAccess",
    "source.ip",
    "destination.ip",
    "destination.port",
    "network.direction",
    "logon.id",
    "winlog.event_data.ObjectName",
    "winlog.event_data.WorkstationName",
    "winlog.event_data.Payload",
    "winlog.event_data.ContextInfo",
    "registry.path",
    "registry.data.strings",
    "file.path",
    "service.name",
    "service.executable",
    "task.name",
    "logon.type",
    "powershell.script_block_text",
    "count",
    # what the causal chain is rebuilt from (crew/chain.py)
    "process.parent.entity_id",
    "process.parent.pid",
    "process.hash.sha256",
    "process.name",
    "file.hash.sha256",
    "file.name",
    "dll.path",
    "target.process.entity_id",
    "destination.domain",
    "source.user.name",
    "winlog.event_data.Signature",
    "winlog.event_data.SignatureStatus",
    "winlog.event_data.SubjectDomainName",
)
# Samples keep every field an indicator or a benign explanation reads, so reasoning over a bounded
# sample sees what reasoning over the full result would.
SAMPLE_FIELDS = tuple(dict.fromkeys(SUMMARY_FIELDS + knowledge_fields()))
MAX_VALUE = 1024
MAX_TOOL_TEXT = 16_000  # characters a tool answers a model with (about 4k tokens)
PARALLEL_SEARCHES = 16  # searches a tool sends at once; the connector's cap decides how many reach the SIEM
ELLIPSIS = "…"


def compact(event: dict[str, Any]) -> dict[str, Any]:
    """The fields a reader needs, each value capped, for samples and model-facing summaries."""
    out: dict[str, Any] = {}
    for key in SAMPLE_FIELDS:
        value = event.get(key)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, str) and len(value) > MAX_VALUE:
            value = value[:MAX_VALUE] + ELLIPSIS
        out[key] = value
    for key, value in event.items():
        if key.startswith("group.") or (key not in out and key in ("hosts", "first_seen", "last_seen")):
            out[key] = value
    return out


def _head(value: Any, size: int = 48) -> Any:
    return value[:size] if isinstance(value, str) else value


def rank_by_malice(event: dict[str, Any]) -> float:
    """Rows that say the most (malice first, then recognised automation) come first in a sample."""
    return IndicatorSet.load().relevance(event)


def diverse(rows: list[dict[str, Any]], rank: Callable[[dict[str, Any]], float], size: int) -> list[dict[str, Any]]:
    """Most relevant rows first, but one per kind of behaviour before any repeats.

    A noisy process (hundreds of identical script-engine events) must not crowd a single rare,
    decisive event (one LSASS access) out of a bounded sample. Rows are grouped by what they say
    first, so ranking costs one evaluation per distinct behaviour, not per row.
    """
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        signature = (row.get("event.code"), row.get("process.executable"), row.get("process.command_line"),
                     row.get("target.process.executable"), row.get("registry.path"), row.get("destination.ip"),
                     row.get("user.name"), row.get("source.ip"), _head(row.get("winlog.event_data.Payload")),
                     _head(row.get("powershell.script_block_text")))
        groups.setdefault(signature, []).append(row)
    ranked = sorted(groups.values(), key=lambda group: rank(group[0]), reverse=True)
    first = [group[0] for group in ranked]
    if len(first) >= size:
        return first[:size]
    rest = [row for group in ranked for row in group[1:]]
    return first + rest[: size - len(first)]


def fence(evidence: list[Evidence], note: str = "", rows: int = 8, budget: int = MAX_TOOL_TEXT) -> str:
    """Model-facing text: only ids, kinds, statuses and counts stand outside the fence; everything
    that log data can shape (entity values, error texts, rows, notes) is inside it, with a nonce.

    The text stays within `budget` characters (fewer sample rows per item when it would not), so a
    provider never has to cut it: a cut fence would leave log text outside its markers. The full
    results are on the record under their evidence ids."""
    nonce = new_nonce()
    lines: list[str] = []
    for shown in dict.fromkeys((rows, 4, 2, 1, 0)):
        if shown > rows:
            continue
        lines = []
        for item in evidence:
            lines.append(f"evidence {item.id} kind={item.kind} status={item.status} count={item.count}")
            payload: dict[str, Any] = {"entity": item.entity}
            if item.error:
                payload["error"] = item.error[:200]
            if item.sample and shown:
                payload["rows"] = [{k: _head(v, 300) for k, v in row.items()} for row in item.sample[:shown]]
            if len(item.sample) > shown:
                payload["rows_not_shown"] = len(item.sample) - shown
            lines.extend(fenced(payload, nonce))
        if note:
            lines.extend(fenced({"note": note[:2000]}, nonce))
        if sum(len(line) + 1 for line in lines) <= budget:
            break
    return "\n".join(lines)


@dataclass
class Search:
    """One search to run and record as Evidence (see `record_searches`)."""

    tool: str
    kind: str
    entity_type: str | None
    entity: str | None
    run: Callable[[], SearchResult]
    time_range: TimeRange | None
    fallback_query: str = ""
    rank: Callable[[dict[str, Any]], float] | None = None
    priority: int = CONTEXT  # CRITICAL: the investigation waits on it (see connectors/slots.py)


def _answer(search: Search) -> SearchResult | ConnectorError:
    try:
        return with_priority(search.priority, search.run)
    except ConnectorError as exc:
        return exc


def record_searches(ctx: InvestigationContext, searches: list[Search]) -> list[tuple[Evidence, list[dict[str, Any]]]]:
    """Run independent searches at once and record each as Evidence, ok | empty | error, in the order
    given (so a case's evidence never depends on which answer came first); returns the full rows too.

    A remote SIEM answers in about a second: searches that do not depend on each other go out together,
    and the connector caps how many reach the SIEM at once. A failed query is recorded with status
    error (never as empty), so the verifier can tell 'nothing found' from 'could not look'.
    """
    if len(searches) <= 1:
        return [_record(ctx, search, _answer(search)) for search in searches]
    return SentSearches(ctx, searches).record()


class SentSearches:
    """Searches sent now and recorded later (see `record_searches`): a tool sends the searches whose
    answers it only records (nothing it asks next depends on them) and goes on with the ones it needs."""

    def __init__(self, ctx: InvestigationContext, searches: list[Search]) -> None:
        self.ctx = ctx
        self.searches = list(searches)
        self.pool = ThreadPoolExecutor(max_workers=min(PARALLEL_SEARCHES, len(self.searches) or 1))
        self.answers = [self.pool.submit(_answer, search) for search in self.searches]

    def record(self) -> list[tuple[Evidence, list[dict[str, Any]]]]:
        try:
            answers = [future.result() for future in self.answers]
        finally:
            self.pool.shutdown(wait=True)
        return [_record(self.ctx, search, answer) for search, answer in zip(self.searches, answers)]


def _record(ctx: InvestigationContext, search: Search, answer: SearchResult | ConnectorError
            ) -> tuple[Evidence, list[dict[str, Any]]]:
    sample_size = ctx.runtime.settings.investigation.sample_rows
    if isinstance(answer, ConnectorError):
        item = Evidence(
            kind=search.kind, entity_type=search.entity_type, entity=search.entity, connector=ctx.runtime.siem.name,
            language=ctx.runtime.siem.language, query=search.fallback_query, time_range=search.time_range,
            status="error", error=str(answer)[:500], tool=search.tool,
        )
        ctx.add_evidence(item)
        ctx.audit("query", {"tool": search.tool, "evidence": item.id, "status": "error", "error": item.error})
        return item, []
    rows = list(answer.events)
    ordered = diverse(rows, search.rank, sample_size) if search.rank else rows
    item = Evidence(
        kind=search.kind, entity_type=search.entity_type, entity=search.entity, connector=answer.connector,
        language=answer.language, query=answer.query, time_range=search.time_range,
        count=answer.total, sample=[compact(e) for e in ordered[:sample_size]],
        truncated=answer.truncated or answer.total > sample_size,
        status="ok" if answer.total > 0 else "empty", tool=search.tool,
    )
    ctx.add_evidence(item)
    ctx.audit(
        "query",
        {"tool": search.tool, "evidence": item.id, "language": item.language, "query": item.query[:2000],
         "count": item.count, "status": item.status, "result_digest": sha256_of(item.sample)},
    )
    return item, rows


def record_search(ctx: InvestigationContext, **search: Any) -> tuple[Evidence, list[dict[str, Any]]]:
    """Run one search and record it (see `record_searches`)."""
    return record_searches(ctx, [Search(**search)])[0]


def record_lookup(
    ctx: InvestigationContext, *, tool: str, kind: str, entity_type: str, entity: str,
    data: dict[str, Any] | list[dict[str, Any]], connector: str = "config",
) -> Evidence:
    """Context that comes from configuration (asset tiers, known software) or from siemcrew's own case
    store (related cases) is evidence too."""
    rows = [data] if isinstance(data, dict) and data else list(data or [])
    item = Evidence(
        kind=kind, entity_type=entity_type, entity=entity, connector=connector, language="lookup",
        query=f"{kind}({entity})", count=len(rows), sample=rows[: ctx.runtime.settings.investigation.sample_rows],
        status="ok" if rows else "empty", tool=tool,
    )
    ctx.add_evidence(item)
    ctx.audit("query", {"tool": tool, "evidence": item.id, "language": "lookup", "query": item.query})
    return item


class EvidenceTool(BaseTool):
    """A crewAI tool bound to one investigation context; subclasses implement `investigate`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    ctx: Any = Field(default=None, exclude=True)

    def investigate(self, **kwargs: Any) -> tuple[list[Evidence], str]:
        raise NotImplementedError

    def _run(self, **kwargs: Any) -> str:
        ctx: InvestigationContext = self.ctx
        ctx.audit("tool_call", {"tool": self.name, "args": kwargs})
        try:
            evidence, note = self.investigate(**kwargs)
        except ConnectorError as exc:
            ctx.audit("tool_error", {"tool": self.name, "error": str(exc)[:500]})
            return f"tool {self.name} failed: {str(exc)[:300]}"
        ctx.audit("tool_result", {"tool": self.name, "evidence": [e.id for e in evidence],
                                  "result_digest": sha256_of([e.content_hash for e in evidence])})
        return fence(evidence, note)


def scoped(ctx: InvestigationContext, query: EventQuery) -> EventQuery:
    """Every query of a case stays inside the alert's scope (one recording / one tenant)."""
    query.scope = ctx.scope
    query.limit = min(query.limit, 5000)
    return query
