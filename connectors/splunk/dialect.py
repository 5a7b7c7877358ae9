"""SPL as a declarative text dialect: tokens and templates only; the engine is `TextDialect`.

SPL's search command compares values case-insensitively and treats `*` as a wildcard even inside
quotes, so literal asterisks are escaped as pySigma's Splunk backend does (`\\*`). OR binds tighter
than the implicit AND in SPL, so OR groups are always parenthesised. The time range is not part of
the text: it goes to splunkd as the job's `earliest_time`/`latest_time`.
"""

from __future__ import annotations

from typing import ClassVar

from siemcrew.connectors.base import EventQuery
from siemcrew.connectors.dialect import TextDialect
from siemcrew.connectors.splunk.mapping import default_mapping


class SplDialect(TextDialect):
    name = "splunk"
    language = "spl"
    field_map = default_mapping().to_splunk
    field_quote = "{field}"
    string_quote = '"{value}"'
    escapes = {"\\": "\\\\", '"': '\\"', "*": "\\*"}
    wildcard_escapes: ClassVar[dict[str, str]] = {}
    templates = {
        "eq": "{field}={value}",
        "in": "{field} IN ({value})",
        "contains": '{field}="*{raw}*"',
        "startswith": '{field}="{raw}*"',
        "endswith": '{field}="*{raw}"',
        "exists": "{field}=*",
        "gte": "{field}>={value}",
        "lte": "{field}<={value}",
    }
    and_token = " "
    or_token = " OR "
    not_template = "NOT ({expr})"
    group_template = "({expr})"
    true_expr = "*"
    timestamp_field = "@timestamp"
    order_tokens = {"asc": "+", "desc": "-"}
    query_template = "search {scope}{where} | sort 0 {order}{ts} | head {limit}"
    grouped_query_template: ClassVar[str] = "search {scope}{where} | stats count by {names} | sort {limit} -count"

    def __init__(self, field_map: dict[str, str] | None = None, scope: str = "") -> None:
        super().__init__(field_map, scope=f"{scope.strip()} " if scope.strip() else "")

    def translate(self, query: EventQuery) -> str:
        if not query.group_by:
            return super().translate(query)
        return self.grouped_query_template.format(
            scope=self.context["scope"],
            where=self.where(query),
            names=" ".join(self.quote_field(f) for f in query.group_by),
            limit=int(query.limit),
        )
