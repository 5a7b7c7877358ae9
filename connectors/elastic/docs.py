"""Reading Elasticsearch documents whose keys mix flat dotted names and nested objects.

Elastic Security alerts store `kibana.*` as flat dotted keys and the copied ECS fields as nested
objects; the Kibana webhook renders everything nested. These helpers read both forms the same way.
"""

from __future__ import annotations

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


def first(doc: Any, *paths: str) -> Any:
    """The first non-empty scalar among `paths` (the first element when the value is a list)."""
    for path in paths:
        value = get_path(doc, path)
        if isinstance(value, list):
            value = next((item for item in value if item not in (None, "")), None)
        if value not in (None, ""):
            return value
    return None


def all_values(doc: Any, *paths: str) -> list[Any]:
    """Every distinct non-empty value found at `paths`, in order."""
    out: list[Any] = []
    for path in paths:
        value = get_path(doc, path)
        for item in value if isinstance(value, list) else [value]:
            if item not in (None, "") and item not in out:
                out.append(item)
    return out


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects -> dotted keys. Arrays of objects merge per leaf, like Elasticsearch `fields`."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            for item in value:
                for leaf, leaf_value in flatten(item, name + ".").items():
                    bucket = flat.setdefault(leaf, [])
                    bucket.extend(leaf_value if isinstance(leaf_value, list) else [leaf_value])
        else:
            flat[name] = value
    return flat
