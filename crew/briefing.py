"""What each stage's task tells its agent about the case: the brief, fenced.

A model running a stage sees only its task text and its tools' results. So every stage gets the whole
case as the earlier stages left it: the alert, its entities, the verdict and scope so far, the findings
with the evidence ids they cite, the evidence on record (id, kind, what it was about, how many rows,
which hosts, accounts and addresses its rows name), the verifier's gaps and, for the verifier, its
deterministic checks. All of it came from logs, alerts or earlier model answers, so all of it is one
JSON payload inside a nonce fence (crew/fencing.py); only the case id, which the code made, and the
stage's instructions stand outside.
"""

from __future__ import annotations

from typing import Any

from siemcrew.crew.fencing import fenced
from siemcrew.crew.models import Case
from siemcrew.crew.targets import named
from siemcrew.crew.timeutil import iso

MAX_FINDINGS = 40
MAX_EVIDENCE = 120
MAX_NAMES = 6
TEXT = 400


def _cut(text: str | None, size: int = TEXT) -> str:
    text = text or ""
    return text if len(text) <= size else text[:size] + "…"


def _names(item: Any) -> dict[str, list[str]]:
    return {kind: sorted(values)[:MAX_NAMES] for kind, values in named(item).items() if kind != "pid" and values}


def case_record(case: Case) -> dict[str, Any]:
    """The case as a stage needs it (bounded: long texts cut, the latest findings and evidence kept)."""
    alert = case.alert
    process = alert.process.model_dump(exclude_none=True) if alert.process else {}
    record: dict[str, Any] = {
        "alert": {"id": alert.id, "rule_name": alert.rule_name, "severity": alert.severity,
                  "techniques": alert.techniques, "tactics": alert.tactics, "host": alert.primary_host,
                  "time": iso(alert.timestamp), "description": _cut(alert.description),
                  "process": {k: _cut(str(v)) for k, v in process.items()}},
        "entities": {kind: values[:20] for kind, values in alert.entities.model_dump().items() if values},
        "case": {"round": case.round, "verdict": case.verdict, "confidence": case.confidence,
                 "summary": _cut(case.summary, 800), "affected_hosts": case.affected_hosts,
                 "affected_users": case.affected_users},
        "findings": [{"id": f.id, "agent": f.agent, "kind": f.kind, "confidence": f.confidence,
                      "statement": _cut(f.statement), "evidence_ids": f.evidence_ids}
                     for f in case.findings[-MAX_FINDINGS:]],
        "evidence": [{"id": e.id, "kind": e.kind, "entity_type": e.entity_type, "entity": e.entity,
                      "status": e.status, "count": e.count, "names": _names(e)}
                     for e in case.evidence[-MAX_EVIDENCE:]],
    }
    if case.impact is not None:
        record["impact"] = {"severity": case.impact.severity, "critical_assets": case.impact.critical_assets}
    report = case.verification
    if report is not None:
        record["verification"] = {"status": report.status, "round": report.round, "passed": report.passed,
                                  "concerns": [_cut(c) for c in report.concerns]}
        record["gaps"] = [{"check": g.check, "detail": _cut(g.detail), "hint": _cut(g.hint)} for g in report.gaps]
    return record


def brief(case: Case) -> str:
    """The fenced case record, as it goes into a task's description."""
    return "\n".join(["Case record (data from logs, alerts and earlier answers):", *fenced(case_record(case))])
