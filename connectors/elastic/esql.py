"""EventQuery -> ES|QL, as a `TextDialect` that sets tokens and templates only.

ES|QL's `==`, `IN` and `LIKE` are case-sensitive, so the dialect compares
`TO_LOWER(TO_STRING(field))` with lower-case text literals (TO_STRING lets the same template serve
numbers, ips and booleans): `esql_for()` lower-cases and stringifies the values of a copy of the
query before the dialect renders it. Field names are back-quoted and must be plain ECS names.

Known ES|QL semantics carried over (and reproduced by the test emulator): a comparison on a
multi-valued field is null, so such rows do not match; use the DSL search for array fields.
"""

from __future__ import annotations

import re

from siemcrew.connectors.base import ConnectorError, EventQuery, Filter
from siemcrew.connectors.dialect import TextDialect

SAFE_FIELD = re.compile(r"^[A-Za-z0-9_@][A-Za-z0-9_@.\-]*$")
SAFE_INDEX = re.compile(r"^[A-Za-z0-9_.*\-]+(,[A-Za-z0-9_.*\-]+)*$")


class EsqlDialect(TextDialect):
    name = "elastic"
    language = "esql"
    field_quote = "`{field}`"
    string_quote = '"{value}"'
    escapes = {"\\": "\\\\", '"': '\\"'}
    wildcard_escapes = {"\\": "\\\\\\\\", "*": "\\\\*", "?": "\\\\?"}
    templates = {
        "eq": "TO_LOWER(TO_STRING({field})) == {value}",
        "in": "TO_LOWER(TO_STRING({field})) IN ({value})",
        "contains": 'TO_LOWER(TO_STRING({field})) LIKE "*{raw}*"',
        "startswith": 'TO_LOWER(TO_STRING({field})) LIKE "{raw}*"',
        "endswith": 'TO_LOWER(TO_STRING({field})) LIKE "*{raw}"',
        "exists": "{field} IS NOT NULL",
        "gte": "{field} >= {value}",
        "lte": "{field} <= {value}",
    }
    and_token = " AND "
    or_token = " OR "
    not_template = "NOT ({expr})"
    group_template = "({expr})"
    true_expr = "true"
    time_template = '{ts} >= TO_DATETIME("{start}") AND {ts} <= TO_DATETIME("{end}")'
    query_template = "FROM {index} | WHERE {where} | SORT {ts} {order}{grouping} | LIMIT {limit}"
    group_by_template = " | STATS count = COUNT(*) BY {fields} | SORT count DESC"

    def __init__(self, index: str = "logs-*") -> None:
        if not SAFE_INDEX.match(index):
            raise ConnectorError(f"index pattern {index!r} cannot be used in ES|QL")
        super().__init__(index=index)


_STRING_OPS = frozenset({"eq", "in", "contains", "startswith", "endswith"})


def _as_lower_text(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value).lower()


def _lowered(flt: Filter) -> Filter:
    """String comparisons run on TO_LOWER(TO_STRING(field)): give them lower-case text values."""
    if flt.op not in _STRING_OPS or flt.value is None:
        return flt
    if flt.op == "in":
        return flt.model_copy(update={"value": [_as_lower_text(v) for v in flt.values()]})
    return flt.model_copy(update={"value": _as_lower_text(flt.value)})


def _check_fields(query: EventQuery) -> None:
    fields = [f.field for f in query.filters] + [f.field for g in query.any_of for f in g] + query.group_by
    for field in fields:
        if not SAFE_FIELD.match(field):
            raise ConnectorError(f"field name {field!r} is not a plain ECS name; refusing to put it into ES|QL")


def esql_for(query: EventQuery, index: str = "logs-*") -> str:
    """The ES|QL text for `query` over `index`, case-insensitive for string comparisons."""
    _check_fields(query)
    lowered = query.model_copy(
        update={
            "filters": [_lowered(f) for f in query.filters],
            "any_of": [[_lowered(f) for f in group] for group in query.any_of],
            "categories": [c.lower() for c in query.categories],
        }
    )
    return EsqlDialect(index).translate(lowered)
