"""Reading Elasticsearch documents whose keys mix flat dotted names and nested objects.

Elastic Security alerts store `kibana.*` as flat dotted keys and the copied ECS fields as nested
objects; the Kibana webhook renders everything nested. These helpers read both forms the same way.
"""

from __future__ import annotations

from typing import Any

from siemcrew.connectors.documents import get_path  # noqa: F401  (re-exported)


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
