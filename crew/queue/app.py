"""The Celery app, built from settings: at-least-once delivery that the project's idempotency makes safe.

- A task is acknowledged when it ends (`task_acks_late`), and a task whose worker process died is put
  back (`task_reject_on_worker_lost`): a crash never loses work, it repeats it, and a repeat is safe
  (alerts are deduplicated by id, one worker holds a case at a time, the ledger runs an action key once).
- Redis hands an unacknowledged task to another worker after the visibility timeout, so that timeout
  exceeds the longest a task may run (`task_time_limit`), and unacknowledged tasks are looked for
  about ten times per timeout.
- Each worker process takes one task at a time (`worker_prefetch_multiplier=1`): an investigation is
  long, and a prefetched one would wait behind it while another worker is idle.
- Periodic upkeep has a queue of its own and expires when the next one is due, so a backlog of
  investigations never holds it up and never piles copies of it up.
- JSON only: a task names its case; the case, its alerts and evidence stay in the state stores.
"""

from __future__ import annotations

from typing import Any

from siemcrew.config.settings import Settings, SettingsError
from siemcrew.crew.queue.broker import broker_url

INVESTIGATE = "siemcrew.investigate"
RESUME = "siemcrew.resume"
EXECUTE = "siemcrew.execute"
DRAIN_OUTBOX = "siemcrew.drain_outbox"
SWEEP = "siemcrew.sweep"
POLL = "siemcrew.poll"
CASE_TASKS = (INVESTIGATE, RESUME, EXECUTE)
PERIODIC_TASKS = (DRAIN_OUTBOX, SWEEP, POLL)
TASKS_MODULE = "siemcrew.crew.queue.tasks"


def make_app(settings: Settings) -> Any:
    """The Celery app for these settings (SettingsError when `queue:` is absent or inconsistent)."""
    from celery import Celery

    from siemcrew.crew.casestore import LEASE_SECONDS

    queue = settings.queue_settings()
    if queue is None:
        raise SettingsError("no task queue is configured: add a `queue:` section (see README, Task queue)")
    if queue.task_time_limit_s > LEASE_SECONDS:
        raise SettingsError(f"queue.task_time_limit_s may not exceed the case lease ({LEASE_SECONDS:g} s): a task "
                            "running longer could see its case taken over by another worker")
    app = Celery("siemcrew", set_as_current=False)
    visibility = queue.visibility_s
    app.conf.update(
        broker_url=broker_url(queue),
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, min(60, int(visibility / 10))),
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": 10,
            "health_check_interval": 30,
            "retry_on_timeout": True,
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        # a task cut off by a lost broker connection is delivered again by Redis; the one still running
        # here finishes (the case lease keeps the second delivery off the case meanwhile)
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_time_limit=queue.task_time_limit_s,
        task_default_queue=queue.name,
        task_routes={name: {"queue": queue.periodic_queue} for name in PERIODIC_TASKS},
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
        worker_send_task_events=False,
        enable_utc=True,
        imports=[TASKS_MODULE],
        beat_schedule=beat_schedule(queue),
        beat_schedule_filename=str(settings.home_path / "celerybeat-schedule"),
    )
    app.siemcrew_settings = settings  # type: ignore[attr-defined]
    return app


def beat_schedule(queue: Any) -> dict[str, dict[str, Any]]:
    """The periodic tasks celery beat sends: outbox, sweep and, when asked for, polling the SIEM."""
    schedule: dict[str, dict[str, Any]] = {
        "drain-outbox": {"task": DRAIN_OUTBOX, "schedule": queue.outbox_every_s,
                         "options": {"expires": queue.outbox_every_s}},
        "sweep": {"task": SWEEP, "schedule": queue.sweep_every_s, "options": {"expires": queue.sweep_every_s}},
    }
    if queue.poll_every_s:
        schedule["poll"] = {"task": POLL, "schedule": queue.poll_every_s, "args": [queue.poll_limit],
                            "options": {"expires": queue.poll_every_s}}
    return schedule
