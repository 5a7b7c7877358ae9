"""EventQuery -> Elasticsearch query DSL, declaratively: a table of op -> clause templates.

The dialect is data: clause templates per field kind (keyword, exact-typed, text), the OR-group and
NOT wrappers, the time range and the sort. The engine that fills the templates lives once in
`DslDialect.render`. With a data profile (profile.py), internal field names are first translated to
the customer's native fields (`native.query_node`); without one they pass through unchanged. The
native field's *type* (from `config/mappings/elastic_field_types.yaml`) picks the clause table,
because Elasticsearch rejects `case_insensitive` and wildcards on numbers, ips and dates.

String comparisons are case-insensitive, as Sigma's are: `term` / `wildcard` with
`case_insensitive: true`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import yaml

from siemcrew.connectors.base import ConnectorError, EventQuery, Filter
from siemcrew.connectors.elastic.native import And, Const, Leaf, Node, Not, Or, query_node
from siemcrew.connectors.elastic.profile import Profile
from siemcrew.crew.timeutil import iso

_TYPES_FILE = Path(__file__).resolve().parent.parent.parent / "config" / "mappings" / "elastic_field_types.yaml"


@lru_cache(maxsize=1)
def field_kinds() -> dict[str, str]:
    """field -> "exact" | "text" from the YAML data; keyword when absent."""
    data = yaml.safe_load(_TYPES_FILE.read_text(encoding="utf-8")) or {}
    kinds: dict[str, str] = {}
    for fields in (data.get("exact") or {}).values():
        kinds.update({field: "exact" for field in fields})
    kinds.update({field: "text" for field in data.get("text") or []})
    return kinds


class DslDialect:
    """Query DSL templates. Placeholders: "{field}", "{value}", "{values}", "{raw}", "{clauses}"."""

    name: ClassVar[str] = "elastic"
    language: ClassVar[str] = "dsl"
    timestamp_field: ClassVar[str] = "@timestamp"
    wildcard_escapes: ClassVar[dict[str, str]] = {"\\": "\\\\", "*": "\\*", "?": "\\?"}

    keyword_clauses: ClassVar[dict[str, Any]] = {
        "eq": {"term": {"{field}": {"value": "{value}", "case_insensitive": True}}},
        "in": {"bool": {"should": "{clauses}", "minimum_should_match": 1}},
        "contains": {"wildcard": {"{field}": {"value": "*{raw}*", "case_insensitive": True}}},
        "startswith": {"wildcard": {"{field}": {"value": "{raw}*", "case_insensitive": True}}},
        "endswith": {"wildcard": {"{field}": {"value": "*{raw}", "case_insensitive": True}}},
        "exists": {"exists": {"field": "{field}"}},
        "gte": {"range": {"{field}": {"gte": "{value}"}}},
        "lte": {"range": {"{field}": {"lte": "{value}"}}},
    }
    exact_clauses: ClassVar[dict[str, Any]] = {
        "eq": {"term": {"{field}": "{value}"}},
        "in": {"terms": {"{field}": "{values}"}},
        "exists": {"exists": {"field": "{field}"}},
        "gte": {"range": {"{field}": {"gte": "{value}"}}},
        "lte": {"range": {"{field}": {"lte": "{value}"}}},
    }
    text_clauses: ClassVar[dict[str, Any]] = {
        "eq": {"match_phrase": {"{field}": "{value}"}},
        "in": {"bool": {"should": "{clauses}", "minimum_should_match": 1}},
        "contains": {"match_phrase": {"{field}": "{value}"}},
        "exists": {"exists": {"field": "{field}"}},
    }
    any_of_template: ClassVar[Any] = {"bool": {"should": "{clauses}", "minimum_should_match": 1}}
    not_template: ClassVar[Any] = {"bool": {"must_not": ["{clause}"]}}
    time_template: ClassVar[Any] = {
        "range": {"{ts}": {"gte": "{start}", "lte": "{end}", "format": "strict_date_optional_time"}}
    }
    sort_template: ClassVar[Any] = [{"{ts}": {"order": "{order}", "unmapped_type": "date"}}]
    group_source_template: ClassVar[Any] = {"{name}": {"terms": {"field": "{field}", "missing_bucket": True}}}
    group_agg_name: ClassVar[str] = "groups"

    def __init__(self, kinds: dict[str, str] | None = None, profile: Profile | None = None) -> None:
        self.kinds = field_kinds() if kinds is None else kinds
        self.profile = profile

    # -- engine -----------------------------------------------------------------------------
    @staticmethod
    def render(template: Any, **subs: Any) -> Any:
        """Fill a template: a string that IS a placeholder takes the typed value; others format."""
        if isinstance(template, dict):
            return {DslDialect.render(k, **subs): DslDialect.render(v, **subs) for k, v in template.items()}
        if isinstance(template, list):
            out: list[Any] = []
            for item in template:
                if isinstance(item, str) and item.startswith("{") and item.endswith("}") and item[1:-1] in subs:
                    value = subs[item[1:-1]]
                    out.extend(value if item == "{clauses}" else [value])
                else:
                    out.append(DslDialect.render(item, **subs))
            return out
        if isinstance(template, str):
            if template.startswith("{") and template.endswith("}") and template[1:-1] in subs:
                return subs[template[1:-1]]
            return template.format(**{k: v for k, v in subs.items() if isinstance(v, (str, int, float))})
        return template

    def kind(self, flt: Filter) -> str:
        declared = self.kinds.get(flt.field, "keyword")
        if declared == "keyword" and any(not isinstance(v, str) for v in flt.values() if v is not None):
            return "exact"
        return declared

    def clause(self, flt: Filter) -> dict[str, Any]:
        kind = self.kind(flt)
        table = {"keyword": self.keyword_clauses, "exact": self.exact_clauses, "text": self.text_clauses}[kind]
        if flt.op not in table:
            raise ConnectorError(f"filter '{flt.op}' is not supported on {kind} field {flt.field!r}")
        if flt.op != "exists" and (flt.value is None or flt.value == []):
            raise ConnectorError(f"filter '{flt.op}' on {flt.field!r} needs a value")
        subs: dict[str, Any] = {"field": flt.field}
        if flt.op == "in":
            values = flt.values()
            subs["values"] = values
            subs["clauses"] = [self.clause(Filter(field=flt.field, op="eq", value=v)) for v in values]
        elif flt.op != "exists":
            subs["value"] = flt.value
            raw = str(flt.value)
            for char, replacement in self.wildcard_escapes.items():
                raw = raw.replace(char, replacement)
            subs["raw"] = raw
        return self.render(table[flt.op], **subs)

    def negatable(self, flt: Filter) -> dict[str, Any]:
        plain = self.clause(flt)
        return self.render(self.not_template, clause=plain) if flt.negate else plain

    def node(self, node: Node) -> dict[str, Any]:
        """A native boolean tree (native.py) as query DSL."""
        if isinstance(node, Leaf):
            return self.negatable(node.filter)
        if isinstance(node, Const):
            return {"match_all": {}} if node.value else {"match_none": {}}
        if isinstance(node, Not):
            return {"bool": {"must_not": [self.node(node.child)]}}
        if isinstance(node, Or):
            return self.render(self.any_of_template, clauses=[self.node(child) for child in node.children])
        return self._conjunction(list(node.children))

    def _conjunction(self, children: list[Node], extra: list[Any] | None = None) -> dict[str, Any]:
        must: list[Any] = []
        must_not: list[Any] = []
        for child in children:
            if isinstance(child, Not):
                must_not.append(self.node(child.child))
            elif isinstance(child, Leaf) and child.filter.negate:
                must_not.append(self.clause(child.filter))
            else:
                must.append(self.node(child))
        must.extend(extra or [])
        return _bool(must, must_not)

    def bool_query(self, query: EventQuery) -> dict[str, Any]:
        if self.profile is not None:
            root = query_node(query, self.profile)
            children = list(root.children) if isinstance(root, And) else [] if root == Const(True) else [root]
            return self._conjunction(children, [self.time_clause(query)] if query.time_range else [])
        must: list[Any] = []
        must_not: list[Any] = []
        for flt in query.filters:
            (must_not if flt.negate else must).append(self.clause(flt))
        for group in query.any_of:
            if group:
                must.append(self.render(self.any_of_template, clauses=[self.negatable(f) for f in group]))
        if query.categories:
            must.append(self.clause(Filter(field="event.category", op="in", value=query.categories)))
        if query.time_range:
            must.append(self.time_clause(query))
        return _bool(must, must_not)

    def time_clause(self, query: EventQuery) -> dict[str, Any]:
        assert query.time_range is not None
        return self.render(
            self.time_template,
            ts=self.timestamp_field,
            start=iso(query.time_range.start),
            end=iso(query.time_range.end),
        )

    def group_fields(self, group_by: list[str]) -> list[str]:
        """The native fields a group-by reads: the internal ones, or what the profile rebuilds them from."""
        if self.profile is None:
            return list(group_by)
        return self.profile.group_natives(group_by)

    def translate(self, query: EventQuery, page_size: int | None = None) -> dict[str, Any]:
        """The search body; hits are sized `min(limit, page_size)`, groups page `page_size` at a time."""
        size = min(query.limit, page_size or query.limit)
        body: dict[str, Any] = {"query": self.bool_query(query)}
        if query.group_by:
            fields = self.group_fields(query.group_by)
            sources = [self.render(self.group_source_template, name=f"g{i}", field=f) for i, f in enumerate(fields)]
            body.update(size=0, track_total_hits=True)
            body["aggs"] = {self.group_agg_name: {"composite": {"size": page_size or 1000, "sources": sources}}}
            return body
        body.update(
            size=size,
            track_total_hits=True,
            sort=self.render(self.sort_template, ts=self.timestamp_field, order=query.order),
        )
        return body


def _bool(must: list[Any], must_not: list[Any]) -> dict[str, Any]:
    """A bool query of filter and must_not clauses; no clause at all matches everything."""
    boolean: dict[str, Any] = {}
    if must:
        boolean["filter"] = must
    if must_not:
        boolean["must_not"] = must_not
    return {"bool": boolean} if boolean else {"match_all": {}}
