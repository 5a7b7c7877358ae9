"""EventQuery -> query DSL / ES|QL translation, and the read-only guard (no server needed)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from siemcrew.connectors.base import ConnectorError, EventQuery, Filter, QueryRefused
from siemcrew.connectors.elastic import guard
from siemcrew.connectors.elastic.dsl import DslDialect
from siemcrew.connectors.elastic.esql import esql_for
from siemcrew.crew.models import TimeRange

WINDOW = TimeRange(start=datetime(2025, 6, 2, 7, 0, tzinfo=timezone.utc), end=datetime(2025, 6, 2, 8, 0, tzinfo=timezone.utc))


def test_keyword_filters_are_case_insensitive_and_typed_fields_exact() -> None:
    dsl = DslDialect()
    query = EventQuery(
        filters=[
            Filter(field="host.name", value="WS-01"),
            Filter(field="process.pid", value="7412"),
            Filter(field="event.code", value=4688),
            Filter(field="user.name", op="in", value=["Alice", "bob"]),
            Filter(field="source.ip", op="in", value=["10.0.0.1", "10.0.0.2"]),
            Filter(field="message", value="failed logon"),
        ]
    )
    clauses = dsl.translate(query)["query"]["bool"]["filter"]
    assert clauses[0] == {"term": {"host.name": {"value": "WS-01", "case_insensitive": True}}}
    assert clauses[1] == {"term": {"process.pid": "7412"}}
    assert clauses[2] == {"term": {"event.code": 4688}}
    assert clauses[3] == {"bool": {"should": [
        {"term": {"user.name": {"value": "Alice", "case_insensitive": True}}},
        {"term": {"user.name": {"value": "bob", "case_insensitive": True}}},
    ], "minimum_should_match": 1}}
    assert clauses[4] == {"terms": {"source.ip": ["10.0.0.1", "10.0.0.2"]}}
    assert clauses[5] == {"match_phrase": {"message": "failed logon"}}


def test_wildcards_escape_pattern_characters() -> None:
    body = DslDialect().translate(EventQuery(filters=[
        Filter(field="process.command_line", op="contains", value="a*b?c\\d"),
        Filter(field="process.executable", op="endswith", value="\\powershell.exe"),
        Filter(field="file.path", op="startswith", value="C:\\Users"),
    ]))
    clauses = body["query"]["bool"]["filter"]
    assert clauses[0] == {"wildcard": {"process.command_line": {"value": "*a\\*b\\?c\\\\d*", "case_insensitive": True}}}
    assert clauses[1]["wildcard"]["process.executable"]["value"] == "*\\\\powershell.exe"
    assert clauses[2]["wildcard"]["file.path"]["value"] == "C:\\\\Users*"


def test_negation_groups_time_sort_and_size() -> None:
    query = EventQuery(
        time_range=WINDOW,
        filters=[Filter(field="user.name", value="svc_backup", negate=True), Filter(field="x", op="exists")],
        any_of=[[Filter(field="host.name", value="a"), Filter(field="host.name", value="b", negate=True)]],
        categories=["process"],
        limit=50,
        order="desc",
    )
    body = DslDialect().translate(query, page_size=20)
    boolean = body["query"]["bool"]
    assert boolean["must_not"] == [{"term": {"user.name": {"value": "svc_backup", "case_insensitive": True}}}]
    assert boolean["filter"][0] == {"exists": {"field": "x"}}
    assert boolean["filter"][1]["bool"]["should"][1] == {"bool": {"must_not": [{"term": {"host.name": {"value": "b", "case_insensitive": True}}}]}}
    assert boolean["filter"][2]["bool"]["should"][0]["term"]["event.category"]["value"] == "process"
    assert boolean["filter"][3] == {"range": {"@timestamp": {"gte": "2025-06-02T07:00:00.000Z", "lte": "2025-06-02T08:00:00.000Z", "format": "strict_date_optional_time"}}}
    assert body["sort"] == [{"@timestamp": {"order": "desc", "unmapped_type": "date"}}]
    assert body["size"] == 20 and body["track_total_hits"] is True


def test_group_by_uses_a_composite_aggregation_over_all_groups() -> None:
    body = DslDialect().translate(EventQuery(group_by=["host.name", "user.name"]), page_size=500)
    assert body["size"] == 0
    assert body["query"] == {"match_all": {}}
    assert body["aggs"]["groups"]["composite"] == {"size": 500, "sources": [
        {"g0": {"terms": {"field": "host.name", "missing_bucket": True}}},
        {"g1": {"terms": {"field": "user.name", "missing_bucket": True}}},
    ]}


def test_impossible_filters_are_clear_errors() -> None:
    with pytest.raises(ConnectorError, match="not supported on exact field 'source.ip'"):
        DslDialect().translate(EventQuery(filters=[Filter(field="source.ip", op="contains", value="10.")]))
    with pytest.raises(ConnectorError, match="needs a value"):
        DslDialect().translate(EventQuery(filters=[Filter(field="host.name", value=None)]))


def test_esql_translation_lowercases_values_and_quotes_fields() -> None:
    query = EventQuery(
        time_range=WINDOW,
        filters=[
            Filter(field="host.name", value="WS-01"),
            Filter(field="process.command_line", op="contains", value='Enc"*'),
            Filter(field="process.pid", op="gte", value=100),
        ],
        categories=["Process"],
        limit=10,
    )
    assert esql_for(query, "logs-endpoint*") == (
        'FROM logs-endpoint* | WHERE TO_LOWER(TO_STRING(`host.name`)) == "ws-01"'
        ' AND TO_LOWER(TO_STRING(`process.command_line`)) LIKE "*enc\\"\\\\**"'
        " AND `process.pid` >= 100"
        ' AND TO_LOWER(TO_STRING(`event.category`)) IN ("process")'
        ' AND `@timestamp` >= TO_DATETIME("2025-06-02T07:00:00.000Z") AND `@timestamp` <= TO_DATETIME("2025-06-02T08:00:00.000Z")'
        " | SORT `@timestamp` ASC | LIMIT 10"
    )
    grouped = esql_for(EventQuery(group_by=["host.name"], limit=5))
    assert grouped == "FROM logs-* | WHERE true | SORT `@timestamp` ASC | STATS count = COUNT(*) BY `host.name` | SORT count DESC | LIMIT 5"
    with pytest.raises(ConnectorError, match="not a plain ECS name"):
        esql_for(EventQuery(filters=[Filter(field="a` | DROP x", value=1)]))
    with pytest.raises(ConnectorError, match="cannot be used in ES|QL"):
        esql_for(EventQuery(), "logs-* | EVAL x = 1")


@pytest.mark.parametrize(
    "text",
    [
        "FROM logs-* | WHERE host.name == \"a|b\" | LIMIT 5",
        "from logs-* metadata _id | where x like \"*\" | stats c = count(*) by host.name | sort c desc",
        'FROM logs-* | WHERE process.command_line == """x | COMPLETION y"""',
    ],
)
def test_esql_guard_allows_reads(text: str) -> None:
    assert guard.check_esql(text)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('FROM logs-* | COMPLETION answer = x WITH { "inference_id": "llm" }', "inference endpoint"),
        ("FROM logs-* | RERANK \"q\" ON message", "inference endpoint"),
        ("FROM logs-* | FOO x", "not on the read-only allowlist"),
        ("WHERE x == 1", "must start with FROM"),
        ('FROM logs-* | WHERE x == "unterminated', "unterminated"),
        ("FROM logs-* | | LIMIT 1", "empty ES|QL command"),
    ],
)
def test_esql_guard_refuses(text: str, reason: str) -> None:
    with pytest.raises(QueryRefused, match=reason):
        guard.check_esql(text)


def test_dsl_guard_refuses_scripts_and_write_bodies() -> None:
    assert guard.check_dsl({"query": {"match_all": {}}, "size": 1, "aggs": {"a": {"terms": {"field": "x"}}}})
    with pytest.raises(QueryRefused, match="scripts are refused"):
        guard.check_dsl({"query": {"bool": {"filter": [{"script": {"script": "ctx._source.x = 1"}}]}}})
    with pytest.raises(QueryRefused, match="runtime fields"):
        guard.check_dsl({"runtime_mappings": {"x": {"type": "keyword"}}})
    with pytest.raises(QueryRefused, match="scripts are refused"):
        guard.check_dsl({"query": {"match_all": {}}, "script": {"source": "x"}, "conflicts": "proceed"})
    with pytest.raises(QueryRefused, match="conflicts, dest"):
        guard.check_dsl({"query": {"match_all": {}}, "dest": {"index": "x"}, "conflicts": "proceed"})
    with pytest.raises(QueryRefused, match="JSON object"):
        guard.check_dsl([{"query": {}}])


@pytest.mark.parametrize(
    "text",
    ["GET logs-*/_search?size=5 {\"query\": {\"match_all\": {}}}", "POST /_query {\"query\": \"FROM x | LIMIT 1\"}",
     "GET /_cat/indices?v", "GET logs-x/_count", "GET /logs-x/_mapping", "GET /"],
)
def test_console_guard_allows_read_endpoints(text: str) -> None:
    method, path, _, _ = guard.parse_console(text)
    assert method in ("GET", "POST") and path.startswith("/")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("POST logs-*/_update_by_query {\"script\": {\"source\": \"x\"}}", "not a read endpoint"),
        ("POST logs-*/_delete_by_query {\"query\": {\"match_all\": {}}}", "not a read endpoint"),
        ("PUT /_bulk", "not a read endpoint"),
        ("DELETE /logs-x", "not a read endpoint"),
        ("PUT /siemcrew-cases/_doc/1 {\"a\": 1}", "not a read endpoint"),
        ("GET /logs-*/_search%2F..%2F_delete_by_query", "encoded or relative"),
        ("GET /logs-*/_search?scroll=1m", "scroll"),
        ("GET /logs-*/_search?refresh=true", "refresh"),
        ("POST /_query {\"query\": \"FROM x | COMPLETION y\"}", "inference endpoint"),
        ("GET logs-*/_search {not json", "not valid JSON"),
        ("SELECT * FROM x", "not a console request"),
    ],
)
def test_console_guard_refuses(text: str, reason: str) -> None:
    with pytest.raises(QueryRefused, match=reason):
        guard.parse_console(text)
