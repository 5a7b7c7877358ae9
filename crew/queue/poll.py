"""`run` with a task queue: fetch since the checkpoint, store the cases, enqueue them, report.

The same checkpoint and lock as the in-process `run` (crew/operations.py), and the same summary, with
`enqueued` counting the tasks handed to the workers. The checkpoint advances once every fetched alert
is stored and its task sent: the queue, not this process, now holds the work. A send that fails counts
as failed (exit 4) and keeps the checkpoint, and the sweep sends the stored case again later.
Write-backs still pending and containment the vendor has not confirmed are reported as they stand;
the workers' `drain_outbox` task retries them.
"""

from __future__ import annotations

from typing import Any, Callable

from siemcrew.crew.models import Alert


def poll(rt: Any, limit: int = 100, progress: Callable[[Alert], None] | None = None) -> Any:
    from siemcrew.crew.operations import RunSummary, advance, fetch
    from siemcrew.crew.queue.sweep import sweep

    summary = RunSummary()
    with rt.storage.run_lock():  # a file lock in the home, or an advisory lock in the `database:`
        rt.queue.ping()  # a broker that cannot be reached fails the run (exit 1) before anything is fetched
        summary.enqueued += sweep(rt)
        batch = fetch(rt, summary, limit)
        for alert in batch.alerts:
            if progress:
                progress(alert)
            known = rt.cases.known(alert)
            case, is_new = rt.cases.admit(alert)
            rt.audit.append("intake", "run", {"alert": alert.id, "source": alert.source, "case": case.id,
                                              "new": is_new}, case_id=case.id)
            if case.id not in summary.cases:
                summary.cases.append(case.id)
            if known:
                summary.skipped_known += 1
            elif is_new and rt.queue.investigate(case.id, by="run") is None:
                summary.failed += 1
                summary.errors.append(f"{alert.id}: stored as {case.id}, but its task could not be enqueued")
            elif is_new:
                summary.enqueued += 1
        advance(rt, summary, batch)
        summary.writeback_pending = [item.line() for item in rt.outbox.pending()]
        summary.containment_unconfirmed = [f"{c.key}: {c.detail}"[:300] for c in rt.ledger.in_state("timed_out")]
    return summary
