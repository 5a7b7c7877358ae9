"""Small helpers every connector needs for vendor documents: dotted paths and IP literals."""

from __future__ import annotations

import ipaddress
from typing import Any


def get_path(doc: Any, path: str) -> Any:
    """The value at dotted `path`, whichever mix of flat and nested keys holds it (None if absent).

    Lists of objects are searched element by element and the found values collected, as
    Elasticsearch does for `fields` (`kibana.alert.rule.threat.technique.id`).
    """
    return _get(doc, path.split("."))


def _get(node: Any, parts: list[str]) -> Any:
    if not parts:
        return node
    if isinstance(node, list):
        found: list[Any] = []
        for item in node:
            value = _get(item, parts)
            if value is None:
                continue
            found.extend(value if isinstance(value, list) else [value])
        return found or None
    if not isinstance(node, dict):
        return None
    for cut in range(len(parts), 0, -1):
        key = ".".join(parts[:cut])
        if key in node:
            value = _get(node[key], parts[cut:])
            if value is not None:
                return value
    return None


def is_ip(text: Any) -> bool:
    try:
        ipaddress.ip_address(str(text).strip())
    except ValueError:
        return False
    return True
