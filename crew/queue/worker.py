"""Starting a Celery worker or celery beat for siemcrew (what `siemcrew worker` and `siemcrew beat` run).

The worker imports crewAI and the tasks before it forks its pool, so every child starts warm and shares
those pages (`import crewai` costs seconds and ~175 MB); the state stores and connectors are opened in
each child on its first task (crew/queue/tasks.py), never before the fork.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Literal

from siemcrew.config.settings import Settings
from siemcrew.crew.queue.app import make_app

Pool = Literal["prefork", "threads", "solo"]


def run_worker(settings: Settings, concurrency: int, pool: Pool = "prefork", queues: list[str] | None = None,
               name: str | None = None, beat: bool = False, loglevel: str = "INFO",
               max_tasks_per_child: int | None = None) -> Any:
    """Run a worker until it is stopped (SIGTERM: warm shutdown, running tasks finish; a second one, or
    SIGQUIT, stops at once and their tasks are delivered again)."""
    from siemcrew.crew import offline

    app = make_app(settings)
    queue = settings.queue_settings()
    offline.prepare(settings.home_path / "crewai")
    import siemcrew.crew.flow  # noqa: F401  - crewAI, loaded once before the pool forks
    import siemcrew.crew.queue.tasks  # noqa: F401  - the task definitions

    argv = ["worker", f"--concurrency={concurrency}", f"--pool={pool}",
            f"--queues={','.join(queues or [queue.name, queue.periodic_queue])}",
            f"--hostname={name or f'siemcrew-{os.getpid()}@{socket.gethostname()}'}", f"--loglevel={loglevel}",
            "--without-gossip", "--without-mingle", "--without-heartbeat"]
    if max_tasks_per_child:
        argv.append(f"--max-tasks-per-child={max_tasks_per_child}")
    if beat:
        argv += ["--beat", f"--schedule={app.conf.beat_schedule_filename}"]
    return app.worker_main(argv)


def run_beat(settings: Settings, loglevel: str = "INFO") -> Any:
    """Run celery beat (one per deployment): it sends the periodic tasks of crew/queue/app.py."""
    app = make_app(settings)
    return app.start(["beat", f"--schedule={app.conf.beat_schedule_filename}", f"--loglevel={loglevel}"])
