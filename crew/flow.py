"""InvestigationFlow: the persisted crewAI Flow that carries one case from triage to report.

triage ─ benign with evidence → close
   └─ hunt → impact → verify ─ complete → respond ─ gate ─ approval needed → await (paused,
                              │                        │     persisted; resumed by approve/deny
                              │                        │     in any process) → act
                              │                        └─ otherwise → act
                              ├─ incomplete, rounds left → hunt again (told the gaps)
                              └─ incomplete, no rounds left → escalate (no disruptive proposals)

A stage run on a model that fails or runs out of budget raises `ModelHalted`; `operations` escalates the
case to a human with what it holds. Stages record themselves in `case.stages_done` once their output is
on the case, so a flow run again on the case (after a crash, or `siemcrew rerun` after a halt) takes
them as done and continues with the first stage that did not finish.
"""

from __future__ import annotations

from typing import Any, ClassVar

import siemcrew.crew.offline as offline
from crewai.flow import human_feedback
from crewai.flow.async_feedback.types import HumanFeedbackPending
from crewai.flow.flow import Flow, FlowState, listen, or_, router, start
from crewai.flow.persistence import persist
from pydantic import PrivateAttr

from siemcrew.crew.brains.llm import BudgetedLLM, ModelHalted
from siemcrew.crew.briefing import brief
from siemcrew.crew.context import InvestigationContext
from siemcrew.crew.faults import fault_point
from siemcrew.crew.indicators import short_host
from siemcrew.crew.models import ActionProposal, Case
from siemcrew.crew.policy import VERDICT_RANK
from siemcrew.crew.targets import names, valid
from siemcrew.crew.verifier import tighten, verify

offline.quiet()


class CaseState(FlowState):
    case: Case | None = None


class ApprovalProvider:
    """Pauses the flow: the decision arrives later, from `siemcrew approve|deny` or HTTP."""

    def request_feedback(self, context: Any, flow: Any) -> Any:
        raise HumanFeedbackPending(context=context, callback_info={"case_id": flow.state.case.id})


@persist()
class InvestigationFlow(Flow[CaseState]):
    _runtime: Any = PrivateAttr(default=None)
    # crewAI would create a vector memory (and an embedder) per flow; cases keep their own record.
    _skip_auto_memory: ClassVar[bool] = True

    # -- helpers -----------------------------------------------------------------------------
    @property
    def case(self) -> Case:
        assert self.state.case is not None
        return self.state.case

    def _ctx(self, agent: str) -> InvestigationContext:
        gaps = [g.hint or g.check for g in (self.case.verification.gaps if self.case.verification else [])]
        return InvestigationContext(case=self.case, runtime=self._runtime, agent=agent, gaps=gaps)

    def _inputs(self) -> dict[str, Any]:
        """What a stage's task is told: the case id (made by the code) and round outside, everything
        else in the fenced case record (crew/briefing.py)."""
        return {"case_id": self.case.id, "round": self.case.round, "brief": brief(self.case)}

    def _scope(self, stage: str, hosts: list[str], users: list[str]) -> tuple[list[str], list[str]]:
        """The hosts and accounts a stage names that the case may hold in scope: well-formed names that
        some evidence of the case shows in a host or account field. The others are dropped and audited,
        so no name made up or read from an instruction in a log becomes a target."""
        evidence = list(self.case.evidence)
        alert_hosts = {short_host(h) for h in self.case.alert.entities.hosts}
        kept_hosts, kept_users, dropped = [], [], []
        for host in hosts:
            if valid("host", host) and (short_host(host) in alert_hosts or any(names(e, "host", host) for e in evidence)):
                kept_hosts.append(short_host(host))
            else:
                dropped.append(f"host {host[:80]!r}")
        for user in users:
            if valid("user", user) and any(names(e, "user", user) for e in evidence):
                kept_users.append(user)
            else:
                dropped.append(f"user {user[:80]!r}")
        if dropped:
            self._runtime.audit.append("scope_rejected", stage, {"dropped": dropped[:20]}, case_id=self.case.id)
            self.case.note("flow", "scope_rejected", f"{stage}: {len(dropped)} name(s) no evidence shows")
        return list(dict.fromkeys(kept_hosts)), list(dict.fromkeys(kept_users))

    def _run(self, role: str) -> Any:
        rt = self._runtime
        ctx = self._ctx(role)
        brain = rt.brain(role, ctx)
        ctx.audit("stage", {"stage": role, "round": self.case.round, "brain": type(brain).__name__})
        fault_point(f"stage:{role}")
        try:
            output = rt.crews.run(role, ctx, brain, self._inputs())
        except Exception as exc:
            if isinstance(brain, BudgetedLLM) or ctx.halted is not None:
                # the model's failure, whatever crewAI made of it (an empty answer is a ValueError,
                # an unusable one a conversion error): the case goes to a human, it is not `failed`
                raise ModelHalted.of(role, exc, ctx.halted) from exc
            raise
        if ctx.halted is not None:  # crewAI swallowed it (the converter) and produced something anyway
            raise ModelHalted.of(role, None, ctx.halted)
        findings = getattr(output, "findings", None)
        if findings is not None:
            output.findings = ctx.accept_findings(list(findings), role)
        return output

    def _done(self, stage: str) -> bool:
        """The stage's output is on the case already (a flow run again after a crash or a halt)."""
        if stage in self.case.stages_done:
            self.case.note("flow", "stage_kept", stage)
            return True
        return False

    def _finished(self, stage: str) -> None:
        if stage not in self.case.stages_done:
            self.case.stages_done.append(stage)

    def _save(self, event: str, detail: str = "") -> None:
        self.case.note("flow", event, detail)
        self._runtime.cases.save(self.case)

    def _check(self) -> Any:
        rt = self._runtime
        report = verify(self.case, rt.requirements, rt.inventory)
        self.case.verifications.append(report)
        rt.audit.append("verifier", "verifier", report.model_dump(mode="json"), case_id=self.case.id)
        return report

    # -- steps -------------------------------------------------------------------------------
    @start()
    def triage(self) -> str:
        case = self.case
        case.flow_id = self.state.id
        case.status = "investigating"
        if self._done("triage") and case.triage is not None:
            out = case.triage
        else:
            out = self._run("triage")
            case.triage = out
        case.verdict, case.confidence, case.summary = out.verdict, out.confidence, out.summary
        hosts = [h for h in case.alert.entities.hosts[:1] if valid("host", h)]
        case.affected_hosts = [] if out.verdict == "benign" else [short_host(h) for h in hosts]
        self._finished("triage")
        self._save("triaged", f"{out.verdict} ({out.confidence})")
        return out.verdict

    @router(triage)
    def after_triage(self) -> str:
        if self.case.verdict == "benign":
            report = self._check()
            if report.status == "complete":
                return "close_case"
        return "start_hunt"

    @listen(or_("start_hunt", "hunt_again"))
    def hunt(self) -> None:
        stage = f"hunter@{self.case.round}"
        if self._done(stage):
            return
        out = self._run("hunter")
        out.affected_hosts, out.affected_users = self._scope(stage, out.affected_hosts, out.affected_users)
        self.case.hunts.append(out)
        self._finished(stage)
        self._save("hunted", f"round {self.case.round}: {len(out.findings)} finding(s)")

    @listen(hunt)
    def impact(self) -> None:
        case = self.case
        stage = f"impact@{case.round}"
        if self._done(stage) and case.impact is not None:
            out = case.impact
        else:
            out = self._run("impact")
            out.affected_hosts, out.affected_users = self._scope(stage, out.affected_hosts, out.affected_users)
        case.impact = out
        self._assess(out)
        self._finished(stage)
        self._save("assessed", f"{out.verdict} ({out.confidence}), hosts {case.affected_hosts}")

    def _assess(self, out: Any) -> None:
        """The impact stage adds to the case; it never erases what earlier stages established. Its verdict
        stands when it is as grave as the case's, or when findings of its own (accepted: citing evidence
        that exists) back the lower one; a benign verdict needs a benign finding. The scope is what the
        earlier stages and the hunts showed plus what impact adds; only a backed benign verdict clears it."""
        case = self.case
        lower = VERDICT_RANK[out.verdict] < VERDICT_RANK[case.verdict]
        backed = bool(out.findings) and (out.verdict != "benign" or any(f.kind == "benign" for f in out.findings))
        if lower and not backed:
            case.note("flow", "impact_verdict_kept", f"{case.verdict} kept: impact said {out.verdict} citing no evidence")
            self._runtime.audit.append("impact_verdict_kept", "impact", {"kept": case.verdict, "proposed": out.verdict},
                                       case_id=case.id)
        else:
            case.verdict, case.confidence = out.verdict, out.confidence
        case.summary = out.summary or case.summary
        if case.verdict == "benign":
            case.affected_hosts, case.affected_users = [], []
            return
        hunted_hosts = [h for hunt in case.hunts for h in hunt.affected_hosts]
        hunted_users = [u for hunt in case.hunts for u in hunt.affected_users]
        case.affected_hosts = list(dict.fromkeys(short_host(h) for h in [*out.affected_hosts, *case.affected_hosts, *hunted_hosts]))
        case.affected_users = list(dict.fromkeys([*out.affected_users, *case.affected_users, *hunted_users]))

    @listen(impact)
    def verify_evidence(self) -> None:
        stage = f"verifier@{self.case.round}"
        if self._done(stage):
            return
        report = self._check()
        out = self._run("verifier")
        extra = [c for c in getattr(out, "concerns", [])]
        if getattr(out, "status", "complete") == "incomplete" and report.status == "complete":
            extra.append("the verifier agent judged the evidence incomplete")
            report.status = "incomplete"
        tighten(report, extra)
        self._finished(stage)
        self._save("verified", f"{report.status}: {len(report.gaps)} gap(s)")

    @router(verify_evidence)
    def after_verify(self) -> str:
        report = self.case.verification
        if report and report.status == "complete":
            return "close_case" if self.case.verdict == "benign" else "respond_case"
        if self.case.round < self._runtime.settings.investigation.max_extra_rounds:
            self.case.round += 1
            return "hunt_again"
        return "escalate_case"

    @listen("close_case")
    def close(self) -> None:
        case = self.case
        cite = [i for f in case.findings if f.kind == "benign" for i in f.evidence_ids][:5]
        case.proposals = [ActionProposal(action="close_alert", target=case.alert.id,
                                         args={"verdict": "benign", "reason": case.summary[:300]},
                                         reason="benign with evidence", evidence_ids=cite, proposed_by="flow")]

    @listen("escalate_case")
    def escalate(self) -> None:
        case = self.case
        gaps = "; ".join(g.detail for g in case.verification.gaps) if case.verification else ""
        if case.verdict == "benign":
            case.verdict, case.confidence = "inconclusive", "low"  # an unverified benign claim is no verdict
        elif case.verdict == "malicious" and any(g.check == "verdict" for g in (case.verification.gaps if case.verification else [])):
            case.verdict = "suspicious"  # a malicious claim the recorded evidence does not support is not written back as one
        case.summary = f"{case.summary} | evidence incomplete after {case.round + 1} round(s): {gaps}"[:2000]
        case.proposals = [
            ActionProposal(action="update_alert", target=case.alert.id, args={"status": "escalated", "verdict": case.verdict},
                           reason="evidence incomplete; a human must decide", proposed_by="flow"),
            ActionProposal(action="escalate", target=case.id, args={"severity": "medium"},
                           reason="evidence incomplete after the bounded hunt", proposed_by="flow"),
        ]

    @listen("respond_case")
    def respond(self) -> None:
        if self._done("responder"):
            return
        out = self._run("responder")
        self.case.proposals = self._proposals(list(out.proposals))
        self._finished("responder")

    def _proposals(self, proposals: list[ActionProposal]) -> list[ActionProposal]:
        """The responder's proposals as the gate and an approver see them: proposed by the responder, and
        when a model wrote them, a reason the code states (the model's own words are audited, never shown
        to an approver as the reason to act). The policy then checks targets, arguments and evidence."""
        case = self.case
        model = self._runtime.settings.llm is not None and "responder" in self._runtime.settings.llm.roles
        # one proposal per action and account/host however it is spelled (the first; a decision is kept per key)
        proposals = self._runtime.policy.one_per_target(proposals)
        for proposal in proposals:
            proposal.proposed_by = "responder"
            if model:
                self._runtime.audit.append("proposal_reason", "responder", {
                    "action": proposal.action[:40], "target": proposal.target[:200], "reason": proposal.reason[:500]},
                    case_id=case.id)
                cites = ", ".join(proposal.evidence_ids[:5]) or "no evidence"
                proposal.reason = f"proposed by the responder model for a {case.verdict} ({case.confidence}) case; cites {cites}"
        return proposals

    @router(or_(close, escalate, respond))
    def gate(self) -> str:
        pending = self._runtime.gate(self.case)
        self._save("gated", f"{len(self.case.proposals)} proposal(s), {pending} awaiting approval")
        if pending:
            self._runtime.act(self.case, auto_only=True)
        return "need_approval" if pending else "execute"

    @listen("need_approval")
    @human_feedback(message="siemcrew: approval required", provider=ApprovalProvider())
    def await_approval(self) -> dict[str, Any]:
        self.case.status = "awaiting_approval"
        self._save("awaiting_approval", ", ".join(f"{p.action}:{p.target}" for p in self.case.proposals))
        return {"case_id": self.case.id}

    @router(await_approval)
    def after_approval(self) -> str:
        return "execute"

    @listen("execute")
    def act(self) -> str:
        self._runtime.act(self.case)
        self._save("done", f"{self.case.status}: {self.case.verdict}")
        return self.case.status
