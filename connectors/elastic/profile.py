"""An Elastic data profile: where siemcrew's internal ECS fields live in a customer's indices, and back.

The profile is data (`config/mappings/elastic_winlogbeat.yaml` by default, `elastic.profile` to
override), like a pySigma processing pipeline. This module only loads and checks it:

* `homes(field)`: the native fields an internal field is read from, each with the events it applies
  to (`When`) and how values are written there (value maps, 0x-hex, FQDN, DOMAIN\\name);
* `readback`: per channel and event code, how the raw Windows fields the ingest pipelines moved
  into ECS are restored, so that `readback.Readback` can hand the row to the local store's own
  mapping (`windows_ecs.yaml`) and produce exactly the internal ECS the local store would;
* `sigma_fallbacks`: what a Sigma conversion may use when a field it emits is missing.

Channels are named by the short names of `windows_ecs.yaml` (`sysmon`, `security`, ...), whose
`channels` table also says which `winlog.channel` values they stand for.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

import yaml

from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.local.normalize import EVENT_DATA_PREFIX, default_mapping_path

_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")
_WHEN_KEYS = frozenset({"channel", "not_channel", "codes", "not_codes", "winlog", "missing"})
_HOME_KEYS = frozenset({"field", "when", "values", "formats", "fqdn", "account"})
_RAW_KEYS = frozenset({"raw", "from", "values", "format", "first_of", "lines", "each", "sep", "case"})


def default_profile_path() -> Path:
    return Path(str(resources.files("siemcrew.config") / "mappings" / "elastic_winlogbeat.yaml"))


def _flat(items: Any) -> list[Any]:
    """Nested lists (YAML anchors spliced into lists) -> one flat list."""
    if items is None:
        return []
    if not isinstance(items, (list, tuple)):
        return [items]
    out: list[Any] = []
    for item in items:
        out.extend(_flat(item))
    return out


@dataclass(frozen=True)
class When:
    """Which documents a home or a readback layer applies to (all parts must hold)."""

    channels: tuple[str, ...] = ()
    not_channels: tuple[str, ...] = ()
    codes: tuple[int, ...] = ()
    not_codes: tuple[int, ...] = ()
    winlog: bool | None = None
    missing: tuple[str, ...] = ()  # native fields the document must not have (queries only)

    @classmethod
    def parse(cls, data: Any, where: str) -> "When":
        if data is None:
            return cls()
        if not isinstance(data, dict) or set(data) - _WHEN_KEYS:
            raise ValueError(f"{where}: `when` takes {sorted(_WHEN_KEYS)}")
        winlog = data.get("winlog")
        return cls(
            channels=tuple(str(c) for c in _flat(data.get("channel"))),
            not_channels=tuple(str(c) for c in _flat(data.get("not_channel"))),
            codes=tuple(int(c) for c in _flat(data.get("codes"))),
            not_codes=tuple(int(c) for c in _flat(data.get("not_codes"))),
            winlog=None if winlog is None else bool(winlog),
            missing=tuple(str(f) for f in _flat(data.get("missing"))),
        )

    def holds(self, channel: str | None, code: int | None) -> bool:
        """Does a document of `channel` (short name, None = no Windows event) and `code` qualify?"""
        if self.winlog is not None and (channel is not None) != self.winlog:
            return False
        if self.channels and channel not in self.channels:
            return False
        if self.not_channels and channel in self.not_channels:
            return False
        if self.codes and code not in self.codes:
            return False
        return not (self.not_codes and code in self.not_codes)


@dataclass(frozen=True)
class Home:
    """One place an internal field lives: a native field, for some events, written some way."""

    field: str
    when: When = When()
    values: tuple[tuple[str, str], ...] = ()
    formats: tuple[str, ...] = ()
    fqdn: bool = False
    account: str | None = None  # name | domain: the value is also found inside DOMAIN\name

    @classmethod
    def parse(cls, data: Any, where: str) -> "Home":
        if isinstance(data, str):
            return cls(field=data)
        if not isinstance(data, dict) or "field" not in data or set(data) - _HOME_KEYS:
            raise ValueError(f"{where}: a home is a field name or {{field, when, values, formats, fqdn, account}}")
        formats = tuple(str(f) for f in _flat(data.get("formats")))
        if set(formats) - {"dec", "hex"}:
            raise ValueError(f"{where}: formats are dec and hex")
        values = data.get("values") or {}
        account = data.get("account")
        if account not in (None, "name", "domain"):
            raise ValueError(f"{where}: account is name or domain")
        return cls(
            field=str(data["field"]),
            when=When.parse(data.get("when"), where),
            values=tuple((str(k).lower(), str(v)) for k, v in values.items()),
            formats=formats,
            fqdn=bool(data.get("fqdn")),
            account=account,
        )

    def native_value(self, value: Any) -> Any:
        return dict(self.values).get(str(value).lower(), value) if self.values else value


@dataclass(frozen=True)
class RawSpec:
    """How one raw Windows field is rebuilt from a Winlogbeat document (see the YAML's `readback`)."""

    raw: str
    source: str | None = None
    values: tuple[tuple[str, str], ...] = ()
    format: str | None = None
    first_of: tuple[str, ...] = ()
    lines: tuple[str, ...] = ()
    each: str | None = None
    sep: str = ""
    case: str | None = None

    @classmethod
    def parse(cls, key: str, data: Any, where: str) -> "RawSpec":
        if isinstance(data, str):
            return cls(raw=data, source=key)
        if not isinstance(data, dict) or "raw" not in data or set(data) - _RAW_KEYS:
            raise ValueError(f"{where}.{key}: a readback entry is a raw name or {{{', '.join(sorted(_RAW_KEYS))}}}")
        templated = bool(data.get("first_of") or data.get("lines"))
        spec = cls(
            raw=str(data["raw"]),
            source=None if templated and "from" not in data else str(data.get("from", key)),
            values=tuple((str(k).lower(), str(v)) for k, v in (data.get("values") or {}).items()),
            format=data.get("format"),
            first_of=tuple(str(t) for t in _flat(data.get("first_of"))),
            lines=tuple(str(t) for t in _flat(data.get("lines"))),
            each=data.get("each"),
            sep=str(data.get("sep", "")),
            case=data.get("case"),
        )
        if spec.format not in (None, "hex", "utc_ms") or spec.case not in (None, "upper", "lower"):
            raise ValueError(f"{where}.{key}: format is hex or utc_ms, case is upper or lower")
        if spec.each and not spec.first_of:
            raise ValueError(f"{where}.{key}: `each` needs `first_of` templates")
        return spec

    def natives(self) -> set[str]:
        """The native fields this raw field is built from."""
        names = {self.source} if self.source and not self.each else set()
        if self.each:
            names.add(self.each)
        else:
            for template in self.first_of + self.lines:
                names.update(_PLACEHOLDER.findall(template))
        return names


@dataclass(frozen=True)
class Layer:
    when: When
    specs: tuple[tuple[str, RawSpec], ...]
    dropped: tuple[str, ...] = ()  # keys an earlier layer restores that do not apply here


@dataclass
class Profile:
    """A loaded data profile (immutable in use; build one with `Profile.load`)."""

    name: str
    path: Path
    channels: dict[str, tuple[str, ...]]
    field_homes: dict[str, tuple[Home, ...]]
    layers: tuple[Layer, ...]
    caseless_suffix: str = ".caseless"
    sigma_fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mapping_sources: dict[str, frozenset[str]] = field(default_factory=dict)
    constants: dict[str, dict[str, tuple[When, ...]]] = field(default_factory=dict)

    # -- loading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> "Profile":
        return _load(str(Path(path).expanduser().resolve()) if path else str(default_profile_path()))

    # -- queries ----------------------------------------------------------------------------
    def homes(self, internal: str) -> tuple[Home, ...]:
        """Where `internal` lives; an unlisted field lives under its own name."""
        listed = self.field_homes.get(internal)
        if listed is not None:
            return listed
        if internal.startswith(EVENT_DATA_PREFIX):
            return self.raw_homes(internal[len(EVENT_DATA_PREFIX):])
        return (Home(field=internal),)

    def raw_homes(self, raw: str) -> tuple[Home, ...]:
        """`winlog.event_data.<raw>`, and the ECS fields the pipelines moved <raw> to (for those events)."""
        homes = [Home(field=EVENT_DATA_PREFIX + raw)]
        for layer in self.layers:
            for _, spec in layer.specs:
                if spec.raw.lower() == raw.lower() and spec.source and not spec.each and not spec.first_of:
                    values = tuple((v.lower(), k) for k, v in spec.values)
                    formats = ("hex", "dec") if spec.format == "hex" else ()
                    homes.append(Home(field=spec.source, when=layer.when, values=values, formats=formats))
        return tuple(dict.fromkeys(homes))

    def native_names(self, internal: str) -> list[str]:
        """The native fields a query on `internal` reads, in the profile's order (`siemcrew doctor` names
        them, so that an admin knows which field of theirs to look at when one is missing).

        `event.category` / `event.action` are decided by the events' channel and code (the local
        mapping's constants), and read from the field itself only on documents that are no Windows
        event records.
        """
        if internal in self.constants:
            return ["winlog.channel", "event.code", internal]
        return list(dict.fromkeys(home.field for home in self.homes(internal)))

    def channel_values(self, shorts: Iterable[str]) -> list[str]:
        values: list[str] = []
        for short in shorts:
            values.extend(self.channels.get(short, (short,)))
        return values

    def short_channel(self, channel: Any) -> str | None:
        text = str(channel or "").strip().lower()
        if not text:
            return None
        for short, names in self.channels.items():
            if text in names:
                return short
        return text

    def raw_fallbacks(self, native: str) -> list[str]:
        """`winlog.event_data.<Raw>` for each raw field the pipelines moved into `native`."""
        found: list[str] = []
        for layer in self.layers:
            for _, spec in layer.specs:
                if spec.source == native and not spec.each and not spec.first_of and not spec.lines:
                    found.append(EVENT_DATA_PREFIX + spec.raw)
        return list(dict.fromkeys(found))

    # -- results ----------------------------------------------------------------------------
    def layers_for(self, channel: str | None, code: int | None) -> list[Layer]:
        return [layer for layer in self.layers if layer.when.holds(channel, code)]

    def readback_natives(self) -> set[str]:
        names: set[str] = set()
        for layer in self.layers:
            for _, spec in layer.specs:
                names |= spec.natives()
        return names

    def natives_for_raw(self, raws: Iterable[str]) -> set[str]:
        """The native fields holding these raw fields in some event: event_data and moved copies."""
        wanted = {r.lower() for r in raws}
        names = {EVENT_DATA_PREFIX + r for r in raws}
        for layer in self.layers:
            for _, spec in layer.specs:
                if spec.raw.lower() in wanted:
                    names |= spec.natives()
        return names

    def envelope_natives(self) -> set[str]:
        """What every Windows event needs back to pick its mapping: its channel and event id."""
        return {"winlog.channel", "winlog.event_id", "event.code"}

    def default_read_fields(self) -> list[str]:
        """Every internal field the local mapping can produce, and every raw field."""
        return sorted(set(self.mapping_sources) | set(self.constants) | {"@timestamp"}) + [EVENT_DATA_PREFIX + "*"]

    def group_natives(self, internal_fields: Iterable[str]) -> list[str]:
        """The few native fields that decide these internal fields' values (for grouping on them).

        The envelope, the homes, and the natives of the raw fields they are built from, leaving out
        composite texts (`lines`, `each`) whose other parts would only split the groups.
        """
        names: set[str] = set(self.envelope_natives())
        for internal in internal_fields:
            names.add(internal)
            names.update(home.field for home in self.homes(internal))
            raws = set(self.mapping_sources.get(internal, ()))
            if internal.startswith(EVENT_DATA_PREFIX):
                raws.add(internal[len(EVENT_DATA_PREFIX):])
            names.update(EVENT_DATA_PREFIX + raw for raw in raws)
            lowered = {raw.lower() for raw in raws}
            for layer in self.layers:
                for _, spec in layer.specs:
                    if spec.raw.lower() in lowered and not spec.lines and not spec.each:
                        names |= spec.natives()
        return sorted(n for n in names if "*" not in n)

    def natives_for(self, internal_fields: Iterable[str]) -> list[str]:
        """The native fields to ask for so that rows can be rebuilt with these internal fields.

        For each internal field: its homes, its own name (documents that are no Windows event
        records), and wherever the raw fields the local mapping builds it from are kept.
        `winlog.event_data.*` asks for every raw field and every moved one.
        """
        names: set[str] = set(self.envelope_natives())
        for internal in internal_fields:
            names.add(internal)
            if internal == EVENT_DATA_PREFIX + "*":
                names |= self.readback_natives()
                continue
            if "*" in internal:
                continue
            names.update(home.field for home in self.homes(internal))
            raws = set(self.mapping_sources.get(internal, ()))
            if internal.startswith(EVENT_DATA_PREFIX):
                raws.add(internal[len(EVENT_DATA_PREFIX):])
            names |= self.natives_for_raw(raws)
        patterns = [n for n in names if "*" in n]
        return sorted(n for n in names if "*" in n or not any(fnmatchcase(n, p) for p in patterns))


def _mapping_index(mapping: dict[str, Any]) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, tuple[When, ...]]]]:
    """From windows_ecs.yaml: raw source names per internal field, and where each constant is set."""
    sources: dict[str, set[str]] = {}
    constants: dict[str, dict[str, list[When]]] = {"event.category": {}, "event.action": {}}
    keys = {"category": "event.category", "action": "event.action"}

    def take(fields: dict[str, Any]) -> None:
        for internal, specs in (fields or {}).items():
            for spec in _flat(specs):
                sources.setdefault(str(internal), set()).add(str(spec).split("|", 1)[0].strip())

    take((mapping.get("common") or {}).get("fields") or {})
    for short, section in (mapping.get("sources") or {}).items():
        take(section.get("fields") or {})
        events = section.get("events") or {}
        for key, internal in keys.items():
            overridden = tuple(int(code) for code, event in events.items() if (event or {}).get(key) is not None)
            if section.get(key) is not None:
                constants[internal].setdefault(str(section[key]), []).append(When(channels=(short,), not_codes=overridden))
        for code, event in events.items():
            take((event or {}).get("fields") or {})
            for key, internal in keys.items():
                if (event or {}).get(key) is not None:
                    constants[internal].setdefault(str(event[key]), []).append(When(channels=(short,), codes=(int(code),)))
    return (
        {name: frozenset(raws) for name, raws in sources.items()},
        {name: {value: tuple(whens) for value, whens in table.items()} for name, table in constants.items()},
    )


def _layer(when: When, entries: Any, where: str) -> Layer:
    if not isinstance(entries, dict):
        raise ValueError(f"{where}: expected a mapping of native field -> raw field")
    specs = tuple((str(k), RawSpec.parse(str(k), v, where)) for k, v in entries.items() if v is not None)
    return Layer(when, specs, tuple(str(k) for k, v in entries.items() if v is None))


def _readback_layers(data: dict[str, Any]) -> tuple[Layer, ...]:
    layers = [_layer(When(), data.get("common") or {}, "readback.common")]
    for short, source in (data.get("sources") or {}).items():
        where = f"readback.sources.{short}"
        if not isinstance(source, dict) or set(source) - {"fields", "groups", "events"}:
            raise ValueError(f"{where}: takes fields, groups, events")
        if source.get("fields"):
            layers.append(_layer(When(channels=(short,)), source["fields"], where + ".fields"))
        for number, group in enumerate(source.get("groups") or []):
            codes = tuple(int(c) for c in _flat(group.get("codes")))
            layers.append(_layer(When(channels=(short,), codes=codes), group.get("fields") or {}, f"{where}.groups[{number}]"))
        for code, entries in (source.get("events") or {}).items():
            codes = tuple(int(c) for c in str(code).split(","))
            layers.append(_layer(When(channels=(short,), codes=codes), entries, f"{where}.events.{code}"))
    return tuple(layers)


@lru_cache(maxsize=8)
def _load(path: str) -> Profile:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConnectorError(f"cannot read the Elastic data profile {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConnectorError(f"the Elastic data profile {path} is not valid YAML: {exc}") from None
    mapping = yaml.safe_load(default_mapping_path().read_text(encoding="utf-8")) or {}
    channels: dict[str, list[str]] = {}
    for name, short in (mapping.get("channels") or {}).items():
        channels.setdefault(str(short), []).append(str(name).lower())
    try:
        homes = {
            str(internal): tuple(Home.parse(h, f"fields.{internal}") for h in _flat(spec))
            for internal, spec in (data.get("fields") or {}).items()
        }
        layers = _readback_layers(data.get("readback") or {})
    except (ValueError, TypeError) as exc:
        raise ConnectorError(f"the Elastic data profile {path} is invalid: {exc}") from None
    sigma = data.get("sigma") or {}
    mapping_sources, constants = _mapping_index(mapping)
    return Profile(
        name=str(data.get("name") or Path(path).stem),
        path=Path(path),
        channels={short: tuple(names) for short, names in channels.items()},
        field_homes=homes,
        layers=layers,
        caseless_suffix=str(sigma.get("caseless_suffix", ".caseless")),
        sigma_fallbacks={str(k): tuple(str(f) for f in _flat(v)) for k, v in (sigma.get("fallbacks") or {}).items()},
        mapping_sources=mapping_sources,
        constants=constants,
    )
