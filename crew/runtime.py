"""Wiring: one Runtime per process holds the connectors, stores, gates and the crew factory.

The flow steps call back into it for the policy gate (`gate`) and the executor (`act`), so that
the deterministic machinery lives in one place whatever brain runs the agents.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from siemcrew.config.settings import Settings, SettingsError
from siemcrew.crew import offline
from siemcrew.crew.assets import AssetInventory
from siemcrew.crew.models import ActionResult, Case, TimeRange
from siemcrew.crew.policy import ResponsePolicy
from siemcrew.crew.storage import Storage
from siemcrew.crew.verifier import EvidenceRequirements

log = logging.getLogger("siemcrew")


def build_siem(settings: Settings) -> Any:
    """The configured SIEM connector (imported lazily: each pulls its own client library)."""
    if settings.source == "local":
        from siemcrew.connectors.local.factory import local_connector

        return local_connector(settings)
    if settings.source == "splunk":
        from siemcrew.config.splunk import SplunkSettings
        from siemcrew.connectors.splunk.connector import SplunkConnector

        return SplunkConnector(SplunkSettings.model_validate(settings.splunk))
    if settings.source == "elastic":
        from siemcrew.config.elastic import ElasticSettings
        from siemcrew.connectors.elastic.connector import ElasticConnector

        return ElasticConnector(ElasticSettings.model_validate(settings.elastic))
    raise SettingsError(f"unknown source {settings.source!r}")


def final_status(case: Case) -> Any:
    """A finished case is closed when its benign verdict closed its alert in the SIEM, else escalated."""
    if case.verdict == "benign" and any(r.action == "close_alert" and r.state == "done" for r in case.results):
        return "closed"
    return "escalated"


class Runtime:
    def __init__(self, settings: Settings, siem: Any | None = None, llm_inner: Any = None) -> None:
        self.settings = settings
        self.llm_inner = llm_inner  # tests: a callable(role, ctx) -> BaseLLM standing in for a real model
        home = settings.home_path
        home.mkdir(parents=True, exist_ok=True)
        offline.prepare(home / "crewai")
        self.storage = Storage.from_settings(settings)
        self.audit = self.storage.audit_log(settings.audit_key())
        self.cases = self.storage.cases()
        self.approvals = self.storage.approvals()
        self.ledger = self.storage.ledger()
        self.outbox = self.storage.outbox()
        self.tickets = self.storage.tickets()
        self.checkpoints = self.storage.checkpoints()
        self.inventory = AssetInventory.load(settings.config_file("assets"))
        self.policy = ResponsePolicy.load(settings.config_file("policy"), self.inventory)
        self.requirements = EvidenceRequirements.load(settings.config_file("evidence"))
        self.siem = siem if siem is not None else build_siem(settings)
        self.edr = self._build_edr()
        self._rules: list[Any] | None = None
        self._crews: Any = None
        self._flow_persistence: Any = None
        self.queue_settings = settings.queue_settings()  # validated now: a bad `queue:` fails at start
        self._queue: Any = None

    @property
    def queue(self) -> Any:
        """The task queue's dispatcher (crew/queue/dispatch.py) when `queue:` is configured; None runs the work
        in this process, as without a queue."""
        if self.queue_settings is not None and self._queue is None:
            from siemcrew.crew.queue.dispatch import Dispatcher

            self._queue = Dispatcher(self)
        return self._queue

    # -- crew pieces (crewAI imported lazily) -------------------------------------------------
    @property
    def crews(self) -> Any:
        if self._crews is None:
            from siemcrew.crew.agents import CrewFactory

            self._crews = CrewFactory(self.settings.config_file("agents"), self.settings.config_file("tasks"))
        return self._crews

    @property
    def flow_persistence(self) -> Any:
        if self._flow_persistence is None:
            self._flow_persistence = self.storage.flow_persistence()
        return self._flow_persistence

    def brain(self, role: str, ctx: Any) -> Any:
        llm = self.settings.llm
        if llm is not None and role in llm.roles:
            from siemcrew.crew.brains.llm import budgeted_llm

            return budgeted_llm(llm, ctx, inner=self.llm_inner(role, ctx) if self.llm_inner else None)
        from siemcrew.crew.brains.playbook import PlaybookBrain

        return PlaybookBrain(model=f"playbook-{role}", role=role, ctx=ctx)

    def extra_tools(self, ctx: Any, names: list[str]) -> list[Any]:
        if not self.edr:
            return []
        from siemcrew.tools.endpoint import endpoint_tools  # noqa: I001

        return endpoint_tools(ctx, names)

    # -- detection content ----------------------------------------------------------------------
    @property
    def rules_dir(self) -> Path | None:
        configured = self.settings.investigation.sigma_rules_dir
        return Path(configured) if configured else None

    @property
    def has_sigma(self) -> bool:
        return bool(self.rules_dir and self.rules_dir.is_dir())

    def rules_for(self, techniques: list[str]) -> list[Any]:
        if not self.has_sigma:
            return []
        from siemcrew.connectors.local.sigma import rules_for_techniques

        return rules_for_techniques(techniques, self.rules_dir)

    def run_sigma(self, rule: Any, window: TimeRange, scope: str | None, host: str | None) -> Any:
        text = Path(rule.path).read_text(encoding="utf-8")
        kwargs: dict[str, Any] = {"time_range": window, "limit": 200}
        if scope is not None and self.settings.source == "local":
            kwargs["scope"] = scope
        return self.siem.run_sigma(text, **kwargs)

    # -- EDR ------------------------------------------------------------------------------------
    def _build_edr(self) -> dict[str, Any]:
        if not self.settings.edr:
            return {}
        from siemcrew.config.edr import EdrSettings
        from siemcrew.connectors.edr.registry import build_edr

        self.edr_settings = EdrSettings.model_validate(self.settings.edr)
        return build_edr(self.edr_settings)

    def edr_executor(self, proposal: Any, comment: str, case: Case) -> Any:
        if not self.edr:
            return None
        from siemcrew.tools.endpoint import edr_action

        return edr_action(self, proposal, comment, case)

    # -- gates ----------------------------------------------------------------------------------
    def gate(self, case: Case, proposals: list[Any] | None = None) -> int:
        """Policy decisions for the proposals (default: all of the case's); approval requests for
        those that need one. Returns how many still wait for a human decision."""
        targets = case.proposals if proposals is None else proposals
        keys = {(p.action, p.target) for p in targets}
        case.decisions = [d for d in case.decisions if (d.action, d.target) not in keys]
        pending = 0
        for proposal in targets:
            decision = self.policy.evaluate(case, proposal, self.ledger.count_since)
            case.decisions.append(decision)
            self.audit.append("policy", "policy", decision.model_dump(mode="json"), case_id=case.id)
            if decision.outcome == "approval_required":
                self.approvals.request(case.id, proposal, decision, flow_id=case.flow_id)
                waiting = {(p.action, p.target, p.args_sha256) for p in self.approvals.pending(case.id)}
                if (proposal.action, proposal.target, proposal.args_sha256) in waiting:
                    pending += 1
        return pending

    def act(self, case: Case, auto_only: bool = False) -> None:
        """Execute cleared proposals. With `auto_only` (before pausing for approvals), only those the
        policy allows without a human run now; the rest wait and the case is not finalized."""
        from siemcrew.crew.executor import ActionExecutor

        executor = ActionExecutor(self)
        results: list[ActionResult] = []
        decisions = {(d.action, d.target, d.args_sha256): d for d in case.decisions}
        case.approvals = self.approvals.decisions(case.id)
        for proposal in case.proposals:
            decision = decisions.get((proposal.action, proposal.target, proposal.args_sha256))
            key = proposal.key(case.id)
            if decision is None or decision.outcome == "denied":
                why = "; ".join(decision.reasons) if decision else "no policy decision"
                results.append(ActionResult(key=key, action=proposal.action, target=proposal.target, state="skipped",
                                            executor="policy", detail=f"denied by policy: {why}"[:500]))
                continue
            approval = None
            if decision.outcome == "approval_required" and auto_only:
                continue
            earlier = self.ledger.get(key)
            if earlier is None or earlier.state == "failed":
                # Decided earlier (perhaps hours ago): the policy is asked again right before acting,
                # so rate limits and verification hold at execution time, not only at request time.
                fresh = self.policy.evaluate(case, proposal, self.ledger.count_since)
                if fresh.outcome == "denied":
                    self.audit.append("policy", "policy", fresh.model_dump(mode="json"), case_id=case.id)
                    results.append(ActionResult(key=key, action=proposal.action, target=proposal.target,
                                                state="skipped", executor="policy",
                                                detail=f"denied at execution: {'; '.join(fresh.reasons)}"[:500]))
                    continue
            if decision.outcome == "approval_required":
                approval = self.approvals.valid_for(case.id, proposal)
                if approval is None:
                    latest = self.approvals.decision_for(case.id, proposal)
                    why = (f"denied by {latest.by}: {latest.reason}" if latest and latest.decision == "deny"
                           else "approval expired or missing")
                    results.append(ActionResult(key=key, action=proposal.action, target=proposal.target,
                                                state="skipped", executor="approval", detail=why))
                    continue
            results.append(executor.execute(case, proposal, approval))
        case.results = results
        if auto_only:
            case.status = "awaiting_approval"
            self.publish(case)  # the SIEM sees the case while it waits for a human
            return
        case.status = final_status(case)
        self.publish(case)

    def publish(self, case: Case) -> None:
        """Send the case record to the SIEM; one that fails is kept in the outbox and sent again later."""
        key = f"{case.id}:publish"
        try:
            self.siem.publish_case(case)
        except Exception as exc:  # noqa: BLE001 - a failed publish is kept and retried, the case stays correct
            item = self.outbox.failed(key, case.id, "publish", "publish", case.id, f"{type(exc).__name__}: {exc}")
            self.audit.append("publish_error", "system", {"error": str(exc)[:500], "attempt": item.attempts},
                              case_id=case.id)
            return
        self.outbox.done(key)
        self.audit.append("publish", "system", {"case": case.id, "connector": self.siem.name}, case_id=case.id)

    def report_link(self, case: Case) -> str:
        """What the SIEM write-back names for the case: its page under `serve.public_url`, else the command."""
        from siemcrew.web.urls import case_url

        return case_url(self.settings, case.id) or f"siemcrew report {case.id}"

    def recent(self, action: str, seconds: float) -> int:
        return self.ledger.count_since(action, time.time() - seconds)

    def approval_ttl(self) -> timedelta:
        return timedelta(seconds=self.settings.approval_ttl_seconds)
