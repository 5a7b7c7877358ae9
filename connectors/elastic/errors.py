"""Errors the Elastic connector raises, and the translation of client errors into them.

Callers see `ConnectorError` subclasses with a sentence a human can act on, never a client stack
trace, and never a credential (the client's messages carry none; URLs are credential-free by
settings validation).
"""

from __future__ import annotations

from typing import Any

import httpx
from elastic_transport import ConnectionError as TransportConnectionError
from elastic_transport import ConnectionTimeout, SerializationError, TlsError, TransportError
from elasticsearch import ApiError, UnsupportedProductError

from siemcrew.connectors.base import ConnectorError

ES8_HINT = "Accept version must be either version 8 or 7"
TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


class ElasticCompatibilityError(ConnectorError):
    """The server cannot be used with this client at all; retrying will not help."""


class ClusterTooOld(ElasticCompatibilityError):
    def __init__(self) -> None:
        super().__init__(
            "this is an Elasticsearch 8.x cluster: it rejects the 9.x client's compatible-with=9 headers. "
            "siemcrew talks to Elasticsearch 9.x only (it uses the 9.x client): upgrade the cluster to 9.x"
        )


class NotElasticsearch(ElasticCompatibilityError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"the server is not Elasticsearch (product check failed: {detail}). "
            "OpenSearch, proxies that strip the X-Elastic-Product header and look-alikes are not supported"
        )


class ElasticRequestError(ConnectorError):
    """A request failed with an HTTP status (kept for callers that branch on it)."""

    def __init__(self, message: str, status: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class KibanaError(ElasticRequestError):
    """Kibana failed: an error answer (Boom envelope `{statusCode, error, message}`) or no answer."""

    def __init__(
        self, message: str, status: int | None = None, retry_after: float | None = None, transient: bool | None = None
    ) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after
        self.transient = status in TRANSIENT_STATUS if transient is None else transient


def _reason(body: Any) -> tuple[str | None, str]:
    """(error type, readable reason) from an ES error body in either envelope form."""
    if not isinstance(body, dict):
        return None, str(body)[:300] if body else ""
    error = body.get("error")
    if isinstance(error, str):
        return None, error
    if not isinstance(error, dict):
        return None, ""
    reason = str(error.get("reason") or "")
    caused = error.get("caused_by")
    if isinstance(caused, dict) and caused.get("reason"):
        reason = f"{reason} (caused by: {caused.get('type')}: {caused['reason']})"
    return error.get("type"), reason


def compatibility_problem(exc: BaseException) -> ElasticCompatibilityError | None:
    """The two 'wrong server' failures: an 8.x cluster, or something that is not Elasticsearch."""
    if isinstance(exc, UnsupportedProductError):
        return NotElasticsearch("no X-Elastic-Product: Elasticsearch header in the response")
    if isinstance(exc, ApiError):
        kind, reason = _reason(exc.body)
        if kind == "media_type_header_exception" and ES8_HINT in reason:
            return ClusterTooOld()
        if exc.meta.status == 406 and "is not supported" in reason:
            return NotElasticsearch(f"the server refused the Elasticsearch media type: {reason}")
    if isinstance(exc, SerializationError):
        return NotElasticsearch(f"unreadable response: {exc}")
    return None


def describe(exc: BaseException, action: str) -> ConnectorError:
    """Turn any client-side failure of `action` into a ConnectorError with a clear sentence."""
    if isinstance(exc, ConnectorError):
        return exc
    problem = compatibility_problem(exc)
    if problem is not None:
        return problem
    if isinstance(exc, ApiError):
        kind, reason = _reason(exc.body)
        status = exc.meta.status
        hint = {401: " (check the API key / password)", 403: " (the API key lacks a privilege)"}.get(status, "")
        text = f"Elasticsearch {action} failed: HTTP {status} {kind or exc.message}: {reason}{hint}".rstrip(": ")
        return ElasticRequestError(text, status, kind)
    if isinstance(exc, TlsError):
        return ElasticRequestError(f"Elasticsearch {action} failed: TLS error ({exc.message}); check ca_file/verify")
    if isinstance(exc, ConnectionTimeout):
        return ElasticRequestError(f"Elasticsearch {action} timed out (request_timeout); the cluster is slow or down")
    if isinstance(exc, TransportConnectionError):
        return ElasticRequestError(f"Elasticsearch {action} failed: cannot connect ({exc.message})")
    if isinstance(exc, TransportError):
        return ElasticRequestError(f"Elasticsearch {action} failed: {exc.message}")
    if isinstance(exc, httpx.TimeoutException):
        return KibanaError(f"Kibana {action} timed out", transient=True)
    if isinstance(exc, httpx.TransportError):
        transient = isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError))
        return KibanaError(f"Kibana {action} failed: cannot connect ({type(exc).__name__}: {exc})", transient=transient)
    return ConnectorError(f"Elastic {action} failed: {type(exc).__name__}: {exc}")
