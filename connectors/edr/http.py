"""One HTTP client for every EDR API: httpx + tenacity, Retry-After aware, safe with writes.

Why one module: retries, rate limits, expired tokens, vendor error envelopes and malformed bodies
are the same problems across Falcon, Defender, SentinelOne and Kibana; each connector only says
how its vendor spells an error (`error_parser`) and how it authenticates (`auth`).

Write safety: a request marked `idempotent=False` (contain, release, kill) is retried only when
the server provably did not act on it: a 429 (rejected before processing) or a connection that
was never established. A 5xx or a read timeout on a write is reported, never resent blindly.
"""

from __future__ import annotations

import email.utils
import json
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from siemcrew.config.edr import RetrySettings, VendorSection
from siemcrew.connectors.base import ConnectorError

ErrorParser = Callable[[Any], str | None]
Sleep = Callable[[float], None]
Clock = Callable[[], float]

_MAX_BODY = 32 * 1024 * 1024


class EdrApiError(ConnectorError):
    """The vendor answered with an error (or garbage); the message is safe to show and log."""

    def __init__(self, vendor: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{vendor}: {message}" + (f" (HTTP {status})" if status else ""))
        self.vendor = vendor
        self.status = status


class ActionNotSupported(ConnectorError):
    """The vendor has no API for this action (e.g. kill by pid on SentinelOne)."""


class Auth(Protocol):
    """Adds credentials to a request; `invalidate` drops a cached token after a 401."""

    def headers(self) -> dict[str, str]: ...

    def invalidate(self) -> bool:
        """Forget cached credentials; True when a retry with fresh ones can help."""
        ...


class NoAuth:
    def headers(self) -> dict[str, str]:
        return {}

    def invalidate(self) -> bool:
        return False


class Retryable(Exception):
    """This attempt may be repeated (inside `retrying`); carries the wait the server asked for."""

    def __init__(self, error: ConnectorError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


@dataclass(frozen=True)
class _Call:
    """One logical request, replayed unchanged by each retry attempt."""

    method: str
    path: str
    params: Any
    json_body: Any
    data: dict[str, str] | None
    safe: bool
    authenticated: bool
    headers: dict[str, str]


class RateLimiter:
    """Client-side sliding window (e.g. Defender's 100 calls/min), so we wait instead of drawing 429s."""

    def __init__(self, per_minute: int, sleep: Sleep = time.sleep, clock: Clock = time.monotonic) -> None:
        self.per_minute = per_minute
        self.sleep = sleep
        self.clock = clock
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = self.clock()
            while self._calls and now - self._calls[0] >= 60.0:
                self._calls.popleft()
            if len(self._calls) >= self.per_minute:
                wait = 60.0 - (now - self._calls[0])
                if wait > 0:
                    self.sleep(wait)
                now = self.clock()
                self._calls.popleft()
            self._calls.append(now)


def rate_limit_wait(headers: httpx.Headers) -> float | None:
    """How long a 429 says to wait: `Retry-After` (seconds or an HTTP date), else CrowdStrike Falcon's
    `X-RateLimit-RetryAfter` (the epoch second from which calls are accepted again)."""
    wait = parse_retry_after(headers.get("Retry-After"))
    if wait is not None:
        return wait
    reset = headers.get("X-RateLimit-RetryAfter")
    try:
        return max(0.0, float(reset) - time.time()) if reset else None
    except ValueError:
        return None


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


@dataclass
class HttpOptions:
    """Transport settings plus the sleep/clock a test swaps for a recorder (no real waiting)."""

    verify: bool | str = True
    timeout_s: float = 30.0
    retry: RetrySettings = field(default_factory=RetrySettings)
    sleep: Sleep = time.sleep
    clock: Clock = time.monotonic
    transport: httpx.BaseTransport | None = None

    @classmethod
    def from_section(cls, section: VendorSection, **overrides: Any) -> HttpOptions:
        values: dict[str, Any] = {
            "verify": section.tls_verify(),
            "timeout_s": section.timeout_s,
            "retry": section.retry,
        }
        values.update(overrides)
        return cls(**values)


class EdrHttp:
    """A base URL, an auth strategy, an error parser and the retry policy, over one httpx.Client."""

    def __init__(
        self,
        vendor: str,
        base_url: str,
        auth: Auth | None = None,
        error_parser: ErrorParser | None = None,
        options: HttpOptions | None = None,
        headers: dict[str, str] | None = None,
        rate_limit_per_minute: int | None = None,
    ) -> None:
        self.vendor = vendor
        self.options = options or HttpOptions()
        self.auth = auth or NoAuth()
        self.error_parser = error_parser or (lambda body: None)
        self.client = http_client(base_url, self.options, headers)
        self.limiter = (
            RateLimiter(rate_limit_per_minute, self.options.sleep, self.options.clock)
            if rate_limit_per_minute
            else None
        )

    def close(self) -> None:
        self.client.close()

    # -- public calls ----------------------------------------------------------------------
    def get(self, path: str, params: Any = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json_body: Any = None, params: Any = None, idempotent: bool = False) -> Any:
        return self.request("POST", path, params=params, json_body=json_body, idempotent=idempotent)

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json_body: Any = None,
        data: dict[str, str] | None = None,
        idempotent: bool | None = None,
        authenticated: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send, retry what is safe to retry, and return the decoded JSON body (None when empty)."""
        call = _Call(
            method=method,
            path=path,
            params=params,
            json_body=json_body,
            data=data,
            safe=method in ("GET", "HEAD") if idempotent is None else idempotent,
            authenticated=authenticated,
            headers=headers or {},
        )
        return retrying(self.options, lambda: self._once(call))

    # -- one attempt -----------------------------------------------------------------------
    def _once(self, call: _Call) -> Any:
        if self.limiter:
            self.limiter.acquire()
        response = self._send(call)
        if response.status_code == 401 and call.authenticated and self.auth.invalidate():
            # Expired or revoked session: the server refused before acting, so one resend with a
            # fresh token is safe even for writes.
            response = self._send(call)
        if response.status_code == 429:
            raise Retryable(self._error(response, "rate limited"), rate_limit_wait(response.headers))
        if response.status_code >= 500:
            error = self._error(response, "server error")
            if call.safe:
                raise Retryable(error, parse_retry_after(response.headers.get("Retry-After")))
            raise error
        if response.status_code >= 400:
            raise self._error(response, "request refused")
        return self._decode(response)

    def _send(self, call: _Call) -> httpx.Response:
        headers = dict(self.auth.headers()) if call.authenticated else {}
        headers.update(call.headers)
        try:
            return self.client.request(
                call.method, call.path, params=call.params, json=call.json_body, data=call.data, headers=headers
            )
        except httpx.ConnectError as exc:
            # Never reached the server: safe to retry even for writes.
            raise Retryable(EdrApiError(self.vendor, f"cannot connect: {_describe(exc)}")) from None
        except httpx.TimeoutException as exc:
            error = EdrApiError(self.vendor, f"timed out ({type(exc).__name__})")
            if call.safe:
                raise Retryable(error) from None
            raise error from None
        except httpx.TransportError as exc:
            error = EdrApiError(self.vendor, f"transport error: {_describe(exc)}")
            if call.safe:
                raise Retryable(error) from None
            raise error from None

    def _error(self, response: httpx.Response, fallback: str) -> EdrApiError:
        body: Any = None
        try:
            body = response.json()
        except (ValueError, UnicodeDecodeError):
            body = None
        message = None
        if body is not None:
            try:
                message = self.error_parser(body)
            except (AttributeError, KeyError, TypeError, IndexError):
                message = None
        return EdrApiError(self.vendor, _clip(message or fallback), response.status_code)

    def _decode(self, response: httpx.Response) -> Any:
        if not response.content:
            return None
        if len(response.content) > _MAX_BODY:
            raise EdrApiError(self.vendor, f"response too large ({len(response.content)} bytes)")
        try:
            return json.loads(response.content.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError):
            raise EdrApiError(self.vendor, "malformed response: not JSON", response.status_code) from None


def retrying(options: HttpOptions, attempt: Callable[[], Any]) -> Any:
    """Run `attempt`, repeating it on `Retryable` with exponential backoff or the server's Retry-After."""
    policy = options.retry

    def wait(state: RetryCallState) -> float:
        outcome = state.outcome.exception() if state.outcome else None
        if isinstance(outcome, Retryable) and outcome.retry_after is not None:
            return min(outcome.retry_after, policy.max_retry_after_s)
        return wait_exponential(multiplier=policy.initial_wait_s, max=policy.max_wait_s)(state)

    runner = Retrying(
        stop=stop_after_attempt(policy.attempts),
        wait=wait,
        retry=retry_if_exception(lambda exc: isinstance(exc, Retryable)),
        sleep=options.sleep,
        reraise=True,
    )
    try:
        return runner(attempt)
    except Retryable as exhausted:
        raise exhausted.error from None


def http_client(base_url: str, options: HttpOptions, headers: dict[str, str] | None = None) -> httpx.Client:
    """The httpx.Client every EDR call (and token fetch) goes through: TLS on, bounded timeouts."""
    try:
        verify: bool | ssl.SSLContext = (
            options.verify if isinstance(options.verify, bool) else (ssl.create_default_context(cafile=options.verify))
        )
        return httpx.Client(
            base_url=base_url.rstrip("/"),
            verify=verify,
            timeout=httpx.Timeout(options.timeout_s),
            headers={"User-Agent": "siemcrew-edr/0.1", "Accept": "application/json", **(headers or {})},
            transport=options.transport,
            follow_redirects=False,
        )
    except (OSError, ValueError) as exc:
        raise ConnectorError(f"cannot set up TLS for {base_url}: {exc}") from None


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return _clip(text)


def _clip(text: str, limit: int = 500) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
