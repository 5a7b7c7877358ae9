"""Settings: one YAML file plus `SIEMCREW_*` environment variables (pydantic-settings).

Secrets are never values in this model: sections name the environment variable (or file) that
holds them, and `secret()` reads it at the moment of use.
"""

from __future__ import annotations

import hmac
import os
from itertools import combinations
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_DIR = Path(__file__).resolve().parent
PACKAGE_DIR = CONFIG_DIR.parent
EXAMPLES_DIR = PACKAGE_DIR / "examples"


class SettingsError(ValueError):
    """The configuration is invalid; the message names the offending key or file."""


def describe_error(exc: BaseException) -> str:
    """A configuration error for people: locations and messages, never the offending input values
    (pydantic would echo them, and they can be URLs with passwords or API keys)."""
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
                 for e in exc.errors(include_input=False, include_url=False)]
        return "; ".join(parts)
    return str(exc)


def secret(env: str | None = None, file: str | Path | None = None) -> str | None:
    """Read a secret from an env var or a file at the moment of use (never stored, never logged)."""
    if env and os.environ.get(env):
        return os.environ[env]
    if file:
        path = Path(file).expanduser()
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return None


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalSource(Section):
    """The embedded store: event files to load, and the local alert sources."""

    events: list[str] = Field(default_factory=list)
    db: str = ":memory:"
    alerts: list[str] = Field(default_factory=list)
    sigma_rules: list[str] = Field(default_factory=list)
    # what one zip archive may unpack to (members and nested archives together); past it, refused unread
    max_archive_bytes: int = Field(default=256 * 1024**2, gt=0)


class LlmSettings(Section):
    """A real model for some or all roles; absent means the deterministic playbook brains."""

    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    roles: list[str] = Field(default_factory=lambda: ["triage", "hunter", "impact", "verifier", "responder"])
    max_calls_per_case: int = 60
    max_tokens_per_case: int = 200_000
    temperature: float = 0.0
    # Per HTTP request to the model: seconds without progress (connect, send, each read) before the
    # request is abandoned; the provider SDK then retries it (timeouts, 408/409/429/5xx, dropped
    # connections) up to `max_retries` times, waiting as a 429's Retry-After says (up to the SDK's
    # cap) or with exponential backoff. `max_tokens` caps each answer (sent as the request's max_tokens).
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=2, ge=0, le=10)
    max_tokens: int = Field(default=2048, ge=1)


class InvestigationSettings(Section):
    max_extra_rounds: int = 2
    window_before_minutes: int = 60
    window_after_minutes: int = 60
    sample_rows: int = 20
    query_limit: int = 200
    sigma_rules_dir: str | None = None


def base_url(value: str | None, setting: str) -> str | None:
    """An http(s) base URL that people open (shown on pages and in comments, so it never holds
    credentials), without its trailing slash; None when unset."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        raise ValueError(f"{setting} must be http(s)://host[:port][/path], without credentials")
    return value.rstrip("/")


class ServeSettings(Section):
    host: str = "127.0.0.1"
    port: int = 8787
    token_env: str = "SIEMCREW_SERVE_TOKEN"
    webhook_secret_env: str = "SIEMCREW_WEBHOOK_SECRET"
    # Approvers over HTTP: name -> env var holding that person's token. The intake token (which the
    # Splunk app also holds) can never approve; no approvers configured means no HTTP approvals.
    approvers: dict[str, str] = Field(default_factory=dict)
    # Read-only people in the browser: env var of the viewer token (they see cases, never decide).
    viewer_token_env: str = "SIEMCREW_VIEWER_TOKEN"
    # Where people reach the pages (behind a proxy, say): the write-back comment links to
    # <public_url>/cases/<id>; unset, it names `siemcrew report <id>` instead.
    public_url: str | None = None
    # a browser session ends after this many idle minutes, and after `session_max_hours` in any case
    session_minutes: int = Field(default=20, ge=1, le=240)
    session_max_hours: int = Field(default=12, ge=1, le=24)
    workers: int = 1
    # while idle, the worker sends again the write-backs that are due at most this often (crew/outbox.py)
    outbox_every_s: float = Field(default=30.0, gt=0)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return base_url(value, "serve.public_url")


def serve_token_clashes(serve: ServeSettings) -> list[str]:
    """Where two serve credentials that must differ hold the same value, named by setting, never by value.

    The intake token and the webhook secret live in the SIEM (the Splunk app, a Kibana connector): if
    one equals an approver's token, whoever holds it can approve. Two approvers sharing a token could
    approve as each other; a viewer token equal to an approver's would sign its holder in as that
    approver. (The intake token may equal the webhook secret or the viewer token: none can approve.)
    """
    intake = {"serve.token_env": serve.token_env, "serve.webhook_secret_env": serve.webhook_secret_env,
              "serve.viewer_token_env": serve.viewer_token_env}
    approvers = {f"serve.approvers.{name}": env for name, env in serve.approvers.items()}
    values = {label: value for label, env in {**intake, **approvers}.items() if (value := secret(env))}
    return [
        f"{a} and {b} hold the same token"
        for a, b in combinations(values, 2)
        if (a in approvers or b in approvers) and hmac.compare_digest(values[a].encode(), values[b].encode())
    ]


class AuditSettings(Section):
    """The audit chain's optional key: HMAC-SHA256 instead of plain sha256 when one is set.

    Keep it where whoever can write the home cannot read it (an env var of the service, a root-owned
    file outside the home): a key stored next to the log protects nothing, so a `key_file` inside the
    home is refused. `siemcrew audit verify` needs the same key.
    """

    key_env: str | None = "SIEMCREW_AUDIT_KEY"
    key_file: str | None = None


AUDIT_KEY_MIN_BYTES = 32
DATABASE_DRIVERS = ("postgresql", "postgresql+psycopg")


class DatabaseSettings(Section):
    """The state database when the home's SQLite files are outgrown: a PostgreSQL URL
    (`postgresql+psycopg://siemcrew@db.example:5432/siemcrew`). The password never sits in the URL: it is
    read from `password_env` or `password_file` at connect time (or libpq's own PGPASSWORD / ~/.pgpass)."""

    url: str
    password_env: str | None = "SIEMCREW_DATABASE_PASSWORD"
    password_file: str | None = None
    pool_size: int = Field(default=5, ge=1, le=100)

    @model_validator(mode="after")
    def _url(self) -> "DatabaseSettings":
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(self.url)
        except (ArgumentError, ValueError):
            raise SettingsError("database.url is not a database URL (postgresql+psycopg://user@host:5432/name)") from None
        if url.drivername not in DATABASE_DRIVERS:
            raise SettingsError(f"database.url: {url.drivername!r} is not supported; use postgresql+psycopg://… "
                                "(leave `database:` out for the embedded SQLite files in the home)")
        if url.password is not None:
            raise SettingsError("database.url must not hold the password: put it in the environment variable named "
                                "by database.password_env, or in database.password_file")
        return self

    def password(self) -> str | None:
        return secret(self.password_env, self.password_file)


class Settings(BaseSettings):
    """Everything siemcrew reads; `Settings.load(path)` is the only constructor callers use."""

    model_config = SettingsConfigDict(env_prefix="SIEMCREW_", env_nested_delimiter="__", extra="forbid")

    home: str = ".siemcrew"
    source: Literal["local", "splunk", "elastic"] = "local"
    local: LocalSource = Field(default_factory=LocalSource)
    splunk: dict[str, Any] | None = None
    elastic: dict[str, Any] | None = None
    edr: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None  # a Celery task queue on Redis (config/queue.py); absent: in-process
    llm: LlmSettings | None = None
    investigation: InvestigationSettings = Field(default_factory=InvestigationSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    database: DatabaseSettings | None = None
    """None (the default): SQLite files and the audit file in the home, no set-up."""
    executor: Literal["dry-run", "edr"] = "dry-run"
    approval_ttl_seconds: int = 24 * 3600
    agents_file: str | None = None
    tasks_file: str | None = None
    evidence_file: str | None = None
    policy_file: str | None = None
    assets_file: str | None = None
    config_path: str | None = None

    @field_validator("database", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        """`database: <url>` is short for `database: {url: <url>}`; an empty value is the embedded default."""
        if isinstance(value, str):
            return {"url": value} if value.strip() else None
        return value

    @model_validator(mode="after")
    def _source_configured(self) -> "Settings":
        if self.source in ("splunk", "elastic") and getattr(self, self.source) is None:
            raise SettingsError(f"source is {self.source!r} but the config has no '{self.source}:' section")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables override the YAML file (passed as init kwargs).
        return (env_settings, init_settings)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> "Settings":
        data: dict[str, Any] = {}
        base = Path.cwd()
        if path is None and os.environ.get("SIEMCREW_CONFIG"):
            path = os.environ["SIEMCREW_CONFIG"]
        if path is not None:
            file = Path(path).expanduser()
            if not file.is_file():
                raise SettingsError(f"config file not found: {file}")
            try:
                loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise SettingsError(f"{file}: not valid YAML: {exc}") from None
            if not isinstance(loaded, dict):
                raise SettingsError(f"{file}: the top level must be a mapping")
            data = loaded
            base = file.resolve().parent
            data["config_path"] = str(file.resolve())
        data.update(overrides)
        try:
            settings = cls(**data)
        except SettingsError:
            raise
        except ValueError as exc:
            raise SettingsError(f"invalid configuration: {describe_error(exc)}") from None
        settings._resolve_paths(base)
        return settings

    def _resolve_paths(self, base: Path) -> None:
        """Relative paths in the file are relative to the file, as in most tools' configs."""

        def fix(value: str | None) -> str | None:
            if value is None or value == ":memory:":
                return value
            path = Path(value).expanduser()
            return str(path if path.is_absolute() else (base / path).resolve())

        self.home = fix(self.home) or self.home
        self.local.events = [fix(v) or v for v in self.local.events]
        self.local.alerts = [fix(v) or v for v in self.local.alerts]
        self.local.sigma_rules = [fix(v) or v for v in self.local.sigma_rules]
        self.local.db = fix(self.local.db) or self.local.db
        for name in ("agents_file", "tasks_file", "evidence_file", "policy_file", "assets_file"):
            setattr(self, name, fix(getattr(self, name)))
        self.investigation.sigma_rules_dir = fix(self.investigation.sigma_rules_dir)
        self.audit.key_file = fix(self.audit.key_file)
        if self.database is not None:
            self.database.password_file = fix(self.database.password_file)
        if self.queue and self.queue.get("password_file"):
            self.queue["password_file"] = fix(str(self.queue["password_file"]))

    # -- derived locations -------------------------------------------------------------------
    @property
    def home_path(self) -> Path:
        return Path(self.home)

    def config_file(self, name: str) -> Path:
        """A config YAML: the override named in settings, else the packaged default."""
        override = getattr(self, f"{name}_file", None)
        return Path(override) if override else CONFIG_DIR / f"{name}.yaml"

    def queue_settings(self) -> Any:
        """The `queue:` section validated (`config/queue.py`), or None when work runs in-process."""
        if self.queue is None:
            return None
        from siemcrew.config.queue import QueueSettings

        try:
            return QueueSettings.model_validate(self.queue)
        except SettingsError:
            raise
        except ValueError as exc:
            raise SettingsError(f"invalid queue section: {describe_error(exc)}") from None

    def audit_key(self) -> bytes | None:
        """The audit chain's HMAC key, or None (plain sha256). A configured key file that is missing,
        inside the home, or shorter than 32 bytes is an error, never a silent fall-back to no key."""
        if self.audit.key_file:
            path = Path(self.audit.key_file)
            if path.resolve().is_relative_to(self.home_path.resolve()):
                raise SettingsError("audit.key_file must be outside the home: a key next to the log protects nothing")
            try:
                key = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                raise SettingsError("audit.key_file: file not found") from None
            except OSError as exc:
                raise SettingsError(f"audit.key_file: cannot read it ({exc.strerror})") from None
        else:
            key = secret(self.audit.key_env) or ""
            if not key:
                return None
        if len(key.encode("utf-8")) < AUDIT_KEY_MIN_BYTES:
            raise SettingsError(f"the audit key must be at least {AUDIT_KEY_MIN_BYTES} bytes")
        return key.encode("utf-8")

    def redacted(self) -> dict[str, Any]:
        """The settings as shown to people: env var names only, so nothing secret is in it."""
        return self.model_dump(mode="json")


def load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path}: not valid YAML: {exc}") from None
