"""Bound approvals: exact-args binding, expiry, denial, double decisions and cross-process races."""

from __future__ import annotations

import multiprocessing
from datetime import timedelta

import pytest

from siemcrew.crew.approvals import ApprovalError, ApprovalStore
from siemcrew.crew.models import ActionProposal, PolicyDecision
from siemcrew.crew.timeutil import utcnow
from servers.postgres import StateDb

ISOLATE = ActionProposal(action="isolate_host", target="WS-01", args={"comment": "ransomware"}, reason="beaconing")


def needs_approval(proposal: ActionProposal) -> PolicyDecision:
    return PolicyDecision(
        action=proposal.action,
        target=proposal.target,
        args_sha256=proposal.args_sha256,
        outcome="approval_required",
        reasons=["approval: isolate_host is approval=required"],
    )


@pytest.fixture
def store(state_db: StateDb) -> ApprovalStore:
    """Every test taking `store` runs on SQLite and on PostgreSQL."""
    return ApprovalStore(state_db.target("approvals"))


def test_request_is_listed_and_idempotent(store: ApprovalStore) -> None:
    first = store.request("case-1", ISOLATE, needs_approval(ISOLATE), flow_id="flow-9")
    again = store.request("case-1", ISOLATE, needs_approval(ISOLATE), flow_id="flow-9")
    assert first.id == again.id
    (pending,) = store.pending()
    assert (pending.case_id, pending.action, pending.target, pending.flow_id) == (
        "case-1",
        "isolate_host",
        "WS-01",
        "flow-9",
    )
    assert pending.args == {"comment": "ransomware"} and pending.args_sha256 == ISOLATE.args_sha256
    assert pending.reason == "beaconing" and pending.policy_reasons == ["approval: isolate_host is approval=required"]
    assert store.pending("other-case") == []


def test_request_refuses_a_decision_for_other_arguments_or_no_approval(store: ApprovalStore) -> None:
    changed = ISOLATE.model_copy(update={"args": {"comment": "other"}})
    with pytest.raises(ApprovalError, match="different"):
        store.request("case-1", changed, needs_approval(ISOLATE))
    auto = needs_approval(ISOLATE).model_copy(update={"outcome": "auto"})
    with pytest.raises(ApprovalError, match="not approval_required"):
        store.request("case-1", ISOLATE, auto)


def test_approval_applies_only_to_the_exact_action(store: ApprovalStore) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    approval = store.decide("case-1", "isolate_host", "approve", by="alice", reason="confirmed C2")
    assert approval.args_sha256 == ISOLATE.args_sha256 and approval.by == "alice"
    assert store.valid_for("case-1", ISOLATE) == approval
    assert store.pending() == []
    assert store.valid_for("case-1", ISOLATE.model_copy(update={"args": {"comment": "ransomware", "x": 1}})) is None
    assert store.valid_for("case-1", ISOLATE.model_copy(update={"target": "WS-02"})) is None
    assert store.valid_for("case-1", ISOLATE.model_copy(update={"action": "kill_process"})) is None
    assert store.valid_for("case-2", ISOLATE) is None
    assert store.decisions("case-1") == [approval]


def test_approval_expires(store: ApprovalStore) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    approval = store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", ttl_seconds=60)
    assert approval.expires_at - approval.at == timedelta(seconds=60)
    assert store.valid_for("case-1", ISOLATE, now=approval.at + timedelta(seconds=59)) is not None
    assert store.valid_for("case-1", ISOLATE, now=approval.at + timedelta(seconds=61)) is None


def test_expired_approval_is_asked_again(store: ApprovalStore) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", ttl_seconds=0.001)
    assert store.request("case-1", ISOLATE, needs_approval(ISOLATE)).state == "pending"
    assert len(store.pending()) == 1


def test_deny_never_applies_and_is_not_asked_again(store: ApprovalStore) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    denial = store.decide("case-1", "isolate_host", "deny", by="bob", reason="business critical")
    assert denial.decision == "deny"
    assert store.valid_for("case-1", ISOLATE) is None
    assert store.decision_for("case-1", ISOLATE) == denial
    again = store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    assert again.state == "decided" and store.pending() == []


def test_a_later_deny_overrides_an_earlier_approve_of_the_same_args(store: ApprovalStore) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", ttl_seconds=0.001)
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    store.decide("case-1", "isolate_host", "deny", by="bob", reason="no")
    assert store.valid_for("case-1", ISOLATE) is None
    assert [d.decision for d in store.decisions("case-1")] == ["approve", "deny"]


def test_double_decide_is_an_error(store: ApprovalStore) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok")
    with pytest.raises(ApprovalError, match="already decided: approve by alice"):
        store.decide("case-1", "isolate_host", "deny", by="bob", reason="no")
    assert [d.decision for d in store.decisions("case-1")] == ["approve"]


def test_nothing_pending_is_an_error(store: ApprovalStore) -> None:
    with pytest.raises(ApprovalError, match="nothing is pending"):
        store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok")


@pytest.mark.parametrize(
    ("by", "reason", "decision", "ttl", "match"),
    [
        ("", "ok", "approve", 60, "by"),
        ("  ", "ok", "approve", 60, "by"),
        ("alice", "", "approve", 60, "reason"),
        ("alice", "ok", "maybe", 60, "approve"),
        ("alice", "ok", "approve", 0, "ttl"),
    ],
)
def test_decide_validates_input(
    store: ApprovalStore, by: str, reason: str, decision: str, ttl: int, match: str
) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    with pytest.raises(ApprovalError, match=match):
        store.decide("case-1", "isolate_host", decision, by=by, reason=reason, ttl_seconds=ttl)  # type: ignore[arg-type]
    assert len(store.pending()) == 1


def test_several_targets_need_a_target(store: ApprovalStore) -> None:
    other = ISOLATE.model_copy(update={"target": "WS-02"})
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    store.request("case-1", other, needs_approval(other))
    with pytest.raises(ApprovalError, match="WS-01, WS-02"):
        store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok")
    approval = store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", target="WS-02")
    assert approval.target == "WS-02" and store.valid_for("case-1", other) is not None
    assert store.valid_for("case-1", ISOLATE) is None
    assert [p.target for p in store.pending()] == ["WS-01"]


def test_new_arguments_supersede_the_pending_request(store: ApprovalStore) -> None:
    changed = ISOLATE.model_copy(update={"args": {"comment": "changed"}})
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    store.request("case-1", changed, needs_approval(changed))
    (pending,) = store.pending()
    assert pending.args_sha256 == changed.args_sha256
    store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok")
    assert store.valid_for("case-1", changed) is not None
    assert store.valid_for("case-1", ISOLATE) is None


def test_store_is_shared_between_instances(state_db: StateDb) -> None:
    where = state_db.target("approvals")
    ApprovalStore(where).request("case-1", ISOLATE, needs_approval(ISOLATE))
    ApprovalStore(where).decide("case-1", "isolate_host", "approve", by="alice", reason="ok")
    assert ApprovalStore(where).valid_for("case-1", ISOLATE, now=utcnow()) is not None


def _decide(path: str, who: str, start, results) -> None:  # type: ignore[no-untyped-def]
    store = ApprovalStore(path)
    start.wait()
    try:
        store.decide("case-1", "isolate_host", "approve" if who == "alice" else "deny", by=who, reason="race")
        results.put((who, "won"))
    except ApprovalError as exc:
        results.put((who, str(exc)))


def test_two_processes_deciding_at_once_exactly_one_wins(state_db: StateDb) -> None:
    path = state_db.target("approvals")
    ApprovalStore(path).request("case-1", ISOLATE, needs_approval(ISOLATE))
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    workers = [context.Process(target=_decide, args=(path, who, start, results)) for who in ("alice", "bob")]
    for worker in workers:
        worker.start()
    start.set()
    outcomes = dict(results.get(timeout=30) for _ in workers)
    for worker in workers:
        worker.join(timeout=30)
    winners = [who for who, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1
    loser = "bob" if winners == ["alice"] else "alice"
    assert "already decided" in outcomes[loser]
    (decision,) = ApprovalStore(path).decisions("case-1")
    assert decision.by == winners[0]


def test_policy_approval_and_ledger_together_execute_once(state_db: StateDb) -> None:
    from siemcrew.crew.ledger import ActionLedger
    from siemcrew.crew.models import Alert, Case, Entities, Evidence, Grounds, VerificationReport
    from siemcrew.crew.policy import ResponsePolicy

    alert = Alert(id="a1", rule_name="r", timestamp=utcnow(), entities=Entities(hosts=["WS-01"]))
    case = Case(id="case-1", alerts=[alert], verdict="malicious", confidence="high")
    case.verifications.append(VerificationReport(status="complete", grounds=Grounds(hosts=["WS-01"])))
    seen = Evidence(kind="alert_events", connector="t", language="t", query="q", status="ok", count=1,
                    sample=[{"host.hostname": "WS-01"}]).seal()
    case.evidence.append(seen)
    isolate = ISOLATE.model_copy(update={"args": {"host": "WS-01"}, "evidence_ids": [seen.id]})
    store, ledger = ApprovalStore(state_db.target("approvals")), ActionLedger(state_db.target("ledger"))
    policy = ResponsePolicy.load()
    decision = policy.evaluate(case, isolate, ledger.count_since)
    assert decision.outcome == "approval_required"
    store.request(case.id, isolate, decision)
    assert store.valid_for(case.id, isolate) is None
    store.decide(case.id, "isolate_host", "approve", by="alice", reason="confirmed")
    executions = []
    for _ in range(2):
        if (
            store.valid_for(case.id, isolate)
            and ledger.claim(isolate.key(case.id), isolate.action, isolate.target, isolate.args_sha256).acquired
        ):
            executions.append(ledger.update(isolate.key(case.id), "done", "contained"))
    assert len(executions) == 1
    assert ledger.count_since("isolate_host", utcnow().timestamp() - 3600) == 1


# -- the reviewed sha256: the full 64 hex, compared where the request is picked ------------------------------------
@pytest.mark.parametrize("sha", ["", "a", ISOLATE.args_sha256[:12], ISOLATE.args_sha256 + "0", "z" * 64])
def test_only_a_full_sha256_is_accepted_as_the_reviewed_arguments(store: ApprovalStore, sha: str) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    with pytest.raises(ApprovalError, match="64 hex"):
        store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", args_sha256=sha)
    assert len(store.pending()) == 1


def test_the_reviewed_sha256_is_checked_against_the_request_that_is_decided(store: ApprovalStore) -> None:
    changed = ISOLATE.model_copy(update={"args": {"comment": "changed"}})
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    store.request("case-1", changed, needs_approval(changed))  # the responder changed the arguments meanwhile
    with pytest.raises(ApprovalError, match="changed since"):
        store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", args_sha256=ISOLATE.args_sha256)
    approval = store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok",
                            args_sha256=changed.args_sha256.upper())
    assert approval.args_sha256 == changed.args_sha256


def test_replaying_a_decided_approval_says_already_decided(store: ApprovalStore) -> None:
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", args_sha256=ISOLATE.args_sha256)
    with pytest.raises(ApprovalError, match="already decided: approve by alice"):
        store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", args_sha256=ISOLATE.args_sha256)
    changed = ISOLATE.model_copy(update={"args": {"comment": "changed"}})
    store.request("case-1", changed, needs_approval(changed))  # a new request is pending: the replay is still one
    with pytest.raises(ApprovalError, match="already decided: approve by alice"):
        store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", args_sha256=ISOLATE.args_sha256)


def test_the_decision_is_recorded_before_it_commits(store: ApprovalStore) -> None:
    """The audit record is written inside the deciding transaction: a decision that can let an action run
    is never in the store without being in the log (a failed record leaves nothing decided)."""
    store.request("case-1", ISOLATE, needs_approval(ISOLATE))
    seen: list[int] = []

    def record(approval: object) -> None:
        seen.append(len(store.pending()))  # another connection still sees the request pending
        raise RuntimeError("audit log unavailable")

    with pytest.raises(RuntimeError):
        store.decide("case-1", "isolate_host", "approve", by="alice", reason="ok", record=record)
    assert seen == [1] and len(store.pending()) == 1 and store.decisions("case-1") == []


def test_cli_refuses_a_short_sha_and_says_already_decided_on_a_replay(awaiting_isolation) -> None:  # noqa: ANN001
    from conftest import run_cli

    rt, case = awaiting_isolation
    (pending,) = rt.approvals.pending(case.id)
    config = str(rt.settings.config_path)
    base = ("approve", case.id, "isolate_host", "--by", "alice", "--reason", "ok", "--config", config)
    for short in ("", pending.args_sha256[:1]):
        refused = run_cli(*base, "--sha", short)
        assert refused.returncode == 6 and "64 hex" in " ".join(refused.stderr.split()), refused.stderr
    assert run_cli(*base, "--sha", pending.args_sha256).returncode == 0
    replay = run_cli(*base, "--sha", pending.args_sha256)
    assert replay.returncode == 6 and "already decided" in " ".join(replay.stderr.split()), replay.stderr
