"""The `kind: windows` data profile: Windows events as the Splunk Add-ons for Windows and Sysmon hold them.

Reading: an add-on event IS the raw Windows event (XML field names), so a result row is renamed
where the add-ons spell <System> fields differently from NXLog's export, stripped of Splunk's and the
add-ons' own fields, and read with siemcrew's raw-Windows mapping: rows come out exactly as the
local store produces them for the same event. Rows that are not Windows events are read with the
profile's fallback (CIM).

Searching: a filter on an ECS field becomes, per group of channels/event ids sharing the same
sources (`field_plans.py`), "this channel and event id, and the first non-empty source has a value
that reads as the wanted one" (`patterns.py` runs the mapping's transforms backwards). Negation
follows the local store's SQL: `NOT field = v` never matches events without the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from siemcrew.config.settings import SettingsError
from siemcrew.connectors.base import Filter
from siemcrew.connectors.local.normalize import EVENT_DATA_PREFIX, WindowsMapping
from siemcrew.connectors.splunk.field_plans import Branch, FieldPlans, Plan, Scope, Source
from siemcrew.connectors.splunk.patterns import WILD, Pattern, for_op, raw_patterns
from siemcrew.connectors.splunk.profile import DEFAULT_FIELDS, SplunkProfile, load_profile, resolve_mapping_file
from siemcrew.crew.timeutil import parse_time

if TYPE_CHECKING:
    from siemcrew.connectors.splunk.dialect import SplDialect

NEVER = "NOT _time=*"  # every event has _time: a condition no event meets
TIMESTAMP = "@timestamp"


class WindowsTaProfile:
    field_map: dict[str, str] = {TIMESTAMP: "_time"}

    def __init__(
        self,
        *,
        name: str,
        mapping_path: Path,
        fallback: SplunkProfile,
        channel_field: str,
        event_code_field: str,
        source_prefixes: Sequence[str],
        system: dict[str, str | None],
        spellings: dict[str, list[str]],
        request: Sequence[str],
        skip: Iterable[str],
        sigma: dict[str, Any],
    ) -> None:
        self.name = name
        self.fallback = fallback
        self.channel_field = channel_field
        self.event_code_field = event_code_field
        self.source_prefixes = tuple(source_prefixes)
        self.system = dict(system)
        self.to_splunk = {raw: splunk for splunk, raw in self.system.items() if raw}
        self.spellings = {raw: list(names) for raw, names in spellings.items()}
        self.skip = frozenset(skip)
        self.sigma = sigma
        self.mapping = WindowsMapping(mapping_path)
        data = yaml.safe_load(mapping_path.read_text(encoding="utf-8")) or {}
        self.plans = FieldPlans(data)
        self.empty_values = [str(v) for v in data.get("empty", ["", "-"]) if str(v)]
        self._requested = self._requested_names(request)

    @classmethod
    def from_data(cls, data: dict[str, Any], path: Path) -> "WindowsTaProfile":
        try:
            fallback = load_profile(str(resolve_mapping_file(str(data["fallback"]), path))) if data.get("fallback") \
                else load_profile("splunk_cim")
            return cls(
                name=str(data.get("name") or path.stem),
                mapping_path=resolve_mapping_file(str(data.get("windows_mapping") or "windows_ecs.yaml"), path),
                fallback=fallback,
                channel_field=str(data.get("channel_field") or "Channel"),
                event_code_field=str(data.get("event_code_field") or "EventCode"),
                source_prefixes=[str(p) for p in data.get("source_prefixes") or []],
                system={str(k): (str(v) if v is not None else None) for k, v in (data.get("system") or {}).items()},
                spellings={str(k): [str(n) for n in v] for k, v in (data.get("spellings") or {}).items()},
                request=[str(n) for n in data.get("request") or []],
                skip=[str(n) for key in ("splunk_fields", "derived", "notable_fields") for n in data.get(key) or []],
                sigma=data.get("sigma") or {},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SettingsError(f"splunk profile {path}: {type(exc).__name__}: {exc}") from None

    # -- names -------------------------------------------------------------------------------
    def splunk_names(self, raw: str) -> list[str]:
        """The Splunk field names a raw Windows field name goes by (every spelling)."""
        name = self.to_splunk.get(raw, raw)
        return self.spellings.get(name) or self.spellings.get(raw) or [name]

    def _requested_names(self, extra: Sequence[str]) -> list[str]:
        names = [*DEFAULT_FIELDS, self.channel_field, self.event_code_field]
        found: list[str] = []
        raws = self.plans.raw_names() | {raw for raw in self.system.values() if raw} | set(extra)
        for raw in sorted(raws):
            found.extend(self.splunk_names(raw))
        return list(dict.fromkeys(names + found))

    def requested(self, filters: Iterable[str] = ()) -> list[str]:
        extra = [name for f in filters if not self.plans.known(f) for name in self._field_names(f)]
        return list(dict.fromkeys(self._requested + extra))

    def _field_names(self, field: str) -> list[str]:
        if field == TIMESTAMP:
            return ["_time"]
        if field.startswith(EVENT_DATA_PREFIX):
            return self.splunk_names(field[len(EVENT_DATA_PREFIX):])
        return self.splunk_names(field)

    def group_names(self, fields: Sequence[str]) -> list[str]:
        """The channel and event code (a group reads as a Windows event only with them) and every
        Splunk field any group-by field is read from."""
        names: list[str] = [self.channel_field, self.event_code_field]
        for field in fields:
            names += self.native_names(field)
        return list(dict.fromkeys(names))

    def native_names(self, field: str) -> list[str]:
        """Every Splunk field this ECS field is read from, in any channel or event."""
        names = [name for branch in self._branches(field) for source in branch.plan.sources
                 for name in self.splunk_names(source.name)]
        return list(dict.fromkeys(names)) if names else self._field_names(field)

    # -- reading -----------------------------------------------------------------------------
    def channel_of(self, row: dict[str, Any]) -> str | None:
        channel = _one(row.get(self.channel_field))
        if channel:
            return channel
        source = _one(row.get("source")) or ""
        for prefix in self.source_prefixes:
            if source.lower().startswith(prefix.lower()) and len(source) > len(prefix):
                return source[len(prefix):]
        return None

    def to_raw(self, row: dict[str, Any]) -> dict[str, Any] | None:
        """The raw Windows event (NXLog's names) a Windows add-on row holds; None for other rows."""
        code = _one(row.get(self.event_code_field)) or _one(row.get("EventID"))
        channel = self.channel_of(row)
        if not code or not channel:
            return None
        raw: dict[str, Any] = {}
        for key, value in row.items():
            if key in self.skip or key in self.system or key.startswith("tag::"):
                continue
            raw[key] = value
        for key, target in self.system.items():
            if target and row.get(key) not in (None, "", []):
                raw.setdefault(target, row[key])
        raw.setdefault("Channel", channel)
        raw.setdefault("EventID", code)
        return raw

    def to_ecs(self, row: dict[str, Any]) -> dict[str, Any]:
        raw = self.to_raw(row)
        return self.fallback.to_ecs(row) if raw is None else self.mapping.to_ecs(raw)

    # -- searching ---------------------------------------------------------------------------
    def _branches(self, field: str) -> list[Branch]:
        if field.startswith(EVENT_DATA_PREFIX):
            return [Branch(Plan((Source(field[len(EVENT_DATA_PREFIX):]),)), (), unscoped=True)]
        branches = self.plans.branches(field)
        if not any(not b.plan.empty for b in branches):
            return [Branch(Plan((Source(field),)), (), unscoped=True)]  # not a mapped field: its own name
        return branches

    def condition(self, flt: Filter, spl: "SplDialect") -> str:
        if flt.field == TIMESTAMP:
            return self._time_condition(flt, spl)
        branches = self._branches(flt.field)
        exists = self._over_branches(branches, spl, self._plan_exists)
        if flt.op == "exists":
            return spl.negate(exists) if flt.negate else exists
        if flt.op in ("gte", "lte"):
            match = self._over_branches(branches, spl, lambda plan, s: self._plan_compare(plan, flt, s))
        else:
            values = flt.values() if flt.op == "in" else [flt.value]
            patterns = [for_op("eq" if flt.op == "in" else flt.op, value) for value in values]
            match = self._over_branches(branches, spl, lambda plan, s: self._plan_match(plan, patterns, s))
        if not flt.negate:
            return match
        return spl.all_of([exists, spl.negate(match)])

    def _over_branches(self, branches: list[Branch], spl: "SplDialect", inner: Any) -> str:
        """OR over branches of (scope AND inner(plan)); inner returns None (never) or "" (always)."""
        alternatives: list[str] = []
        for branch in branches:
            if branch.plan.empty:
                continue
            expr = inner(branch.plan, spl)
            if expr is None:
                continue
            parts = [self._scope(branch, branches, spl), expr]
            alternatives.append(spl.all_of([p for p in parts if p]) or "*")
        return spl.any_of(alternatives) if alternatives else NEVER

    def _scope(self, branch: Branch, branches: list[Branch], spl: "SplDialect") -> str:
        if branch.unscoped:
            return ""
        if any(scope.everything_else for scope in branch.scopes):
            others = [self._scope_expr(s, spl) for b in branches if b is not branch for s in b.scopes]
            return spl.negate(spl.any_of(others)) if others else ""
        return spl.any_of([self._scope_expr(s, spl) for s in branch.scopes])

    def _scope_expr(self, scope: Scope, spl: "SplDialect") -> str:
        parts = [spl.values_in(self.channel_field, scope.channels)]
        if scope.codes:
            parts.append(spl.values_in(self.event_code_field, scope.codes))
        if scope.excluded:
            parts.append(spl.negate(spl.values_in(self.event_code_field, scope.excluded)))
        return spl.all_of(parts)

    def _sources(self, plan: Plan) -> list[tuple[list[str], tuple[str, ...]]]:
        """The plan's sources as Splunk names, duplicates (two raw names, one Splunk field) dropped."""
        seen: list[tuple[list[str], tuple[str, ...]]] = []
        for source in plan.sources:
            item = (self.splunk_names(source.name), source.steps)
            if all(item[0] != other[0] for other in seen):
                seen.append(item)
        return seen

    def _present(self, names: list[str], steps: tuple[str, ...], spl: "SplDialect") -> str:
        """A source gives a value: it is there, not an empty marker, and (as far as a pattern can
        tell) its transforms find something in it (a ContextInfo with a `User = ` line)."""
        wanted = raw_patterns((WILD,), steps)
        return spl.any_of([
            spl.all_of([spl.present(n) if wanted == [(WILD,)] else spl.term(n, wanted),
                        spl.negate(spl.values_in(n, self.empty_values))])
            for n in names
        ])

    def _empty(self, names: list[str], steps: tuple[str, ...], spl: "SplDialect") -> str:
        return spl.negate(self._present(names, steps, spl))

    def _plan_exists(self, plan: Plan, spl: "SplDialect") -> str | None:
        if plan.constant is not None:
            return ""
        return spl.any_of([self._present(names, steps, spl) for names, steps in self._sources(plan)])

    def _plan_match(self, plan: Plan, patterns: list[Pattern], spl: "SplDialect") -> str | None:
        sources = self._sources(plan)
        alternatives: list[str] = []
        for position, (names, steps) in enumerate(sources):
            wanted = list(dict.fromkeys(p for pattern in patterns for p in raw_patterns(pattern, steps)))
            hit = spl.any_of([spl.term(name, wanted) for name in names])
            alternatives.append(spl.all_of([*(self._empty(n, st, spl) for n, st in sources[:position]), hit]))
        if plan.constant is not None and any(_matches(p, plan.constant) for p in patterns):
            alternatives.append(spl.all_of([self._empty(n, st, spl) for n, st in sources]))
        if not alternatives:
            return None
        if "" in alternatives:
            return ""
        return spl.any_of(alternatives)

    def _plan_compare(self, plan: Plan, flt: Filter, spl: "SplDialect") -> str | None:
        sources = self._sources(plan)
        alternatives = []
        for position, (names, _) in enumerate(sources):
            hit = spl.any_of([spl.compare(name, flt.op, flt.value) for name in names])
            alternatives.append(spl.all_of([*(self._empty(n, st, spl) for n, st in sources[:position]), hit]))
        return spl.any_of(alternatives) if alternatives else None

    def _time_condition(self, flt: Filter, spl: "SplDialect") -> str:
        def epoch(value: Any) -> str:
            moment = value if isinstance(value, datetime) else parse_time(value)
            if moment is None:
                raise ValueError(f"@timestamp filter needs a time, got {value!r}")
            return f"{moment.timestamp():.3f}"

        if flt.op == "exists":
            expr = "_time=*"
        elif flt.op in ("gte", "lte"):
            expr = f"_time{'>=' if flt.op == 'gte' else '<='}{epoch(flt.value)}"
        elif flt.op in ("eq", "in"):
            expr = spl.any_of([f"_time={epoch(v)}" for v in flt.values()])
        else:
            raise ValueError(f"@timestamp cannot be filtered with {flt.op!r}")
        return spl.negate(expr) if flt.negate else expr


def _one(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _matches(pattern: Pattern, value: str) -> bool:
    """Whether a constant reads as the pattern (case-insensitive, wildcards)."""
    import re

    regex = "".join(".*" if part is None else re.escape(part) for part in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL) is not None
