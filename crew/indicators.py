"""Behavioural indicators over ECS events, interpreted from `config/indicators.yaml`.

The playbook brains reason with these; the same function ranks which rows a tool shows first.
A clause maps an ECS field to a condition: a regular expression (case-insensitive search), or
`{bits_any: 0x10}` for access masks. A field written `!field` must NOT match (or be absent).
An indicator matches when all conditions of one of its clauses hold.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from siemcrew.config.settings import CONFIG_DIR, load_yaml

Condition = Callable[[Any], bool]
ENCODED_COMMAND = re.compile(r"(?:powershell|pwsh)(?:\.exe)?\b.*?\s[-/]e(?:c|nc\w*)?\s+[\"']?([A-Za-z0-9+/=]{16,})", re.IGNORECASE)
SCRIPT_FIELD = "powershell.script_block_text"
TECHNIQUE = re.compile(r"\bT\d{4}(?:\.\d{3})?\b")


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
    source: str
    clauses: tuple[tuple[tuple[str, bool, Condition], ...], ...]  # OR of AND-clauses of (field, negated, test)

    def matches(self, event: dict[str, Any]) -> bool:
        return any(clause_matches(clause, event) for clause in self.clauses)


def clause_matches(clause: tuple[tuple[str, bool, Condition], ...], event: dict[str, Any]) -> bool:
    """All conditions of the clause hold for the event (a negated one: the field is absent or differs)."""
    for field, negated, test in clause:
        present = _any_value(event.get(field), test)
        if present == negated:
            return False
    return True


def _any_value(value: Any, test: Condition) -> bool:
    if value is None or value == "":
        return False
    if isinstance(value, (list, tuple)):
        return any(_any_value(item, test) for item in value)
    return test(value)


def _as_int(value: Any) -> int | None:
    try:
        return int(str(value).strip(), 0) if not isinstance(value, int) else value
    except ValueError:
        return None


def condition(spec: Any) -> Condition:
    """A condition from its YAML form: a regex string, or {bits_any: mask} over an integer field."""
    if isinstance(spec, dict) and "bits_any" in spec:
        mask = _as_int(spec["bits_any"]) or 0
        return lambda value: ((_as_int(value) or 0) & mask) != 0
    pattern = re.compile(str(spec), re.IGNORECASE)
    return lambda value: bool(pattern.search(str(value)))


def compile_clause(clause: dict[str, Any]) -> tuple[tuple[str, bool, Condition], ...]:
    return tuple((field.lstrip("!"), field.startswith("!"), condition(spec)) for field, spec in clause.items())


def clauses_of(spec: dict[str, Any]) -> tuple[tuple[tuple[str, bool, Condition], ...], ...]:
    """`any: [clause, ...]` or `when: clause`. An empty clause is dropped: a spec without conditions
    (a typo such as `whn:`) matches nothing rather than everything."""
    return tuple(compile_clause(c) for c in (spec.get("any") or [spec.get("when") or {}]) if c)


def fields_of(spec: dict[str, Any]) -> set[str]:
    return {field.lstrip("!") for clause in (spec.get("any") or [spec.get("when") or {}]) for field in clause}


class IndicatorSet:
    def __init__(self, data: dict[str, Any]) -> None:
        self.indicators: list[_Indicator] = []
        fields: set[str] = set()
        for group, benign in (("malicious", False), ("benign", True)):
            for name, spec in (data.get(group) or {}).items():
                self.indicators.append(_Indicator(name, float(spec.get("weight", 1)), benign,
                                                  str(spec.get("source") or ""), clauses_of(spec)))
                fields |= fields_of(spec)
        self.fields = tuple(sorted(fields))
        prevalence = data.get("prevalence") or {}
        self.min_hosts = int(prevalence.get("min_hosts", 5))
        self.min_days = int(prevalence.get("min_days", 3))
        self.rare_max_hosts = int(prevalence.get("rare_max_hosts", 1))
        self.spread_minutes = int(prevalence.get("spread_minutes", 120))
        self.spread_weight = float(prevalence.get("spread_weight", 4))
        self.system_accounts = [p.lower() for p in data.get("system_accounts") or []]
        self._cache: dict[tuple[Any, ...], tuple[Hit, ...]] = {}

    @classmethod
    @functools.lru_cache(maxsize=4)
    def load(cls, path: Path | None = None) -> "IndicatorSet":
        return cls(load_yaml(path or CONFIG_DIR / "indicators.yaml") or {})

    def weight(self, name: str) -> float:
        return next((i.weight for i in self.indicators if i.name == name), 0.0)

    def techniques(self, name: str) -> list[str]:
        """The ATT&CK techniques an indicator evidences: the ids its `source` line names."""
        source = next((i.source for i in self.indicators if i.name == name), "")
        return list(dict.fromkeys(TECHNIQUE.findall(source)))

    def hits(self, event: dict[str, Any]) -> list[Hit]:
        """Indicators the event matches; memoised on the fields indicators read (rows repeat a lot).

        An encoded PowerShell command (-EncodedCommand) is decoded and read as the script it is, so
        what it does counts, not only that it was hidden (ATT&CK T1027.010)."""
        key = tuple(_hashable(event.get(field)) for field in self.fields)
        found = self._cache.get(key)
        if found is None:
            matched = [i for i in self.indicators if i.matches(event)]
            script = decoded_command(event)
            if script:
                decoded = {SCRIPT_FIELD: script}
                matched += [i for i in self.indicators if i not in matched and i.matches(decoded)]
            found = tuple(Hit(i.name, i.weight, i.benign) for i in matched)
            if len(self._cache) > 200_000:
                self._cache.clear()
            self._cache[key] = found
        return list(found)

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


def decoded_command(event: dict[str, Any]) -> str | None:
    """The script inside a PowerShell -EncodedCommand (base64 of UTF-16LE) in a command line, service
    binary, registry value or task, if there is one."""
    for field in ("process.command_line", "service.executable", "registry.data.strings", "task.content"):
        match = ENCODED_COMMAND.search(str(event.get(field) or ""))
        if not match:
            continue
        blob = match.group(1)
        try:
            raw = base64.b64decode(blob + "=" * (-len(blob) % 4), validate=False)
        except (binascii.Error, ValueError):
            continue
        text = raw.decode("utf-16-le", errors="ignore") if raw[1:2] == b"\x00" else raw.decode("utf-8", errors="ignore")
        if text.strip():
            return text
    return None


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


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
