"""The case record as a Splunk event, and the HTTP Event Collector client that sends it.

The event carries the verdict, summary, findings, an evidence index (id, kind, query, count,
status; never the samples, which are untrusted log content) and the actions. HEC answers with a
JSON `code`; only "server is busy" (9, HTTP 503) and 429 prove the event was not taken, so only
those and refused connections are retried: a case is never indexed twice by a blind retry.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from siemcrew.config.splunk import SplunkSettings
from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.splunk.session import tls_context
from siemcrew.crew.models import Case
from siemcrew.crew.timeutil import iso

log = logging.getLogger("siemcrew.splunk")

HEC_PATH = "/services/collector/event"
HEC_TOKEN_CODES = {1, 2, 3, 4}
HEC_BUSY_CODE = 9


def case_event(case: Case) -> dict[str, Any]:
    """The `event` body of the `siemcrew:case` record."""
    return {
        "case_id": case.id,
        "status": case.status,
        "verdict": case.verdict,
        "confidence": case.confidence,
        "summary": case.summary,
        "alerts": [
            {"id": a.id, "source": a.source, "rule_name": a.rule_name, "severity": a.severity,
             "timestamp": iso(a.timestamp), "link": a.link}
            for a in case.alerts
        ],
        "affected_hosts": case.affected_hosts,
        "affected_users": case.affected_users,
        "findings": [f.model_dump(mode="json") for f in case.findings],
        "evidence": [
            {
                "id": e.id,
                "kind": e.kind,
                "connector": e.connector,
                "language": e.language,
                "query": e.query,
                "count": e.count,
                "status": e.status,
                "entity": e.entity,
                "truncated": e.truncated,
            }
            for e in case.evidence
        ],
        "actions": {
            "proposals": [p.model_dump(mode="json") for p in case.proposals],
            "decisions": [d.model_dump(mode="json") for d in case.decisions],
            "results": [r.model_dump(mode="json") for r in case.results],
        },
        "updated_at": iso(case.updated_at),
    }


def hec_record(case: Case, settings: SplunkSettings) -> dict[str, Any]:
    """One HEC event object: metadata plus the case event and indexed fields for fast filtering."""
    record: dict[str, Any] = {
        "time": round(case.updated_at.timestamp(), 3),
        "host": settings.hec.host or socket.gethostname(),
        "source": settings.hec.source,
        "sourcetype": settings.hec.sourcetype,
        "event": case_event(case),
        "fields": {"case_id": case.id, "verdict": case.verdict},
    }
    if settings.hec.index:
        record["index"] = settings.hec.index
    return record


class HecError(ConnectorError):
    """HEC refused the event; `retryable` is true only when it provably did not index it."""

    def __init__(self, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class HecClient:
    def __init__(self, settings: SplunkSettings) -> None:
        if not settings.hec.url:
            raise ConnectorError("splunk.hec.url is not configured")
        self.settings = settings
        base = settings.hec.url.rstrip("/")
        self.url = base if base.endswith(HEC_PATH) else base + HEC_PATH
        context = tls_context(settings.hec.verify, settings.hec.ca_file) if self.url.startswith("https") else None
        self._client = httpx.Client(verify=context if context is not None else False, timeout=settings.timeout_s)

    def close(self) -> None:
        self._client.close()

    def send(self, record: dict[str, Any]) -> None:
        retrying = Retrying(
            stop=stop_after_attempt(self.settings.retry.attempts),
            wait=wait_exponential(multiplier=self.settings.retry.initial_wait_s, max=self.settings.retry.max_wait_s),
            retry=retry_if_exception(_not_indexed),
            reraise=True,
        )
        try:
            retrying(self._post, record)
        except httpx.ConnectError as exc:
            raise HecError(f"splunk HEC: cannot reach {self.url} ({exc})") from None
        except httpx.HTTPError as exc:
            raise HecError(f"splunk HEC: {type(exc).__name__} talking to {self.url}; the case may or may not be indexed") from None

    def health(self) -> str:
        """Is HEC up and is the token accepted? The health endpoint, then an empty event post: Splunk answers
        code 5 ("No data") to a token it accepts and indexes nothing (code 2-4 for a token it refuses)."""
        base = self.url[: -len(HEC_PATH)]
        try:
            health = self._client.get(base + "/services/collector/health")
            probe = self._client.post(self.url, content=b"", headers={"Authorization": f"Splunk {self.settings.hec_token()}"})
        except httpx.HTTPError as exc:
            raise HecError(f"splunk HEC: cannot reach {self.url} ({type(exc).__name__}: {exc})") from None
        if health.status_code != 200:
            raise HecError(f"splunk HEC is not healthy (HTTP {health.status_code}: {health.text[:200]})")
        try:
            code = probe.json().get("code")
        except ValueError:
            code = None
        if code in HEC_TOKEN_CODES:
            raise HecError(f"splunk HEC rejected the token (code {code}); check env var {self.settings.hec.token_env}")
        if code != 5:
            raise HecError(f"splunk HEC answered an empty post with HTTP {probe.status_code}, code {code}")
        return f"{self.url}: healthy, token accepted"

    def _post(self, record: dict[str, Any]) -> None:
        token = self.settings.hec_token()
        response = self._client.post(self.url, json=record, headers={"Authorization": f"Splunk {token}"})
        try:
            body = response.json()
        except ValueError:
            body = {}
        code = body.get("code") if isinstance(body, dict) else None
        text = body.get("text", "") if isinstance(body, dict) else ""
        if response.status_code == 200 and code in (0, None):
            return
        where = f"HTTP {response.status_code}, code {code}: {text or response.reason_phrase}"
        if code in HEC_TOKEN_CODES:
            raise HecError(f"splunk HEC rejected the token ({where}); check env var {self.settings.hec.token_env}")
        if code == HEC_BUSY_CODE or response.status_code in (429, 503):
            raise HecError(f"splunk HEC is busy ({where})", retryable=True)
        raise HecError(f"splunk HEC refused the case event ({where})")


def _not_indexed(exc: BaseException) -> bool:
    return (isinstance(exc, HecError) and exc.retryable) or isinstance(exc, httpx.ConnectError)
