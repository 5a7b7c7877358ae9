"""SPL as a declarative text dialect: tokens and templates; which Splunk fields a filter reads is the
data profile's business (`connectors/splunk/profile.py`).

SPL's search command compares values case-insensitively and treats `*` as a wildcard even inside
quotes, so literal asterisks are escaped as pySigma's Splunk backend does (`\\*`). OR binds tighter
than the implicit AND in SPL, so composite expressions are always parenthesised. The time range is
not part of the text: it goes to splunkd as the job's `earliest_time`/`latest_time`.

Every generated event search ends with `| fields ...` naming what the tools read: REST search jobs
run in fast mode, where results carry only Splunk's default fields and the fields the search names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, ClassVar

from siemcrew.connectors.base import EventQuery, Filter
from siemcrew.connectors.dialect import TextDialect
from siemcrew.connectors.splunk.patterns import WILD, Pattern

if TYPE_CHECKING:
    from siemcrew.connectors.splunk.profile import SplunkProfile

GROUP_FILL = "-"  # stands in for an absent group-by field (reads as empty when mapped back)
MAX_GROUPS = 50_000


class SplDialect(TextDialect):
    name = "splunk"
    language = "spl"
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
    query_template = "search {scope}{where} | sort 0 {order}{ts} | head {limit}{fields}"
    grouped_template: ClassVar[str] = 'search {scope}{where} | fillnull value="{fill}" {names} | stats count by {names} | head {groups}'

    def __init__(self, profile: "SplunkProfile", scope: str = "") -> None:
        super().__init__(profile.field_map, scope=f"{scope.strip()} " if scope.strip() else "")
        self.profile = profile

    # -- the engine, with the profile deciding each filter -----------------------------------
    def condition(self, flt: Filter) -> str:
        return self.profile.condition(flt, self)

    def template_condition(self, flt: Filter) -> str:
        """One field, one name: the template engine (for profiles that map a field to one name)."""
        return super().condition(flt)

    def translate(self, query: EventQuery) -> str:
        if query.group_by:
            names = self.profile.group_names(query.group_by)
            return self.grouped_template.format(
                scope=self.context["scope"], where=self.where(query), fill=GROUP_FILL,
                names=" ".join(names), groups=MAX_GROUPS,
            )
        wanted = self.profile.requested([f.field for f in query.filters])
        return self.query_template.format(
            scope=self.context["scope"], where=self.where(query), order=self.order_tokens[query.order],
            ts=self.quote_field(self.timestamp_field), limit=int(query.limit),
            fields=f" | fields {', '.join(wanted)}" if wanted else "",
        )

    # -- pieces the profiles compose -----------------------------------------------------------
    def pattern(self, pattern: Pattern) -> str:
        """A value pattern as SPL: quoted, literals escaped, wildcards as `*`; plain integers bare."""
        if len(pattern) == 1 and pattern[0] is not WILD and pattern[0].isdigit():
            return pattern[0]
        body = "".join("*" if part is WILD else self.escape(part) for part in pattern)
        return self.string_quote.format(value=body)

    def term(self, name: str, patterns: Sequence[Pattern]) -> str:
        if len(patterns) == 1:
            return f"{name}={self.pattern(patterns[0])}"
        return f"{name} IN ({', '.join(self.pattern(p) for p in patterns)})"

    def values_in(self, name: str, values: Iterable[object]) -> str:
        items = [self.literal(value) for value in values]
        return f"{name}={items[0]}" if len(items) == 1 else f"{name} IN ({', '.join(items)})"

    def compare(self, name: str, op: str, value: object) -> str:
        return self.templates[op].format(field=name, value=self.literal(value))

    @staticmethod
    def present(name: str) -> str:
        return f"{name}=*"

    def any_of(self, parts: Sequence[str]) -> str:
        """OR of the parts ("" for none)."""
        parts = list(dict.fromkeys(p for p in parts if p))
        if len(parts) <= 1:
            return parts[0] if parts else ""
        return self.group_template.format(expr=self.or_token.join(parts))

    def all_of(self, parts: Sequence[str]) -> str:
        """AND of the parts ("" for none: no condition)."""
        parts = list(dict.fromkeys(p for p in parts if p))
        if len(parts) <= 1:
            return parts[0] if parts else ""
        return self.group_template.format(expr=self.and_token.join(parts))

    def negate(self, expr: str) -> str:
        return self.not_template.format(expr=expr)
