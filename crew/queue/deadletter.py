"""The dead-letter state: a case the queue could not work is handed to a human, never dropped.

A task that failed through all its retries, or whose deliveries kept killing the worker running them,
marks its case `needs_human` with the task, the reason and the attempts (`case.dead_letter`), audited
as `dead_letter`. Nothing else is done to the case: no SIEM write-back (the SIEM may be what fails),
no further retry, no sweep. `siemcrew cases list --status needs_human` and `siemcrew doctor` show
them; `siemcrew cases requeue` puts the task back once the cause is fixed.
"""

from __future__ import annotations

import logging
from typing import Any

from siemcrew.crew.models import Case, DeadLetter
from siemcrew.crew.queue.app import EXECUTE, INVESTIGATE, RESUME

log = logging.getLogger("siemcrew.queue")
TASK_OF_KIND = {"investigate": INVESTIGATE, "resume": RESUME, "execute": EXECUTE}
FINISHED = ("closed", "escalated")


class CaseBusy(RuntimeError):
    """Another worker holds the case right now."""


class RequeueError(RuntimeError):
    """The case is not in the dead-letter state, or no queue is configured."""


def dead_letter(rt: Any, case_id: str, task: str, reason: str, attempts: int) -> Case | None:
    """Mark the case for a human (None when it finished meanwhile). Raises CaseBusy when a live worker
    holds it: that worker is not dead, and the case is left to it."""
    from siemcrew.crew.operations import leased

    with leased(rt, case_id) as held:
        if not held:
            raise CaseBusy(case_id)
        case = rt.cases.get(case_id)
        if case.status in FINISHED:
            return None
        case.dead_letter = DeadLetter(task=task, reason=reason[:1000], attempts=attempts, status=case.status)
        case.status = "needs_human"
        case.note("queue", "dead_letter", f"{task}: {reason}"[:1000])
        rt.cases.save(case)
    rt.audit.append("dead_letter", "queue", {"task": task, "reason": reason[:1000], "attempts": attempts,
                                             "status_before": case.dead_letter.status}, case_id=case_id)
    log.error("case %s needs a human: %s gave up after %d attempt(s): %s", case_id, task, attempts, reason[:300])
    return case


def requeue(rt: Any, case_id: str, by: str, reason: str) -> Case:
    """Put a dead-lettered case's task back on the queue (its status restored, its death count cleared)."""
    from siemcrew.crew.operations import leased
    from siemcrew.crew.queue.deaths import DeathCounter

    if rt.queue is None:
        raise RequeueError("no task queue is configured: nothing to requeue to")
    if not by.strip() or not reason.strip():
        raise RequeueError("a requeue needs `by` and a `reason`")
    with leased(rt, case_id) as held:
        if not held:
            raise RequeueError(f"{case_id} is held by a worker right now")
        case = rt.cases.get(case_id)
        letter = case.dead_letter
        if case.status != "needs_human" or letter is None:
            raise RequeueError(f"{case_id} is {case.status}, not in the dead-letter state")
        # a case that failed its attempts starts them again: the person fixed the cause
        case.status = "investigating" if letter.status == "failed" else letter.status  # type: ignore[assignment]
        case.dead_letter = None
        case.note(by, "requeued", f"{letter.task}: {reason}"[:1000])
        rt.cases.save(case)
    rt.audit.append("requeued", by, {"task": letter.task, "reason": reason[:1000], "after": letter.reason[:500]},
                    case_id=case_id)
    DeathCounter(rt.queue_settings).forget(letter.task, case_id)
    rt.queue.send(TASK_OF_KIND[letter.task], case_id, by)
    return case
