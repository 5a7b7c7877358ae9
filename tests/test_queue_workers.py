"""The task queue with real workers: `siemcrew worker` processes on the session's real Redis, fed by
`siemcrew run` and `siemcrew serve`, over the demo's local source (no emulator needed).

What at-least-once delivery must never do, shown with the processes a deployment runs: lose a case,
open two cases for one alert, run an action twice, or let a task that kills its workers kill them
forever. Workers are killed with SIGKILL mid-investigation (a pool process) and mid-action (a whole
worker, as a lost machine), approvals are given while no worker runs, a flow pauses on one worker and
resumes on another, and poison lands in the dead-letter state where people see it.

The tests share one deployment and run in order (worker start-up, crewAI's import, is the cost):
the burst leaves cases waiting for approval that the next test decides while every worker is down.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from siemcrew.crew.checkpoints import CheckpointStore
from servers.workers import STOPS, Deployment, copies, demo_alert, demo_alerts, deployment, parent_pid

from emulators.e2e_helpers import EXPECTED, serve  # isort: skip

pytestmark = pytest.mark.timeout(300)
INTAKE_TOKEN = "queue-intake-token-0f3b9d"
ALICE = "queue-approver-alice-7c21e4"
BURST = copies(demo_alerts(), 2)


@pytest.fixture(scope="module")
def fleet(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """One deployment (its own home and queue): the demo alerts twice over, a serve config with an approver,
    short task limits (a whole worker's lost task returns after the 17 s visibility timeout)."""
    dep = deployment(tmp_path_factory.mktemp("fleet"), redis_server, BURST,
                     extra={"serve": {"approvers": {"alice": "SIEMCREW_TEST_ALICE"}}},
                     sweep_after_s=0.001, task_time_limit_s=15, visibility_timeout_s=17)
    dep.env.update({"SIEMCREW_SERVE_TOKEN": INTAKE_TOKEN, "SIEMCREW_TEST_ALICE": ALICE})
    try:
        yield dep
    finally:
        dep.stop_all()
        for worker in dep.workers:  # the broker password never reaches a log
            assert dep.env["SIEMCREW_QUEUE_PASSWORD"] not in worker.text(), worker.name


@pytest.fixture(scope="module")
def gateway(fleet: Deployment) -> Iterator[str]:
    """`siemcrew serve` on the fleet's config: with a queue it only admits, enqueues and takes decisions."""
    with serve(fleet.config, fleet.env, fleet.root / "serve.log") as url:
        yield url


def _intake(url: str, alert: dict[str, Any]) -> str:
    answer = httpx.post(f"{url}/v1/alerts", json=alert, headers={"Authorization": f"Bearer {INTAKE_TOKEN}"}, timeout=30)
    assert answer.status_code == 202 and answer.json()["accepted"] == 1, answer.text
    return str(answer.json()["case_ids"][0])


def _decide(url: str, pending: Any, decision: str) -> dict[str, Any]:
    answer = httpx.post(f"{url}/v1/cases/{pending.case_id}/actions/{pending.action}/{decision}",
                        json={"reason": "reviewed", "target": pending.target},
                        headers={"Authorization": f"Bearer {ALICE}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _quiet(dep: Deployment, redis: Any, timeout_s: float = 60.0) -> None:
    """Wait until the deployment's queue holds nothing: no task waiting, none delivered and unacknowledged."""
    import yaml

    name = yaml.safe_load(Path(dep.config).read_text(encoding="utf-8"))["queue"]["name"]
    client = redis.client()
    deadline = time.monotonic() + timeout_s
    while True:
        waiting = client.llen(name)
        unacked = [v for v in client.hgetall("unacked").values() if f'"{name}"'.encode() in v]
        if not waiting and not unacked:
            return
        assert time.monotonic() < deadline, f"queue {name} not empty: {waiting} waiting, {len(unacked)} unacked"
        time.sleep(0.3)


def _family(alert_id: str) -> str:
    return alert_id.rsplit("-c", 1)[0]


def _stopped(*ids: str) -> Any:
    return lambda cases: {c.id for c in cases if c.status in STOPS} >= set(ids)


def test_two_workers_finish_a_burst_with_no_duplicate_case_or_action(fleet: Deployment, redis_server: Any) -> None:
    dep = fleet
    first_worker = dep.start_worker("w1", wait=False)
    dep.start_worker("w2", concurrency=2, pool="threads")  # two tasks at once in one process
    dep.wait_ready(first_worker)
    first = dep.cli_json("run")
    assert (first["fetched"], first["enqueued"], first["investigated"]) == (len(BURST), len(BURST), 0), first
    # the same alerts fetched again while the workers hold them: a replay. With sweep_after_s tiny the
    # run also enqueues every unfinished case again: the duplicates at-least-once delivery produces
    CheckpointStore(dep.home / "cases.db").put("local", None)  # fetch from the start again
    replay = dep.cli_json("run")
    assert replay["fetched"] == len(BURST) and replay["skipped_known"] == len(BURST), replay
    dep.wait_cases(lambda cs: len(cs) == len(BURST) and all(c.status in STOPS for c in cs))
    _quiet(dep, redis_server)
    cases = dep.cases()

    assert sorted(c.alert.id for c in cases) == sorted(a["id"] for a in BURST)  # one case per alert, none twice
    for case in cases:
        if EXPECTED[_family(case.alert.id)]["verdict"] == "benign":
            assert (case.verdict, case.status) == ("benign", "closed"), case.id
        else:
            assert case.verdict in ("malicious", "suspicious") and case.status != "closed", case.id
    triaged = Counter(r["case_id"] for r in dep.audit("stage") if r["data"]["stage"] == "triage")
    assert set(triaged) == {c.id for c in cases} and set(triaged.values()) == {1}  # each flow ran once
    executions = dep.executions()
    assert executions and max(executions.values()) == 1, executions.most_common(3)
    assert len(executions) == sum(1 for c in cases for r in c.results if r.executor != "policy" and r.state != "skipped")
    assert {r["data"]["worker"] for r in dep.audit("task")} == {"w1@test", "w2@test"}
    sent = {r["data"]["task_id"] for r in dep.audit("enqueued")}
    assert len(sent) == len(BURST) + replay["enqueued"]
    assert {r["data"]["task_id"] for r in dep.audit("task")} == sent  # every copy delivered, none lost
    audit = dep.cli("audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_approvals_while_every_worker_is_down_resume_on_another_worker(fleet: Deployment, gateway: str) -> None:
    dep = fleet
    waiting = sorted((c for c in dep.cases() if c.status == "awaiting_approval"), key=lambda c: c.id)
    assert len(waiting) >= 2, [(c.id, c.status) for c in dep.cases()]
    by_http, by_cli = waiting[0], waiting[1]
    for worker in dep.workers:
        worker.stop()
    assert {d["worker"] for c in (by_http, by_cli) for d in dep.deliveries(c.id)} <= {"w1@test", "w2@test"}
    from siemcrew.crew.approvals import ApprovalStore

    pending = ApprovalStore(dep.home / "approvals.db").pending()
    for p in (p for p in pending if p.case_id == by_http.id):
        answer = _decide(gateway, p, "approve" if p.action == "isolate_host" else "deny")
    assert answer["case"]["status"] == "awaiting_approval"  # the resume is queued; no worker runs
    last = [p for p in pending if p.case_id == by_cli.id]
    for p in last[:-1]:
        _decide(gateway, p, "deny" if p.action != "isolate_host" else "approve")
    decision = "approve" if last[-1].action == "isolate_host" else "deny"
    proc = dep.cli(decision, by_cli.id, last[-1].action, "--target", last[-1].target, "--by", "bob", "--reason", "ok",
                   "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    resumes = [r for r in dep.audit("enqueued") if r["data"]["task"] == "siemcrew.resume"]
    assert {(r["case_id"], r["actor"]) for r in resumes} == {(by_http.id, "alice"), (by_cli.id, "bob")}
    new_case = _intake(gateway, {**demo_alert("demo-5-powershell-bypass"), "id": "demo-5-powershell-bypass-c7",
                                 "rule_id": "r-c7"})

    w3 = dep.start_worker("w3", wait=False)
    dep.start_worker("w4")
    dep.wait_ready(w3)
    dep.wait_cases(lambda cs: {c.id: c.status for c in cs}.get(new_case) in STOPS and all(
        c.status == "escalated" for c in cs if c.id in (by_http.id, by_cli.id)))
    executions = dep.executions()
    for case in (by_http, by_cli):
        done = dep.deliveries(case.id, "resume")
        assert done and {d["worker"] for d in done} <= {"w3@test", "w4@test"}  # paused on w1/w2, resumed here
        isolations = [k for k in executions if k.startswith(f"{case.id}:isolate_host:")]
        assert isolations and all(executions[k] == 1 for k in isolations)
    assert {c.id: c.status for c in dep.cases()}[new_case] == "closed"


def test_workers_killed_mid_investigation_and_mid_action_leave_the_case_to_another(fleet: Deployment,
                                                                                   gateway: str) -> None:
    """A pool process is killed (-9) at the hunter stage: its worker puts the task back at once. The next
    delivery is held after its first containment-free action ran and its whole worker is killed (-9), as a
    lost machine: Redis hands the task to the other worker after the visibility timeout. That worker
    finishes the case; the action ran once."""
    dep = fleet
    once = dep.root / "once"
    dep.faults(SIEMCREW_FAULT_HOLD_AT="stage:hunter,after_action:block_indicator", SIEMCREW_FAULT_ONCE=str(once))
    alert = {**demo_alert("demo-2-encoded-powershell"), "id": "demo-2-encoded-powershell-c8", "rule_id": "r-c8"}
    try:
        case_id = _intake(gateway, alert)

        pool_pid = int(dep.wait_file(Path(f"{once}-stage_hunter")))
        os.kill(pool_pid, signal.SIGKILL)  # a worker's pool process, mid-investigation
        held_pid = int(dep.wait_file(Path(f"{once}-after_action_block_indicator")))
        assert held_pid != pool_pid
        holder = next(w for w in dep.workers if w.process.poll() is None and parent_pid(held_pid) == w.process.pid)
        holder.kill()  # the whole worker, mid-action: main process and pool
        dep.wait_cases(_stopped(case_id), timeout_s=90)
    finally:
        dep.faults()
    case = {c.id: c for c in dep.cases()}[case_id]
    assert case.status == "awaiting_approval" and case.verdict == "malicious"
    deliveries = dep.deliveries(case_id, "investigate")
    assert [d["deaths"] for d in deliveries] == [0, 1, 2], deliveries
    assert len({d["pid"] for d in deliveries}) == 3
    assert deliveries[-1]["worker"] != holder.name + "@test"
    executions = dep.executions()
    blocks = [k for k in executions if k.startswith(f"{case_id}:block_indicator:")]
    assert blocks and all(executions[k] == 1 for k in blocks), executions
    assert {r.state for r in case.results if r.action == "block_indicator"} == {"dry_run"}
    assert len([r for r in dep.audit("resume_after_crash") if r["case_id"] == case_id]) == 2


def test_poison_lands_in_the_dead_letter_state_and_can_be_requeued(fleet: Deployment, gateway: str) -> None:
    dep = fleet
    if not any(w.process.poll() is None for w in dep.workers):
        dep.start_worker("w5")
    killer = {**demo_alert("demo-4-procdump"), "id": "demo-4-procdump-c5", "rule_id": "r-c5"}
    failing = {**demo_alert("demo-6-remote-service"), "id": "demo-6-remote-service-c6", "rule_id": "r-c6"}
    # every delivery kills the pool process running it: after max_worker_deaths (3) it goes to a human
    dep.faults(SIEMCREW_FAULT_KILL_AT="task:investigate")
    try:
        killed = _intake(gateway, killer)
        dep.wait_cases(lambda cs: {c.id: c.status for c in cs}.get(killed) == "needs_human", timeout_s=90)
        # every attempt raises: after the case's attempts (operations.MAX_ATTEMPTS) it goes to a human
        dep.faults(SIEMCREW_FAULT_RAISE_AT="stage:triage")
        raised = _intake(gateway, failing)
        dep.wait_cases(lambda cs: {c.id: c.status for c in cs}.get(raised) == "needs_human", timeout_s=90)
    finally:
        dep.faults()
    listed = {row["id"]: row for row in dep.cli_json("cases", "list", "--status", "needs_human")}
    assert set(listed) == {killed, raised}
    assert "3 deliveries killed the worker" in listed[killed]["dead_letter"]
    assert "InjectedFault: fault injected at stage:triage" in listed[raised]["dead_letter"]
    doctor = dep.cli("doctor", "--no-data", "--json")
    assert doctor.returncode == 1, doctor.stderr[-2000:]
    row = next(r for r in json.loads(doctor.stdout)["checks"] if r["check"] == "dead letters")
    assert not row["ok"] and killed in row["detail"] and raised in row["detail"]
    assert {r["case_id"] for r in dep.audit("dead_letter")} == {killed, raised}

    for case_id in (killed, raised):  # the cause is fixed: put them back
        proc = dep.cli("cases", "requeue", case_id, "--by", "carol", "--reason", "fault removed", "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
    cases = dep.wait_cases(lambda cs: all(c.status in ("closed", "escalated", "awaiting_approval")
                                          for c in cs if c.id in (killed, raised)))
    statuses = {c.id: (c.status, c.dead_letter) for c in cases}
    assert statuses[killed] == ("closed", None) and statuses[raised][1] is None
    assert {r["case_id"] for r in dep.audit("requeued")} == {killed, raised}
