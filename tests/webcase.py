"""A case whose every log-derived field is an attack on the page (script tags, event handlers, `javascript:`
URLs, tags that end the element they sit in), for the escaping tests in the client and in Chromium."""

from __future__ import annotations

import re
from typing import Any

from siemcrew.crew.models import (ActionProposal, Alert, Entities, Evidence, Finding, PolicyDecision, ProcessRef,
                                  TimelineEntry, VerificationReport, Gap)
from siemcrew.crew.timeutil import parse_time

PAYLOADS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=2">',
    '"><svg onload="window.__xss=3">',
    "javascript:window.__xss=4",
    "</textarea><script>window.__xss=5</script>",
    "' onmouseover='window.__xss=6' x='",
    "</title><script>window.__xss=7</script>",
    "]]><script>window.__xss=8</script>",
    '<a href="javascript:window.__xss=9">click me</a>',
    "</code></pre><iframe srcdoc='<script>parent.__xss=10</script>'></iframe>",
    '<form action="https://evil.example/"><button>go</button></form>',
]
EVIL = " ".join(PAYLOADS)
EVIL_HOST = '<img src=x onerror="window.__xss=11">'
EVIL_USER = '"><svg onload="window.__xss=12">'
MARKERS = re.compile(r"<script>window|onerror=\"window|onload=\"window|<iframe|<form action=\"https://evil|"
                     r"href=\"javascript:|<img src=x|<svg onload")


def _rows(n: int) -> list[dict[str, Any]]:
    base = {"host.hostname": EVIL_HOST, "user.domain": "EVIL", "user.name": EVIL_USER}
    return [
        {**base, "@timestamp": f"2026-11-19T14:0{n}:00Z", "event.code": "1", "process.pid": 100 + n,
         "process.entity_id": f"{{guid-{n}}}", "process.parent.entity_id": f"{{guid-{n - 1}}}" if n else None,
         "process.executable": f"C:\\x\\{PAYLOADS[n % len(PAYLOADS)]}.exe", "process.command_line": EVIL,
         "url.original": "javascript:window.__xss=13", "source.ip": "10.0.0.7"}
        for n in range(3)
    ]


def xss_case(rt: Any) -> Any:
    """Admit and store the case; ask for one approval whose target and arguments carry payloads too."""
    alert = Alert(id="xss-1", rule_name=EVIL, description=EVIL, timestamp=parse_time("2026-11-19T14:02:00Z"),
                  entities=Entities(hosts=[EVIL_HOST], users=[EVIL_USER], ips=["10.0.0.7"]),
                  process=ProcessRef(entity_id="{guid-2}", pid=102, executable=EVIL, command_line=EVIL),
                  link="javascript:window.__xss=14", event={"message": EVIL})
    case, _ = rt.cases.admit(alert)
    events = Evidence(kind="alert_events", entity_type="host", entity=EVIL_HOST, connector="local", language="sql",
                      query=f"SELECT * FROM events WHERE x = '{EVIL}'", status="ok", count=3, sample=_rows(3)).seal()
    lineage = Evidence(kind="process_lineage", entity_type="process", entity=EVIL, connector="splunk", language="spl",
                       query=f"search {EVIL}", status="ok", count=3, sample=_rows(3)).seal()
    failed = Evidence(kind="host_activity", entity_type="host", entity=EVIL_HOST, connector="elastic", language="esql",
                      query=f"FROM logs-* | WHERE x == \"{EVIL}\"", status="error", error=EVIL).seal()
    case.evidence = [events, lineage, failed]
    case.verdict, case.confidence, case.summary = "malicious", "high", EVIL
    case.affected_hosts, case.affected_users = [EVIL_HOST], [EVIL_USER]
    case.findings = [Finding(id="f1", agent="triage", kind="malicious", confidence="high", statement=EVIL,
                             evidence_ids=[events.id], entities=[EVIL_HOST])]
    case.verifications = [VerificationReport(status="incomplete", gaps=[Gap(check="x", detail=EVIL, hint=EVIL)],
                                             concerns=[EVIL])]
    proposal = ActionProposal(action="isolate_host", target="WS-XSS", args={"host": "WS-XSS", "note": EVIL},
                              reason=EVIL, evidence_ids=[events.id])
    case.proposals = [proposal]
    decision = PolicyDecision(action=proposal.action, target=proposal.target, args_sha256=proposal.args_sha256,
                              outcome="approval_required", reasons=[EVIL])
    case.decisions = [decision]
    case.timeline.append(TimelineEntry(actor=EVIL, event=EVIL, detail=EVIL))
    case.status = "awaiting_approval"
    rt.approvals.request(case.id, proposal, decision)
    rt.audit.append("note", EVIL, {"detail": EVIL}, case_id=case.id)
    rt.cases.save(case)
    return case
