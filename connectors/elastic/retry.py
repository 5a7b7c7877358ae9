"""One retry policy for Elasticsearch and Kibana calls: transient failures back off and try again.

Transient means 429/502/503/504, a timeout or a dropped connection. A 429's Retry-After is honoured
(capped by `retry_wait_max`). Only reads and idempotent writes go through `retrying()`; other
writes verify what happened before they try again (see `cases.py`).
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import httpx
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, TlsError
from elasticsearch import ApiError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from siemcrew.config.elastic import ElasticSettings
from siemcrew.connectors.elastic.errors import TRANSIENT_STATUS, KibanaError

T = TypeVar("T")


def status_of(exc: BaseException) -> int | None:
    if isinstance(exc, ApiError):
        return exc.meta.status
    if isinstance(exc, KibanaError):
        return exc.status
    return None


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TlsError):
        return False
    if isinstance(exc, KibanaError):
        return exc.transient
    if isinstance(exc, (ConnectionTimeout, TransportConnectionError)):
        return True
    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return True
    return status_of(exc) in TRANSIENT_STATUS


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait, if it said so."""
    if isinstance(exc, KibanaError):
        return exc.retry_after
    if isinstance(exc, ApiError):
        return parse_retry_after(exc.meta.headers.get("retry-after"))
    return None


def parse_retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class _BackoffWait:
    """Exponential backoff, or the server's Retry-After when it is longer (both capped)."""

    def __init__(self, settings: ElasticSettings) -> None:
        self.cap = settings.retry_wait_max
        self.exponential = wait_exponential(multiplier=settings.retry_wait, max=settings.retry_wait_max)

    def __call__(self, state: RetryCallState) -> float:
        base = self.exponential(state)
        exc = state.outcome.exception() if state.outcome else None
        asked = retry_after(exc) if exc else None
        return min(self.cap, max(base, asked or 0.0))


def retrying(settings: ElasticSettings, retry_on: Callable[[BaseException], bool] = is_transient) -> Retrying:
    return Retrying(
        retry=retry_if_exception(retry_on),
        wait=_BackoffWait(settings),
        stop=stop_after_attempt(max(1, settings.retries + 1)),
        reraise=True,
    )


def call_with_retries(settings: ElasticSettings, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a read or an idempotent write, retrying transient failures with backoff."""
    return retrying(settings)(fn, *args, **kwargs)


def write_verified(settings: ElasticSettings, write: Callable[[], T], already_done: Callable[[], T | None]) -> T:
    """A non-idempotent write: after a transient failure, look before writing again.

    A timed-out POST may still have been applied; `already_done()` finds its effect (returning the
    result) or None, and only then is the write tried again.
    """
    for attempt in retrying(settings):
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                found = already_done()
                if found is not None:
                    return found
            return write()
    raise AssertionError("unreachable: tenacity re-raises the last error")
