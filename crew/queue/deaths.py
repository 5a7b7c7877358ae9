"""Counting deliveries that killed their worker: the poison a retry count never sees.

A task whose worker process dies (killed, out of memory, past its time limit) never reaches its own
error handling; Redis delivers it again, and a task that kills every worker would do so forever. So
each start of a case task adds one to a counter in the broker's Redis, and every end the task itself
reaches (done, retry scheduled, error) takes it off again: what is left is the number of starts that
died. The counter is per task kind and case, so a copy enqueued again by the sweep is counted with the
others. A counter that cannot be reached counts nothing (the queue then works without this guard).
"""

from __future__ import annotations

import logging
from typing import Any

from siemcrew.crew.queue.broker import redis_client

log = logging.getLogger("siemcrew.queue")
KEEP_S = 7 * 24 * 3600  # a counter nobody touched for a week is forgotten


class DeathCounter:
    def __init__(self, queue: Any) -> None:
        self.prefix = f"{queue.name}:unfinished"
        self._client: Any = None
        self._queue = queue

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = redis_client(self._queue)
        return self._client

    def _key(self, kind: str, case_id: str) -> str:
        return f"{self.prefix}:{kind}:{case_id}"

    def start(self, kind: str, case_id: str) -> int:
        """Count this start; returns how many earlier starts died without ending."""
        try:
            pipe = self.client.pipeline()
            pipe.incr(self._key(kind, case_id))
            pipe.expire(self._key(kind, case_id), KEEP_S)
            count, _ = pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the guard is lost, the work is not
            log.warning("delivery counter unavailable: %s", exc)
            return 0
        return max(int(count) - 1, 0)

    def ended(self, kind: str, case_id: str, finished: bool) -> None:
        """This start ended: forget the case's deaths once its task finished, else take this start off."""
        key = self._key(kind, case_id)
        try:
            if finished:
                self.client.delete(key)
            elif int(self.client.decr(key)) < 0:
                self.client.delete(key)
        except Exception as exc:  # noqa: BLE001 - at worst one death too many is counted
            log.warning("delivery counter unavailable: %s", exc)

    def forget(self, kind: str, case_id: str) -> None:
        try:
            self.client.delete(self._key(kind, case_id))
        except Exception as exc:  # noqa: BLE001
            log.warning("delivery counter unavailable: %s", exc)
