"""A small Kibana API client over httpx: auth, `kbn-xsrf`, spaces, Boom errors and safe retries.

Reads and idempotent writes (setting an alert's workflow status) retry transient failures. Creating
a case or adding a comment is not idempotent, so `post_once` never retries by itself: the caller
checks what exists and decides (see `cases.py`).
"""

from __future__ import annotations

from typing import Any

import ssl

import httpx

from siemcrew.config.elastic import ElasticSettings
from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.elastic.errors import KibanaError, describe
from siemcrew.connectors.elastic.retry import call_with_retries, parse_retry_after

API_VERSION = "2023-10-31"


def _verify(settings: ElasticSettings) -> bool | ssl.SSLContext:
    if settings.verify and settings.ca_file:
        return ssl.create_default_context(cafile=str(settings.ca_file))
    return settings.verify


class KibanaClient:
    """Kibana in one space (API paths get the `/s/<space>` prefix outside the default space)."""

    def __init__(self, settings: ElasticSettings, space: str | None = None) -> None:
        if not settings.kibana_url:
            raise ConnectorError("Kibana is not configured (elastic.kibana_url)")
        self.settings = settings
        self.space = space or settings.space or "default"
        base = settings.kibana_url
        if self.space != "default":
            base = f"{base}/s/{self.space}"
        credentials = settings.credentials()
        headers = {"kbn-xsrf": "true", "elastic-api-version": API_VERSION, "Accept": "application/json"}
        auth: httpx.Auth | None = None
        if "api_key" in credentials:
            headers["Authorization"] = f"ApiKey {credentials['api_key']}"
        elif "basic_auth" in credentials:
            auth = httpx.BasicAuth(*credentials["basic_auth"])
        self.http = httpx.Client(
            base_url=base,
            headers=headers,
            auth=auth,
            verify=_verify(settings),
            timeout=settings.request_timeout,
        )

    def close(self) -> None:
        self.http.close()

    # -- plumbing -----------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise self._error(method, path, response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise KibanaError(f"Kibana {method} {path}: answer is not JSON (HTTP {response.status_code})") from None

    @staticmethod
    def _error(method: str, path: str, response: httpx.Response) -> KibanaError:
        try:
            body = response.json()
        except ValueError:
            body = {}
        message = body.get("message") if isinstance(body, dict) else None
        message = str(message or response.reason_phrase or "error")[:500]
        hint = {401: " (check the API key / password)", 403: " (missing Kibana privilege)"}.get(response.status_code, "")
        return KibanaError(
            f"Kibana {method} {path} failed: HTTP {response.status_code}: {message}{hint}",
            response.status_code,
            parse_retry_after(response.headers.get("retry-after")),
        )

    def _guarded(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConnectorError:
            raise
        except httpx.HTTPError as exc:
            raise describe(exc, action) from None

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        """A read: retried on transient failures."""
        return self._guarded(f"GET {path}", call_with_retries, self.settings, self._send, "GET", path, params=params)

    def post_idempotent(self, path: str, body: dict[str, Any]) -> Any:
        """A write whose repetition is harmless (e.g. set status to X): retried."""
        return self._guarded(f"POST {path}", call_with_retries, self.settings, self._send, "POST", path, json=body)

    def post_once(self, path: str, body: dict[str, Any]) -> Any:
        """A write that must not happen twice: one attempt; the caller verifies before any retry."""
        return self._guarded(f"POST {path}", self._send, "POST", path, json=body)

    # -- API ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return self.get("/api/status")

    def set_alert_status(self, alert_ids: list[str], status: str, reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"signal_ids": alert_ids, "status": status}
        if reason:
            body["reason"] = reason
        return self.post_idempotent("/api/detection_engine/signals/status", body)

    def find_cases(self, tags: list[str], owner: str) -> list[dict[str, Any]]:
        params = {"tags": tags, "owner": owner, "perPage": 100, "sortField": "createdAt", "sortOrder": "asc"}
        return list(self.get("/api/cases/_find", params=params).get("cases") or [])

    def get_case(self, case_id: str) -> dict[str, Any] | None:
        try:
            return self.get(f"/api/cases/{case_id}")
        except KibanaError as exc:
            if exc.status == 404:
                return None
            raise

    def case_comments(self, case_id: str) -> list[dict[str, Any]]:
        comments: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.get(f"/api/cases/{case_id}/comments/_find", params={"page": page, "perPage": 100})
            batch = list(answer.get("comments") or [])
            comments.extend(batch)
            if not batch or len(comments) >= int(answer.get("total") or 0):
                return comments
            page += 1

    def create_case(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.post_once("/api/cases", body)

    def add_comment(self, case_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.post_once(f"/api/cases/{case_id}/comments", body)
