"""One splunk-sdk `Service` per connector: TLS on, the configured auth, timeouts, and retry policies.

splunk-sdk's own defaults are unsafe for us (TLS verification off, no timeout), so the connection
is built with an explicit `binding.handler`. Transient failures are retried with tenacity:
reads on 503 (search quota) and connection errors; writes only when the failure proves the
request was not applied (503 busy, connection refused), so nothing is written twice. When the
answer to a write is lost (timeout, dropped connection), the write is read back: applied is
success, not applied stays an error (never sent blindly again).
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from xml.etree.ElementTree import ParseError, XML

from splunklib import binding, client
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from siemcrew.config.settings import SettingsError
from siemcrew.config.splunk import SplunkSettings
from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.slots import PrioritySlots

log = logging.getLogger("siemcrew.splunk")

T = TypeVar("T")

# a read (a search, an alert fetch) may be sent again on any server-side failure: it changes nothing
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
NOT_APPLIED_STATUS = frozenset({429, 503})


def tls_context(verify: bool, ca_file: str | None) -> ssl.SSLContext | None:
    """A verifying context (system CAs or the given CA file); None means verification is off."""
    if not verify:
        log.warning("splunk: TLS verification is OFF (verify: false); use ca_file for a private CA instead")
        return None
    try:
        return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        raise SettingsError(f"splunk: cannot load CA file {ca_file}: {exc}") from None


def open_service(settings: SplunkSettings) -> client.Service:
    """A logged-in Service (token auth needs no login; password auth logs in and re-logs on expiry)."""
    context = tls_context(settings.verify, settings.ca_file) if settings.scheme == "https" else None
    handler = binding.handler(timeout=settings.timeout_s, verify=context is not None, context=context)
    service = client.Service(
        scheme=settings.scheme,
        host=settings.host,
        port=settings.port,
        app=settings.app,
        owner=settings.owner,
        autologin=True,
        handler=handler,
        **settings.credentials(),
    )
    if settings.auth == "password":
        call_read(settings, service.login, "login")
    return service


# -- error classification --------------------------------------------------------------------
def is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError, http.client.IncompleteRead, http.client.BadStatusLine))


def is_transient_read(exc: BaseException) -> bool:
    if isinstance(exc, binding.HTTPError) and not isinstance(exc, binding.AuthenticationError):
        return exc.status in RETRYABLE_STATUS
    return is_connection_error(exc)


def is_not_applied(exc: BaseException) -> bool:
    """True only when the server cannot have acted on the request."""
    if isinstance(exc, binding.HTTPError) and not isinstance(exc, binding.AuthenticationError):
        return exc.status in NOT_APPLIED_STATUS
    return isinstance(exc, ConnectionRefusedError)


def is_answer_lost(exc: BaseException) -> bool:
    """The request went out but no answer came back: splunkd may or may not have applied it."""
    return is_connection_error(exc) and not isinstance(exc, ConnectionRefusedError)


def error_detail(exc: binding.HTTPError) -> str:
    """The first message splunkd put in an error body (XML or JSON), never the request."""
    body = exc.body if isinstance(exc.body, (bytes, str)) else b""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        found = XML(text).findtext("./messages/msg")
        if found:
            return found.strip()
    except ParseError:
        pass
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            return str(parsed.get("message") or parsed.get("text") or parsed)[:500]
    except ValueError:
        pass
    return (text.strip() or exc.reason or "")[:500]


def to_connector_error(exc: BaseException, what: str, settings: SplunkSettings) -> ConnectorError:
    if isinstance(exc, binding.AuthenticationError):
        how = "the token was rejected" if settings.auth == "token" else f"login as {settings.username} failed"
        return ConnectorError(f"splunk {what}: authentication failed ({how}; HTTP {exc.status})")
    if isinstance(exc, binding.HTTPError):
        return ConnectorError(f"splunk {what}: HTTP {exc.status} {exc.reason}: {error_detail(exc)}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectorError(f"splunk {what}: TLS certificate of {settings.url} not trusted ({exc.verify_message}); set splunk.ca_file")
    if is_connection_error(exc):
        return ConnectorError(f"splunk {what}: cannot reach {settings.url} ({type(exc).__name__}: {exc})")
    return ConnectorError(f"splunk {what}: {type(exc).__name__}: {exc}")


def _retrying(settings: SplunkSettings, predicate: Callable[[BaseException], bool], what: str) -> Retrying:
    def before_sleep(state: Any) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("splunk %s: transient failure (%s), retry %d", what, type(exc).__name__, state.attempt_number)

    return Retrying(
        stop=stop_after_attempt(settings.retry.attempts),
        wait=wait_exponential(multiplier=settings.retry.initial_wait_s, max=settings.retry.max_wait_s),
        retry=retry_if_exception(predicate),
        before_sleep=before_sleep,
        reraise=True,
    )


def _call(settings: SplunkSettings, fn: Callable[[], T], what: str, predicate: Callable[[BaseException], bool]) -> T:
    try:
        return _retrying(settings, predicate, what)(fn)
    except ConnectorError:
        raise
    except (binding.HTTPError, OSError, http.client.HTTPException) as exc:
        raise to_connector_error(exc, what, settings) from None
    except (ValueError, ParseError, TypeError) as exc:
        # JSON/XML/encoding errors in what splunkd sent; splunk-sdk's Atom reader turns bad UTF-8 into a TypeError
        raise ConnectorError(f"splunk {what}: malformed answer from splunkd ({type(exc).__name__}: {str(exc)[:200]})") from None


def call_read(settings: SplunkSettings, fn: Callable[[], T], what: str) -> T:
    """An idempotent call: retried on 503/502/504 and connection errors."""
    return _call(settings, fn, what, is_transient_read)


def call_write(settings: SplunkSettings, fn: Callable[[], T], what: str) -> T:
    """A write: retried only when splunkd provably did not apply it."""
    return _call(settings, fn, what, is_not_applied)


def call_write_verified(settings: SplunkSettings, fn: Callable[[], T], applied: Callable[[], bool], what: str) -> T | None:
    """`call_write`, and when the last answer was lost, `applied()` reads back whether the write took
    effect: if it did, that is success (None); if not, or if it cannot tell, the error stands."""
    lost = False

    def attempt() -> T:
        nonlocal lost
        try:
            return fn()
        except BaseException as exc:
            lost = is_answer_lost(exc)
            raise

    try:
        return call_write(settings, attempt, what)
    except ConnectorError as exc:
        if not lost:
            raise
        try:
            done = applied()
        except ConnectorError:
            raise exc from None
        if not done:
            raise ConnectorError(f"{exc}; splunkd does not show the write, and it is not sent blindly again") from None
        log.info("splunk %s: the answer was lost, but splunkd shows the write applied", what)
        return None


_SLOTS: dict[str, PrioritySlots] = {}
_SLOTS_LOCK = threading.Lock()


def search_slots(settings: SplunkSettings) -> PrioritySlots:
    """Concurrent searches per splunkd, shared by every connector in this process (the chain's searches first)."""
    with _SLOTS_LOCK:
        key = f"{settings.url}|{settings.search.max_concurrent}"
        if key not in _SLOTS:
            _SLOTS[key] = PrioritySlots(settings.search.max_concurrent)
        return _SLOTS[key]
