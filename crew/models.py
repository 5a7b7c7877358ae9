"""The domain model: alerts, evidence, findings, stage results, proposals, approvals and the case.

Everything here is a pydantic v2 model so that it can be persisted, hashed, shown and validated
the same way by the flow, the CLI, the service and the tests.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema

from siemcrew.crew.timeutil import iso, parse_time, utcnow

Verdict = Literal["benign", "suspicious", "malicious", "inconclusive"]
Confidence = Literal["low", "medium", "high"]
EvidenceStatus = Literal["ok", "empty", "error"]
# needs_human: the task queue gave up on the case (crew/queue/deadletter.py); `case.dead_letter` says why
CaseStatus = Literal["new", "investigating", "awaiting_approval", "escalated", "closed", "failed", "needs_human"]
PolicyOutcome = Literal["auto", "approval_required", "denied"]
ActionState = Literal["pending", "done", "failed", "timed_out", "dry_run", "skipped"]


def canonical_json(value: Any) -> str:
    """Canonical JSON (sorted keys, no spaces): the one byte form that hashes are taken over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def sha256_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


MAX_PAYLOAD_DEPTH = 32  # Splunk results and Elastic alert documents nest a handful of levels
MAX_PAYLOAD_BYTES = 1_000_000


STORED = "stored"
"""Validation context key for a body read back from siemcrew's own store (checked at intake already)."""


def payload_depth(value: Any, stop: int) -> int:
    """How deeply lists and objects nest in `value` (iteratively, and no further than stop + 1)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if not isinstance(item, (dict, list)):
            continue
        deepest = max(deepest, depth)
        if depth > stop:
            return depth
        todo.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


# A timestamp as alerts carry it: ISO 8601 text, or epoch seconds (Splunk's _time) -- what `parse_time` reads
Moment = Annotated[datetime, WithJsonSchema({"anyOf": [{"type": "string", "format": "date-time"},
                                                        {"type": "number", "minimum": 0, "maximum": 32503680000}]})]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class TimeRange(Model):
    start: datetime
    end: datetime

    @field_validator("start", "end", mode="before")
    @classmethod
    def _aware(cls, value: Any) -> datetime:
        parsed = None if isinstance(value, bool) else parse_time(value)
        if parsed is None:
            raise ValueError(f"not a timestamp: {value!r}")
        return parsed

    @classmethod
    def around(cls, moment: datetime, before: timedelta, after: timedelta) -> "TimeRange":
        return cls(start=moment - before, end=moment + after)

    def covers(self, other: "TimeRange") -> bool:
        return self.start <= other.start and self.end >= other.end

    def label(self) -> str:
        return f"{iso(self.start)}..{iso(self.end)}"


class ProcessRef(Model):
    executable: str | None = None
    command_line: str | None = None
    pid: int | None = None
    entity_id: str | None = None
    parent_executable: str | None = None
    parent_command_line: str | None = None
    parent_pid: int | None = None
    parent_entity_id: str | None = None
    hash_sha256: str | None = None


class Entities(Model):
    """The entities an alert names; the verifier checks that each one was pivoted on."""

    hosts: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    processes: list[str] = Field(default_factory=list)
    ips: list[str] = Field(default_factory=list)
    hashes: list[str] = Field(default_factory=list)
    files: list[str] = Field(default_factory=list)

    def items(self) -> list[tuple[str, str]]:
        """(entity type, value) pairs in a stable order."""
        pairs: list[tuple[str, str]] = []
        for kind in ("hosts", "users", "processes", "ips", "hashes", "files"):
            for value in getattr(self, kind):
                pairs.append((kind[:-1] if kind != "processes" else "process", value))
        return pairs


class Alert(Model):
    """A normalized alert from any source, with the raw payload kept as it came."""

    id: str
    source: str = "local"
    rule_name: str
    rule_id: str | None = None
    rule_path: str | None = None
    severity: str = "medium"
    risk_score: float | None = None
    description: str = ""
    timestamp: Moment
    first_seen: Moment | None = None
    last_seen: Moment | None = None
    techniques: list[str] = Field(default_factory=list)
    tactics: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    entities: Entities = Field(default_factory=Entities)
    process: ProcessRef | None = None
    event: dict[str, Any] = Field(default_factory=dict)
    scope: str | None = None
    drilldown: str | None = None
    link: str | None = None
    raw: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timestamp", "first_seen", "last_seen", mode="before")
    @classmethod
    def _aware(cls, value: Any) -> datetime | None:
        if value is None:
            return None
        parsed = None if isinstance(value, bool) else parse_time(value)  # true is no epoch second
        if parsed is None:
            raise ValueError(f"not a timestamp: {value!r}")
        return parsed

    @field_validator("techniques", mode="before")
    @classmethod
    def _techniques(cls, value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else list(value or [])
        out: list[str] = []
        for item in items:
            text = str(item).strip().upper().removeprefix("ATTACK.")
            if text and text not in out:
                out.append(text)
        return out

    @field_validator("raw", "event", mode="before")
    @classmethod
    def _bounded(cls, value: Any, info: Any) -> Any:
        """Refused at the edge, naming the limit: a payload nested or sized past what any SIEM sends would
        be stored, and then no one could read the case back (JSON and pydantic recursion limits). Bodies read
        back from siemcrew's own store (context STORED) passed this check at intake and are not walked again."""
        if info.context and info.context.get(STORED):
            return value
        depth = payload_depth(value, MAX_PAYLOAD_DEPTH)
        if depth > MAX_PAYLOAD_DEPTH:
            raise ValueError(f"{info.field_name} nests deeper than {MAX_PAYLOAD_DEPTH} levels (the limit for an alert)")
        if isinstance(value, dict) and len(canonical_json(value)) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"{info.field_name} is larger than {MAX_PAYLOAD_BYTES} bytes (the limit for an alert)")
        return value

    @property
    def primary_host(self) -> str | None:
        return self.entities.hosts[0] if self.entities.hosts else None


class Evidence(Model):
    """What one query returned. Written by tools, never by a model."""

    id: str = ""
    kind: str
    entity_type: str | None = None
    entity: str | None = None
    connector: str
    language: str
    query: str
    time_range: TimeRange | None = None
    count: int = 0
    sample: list[dict[str, Any]] = Field(default_factory=list)
    truncated: bool = False
    status: EvidenceStatus
    error: str | None = None
    tool: str = ""
    agent: str | None = None
    round: int = 0
    collected_at: datetime = Field(default_factory=utcnow)
    content_hash: str = ""

    def seal(self) -> "Evidence":
        """Fix the content hash and the id derived from it (idempotent)."""
        body = self.model_dump(mode="json", exclude={"id", "content_hash", "collected_at"})
        self.content_hash = sha256_of(body)
        self.id = "ev-" + self.content_hash[:12]
        return self

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> "Evidence":
        """Sealed evidence never changes, so copies of a case share it: crewAI deep-copies the flow state
        (the case) at every step, and the evidence samples are most of it."""
        if self.content_hash:
            return self
        return super().__deepcopy__(memo)


class Finding(Model):
    """A claim an agent makes; it must cite evidence ids that exist in the case.

    `id`, `agent` and `technique` are filled by the code when the finding is accepted (crew/context.py),
    so they are left out of the schema a model is asked to answer with."""

    id: SkipJsonSchema[str] = ""
    agent: SkipJsonSchema[str] = ""
    kind: Literal["malicious", "suspicious", "benign", "context"] = "context"
    confidence: Confidence = "medium"
    statement: str
    evidence_ids: list[str] = Field(default_factory=list)
    entities: list[str] = Field(default_factory=list)
    technique: SkipJsonSchema[str | None] = None


class TriageResult(Model):
    verdict: Verdict
    confidence: Confidence
    summary: str
    findings: list[Finding] = Field(default_factory=list)
    pivots: list[str] = Field(default_factory=list)


class HuntResult(Model):
    summary: str
    findings: list[Finding] = Field(default_factory=list)
    affected_hosts: list[str] = Field(default_factory=list)
    affected_users: list[str] = Field(default_factory=list)
    pivoted: list[str] = Field(default_factory=list)


class ImpactAssessment(Model):
    verdict: Verdict
    confidence: Confidence
    severity: Literal["low", "medium", "high", "critical"] = "medium"
    summary: str
    affected_hosts: list[str] = Field(default_factory=list)
    affected_users: list[str] = Field(default_factory=list)
    critical_assets: list[str] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)


class Gap(Model):
    check: str
    detail: str
    hint: str | None = None


class Grounds(Model):
    """What the deterministic reading of the recorded evidence holds against, at verification: the hosts
    and accounts it finds affected, the processes it finds malicious (host:pid) and the indicators it finds
    rare and contacted by them. A disruptive action may target nothing else, whoever proposed it."""

    hosts: list[str] = Field(default_factory=list)
    users: list[str] = Field(default_factory=list)
    processes: list[str] = Field(default_factory=list)
    indicators: list[str] = Field(default_factory=list)


class VerificationReport(Model):
    status: Literal["complete", "incomplete"]
    round: int = 0
    gaps: list[Gap] = Field(default_factory=list)
    passed: list[str] = Field(default_factory=list)
    concerns: list[str] = Field(default_factory=list)
    grounds: SkipJsonSchema[Grounds] = Field(default_factory=Grounds)  # written by the verifier's code only


class ActionProposal(Model):
    action: str
    target: str
    args: dict[str, Any] = Field(default_factory=dict)
    reason: str = ""
    evidence_ids: list[str] = Field(default_factory=list)
    proposed_by: SkipJsonSchema[str] = "responder"  # filled by the code, not asked of a model

    @property
    def args_sha256(self) -> str:
        return sha256_of({"action": self.action, "target": self.target, "args": self.args})

    def key(self, case_id: str) -> str:
        """The idempotency key: one execution per (case, action, target)."""
        return f"{case_id}:{self.action}:{self.target}"


class ResponsePlan(Model):
    """What the responder proposes; every item still passes the policy gate."""

    summary: str = ""
    proposals: list[ActionProposal] = Field(default_factory=list)


class PolicyDecision(Model):
    action: str
    target: str
    args_sha256: str
    outcome: PolicyOutcome
    reasons: list[str] = Field(default_factory=list)
    decided_at: datetime = Field(default_factory=utcnow)


class Approval(Model):
    case_id: str
    action: str
    target: str
    args_sha256: str
    decision: Literal["approve", "deny"]
    by: str
    reason: str
    at: datetime = Field(default_factory=utcnow)
    expires_at: datetime

    def applies_to(self, case_id: str, proposal: ActionProposal, now: datetime | None = None) -> bool:
        """True only for the exact case, action, target and canonical arguments, before expiry."""
        now = now or utcnow()
        return (
            self.case_id == case_id
            and self.action == proposal.action
            and self.target == proposal.target
            and self.args_sha256 == proposal.args_sha256
            and now < self.expires_at
        )


class ActionResult(Model):
    key: str
    action: str
    target: str
    state: ActionState
    executor: str
    detail: str = ""
    ticket: str | None = None
    at: datetime = Field(default_factory=utcnow)


class TimelineEntry(Model):
    at: datetime = Field(default_factory=utcnow)
    actor: str
    event: str
    detail: str = ""


class Halt(Model):
    """Why a case stopped before the crew finished: its model failed or its LLM budget ran out. The case is
    escalated to a human with what it gathered; `siemcrew rerun` continues it from the stage that stopped."""

    reason: Literal["model_unavailable", "budget_exhausted"]
    stage: str
    round: int = 0
    detail: str = ""
    budget: dict[str, int] = Field(default_factory=dict)  # the LLM budget in force when it stopped
    at: datetime = Field(default_factory=utcnow)


class DeadLetter(Model):
    """Why the task queue stopped working a case and handed it to a human: the task (investigate, resume,
    execute) kept failing after its retries, or its deliveries kept killing the worker running them.
    Nothing was written to the SIEM; `siemcrew cases requeue` puts the task back once the cause is fixed."""

    task: str
    reason: str
    attempts: int = 0
    status: str = "investigating"  # the case's status before; a requeue restores it
    at: datetime = Field(default_factory=utcnow)


class Case(Model):
    """One persistent investigation; the crewAI flow state holds exactly this."""

    id: str
    status: CaseStatus = "new"
    verdict: Verdict = "inconclusive"
    confidence: Confidence = "low"
    summary: str = ""
    alerts: list[Alert] = Field(default_factory=list)
    alerts_beyond: int = 0
    """Duplicates grouped into this case beyond those its body keeps (crew/casestore.py ALERTS_IN_CASE)."""
    round: int = 0
    evidence: list[Evidence] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)
    triage: TriageResult | None = None
    hunts: list[HuntResult] = Field(default_factory=list)
    impact: ImpactAssessment | None = None
    verifications: list[VerificationReport] = Field(default_factory=list)
    proposals: list[ActionProposal] = Field(default_factory=list)
    decisions: list[PolicyDecision] = Field(default_factory=list)
    approvals: list[Approval] = Field(default_factory=list)
    results: list[ActionResult] = Field(default_factory=list)
    affected_hosts: list[str] = Field(default_factory=list)
    affected_users: list[str] = Field(default_factory=list)
    timeline: list[TimelineEntry] = Field(default_factory=list)
    # llm_calls: HTTP requests sent to a model (SDK retries and crewAI's converter re-asks included);
    # llm_tokens: the provider's `usage` totals, estimated where it gave none; brain_calls: answers asked
    # of any brain, the deterministic playbooks included. All three add up over every attempt.
    llm_calls: int = 0
    llm_tokens: int = 0
    brain_calls: int = 0
    # stages whose output is on the case ("triage", "hunter@0", "impact@0", "verifier@0", "responder"):
    # a flow run again on this case (after a crash, or a rerun after a halt) takes them as done
    stages_done: list[str] = Field(default_factory=list)
    halt: Halt | None = None
    dead_letter: DeadLetter | None = None
    queries: int = 0
    unsupported_findings: int = 0
    flow_id: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def alert(self) -> Alert:
        return self.alerts[0]

    @property
    def verification(self) -> VerificationReport | None:
        return self.verifications[-1] if self.verifications else None

    def evidence_by_id(self) -> dict[str, Evidence]:
        return {item.id: item for item in self.evidence}

    def note(self, actor: str, event: str, detail: str = "") -> None:
        self.timeline.append(TimelineEntry(actor=actor, event=event, detail=detail))
        self.updated_at = utcnow()
