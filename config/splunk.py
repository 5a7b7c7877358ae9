"""The `splunk:` section: where splunkd is, how to authenticate, where alerts come from, where cases go.

Secrets are never values here: the section names the environment variable (or file) that holds
them, read through `siemcrew.config.settings.secret` when the connector needs them. TLS
verification is on by default (splunk-sdk's own default is off).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from siemcrew.config.settings import Section, SettingsError, base_url, secret


class SplunkRetry(Section):
    """Backoff for 503 search quota and connection errors; tests shrink the waits."""

    attempts: int = Field(5, ge=1, le=20)
    initial_wait_s: float = Field(1.0, ge=0)
    max_wait_s: float = Field(30.0, ge=0)


class SplunkSearch(Section):
    """How searches run: polled jobs (default) or export streaming, and their limits.

    `scope` starts every event search; `exclude` terms are added as `NOT ...` (alerts and summaries
    are not activity), and siemcrew's own output (the HEC index, the case sourcetype) always is.
    `profile` names the data profile (how the data names what the tools read): a packaged one
    (`splunk_ta_windows`, `splunk_cim`) or the path of a YAML file in the same form.
    """

    mode: Literal["job", "export"] = "job"
    scope: str = "index=*"
    exclude: list[str] = Field(default_factory=lambda: ["index=notable", "index=risk", "index=summary*"])
    profile: str = "splunk_ta_windows"
    max_concurrent: int = Field(8, ge=1, le=50)  # a stage sends up to 8 independent searches at once
    poll_interval_s: float = Field(0.5, gt=0)
    job_timeout_s: float = Field(300.0, gt=0)
    page_size: int = Field(5000, ge=1, le=50_000)
    macros: list[str] = Field(default_factory=lambda: ["notable"])
    # profile: the data profile's own Sigma settings; splunk_windows / splunk_cim: pySigma's pipelines
    sigma_pipeline: Literal["profile", "splunk_windows", "splunk_cim", "none"] = "profile"
    # native SPL (written by an agent or an analyst) runs as in Splunk Web: smart mode returns the
    # fields of event searches; fast mode would return only the fields the search names
    native_search_level: Literal["fast", "smart", "verbose"] = "smart"


class SplunkAlerts(Section):
    """Where alerts come from: ES notables through the `notable` macro, or a saved search's results."""

    source: Literal["notable", "saved_search"] = "notable"
    saved_search: str | None = None
    statuses: list[str] = Field(default_factory=lambda: ["0", "1"])
    initial_lookback: str = "-24h"
    overlap_s: float = Field(300.0, ge=0)
    closed_status: Literal[4, 5] = 5

    @model_validator(mode="after")
    def _saved_search_named(self) -> "SplunkAlerts":
        if self.source == "saved_search" and not self.saved_search:
            raise ValueError("splunk.alerts.saved_search must name the saved search when source is saved_search")
        return self


class SplunkHec(Section):
    """HTTP Event Collector for case records; without `url` the case goes to receivers/simple."""

    url: str | None = None
    token_env: str = "SPLUNK_HEC_TOKEN"
    token_file: str | None = None
    index: str | None = None
    sourcetype: str = "siemcrew:case"
    source: str = "siemcrew"
    host: str | None = None
    verify: bool = True
    ca_file: str | None = None


class SplunkSettings(Section):
    """Everything the Splunk connector reads."""

    url: str = "https://localhost:8089"
    auth: Literal["token", "password"] = "token"
    token_env: str = "SPLUNK_TOKEN"
    token_file: str | None = None
    username: str | None = None
    password_env: str = "SPLUNK_PASSWORD"
    password_file: str | None = None
    verify: bool = True
    ca_file: str | None = None
    app: str = "search"
    owner: str = "nobody"
    # Splunk Web (the search UI people use, not the management port): evidence links re-run the same
    # search there, in `web_app` (default: `app`); unset, the pages show the query without a link.
    web_url: str | None = None
    web_app: str | None = None
    timeout_s: float = Field(60.0, gt=0)
    search: SplunkSearch = Field(default_factory=SplunkSearch)
    alerts: SplunkAlerts = Field(default_factory=SplunkAlerts)
    hec: SplunkHec = Field(default_factory=SplunkHec)
    retry: SplunkRetry = Field(default_factory=SplunkRetry)

    @field_validator("url")
    @classmethod
    def _management_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"splunk.url must be http(s)://host:port, got {value!r}")
        return value.rstrip("/")

    @field_validator("web_url")
    @classmethod
    def _web_url(cls, value: str | None) -> str | None:
        return base_url(value, "splunk.web_url")

    @model_validator(mode="after")
    def _password_needs_user(self) -> "SplunkSettings":
        if self.auth == "password" and not self.username:
            raise ValueError("splunk.username is required when splunk.auth is 'password'")
        return self

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "localhost"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 8089

    def credentials(self) -> dict[str, str]:
        """splunk-sdk keyword arguments for the configured auth; the error names the variable only."""
        if self.auth == "token":
            token = secret(self.token_env, self.token_file)
            if not token:
                raise SettingsError(f"splunk: token not set (env var {self.token_env} or token_file)")
            return {"splunkToken": token}
        password = secret(self.password_env, self.password_file)
        if not password:
            raise SettingsError(f"splunk: password not set (env var {self.password_env} or password_file)")
        return {"username": self.username or "", "password": password}

    def hec_token(self) -> str:
        token = secret(self.hec.token_env, self.hec.token_file)
        if not token:
            raise SettingsError(f"splunk.hec: token not set (env var {self.hec.token_env} or token_file)")
        return token
