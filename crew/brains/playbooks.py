"""What each role's playbook investigates next, and what it concludes, from the case's evidence.

A plan is a list of (tool name, arguments). The brain re-plans on every call, so later steps can
depend on what earlier tool calls recorded (e.g. the lineage of a process found by alert_events).
"""

from __future__ import annotations

from typing import Any

from siemcrew.crew.context import InvestigationContext
from siemcrew.crew.indicators import IndicatorSet, short_host
from siemcrew.crew.models import (
    ActionProposal, HuntResult, ImpactAssessment, ResponsePlan, TriageResult, VerificationReport,
)
from siemcrew.crew.reasoning import Assessment, Reasoner, effective_techniques
from siemcrew.crew.targets import naming
from siemcrew.crew.timeutil import iso, parse_time

Call = tuple[str, dict[str, Any]]
PROCESS_EVENT_CODES = {"1", "4688", "10", "3", "11", "13", "12", "7"}


def _done(ctx: InvestigationContext, kind: str, entity: str | None) -> bool:
    return any(
        e.kind == kind and e.status != "error" and (entity is None or (e.entity or "").lower() == entity.lower()
                                                     or short_host(e.entity) == short_host(entity))
        for e in ctx.case.evidence
    )


def _own_process(ctx: InvestigationContext) -> dict[str, Any] | None:
    """The alert's own process, as its events name it (for prevalence of its command line)."""
    proc = ctx.alert.process
    if proc and (proc.command_line or proc.executable):
        return {"command_line": proc.command_line, "executable": proc.executable}
    rows = [row for e in ctx.evidence("alert_events") for row in e.sample if row.get("process.executable")]
    if not rows:  # events that only carry a pid (script logs, handles): what the chain found of that process
        pid = next((row.get("process.pid") for e in ctx.evidence("alert_events") for row in e.sample
                    if row.get("process.pid") not in (None, "")), None)
        rows = [row for kind in ("process_lineage", "process_activity") for e in ctx.evidence(kind)
                if e.entity_type == "process" for row in e.sample
                if row.get("process.executable") and (pid is None or row.get("process.pid") == pid)][:1]
    if not rows:
        return None
    return {"command_line": rows[0].get("process.command_line"), "executable": rows[0].get("process.executable")}


def entity_pivots(ctx: InvestigationContext) -> list[Call]:
    """One query per alert entity, so that every entity is pivoted on."""
    alert = ctx.alert
    calls: list[Call] = []
    for user in alert.entities.users:
        if not _done(ctx, "logon_activity", user):
            calls.append(("logon_activity", {"user": user}))
    for ip in alert.entities.ips:
        if not _done(ctx, "logon_activity", ip):
            calls.append(("logon_activity", {"ip": ip}))
    for exe in alert.entities.processes:
        if not _done(ctx, "prevalence", exe):
            calls.append(("prevalence", {"field": "process.executable", "value": exe}))
    for digest in alert.entities.hashes:
        if not _done(ctx, "prevalence", digest):
            calls.append(("prevalence", {"field": "process.hash.sha256", "value": digest}))
    return calls


def triage_plan(ctx: InvestigationContext) -> list[Call]:
    alert = ctx.alert
    host = alert.primary_host
    calls: list[Call] = []
    if not any(e.tool == "alert_chain" for e in ctx.case.evidence):
        calls.append(("alert_chain", {"alert_id": alert.id}))  # it fetches the alert's own events first
    elif not _done(ctx, "alert_events", None):
        calls.append(("alert_events", {"alert_id": alert.id}))
    if host and not _done(ctx, "host_activity", host):
        calls.append(("host_activity", {"host": host}))
    own = _own_process(ctx)
    for field in ("command_line", "executable"):
        if own and own.get(field) and not _done(ctx, "prevalence", own[field]):
            calls.append(("prevalence", {"field": f"process.{field}", "value": own[field]}))
    service_binary = alert.event.get("service.executable")
    if service_binary and not _done(ctx, "prevalence", str(service_binary)):
        calls.append(("prevalence", {"field": "service.executable", "value": str(service_binary)}))
    calls += entity_pivots(ctx)
    if host and not _done(ctx, "asset_context", host):
        calls.append(("asset_context", {"host": host}))
    if host and not _done(ctx, "related_cases", host):
        calls.append(("related_cases", {"host": host}))
    return _unique(calls)  # the alert's own executable is often one of its entities too


def hunt_plan(ctx: InvestigationContext) -> list[Call]:
    alert = ctx.alert
    host = alert.primary_host
    calls: list[Call] = []
    if host:
        for tool in ("logon_activity", "network_connections", "persistence_check", "host_activity"):
            if not _done(ctx, tool, host):
                calls.append((tool, {"host": host}))
    if host and ctx.runtime.edr and not _done(ctx, "endpoint_context", host):
        calls.append(("endpoint_context", {"host": host}))
    techniques = effective_techniques(ctx.case)
    if techniques and ctx.runtime.has_sigma and not _done(ctx, "sigma", None):
        calls.append(("sigma_hunt", {"techniques": techniques, "host": host}))
    calls += entity_pivots(ctx)
    assessment = Reasoner(ctx.case, ctx.runtime.inventory).assess()
    if assessment.verdict != "benign":  # what the impact stage will need, asked for now
        calls += _destination_prevalence(ctx, assessment)
    for hint in ctx.gaps:
        calls += _gap_calls(ctx, hint)
    return _unique(calls)


def _destination_prevalence(ctx: InvestigationContext, assessment: Assessment) -> list[Call]:
    """How rare the chain's external destinations are (block candidates)."""
    return [("prevalence", {"field": "destination.ip", "value": ip})
            for ip in assessment.external_destinations[:3] if not _done(ctx, "prevalence", ip)]


def _gap_calls(ctx: InvestigationContext, hint: str) -> list[Call]:
    """Turn a verifier gap hint into the queries that close it."""
    host = ctx.alert.primary_host
    kind, _, value = hint.partition(":")
    if kind == "host" and value:
        calls: list[Call] = []
        for tool in ("host_activity", "persistence_check", "logon_activity"):
            if not _done(ctx, tool, value):
                calls.append((tool, {"host": value}))
        return calls
    if kind == "ip" and value:
        return [("logon_activity", {"ip": value})]
    if kind == "user" and value:
        return [("logon_activity", {"user": value})]
    if kind == "process" and value:
        return [("prevalence", {"field": "process.executable", "value": value})]
    if kind == "hash" and value:
        return [("prevalence", {"field": "process.hash.sha256", "value": value})]
    if kind == "retry":
        tool, _, entity = value.partition(":")
        return _kind_calls(ctx, tool, entity or host)
    return _kind_calls(ctx, hint, host)


def _kind_calls(ctx: InvestigationContext, kind: str, entity: str | None) -> list[Call]:
    host = entity or ctx.alert.primary_host
    if kind in ("host_activity", "persistence_check", "network_connections", "logon_activity") and host:
        return [(kind, {"host": host})]
    if kind == "alert_events":
        return [("alert_events", {"alert_id": ctx.alert.id})]
    if kind in ("process_lineage", "process_activity", "logon_session"):
        return [("alert_chain", {"alert_id": ctx.alert.id})]
    if kind == "prevalence":
        own = _own_process(ctx)
        if own and (own.get("command_line") or own.get("executable")):
            field = "command_line" if own.get("command_line") else "executable"
            return [("prevalence", {"field": f"process.{field}", "value": own[field]})]
    if kind == "sigma" and effective_techniques(ctx.case):
        return [("sigma_hunt", {"techniques": effective_techniques(ctx.case), "host": host})]
    return []


def _unique(calls: list[Call]) -> list[Call]:
    seen, out = set(), []
    for name, args in calls:
        key = (name, tuple(sorted((k, str(v)) for k, v in args.items())))
        if key not in seen:
            seen.add(key)
            out.append((name, args))
    return out


def impact_plan(ctx: InvestigationContext) -> list[Call]:
    assessment = Reasoner(ctx.case, ctx.runtime.inventory).assess()
    calls: list[Call] = []
    for host in assessment.affected_hosts:
        if not _done(ctx, "asset_context", host):
            calls.append(("asset_context", {"host": host}))
        if ctx.runtime.edr and not _done(ctx, "endpoint_context", host):
            calls.append(("endpoint_context", {"host": host}))
    for user in assessment.affected_users:
        if not _done(ctx, "asset_context", user):
            calls.append(("asset_context", {"user": user}))
    return calls + _destination_prevalence(ctx, assessment)


# -- conclusions ----------------------------------------------------------------------------------
def conclude_triage(ctx: InvestigationContext) -> TriageResult:
    a = Reasoner(ctx.case, ctx.runtime.inventory).assess()
    pivots = [f"host:{h}" for h in a.candidate_hosts] + [f"ip:{i}" for i in a.candidate_ips]
    return TriageResult(verdict=a.verdict, confidence=a.confidence, summary=a.summary, findings=a.findings, pivots=pivots)


def conclude_hunt(ctx: InvestigationContext) -> HuntResult:
    a = Reasoner(ctx.case, ctx.runtime.inventory).assess()
    pivoted = sorted({f"{e.entity_type}:{e.entity}" for e in ctx.case.evidence if e.entity and e.language != "lookup"})
    return HuntResult(summary=a.summary, findings=a.findings, affected_hosts=a.affected_hosts,
                      affected_users=a.affected_users, pivoted=pivoted)


def conclude_impact(ctx: InvestigationContext) -> ImpactAssessment:
    a = Reasoner(ctx.case, ctx.runtime.inventory).assess()
    inventory = ctx.runtime.inventory
    critical = []
    for host in a.affected_hosts:
        info = inventory.host(host)
        if getattr(info, "criticality", "") in ("high", "critical") or getattr(info, "tier", "") == "tier0":
            critical.append(host)
    severity = "low"
    if a.verdict == "malicious":
        severity = "critical" if critical else "high"
    elif a.verdict == "suspicious":
        severity = "medium"
    return ImpactAssessment(verdict=a.verdict, confidence=a.confidence, severity=severity, summary=a.summary,
                            affected_hosts=a.affected_hosts, affected_users=a.affected_users,
                            critical_assets=critical, findings=a.findings)


def conclude_verify(ctx: InvestigationContext) -> VerificationReport:
    report = ctx.case.verification
    assert report is not None, "the deterministic verification runs before the verifier agent"
    return report


def conclude_respond(ctx: InvestigationContext) -> ResponsePlan:
    case = ctx.case
    a = Reasoner(case, ctx.runtime.inventory).assess()
    cite = [f.evidence_ids[0] for f in case.findings if f.kind in ("malicious", "suspicious") and f.evidence_ids][:5]
    proposals: list[ActionProposal] = []
    if case.verdict == "benign":
        cite = [f.evidence_ids[0] for f in case.findings if f.kind == "benign" and f.evidence_ids][:5]
        proposals.append(ActionProposal(action="close_alert", target=case.alert.id,
                                        args={"verdict": "benign", "reason": case.summary[:300]},
                                        reason="benign with evidence", evidence_ids=cite))
        return ResponsePlan(summary="close as benign", proposals=proposals)
    if case.verdict == "malicious" and case.confidence == "high":
        grounds = [i for f in case.findings if f.kind in ("malicious", "suspicious") for i in f.evidence_ids]

        def citing(kind: str, value: str) -> list[str]:  # the evidence naming the target, the findings' first
            return naming(case.evidence, kind, value, prefer=grounds)

        for host in case.affected_hosts:
            proposals.append(ActionProposal(action="isolate_host", target=host, args={"host": host},
                                            reason="host shows confirmed malicious activity",
                                            evidence_ids=citing("host", host)))
        for proc in a.malicious_processes[:3]:
            if short_host(proc["host"]) in {short_host(h) for h in case.affected_hosts}:
                target = f"{proc['host']}:{proc['pid']}"
                proposals.append(ActionProposal(
                    action="kill_process", target=target,
                    args={k: v for k, v in {"host": proc["host"], "pid": int(proc["pid"]),
                                            "executable": proc.get("executable")}.items() if v},
                    reason="malicious process", evidence_ids=citing("process", target)))
        for ip in a.rare_external_ips[:5]:
            proposals.append(ActionProposal(action="block_indicator", target=ip, args={"type": "ip", "value": ip},
                                            reason="rare external destination contacted by the malicious process tree",
                                            evidence_ids=citing("indicator", ip)))
        for user in case.affected_users:
            proposals.append(ActionProposal(action="disable_user", target=user, args={"user": user},
                                            reason="account used in the attack", evidence_ids=citing("user", user)))
    proposals.append(ActionProposal(action="update_alert", target=case.alert.id,
                                    args={"status": "escalated", "verdict": case.verdict},
                                    reason="write the verdict back to the SIEM", evidence_ids=cite))
    proposals.append(ActionProposal(action="escalate", target=case.id, args={"severity": case.impact.severity if case.impact else "medium"},
                                    reason="a human must review this case", evidence_ids=cite))
    return ResponsePlan(summary=f"respond to {case.verdict} case", proposals=ctx.runtime.policy.one_per_target(proposals))


PLANS = {"triage": triage_plan, "hunter": hunt_plan, "impact": impact_plan}
CONCLUSIONS = {
    "triage": conclude_triage, "hunter": conclude_hunt, "impact": conclude_impact,
    "verifier": conclude_verify, "responder": conclude_respond,
}
