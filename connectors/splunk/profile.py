"""Splunk data profiles: how the customer's data names what siemcrew's tools search and read.

A profile is data (a YAML file, like a pySigma processing pipeline), chosen with
`splunk.search.profile`: a packaged name (`splunk_ta_windows`, the default, or `splunk_cim`) or the
path of the customer's own file. It decides, for the SPL dialect, which Splunk fields a filter on an
internal (ECS) field searches, which fields a search asks for, what a grouped search groups by,
and how a result row reads as the internal flat ECS the local store produces.

`kind: cim` profiles map each ECS field to CIM names (first for searching, any for reading);
`kind: windows` profiles read Windows add-on events as the raw events they are (`ta_profile.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from siemcrew.config.settings import CONFIG_DIR, SettingsError
from siemcrew.connectors.base import Filter
from siemcrew.connectors.splunk.mapping import CimMapping

if TYPE_CHECKING:
    from siemcrew.connectors.splunk.dialect import SplDialect

MAPPINGS_DIR = CONFIG_DIR / "mappings"
DEFAULT_PROFILE = "splunk_ta_windows"
DEFAULT_FIELDS = ("_time", "host", "source", "sourcetype", "index")


class SplunkProfile(Protocol):
    name: str
    field_map: dict[str, str]
    sigma: dict[str, Any]

    def condition(self, flt: Filter, spl: "SplDialect") -> str:
        """SPL for one filter (negation included)."""

    def requested(self, filters: Iterable[str] = ()) -> list[str]:
        """The Splunk fields an event search names so that fast mode returns what the tools read."""

    def group_names(self, fields: Sequence[str]) -> list[str]:
        """The Splunk fields a grouped search groups by to compute these ECS fields from the groups."""

    def native_names(self, field: str) -> list[str]:
        """The Splunk fields an ECS field is read from (what `siemcrew doctor` reports)."""

    def to_ecs(self, row: dict[str, Any]) -> dict[str, Any]:
        """A result row as flat ECS."""


def profile_path(name_or_path: str) -> Path:
    """A packaged profile by name (`config/mappings/<name>.yaml`) or a file path."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix.lower() in (".yaml", ".yml") or candidate.is_file():
        return candidate
    return MAPPINGS_DIR / f"{name_or_path}.yaml"


def resolve_mapping_file(name: str, relative_to: Path) -> Path:
    """A file a profile names: next to the profile, else in the packaged mappings."""
    for base in (relative_to.parent, MAPPINGS_DIR):
        candidate = (base / name).expanduser()
        if candidate.is_file():
            return candidate
    raise SettingsError(f"splunk profile {relative_to}: file not found: {name}")


@lru_cache(maxsize=16)
def load_profile(name_or_path: str = DEFAULT_PROFILE) -> SplunkProfile:
    path = profile_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise SettingsError(f"splunk.search.profile: no profile {name_or_path!r} (looked for {path})") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"splunk.search.profile {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    kind = data.get("kind", "cim")
    if kind == "cim":
        return CimProfile(CimMapping(data.get("fields") or {}, data.get("drop") or []),
                          name=str(data.get("name") or path.stem), sigma=data.get("sigma") or {})
    if kind == "windows":
        from siemcrew.connectors.splunk.ta_profile import WindowsTaProfile

        return WindowsTaProfile.from_data(data, path)
    raise SettingsError(f"splunk profile {path}: unknown kind {kind!r} (cim | windows)")


class CimProfile:
    """One Splunk name per ECS field for searching; any listed name reads back as that field."""

    def __init__(self, mapping: CimMapping, name: str = "splunk_cim", sigma: dict[str, Any] | None = None) -> None:
        self.mapping = mapping
        self.name = name
        self.field_map = mapping.to_splunk
        self.sigma = sigma or {}

    def condition(self, flt: Filter, spl: "SplDialect") -> str:
        return spl.template_condition(flt)

    def requested(self, filters: Iterable[str] = ()) -> list[str]:
        names = list(DEFAULT_FIELDS)
        for ecs, aliases in self.mapping.fields.items():
            names.extend(aliases)
        names.extend(self.field_map.get(f, f) for f in filters)
        return list(dict.fromkeys(names))

    def group_names(self, fields: Sequence[str]) -> list[str]:
        return [self.field_map.get(f, f) for f in fields]

    def native_names(self, field: str) -> list[str]:
        return list(self.mapping.fields.get(field) or [field])

    def to_ecs(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.mapping.to_ecs(row)
