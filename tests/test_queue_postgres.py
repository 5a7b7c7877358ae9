"""Two machines that share nothing but PostgreSQL and Redis: each a home of its own (its own config file,
crewAI scratch folder and fault points), one `database:` URL and one queue name. The state a worker
needs to take over another's case is only in the database: the cases, the flows paused for approval,
the action ledger, the advisory-lock leases and the audit table.

What must hold across machines, with real `siemcrew worker` processes on the session's real PostgreSQL
and Redis: a burst fetched on both is one case per alert and each action once; a machine lost (kill -9)
mid-action leaves its case to the other, which runs the action no second time; a flow paused on one
machine resumes on the other after a decision given from either; the hash chain stays whole with both
writing at once.

The tests share one deployment and run in order (worker start-up is the cost).
"""

from __future__ import annotations

import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from servers.workers import STOPS, Deployment, copies, demo_alert, demo_alerts, deployment, parent_pid

from emulators.e2e_helpers import EXPECTED, serve  # isort: skip

pytestmark = pytest.mark.timeout(300)
INTAKE_TOKEN = "pg-queue-intake-token-5d1e"
BURST = copies(demo_alerts(), 1)


class Machines:
    def __init__(self, a: Deployment, b: Deployment) -> None:
        self.a, self.b = a, b

    @property
    def workers(self) -> list[Any]:
        return [*self.a.workers, *self.b.workers]


@pytest.fixture(scope="module")
def machines(redis_server: Any, postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machines]:
    url = postgres.url(postgres.create_database())
    queue_name = f"q-pg-{uuid.uuid4().hex[:8]}"
    both = [deployment(tmp_path_factory.mktemp(f"machine-{name}"), redis_server, BURST, queue_name=queue_name,
                       database=url, sweep_after_s=3600, task_time_limit_s=15, visibility_timeout_s=17)
            for name in ("a", "b")]
    for dep in both:
        dep.env["SIEMCREW_SERVE_TOKEN"] = INTAKE_TOKEN
    pair = Machines(*both)
    try:
        yield pair
    finally:
        for dep in both:
            dep.stop_all()


def test_a_burst_fetched_on_two_machines_is_one_case_per_alert_and_each_action_once(machines: Machines) -> None:
    a, b = machines.a, machines.b
    wa = a.start_worker("a1", wait=False)
    b.start_worker("b1")
    a.wait_ready(wa)
    first = a.cli_json("run")
    assert (first["fetched"], first["enqueued"]) == (len(BURST), len(BURST)), first
    second = b.cli_json("run")  # the other machine's cron: the checkpoint and the cases are shared
    assert second["enqueued"] == 0 and second.get("investigated", 0) == 0, second
    assert not (b.home / "cases.db").exists() and not (a.home / "audit.jsonl").exists()  # nothing local
    cases = a.wait_cases(lambda cs: len(cs) == len(BURST) and all(c.status in STOPS for c in cs))

    assert sorted(c.alert.id for c in cases) == sorted(x["id"] for x in BURST)
    assert [c.id for c in b.cases()] == [c.id for c in cases]  # both machines read the same state
    for case in cases:
        benign = EXPECTED[case.alert.id.rsplit("-c", 1)[0]]["verdict"] == "benign"
        assert (case.status == "closed") == benign, (case.id, case.status, case.verdict)
    triaged = Counter(r["case_id"] for r in a.audit("stage") if r["data"]["stage"] == "triage")
    assert set(triaged) == {c.id for c in cases} and set(triaged.values()) == {1}
    executions = a.executions()
    assert executions and max(executions.values()) == 1, executions.most_common(3)
    assert {r["data"]["worker"] for r in a.audit("task")} == {"a1@test", "b1@test"}  # both machines worked
    for dep in (a, b):
        verify = dep.cli("audit", "verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_machine_lost_mid_action_leaves_its_case_to_the_other(machines: Machines, tmp_path: Path) -> None:
    """Both machines hold a delivery after its first containment-free action ran; the machine holding it
    is killed whole (-9). Its advisory-lock lease ends with its connections, Redis hands the task to the
    other machine after the visibility timeout, and the action is not run again."""
    a, b = machines.a, machines.b
    once = tmp_path / "once"
    for dep in (a, b):
        dep.faults(SIEMCREW_FAULT_HOLD_AT="after_action:block_indicator", SIEMCREW_FAULT_ONCE=str(once))
    alert = {**demo_alert("demo-2-encoded-powershell"), "id": "demo-2-encoded-powershell-pg1", "rule_id": "r-pg1"}
    try:
        with serve(a.config, a.env, a.root / "serve.log") as url:
            answer = httpx.post(f"{url}/v1/alerts", json=alert, headers={"Authorization": f"Bearer {INTAKE_TOKEN}"},
                                timeout=30)
            assert answer.status_code == 202, answer.text
            case_id = answer.json()["case_ids"][0]
        held_pid = int(a.wait_file(Path(f"{once}-after_action_block_indicator")))
        holder = next(w for w in machines.workers if w.process.poll() is None and parent_pid(held_pid) == w.process.pid)
        holder.kill()
        survivor = "b1@test" if holder.name == "a1" else "a1@test"
        a.wait_cases(lambda cs: {c.id: c.status for c in cs}.get(case_id) in STOPS, timeout_s=90)
    finally:
        for dep in (a, b):
            dep.faults()
    case = {c.id: c for c in b.cases()}[case_id]
    assert case.status == "awaiting_approval" and case.verdict == "malicious"
    deliveries = a.deliveries(case_id, "investigate")
    assert [d["worker"] for d in deliveries][-1] == survivor and len(deliveries) == 2, deliveries
    blocks = {k: n for k, n in b.executions().items() if k.startswith(f"{case_id}:block_indicator:")}
    assert blocks and set(blocks.values()) == {1}
    assert [r["case_id"] for r in a.audit("resume_after_crash")] == [case_id]


def test_a_flow_paused_on_one_machine_resumes_on_the_other(machines: Machines) -> None:
    """The case waiting for approval was investigated (and its flow paused) on some machine; that machine's
    worker is stopped, the decision is given from its CLI, and the other machine's worker resumes the flow."""
    a, b = machines.a, machines.b
    running = [w for w in machines.workers if w.process.poll() is None]
    if not any(w.name == "a1" for w in running):
        a.start_worker("a2")
    if not any(w.name == "b1" for w in running):
        b.start_worker("b2")
    waiting = sorted((c for c in a.cases() if c.status == "awaiting_approval" and c.id in {
        r["case_id"] for r in a.audit("task") if r["data"]["task"] == "investigate"}), key=lambda c: c.id)
    assert waiting, [(c.id, c.status) for c in a.cases()]
    case = waiting[0]
    paused_by = a.deliveries(case.id, "investigate")[-1]["worker"]
    paused_on, other = (a, b) if paused_by.startswith("a") else (b, a)
    for worker in paused_on.workers:
        worker.stop()
    pending = [p for p in paused_on.storage.approvals().pending() if p.case_id == case.id]
    assert pending
    for p in pending:
        decision = "approve" if p.action == "isolate_host" else "deny"
        proc = paused_on.cli(decision, case.id, p.action, "--target", p.target, "--by", "bob", "--reason", "ok",
                             "--json")
        assert proc.returncode == 0, proc.stderr[-2000:]
    done = other.wait_cases(lambda cs: {c.id: c.status for c in cs}.get(case.id) == "escalated", timeout_s=90)
    resumed = a.deliveries(case.id, "resume")
    alive = {f"{w.name}@test" for w in other.workers if w.process.poll() is None}
    assert resumed and {d["worker"] for d in resumed} <= alive and paused_by not in alive
    isolations = {k: n for k, n in a.executions().items() if k.startswith(f"{case.id}:isolate_host:")}
    assert isolations and set(isolations.values()) == {1}
    assert {c.id: c for c in done}[case.id].verdict == "malicious"
    verify = other.cli("audit", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
