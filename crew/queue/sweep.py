"""The sweep: work that should be on the queue and is not is enqueued again.

A case is stored before its task is sent, so a send that failed (broker down) or a task lost with its
broker leaves a case that nothing will pick up. Celery beat runs the sweep every `queue.sweep_every_s`
(and `run` sweeps first): unfinished cases and fully decided ones untouched for `queue.sweep_after_s`
(default: the visibility timeout, past which Redis would have handed a live task on anyway) are sent
again. A copy of work still queued is harmless: its case is finished, or held, by the time it runs.
"""

from __future__ import annotations

import time
from typing import Any

SWEEP_LIMIT = 500  # cases looked at per status and sweep; the next sweep takes the rest


def sweep(rt: Any, now: float | None = None) -> int:
    """Enqueue the stale work again; returns how many tasks were sent."""
    from siemcrew.crew.operations import retryable

    cutoff = (time.time() if now is None else now) - rt.queue_settings.stale_after_s
    sent = 0
    for status in ("new", "investigating", "failed"):
        for case in rt.cases.list(status=status, limit=SWEEP_LIMIT):
            if retryable(case) and case.updated_at.timestamp() < cutoff:
                sent += rt.queue.investigate(case.id, by="sweep") is not None
    for case in rt.cases.list(status="awaiting_approval", limit=SWEEP_LIMIT):
        if case.updated_at.timestamp() < cutoff and not rt.approvals.pending(case.id):
            sent += rt.queue.after_decisions(case, by="sweep") is not None
    return sent
