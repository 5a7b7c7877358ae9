"""The `elastic:` config section: where Elasticsearch and Kibana are, how to authenticate, what to read.

Secrets are never stored here: the settings name the environment variable (or file) that holds
them, and `credentials()` reads it at connect time. URLs must not carry credentials either, so that
an URL can appear in an error message without leaking anything.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from siemcrew.connectors.base import ConnectorError

DEFAULT_CLOSE_REASONS: dict[str, str] = {
    "benign": "benign_positive",
    "false_positive": "false_positive",
    "duplicate": "duplicate",
    "malicious": "true_positive",
    "true_positive": "true_positive",
}


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"URL must look like https://host:port, got {url!r}")
    if parts.username or parts.password:
        raise ValueError("URL must not contain credentials; use api_key_env or username/password_env")
    return url.rstrip("/")


def _secret(env: str | None, file: Path | None, what: str) -> str | None:
    """Read a secret from the named env var or file; the value never appears in errors."""
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConnectorError(f"{what}: environment variable {env} is not set")
        return value.strip()
    if file:
        try:
            return Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConnectorError(f"{what}: cannot read {file}: {exc.strerror}") from None
    return None


class ElasticSettings(BaseModel):
    """Connection and behaviour of the Elastic connector (Elasticsearch 9.x + Kibana)."""

    model_config = ConfigDict(extra="forbid")

    url: list[str] = Field(default_factory=lambda: ["http://localhost:9200"], description="Elasticsearch URL(s)")
    kibana_url: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    verify: bool = True
    ca_file: Path | None = None
    space: str = "default"
    events_index: str = "logs-*,winlogbeat-*"
    profile: Path | None = Field(default=None, description="data profile YAML; default: Winlogbeat / Elastic Agent ECS")
    alert_index: str | None = None
    include_building_blocks: bool = False
    cases_index: str = "siemcrew-cases"
    kibana_cases: bool = True
    case_owner: str = "securitySolution"
    case_tags: list[str] = Field(default_factory=lambda: ["siemcrew"])
    close_reasons: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CLOSE_REASONS))
    sigma_language: Literal["lucene", "esql", "eql"] = "lucene"
    request_timeout: float = 30.0
    retries: int = 3
    retry_wait: float = 0.5
    retry_wait_max: float = 10.0
    page_size: int = 1000
    pit_keep_alive: str = "2m"
    field_caps_ttl: float = 600.0
    http_compress: bool = False

    @field_validator("url", mode="before")
    @classmethod
    def _urls(cls, value: Any) -> list[str]:
        items = [value] if isinstance(value, str) else list(value or [])
        if not items:
            raise ValueError("at least one Elasticsearch URL is needed")
        return [_check_url(str(item)) for item in items]

    @field_validator("kibana_url")
    @classmethod
    def _kibana(cls, value: str | None) -> str | None:
        return _check_url(value) if value else None

    @field_validator("page_size")
    @classmethod
    def _page(cls, value: int) -> int:
        if not 1 <= value <= 10_000:
            raise ValueError("page_size must be between 1 and 10000 (the index.max_result_window)")
        return value

    @model_validator(mode="after")
    def _one_auth(self) -> "ElasticSettings":
        api = bool(self.api_key_env or self.api_key_file)
        basic = bool(self.username or self.password_env or self.password_file)
        if api and basic:
            raise ValueError("set either api_key_env/api_key_file or username + password_env/password_file, not both")
        if basic and not self.username:
            raise ValueError("password_env/password_file needs a username")
        return self

    @property
    def alerts_index(self) -> str:
        return self.alert_index or f".alerts-security.alerts-{self.space}"

    def credentials(self) -> dict[str, Any]:
        """Client keyword arguments for the configured auth (api_key or basic_auth), read now."""
        key = _secret(self.api_key_env, self.api_key_file, "Elastic API key")
        if key:
            return {"api_key": key}
        if self.username:
            password = _secret(self.password_env, self.password_file, "Elastic password") or ""
            return {"basic_auth": (self.username, password)}
        return {}
