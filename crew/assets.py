"""Asset and identity context from config: how critical a host is, who a user is, what software is sanctioned.

The policy gate reads host and identity tiers from here (never from a model), and the agents read the
same facts to tell a monitoring agent's PowerShell from an attacker's. Matching is case-insensitive;
hosts match on their full name or their short name (`DC01` matches `dc01.corp.local`); users match
as `name`, `DOMAIN\\name` or `name@domain`; executables match Windows paths with either slash.
Exact names win over glob patterns; among patterns the first one in the file wins.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError

from siemcrew.crew.models import Model

Tier = Literal["tier0", "tier1", "tier2", "unknown"]
Criticality = Literal["low", "medium", "high", "critical"]

_GLOB_CHARS = set("*?[")
_PATH_ALIASES = {
    "%programfiles%": "c:\\program files",
    "%programfiles(x86)%": "c:\\program files (x86)",
    "%programdata%": "c:\\programdata",
    "%systemroot%": "c:\\windows",
    "%windir%": "c:\\windows",
}

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is missing, not YAML, or does not match its schema."""


def load_yaml_model(source: Path | str | Mapping[str, Any], model: type[M], error: type[ValueError] = ConfigError) -> M:
    """Validate a YAML file (or an already-parsed mapping) against `model`, with errors that name the key."""
    where = "<dict>"
    if isinstance(source, Mapping):
        data: Any = dict(source)
    else:
        where = str(source)
        try:
            data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise error(f"{where}: cannot read: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise error(f"{where}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise error(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for item in exc.errors():
            key = ".".join(str(part) for part in item["loc"]) or "<top>"
            message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
            problems.append(f"{key}: {message}")
        raise error(f"{where}: " + "; ".join(problems)) from None


class HostRule(Model):
    match: str
    tier: Tier = "unknown"
    role: str = "unknown"
    criticality: Criticality = "medium"
    owner: str | None = None
    tags: list[str] = Field(default_factory=list)


class IdentityRule(Model):
    match: str
    tier: Tier = "unknown"
    role: str = "user"
    sanctioned_tools: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


class KnownSoftware(Model):
    """Sanctioned software (backup, monitoring, deployment agents) recognised by executable path."""

    name: str
    paths: list[str] = Field(min_length=1)
    publisher: str | None = None
    purpose: str = ""
    services: list[str] = Field(default_factory=list)


class HostDefaults(Model):
    tier: Tier = "unknown"
    role: str = "unknown"
    criticality: Criticality = "medium"


class IdentityDefaults(Model):
    tier: Tier = "unknown"
    role: str = "user"


class Defaults(Model):
    host: HostDefaults = Field(default_factory=HostDefaults)
    identity: IdentityDefaults = Field(default_factory=IdentityDefaults)


class AssetConfig(Model):
    defaults: Defaults = Field(default_factory=Defaults)
    hosts: list[HostRule] = Field(default_factory=list)
    identities: list[IdentityRule] = Field(default_factory=list)
    known_software: list[KnownSoftware] = Field(default_factory=list)


class HostInfo(Model):
    name: str
    matched: str | None = None
    tier: Tier
    role: str
    criticality: Criticality
    owner: str | None = None
    tags: list[str] = Field(default_factory=list)


class IdentityInfo(Model):
    name: str
    domain: str | None = None
    matched: str | None = None
    tier: Tier
    role: str
    sanctioned_tools: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)

    def sanctions(self, executable: str) -> bool:
        """True when this identity is configured to run `executable`."""
        return path_matches(executable, self.sanctioned_tools)


def host_forms(name: str) -> list[str]:
    """The lower-cased names a host is known by: the full name and, for a DNS name, its short name."""
    full = name.strip().lower().rstrip(".")
    forms = [full]
    try:
        ipaddress.ip_address(full)
        return forms
    except ValueError:
        pass
    short = full.split(".", 1)[0]
    if short and short != full:
        forms.append(short)
    return forms


def same_host(a: str, b: str) -> bool:
    """One host: the same full name, or a bare name that is the other's short name (`WS-01` is
    `ws-01.corp.local`; `ws-01.a.local` is not `ws-01.b.local`). Case and a trailing dot do not matter."""
    forms_a, forms_b = host_forms(a), host_forms(b)
    return forms_a[0] == forms_b[0] or (len(forms_a) == 1 and forms_a[0] in forms_b) or (
        len(forms_b) == 1 and forms_b[0] in forms_a)


def same_account(a: str, b: str) -> bool:
    """One account: the same name, and the same domain unless one side names none (`jdoe` is
    `CORP\\jdoe`); a NetBIOS domain matches its DNS name's first label (`CORP` ~ `corp.example`)."""
    (name_a, domain_a), (name_b, domain_b) = split_user(a), split_user(b)
    return name_a == name_b and (domain_a is None or domain_b is None or domain_a.split(".")[0] == domain_b.split(".")[0])


def split_user(user: str) -> tuple[str, str | None]:
    """(name, domain) from `name`, `DOMAIN\\name` or `name@domain`, lower-cased."""
    text = user.strip().lower()
    if "\\" in text:
        domain, _, name = text.rpartition("\\")
        return name, domain or None
    if "@" in text:
        name, _, domain = text.partition("@")
        return name, domain or None
    return text, None


def normalize_path(path: str) -> str:
    """A lower-cased Windows path with backslashes, no `\\\\?\\` prefix and common %VARS% expanded."""
    text = path.strip().strip('"').lower().replace("/", "\\")
    for prefix in ("\\\\?\\", "\\??\\"):
        text = text.removeprefix(prefix)
    for alias, expansion in _PATH_ALIASES.items():
        if text.startswith(alias):
            text = expansion + text[len(alias) :]
    lead = "\\\\" if text.startswith("\\\\") else ""
    return lead + re.sub(r"\\+", r"\\", text[len(lead) :])


def path_matches(path: str, patterns: list[str]) -> bool:
    """Does a path match any pattern? A pattern without a directory matches the file name alone."""
    if not path:
        return False
    full = normalize_path(path)
    base = full.rsplit("\\", 1)[-1]
    for pattern in patterns:
        wanted = normalize_path(pattern)
        if fnmatchcase(full if "\\" in wanted else base, wanted):
            return True
    return False


def _is_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS & set(pattern))


def _first_match(rules: list[Any], test: Any) -> Any:
    """Exact rules first, then glob rules in file order."""
    for exact in (True, False):
        for rule in rules:
            if _is_glob(rule.match) != exact and test(rule.match):
                return rule
    return None


class AssetInventory:
    """Look up hosts, identities and known software from one validated config."""

    def __init__(self, config: AssetConfig) -> None:
        self.config = config

    @classmethod
    def load(cls, source: Path | str | Mapping[str, Any] | None = None) -> "AssetInventory":
        """From a YAML path or a mapping; None loads the shipped `config/assets.yaml`."""
        if source is None:
            source = Path(str(resources.files("siemcrew.config") / "assets.yaml"))
        return cls(load_yaml_model(source, AssetConfig))

    def host(self, name: str) -> HostInfo:
        forms = host_forms(name)

        def test(pattern: str) -> bool:
            wanted = pattern.strip().lower()
            return any(fnmatchcase(form, wanted) for form in forms)

        rule = _first_match(self.config.hosts, test) if forms[0] else None
        if rule is None:
            d = self.config.defaults.host
            return HostInfo(name=name, tier=d.tier, role=d.role, criticality=d.criticality)
        return HostInfo(
            name=name,
            matched=rule.match,
            tier=rule.tier,
            role=rule.role,
            criticality=rule.criticality,
            owner=rule.owner,
            tags=list(rule.tags),
        )

    def identity(self, user: str) -> IdentityInfo:
        name, domain = split_user(user)

        def test(pattern: str) -> bool:
            wanted_name, wanted_domain = split_user(pattern)
            if wanted_domain is not None and (domain is None or not fnmatchcase(domain, wanted_domain)):
                return False
            return fnmatchcase(name, wanted_name)

        rule = _first_match(self.config.identities, test) if name else None
        if rule is None:
            d = self.config.defaults.identity
            return IdentityInfo(name=name, domain=domain, tier=d.tier, role=d.role)
        return IdentityInfo(
            name=name,
            domain=domain,
            matched=rule.match,
            tier=rule.tier,
            role=rule.role,
            sanctioned_tools=list(rule.sanctioned_tools),
            tags=list(rule.tags),
        )

    def known_software(self, executable_path: str) -> KnownSoftware | None:
        for entry in self.config.known_software:
            if path_matches(executable_path, entry.paths):
                return entry
        return None

    def known_service(self, service_name: str) -> KnownSoftware | None:
        """The sanctioned software that installs a Windows service of this name, if any."""
        wanted = service_name.strip().lower()
        for entry in self.config.known_software:
            if any(wanted == service.lower() for service in entry.services):
                return entry
        return None
