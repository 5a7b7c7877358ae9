"""The operations the CLI and the HTTP service share: investigate, resume, decide, run (cron).

Each is idempotent: an alert id seen before returns its case; a case already finished is not
investigated again; a paused case waits for its decisions; a crashed case is resumed from its
last persisted step, and the action ledger makes sure nothing is executed twice.

A case whose model failed or whose LLM budget ran out is not a crash: it is escalated to a human at
once (`halt_case`) with what it gathered, written back like any escalated case, and never retried
automatically; `rerun` continues it when a person asks (after raising the budget, or once the model
is back).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from contextlib import contextmanager

from siemcrew.crew.approvals import ApprovalError
from siemcrew.crew.models import ActionProposal, Alert, Approval, Case, Halt
from siemcrew.crew.outbox import BACKOFF_S, OutboxItem
from siemcrew.crew.runtime import Runtime, final_status
from siemcrew.crew.sqldialect import LockBusy

FINISHED = ("closed", "escalated")
MAX_ATTEMPTS = 3  # a case whose flow crashed is tried again, this many times in all


def retryable(case: Case) -> bool:
    failures = sum(1 for t in case.timeline if t.event == "failed")
    return case.status in ("new", "investigating") or (case.status == "failed" and failures < MAX_ATTEMPTS)


class RerunError(RuntimeError):
    """The case cannot be rerun (it was not halted by its model or budget, or the budget was not raised)."""


HALT_LABEL = {"model_unavailable": "model unavailable", "budget_exhausted": "LLM budget exhausted"}
# the SIEM write-backs of a halt; a rerun supersedes their ledger entries so that its outcome is written too
HALT_WRITE_BACKS = ("update_alert", "escalate")


@dataclass
class RunSummary:
    fetched: int = 0
    investigated: int = 0
    skipped_known: int = 0
    failed: int = 0
    halted: int = 0  # escalated because the model failed or the LLM budget ran out
    awaiting_approval: int = 0
    enqueued: int = 0  # with a task queue: cases handed to the workers (investigations and resumes)
    verdicts: dict[str, int] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rejected_inputs: list[str] = field(default_factory=list)  # alert inputs that could not be read
    writeback_pending: list[str] = field(default_factory=list)  # write-backs still in the outbox
    containment_unconfirmed: list[str] = field(default_factory=list)  # endpoint actions the vendor has not confirmed
    checkpoint: str | None = None

    @property
    def incomplete(self) -> bool:
        """Something needs an operator: an alert failed, an input was unreadable or a write-back is pending."""
        return bool(self.failed or self.rejected_inputs or self.writeback_pending or self.containment_unconfirmed)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _flow(rt: Runtime) -> Any:
    from siemcrew.crew.flow import InvestigationFlow

    return InvestigationFlow


def investigate(rt: Runtime, alert: Alert) -> Case:
    """Admit the alert (dedupe/group) and run or resume its case's flow to its next stop."""
    case, is_new = rt.cases.admit(alert)
    rt.audit.append("intake", "intake", {"alert": alert.id, "source": alert.source, "case": case.id,
                                          "new": is_new}, case_id=case.id)
    if not retryable(case):
        return case
    return run_case(rt, case)


def run_case(rt: Runtime, case: Case) -> Case:
    """Run or resume the case's flow, if no other live process is working on it right now."""
    done = try_run_case(rt, case)
    return done if done is not None else rt.cases.get(case.id)


def try_run_case(rt: Runtime, case: Case) -> Case | None:
    """`run_case`, or None when another worker holds the case (a queued task then tries again later)."""
    with leased(rt, case.id) as held:
        return _run_case(rt, case) if held else None


_HELD: set[str] = set()  # cases a thread of this process works on (the store's lease is per process)
_HELD_LOCK = threading.Lock()


@contextmanager
def leased(rt: Runtime, case_id: str) -> Iterator[bool]:
    """Hold the case while working on it: True when this thread may, False when another thread here or
    another live process has it (audited as lease_busy). The store's lease admits one process per case;
    the set above admits one thread of that process (a worker running tasks on threads)."""
    with _HELD_LOCK:
        mine = case_id not in _HELD
        _HELD.add(case_id)
    try:
        if not mine or not rt.cases.lease(case_id):
            rt.audit.append("lease_busy", "system", {"case": case_id}, case_id=case_id)
            yield False
            return
        try:
            with rt.cases.kept(case_id):
                yield True
        finally:
            rt.cases.release(case_id)
    finally:
        if mine:
            with _HELD_LOCK:
                _HELD.discard(case_id)


def _run_case(rt: Runtime, case: Case) -> Case:
    from crewai.flow.async_feedback.types import HumanFeedbackPending

    flow_cls = _flow(rt)
    flow = flow_cls(persistence=rt.flow_persistence)
    flow._runtime = rt
    try:
        if case.flow_id and rt.flow_persistence.load_state(case.flow_id) is None:
            case.flow_id = None  # it crashed before its first step was saved: start again from the top
        if case.flow_id:
            # A crash left this case mid-flow: restore the last snapshot and run again from the start;
            # evidence is content-addressed and actions go through the ledger, so nothing repeats.
            rt.audit.append("resume_after_crash", "system", {"flow": case.flow_id}, case_id=case.id)
            result = flow.kickoff(inputs={"id": case.flow_id})
        else:
            result = flow.kickoff(inputs={"case": case.model_dump(mode="json")})
    except Exception as exc:
        case = flow.state.case or case
        halted = _halted(exc)
        if halted is not None:
            return halt_case(rt, case, halted)
        case.status = "failed"
        case.note("flow", "failed", f"{type(exc).__name__}: {exc}"[:1000])
        rt.cases.save(case)
        rt.audit.append("case_failed", "system", {"error": f"{type(exc).__name__}: {exc}"[:1000]}, case_id=case.id)
        raise
    final = flow.state.case
    if isinstance(result, HumanFeedbackPending):
        final.status = "awaiting_approval"
    rt.cases.save(final)
    return final


def _halted(exc: BaseException) -> Any:
    from siemcrew.crew.brains.llm import ModelHalted

    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        if isinstance(current, ModelHalted):
            return current
        seen.append(current)
        current = current.__cause__ or current.__context__
    return None


def _capped(verdict: str) -> str:
    """An escalation is no verdict of the crew's: at most suspicious, and never a benign closure."""
    return {"malicious": "suspicious", "benign": "inconclusive"}.get(verdict, verdict)


def halt_case(rt: Runtime, case: Case, halted: Any) -> Case:
    """Escalate a case whose model failed or ran out of budget: the evidence and findings it gathered stay,
    the verdict is at most suspicious, the summary says a human is needed and why, and the alert is written
    back as escalated through the same policy gate and executor as any escalation. No other action is
    proposed; nothing retries it (see `rerun`)."""
    llm = rt.settings.llm
    case.halt = Halt(reason=halted.reason, stage=halted.stage, round=case.round, detail=halted.detail,
                     budget={"max_calls_per_case": llm.max_calls_per_case,
                             "max_tokens_per_case": llm.max_tokens_per_case} if llm else {})
    label = HALT_LABEL[halted.reason]
    case.verdict = _capped(case.verdict)  # type: ignore[assignment]
    before = f" | before it stopped: {case.summary}" if case.summary else ""
    case.summary = (f"needs human: {label} ({halted.stage} stage, round {case.round + 1}; {halted.detail}); "
                    f"{len(case.evidence)} evidence item(s) and {len(case.findings)} finding(s) kept{before}")[:2000]
    reason = f"needs human: {label} in the {halted.stage} stage"
    case.proposals = [
        ActionProposal(action="update_alert", target=case.alert.id,
                       args={"status": "escalated", "verdict": case.verdict, "halt": halted.reason},
                       reason=reason, proposed_by="flow"),
        ActionProposal(action="escalate", target=case.id, args={"severity": "medium", "halt": halted.reason},
                       reason=reason, proposed_by="flow"),
    ]
    case.note("flow", "halted", f"{label}: {halted.stage}: {halted.detail}"[:1000])
    rt.audit.append("case_halted", "system", {"reason": halted.reason, "stage": halted.stage, "round": case.round,
                                              "detail": halted.detail, "llm_calls": case.llm_calls,
                                              "llm_tokens": case.llm_tokens, "evidence": len(case.evidence),
                                              "budget": case.halt.budget}, case_id=case.id)
    pending = rt.gate(case)
    rt.act(case, auto_only=bool(pending))
    rt.cases.save(case)
    return case


def rerun(rt: Runtime, case_id: str, by: str = "cli") -> Case:
    """Continue a case that was escalated because its model failed or its budget ran out.

    The case keeps its evidence, findings and counters; the stages that finished are kept, and the flow
    continues with the one that stopped. The budget is per case over all attempts: the rerun may spend
    what the configured budget leaves, so after "budget exhausted" raise `max_calls_per_case` /
    `max_tokens_per_case` (or move the role to the playbook brain) first.
    """
    case = rt.cases.get(case_id)
    if case.halt is None:
        raise RerunError(f"{case_id} is {case.status} and was not stopped by its model or budget: nothing to rerun")
    with leased(rt, case.id) as held:
        return _rerun(rt, case_id, by) if held else rt.cases.get(case.id)


def _rerun(rt: Runtime, case_id: str, by: str) -> Case:
    case = rt.cases.get(case_id)
    halt = case.halt
    if halt is None:
        return case  # another process reran it meanwhile
    llm = rt.settings.llm
    if halt.reason == "budget_exhausted" and llm is not None and halt.stage in llm.roles and halt.budget == {
            "max_calls_per_case": llm.max_calls_per_case, "max_tokens_per_case": llm.max_tokens_per_case}:
        raise RerunError(
            f"{case_id} used {case.llm_calls} requests and {case.llm_tokens} tokens of a budget that is "
            f"unchanged ({llm.max_calls_per_case} requests, {llm.max_tokens_per_case} tokens per case): raise "
            f"llm.max_calls_per_case / llm.max_tokens_per_case, or run the {halt.stage} role on the playbook "
            "brain, then rerun")
    for result in case.results:
        if result.action in HALT_WRITE_BACKS:
            rt.ledger.supersede(result.key)
    case.halt = None
    case.status = "investigating"
    case.flow_id = None  # a new flow run over the case as the store holds it, finished stages kept
    case.proposals, case.results = [], []
    case.note(by, "rerun", f"after {HALT_LABEL[halt.reason]} in the {halt.stage} stage")
    rt.audit.append("rerun", by, {"after": halt.reason, "stage": halt.stage, "llm_calls": case.llm_calls,
                                  "llm_tokens": case.llm_tokens,
                                  "budget": {"max_calls_per_case": llm.max_calls_per_case,
                                             "max_tokens_per_case": llm.max_tokens_per_case} if llm else {}},
                    case_id=case.id)
    rt.cases.save(case)
    return _run_case(rt, case)


def decide(rt: Runtime, case_id: str, action: str, decision: str, by: str, reason: str,
           target: str | None = None, ttl_seconds: int | None = None, sha256: str | None = None
           ) -> tuple[Approval, Case]:
    """Record a human decision bound to the exact pending action; resume the flow when none is left."""
    case = rt.cases.get(case_id)
    approval = rt.approvals.decide(
        case_id, action, decision, by=by, reason=reason, ttl_seconds=ttl_seconds or rt.settings.approval_ttl_seconds,
        target=target, args_sha256=sha256,
        record=lambda done: rt.audit.append("approval", done.by, done.model_dump(mode="json"), case_id=case_id))
    if rt.approvals.pending(case_id):
        case.note(by, f"{decision}d", f"{action} {approval.target}: {reason}")
        rt.cases.save(case)
        return approval, case
    if rt.queue is not None:
        # the last decision: whichever worker picks the task up continues the case
        case.note(by, f"{decision}d", f"{action} {approval.target}: {reason}; continued by a worker")
        rt.cases.save(case)
        rt.queue.after_decisions(case, by=by)
        return approval, case
    return approval, resume(rt, case)


def propose(rt: Runtime, case_id: str, action: str, target: str, by: str, reason: str,
            args: dict[str, Any] | None = None) -> Case:
    """A person proposes a further action on a case (e.g. release a contained host). It passes the
    same policy gate; if it needs approval it waits, otherwise it runs now."""
    from siemcrew.crew.models import ActionProposal

    if not by.strip() or not reason.strip():
        raise ApprovalError("a proposal needs `by` and a `reason`")
    case = rt.cases.get(case_id)
    default_args = {"host": target} if action.endswith("_host") else {}
    proposal = ActionProposal(action=action, target=target, args=args or default_args, reason=reason, proposed_by=by)
    case.proposals = [p for p in case.proposals if p.key(case.id) != proposal.key(case.id)] + [proposal]
    rt.audit.append("proposal", by, proposal.model_dump(mode="json"), case_id=case.id)
    pending = rt.gate(case, [proposal])
    case.note(by, "proposed", f"{action} {target}: {reason}")
    if pending:
        case.status = "awaiting_approval"
        rt.cases.save(case)
        return case
    rt.act(case)
    rt.cases.save(case)
    return case


def resume(rt: Runtime, case: Case) -> Case:
    if case.status != "awaiting_approval":
        return case
    if not paused(rt, case):
        return execute_decided(rt, case)
    flow_cls = _flow(rt)
    try:
        flow = flow_cls.from_pending(case.flow_id, rt.flow_persistence)
    except ValueError:
        return rt.cases.get(case.id)  # another process already resumed it
    flow._runtime = rt
    flow.state.case = rt.cases.get(case.id)  # the case store is the record: keep what changed while paused
    flow.resume("decisions recorded")
    final = flow.state.case
    rt.cases.save(final)
    return final


def paused(rt: Runtime, case: Case) -> bool:
    """A flow of this case waits for its decisions in the flow persistence."""
    return bool(case.flow_id) and rt.flow_persistence.load_pending_feedback(case.flow_id) is not None


def execute_decided(rt: Runtime, case: Case) -> Case:
    """No paused flow (a proposal made after the investigation, or a resume cut short after the flow was taken
    from persistence): execute what is now decided; the ledger runs each action key once."""
    rt.act(case)
    rt.cases.save(case)
    return case


def read_checkpoint(rt: Runtime) -> str | None:
    return rt.checkpoints.get(rt.siem.name)


def write_checkpoint(rt: Runtime, checkpoint: str | None) -> None:
    rt.checkpoints.put(rt.siem.name, checkpoint)


def fetch(rt: Runtime, summary: RunSummary, limit: int) -> Any:
    """The alerts since the checkpoint; how many, and the inputs that could not be read, go in the summary."""
    batch = rt.siem.fetch_alerts(read_checkpoint(rt), limit=limit)
    summary.fetched = len(batch.alerts)
    summary.rejected_inputs = list(batch.problems)
    return batch


def advance(rt: Runtime, summary: RunSummary, batch: Any) -> None:
    """Move the checkpoint past the batch unless an alert failed (then it is fetched again next time)."""
    if not summary.failed:
        write_checkpoint(rt, batch.checkpoint)
    summary.checkpoint = batch.checkpoint if not summary.failed else read_checkpoint(rt)


def drain_outbox(rt: Runtime, now: float | None = None) -> list[OutboxItem]:
    """Send again the write-backs whose retry is due (crew/outbox.py); returns what is still pending.

    An alert update goes through the executor again (the failed ledger claim is taken over, the policy asked
    again, the connector reads back first where the earlier write may have landed); a case record is
    published again. A write-back whose proposal is no longer on the case (superseded by a rerun) is done.
    """
    from siemcrew.crew.executor import ActionExecutor

    for item in rt.outbox.due(now):
        case = rt.cases.get(item.case_id)
        if case is None:
            continue
        rt.audit.append("outbox_retry", "system", {"key": item.key, "attempt": item.attempts + 1}, case_id=case.id)
        if item.kind == "publish":
            rt.publish(case)
            continue
        proposal = next((p for p in case.proposals if p.key(case.id) == item.key), None)
        decision = rt.policy.evaluate(case, proposal, rt.ledger.count_since) if proposal else None
        if proposal is None or decision is None or decision.outcome == "denied":
            rt.outbox.done(item.key)  # nothing left to write: superseded, or no longer allowed
            rt.audit.append("outbox_dropped", "system", {"key": item.key, "reasons": decision.reasons if decision else []},
                            case_id=case.id)
            continue
        approval = rt.approvals.valid_for(case.id, proposal) if decision.outcome == "approval_required" else None
        if decision.outcome == "approval_required" and approval is None:
            continue  # waits for its approval like any other action
        result = ActionExecutor(rt).execute(case, proposal, approval)
        case.results = [result if r.key == result.key else r for r in case.results]
        if result.key not in {r.key for r in case.results}:
            case.results.append(result)
        case.note("outbox", "write_back_retried", f"{proposal.action}: {result.state}")
        if case.status in ("closed", "escalated"):
            case.status = final_status(case)  # a benign case whose alert is now closed is closed
        rt.cases.save(case)
        if result.state == "done":
            rt.publish(case)  # the case record shows the write-back landed
    return rt.outbox.pending()


def reconcile_containment(rt: Runtime) -> list[str]:
    """Endpoint actions that timed out waiting for the vendor's confirmation: ask the vendor again and record what it
    says; returns those it still has not confirmed. The recorded ticket is polled, never re-sent; one the vendor
    issued no id for (`observed:` host state, `unconfirmed:` no answer) or no longer knows is first looked up in
    the vendor's action list by siemcrew's marker, so it ends with the vendor's own action id and status."""
    from siemcrew.crew.executor import ENDPOINT_ACTIONS
    from siemcrew.tools.endpoint import edr_action

    unconfirmed: list[str] = []
    for claim in rt.ledger.in_state("timed_out") if rt.edr else []:
        case_id, action = claim.key.split(":", 2)[:2]
        try:
            case = rt.cases.get(case_id)
        except KeyError:
            continue
        proposal = next((p for p in case.proposals if p.key(case.id) == claim.key), None)
        ask = (edr_action(rt, proposal, "", case, timeout_s=0.0, may_send=False)
               if proposal and action in ENDPOINT_ACTIONS else None)
        if ask is None:
            continue
        try:
            state, executor, detail, ticket = ask()
        except Exception as exc:  # noqa: BLE001 - the vendor could not be asked: still unconfirmed, asked next time
            unconfirmed.append(f"{claim.key}: the vendor could not be asked ({type(exc).__name__}: {exc})"[:300])
            continue
        rt.ledger.update(claim.key, state, detail, ticket=ticket)
        rt.audit.append("action_reconciled", "system", {"key": claim.key, "state": state, "detail": detail[:500]},
                        case_id=case.id)
        case.results = [r.model_copy(update={"state": state, "detail": detail, "executor": executor,
                                             "ticket": ticket or r.ticket}) if r.key == claim.key else r
                        for r in case.results]
        rt.cases.save(case)
        if state == "timed_out":
            unconfirmed.append(f"{claim.key}: {detail}"[:300])
        else:
            rt.publish(case)
    return unconfirmed


def run(rt: Runtime, limit: int = 100, progress: Callable[[Alert], None] | None = None) -> RunSummary:
    """Cron mode: fetch since the checkpoint, investigate, advance the checkpoint, summarize (with a task
    queue: fetch, store the cases and enqueue them for the workers, crew/queue/poll.py).

    The checkpoint advances only after every fetched alert is admitted and run; an alert admitted
    before a crash is found again by id (no repeat) and unfinished cases are resumed first.
    """
    if rt.queue is not None:
        from siemcrew.crew.queue.poll import poll

        return poll(rt, limit=limit, progress=progress)
    summary = RunSummary()
    with rt.storage.run_lock():
        drain_outbox(rt, now=float("inf"))  # a run (cron spaces them) tries every pending write-back first
        summary.containment_unconfirmed = reconcile_containment(rt)
        unfinished = rt.cases.list(status="investigating") + rt.cases.list(status="new") + rt.cases.list(status="failed")
        for case in (c for c in unfinished if retryable(c)):
            try:
                run_case(rt, case)
            except Exception as exc:  # noqa: BLE001 - summarized, the run continues
                summary.errors.append(f"{case.id}: {exc}"[:300])
        for case in rt.cases.list(status="awaiting_approval"):
            if not rt.approvals.pending(case.id):
                try:
                    resume(rt, case)
                except Exception as exc:  # noqa: BLE001 - summarized, the run continues
                    summary.errors.append(f"{case.id}: {exc}"[:300])
        batch = fetch(rt, summary, limit)
        for alert in batch.alerts:
            if progress:
                progress(alert)
            try:
                known = rt.cases.known(alert)
                case = investigate(rt, alert)
                if known:
                    summary.skipped_known += 1
                else:
                    summary.investigated += 1
            except Exception as exc:  # noqa: BLE001 - summarized, the run continues
                summary.failed += 1
                summary.errors.append(f"{alert.id}: {type(exc).__name__}: {exc}"[:300])
                continue
            summary.cases.append(case.id)
            if case.halt is not None:
                summary.halted += 1
            summary.verdicts[case.verdict] = summary.verdicts.get(case.verdict, 0) + 1
            if case.status == "awaiting_approval":
                summary.awaiting_approval += 1
        advance(rt, summary, batch)
        # write-backs that failed in this run are retried once more before it ends (a blip); what is still
        # pending is listed (exit 4) and retried by the next run and by serve
        summary.writeback_pending = [item.line() for item in drain_outbox(rt, now=time.time() + BACKOFF_S[0])]
    return summary


__all__ = ["ApprovalError", "LockBusy", "RerunError", "RunSummary", "decide", "drain_outbox", "execute_decided",
           "halt_case", "investigate", "leased", "paused", "propose", "reconcile_containment", "rerun", "resume", "run",
           "run_case", "try_run_case"]
