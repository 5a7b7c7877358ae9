"""Turn one event object (raw Windows, evtx-JSON or ECS) into a flat ECS doc plus its column values.

The raw-Windows -> ECS mapping is data (`config/mappings/windows_ecs.yaml`); this module only
interprets it. Every event keeps its raw Windows field names as columns so that Sigma SQL over
`Image`, `CommandLine`, `GrantedAccess`... runs directly, and also as `winlog.event_data.<Name>`
in the ECS doc.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from siemcrew.connectors.local import transforms

try:  # orjson is much faster on the 100 MB recordings; the stdlib is a correct fallback.
    import orjson

    def dumps(value: Any) -> str:
        return orjson.dumps(value, default=str).decode("utf-8")

except ImportError:  # pragma: no cover - orjson ships with crewai
    import json

    def dumps(value: Any) -> str:
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


EVENT_DATA_PREFIX = "winlog.event_data."
ECS_ROOTS = frozenset(
    "agent cloud container destination dll dns ecs event file group host http log network observer "
    "powershell process registry related rule service source threat tls url user winlog".split()
)
_RAW_MARKERS = ("channel", "hostname", "computer", "sourcename", "providername", "provider_name")

Source = tuple[str, tuple[transforms.Transform, ...]]


def default_mapping_path() -> Path:
    return Path(str(resources.files("siemcrew.config") / "mappings" / "windows_ecs.yaml"))


@dataclass(frozen=True)
class Plan:
    """The compiled mapping for one (channel, EventID): ECS field -> ordered sources, plus constants."""

    fields: tuple[tuple[str, tuple[Source, ...]], ...]
    constants: tuple[tuple[str, str], ...]


@dataclass
class Normalized:
    doc: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict)


def _compile_sources(specs: list[str]) -> tuple[Source, ...]:
    compiled = []
    for spec in specs:
        name, *steps = str(spec).split("|")
        compiled.append((name.strip().lower(), tuple(transforms.resolve(step) for step in steps)))
    return tuple(compiled)


def _constants(section: dict[str, Any]) -> dict[str, str]:
    keys = {"category": "event.category", "action": "event.action", "outcome": "event.outcome"}
    return {ecs: str(section[key]) for key, ecs in keys.items() if section.get(key) is not None}


class WindowsMapping:
    """The interpreter of `windows_ecs.yaml`: raw Windows field dict -> flat ECS dict."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_mapping_path()
        data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
        self.empty = frozenset(str(item) for item in data.get("empty", ["", "-"]))
        self.envelope = frozenset(str(item).lower() for item in data.get("envelope", []))
        self.channels = {str(k).lower(): str(v) for k, v in (data.get("channels") or {}).items()}
        self._common = data.get("common") or {}
        self._sources = data.get("sources") or {}
        self._plans: dict[tuple[str, int | None], Plan] = {}

    def plan(self, channel: str, event_id: int | None) -> Plan:
        key = (channel, event_id)
        cached = self._plans.get(key)
        if cached is None:
            cached = self._plans[key] = self._build_plan(channel, event_id)
        return cached

    def _build_plan(self, channel: str, event_id: int | None) -> Plan:
        short = self.channels.get(channel)
        source = (self._sources.get(short) or {}) if short else {}
        event = (source.get("events") or {}).get(event_id) or {}
        layers = [self._common, source, event]
        specs: dict[str, list[str]] = {}
        constants: dict[str, str] = {}
        for layer in layers:
            specs.update(layer.get("fields") or {})
            constants.update(_constants(layer))
        return Plan(
            fields=tuple((ecs, _compile_sources(list(srcs))) for ecs, srcs in specs.items()),
            constants=tuple(constants.items()),
        )

    def is_empty(self, value: Any) -> bool:
        return value is None or (isinstance(value, str) and value.strip() in self.empty)

    def to_ecs(self, raw: dict[str, Any]) -> dict[str, Any]:
        lowered = {str(k).lower(): v for k, v in raw.items()}
        channel = str(lowered.get("channel") or "").strip().lower()
        event_id = transforms.to_int(lowered.get("eventid")) if lowered.get("eventid") is not None else None
        plan = self.plan(channel, event_id)
        doc: dict[str, Any] = {}
        for ecs_field, sources in plan.fields:
            for name, steps in sources:
                value = lowered.get(name)
                for step in steps:
                    if self.is_empty(value):
                        break
                    value = step(value)
                if not self.is_empty(value):
                    doc[ecs_field] = value
                    break
        for ecs_field, value in plan.constants:
            doc.setdefault(ecs_field, value)
        for key, value in raw.items():
            if str(key).lower() not in self.envelope and not self.is_empty(value):
                doc[EVENT_DATA_PREFIX + str(key)] = value
        return doc


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects -> dotted keys; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def evtx_to_raw(event: dict[str, Any]) -> dict[str, Any]:
    """The `{"Event": {"System": ..., "EventData": ...}}` evtx-JSON form -> NXLog-style flat keys."""
    system = event.get("System") or {}
    attrs = lambda node: (node or {}).get("#attributes", {}) if isinstance(node, dict) else {}  # noqa: E731
    event_id = system.get("EventID")
    if isinstance(event_id, dict):
        event_id = event_id.get("#text") or event_id.get("Value")
    raw: dict[str, Any] = {
        "EventID": event_id,
        "Channel": system.get("Channel"),
        "Hostname": system.get("Computer"),
        "SourceName": attrs(system.get("Provider")).get("Name"),
        "TimeCreated": attrs(system.get("TimeCreated")).get("SystemTime"),
        "EventRecordID": system.get("EventRecordID"),
        "UserID": attrs(system.get("Security")).get("UserID"),
    }
    data = event.get("EventData") or event.get("UserData") or {}
    if isinstance(data, dict):
        for key, value in data.items():
            if key != "#attributes":
                raw[key] = value
    return {k: v for k, v in raw.items() if v is not None}


class Normalizer:
    """Classify an event object and produce its ECS doc and raw Windows view."""

    def __init__(self, mapping: WindowsMapping | None = None) -> None:
        self.mapping = mapping or WindowsMapping()

    @staticmethod
    def is_raw_windows(obj: dict[str, Any]) -> bool:
        keys = {str(k).lower() for k in obj}
        return "eventid" in keys and any(marker in keys for marker in _RAW_MARKERS)

    @staticmethod
    def is_ecs(obj: dict[str, Any]) -> bool:
        if "@timestamp" not in obj:
            return False
        for key, value in obj.items():
            root, dot, _ = str(key).partition(".")
            if root in ECS_ROOTS and (dot or isinstance(value, dict)):
                return True
        return False

    def normalize(self, obj: Any) -> Normalized | None:
        """None when the object is not an event this store understands."""
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("_source"), dict):  # an Elasticsearch hit as exported
            obj = obj["_source"]
        if self.is_raw_windows(obj):
            return Normalized(doc=self.mapping.to_ecs(obj), raw=obj)
        event = obj.get("Event")
        if isinstance(event, dict) and isinstance(event.get("System"), dict):
            raw = evtx_to_raw(event)
            return Normalized(doc=self.mapping.to_ecs(raw), raw=raw)
        if self.is_ecs(obj):
            return self._from_ecs(flatten(obj))
        return None

    def _from_ecs(self, doc: dict[str, Any]) -> Normalized:
        stamp = transforms.timestamp(doc.get("@timestamp"))
        if stamp:
            doc["@timestamp"] = stamp
        else:
            doc.pop("@timestamp", None)
        host = doc.get("host.hostname") or doc.get("host.name")
        if host and not isinstance(host, (list, dict)):
            doc["host.hostname"] = transforms.short_host(host)
        if doc.get("event.code") is not None:
            doc["event.code"] = str(doc["event.code"])
        raw = {k[len(EVENT_DATA_PREFIX):]: v for k, v in doc.items() if k.startswith(EVENT_DATA_PREFIX)}
        if raw or "winlog.channel" in doc:
            for raw_name, ecs_name in (
                ("EventID", "winlog.event_id"),
                ("Channel", "winlog.channel"),
                ("Hostname", "host.name"),
                ("SourceName", "winlog.provider_name"),
            ):
                if doc.get(ecs_name) is not None:
                    raw.setdefault(raw_name, doc[ecs_name])
            if "EventID" not in raw and doc.get("event.code") is not None:
                raw["EventID"] = doc["event.code"]
        return Normalized(doc=doc, raw=raw)
