"""Declarative query dialects: a dialect is tokens, templates and a field mapping; the engine is here once.

As with pySigma backends, a new text dialect (SQL, SPL, ES|QL, ...) subclasses `TextDialect` and
sets class attributes only. Field mappings come from YAML data (`config/mappings/`), not code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.crew.timeutil import iso


class TextDialect:
    """Translate an `EventQuery` into one query string.

    Templates see `{field}` (already mapped and quoted) and `{value}` (already escaped and quoted,
    or a comma-joined list of those for `in`). `{raw}` is the escaped value without quotes, for
    wildcard templates.
    """

    name: ClassVar[str] = "text"
    language: ClassVar[str] = "text"
    field_map: ClassVar[dict[str, str]] = {}
    field_quote: ClassVar[str] = "{field}"
    string_quote: ClassVar[str] = '"{value}"'
    escapes: ClassVar[dict[str, str]] = {"\\": "\\\\", '"': '\\"'}
    wildcard_escapes: ClassVar[dict[str, str]] = {}
    templates: ClassVar[dict[str, str]] = {}
    and_token: ClassVar[str] = " AND "
    or_token: ClassVar[str] = " OR "
    not_template: ClassVar[str] = "NOT {expr}"
    group_template: ClassVar[str] = "({expr})"
    true_expr: ClassVar[str] = "1=1"
    time_template: ClassVar[str] = ""
    query_template: ClassVar[str] = "{where}"
    group_by_template: ClassVar[str] = ""
    order_tokens: ClassVar[dict[str, str]] = {"asc": "ASC", "desc": "DESC"}
    timestamp_field: ClassVar[str] = "@timestamp"

    def __init__(self, field_map: dict[str, str] | None = None, **context: Any) -> None:
        self.fields = dict(self.field_map)
        self.fields.update(field_map or {})
        self.context = context

    # -- pieces ---------------------------------------------------------------------------
    def native_field(self, field: str) -> str:
        return self.fields.get(field, field)

    def quote_field(self, field: str) -> str:
        return self.field_quote.format(field=self.native_field(field))

    def escape(self, value: Any, table: dict[str, str] | None = None) -> str:
        text = str(value)
        for char, replacement in {**self.escapes, **(table or {})}.items():
            text = text.replace(char, replacement)
        return text

    def literal(self, value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        return self.string_quote.format(value=self.escape(value))

    def format_time(self, moment: datetime) -> str:
        return iso(moment)

    # -- engine ---------------------------------------------------------------------------
    def condition(self, flt: Filter) -> str:
        template = self.templates[flt.op]
        field = self.quote_field(flt.field)
        if flt.op == "in":
            value = ", ".join(self.literal(item) for item in flt.values())
            raw = value
        elif flt.op == "exists":
            value = raw = ""
        else:
            value = self.literal(flt.value)
            raw = self.escape(flt.value, self.wildcard_escapes)
        expr = template.format(field=field, value=value, raw=raw, native=self.native_field(flt.field))
        return self.not_template.format(expr=expr) if flt.negate else expr

    def where(self, query: EventQuery) -> str:
        parts = [self.condition(flt) for flt in query.filters]
        for group in query.any_of:
            if group:
                inner = self.or_token.join(self.condition(flt) for flt in group)
                parts.append(self.group_template.format(expr=inner))
        if query.categories:
            parts.append(self.condition(Filter(field="event.category", op="in", value=query.categories)))
        if query.time_range and self.time_template:
            parts.append(
                self.time_template.format(
                    ts=self.quote_field(self.timestamp_field),
                    start=self.format_time(query.time_range.start),
                    end=self.format_time(query.time_range.end),
                )
            )
        return self.and_token.join(parts) if parts else self.true_expr

    def translate(self, query: EventQuery) -> str:
        grouping = ""
        if query.group_by:
            grouping = self.group_by_template.format(
                fields=", ".join(self.quote_field(f) for f in query.group_by),
                names=" ".join(self.native_field(f) for f in query.group_by),
            )
        return self.query_template.format(
            where=self.where(query),
            limit=int(query.limit),
            order=self.order_tokens[query.order],
            ts=self.quote_field(self.timestamp_field),
            grouping=grouping,
            **self.context,
        ).strip()


class SqlDialect(TextDialect):
    """SQL for the embedded store. Text columns are declared COLLATE NOCASE, so = and LIKE ignore case."""

    name = "local"
    language = "sql"
    field_quote = '"{field}"'
    string_quote = "'{value}'"
    escapes = {"'": "''"}
    wildcard_escapes = {"\\": "\\\\", "%": "\\%", "_": "\\_"}
    templates = {
        "eq": "{field} = {value}",
        "in": "{field} IN ({value})",
        "contains": "{field} LIKE '%{raw}%' ESCAPE '\\'",
        "startswith": "{field} LIKE '{raw}%' ESCAPE '\\'",
        "endswith": "{field} LIKE '%{raw}' ESCAPE '\\'",
        "exists": "({field} IS NOT NULL AND {field} != '')",
        "gte": "{field} >= {value}",
        "lte": "{field} <= {value}",
    }
    not_template = "NOT ({expr})"
    time_template = "{ts} >= '{start}' AND {ts} <= '{end}'"
    query_template = "SELECT * FROM {table} WHERE {where} ORDER BY {ts} {order} LIMIT {limit}"
    group_by_template = "{fields}"

    def __init__(self, field_map: dict[str, str] | None = None, table: str = "events") -> None:
        super().__init__(field_map, table=table)

    def translate(self, query: EventQuery) -> str:
        if not query.group_by:
            return super().translate(query)
        fields = ", ".join(self.quote_field(f) for f in query.group_by)
        return (
            f"SELECT {fields}, COUNT(*) AS count FROM {self.context['table']} WHERE {self.where(query)} "
            f"GROUP BY {fields} ORDER BY count DESC LIMIT {int(query.limit)}"
        )
