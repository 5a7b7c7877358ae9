"""The `edr:` section: one block per EDR vendor, which vendor covers which hosts, and action timing.

Secrets are never values here: each block names the environment variable (or file) that holds
them, read through `siemcrew.config.settings.secret` at the moment a token is needed. Every base
and login URL is configurable so that tests (and sovereign clouds) can point them elsewhere.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from siemcrew.config.settings import SettingsError, secret

VendorName = Literal["crowdstrike", "defender", "sentinelone", "elastic_defend"]

FALCON_REGIONS: dict[str, str] = {
    "us-1": "https://api.crowdstrike.com",
    "us-2": "https://api.us-2.crowdstrike.com",
    "eu-1": "https://api.eu-1.crowdstrike.com",
    "us-gov-1": "https://api.laggar.gcw.crowdstrike.com",
}

DEFENDER_GEOS = ("us", "eu", "uk", "au", "swa", "ina", "aea")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetrySettings(_Section):
    """Exponential backoff for idempotent calls and for 429s; waits are small in tests."""

    attempts: int = Field(5, ge=1, le=20)
    initial_wait_s: float = Field(0.5, ge=0)
    max_wait_s: float = Field(30.0, ge=0)
    max_retry_after_s: float = Field(120.0, ge=0)


class VendorSection(_Section):
    """What every vendor block has: TLS, timeouts, retries and an optional client-side rate limit."""

    verify: bool = True
    ca_file: str | None = None
    timeout_s: float = Field(30.0, gt=0)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    rate_limit_per_minute: int | None = Field(None, ge=1)

    def tls_verify(self) -> bool | str:
        """httpx's `verify`: a CA bundle path when given, else the flag (on by default)."""
        if not self.verify:
            return False
        return self.ca_file or True


def required_secret(vendor: str, env: str | None, file: str | None, what: str) -> str:
    """Resolve a secret or fail with a message that names the variable, never the value."""
    value = secret(env, file)
    if not value:
        where = " or ".join(x for x in (f"env var {env}" if env else "", f"file {file}" if file else "") if x)
        raise SettingsError(f"edr.{vendor}: {what} is not set ({where or 'no env var or file configured'})")
    return value


class CrowdStrikeSettings(VendorSection):
    base_url: str | None = None
    region: str = "us-1"
    client_id_env: str = "FALCON_CLIENT_ID"
    client_secret_env: str = "FALCON_CLIENT_SECRET"
    client_secret_file: str | None = None
    member_cid: str | None = None
    token_refresh_margin_s: float = Field(120.0, ge=0)

    @model_validator(mode="after")
    def _region_known(self) -> CrowdStrikeSettings:
        if self.base_url is None and self.region not in FALCON_REGIONS:
            raise ValueError(f"unknown Falcon region {self.region!r}; use one of {sorted(FALCON_REGIONS)} or base_url")
        return self

    @property
    def api_base(self) -> str:
        return (self.base_url or FALCON_REGIONS[self.region]).rstrip("/")


class DefenderSettings(VendorSection):
    tenant_id: str
    client_id_env: str = "MDE_CLIENT_ID"
    client_secret_env: str = "MDE_CLIENT_SECRET"
    client_secret_file: str | None = None
    geo: str | None = None
    api_base: str | None = None
    graph_base: str = "https://graph.microsoft.com"
    login_base: str = "https://login.microsoftonline.com"
    api_scope: str = "https://api.securitycenter.microsoft.com/.default"
    graph_scope: str = "https://graph.microsoft.com/.default"
    rate_limit_per_minute: int | None = Field(100, ge=1)
    hunting_rate_limit_per_minute: int = Field(45, ge=1)
    isolation_type: Literal["Full", "Selective"] = "Full"
    token_refresh_margin_s: float = Field(120.0, ge=0)

    @model_validator(mode="after")
    def _geo_known(self) -> DefenderSettings:
        if self.geo is not None and self.geo not in DEFENDER_GEOS:
            raise ValueError(f"unknown Defender geo {self.geo!r}; use one of {list(DEFENDER_GEOS)} or api_base")
        return self

    @property
    def machines_base(self) -> str:
        if self.api_base:
            return self.api_base.rstrip("/")
        if self.geo:
            return f"https://{self.geo}.api.security.microsoft.com"
        return "https://api.securitycenter.microsoft.com"


class SentinelOneSettings(VendorSection):
    base_url: str = Field(..., description="https://<tenant>.sentinelone.net (the /web/api/v2.1 suffix is added)")
    token_env: str = "S1_API_TOKEN"
    token_file: str | None = None
    page_size: int = Field(100, ge=1, le=1000)
    dv_timeout_s: float = Field(120.0, gt=0)

    @property
    def api_base(self) -> str:
        base = self.base_url.rstrip("/")
        return base if base.endswith("/web/api/v2.1") else base + "/web/api/v2.1"


class ElasticDefendSettings(VendorSection):
    kibana_url: str
    space: str = "default"
    api_key_env: str | None = "KIBANA_API_KEY"
    api_key_file: str | None = None
    username: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    elasticsearch_url: str | None = None
    metadata_field_prefix: str = "united.endpoint."
    process_index: str = "logs-endpoint.events.process-*"
    action_poll_timeout_s: float = Field(60.0, gt=0)

    @property
    def kibana_base(self) -> str:
        base = self.kibana_url.rstrip("/")
        return base if self.space == "default" else f"{base}/s/{self.space}"


class Coverage(_Section):
    """Hosts (glob patterns, case-insensitive, matched on the FQDN and on the short name) → vendor."""

    hosts: list[str]
    vendor: VendorName


class EdrSettings(_Section):
    crowdstrike: CrowdStrikeSettings | None = None
    defender: DefenderSettings | None = None
    sentinelone: SentinelOneSettings | None = None
    elastic_defend: ElasticDefendSettings | None = None
    coverage: list[Coverage] = Field(default_factory=list)
    action_timeout_s: float = Field(300.0, gt=0)
    poll_interval_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _coverage_configured(self) -> EdrSettings:
        for rule in self.coverage:
            if getattr(self, rule.vendor) is None:
                raise ValueError(f"coverage names vendor {rule.vendor!r} but edr has no '{rule.vendor}:' block")
        return self

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> EdrSettings:
        """Validate the raw `edr:` mapping of the main settings, with a readable error."""
        try:
            return cls.model_validate(section or {})
        except ValueError as exc:
            raise SettingsError(f"invalid edr configuration: {exc}") from None

    def configured(self) -> list[str]:
        return [name for name in ("crowdstrike", "defender", "sentinelone", "elastic_defend") if getattr(self, name)]
