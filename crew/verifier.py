"""The verifier's six deterministic checks (DESIGN.md). Code and config; a model cannot pass them.

In LLM mode the verifier agent may add concerns, and a concern can only make the report stricter.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from pathlib import Path
from typing import Any

from siemcrew.config.settings import load_yaml
from siemcrew.crew.indicators import short_host
from siemcrew.crew.models import Case, Gap, Grounds, TimeRange, VerificationReport
from siemcrew.crew.reasoning import Reasoner, effective_techniques

CONFIDENCE_RANK = {"low": 0, "medium": 1, "high": 2}


class EvidenceRequirements:
    def __init__(self, data: dict[str, Any]) -> None:
        self.window_before = timedelta(minutes=int((data.get("window") or {}).get("before_minutes", 30)))
        self.window_after = timedelta(minutes=int((data.get("window") or {}).get("after_minutes", 30)))
        self.categories: dict[str, dict[str, Any]] = data.get("categories") or {}
        self.pivot_entities: list[str] = list(data.get("pivot_entities") or ["host", "user", "process", "ip"])
        self.benign_requires: list[str] = list(data.get("benign_requires") or [])
        self.benign_requires_traced: list[str] = list(data.get("benign_requires_traced") or [])
        self.malicious_min_confidence: str = str(data.get("malicious_min_confidence", "high"))

    @classmethod
    @functools.lru_cache(maxsize=8)
    def load(cls, path: Path) -> "EvidenceRequirements":
        return cls(load_yaml(path) or {})

    def category(self, techniques: list[str], tactics: list[str]) -> str:
        best, best_len = "default", 0
        for name, spec in self.categories.items():
            for prefix in spec.get("techniques") or []:
                for tech in techniques:
                    if tech.upper().startswith(str(prefix).upper()) and len(prefix) > best_len:
                        best, best_len = name, len(prefix)
            if best_len == 0 and any(t.lower() in [x.lower() for x in spec.get("tactics") or []] for t in tactics):
                best = name
        return best

    def required(self, case: Case) -> list[str]:
        if case.verdict == "benign":
            kinds = list(self.benign_requires)
        else:
            cat = self.category(effective_techniques(case), case.alert.tactics)
            kinds = list((self.categories.get(cat) or self.categories.get("default") or {}).get("required") or [])
        if "process_lineage" in kinds and not names_a_process(case):
            # An alert about an account or a connection, with no process anywhere near it: its story is
            # told by logons, not by a process tree (nor by how common a process is).
            kinds = [k for k in kinds if k not in ("process_lineage", "prevalence")]
            if "logon_activity" not in kinds:
                kinds.append("logon_activity")
        return kinds


def names_a_process(case: Case) -> bool:
    proc = case.alert.process
    if proc and (proc.executable or proc.pid is not None or proc.entity_id):
        return True
    return any(row.get("process.executable") or row.get("process.pid") not in (None, "")
               for e in case.evidence if e.kind == "alert_events" for row in e.sample)


def _matches(entity_type: str, wanted: str, item_entity: str | None) -> bool:
    if item_entity is None:
        return False
    if entity_type == "host":
        return short_host(item_entity) == short_host(wanted)
    if entity_type == "user":
        return item_entity.lower().split("\\")[-1] == wanted.lower().split("\\")[-1]
    return item_entity.lower() == wanted.lower()


def verify(case: Case, requirements: EvidenceRequirements, inventory: Any) -> VerificationReport:
    gaps: list[Gap] = []
    passed: list[str] = []
    evidence = case.evidence
    alert = case.alert
    required = requirements.required(case)

    # 1. required kinds present (ok or empty)
    accepted = ("ok",) if case.verdict == "benign" else ("ok", "empty")  # closing needs something found
    missing = [k for k in required if not any(e.kind == k and e.status in accepted for e in evidence)]
    asked = [e for e in evidence if e.kind == "alert_events" and e.status != "error"]
    blind = bool(asked) and not any(e.status == "ok" for e in asked)
    if blind:
        # The SIEM holds the alert's events (it fired on them): not seeing them is blindness, not evidence.
        gaps.append(Gap(check="required_evidence", hint="alert_events",
                        detail="cannot see the alert's own events: check the field mapping (siemcrew doctor)"))
    if case.verdict == "benign":
        missing += [k for k in requirements.benign_requires_traced if k not in missing
                    and not any(e.kind == k and e.status in ("ok", "empty") for e in evidence)]
    for kind in missing:
        gaps.append(Gap(check="required_evidence", detail=f"no {kind} evidence", hint=kind))
    if not missing and not blind:
        passed.append("required_evidence")

    # 2. every entity (and every host in scope) was pivoted on by a query
    queries = [e for e in evidence if e.language != "lookup" and e.status != "error"]
    pivot_gaps = 0
    types = {"host": "hosts", "user": "users", "process": "processes", "ip": "ips", "hash": "hashes"}
    for entity_type in requirements.pivot_entities:
        for value in getattr(alert.entities, types.get(entity_type, ""), []) or []:
            if not any(e.entity_type == entity_type and _matches(entity_type, value, e.entity) for e in queries):
                pivot_gaps += 1
                gaps.append(Gap(check="entity_pivot", detail=f"{entity_type} {value} was not pivoted on",
                                hint=f"{entity_type}:{value}"))
    assessment = Reasoner(case, inventory).assess()
    hunted = {short_host(e.entity) for e in queries if e.kind == "host_activity"}
    if case.verdict != "benign":
        for host in assessment.candidate_hosts:
            if host not in hunted:
                pivot_gaps += 1
                gaps.append(Gap(check="entity_pivot", detail=f"host {host} is linked by logons but was not investigated",
                                hint=f"host:{host}"))
        for ip in assessment.candidate_ips:
            if not any(e.entity_type == "ip" and e.entity == ip and e.kind == "host_addresses" for e in queries):
                pivot_gaps += 1
                gaps.append(Gap(check="entity_pivot", detail=f"remote logon source {ip} was not resolved", hint=f"ip:{ip}"))
    if not pivot_gaps:
        passed.append("entity_pivot")

    # 3. the window around the alert was covered by host activity queries
    need = TimeRange(start=alert.timestamp - requirements.window_before, end=alert.timestamp + requirements.window_after)
    ranges = [e.time_range for e in queries if e.kind == "host_activity" and e.time_range
              and short_host(e.entity) == short_host(alert.primary_host)]
    if any(r.covers(need) for r in ranges):
        passed.append("window")
    else:
        gaps.append(Gap(check="window", detail=f"host activity does not cover {need.label()}", hint="host_activity"))

    # 4. every finding cites existing evidence
    ids = {e.id for e in evidence}
    unsupported = [f for f in case.findings if not f.evidence_ids or any(i not in ids for i in f.evidence_ids)]
    if unsupported:
        gaps.append(Gap(check="citations", detail=f"{len(unsupported)} finding(s) cite missing evidence"))
    else:
        passed.append("citations")

    # 5. no required evidence stands only as an error
    errored = []
    for item in evidence:
        if item.status == "error" and item.kind in required:
            recovered = any(e.kind == item.kind and e.entity == item.entity and e.status != "error" for e in evidence)
            if not recovered:
                errored.append(item)
    for item in errored:
        gaps.append(Gap(check="errors", detail=f"{item.kind} query for {item.entity} failed: {item.error}",
                        hint=f"retry:{item.kind}:{item.entity or ''}"))
    if not errored:
        passed.append("errors")

    # 6. the verdict agrees with the findings
    problem = verdict_problem(case, requirements, assessment.verdict)
    if problem:
        gaps.append(Gap(check="verdict", detail=problem))
    else:
        passed.append("verdict")

    grounds = Grounds(
        hosts=[short_host(h) for h in assessment.affected_hosts], users=list(assessment.affected_users),
        processes=[f"{p['host']}:{p['pid']}" for p in assessment.malicious_processes if p.get("host") and p.get("pid")],
        indicators=list(assessment.rare_external_ips))
    return VerificationReport(status="incomplete" if gaps else "complete", round=case.round, gaps=gaps, passed=passed,
                              grounds=grounds)


def verdict_problem(case: Case, requirements: EvidenceRequirements, deterministic: str | None = None) -> str | None:
    evidence = case.evidence_by_id()
    floor = CONFIDENCE_RANK.get(requirements.malicious_min_confidence, 2)
    if case.verdict == "malicious":
        if not any(f.kind == "malicious" and CONFIDENCE_RANK[f.confidence] >= floor for f in case.findings):
            return "verdict malicious without a high-confidence malicious finding"
        if deterministic == "benign":
            # the same rule as for closing: a verdict that leads to containment needs the evidence behind it
            return "the recorded evidence does not support malicious (it reads benign)"
    elif case.verdict == "benign":
        strong_bad = [f for f in case.findings if f.kind == "malicious" and CONFIDENCE_RANK[f.confidence] >= 1]
        if strong_bad:
            return "verdict benign contradicts malicious findings"
        benign = [f for f in case.findings if f.kind == "benign"
                  and any(evidence.get(i) and evidence[i].status == "ok" and evidence[i].kind in
                          {"prevalence", "process_lineage", "process_activity", "alert_events", "asset_context"} for i in f.evidence_ids)]
        if not benign:
            return "verdict benign without benign evidence (lineage, prevalence or known software)"
        if deterministic is not None and deterministic != "benign":
            # Whoever wrote the verdict, closing needs the recorded evidence itself to justify it.
            return f"the recorded evidence does not justify closing as benign (it reads {deterministic})"
    elif case.verdict == "inconclusive":
        return "no verdict reached"
    return None


def tighten(report: VerificationReport, concerns: list[str]) -> VerificationReport:
    """A model's concerns are kept; they can turn complete into incomplete, never the reverse."""
    report.concerns = [c[:500] for c in concerns if c.strip()]
    return report
