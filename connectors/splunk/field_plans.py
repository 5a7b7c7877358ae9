"""Where each internal (ECS) field comes from in raw Windows events, per channel and event id.

Read from siemcrew's raw-Windows mapping (`config/mappings/windows_ecs.yaml`), the same data the
local store normalizes with: an ECS field takes the first non-empty of its sources, and the sources
depend on the channel and the event id (layers common -> channel -> event, later wins). A search
for an ECS value therefore becomes, per group of (channel, event id) sharing the same sources, the
channel/event condition AND "the first non-empty source has that value".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

CONSTANTS = {"event.category": "category", "event.action": "action", "event.outcome": "outcome"}


@dataclass(frozen=True)
class Source:
    """One raw field and the transforms the mapping applies to it."""

    name: str
    steps: tuple[str, ...] = ()

    @classmethod
    def parse(cls, spec: str) -> "Source":
        name, *steps = str(spec).split("|")
        return cls(name.strip(), tuple(step.strip() for step in steps))


@dataclass(frozen=True)
class Plan:
    """How one ECS field is derived in some events: first non-empty source, else the constant."""

    sources: tuple[Source, ...] = ()
    constant: str | None = None

    @property
    def empty(self) -> bool:
        return not self.sources and self.constant is None


@dataclass(frozen=True)
class Scope:
    """The events a plan applies to: channels (lower-case) with all their events but `excluded`,
    or only `codes`; `everything_else` stands for every event no other scope of the field names."""

    channels: tuple[str, ...] = ()
    codes: tuple[int, ...] = ()
    excluded: tuple[int, ...] = ()
    everything_else: bool = False


@dataclass(frozen=True)
class Branch:
    plan: Plan
    scopes: tuple[Scope, ...]
    unscoped: bool = False  # the plan holds for every event


class FieldPlans:
    """ECS field -> branches, computed once per field from the mapping data."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.common: dict[str, Any] = data.get("common") or {}
        self.sections: dict[str, dict[str, Any]] = data.get("sources") or {}
        self.channels: dict[str, list[str]] = defaultdict(list)
        for channel, short in (data.get("channels") or {}).items():
            if short in self.sections:
                self.channels[short].append(str(channel).lower())
        self._cache: dict[str, list[Branch]] = {}

    def known(self, field: str) -> bool:
        return any(not branch.plan.empty for branch in self.branches(field))

    def raw_names(self) -> set[str]:
        """Every raw field name any ECS field is read from."""
        names: set[str] = set()
        for layer in self._layers():
            for specs in (layer.get("fields") or {}).values():
                names.update(Source.parse(spec).name for spec in specs)
        return names

    def branches(self, field: str) -> list[Branch]:
        if field not in self._cache:
            self._cache[field] = self._branches(field)
        return self._cache[field]

    # -- building ----------------------------------------------------------------------------
    def _layers(self) -> list[dict[str, Any]]:
        layers = [self.common]
        for section in self.sections.values():
            layers.append(section)
            layers.extend((section.get("events") or {}).values())
        return layers

    def _plan(self, field: str, *layers: dict[str, Any]) -> Plan:
        sources: tuple[Source, ...] = ()
        constant: str | None = None
        key = CONSTANTS.get(field)
        for layer in layers:
            fields = layer.get("fields") or {}
            if field in fields:
                sources = tuple(Source.parse(spec) for spec in fields[field] or [])
            if key and layer.get(key) is not None:
                constant = str(layer[key])
        return Plan(sources, constant)

    def _branches(self, field: str) -> list[Branch]:
        default = self._plan(field, self.common)
        groups: dict[Plan, list[Scope]] = defaultdict(list)
        for short, section in self.sections.items():
            channels = tuple(self.channels.get(short) or ())
            if not channels:
                continue
            base = self._plan(field, self.common, section)
            events = section.get("events") or {}
            special: dict[Plan, list[int]] = defaultdict(list)
            for code, event in events.items():
                plan = self._plan(field, self.common, section, event or {})
                if plan != base:
                    special[plan].append(int(code))
            groups[base].append(Scope(channels=channels, excluded=tuple(sorted(c for codes in special.values() for c in codes))))
            for plan, codes in special.items():
                groups[plan].append(Scope(channels=channels, codes=tuple(sorted(codes))))
        groups[default].append(Scope(everything_else=True))
        if len(groups) == 1:
            return [Branch(plan=default, scopes=(), unscoped=True)]
        return [Branch(plan=plan, scopes=tuple(scopes)) for plan, scopes in groups.items()]
