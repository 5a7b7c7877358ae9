"""Build the configured EDR connectors and pick the one that covers a host.

Coverage rules are tried in order; a pattern matches case-insensitively against the host's full
name and against its short name (the part before the first dot), so `ws-*` covers both `WS-042`
and `ws-042.corp.example`, and `*.corp.example` covers only fully qualified names.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase

from siemcrew.config.edr import EdrSettings
from siemcrew.connectors.base import EdrConnector
from siemcrew.connectors.edr.crowdstrike import FalconEdr
from siemcrew.connectors.edr.defender import DefenderEdr
from siemcrew.connectors.edr.elastic_defend import ElasticDefendEdr
from siemcrew.connectors.edr.http import HttpOptions
from siemcrew.connectors.edr.sentinelone import SentinelOneEdr

BUILDERS: dict[str, Callable[..., EdrConnector]] = {
    "crowdstrike": FalconEdr,
    "defender": DefenderEdr,
    "sentinelone": SentinelOneEdr,
    "elastic_defend": ElasticDefendEdr,
}


def build_edr(settings: EdrSettings, options: HttpOptions | None = None) -> dict[str, EdrConnector]:
    """One connector per configured vendor block, keyed by vendor name (no network calls here)."""
    return {name: BUILDERS[name](getattr(settings, name), options) for name in settings.configured()}


def covers(pattern: str, hostname: str) -> bool:
    name = hostname.strip().lower()
    pattern = pattern.strip().lower()
    short = name.split(".", 1)[0]
    return fnmatchcase(name, pattern) or fnmatchcase(short, pattern)


def edr_for_host(
    settings: EdrSettings, connectors: dict[str, EdrConnector], hostname: str | None
) -> EdrConnector | None:
    """The connector of the first coverage rule matching `hostname`; None when no rule covers it."""
    if not hostname:
        return None
    for rule in settings.coverage:
        if any(covers(pattern, hostname) for pattern in rule.hosts):
            return connectors.get(rule.vendor)
    return None
