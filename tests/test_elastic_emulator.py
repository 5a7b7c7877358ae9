"""The emulator behaves like Elasticsearch/Kibana for the real clients (checked against the reference bodies)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from elasticsearch import BadRequestError, Elasticsearch, NotFoundError, UnsupportedProductError
from elasticsearch import ApiError

from emulators.elastic import ElasticEmulator, elastic_emulator  # noqa: F401  (fixture)

REFERENCE = Path("/work/shared/reference/elastic")


def _ref(name: str) -> dict:
    return json.loads((REFERENCE / name).read_text())


def _client(emulator: ElasticEmulator) -> Elasticsearch:
    return Elasticsearch(emulator.es_url, api_key=emulator.api_key, max_retries=0)


def _logons(emulator: ElasticEmulator) -> None:
    users = ["bob", "alice", "bob", "alice", "bob", "alice", "bob", "alice", "bob"]
    docs = [
        {
            "@timestamp": f"2025-06-01T10:0{i}:00.000Z",
            "host": {"name": "ws-01" if i % 3 else "srv-db-02"},
            "user": {"name": users[i]},
            "source": {"ip": "203.0.113.10" if users[i] == "bob" else "203.0.113.11"},
            "event": {"category": ["authentication"], "action": "logon-failed", "outcome": "failure"},
            "message": f"An account failed to logon attempt {i}",
        }
        for i in range(9)
    ]
    docs.append({"@timestamp": "2025-06-01T10:09:00.000Z", "user": {"name": "svc_backup"},
                 "event": {"category": ["authentication"], "outcome": "failure"}, "message": "logon by backup"})
    emulator.index("logs-system.security-default", docs)


def test_product_header_and_content_types(elastic_emulator: ElasticEmulator) -> None:
    headers = {"Authorization": f"ApiKey {elastic_emulator.api_key}"}
    plain = httpx.get(elastic_emulator.es_url + "/", headers=headers)
    assert plain.headers["x-elastic-product"] == "Elasticsearch"
    assert plain.headers["content-type"].startswith("application/json")
    assert plain.json()["tagline"] == "You Know, for Search"
    compat = httpx.get(elastic_emulator.es_url + "/", headers={**headers, "Accept": "application/vnd.elasticsearch+json; compatible-with=9"})
    assert compat.headers["content-type"] == "application/vnd.elasticsearch+json;compatible-with=9"
    missing = httpx.get(elastic_emulator.es_url + "/nope/_doc/1", headers={**headers, "Accept": "application/vnd.elasticsearch+json; compatible-with=9"})
    assert missing.status_code == 404
    assert missing.headers["x-elastic-product"] == "Elasticsearch"
    assert missing.headers["content-type"].startswith("application/json")
    assert missing.json() == _ref("error.json")
    unauthenticated = httpx.get(elastic_emulator.es_url + "/")
    assert unauthenticated.status_code == 401
    assert unauthenticated.json()["error"]["type"] == "security_exception"


def test_error_envelope_reaches_the_client_like_elasticsearch(elastic_emulator: ElasticEmulator) -> None:
    es = _client(elastic_emulator)
    with pytest.raises(NotFoundError) as caught:
        es.search(index="nope", query={"match_all": {}})
    assert str(caught.value) == "NotFoundError(404, 'index_not_found_exception', 'no such index [nope]', nope, index_or_alias)"
    _logons(elastic_emulator)
    with pytest.raises(BadRequestError) as parsing:
        es.search(index="logs-*", query={"terms2": {"user.name": ["bob"]}})
    assert parsing.value.message == "parsing_exception"
    assert parsing.value.body["error"]["reason"] == "unknown query [terms2]"
    with pytest.raises(BadRequestError) as window:
        es.search(index="logs-*", size=10_001)
    assert "Result window is too large" in str(window.value)
    with pytest.raises(BadRequestError) as clash:
        es.indices.create(index="logs-soc-default")
    assert clash.value.body == _ref("error_datastream_create_index.json")


def test_reference_search_request_is_evaluated_not_canned(elastic_emulator: ElasticEmulator) -> None:
    _logons(elastic_emulator)
    body = _ref("search_request.json")
    body["query"]["bool"]["filter"][2] = {"range": {"@timestamp": {"gte": "2025-06-01T00:00:00Z", "lt": "2025-06-02T00:00:00Z"}}}
    answer = _client(elastic_emulator).search(index="logs-system.security-*", body=body)
    expected = _ref("search_response.json")
    assert answer["hits"]["total"] == {"value": 9, "relation": "eq"}
    assert [h["_source"]["user"]["name"] for h in answer["hits"]["hits"]] == ["bob", "alice", "bob"]
    assert [h["sort"] for h in answer["hits"]["hits"]] == [[1748772480000], [1748772420000], [1748772360000]]
    assert all(h["_score"] is None for h in answer["hits"]["hits"])
    assert set(answer["hits"]["hits"][0]["_source"]) == {"@timestamp", "host", "user", "source", "event"}
    assert answer["aggregations"]["by_user"] == expected["aggregations"]["by_user"]
    assert answer["aggregations"]["per_5m"] == expected["aggregations"]["per_5m"]


def test_point_in_time_snapshot_and_shard_doc_tiebreaker(elastic_emulator: ElasticEmulator) -> None:
    _logons(elastic_emulator)
    es = _client(elastic_emulator)
    pit = es.open_point_in_time(index="logs-*", keep_alive="1m")["id"]
    elastic_emulator.index("logs-system.security-default", [{"@timestamp": "2025-06-01T10:00:30.000Z", "user": {"name": "late"}}])
    seen: list[str] = []
    after = None
    while True:
        body = {"size": 4, "pit": {"id": pit, "keep_alive": "1m"}, "sort": [{"@timestamp": "asc"}]}
        if after:
            body["search_after"] = after
        page = es.search(body=body)
        assert page["pit_id"] == pit
        hits = page["hits"]["hits"]
        if not hits:
            break
        assert all(len(h["sort"]) == 2 for h in hits)  # the implicit _shard_doc tiebreaker
        seen.extend(h["_id"] for h in hits)
        after = hits[-1]["sort"]
    assert len(seen) == len(set(seen)) == 10  # the late document is not in the snapshot
    assert es.close_point_in_time(id=pit)["succeeded"] is True
    with pytest.raises(NotFoundError):
        es.search(body={"pit": {"id": pit}, "sort": ["_shard_doc"]})


def test_bulk_per_item_errors_match_the_reference(elastic_emulator: ElasticEmulator) -> None:
    es = _client(elastic_emulator)
    es.index(index="soc-notes-default", id="evt-0", document={"message": "first"})
    lines = [json.loads(line) for line in (REFERENCE / "bulk_request.ndjson").read_text().splitlines() if line.strip()]
    answer = es.bulk(operations=lines)
    reference = _ref("bulk_response.json")
    assert answer["errors"] is True
    assert [next(iter(i.values()))["status"] for i in answer["items"]] == [409, 201, 404]
    assert answer["items"][0]["create"]["error"]["type"] == reference["items"][0]["create"]["error"]["type"]
    assert answer["items"][2]["delete"]["result"] == "not_found"
    assert elastic_emulator.calls(method="PUT", path_contains="_bulk")


def test_esql_is_evaluated_with_verification_errors(elastic_emulator: ElasticEmulator) -> None:
    _logons(elastic_emulator)
    es = _client(elastic_emulator)
    request = _ref("esql_request.json")
    request["filter"] = {"range": {"@timestamp": {"gte": "2025-06-01T00:00:00Z"}}}
    query = request["query"].replace('| STATS', '| WHERE user.name != "svc_backup" | STATS')
    answer = es.esql.query(query=query, filter=request["filter"])
    assert answer["columns"][0] == {"name": "failures", "type": "long"}
    assert [c["name"] for c in answer["columns"]] == ["failures", "user.name", "source.ip"]
    assert answer["values"] == [[5, "bob", "203.0.113.10"], [4, "alice", "203.0.113.11"]]
    with pytest.raises(BadRequestError) as caught:
        es.esql.query(query="FROM logs-* | WHERE nosuchfield == 1")
    assert caught.value.message == "verification_exception"
    assert "Unknown column [nosuchfield]" in caught.value.body["error"]["reason"]


def test_compatibility_modes(elastic_emulator: ElasticEmulator) -> None:
    es = _client(elastic_emulator)
    elastic_emulator.mode = "es8"
    with pytest.raises(BadRequestError) as old:
        es.info()
    assert old.value.body == _ref("error_es8_rejects_compat9.json")
    elastic_emulator.mode = "no_product_header"
    with pytest.raises(UnsupportedProductError):
        _client(elastic_emulator).info()
    elastic_emulator.mode = "opensearch"
    with pytest.raises(ApiError) as opensearch:
        _client(elastic_emulator).info()
    assert opensearch.value.meta.status == 406
    assert opensearch.value.body["error"].startswith("Content-Type header")


def test_kibana_boom_errors_xsrf_and_spaces(elastic_emulator: ElasticEmulator) -> None:
    auth = {"Authorization": f"ApiKey {elastic_emulator.api_key}"}
    url = elastic_emulator.kibana_url
    body = {"signal_ids": ["x"], "status": "acknowledged"}
    no_xsrf = httpx.post(url + "/api/detection_engine/signals/status", json=body, headers=auth)
    assert no_xsrf.status_code == 400 and no_xsrf.json() == _ref("kibana_error_xsrf.json")
    bad_auth = httpx.post(url + "/api/detection_engine/signals/status", json=body, headers={"kbn-xsrf": "true"})
    assert bad_auth.status_code == 401 and bad_auth.json() == _ref("kibana_error_401.json")
    created = httpx.post(url + "/s/soc/api/cases", json=_ref("kibana_case_create_request.json"), headers={**auth, "kbn-xsrf": "true"})
    assert created.status_code == 200
    case = created.json()
    reference = _ref("kibana_case_create_response.json")
    assert set(reference) <= set(case) and case["status"] == "open" and case["totalAlerts"] == 0
    assert httpx.get(f"{url}/s/soc/api/cases/{case['id']}", headers=auth).status_code == 200
    assert httpx.get(f"{url}/api/cases/{case['id']}", headers=auth).status_code == 404  # other space
