"""Credentials for EDR APIs: cached OAuth2 client-credentials tokens and static header tokens.

Secrets are read through a callable at the moment a token is needed, kept only inside this
object, and never put into reprs, exceptions or logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from siemcrew.connectors.edr.http import Clock, EdrApiError, EdrHttp


class ClientCredentialsToken:
    """A bearer token from `POST <token_path>` (form), refreshed `margin_s` before it expires.

    Falcon tokens last 30 minutes and Entra ID tokens about an hour; refreshing early means a
    long containment poll never sends a request with a token that dies in flight. A 401 from the
    API (revoked, clock skew) calls `invalidate` and the next request fetches a fresh token.
    """

    def __init__(
        self,
        token_http: EdrHttp,
        token_path: str,
        form: Callable[[], dict[str, str]],
        margin_s: float = 120.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self._http = token_http
        self._path = token_path
        self._form = form
        self._margin = margin_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.fetches = 0

    def __repr__(self) -> str:
        return f"ClientCredentialsToken(path={self._path!r}, cached={self._token is not None})"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._current()}"}

    def invalidate(self) -> bool:
        with self._lock:
            self._token = None
            self._expires_at = 0.0
        return True

    def _current(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at - self._margin:
                self._fetch()
            assert self._token is not None
            return self._token

    def _fetch(self) -> None:
        body = self._http.request("POST", self._path, data=self._form(), idempotent=True, authenticated=False)
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise EdrApiError(self._http.vendor, "token endpoint returned no access_token")
        try:
            lifetime = float(body.get("expires_in", 1799))
        except (TypeError, ValueError):
            lifetime = 1799.0
        self._token = token
        self._expires_at = self._clock() + lifetime
        self.fetches += 1


class HeaderToken:
    """A static credential sent in one header (SentinelOne `ApiToken`, Kibana `ApiKey`/`Basic`)."""

    def __init__(self, header: str, value: Callable[[], str]) -> None:
        self._header = header
        self._value = value

    def __repr__(self) -> str:
        return f"HeaderToken(header={self._header!r})"

    def headers(self) -> dict[str, str]:
        return {self._header: self._value()}

    def invalidate(self) -> bool:
        """A static token cannot be refreshed: resending would only draw the same 401."""
        return False
