"""The per-case context that tools, brains and gates share while a flow runs.

It holds the case (the flow state), the connectors and the audit log. Tools append Evidence here
under a lock because crewAI runs flow steps and tool calls in worker threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from siemcrew.crew.models import Case, Evidence, Finding, TimeRange
from siemcrew.crew.reasoning import effective_techniques

if TYPE_CHECKING:
    from siemcrew.crew.runtime import Runtime


@dataclass
class InvestigationContext:
    case: Case
    runtime: "Runtime"
    agent: str = "system"
    gaps: list[str] = field(default_factory=list)
    lock: threading.RLock = field(default_factory=threading.RLock)
    # set by the model brain when this stage's model failed or the case's budget ran out; the flow then
    # stops the stage and escalates the case, whatever crewAI made of the error
    halted: BaseException | None = None

    # -- convenience -----------------------------------------------------------------------
    @property
    def alert(self):  # noqa: ANN201 - the Alert model
        return self.case.alert

    @property
    def scope(self) -> str | None:
        return self.case.alert.scope

    def window(self, before_minutes: int | None = None, after_minutes: int | None = None) -> TimeRange:
        cfg = self.runtime.settings.investigation
        before = before_minutes if before_minutes is not None else cfg.window_before_minutes
        after = after_minutes if after_minutes is not None else cfg.window_after_minutes
        moment = self.case.alert.timestamp
        return TimeRange(start=moment - timedelta(minutes=before), end=moment + timedelta(minutes=after))

    # -- recording -------------------------------------------------------------------------
    def add_evidence(self, item: Evidence) -> Evidence:
        """Seal and append; the same query result recorded twice keeps one id (content hash)."""
        item.round = self.case.round
        item.agent = item.agent or self.agent
        item.seal()
        with self.lock:
            if item.id not in {e.id for e in self.case.evidence}:
                self.case.evidence.append(item)
                self.case.queries += 1 if item.language not in ("lookup",) else 0
        return item

    def evidence(self, kind: str | None = None, entity: str | None = None, this_round: bool = False) -> list[Evidence]:
        with self.lock:
            items = list(self.case.evidence)
        out = []
        for item in items:
            if kind and item.kind != kind:
                continue
            if entity and (item.entity or "").lower() != entity.lower():
                continue
            if this_round and item.round != self.case.round:
                continue
            out.append(item)
        return out

    def accept_findings(self, findings: list[Finding], agent: str) -> list[Finding]:
        """Keep findings whose every cited id is evidence on record; a finding citing nothing, or any id
        that does not exist, is rejected whole, counted and audited (never trusted in part). The code
        fills what a model is not asked for: the id, the agent, the technique (the alert's, or what its
        events show, for a malicious or suspicious claim)."""
        known = {e.id for e in self.case.evidence}
        kept: list[Finding] = []
        techniques: list[str] | None = None
        for index, finding in enumerate(findings):
            finding.agent = agent
            if not finding.evidence_ids or any(eid not in known for eid in finding.evidence_ids):
                self.case.unsupported_findings += 1
                self.audit("finding_rejected", {"statement": finding.statement[:300], "cited": finding.evidence_ids[:20],
                                                "unknown": [e for e in finding.evidence_ids if e not in known][:20]})
                continue
            finding.evidence_ids = list(dict.fromkeys(finding.evidence_ids))
            finding.id = f"f-{agent}-{self.case.round}-{len(self.case.findings) + index}"
            if finding.kind in ("malicious", "suspicious"):
                techniques = effective_techniques(self.case) if techniques is None else techniques
                finding.technique = techniques[0] if techniques else None
            else:
                finding.technique = None
            kept.append(finding)
        with self.lock:
            existing = {(f.statement, tuple(f.evidence_ids)) for f in self.case.findings}
            for finding in kept:
                if (finding.statement, tuple(finding.evidence_ids)) not in existing:
                    self.case.findings.append(finding)
        return kept

    def audit(self, kind: str, data: dict[str, Any], actor: str | None = None) -> None:
        self.runtime.audit.append(kind, actor or self.agent, data, case_id=self.case.id)
