"""The open-alert feed: the query over `.alerts-security.alerts-<space>` and its opaque checkpoint.

Alerts are read in (`@timestamp`, `kibana.alert.uuid`) order and the checkpoint is the sort key of
the last alert handed out, used as `search_after`. Because the uuid breaks ties, alerts that share a
timestamp are neither skipped nor repeated, across pages and across runs.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from siemcrew.connectors.base import ConnectorError

SORT = [
    {"@timestamp": {"order": "asc", "format": "strict_date_optional_time_nanos"}},
    {"kibana.alert.uuid": {"order": "asc"}},
]
_VERSION = 1


def encode_checkpoint(sort_values: list[Any]) -> str:
    raw = json.dumps({"v": _VERSION, "after": sort_values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode("utf-8")).decode("ascii")


def decode_checkpoint(checkpoint: str | None) -> list[Any] | None:
    if not checkpoint:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(checkpoint.encode("ascii")))
        after = data["after"]
        if data.get("v") != _VERSION or not isinstance(after, list) or len(after) != len(SORT):
            raise ValueError
        return after
    except (ValueError, KeyError, TypeError, UnicodeError):
        raise ConnectorError("the checkpoint was not written by the Elastic connector (or by another version)") from None


def open_alerts_body(after: list[Any] | None, size: int, include_building_blocks: bool) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [{"term": {"kibana.alert.workflow_status": "open"}}]
    if after:
        filters.append({"range": {"@timestamp": {"gte": after[0], "format": "strict_date_optional_time_nanos"}}})
    query: dict[str, Any] = {"bool": {"filter": filters}}
    if not include_building_blocks:
        query["bool"]["must_not"] = [{"exists": {"field": "kibana.alert.building_block_type"}}]
    body: dict[str, Any] = {"query": query, "sort": SORT, "size": size, "track_total_hits": False}
    if after:
        body["search_after"] = after
    return body
