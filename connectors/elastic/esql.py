"""EventQuery -> ES|QL, as a `TextDialect` that sets tokens and templates only.

ES|QL's `==`, `IN` and `LIKE` are case-sensitive, so the dialect compares
`TO_LOWER(TO_STRING(field))` with lower-case text literals (TO_STRING lets the same template serve
numbers, ips and booleans): `esql_for()` lower-cases and stringifies the values of a copy of the
query before the dialect renders it. Field names are back-quoted and must be plain ECS names.

Known ES|QL semantics carried over (and reproduced by the test emulator): a comparison on a
multi-valued field is null, so such rows do not match; use the DSL search for array fields.

With a data profile, the query is first translated to native fields (native.py) and leaves on
fields no index has are folded away (`exists`), because ES|QL rejects unknown columns; `keep`
narrows the columns returned to the ones the rows are rebuilt from.
"""

from __future__ import annotations

import re

from typing import Callable

from siemcrew.connectors.base import ConnectorError, EventQuery, Filter
from siemcrew.connectors.dialect import TextDialect
from siemcrew.connectors.elastic.native import TRUE, And, Const, Leaf, Node, Not, Or, prune, query_node
from siemcrew.connectors.elastic.profile import Profile

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

    keep_template = " | KEEP {fields}"

    def __init__(self, index: str = "logs-*") -> None:
        if not SAFE_INDEX.match(index):
            raise ConnectorError(f"index pattern {index!r} cannot be used in ES|QL")
        super().__init__(index=index)

    def expression(self, node: Node, negated: bool = False) -> str:
        """A native boolean tree as an ES|QL condition (string comparisons lower-cased).

        A comparison with a missing value is null in ES|QL, and NOT null excludes the row; under a
        negation comparisons are made null-safe (`COALESCE(..., false)`), so a document without
        the field counts as "not equal", as a query-DSL `must_not` counts it.
        """
        if isinstance(node, Leaf):
            flt = _lowered(node.filter)
            text = self.condition(flt.model_copy(update={"negate": False}))
            if flt.negate or negated:
                text = f"COALESCE({text}, false)"
            return self.not_template.format(expr=text) if flt.negate else text
        if isinstance(node, Const):
            return "true" if node.value else "false"
        if isinstance(node, Not):
            return self.not_template.format(expr=self.expression(node.child, not negated))
        token = self.and_token if isinstance(node, And) else self.or_token
        return token.join(self._operand(child, negated) for child in node.children)

    def _operand(self, node: Node, negated: bool) -> str:
        text = self.expression(node, negated)
        return self.group_template.format(expr=text) if isinstance(node, (And, Or)) else text

    def column(self, name: str) -> str:
        return name if "*" in name else self.quote_field(name)


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


def esql_for(
    query: EventQuery, index: str = "logs-*", profile: Profile | None = None,
    exists: Callable[[str], bool] | None = None, keep: list[str] | None = None,
) -> str:
    """The ES|QL text for `query` over `index`, case-insensitive for string comparisons."""
    _check_fields(query)
    if profile is not None:
        return _native_esql(query, index, profile, exists or (lambda name: True), keep)
    lowered = query.model_copy(
        update={
            "filters": [_lowered(f) for f in query.filters],
            "any_of": [[_lowered(f) for f in group] for group in query.any_of],
            "categories": [c.lower() for c in query.categories],
        }
    )
    return EsqlDialect(index).translate(lowered)


def _native_esql(query: EventQuery, index: str, profile: Profile, exists: Callable[[str], bool], keep: list[str] | None) -> str:
    dialect = EsqlDialect(index)
    node = prune(query_node(query, profile), exists)
    parts = [] if node == TRUE else [dialect.expression(node)]
    if query.time_range:
        parts.append(dialect.time_template.format(
            ts=dialect.quote_field(dialect.timestamp_field),
            start=dialect.format_time(query.time_range.start), end=dialect.format_time(query.time_range.end),
        ))
    grouping = ""
    if query.group_by:
        natives = [n for n in profile.group_natives(query.group_by) if exists(n)]
        grouping = dialect.group_by_template.format(fields=", ".join(dialect.column(n) for n in natives)) if natives else \
            " | STATS count = COUNT(*) | SORT count DESC"
    elif keep:
        for name in keep:
            if not SAFE_FIELD.match(name.replace("*", "x")):
                raise ConnectorError(f"field name {name!r} cannot be put into ES|QL")
        grouping = dialect.keep_template.format(fields=", ".join(dialect.column(n) for n in keep))
    return dialect.query_template.format(
        index=index, where=dialect.and_token.join(parts) if parts else dialect.true_expr,
        ts=dialect.quote_field(dialect.timestamp_field), order=dialect.order_tokens[query.order],
        grouping=grouping, limit=int(query.limit),
    ).strip()
