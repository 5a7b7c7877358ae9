"""Sending work to the queue: what `serve`, `run` and approvals do instead of working in their own process.

Tasks are sent by name with the case id only (the case, its alerts and evidence stay in the stores), so
a sender never imports crewAI. Every hand-off is on the audit record (`enqueued`). A send that fails
(broker down past the publish retries) is audited as `enqueue_failed` and returns None: the case is
stored already, and the sweep (crew/queue/sweep.py) enqueues it again once the broker is back. After a
failed send the next ones fail at once for a few seconds, so an intake of many alerts while the broker is
down answers promptly instead of waiting out the publish retries alert by alert.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from siemcrew.crew.models import Case
from siemcrew.crew.queue.app import EXECUTE, INVESTIGATE, RESUME, make_app

log = logging.getLogger("siemcrew.queue")
BROKER_DOWN_S = 5.0  # after a failed send, sends fail at once for this long


class Dispatcher:
    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self._app: Any = None
        self._down_until = 0.0

    @property
    def app(self) -> Any:
        if self._app is None:
            self._app = make_app(self.rt.settings)
        return self._app

    def send(self, task: str, case_id: str | None = None, by: str = "system", args: list[Any] | None = None
             ) -> str | None:
        """Enqueue `task` (for `case_id`); the task id, or None when the broker could not be reached."""
        arguments = args if args is not None else [case_id]
        try:
            if time.monotonic() < self._down_until:
                raise ConnectionError("the broker could not be reached moments ago")
            try:
                sent = self.app.send_task(task, args=arguments)
            except Exception:
                self._down_until = time.monotonic() + BROKER_DOWN_S
                raise
        except Exception as exc:  # noqa: BLE001 - kombu raises its own and socket errors; the sweep recovers
            detail = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("could not enqueue %s for %s: %s (the sweep enqueues it again)", task, case_id, detail)
            self.rt.audit.append("enqueue_failed", by, {"task": task, "error": detail}, case_id=case_id)
            return None
        self.rt.audit.append("enqueued", by, {"task": task, "task_id": sent.id}, case_id=case_id)
        return str(sent.id)

    def investigate(self, case_id: str, by: str = "system") -> str | None:
        return self.send(INVESTIGATE, case_id, by)

    def after_decisions(self, case: Case, by: str = "system") -> str | None:
        """Every decision is in: continue the paused flow, or (no flow ran) execute what was decided. The
        choice is read off the case, so a sender never opens crewAI's flow persistence; either task looks
        there itself and does the other's work when it finds the case the other way."""
        return self.send(RESUME if case.flow_id else EXECUTE, case.id, by)

    def ping(self) -> None:
        """Reach the broker once (raises when it cannot be reached)."""
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=5)
            connection.default_channel.client.ping()
