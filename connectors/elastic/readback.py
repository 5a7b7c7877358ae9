"""A document as a customer indexes it -> the internal flat ECS row the reasoning reads.

A Windows event record (it has `winlog.channel` / `winlog.event_id`) is turned back into the raw
Windows event: every `winlog.event_data.<Raw>` as <Raw>, plus the raw fields the ingest pipelines
moved into ECS, rebuilt as the profile's `readback` says. The local store's own mapping
(`windows_ecs.yaml`, via `WindowsMapping`) then makes the internal row, so an event reads the same
whether it came from Elasticsearch or from the local store. Anything else (Elastic Defend, ECS
exports, raw Windows JSON indexed as is) goes through the local store's `Normalizer` unchanged.
"""

from __future__ import annotations

import re
from typing import Any

from siemcrew.connectors.elastic.docs import flatten
from siemcrew.connectors.elastic.profile import Profile, RawSpec
from siemcrew.connectors.local.normalize import EVENT_DATA_PREFIX, Normalizer, WindowsMapping
from siemcrew.connectors.local.transforms import to_int
from siemcrew.crew.timeutil import parse_time

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_NO_TIME = "1970-01-01T00:00:00.000Z"


def flat_fields(doc: Any, prefix: str = "") -> dict[str, Any]:
    """Nested objects (or already dotted keys) -> dotted keys; lists stay values (lists of objects too)."""
    out: dict[str, Any] = {}
    if not isinstance(doc, dict):
        return out
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_fields(value, name + "."))
        else:
            out[name] = value
    return out


def _scalar(value: Any) -> Any:
    if isinstance(value, list):
        value = next((item for item in value if item not in (None, "")), None)
    if value in (None, "") or isinstance(value, dict):
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _text(value: Any) -> str | None:
    value = _scalar(value)
    return None if value is None else str(value)


def _fill(template: str, fields: dict[str, Any]) -> str | None:
    """A template with every placeholder set, or None."""
    values = {}
    for name in _PLACEHOLDER.findall(template):
        text = _text(fields.get(name))
        if text is None:
            return None
        values[name] = text
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render(spec: RawSpec, fields: dict[str, Any]) -> str | None:
    """The raw field's value rebuilt from a flat document, or None when it has nothing to say."""
    text: str | None
    if spec.each:
        items = fields.get(spec.each)
        lines = []
        for item in items if isinstance(items, list) else []:
            item_fields = flat_fields(item) if isinstance(item, dict) else {"value": item}
            line = next((f for f in (_fill(t, item_fields) for t in spec.first_of) if f is not None), None)
            if line is not None:
                lines.append(line)
        text = spec.sep.join(lines) if lines else None
    elif spec.first_of:
        text = next((f for f in (_fill(t, fields) for t in spec.first_of) if f is not None), None)
    elif spec.lines:
        lines = [line for line in (_fill(t, fields) for t in spec.lines) if line is not None]
        text = spec.sep.join(lines) if lines else None
    else:
        value = _scalar(fields.get(spec.source or ""))
        if value is None:
            return None
        if spec.values:
            value = dict(spec.values).get(str(value).lower(), value)
        if spec.format == "hex":
            number = to_int(value)
            value = hex(number) if number is not None else value
        elif spec.format == "utc_ms":
            moment = parse_time(value)
            value = moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if moment else value
        text = str(value)
    if text is not None and spec.case:
        text = text.upper() if spec.case == "upper" else text.lower()
    return text


class Readback:
    """Native documents -> internal rows, for one profile."""

    def __init__(self, profile: Profile, mapping: WindowsMapping | None = None) -> None:
        self.profile = profile
        self.normalizer = Normalizer(mapping)

    @property
    def mapping(self) -> WindowsMapping:
        return self.normalizer.mapping

    def raw_event(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The raw Windows event (NXLog-style names, as windows_ecs.yaml reads them) of a flat doc."""
        raw = {key[len(EVENT_DATA_PREFIX):]: value for key, value in fields.items() if key.startswith(EVENT_DATA_PREFIX)}
        channel = self.profile.short_channel(_scalar(fields.get("winlog.channel")))
        code = to_int(_scalar(fields.get("winlog.event_id")) or _scalar(fields.get("event.code")))
        specs: dict[str, RawSpec] = {}
        for layer in self.profile.layers_for(channel, code):
            for key in layer.dropped:
                specs.pop(key, None)
            for key, spec in layer.specs:
                specs.pop(key, None)
                specs[key] = spec
        present = {key.lower() for key in raw}
        for spec in reversed(list(specs.values())):  # the most specific layer first
            if spec.raw.lower() in present:
                continue
            value = render(spec, fields)
            if value is not None:
                raw[spec.raw] = value
                present.add(spec.raw.lower())
        if "eventid" not in present and code is not None:
            raw["EventID"] = code
        return raw

    def internal(self, source: dict[str, Any]) -> dict[str, Any]:
        """The internal flat ECS row of one native document: `_source`, or flat (ES|QL rows, group keys)."""
        fields = flat_fields(source)
        if _scalar(fields.get("winlog.channel")) is not None or _scalar(fields.get("winlog.event_id")) is not None:
            return self.mapping.to_ecs(self.raw_event(fields))
        if "@timestamp" in fields:
            normalized = self.normalizer.normalize(source)
            return normalized.doc if normalized is not None else flatten(source)
        # group keys and narrow rows carry no time, which the ECS path needs to recognise ECS
        normalized = self.normalizer.normalize({**fields, "@timestamp": _NO_TIME})
        if normalized is None:
            return flatten(source)
        normalized.doc.pop("@timestamp", None)
        return normalized.doc
