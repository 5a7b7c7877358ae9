"""The response policy gate: may this proposed action run automatically, with a human approval, or not at all?

The decision is a pure function of the case's deterministic fields (verdict, confidence, latest
verification status, alert entities, affected hosts/users, the evidence its tools recorded), the
proposal's action/target/args/cited evidence ids, the config, the asset inventory and a rate counter.
Nothing a model writes in free text (reasons, summaries, statements) is read. Targets and arguments
must have their kind's syntax (crew/targets.py), cited evidence must exist, and a disruptive action
must cite evidence whose rows name its target. A caller may make the policy stricter for one call (`PolicyOverride`),
never looser: `tighten` rejects any loosening with `PolicyLoosening`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from siemcrew.crew.assets import AssetInventory, Tier, host_forms, load_yaml_model, same_account, same_host, split_user
from siemcrew.crew.models import ActionProposal, Case, Confidence, Model, PolicyDecision, PolicyOutcome, Verdict
from siemcrew.crew.targets import ValueKind, address_owners, internal_address, names, process_named, process_target, same_target, valid
from siemcrew.crew.timeutil import utcnow

ApprovalMode = Literal["auto", "required", "never"]
TargetKind = Literal["host", "user", "indicator", "alert", "case", "other"]
RecentCount = Callable[[str, float], int]
"""`recent_count(action, since_epoch)`: how many executions of `action` began at or after `since_epoch`."""

OUTCOME_RANK: dict[str, int] = {"auto": 0, "approval_required": 1, "denied": 2}
APPROVAL_OUTCOME: dict[str, PolicyOutcome] = {"auto": "auto", "required": "approval_required", "never": "denied"}
CONFIDENCE_RANK: dict[str, int] = {"low": 0, "medium": 1, "high": 2}
VERDICT_RANK: dict[str, int] = {"benign": 0, "inconclusive": 1, "suspicious": 2, "malicious": 3}
APPROVAL_RANK: dict[str, int] = {"auto": 0, "required": 1, "never": 2}


class PolicyError(ValueError):
    """The policy config is invalid, or an override is malformed."""


class PolicyLoosening(PolicyError):
    """An override tried to make the policy less strict."""


class RateLimit(Model):
    max: int = Field(ge=0)
    per_seconds: float = Field(gt=0)


class TierRules(Model):
    """Tier rules read the host tier for host targets and the identity tier for user targets."""

    deny_on_tiers: list[Tier] = Field(default_factory=list)
    approval_on_tiers: list[Tier] = Field(default_factory=list)
    auto_on_tiers: list[Tier] | None = None
    """When set, only these tiers may run automatically; any other tier needs approval."""


class ActionRule(Model):
    target: TargetKind = "other"
    args: dict[str, ValueKind] | None = None
    """When set, the only arguments the action takes, each with the syntax of its kind."""
    approval: ApprovalMode = "required"
    disruptive: bool = False
    requires_verified: bool = False
    min_confidence: Confidence | None = None
    auto_min_confidence: Confidence | None = None
    """Below this confidence (but at or above min_confidence) an automatic action needs approval."""
    min_verdict: Verdict | None = None
    verdicts: list[Verdict] | None = None
    """When set, the action is allowed only for cases with one of these verdicts (close_alert: benign)."""
    tiers: TierRules = Field(default_factory=TierRules)
    rate_limit: RateLimit | None = None
    target_in_case: bool = True
    """Host/user targets must be one of the case's alert entities or affected hosts/users."""

    @model_validator(mode="after")
    def _coherent(self) -> "ActionRule":
        if self.disruptive and not self.requires_verified:
            raise ValueError(
                "a disruptive action must set requires_verified: true (only verified cases may be disrupted)"
            )
        if self.target not in ("host", "user", "indicator") and (
            self.tiers.deny_on_tiers or self.tiers.approval_on_tiers or self.tiers.auto_on_tiers
        ):
            raise ValueError("tier rules need `target: host`, `target: user` or `target: indicator`")
        return self


class PolicyConfig(Model):
    default: ActionRule = Field(default_factory=lambda: ActionRule(approval="never"))
    actions: dict[str, ActionRule] = Field(default_factory=dict)


class RuleOverride(Model):
    """Per-action tightening; every field may only make the rule stricter."""

    approval: ApprovalMode | None = None
    disruptive: bool | None = None
    requires_verified: bool | None = None
    min_confidence: Confidence | None = None
    auto_min_confidence: Confidence | None = None
    min_verdict: Verdict | None = None
    deny_on_tiers: list[Tier] = Field(default_factory=list)
    approval_on_tiers: list[Tier] = Field(default_factory=list)
    auto_on_tiers: list[Tier] | None = None
    rate_limit: RateLimit | None = None
    target_in_case: bool | None = None


class PolicyOverride(Model):
    """A stricter view of the policy for one call (e.g. from a model or a per-crew config)."""

    deny: list[str] = Field(default_factory=list)
    actions: dict[str, RuleOverride] = Field(default_factory=dict)


def _ranked(rank: Mapping[str, int]) -> Callable[[str, Any, Any], Any]:
    """Tighten a ranked setting: the new value may only be equal or higher."""

    def tighten(name: str, old: Any, new: Any) -> Any:
        if old is not None and rank[new] < rank[old]:
            raise PolicyLoosening(f"{name}: {new} is looser than {old}")
        return new

    return tighten


def _flag(name: str, old: bool, new: bool) -> bool:
    if old and not new:
        raise PolicyLoosening(f"{name}: cannot turn off")
    return new


def _subset(name: str, old: list[str] | None, new: list[str]) -> list[str]:
    if old is not None and not set(new) <= set(old):
        raise PolicyLoosening(f"{name}: {sorted(set(new) - set(old))} would newly run automatically")
    return list(new)


def _rate(name: str, old: RateLimit | None, new: RateLimit) -> RateLimit:
    if old is not None and (new.max > old.max or new.per_seconds < old.per_seconds):
        raise PolicyLoosening(f"{name}: {new.max}/{new.per_seconds:g}s is looser than {old.max}/{old.per_seconds:g}s")
    return new


_TIGHTENERS: dict[str, Callable[[str, Any, Any], Any]] = {
    "approval": _ranked(APPROVAL_RANK),
    "disruptive": _flag,
    "requires_verified": _flag,
    "target_in_case": _flag,
    "min_confidence": _ranked(CONFIDENCE_RANK),
    "auto_min_confidence": _ranked(CONFIDENCE_RANK),
    "min_verdict": _ranked(VERDICT_RANK),
    "rate_limit": _rate,
}


def tighten_rule(action: str, rule: ActionRule, override: RuleOverride) -> ActionRule:
    """The rule with the override applied; raises PolicyLoosening on any loosening."""
    updates: dict[str, Any] = {}
    for field, tighten in _TIGHTENERS.items():
        new = getattr(override, field)
        if new is not None:
            updates[field] = tighten(f"{action}.{field}", getattr(rule, field), new)
    tiers = rule.tiers.model_copy(
        update={
            "deny_on_tiers": sorted(set(rule.tiers.deny_on_tiers) | set(override.deny_on_tiers)),
            "approval_on_tiers": sorted(set(rule.tiers.approval_on_tiers) | set(override.approval_on_tiers)),
        }
    )
    if override.auto_on_tiers is not None:
        tiers.auto_on_tiers = _subset(f"{action}.auto_on_tiers", rule.tiers.auto_on_tiers, override.auto_on_tiers)
    updates["tiers"] = tiers
    try:
        return ActionRule.model_validate({**rule.model_dump(), **updates})
    except ValueError as exc:
        raise PolicyError(f"{action}: {exc}") from None


class _Decision:
    """Collects the rules that fired; the outcome is the strictest of them."""

    def __init__(self) -> None:
        self.outcome: PolicyOutcome = "auto"
        self.reasons: list[str] = []

    def fire(self, outcome: PolicyOutcome, rule: str, message: str) -> None:
        if OUTCOME_RANK[outcome] > OUTCOME_RANK[self.outcome]:
            self.outcome = outcome
        self.reasons.append(f"{rule}: {message}")


class ResponsePolicy:
    """The validated policy plus the asset inventory its tier rules read."""

    def __init__(self, config: PolicyConfig, inventory: AssetInventory) -> None:
        self.config = config
        self.inventory = inventory

    @classmethod
    def load(
        cls, source: Path | str | Mapping[str, Any] | None = None, inventory: AssetInventory | None = None
    ) -> "ResponsePolicy":
        """From a YAML path or a mapping; None loads the shipped `config/policy.yaml` (and assets)."""
        if source is None:
            source = Path(str(resources.files("siemcrew.config") / "policy.yaml"))
        return cls(load_yaml_model(source, PolicyConfig, PolicyError), inventory or AssetInventory.load())

    def rule_for(self, action: str) -> ActionRule:
        return self.config.actions.get(action, self.config.default)

    def one_per_target(self, proposals: list[ActionProposal]) -> list[ActionProposal]:
        """The first proposal per action and target as the target's kind reads it (`jdoe` and
        `CORP\\jdoe`, `WS-01` and `ws-01.corp.local` are one each), so an approver is never
        asked twice to act on one account or host, and a decision is never split between two spellings."""
        kept: list[ActionProposal] = []
        for proposal in proposals:
            kind = self.rule_for(proposal.action).target
            if not any(k.action == proposal.action and same_target(kind, k.target, proposal.target) for k in kept):
                kept.append(proposal)
        return kept

    def tighten(self, override: PolicyOverride) -> "ResponsePolicy":
        """A stricter copy of this policy; any loosening raises PolicyLoosening."""
        unknown = sorted(set(override.actions) - set(self.config.actions))
        if unknown:
            raise PolicyError(
                f"override names unknown actions {unknown}: unknown actions are already governed by `default`"
            )
        actions = {
            name: tighten_rule(name, rule, override.actions[name]) if name in override.actions else rule
            for name, rule in self.config.actions.items()
        }
        for name in override.deny:
            if name in actions:
                actions[name] = actions[name].model_copy(update={"approval": "never"})
        return ResponsePolicy(PolicyConfig(default=self.config.default, actions=actions), self.inventory)

    def evaluate(
        self,
        case: Case,
        proposal: ActionProposal,
        recent_count: RecentCount,
        now: datetime | None = None,
        stricter: PolicyOverride | None = None,
    ) -> PolicyDecision:
        """Decide auto | approval_required | denied, naming every rule that fired."""
        if stricter is not None:
            return self.tighten(stricter).evaluate(case, proposal, recent_count, now=now)
        now = now or utcnow()
        action = proposal.action
        known = action in self.config.actions
        rule = self.rule_for(action)
        decision = _Decision()
        base = APPROVAL_OUTCOME[rule.approval]
        if not known:
            decision.fire(
                base, "unknown_action", f"{action!r} is not in the policy; default is approval={rule.approval}"
            )
        else:
            decision.fire(base, "approval", f"{action} is approval={rule.approval}")
        subject = (
            str(proposal.args.get(rule.target) or proposal.target).strip()
            if rule.target in ("host", "user")
            else proposal.target
        )
        if not proposal.target.strip():
            decision.fire("denied", "target", "the proposal names no target")
        named = proposal.args.get(rule.target) if rule.target in ("host", "user") else None
        shown = proposal.target.split(":")[0] if rule.target == "host" else proposal.target  # host:pid
        if named is not None and str(named).strip().lower() != shown.strip().lower():
            # What an approver reads (the target) must be what the executor acts on (the arguments).
            decision.fire("denied", "target", f"arguments name {rule.target} {named!r}, the target is {proposal.target!r}")
        well_formed = _check_syntax(decision, rule, case, proposal)
        self._check_case(decision, rule, case)
        _check_evidence(decision, rule, case, proposal)
        if rule.disruptive and well_formed:
            _check_grounds(decision, rule, case, proposal)
        if rule.target in ("host", "user") and subject and well_formed:
            self._check_target(decision, rule, case, subject)
        if rule.target == "indicator" and well_formed:
            self._check_indicator(decision, rule, case, proposal.target)
        if rule.rate_limit is not None:
            since = now.timestamp() - rule.rate_limit.per_seconds
            count = recent_count(action, since)
            if count >= rule.rate_limit.max:
                decision.fire(
                    "denied",
                    "rate_limit",
                    f"{count} {action} in the last {rule.rate_limit.per_seconds:g}s (max {rule.rate_limit.max})",
                )
        return PolicyDecision(
            action=action,
            target=proposal.target,
            args_sha256=proposal.args_sha256,
            outcome=decision.outcome,
            reasons=decision.reasons,
            decided_at=now,
        )

    @staticmethod
    def _check_case(decision: _Decision, rule: ActionRule, case: Case) -> None:
        """Verification, confidence and verdict gates, from the case's structured fields only."""
        if rule.requires_verified or rule.disruptive:
            latest = case.verification
            if latest is None:
                decision.fire("denied", "requires_verified", "the case has not been verified")
            elif latest.status != "complete":
                decision.fire(
                    "denied",
                    "requires_verified",
                    f"latest verification (round {latest.round}) is {latest.status} with {len(latest.gaps)} gap(s)",
                )
        if rule.min_confidence and CONFIDENCE_RANK[case.confidence] < CONFIDENCE_RANK[rule.min_confidence]:
            decision.fire("denied", "min_confidence", f"case confidence {case.confidence} < {rule.min_confidence}")
        if rule.auto_min_confidence and CONFIDENCE_RANK[case.confidence] < CONFIDENCE_RANK[rule.auto_min_confidence]:
            decision.fire(
                "approval_required",
                "auto_min_confidence",
                f"case confidence {case.confidence} < {rule.auto_min_confidence} for automatic execution",
            )
        if rule.min_verdict and VERDICT_RANK[case.verdict] < VERDICT_RANK[rule.min_verdict]:
            decision.fire("denied", "min_verdict", f"case verdict {case.verdict} < {rule.min_verdict}")
        if rule.verdicts is not None and case.verdict not in rule.verdicts:
            decision.fire("denied", "verdicts", f"case verdict {case.verdict} is not one of {rule.verdicts}")

    def _check_target(self, decision: _Decision, rule: ActionRule, case: Case, subject: str) -> None:
        """Tier rules and case scope for a host or user target."""
        if rule.target == "host":
            host = self.inventory.host(subject)
            tier, label = host.tier, f"host {subject} is {host.tier} ({host.role})"
        else:
            identity = self.inventory.identity(subject)
            tier, label = identity.tier, f"user {subject} is {identity.tier} ({identity.role})"
        tiers = rule.tiers
        if tier in tiers.deny_on_tiers:
            decision.fire("denied", "deny_on_tiers", f"{label}: denied on {tier}")
        if tier in tiers.approval_on_tiers:
            decision.fire("approval_required", "approval_on_tiers", f"{label}: approval required on {tier}")
        if tiers.auto_on_tiers is not None and tier not in tiers.auto_on_tiers:
            decision.fire(
                "approval_required",
                "auto_on_tiers",
                f"{label}: automatic only on {', '.join(tiers.auto_on_tiers) or 'no tier'}",
            )
        if rule.target_in_case and not _in_case(rule.target, subject, case):
            decision.fire("denied", "target_in_case", f"{rule.target} {subject} is not an entity of case {case.id}")


    def _check_indicator(self, decision: _Decision, rule: ActionRule, case: Case, indicator: str) -> None:
        """An address of the organisation's own, or a name the inventory knows, is never blocked without a
        human (tier rules apply to a named asset); the indicator must be one the case's evidence shows."""
        if internal_address(indicator):
            decision.fire("approval_required", "internal_indicator", f"{indicator} is an internal address")
        # the asset an indicator names: a host name the inventory knows, or the hosts the case resolved an
        # address to; tier rules apply to it as to a host target
        assets = [indicator] if valid("domain", indicator) else sorted(address_owners(case.evidence, indicator))
        for name in assets:
            host = self.inventory.host(name)
            if host.tier == "unknown":
                continue
            decision.fire("approval_required", "internal_indicator", f"{indicator} is {name}: {host.tier} ({host.role})")
            if host.tier in rule.tiers.deny_on_tiers:
                decision.fire("denied", "deny_on_tiers", f"{indicator} is {name}: denied on {host.tier}")
        if rule.target_in_case and not any(names(item, "indicator", indicator) for item in case.evidence):
            decision.fire("denied", "target_in_case", f"indicator {indicator} appears in no evidence of case {case.id}")


def _check_syntax(decision: _Decision, rule: ActionRule, case: Case, proposal: ActionProposal) -> bool:
    """The target and arguments have their kind's syntax; an alert or case target is this case's own.
    A value shaped like a sentence never reaches an approver or an executor."""
    target, ok = proposal.target.strip(), True
    if rule.target == "host":
        ok = valid("host", target) or process_target(target) is not None
    elif rule.target in ("user", "indicator"):
        ok = valid(rule.target, target)
    elif rule.target == "alert":
        ok = target in {alert.id for alert in case.alerts}
    elif rule.target == "case":
        ok = target == case.id
    value = proposal.args.get("value")
    if rule.target == "indicator" and value is not None and str(value).strip().lower() != target.lower():
        decision.fire("denied", "target", f"arguments name {str(value)[:80]!r}, the target is {target[:80]!r}")
    if not ok:
        decision.fire("denied", "target_syntax", f"{proposal.target[:80]!r} is not a {rule.target} this case can act on")
    if rule.args is not None:
        for key, value in proposal.args.items():
            kind = rule.args.get(key)
            if kind is None:
                decision.fire("denied", "arguments", f"{proposal.action} takes no argument {key[:40]!r}")
                ok = False
            elif not valid(kind, value):
                decision.fire("denied", "arguments", f"argument {key[:40]!r} is not a valid {kind}")
                ok = False
    return ok


def _check_evidence(decision: _Decision, rule: ActionRule, case: Case, proposal: ActionProposal) -> None:
    """Cited evidence must exist; a disruptive action must cite evidence whose rows name its target."""
    known = case.evidence_by_id()
    missing = [eid for eid in proposal.evidence_ids if eid not in known]
    if missing:
        decision.fire("denied", "evidence", f"cites evidence that does not exist: {', '.join(m[:20] for m in missing[:3])}")
        return
    if not rule.disruptive:
        return
    cited = [known[eid] for eid in proposal.evidence_ids]
    if not cited:
        decision.fire("denied", "evidence", f"{proposal.action} cites no evidence")
        return
    target = proposal.target.strip()
    if rule.target == "host":
        process = process_target(target)
        host = str(proposal.args.get("host") or target).strip()
        shown = any(process_named(e, *process) for e in cited) if process else any(names(e, "host", host) for e in cited)
    elif rule.target in ("user", "indicator"):
        shown = any(names(e, rule.target, str(proposal.args.get(rule.target) or target)) for e in cited)
    else:
        shown = True
    if not shown:
        decision.fire("denied", "evidence", f"no cited evidence names {rule.target} {target[:80]!r}")


def _check_grounds(decision: _Decision, rule: ActionRule, case: Case, proposal: ActionProposal) -> None:
    """A disruptive action's target must be one the deterministic reading of the evidence holds against
    (the verifier's grounds): a host or account it finds affected, a process it finds malicious, an
    indicator it finds rare and contacted. A name planted in a log and repeated by a model is none of these."""
    latest = case.verification
    if latest is None:
        return  # requires_verified has denied it already
    grounds, target = latest.grounds, proposal.target.strip()
    if rule.target == "host" and process_target(target):
        host, pid = process_target(target)  # type: ignore[misc]
        held = any(same_host(host, h) and int(p) == pid for h, _, p in (g.rpartition(":") for g in grounds.processes))
    elif rule.target == "host":
        held = any(same_host(str(proposal.args.get("host") or target), h) for h in grounds.hosts)
    elif rule.target == "user":
        held = any(same_account(str(proposal.args.get("user") or target), u) for u in grounds.users)
    elif rule.target == "indicator":
        held = target.lower() in {i.lower() for i in grounds.indicators}
    else:
        return
    if not held:
        decision.fire("denied", "grounds", f"the recorded evidence does not hold {rule.target} {target[:80]!r} "
                                           "against this case (not in the verifier's grounds)")


def _in_case(kind: TargetKind, subject: str, case: Case) -> bool:
    """Is the host/user one the case is about (alert entities or affected hosts/users)?"""
    if kind == "host":
        names = [h for alert in case.alerts for h in alert.entities.hosts] + case.affected_hosts
        wanted = set(host_forms(subject))
        return any(wanted & set(host_forms(name)) for name in names)
    names = [u for alert in case.alerts for u in alert.entities.users] + case.affected_users
    want_name, want_domain = split_user(subject)
    for name in names:
        have_name, have_domain = split_user(name)
        if have_name == want_name and (want_domain is None or have_domain is None or want_domain == have_domain):
            return True
    return False
