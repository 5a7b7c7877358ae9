"""Executes policy-cleared actions, at most once per (case, action, target), across crashes.

SIEM write-backs (update_alert, close_alert, escalate) go through the SIEM connector. Endpoint
actions go to an EDR connector when one is configured and covers the host; otherwise the dry-run
executor records exactly what would have been done.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Callable

from siemcrew.connectors.base import AlertUpdate, ConnectorError
from siemcrew.crew.faults import fault_point
from siemcrew.crew.models import ActionProposal, ActionResult, Approval, Case

SIEM_ACTIONS = {"update_alert", "close_alert", "escalate", "add_case_comment"}
WRITE_BACKS = SIEM_ACTIONS - {"escalate"}  # what reaches the SIEM (escalate is the case's own state)
ENDPOINT_ACTIONS = {"isolate_host": "contain", "release_host": "release", "kill_process": "kill_process"}


class ActionExecutor:
    def __init__(self, runtime: Any) -> None:
        self.rt = runtime

    def execute(self, case: Case, proposal: ActionProposal, approval: Approval | None) -> ActionResult:
        ledger = self.rt.ledger
        key = proposal.key(case.id)
        claim = ledger.claim(key, proposal.action, proposal.target, proposal.args_sha256)
        retry = False
        if not claim.acquired and (claim.state == "failed" or (
                claim.state == "claimed" and key in {c.key for c in ledger.stale_claims(older_than_s=0)})):
            # The earlier attempt failed, or its process died before recording an outcome: take it over.
            # SIEM write-backs read back first (AlertUpdate.retry) and EDR actions re-read the vendor's
            # state before sending.
            claim = ledger.reclaim(claim, args_sha256=proposal.args_sha256)
            retry = claim.acquired
        if not claim.acquired:
            # Executed (or started) before, by this or another process: never a second time.
            return ActionResult(key=key, action=proposal.action, target=proposal.target,
                                state=_result_state(claim.state), executor="ledger",
                                detail=f"already {claim.state}: {claim.detail}"[:500], ticket=claim.ticket)
        who = approval.by if approval else "policy:auto"
        comment = f"siemcrew case {case.id} action {proposal.action} approved by {who}"
        self.rt.audit.append("action_start", who, {"key": key, "action": proposal.action, "target": proposal.target,
                                                  "args_sha256": proposal.args_sha256}, case_id=case.id)
        try:
            state, executor, detail, ticket = self._dispatch(case, proposal, comment, retry)
        except ConnectorError as exc:
            state, executor, detail, ticket = "failed", "connector", str(exc)[:500], None
        except Exception as exc:  # noqa: BLE001 - record the outcome; a claim must never dangle
            state, executor, detail, ticket = "failed", "executor", f"{type(exc).__name__}: {exc}"[:500], None
        ledger.update(key, state, detail, ticket=ticket)
        if proposal.action in WRITE_BACKS:
            if state == "failed":
                # kept, and retried by this run, later runs and serve until it lands (crew/outbox.py)
                item = self.rt.outbox.failed(key, case.id, "action", proposal.action, proposal.target, detail)
                detail = f"{detail} [write-back kept in the outbox: attempt {item.attempts}, retried]"[:500]
            elif self.rt.outbox.done(key):
                self.rt.audit.append("outbox_done", who, {"key": key}, case_id=case.id)
        fault_point(f"after_action:{proposal.action}")
        result = ActionResult(key=key, action=proposal.action, target=proposal.target, state=state,
                              executor=executor, detail=detail, ticket=ticket)
        self.rt.audit.append("action", who, result.model_dump(mode="json"), case_id=case.id)
        return result

    def _dispatch(self, case: Case, proposal: ActionProposal, comment: str, retry: bool = False
                  ) -> tuple[Any, str, str, str | None]:
        action = proposal.action
        if action == "escalate":
            # The hand-over to a human is the case's own state (published with the case); the alert's
            # status is written once, by update_alert.
            return "done", "case", f"case escalated for human review ({proposal.args.get('severity', 'medium')})", None
        if action in SIEM_ACTIONS:
            return self._siem(case, proposal, comment, retry)
        if action in ENDPOINT_ACTIONS and self.rt.settings.executor == "edr":
            edr_action: Callable[..., Any] | None = self.rt.edr_executor(proposal, comment, case)
            if edr_action is None:
                # executor: edr promises containment; a host no EDR covers is a gap to fix, not a dry run
                host = str(proposal.args.get("host") or proposal.target.split(":")[0])
                return ("failed", "edr", f"no configured EDR covers host {host} (executor: edr): nothing was sent; "
                        "add the host to an EDR's scope in `edr:` or contain it by hand", None)
            return edr_action()
        return "dry_run", "dry-run", f"would {action} {proposal.target} with {proposal.args} ({comment})", None

    def _siem(self, case: Case, proposal: ActionProposal, comment: str, retry: bool) -> tuple[Any, str, str, str | None]:
        siem = self.rt.siem
        alert = next((a for a in case.alerts if a.id == proposal.target), case.alert)
        # The status written back follows from the case, never from a proposal's arguments: only a
        # policy-cleared close_alert (verified benign) may close an alert.
        if proposal.action == "close_alert":
            status = "closed"
        else:
            status = "escalated" if case.verdict != "benign" else "in_progress"
        update = AlertUpdate(status=status,
                             verdict=case.verdict, comment=f"{comment}: {case.verdict} ({case.confidence}). {case.summary}"[:4000],
                             summary=case.summary[:4000], report_link=self.rt.report_link(case), retry=retry)
        targets = [alert] if proposal.action == "update_alert" else chain(case.alerts, self.rt.cases.alerts_beyond(case.id))
        for item in targets:
            siem.update_alert(item, update)
        return "done", siem.name, f"{proposal.action}: alert(s) set to {update.status}", None


def _result_state(ledger_state: str) -> Any:
    return {"claimed": "pending", "pending": "pending", "done": "done", "failed": "failed",
            "timed_out": "timed_out", "dry_run": "dry_run", "skipped": "skipped"}.get(ledger_state, "pending")
