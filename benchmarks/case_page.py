"""Benchmark: server-side render time of a case page with 200 evidence items (issue #14 asks < 300 ms).

A synthetic malicious case: 200 evidence items of 20 sample rows each (a process chain of 40 processes,
logons from another host, connections), 30 findings, 3 verifier rounds, 12 proposals of which 4 wait for
a decision, and 400 audit records. Measures `web.render.case_page` (view building: chain, timeline, tree,
graph, deep links; then the template) as an approver sees it, and the self-contained report.
Writes benchmarks/results/case_page.json.

    python benchmarks/case_page.py [--evidence 200] [--rounds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "case_page.json"


def synthetic_case(evidence_items: int) -> tuple[Any, list[Any], list[Any]]:
    from siemcrew.crew.approvals import PendingApproval
    from siemcrew.crew.audit import AuditRecord
    from siemcrew.crew.models import (ActionProposal, Alert, Case, Entities, Evidence, Finding, PolicyDecision,
                                      ProcessRef, TimeRange, VerificationReport)
    from siemcrew.crew.timeutil import iso, utcnow

    t0 = utcnow() - timedelta(hours=2)
    window = TimeRange(start=t0 - timedelta(hours=1), end=t0 + timedelta(hours=1))
    alert = Alert(id="bench-1", rule_name="Synthetic chain", timestamp=t0, entities=Entities(hosts=["WS-01"], users=["CORP\\eve"]),
                  process=ProcessRef(entity_id="{p-39}", pid=1039, executable="C:\\x\\p39.exe"))
    kinds = ["alert_events", "process_lineage", "process_activity", "logon_session", "remote_execution",
             "host_activity", "network_connections", "logon_activity", "prevalence", "persistence_check"]
    evidence = []
    for n in range(evidence_items):
        rows = []
        for r in range(20):
            p = (n * 20 + r) % 40
            rows.append({"@timestamp": iso(t0 + timedelta(seconds=n * 20 + r)), "host.hostname": "WS-01" if p % 7 else "SRV-02",
                         "event.code": ["1", "3", "4624", "11", "13"][r % 5], "user.domain": "CORP", "user.name": f"user{p % 5}",
                         "process.pid": 1000 + p, "process.entity_id": f"{{p-{p}}}", "process.parent.entity_id": f"{{p-{p - 1}}}",
                         "process.executable": f"C:\\x\\p{p}.exe", "process.command_line": f"C:\\x\\p{p}.exe --arg {n} {r} " + "x" * 80,
                         "source.ip": f"10.0.0.{p % 9 + 1}", "destination.ip": f"203.0.113.{r}", "destination.port": 443,
                         "network.direction": "outbound", "logon.type": "3", "file.path": f"C:\\tmp\\f{n}-{r}.bin"})
        evidence.append(Evidence(kind=kinds[n % len(kinds)], entity_type="host", entity="WS-01", connector="splunk",
                                 language="spl", query=f"search index=win host=WS-01 EventCode=* | head {n}", time_range=window,
                                 count=20 + n, sample=rows, truncated=True, status="ok", tool="t", agent="hunter").seal())
    ids = [e.id for e in evidence]
    findings = [Finding(id=f"f{n}", agent="hunter", kind="malicious", statement=f"finding {n}", evidence_ids=ids[n:n + 3])
                for n in range(30)]
    proposals = [ActionProposal(action="isolate_host" if n % 3 else "kill_process", target=f"WS-{n:02d}",
                                args={"host": f"WS-{n:02d}"}, reason="r", evidence_ids=ids[:2]) for n in range(12)]
    decisions = [PolicyDecision(action=p.action, target=p.target, args_sha256=p.args_sha256,
                                outcome="approval_required" if n < 4 else "auto") for n, p in enumerate(proposals)]
    case = Case(id="case-bench", status="awaiting_approval", verdict="malicious", confidence="high", summary="s" * 400,
                alerts=[alert], evidence=evidence, findings=findings, proposals=proposals, decisions=decisions,
                verifications=[VerificationReport(status="incomplete" if n < 2 else "complete", round=n) for n in range(3)],
                affected_hosts=["WS-01", "SRV-02"], affected_users=["CORP\\user1"])
    pending = [PendingApproval(id=n, case_id=case.id, action=p.action, target=p.target, args=p.args,
                               args_sha256=p.args_sha256, requested_at=t0) for n, p in enumerate(proposals[:4])]
    audit = [AuditRecord(seq=n, ts=iso(t0), kind="tool_call", actor="hunter", case_id=case.id,
                         data={"tool": "search", "n": n, "query": "q" * 100}, prev="0" * 64, hash="0" * 64)
             for n in range(400)]
    return case, pending, audit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evidence", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    from siemcrew.web.deeplinks import LinkTargets
    from siemcrew.web.render import case_page, report_html
    from siemcrew.web.session import Person

    case, pending, audit = synthetic_case(args.evidence)
    targets = LinkTargets(splunk_web="https://splunk.example.com:8000")
    person = Person("alice", "approver")
    case_page(case, pending, audit, targets, person=person, csrf="x")  # warm: templates compiled, knowledge loaded
    page, report = [], []
    for _ in range(args.rounds):
        started = time.perf_counter()
        html = case_page(case, pending, audit, targets, person=person, csrf="x")
        page.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        report_html(case, SimpleNamespace(splunk={"web_url": "https://splunk.example.com:8000"}, elastic=None), audit, pending)
        report.append((time.perf_counter() - started) * 1000)
    result = {"machine": {"cpus": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2)},
              "evidence_items": args.evidence, "sample_rows": sum(len(e.sample) for e in case.evidence),
              "rounds": args.rounds, "html_bytes": len(html),
              "case_page_ms": {"median": round(statistics.median(page), 1), "p90": round(sorted(page)[int(len(page) * 0.9) - 1], 1),
                               "min": round(min(page), 1)},
              "report_ms": {"median": round(statistics.median(report), 1), "min": round(min(report), 1)}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
