"""ECS <-> Splunk field names, read from `config/mappings/splunk_cim.yaml` (data, not code)."""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from siemcrew.config.settings import CONFIG_DIR
from siemcrew.crew.timeutil import iso, parse_time

MAPPING_FILE = CONFIG_DIR / "mappings" / "splunk_cim.yaml"


class CimMapping:
    """Both directions of one mapping: ECS -> the Splunk name to search on, and rows back to ECS."""

    def __init__(self, fields: dict[str, list[str]], drop: list[str] | None = None) -> None:
        self.fields = {ecs: list(names) for ecs, names in fields.items() if names}
        self.drop = frozenset(drop or ())

    @classmethod
    def load(cls, path: Path | None = None) -> "CimMapping":
        data = yaml.safe_load((path or MAPPING_FILE).read_text(encoding="utf-8")) or {}
        return cls(data.get("fields") or {}, data.get("drop") or [])

    @property
    def to_splunk(self) -> dict[str, str]:
        """ECS name -> the Splunk field that generated searches use."""
        return {ecs: names[0] for ecs, names in self.fields.items()}

    def to_ecs(self, row: dict[str, Any]) -> dict[str, Any]:
        """A Splunk result row as a flat ECS dict; unmapped fields and differing aliases keep their names."""
        out: dict[str, Any] = {}
        consumed: set[str] = set()
        for ecs, names in self.fields.items():
            if _present(row.get(ecs)):
                out[ecs] = row[ecs]
                consumed.add(ecs)
                continue
            for name in names:
                if _present(row.get(name)):
                    out[ecs] = row[name]
                    break
            if ecs in out:  # aliases carrying the same value (CIM field aliases) are the same field
                consumed.update(name for name in names if row.get(name) == out[ecs])
        for key, value in row.items():
            if key not in consumed and key not in out and key not in self.drop:
                out[key] = value
        if "@timestamp" in out:
            moment = splunk_time(out["@timestamp"])
            if moment is not None:
                out["@timestamp"] = iso(moment)
        return out


def splunk_time(value: Any) -> datetime | None:
    """`_time` as splunkd renders it: ISO with offset, epoch seconds, or export's '... UTC' form."""
    if isinstance(value, list):
        value = value[0] if value else None
    if isinstance(value, str) and value.endswith(" UTC"):
        value = value[: -len(" UTC")]
    return parse_time(value)


def _present(value: Any) -> bool:
    return value not in (None, "", [])


@lru_cache(maxsize=1)
def default_mapping() -> CimMapping:
    return CimMapping.load()
