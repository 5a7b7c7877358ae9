"""Endpoint truth from the EDR that covers a host: context and process trees as Evidence, and the
executor adapter for approved containment (never a tool a model can call)."""

from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel

from siemcrew.connectors.base import ConnectorError
from siemcrew.crew.indicators import short_host
from siemcrew.crew.models import ActionProposal, Case, Evidence, sha256_of
from siemcrew.tools.base import EvidenceTool, compact

ACTIONS = {"isolate_host": "contain", "release_host": "release", "kill_process": "kill_process"}


def _edr(ctx_or_rt: Any, host: str) -> Any:
    rt = getattr(ctx_or_rt, "runtime", ctx_or_rt)
    from siemcrew.connectors.edr.registry import edr_for_host

    return edr_for_host(rt.edr_settings, rt.edr, host)


def _record(ctx: Any, tool: str, kind: str, host: str, vendor: str, query: str,
            run: Callable[[], list[dict[str, Any]]]) -> Evidence:
    try:
        rows = run()
        item = Evidence(kind=kind, entity_type="host", entity=short_host(host), connector=vendor, language="api",
                        query=query, count=len(rows), sample=[compact(r) if "host.name" in r else r for r in rows[:20]],
                        truncated=len(rows) > 20, status="ok" if rows else "empty", tool=tool)
    except ConnectorError as exc:
        item = Evidence(kind=kind, entity_type="host", entity=short_host(host), connector=vendor, language="api",
                        query=query, status="error", error=str(exc)[:500], tool=tool)
    ctx.add_evidence(item)
    ctx.audit("query", {"tool": tool, "evidence": item.id, "language": "api", "query": query,
                        "status": item.status, "result_digest": sha256_of(item.sample)})
    return item


class EndpointTool(EvidenceTool):
    """Runs one EDR read for a host and records it; hosts no EDR covers are said so, not failed."""

    kind: str = "endpoint"

    def fetch(self, edr: Any, host: str, **kwargs: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def investigate(self, host: str, **kwargs: Any) -> tuple[list[Evidence], str]:
        edr = _edr(self.ctx, host)
        if edr is None:
            return [], f"no EDR covers {host}"
        label = f"{edr.name}:{self.name}({host}{''.join(f',{v}' for v in kwargs.values() if v is not None)})"
        return [_record(self.ctx, self.name, self.kind, host, edr.name, label,
                        lambda: self.fetch(edr, host, **kwargs))], ""


class EndpointContextTool(EndpointTool):
    name: str = "endpoint_context"
    description: str = "EDR view of a host: online, OS, containment state, logged-on users, open detections."
    kind: str = "endpoint_context"

    class Args(BaseModel):
        host: str

    args_schema: type[BaseModel] = Args

    def fetch(self, edr: Any, host: str, **kwargs: Any) -> list[dict[str, Any]]:
        ref = edr.find_host(name=host)
        if ref is None:
            return []
        context = edr.host_context(ref)
        detections = edr.detections(ref, self.ctx.window())
        return [context.model_dump(mode="json") | {"detections_in_window": len(detections)}]


class ProcessTreeTool(EndpointTool):
    name: str = "process_tree"
    description: str = "Process events from the EDR on a host around the alert time (optionally one pid)."
    kind: str = "process_tree"

    class Args(BaseModel):
        host: str
        pid: int | None = None

    args_schema: type[BaseModel] = Args

    def fetch(self, edr: Any, host: str, **kwargs: Any) -> list[dict[str, Any]]:
        ref = edr.find_host(name=host)
        return edr.process_events(ref, self.ctx.window(), kwargs.get("pid")) if ref else []


def endpoint_tools(ctx: Any, names: list[str]) -> list[EvidenceTool]:
    tools = {"endpoint_context": EndpointContextTool, "process_tree": ProcessTreeTool}
    return [tools[n](ctx=ctx) for n in names if n in tools]


def edr_action(rt: Any, proposal: ActionProposal, comment: str, case: Case, timeout_s: float | None = None,
               may_send: bool = True) -> Callable[[], tuple[Any, str, str, str | None]] | None:
    """The vendor call for an approved, policy-cleared endpoint action; None when no EDR covers it. With
    `may_send=False` it only asks the vendor about the action recorded under the proposal's key."""
    action = ACTIONS.get(proposal.action)
    host = str(proposal.args.get("host") or proposal.target.split(":")[0])
    edr = _edr(rt, host)
    if action is None or edr is None:
        return None

    def run() -> tuple[Any, str, str, str | None]:
        from siemcrew.connectors.edr.executor import ContainmentExecutor

        ref = edr.find_host(name=host)
        if ref is None:
            return "failed", edr.name, f"{edr.name} does not know host {host}", None
        ticket = ContainmentExecutor.from_settings(rt.edr_settings).execute(
            edr, action, ref, comment, rt.tickets, proposal.key(case.id),
            pid=int(proposal.args["pid"]) if action == "kill_process" else None, timeout_s=timeout_s,
            may_send=may_send)
        return ticket.state, edr.name, f"{action} {host}: {ticket.state} {ticket.detail}"[:500], ticket.ticket_id

    return run
