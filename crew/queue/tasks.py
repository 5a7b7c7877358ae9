"""The units of work a `siemcrew worker` runs. Each is safe to run twice, or at once on two workers.

Case tasks (queue `<name>`), each naming its case by id:
- `investigate`: run the case's flow to its next stop (verdict, or waiting for approval); a case that
  is finished, waiting or in the dead-letter state is left alone; a crashed one resumes from its last
  persisted step (operations.run_case).
- `resume`: every decision is in; the paused flow continues in this worker and acts.
- `execute`: every decision is in and no flow waits (a proposal made after the investigation, or a
  resume cut short after the flow left persistence): execute what was decided.
Periodic tasks (queue `<name>.periodic`, sent by celery beat): `drain_outbox` (write-backs due, EDR
containment to confirm), `sweep` (work lost between store and queue) and `poll` (what `siemcrew run` does).

Why a repeat is safe: the case lease admits one worker (and one thread) per case, so a second delivery
waits until the first ends and then finds the case finished or paused; a flow run again restores its
last snapshot and keeps finished stages; evidence is content-addressed; every action goes through the
ledger, which executes an action key once and reads the vendor's state back after a crash.

Failures: a case held by another worker is tried again later (backoff). An error is retried with
backoff, at most `queue.max_retries` times (an investigation also at most as often as the case may
fail, operations.MAX_ATTEMPTS); then the case goes to a human (crew/queue/deadletter.py). Deliveries
that killed their worker are counted (crew/queue/deaths.py); past `queue.max_worker_deaths` the case
goes to a human instead of killing another worker.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from typing import Any, Callable

from celery import shared_task

from siemcrew.crew.faults import fault_point
from siemcrew.crew.queue.app import DRAIN_OUTBOX, EXECUTE, INVESTIGATE, POLL, RESUME, SWEEP
from siemcrew.crew.queue.deadletter import CaseBusy, dead_letter

log = logging.getLogger("siemcrew.queue")
_STATE_LOCK = threading.Lock()


def _state(app: Any, name: str, make: Callable[[Any], Any]) -> Any:
    """The app's `name` in this process, made on first use: after the worker forked its pool, since nothing
    made before a fork (SQLite connections, sockets) may be shared by the children."""
    with _STATE_LOCK:
        state = app.__dict__.setdefault("siemcrew_state", {})
        if state.get("pid") != os.getpid():
            state.clear()
            state["pid"] = os.getpid()
        if name not in state:
            state[name] = make(app.siemcrew_settings)
        return state[name]


def runtime(app: Any) -> Any:
    from siemcrew.crew.runtime import Runtime

    return _state(app, "runtime", Runtime)


def death_counter(app: Any) -> Any:
    from siemcrew.crew.queue.deaths import DeathCounter

    return _state(app, "deaths", lambda settings: DeathCounter(settings.queue_settings()))


def backoff(queue: Any, retries: int) -> float:
    """retry_backoff_s doubling per retry up to retry_backoff_max_s, with jitter so retries spread out."""
    return min(queue.retry_backoff_s * 2 ** retries, queue.retry_backoff_max_s) * random.uniform(0.8, 1.0)


# -- what each case task does ---------------------------------------------------------------------------
def _investigate(rt: Any, case_id: str) -> str:
    from siemcrew.crew.operations import retryable, try_run_case

    case = rt.cases.get(case_id)
    if not retryable(case):
        return f"nothing to do: {case.status}"
    done = try_run_case(rt, case)
    if done is None:
        raise CaseBusy(case_id)
    return done.status


def _decided(rt: Any, case_id: str) -> str:
    """Every decision is in: the paused flow continues and acts or, when no flow waits, what was decided is
    executed (operations.resume does either, so `resume` and `execute` are safe whichever the sender chose)."""
    from siemcrew.crew.operations import leased, resume

    case = rt.cases.get(case_id)
    if case.status != "awaiting_approval" or rt.approvals.pending(case_id):
        return f"nothing to do: {case.status}"
    with leased(rt, case_id) as held:
        if not held:
            raise CaseBusy(case_id)
        case = rt.cases.get(case_id)  # as it is now that this worker holds it
        if case.status != "awaiting_approval":
            return f"nothing to do: {case.status}"
        return str(resume(rt, case).status)


def _may_retry(kind: str, rt: Any, case_id: str) -> bool:
    """An investigation may be tried again while its case may (operations.MAX_ATTEMPTS failed runs)."""
    from siemcrew.crew.operations import retryable

    if kind != "investigate":
        return True
    try:
        return retryable(rt.cases.get(case_id))
    except KeyError:
        return False


def case_task(task: Any, kind: str, case_id: str, body: Callable[[Any, str], str]) -> str:
    """Run `body` for the case with the queue's guards: deaths counted, the case's holder respected,
    errors retried with backoff, and the dead-letter state when nothing more can be done."""
    deaths = death_counter(task.app)
    died = deaths.start(kind, case_id)  # first: a delivery that dies from here on is counted
    queue = _state(task.app, "queue", lambda settings: settings.queue_settings())
    retries = int(task.request.retries or 0)
    finished = False
    rt: Any = None
    try:
        try:
            if died < queue.max_worker_deaths:
                fault_point(f"task:{kind}")  # tests: poison in the task itself (crew/faults.py)
            rt = runtime(task.app)
            rt.audit.append("task", "queue", {"task": kind, "task_id": task.request.id, "worker": task.request.hostname,
                                              "pid": os.getpid(), "retries": retries, "deaths": died}, case_id=case_id)
            if died >= queue.max_worker_deaths:
                dead_letter(rt, case_id, kind, f"{died} deliveries killed the worker running them", died)
                outcome = "dead_letter"
            else:
                outcome = body(rt, case_id)
        except KeyError:
            log.warning("%s %s: no such case", kind, case_id)
            outcome = "no such case"
        except CaseBusy:
            if retries >= queue.max_retries:
                log.info("%s %s: still held by another worker; left to it", kind, case_id)
                outcome = "left to the worker holding it"
            else:
                raise task.retry(countdown=backoff(queue, retries), max_retries=queue.max_retries) from None
        except Exception as exc:  # noqa: BLE001 - retried, else handed to a human; never dropped silently
            detail = f"{type(exc).__name__}: {exc}"[:1000]
            if retries < queue.max_retries and (rt is None or _may_retry(kind, rt, case_id)):
                log.warning("%s %s failed (attempt %d), retried: %s", kind, case_id, retries + 1, detail)
                raise task.retry(countdown=backoff(queue, retries), max_retries=queue.max_retries) from None
            if rt is None:  # not even the stores open here: nothing can be recorded; the sweep sends it again
                log.error("%s %s: this worker cannot open the state (%s); left to the sweep", kind, case_id, detail)
                raise
            try:
                dead_letter(rt, case_id, kind, detail, retries + 1)
            except CaseBusy:
                log.warning("%s %s failed and another worker holds the case now: left to it", kind, case_id)
            outcome = "dead_letter"
        finished = True
        return outcome
    finally:
        deaths.ended(kind, case_id, finished=finished)


@shared_task(bind=True, name=INVESTIGATE)
def investigate(self: Any, case_id: str) -> str:
    return case_task(self, "investigate", case_id, _investigate)


@shared_task(bind=True, name=RESUME)
def resume(self: Any, case_id: str) -> str:
    return case_task(self, "resume", case_id, _decided)


@shared_task(bind=True, name=EXECUTE)
def execute(self: Any, case_id: str) -> str:
    return case_task(self, "execute", case_id, _decided)


# -- periodic upkeep ---------------------------------------------------------------------------------
def _periodic(task: Any, name: str, body: Callable[[Any], Any]) -> Any:
    """Periodic work has no case to hand to a human: a failure is logged and the next period tries again."""
    rt = runtime(task.app)
    try:
        return body(rt)
    except Exception:  # noqa: BLE001
        log.exception("%s failed; the next period tries again", name)
        return None


@shared_task(bind=True, name=DRAIN_OUTBOX)
def drain_outbox(self: Any) -> int:
    from siemcrew.crew.operations import drain_outbox as drain, reconcile_containment

    def body(rt: Any) -> int:
        pending = drain(rt)
        reconcile_containment(rt)
        return len(pending)

    return _periodic(self, "drain_outbox", body)


@shared_task(bind=True, name=SWEEP)
def sweep(self: Any) -> int:
    from siemcrew.crew.queue.sweep import sweep as sweep_cases

    return _periodic(self, "sweep", sweep_cases)


@shared_task(bind=True, name=POLL)
def poll(self: Any, limit: int = 100) -> dict[str, Any] | None:
    from siemcrew.crew.operations import LockBusy, run

    def body(rt: Any) -> dict[str, Any] | None:
        try:
            summary = run(rt, limit=limit)
        except LockBusy:
            log.info("poll skipped: a run holds the lock")
            return None
        if summary.incomplete:
            log.warning("poll needs attention: %s", summary.errors[:5] + summary.writeback_pending[:5])
        return {"fetched": summary.fetched, "enqueued": summary.enqueued, "failed": summary.failed}

    return _periodic(self, "poll", body)
