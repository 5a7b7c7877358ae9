"""The read-only investigative tools. Each query becomes an Evidence item of a named kind.

Kinds (the vocabulary of `config/evidence.yaml`): alert_events, process_lineage, host_activity,
logon_activity, host_addresses, network_connections, persistence_check, prevalence, sigma,
asset_context, hunt.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.crew.context import InvestigationContext
from siemcrew.crew.indicators import IndicatorSet, account, is_external_ip, is_internal_ip, short_host
from siemcrew.crew.models import Evidence, TimeRange
from siemcrew.crew.timeutil import parse_time
from siemcrew.tools.base import (
    ELLIPSIS, EvidenceTool, Search, rank_by_malice, record_lookup, record_search, record_searches, scoped,
)
from siemcrew.tools.alert_events import AlertEventsTool, host_filter
from siemcrew.tools.chain import AlertChainTool

PROCESS_START = ["1", "4688"]
LOGON_CODES = ["4624", "4625", "4648"]
PERSISTENCE_CODES = ["4697", "7045", "4698", "4702", "106", "19", "20", "21"]
ENTITY_FIELDS = {
    "process.command_line": "process",
    "process.executable": "process",
    "process.hash.sha256": "hash",
    "destination.ip": "ip",
    "source.ip": "ip",
    "service.name": "service",
    "service.executable": "service",
    "user.name": "user",
    "file.path": "file",
    "registry.path": "registry",
}


def user_filters(user: str) -> list[Filter]:
    domain, _, name = user.rpartition("\\")
    return [Filter(field="user.name", value=name or user)]


def rank_logon(event: dict[str, Any]) -> float:
    """Interactive and network logons of people from other machines first; machine noise last."""
    ind = IndicatorSet.load()
    score = 0.0
    if str(event.get("logon.type")) in ("3", "10"):
        score += 2
    if is_internal_ip(event.get("source.ip")):
        score += 1
    if not ind.is_system_account(account(event)):
        score += 3
    return score


def _window(tool: EvidenceTool, before: int | None, after: int | None) -> TimeRange:
    return tool.ctx.window(before, after)


class HostArgs(BaseModel):
    host: str = Field(description="host name (short or FQDN)")
    before_minutes: int | None = Field(default=None, description="minutes before the alert time")
    after_minutes: int | None = Field(default=None, description="minutes after the alert time")


class ProcessLineageTool(EvidenceTool):
    name: str = "process_lineage"
    description: str = "Ancestors and children of a process on a host (by entity id, pid or executable)."

    class Args(BaseModel):
        host: str
        entity_id: str | None = None
        pid: int | None = None
        executable: str | None = None
        at: str | None = Field(default=None, description="ISO time near the process start")

    args_schema: type[BaseModel] = Args

    def _start_event(self, query: EventQuery, entity: str, items: list[Evidence]) -> dict[str, Any] | None:
        ctx = self.ctx
        item, rows = record_search(
            ctx, tool=self.name, kind="process_lineage", entity_type="process", entity=entity,
            run=lambda: ctx.runtime.siem.search(query), time_range=query.time_range,
        )
        items.append(item)
        return rows[0] if rows else None

    def investigate(self, host: str, entity_id: str | None = None, pid: int | None = None,
                    executable: str | None = None, at: str | None = None) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        moment = parse_time(at) or ctx.alert.timestamp
        wide = TimeRange(start=moment - timedelta(hours=24), end=moment + timedelta(minutes=5))
        items: list[Evidence] = []
        entity = executable or entity_id or (str(pid) if pid is not None else host)
        base = [host_filter(host), Filter(field="event.code", op="in", value=PROCESS_START)]
        if entity_id:
            query = EventQuery(filters=base + [Filter(field="process.entity_id", value=entity_id)], limit=5)
        elif pid is not None:
            query = EventQuery(filters=base + [Filter(field="process.pid", value=int(pid))], time_range=wide, order="desc", limit=5)
        elif executable:
            query = EventQuery(filters=base + [Filter(field="process.executable", value=executable)],
                               time_range=ctx.window(), order="desc", limit=5)
        else:
            return items, "nothing to look up: give entity_id, pid or executable"
        current = self._start_event(scoped(ctx, query), entity, items)
        chain = [current] if current else []
        node = current
        for _ in range(4):
            if not node:
                break
            parent_id = node.get("process.parent.entity_id")
            parent_pid = node.get("process.parent.pid")
            node_time = parse_time(node.get("@timestamp")) or moment
            if parent_id:
                q = EventQuery(filters=base + [Filter(field="process.entity_id", value=parent_id)], limit=1)
            elif parent_pid not in (None, ""):
                q = EventQuery(filters=base + [Filter(field="process.pid", value=int(parent_pid))],
                               time_range=TimeRange(start=node_time - timedelta(days=7), end=node_time), order="desc", limit=1)
            else:
                break
            node = self._start_event(scoped(ctx, q), entity, items)
            if node:
                chain.insert(0, node)
        children: list[dict[str, Any]] = []
        if current:
            cur_id = current.get("process.entity_id")
            cur_time = parse_time(current.get("@timestamp")) or moment
            if cur_id:
                q = EventQuery(filters=base + [Filter(field="process.parent.entity_id", value=cur_id)], limit=200)
            else:
                q = EventQuery(filters=base + [Filter(field="process.parent.pid", value=int(current.get("process.pid") or -1))],
                               time_range=TimeRange(start=cur_time, end=cur_time + timedelta(hours=2)), limit=200)
            item, children = record_search(
                ctx, tool=self.name, kind="process_lineage", entity_type="process_children", entity=entity,
                run=lambda: ctx.runtime.siem.search(scoped(ctx, q)), time_range=q.time_range, rank=rank_by_malice,
            )
            items.append(item)
        owner_pid = (current or {}).get("process.pid", pid)
        if owner_pid not in (None, "") and not (current or {}).get("user.name"):
            # Who ran it: any event of the same process that names a user (script logs, network, access).
            q = EventQuery(filters=[host_filter(host), Filter(field="process.pid", value=int(owner_pid)),
                                    Filter(field="user.name", op="exists")],
                           time_range=ctx.window(), group_by=["user.domain", "user.name"], limit=10)
            item, _ = record_search(
                ctx, tool=self.name, kind="process_lineage", entity_type="process", entity=entity,
                run=lambda: ctx.runtime.siem.search(scoped(ctx, q)), time_range=q.time_range,
            )
            items.append(item)
        names = " > ".join(str(e.get("process.name") or e.get("process.executable") or "?") for e in chain)
        kids = ", ".join(sorted({str(e.get("process.name") or e.get("process.executable")) for e in children}))
        return items, f"lineage: {names or 'start event not found'}; children: {kids or 'none'}"


class HostActivityTool(EvidenceTool):
    name: str = "host_activity"
    description: str = "All events on a host around the alert time, most suspicious first."
    args_schema: type[BaseModel] = HostArgs

    def investigate(self, host: str, before_minutes: int | None = None, after_minutes: int | None = None) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        window = _window(self, before_minutes, after_minutes)
        query = scoped(ctx, EventQuery(filters=[host_filter(host)], time_range=window, limit=3000))
        item, rows = record_search(
            ctx, tool=self.name, kind="host_activity", entity_type="host", entity=short_host(host),
            run=lambda: ctx.runtime.siem.search(query), time_range=window, rank=rank_by_malice,
        )
        names = sorted({h.name for row in rows for h in IndicatorSet.load().hits(row)})
        return [item], f"indicators seen: {', '.join(names) or 'none'}"


class LogonActivityTool(EvidenceTool):
    name: str = "logon_activity"
    description: str = (
        "Logons around the alert time: remote logons into a host and logons from its addresses to other "
        "hosts (lateral movement), or all logons of a user or from an IP."
    )

    class Args(BaseModel):
        host: str | None = None
        user: str | None = None
        ip: str | None = None

    args_schema: type[BaseModel] = Args

    def _logons(self, entity_type: str, entity: str, filters: list[Filter], window: TimeRange) -> Search:
        ctx = self.ctx
        query = scoped(ctx, EventQuery(filters=filters + [Filter(field="event.code", op="in", value=LOGON_CODES)],
                                       time_range=window, limit=2000))
        return Search(tool=self.name, kind="logon_activity", entity_type=entity_type, entity=entity,
                      run=lambda: ctx.runtime.siem.search(query), time_range=window, rank=rank_logon)

    def _owners(self, entity_type: str, entity: str, filters: list[Filter], group: str, window: TimeRange,
                limit: int) -> Search:
        """Who owns an address, or which addresses a host uses: outbound connections grouped."""
        ctx = self.ctx
        query = scoped(ctx, EventQuery(filters=filters + [Filter(field="network.direction", value="outbound")],
                                       time_range=window, group_by=[group], limit=limit))
        return Search(tool=self.name, kind="host_addresses", entity_type=entity_type, entity=entity,
                      run=lambda: ctx.runtime.siem.search(query), time_range=window)

    def investigate(self, host: str | None = None, user: str | None = None, ip: str | None = None) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        window = ctx.window()
        first: list[Search] = []
        if host:
            first.append(self._logons("host", short_host(host), [host_filter(host)], window))
            first.append(self._owners("host", short_host(host), [host_filter(host)], "source.ip", window, 20))
        if user:
            first.append(self._logons("user", user, user_filters(user), window))
        if ip:
            first.append(self._logons("ip", ip, [Filter(field="source.ip", value=ip)], window))
            first.append(self._owners("ip", ip, [Filter(field="source.ip", value=ip)], "host.hostname", window, 10))
        # logons from the host's own addresses onto other hosts (lateral movement): at once for the
        # addresses the case already knows (the chain trace asked), the others once the search above says
        known = _known_addresses(ctx, short_host(host), window) if host else []
        lateral = (lambda addrs: [self._logons("ip", addr, [Filter(field="source.ip", value=addr),
                                                            Filter(field="host.hostname", value=short_host(host), negate=True)],
                                               window) for addr in addrs])
        results = record_searches(ctx, first + lateral(known[:3]))
        items = [item for item, _ in results]
        if host:
            addrs = [str(r["source.ip"]) for r in results[1][1] if is_internal_ip(r.get("source.ip"))]
            items += [item for item, _ in record_searches(ctx, lateral([a for a in addrs if a not in known][:3 - len(known[:3])]))]
        return items, ""


def _known_addresses(ctx: InvestigationContext, host: str, window: TimeRange) -> list[str]:
    """The host's addresses over this window that searches of this case already found: its outbound
    connections' sources, or addresses resolved to it."""
    found: list[str] = []
    for item in ctx.evidence("host_addresses"):
        if item.status != "ok" or item.time_range != window:
            continue
        if item.entity_type == "host" and str(item.entity or "").split(":")[0] == host:
            found += [str(r["source.ip"]) for r in item.sample if is_internal_ip(r.get("source.ip"))]
        elif item.entity_type == "ip" and is_internal_ip(item.entity) \
                and any(short_host(r.get("host.hostname")) == host for r in item.sample):
            found.append(str(item.entity))
    return list(dict.fromkeys(found))


class NetworkConnectionsTool(EvidenceTool):
    name: str = "network_connections"
    description: str = "Network connections of a host around the alert time, external destinations first."
    args_schema: type[BaseModel] = HostArgs

    def investigate(self, host: str, before_minutes: int | None = None, after_minutes: int | None = None) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        window = _window(self, before_minutes, after_minutes)
        query = scoped(ctx, EventQuery(filters=[host_filter(host), Filter(field="event.category", value="network")],
                                       time_range=window, limit=2000))
        item, rows = record_search(
            ctx, tool=self.name, kind="network_connections", entity_type="host", entity=short_host(host),
            run=lambda: ctx.runtime.siem.search(query), time_range=window,
            rank=lambda e: (2 if is_external_ip(e.get("destination.ip")) else 0) + rank_by_malice(e),
        )
        external = sorted({str(r["destination.ip"]) for r in rows if is_external_ip(r.get("destination.ip"))})
        return [item], f"external destinations: {', '.join(external) or 'none'}"


class PersistenceCheckTool(EvidenceTool):
    name: str = "persistence_check"
    description: str = "Autostart changes on a host: run keys, services, scheduled tasks, WMI subscriptions, shell-open hijacks."
    args_schema: type[BaseModel] = HostArgs

    def investigate(self, host: str, before_minutes: int | None = None, after_minutes: int | None = None) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        window = _window(self, before_minutes, after_minutes)
        query = scoped(ctx, EventQuery(filters=[host_filter(host)], time_range=window, limit=1000))
        query.any_of.append([
            Filter(field="registry.path", op="contains", value="\\CurrentVersion\\Run"),
            Filter(field="registry.path", op="contains", value="\\Services\\"),
            Filter(field="registry.path", op="contains", value="\\shell\\open\\command"),
            Filter(field="registry.path", op="contains", value="\\Winlogon\\"),
            Filter(field="event.code", op="in", value=PERSISTENCE_CODES),
            Filter(field="process.command_line", op="contains", value="schtasks"),
        ])
        item, _ = record_search(
            ctx, tool=self.name, kind="persistence_check", entity_type="host", entity=short_host(host),
            run=lambda: ctx.runtime.siem.search(query), time_range=window, rank=rank_by_malice,
        )
        return [item], ""


class PrevalenceTool(EvidenceTool):
    name: str = "prevalence"
    description: str = "How many hosts, and over what time span, a value (command line, executable, hash, IP) was seen."

    class Args(BaseModel):
        field: Literal[
            "process.command_line", "process.executable", "process.hash.sha256", "destination.ip",
            "source.ip", "service.name", "service.executable", "user.name", "file.path", "registry.path",
        ]
        value: str

    args_schema: type[BaseModel] = Args

    def investigate(self, field: str, value: str) -> tuple[list[Evidence], str]:
        """Hosts that saw the value before the alert (over 30 days), hosts around it, and its first
        sighting: established behaviour needs both many hosts and age; a new value on many hosts
        within minutes is spread, not routine."""
        ctx = self.ctx
        entity_type = ENTITY_FIELDS.get(field, "value")
        # A value cut short in a sample (ends with an ellipsis) is matched by its prefix.
        flt = [Filter(field=field, op="startswith", value=value[:-1])] if value.endswith(ELLIPSIS) \
            else [Filter(field=field, value=value)]
        moment = ctx.alert.first_seen or ctx.alert.timestamp
        before = TimeRange(start=moment - timedelta(days=30), end=moment - timedelta(hours=1))
        queries = [scoped(ctx, EventQuery(filters=list(flt), time_range=w, group_by=["host.hostname"], limit=500))
                   for w in (before, ctx.window())]
        queries.append(scoped(ctx, EventQuery(filters=list(flt), order="asc", limit=1)))
        results = record_searches(ctx, [
            Search(tool=self.name, kind="prevalence", entity_type=entity_type, entity=value,
                   run=lambda q=q: ctx.runtime.siem.search(q), time_range=q.time_range) for q in queries])
        items = [item for item, _ in results]
        counts = [len(rows) for _, rows in results[:2]]
        first_rows = results[2][1]
        seen = str(first_rows[0].get("@timestamp")) if first_rows else "never"
        return items, f"seen on {counts[0]} host(s) before the alert and {counts[1]} around it; first seen {seen}"


class RelatedCasesTool(EvidenceTool):
    name: str = "related_cases"
    description: str = "Other cases on the same host around the alert time (their verdicts), from the case store."

    class Args(BaseModel):
        host: str

    args_schema: type[BaseModel] = Args

    def investigate(self, host: str) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        related = ctx.runtime.cases.related(ctx.case, short_host(host), ctx.window())
        item = record_lookup(ctx, tool=self.name, kind="related_cases", entity_type="host", entity=short_host(host),
                             data=related, connector="casestore")
        return [item], f"{len(related)} related case(s)"


class SigmaHuntTool(EvidenceTool):
    name: str = "sigma_hunt"
    description: str = "Run the shared Sigma detection rules for the given ATT&CK techniques around the alert time."

    class Args(BaseModel):
        techniques: list[str]
        host: str | None = None

    args_schema: type[BaseModel] = Args

    def investigate(self, techniques: list[str], host: str | None = None) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        rules = ctx.runtime.rules_for(techniques)[:6]
        window = ctx.window()
        results = record_searches(ctx, [
            Search(tool=self.name, kind="sigma", entity_type="host" if host else None,
                   entity=short_host(host) if host else None,
                   run=lambda rule=rule: ctx.runtime.run_sigma(rule, window, ctx.scope, host),
                   time_range=window, fallback_query=f"sigma:{rule.title}") for rule in rules])
        items = [item for item, _ in results]
        return items, f"{len(rules)} rule(s) for {', '.join(techniques)}"


class AssetContextTool(EvidenceTool):
    name: str = "asset_context"
    description: str = "Asset tier/role/criticality of a host, or tier/role of an identity, from the inventory."

    class Args(BaseModel):
        host: str | None = None
        user: str | None = None

    args_schema: type[BaseModel] = Args

    def investigate(self, host: str | None = None, user: str | None = None) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        items = []
        if host:
            info = ctx.runtime.inventory.host(host)
            items.append(record_lookup(ctx, tool=self.name, kind="asset_context", entity_type="host",
                                       entity=short_host(host), data=_plain(info)))
        if user:
            info = ctx.runtime.inventory.identity(user)
            items.append(record_lookup(ctx, tool=self.name, kind="asset_context", entity_type="user",
                                       entity=user, data=_plain(info)))
        return items, ""


class SearchEventsTool(EvidenceTool):
    name: str = "search_events"
    description: str = "Free hunt: events matching ECS field filters around the alert time (all filters must match)."

    class Args(BaseModel):
        filters: dict[str, str] = Field(description="ECS field -> value (exact, case-insensitive; '*' wildcards allowed)")
        before_minutes: int | None = None
        after_minutes: int | None = None

    args_schema: type[BaseModel] = Args

    def investigate(self, filters: dict[str, str], before_minutes: int | None = None,
                    after_minutes: int | None = None) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        window = _window(self, before_minutes, after_minutes)
        query = scoped(ctx, EventQuery(time_range=window, limit=500))
        for field, value in filters.items():
            text = str(value)
            if text.startswith("*") and text.endswith("*") and len(text) > 2:
                query.filters.append(Filter(field=field, op="contains", value=text.strip("*")))
            elif text.endswith("*"):
                query.filters.append(Filter(field=field, op="startswith", value=text.rstrip("*")))
            elif text.startswith("*"):
                query.filters.append(Filter(field=field, op="endswith", value=text.lstrip("*")))
            else:
                query.filters.append(Filter(field=field, value=text))
        entity = next(iter(filters.values()), None)
        item, _ = record_search(
            ctx, tool=self.name, kind="hunt", entity_type=ENTITY_FIELDS.get(next(iter(filters), ""), "value"),
            entity=str(entity) if entity is not None else None,
            run=lambda: ctx.runtime.siem.search(query), time_range=window, rank=rank_by_malice,
        )
        return [item], ""


class NativeQueryTool(EvidenceTool):
    name: str = "run_query"
    description: str = "Run a read-only query in the SIEM's own language (SQL, SPL, DSL/ES|QL). Writes are refused."

    class Args(BaseModel):
        query: str

    args_schema: type[BaseModel] = Args

    def investigate(self, query: str) -> tuple[list[Evidence], str]:
        ctx = self.ctx
        window = ctx.window()
        item, _ = record_search(
            ctx, tool=self.name, kind="hunt", entity_type=None, entity=None,
            run=lambda: ctx.runtime.siem.run_native(query, window, 200), time_range=window, fallback_query=query,
        )
        if item.status == "error":
            ctx.audit("refusal", {"tool": self.name, "query": query[:1000], "reason": item.error})
        return [item], ""


def _plain(info: Any) -> dict[str, Any]:
    if info is None:
        return {}
    if hasattr(info, "model_dump"):
        return info.model_dump(mode="json")
    if hasattr(info, "__dict__"):
        return {k: v for k, v in vars(info).items() if not k.startswith("_")}
    return dict(info)


INVESTIGATION_TOOLS: dict[str, type[EvidenceTool]] = {
    cls.model_fields["name"].default: cls
    for cls in (
        AlertEventsTool, AlertChainTool, ProcessLineageTool, HostActivityTool, LogonActivityTool, NetworkConnectionsTool,
        PersistenceCheckTool, PrevalenceTool, SigmaHuntTool, AssetContextTool, SearchEventsTool, NativeQueryTool,
        RelatedCasesTool,
    )
}


def tools_for(ctx: Any, names: list[str]) -> list[EvidenceTool]:
    return [INVESTIGATION_TOOLS[name](ctx=ctx) for name in names if name in INVESTIGATION_TOOLS]
