"""Grouped searches: splunkd counts groups of raw fields; siemcrew reads each group as ECS and merges.

An ECS field can come from several raw fields depending on channel and event id (user.name is
TargetUserName in a 4624, User in a Sysmon event), so a grouped EventQuery groups by every Splunk
field that feeds it; each group row reads as ECS through the data profile like an event would, and
groups that read the same are added up. Absent values are filled with "-" by the search, which
reads as empty: those events form the group without a value, as SQL's GROUP BY keeps NULL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]


def merge_groups(rows: list[Row], group_by: Sequence[str], to_ecs: Callable[[Row], Row]) -> list[Row]:
    """One row per distinct combination of the ECS group-by values with its summed `count`, largest first."""
    counts: dict[tuple[Any, ...], int] = {}
    for row in rows:
        ecs = to_ecs(row)
        key = tuple(_hashable(ecs.get(field)) for field in group_by)
        counts[key] = counts.get(key, 0) + _count(row.get("count"))
    ordered = sorted(counts.items(), key=lambda item: (-item[1], [str(v) for v in item[0]]))
    return [{**dict(zip(group_by, key)), "count": count} for key, count in ordered]


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _count(value: Any) -> int:
    if isinstance(value, list):
        value = value[0] if value else 0
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0
