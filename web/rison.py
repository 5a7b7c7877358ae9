"""Rison, the URL-friendly JSON that Kibana reads its `_g` / `_a` state in (Discover deep links).

Small and strict on purpose: dicts, lists, strings, numbers, booleans and None, as Kibana's own
`rison-node` writes them (ids bare when they can be, `!` escapes `'` and `!` in quoted strings).
"""

from __future__ import annotations

import re
from typing import Any

# rison-node: an id may not start with a digit or '-' and holds no reserved characters
_NOT_ID = re.compile(r"[^\-0-9a-zA-Z_./~]")
_ID_START = re.compile(r"^[^\-0-9]")


def _string(text: str) -> str:
    if text and not _NOT_ID.search(text) and _ID_START.match(text):
        return text
    return "'" + text.replace("!", "!!").replace("'", "!'") + "'"


def _number(value: int | float) -> str:
    if isinstance(value, float) and not value == value or value in (float("inf"), float("-inf")):
        raise ValueError("rison has no NaN or infinity")
    text = repr(value) if isinstance(value, float) else str(value)
    return text.replace("e+", "e").replace("E+", "e").replace("E", "e")


def dumps(value: Any) -> str:
    """`value` in rison (ValueError for what JSON could not hold either)."""
    if value is None:
        return "!n"
    if value is True:
        return "!t"
    if value is False:
        return "!f"
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "!(" + ",".join(dumps(item) for item in value) + ")"
    if isinstance(value, dict):
        return "(" + ",".join(f"{_string(str(k))}:{dumps(v)}" for k, v in value.items()) + ")"
    raise ValueError(f"rison cannot hold a {type(value).__name__}")
