"""Apply the declarative vendor → ECS field mappings in `config/mappings/edr.yaml`.

The mapping is data; this module is the one small engine that reads it. Vendor JSON may be
nested (`{"device": {"hostname": …}}`), flat-dotted (`{"kibana.alert.uuid": …}`) or both, so a
path resolves through either form, and through lists (collecting every element's value).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from siemcrew.connectors.documents import get_path

import yaml

from siemcrew.crew.models import TimeRange
from siemcrew.crew.timeutil import iso, parse_time

MAPPINGS_FILE = Path(__file__).resolve().parents[2] / "config" / "mappings" / "edr.yaml"

FieldMapping = dict[str, str | list[str]]


@lru_cache(maxsize=1)
def _all_mappings() -> dict[str, dict[str, FieldMapping]]:
    data = yaml.safe_load(MAPPINGS_FILE.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{MAPPINGS_FILE}: the top level must be a mapping")
    return data


def mapping_for(vendor: str, kind: str) -> FieldMapping:
    try:
        return _all_mappings()[vendor][kind]
    except KeyError:
        raise KeyError(f"{MAPPINGS_FILE.name} has no mapping {vendor}.{kind}") from None


resolve = get_path  # the value at a dotted path through nested dicts, flat keys and lists


def map_record(record: dict[str, Any], mapping: FieldMapping) -> dict[str, Any]:
    """One vendor record as a flat ECS dict: typed pids, ISO timestamps, empty values dropped."""
    out: dict[str, Any] = {}
    for ecs_field, paths in mapping.items():
        for path in [paths] if isinstance(paths, str) else paths:
            value = _typed(ecs_field, resolve(record, path))
            if value not in (None, "", []):
                out[ecs_field] = value
                break
    return out


def map_records(vendor: str, kind: str, records: list[Any]) -> list[dict[str, Any]]:
    mapping = mapping_for(vendor, kind)
    return [map_record(item, mapping) for item in records if isinstance(item, dict)]


def _typed(field: str, value: Any) -> Any:
    if value is None:
        return None
    if field.endswith(".pid"):
        try:
            return int(str(value).strip())
        except ValueError:
            return None
    if field == "@timestamp":
        moment = parse_time(value)
        return iso(moment) if moment else None
    return value


def within(event: dict[str, Any], time_range: TimeRange) -> bool:
    """Whether an event's @timestamp falls in the range (events without one are kept)."""
    moment = parse_time(event.get("@timestamp"))
    return moment is None or time_range.start <= moment <= time_range.end


def involves_pid(event: dict[str, Any], pid: int | None) -> bool:
    """Whether an event is about the process or its parent (always true without a pid)."""
    return pid is None or pid in (event.get("process.pid"), event.get("process.parent.pid"))
