"""What the case page shows, gathered once: the case, its pending approvals, its audit trail and the
deep links, turned into plain rows the template prints (and escapes). The served page and the
self-contained HTML report are both rendered from this view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from siemcrew.crew.models import ActionProposal, ActionResult, Approval, Case, Evidence, PolicyDecision
from siemcrew.web.deeplinks import LinkTargets, SiemLink, links_for
from siemcrew.web.graph import Graph, build_graph
from siemcrew.web.timeline import TimelineRow, build_timeline
from siemcrew.web.tree import TreeLayout, layout_tree

MAX_AUDIT = 500


@dataclass
class EvidenceView:
    item: Evidence
    rows: list[str]
    links: list[SiemLink]
    cited_by: list[str]


@dataclass
class ProposalView:
    proposal: ActionProposal
    args_json: str
    sha256: str
    decision: PolicyDecision | None
    result: ActionResult | None
    approvals: list[Approval]
    pending: Any = None  # the PendingApproval waiting for a human, if any


@dataclass
class AuditRow:
    seq: int
    ts: str
    kind: str
    actor: str
    data: str


@dataclass
class CaseView:
    case: Case
    timeline: list[TimelineRow]
    timeline_dropped: int
    tree: TreeLayout
    graph: Graph
    evidence: list[EvidenceView]
    proposals: list[ProposalView]
    orphan_pending: list[Any]
    audit: list[AuditRow]
    audit_dropped: int
    generated: datetime
    known_ids: set[str] = field(default_factory=set)

    @property
    def pending_count(self) -> int:
        return sum(1 for p in self.proposals if p.pending is not None) + len(self.orphan_pending)


def _row_text(row: dict[str, Any]) -> str:
    """A sample row as one line of JSON (orjson: a 200-item case has 4 000 of them)."""
    return orjson.dumps(row, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=str).decode()


def _chain(case: Case) -> Any:
    """The alert's chain, rebuilt as the verdict read it; a case without chain evidence has none."""
    from siemcrew.crew.chain import CHAIN_KINDS, build

    if not case.alerts or not any(e.kind in CHAIN_KINDS for e in case.evidence):
        return None
    return build(case)


def build_view(case: Case, pending: list[Any], audit: list[Any], targets: LinkTargets,
               now: datetime, decisions: list[Approval] | None = None) -> CaseView:
    """`decisions`: the approval store's, newer than the case's copy while other decisions are awaited."""
    chain = _chain(case)
    timeline, dropped = build_timeline(case, chain)
    cited: dict[str, list[str]] = {}
    for finding in case.findings:
        for evidence_id in finding.evidence_ids:
            cited.setdefault(evidence_id, []).append(finding.id or finding.statement[:40])
    evidence = [EvidenceView(item, [_row_text(r) for r in item.sample], links_for(item, targets), cited.get(item.id, []))
                for item in case.evidence]
    policy = {(d.action, d.target, d.args_sha256): d for d in case.decisions}
    results = {(r.action, r.target): r for r in case.results}
    waiting = {(p.action, p.target): p for p in pending}
    proposals: list[ProposalView] = []
    for proposal in case.proposals:
        sha = proposal.args_sha256
        request = waiting.get((proposal.action, proposal.target))
        if request is not None and request.args_sha256 == sha:
            del waiting[(proposal.action, proposal.target)]
        proposals.append(ProposalView(
            proposal=proposal, args_json=json.dumps(proposal.args, sort_keys=True, ensure_ascii=False), sha256=sha,
            decision=policy.get((proposal.action, proposal.target, sha)),
            result=results.get((proposal.action, proposal.target)),
            approvals=[a for a in (case.approvals if decisions is None else decisions)
                       if (a.action, a.target) == (proposal.action, proposal.target)],
            pending=request if request is not None and request.args_sha256 == sha else None))
    audit_rows = [AuditRow(r.seq, r.ts, r.kind, r.actor, json.dumps(r.data, ensure_ascii=False, default=str,
                                                                      sort_keys=True)[:600]) for r in audit]
    return CaseView(case=case, timeline=timeline, timeline_dropped=dropped, tree=layout_tree(chain),
                    graph=build_graph(case) if case.alerts else Graph(), evidence=evidence, proposals=proposals,
                    orphan_pending=list(waiting.values()), audit=audit_rows[-MAX_AUDIT:],
                    audit_dropped=max(len(audit_rows) - MAX_AUDIT, 0), generated=now,
                    known_ids={e.id for e in case.evidence})
