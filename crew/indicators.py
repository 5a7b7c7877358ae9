"""Behavioural indicators over ECS events, interpreted from `config/indicators.yaml`.

The playbook brains reason with these; the same function ranks which rows a tool shows first.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siemcrew.config.settings import CONFIG_DIR, load_yaml


@dataclass(frozen=True)
class Hit:
    name: str
    weight: float
    benign: bool = False


@dataclass(frozen=True)
class _Indicator:
    name: str
    weight: float
    benign: bool
    clauses: tuple[tuple[tuple[str, re.Pattern[str]], ...], ...]  # OR of AND-clauses

    def matches(self, event: dict[str, Any]) -> bool:
        for clause in self.clauses:
            if all(_field_matches(event.get(field), pattern) for field, pattern in clause):
                return True
        return False


def _field_matches(value: Any, pattern: re.Pattern[str]) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, list):
        return any(_field_matches(item, pattern) for item in value)
    return bool(pattern.search(str(value)))


class IndicatorSet:
    def __init__(self, data: dict[str, Any]) -> None:
        self.indicators: list[_Indicator] = []
        for group, benign in (("malicious", False), ("benign", True)):
            for name, spec in (data.get(group) or {}).items():
                clauses_spec = spec.get("any") or [spec.get("when") or {}]
                clauses = tuple(
                    tuple((field, re.compile(rx, re.IGNORECASE)) for field, rx in clause.items())
                    for clause in clauses_spec
                )
                self.indicators.append(_Indicator(name, float(spec.get("weight", 1)), benign, clauses))
        prevalence = data.get("prevalence") or {}
        self.min_hosts = int(prevalence.get("min_hosts", 5))
        self.min_days = int(prevalence.get("min_days", 3))
        self.rare_max_hosts = int(prevalence.get("rare_max_hosts", 1))
        self.system_accounts = [p.lower() for p in data.get("system_accounts") or []]

    @classmethod
    @functools.lru_cache(maxsize=4)
    def load(cls, path: Path | None = None) -> "IndicatorSet":
        return cls(load_yaml(path or CONFIG_DIR / "indicators.yaml") or {})

    def hits(self, event: dict[str, Any]) -> list[Hit]:
        return [Hit(i.name, i.weight, i.benign) for i in self.indicators if i.matches(event)]

    def malice(self, event: dict[str, Any]) -> float:
        return sum(h.weight for h in self.hits(event) if not h.benign)

    def relevance(self, event: dict[str, Any]) -> float:
        """How much a row says either way: malice first, then recognised benign automation."""
        hits = self.hits(event)
        return sum(h.weight for h in hits if not h.benign) + 0.1 * sum(h.weight for h in hits if h.benign)

    def is_system_account(self, user: str | None) -> bool:
        name = (user or "").strip().lower()
        short = name.split("\\")[-1]
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(short, p) for p in self.system_accounts)


def is_external_ip(value: Any) -> bool:
    try:
        ip = ipaddress.ip_address(str(value).split("%")[0].removeprefix("::ffff:"))
    except ValueError:
        return False
    return ip.is_global


def is_internal_ip(value: Any) -> bool:
    try:
        ip = ipaddress.ip_address(str(value).split("%")[0].removeprefix("::ffff:"))
    except ValueError:
        return False
    return ip.is_private and not ip.is_loopback and not ip.is_link_local


def short_host(name: str | None) -> str:
    return (name or "").split(".")[0].upper()


def account(event: dict[str, Any]) -> str | None:
    """DOMAIN\\name of the event's user, or the bare name when the domain is unknown."""
    name = event.get("user.name")
    if not name:
        return None
    domain = str(event.get("user.domain") or "").split(".")[0].upper()
    return f"{domain}\\{name}" if domain and "\\" not in str(name) else str(name)
