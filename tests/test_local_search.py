"""EventQuery -> SqlDialect SQL -> rows, and the read-only guard of run_native."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest
from emulators.local_data import sysmon_process, write_ndjson

from siemcrew.connectors.base import ConnectorError, EventQuery, Filter, QueryRefused, SiemConnector
from siemcrew.connectors.local import EventStore, LocalConnector
from siemcrew.crew.models import TimeRange


def at(minute: int, hour: int = 10) -> str:
    return f"2024-03-01T{hour:02d}:{minute:02d}:00.000Z"


@pytest.fixture(scope="module")
def connector(tmp_path_factory: pytest.TempPathFactory) -> LocalConnector:
    folder: Path = tmp_path_factory.mktemp("search")
    lab = [
        sysmon_process(at(0), "cmd /c echo 100% done", pid=101),
        sysmon_process(at(1), "cmd /c echo 1000 done", pid=102),
        sysmon_process(at(2), "C:\\temp\\a_b.exe --run", host="WORKSTATION6.theshire.local", image="C:\\temp\\a_b.exe", pid=103),
        sysmon_process(at(3), "C:\\temp\\axb.exe --run", host="WORKSTATION6.theshire.local", image="C:\\temp\\axb.exe", pid=104),
        sysmon_process(at(4), "echo it's fine", host="MORDORDC.theshire.local", pid=105),
        sysmon_process(at(5), "x' OR '1'='1", host="MORDORDC.theshire.local", pid=106),
        sysmon_process(at(0, hour=11), "powershell -enc AAAA", image="C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe", user="THESHIRE\\admin", pid=107),
        {
            "@timestamp": at(6), "EventID": 4624, "Channel": "security", "Hostname": "MORDORDC.theshire.local",
            "TargetUserName": "pgustavo", "TargetDomainName": "THESHIRE", "LogonType": "3", "IpAddress": "172.18.39.5",
        },
    ]  # fmt: skip
    other = [sysmon_process(at(0, hour=9), "cmd /c echo 100% done", pid=201)]
    store = EventStore()
    store.load(write_ndjson(folder / "lab.ndjson", lab))
    store.load(write_ndjson(folder / "other.ndjson", other))
    return LocalConnector(store)


def pids(result) -> list[int]:
    return [event["process.pid"] for event in result.events]


def search(connector: LocalConnector, *filters: Filter, **options) -> object:
    return connector.search(EventQuery(filters=list(filters), **options))


def test_protocol_and_exact_sql(connector):
    assert isinstance(connector, SiemConnector)
    result = search(connector, Filter(field="host.name", value="workstation5.THESHIRE.local"), scope="lab")
    assert result.query == (
        'SELECT * FROM events WHERE "host.name" = \'workstation5.THESHIRE.local\' AND "scope" = \'lab\' '
        'ORDER BY "@timestamp" ASC LIMIT 200'
    )
    assert pids(result) == [101, 102, 107]  # case-insensitive equality
    assert result.total == 3 and not result.truncated
    assert result.connector == "local" and result.language == "sql"


def test_contains_escapes_like_wildcards(connector):
    percent = search(connector, Filter(field="process.command_line", op="contains", value="100%"), scope="lab")
    assert pids(percent) == [101]
    underscore = search(connector, Filter(field="process.executable", op="contains", value="a_b"))
    assert pids(underscore) == [103]
    quote = search(connector, Filter(field="process.command_line", op="contains", value="it's"))
    assert pids(quote) == [105]


def test_injection_attempts_are_inert(connector):
    literal = search(connector, Filter(field="process.command_line", value="x' OR '1'='1"))
    assert pids(literal) == [106]
    for attack in ("' OR 1=1 --", "'; DROP TABLE events; --", "%' OR '%'='"):
        for op in ("eq", "contains", "startswith"):
            assert search(connector, Filter(field="process.command_line", op=op, value=attack)).total == 0
    assert connector.store.count() == 9
    with pytest.raises(QueryRefused):
        search(connector, Filter(field='host.name" = \'x\' OR "1', value="x"))
    with pytest.raises(QueryRefused):
        connector.search(EventQuery(group_by=["host.name; DROP TABLE events"]))


def test_operators(connector):
    assert pids(search(connector, Filter(field="process.command_line", op="startswith", value="POWERSHELL"))) == [107]
    assert pids(search(connector, Filter(field="process.command_line", op="endswith", value="--run"))) == [103, 104]
    assert pids(search(connector, Filter(field="process.pid", op="in", value=[101, 103]))) == [101, 103]
    assert pids(search(connector, Filter(field="process.pid", op="gte", value=106), Filter(field="process.pid", op="lte", value=200))) == [106, 107]
    negated = search(connector, Filter(field="host.hostname", value="WORKSTATION5", negate=True), Filter(field="process.pid", op="exists"))
    assert pids(negated) == [103, 104, 105, 106]
    either = connector.search(
        EventQuery(
            filters=[Filter(field="host.hostname", value="workstation6")],
            any_of=[[Filter(field="process.pid", value=103), Filter(field="process.command_line", op="contains", value="100%")]],
        )
    )
    assert pids(either) == [103]


def test_categories_and_raw_fields(connector):
    logons = connector.search(EventQuery(categories=["authentication"]))
    assert [e["user.name"] for e in logons.events] == ["pgustavo"]
    assert logons.events[0]["logon.type"] == "3" and logons.events[0]["winlog.channel"] == "security"
    raw = search(connector, Filter(field="winlog.event_data.CommandLine", op="contains", value="it's"))
    assert '"CommandLine" LIKE' in raw.query and pids(raw) == [105]


def test_group_by_counts_groups(connector):
    result = connector.search(EventQuery(group_by=["host.hostname"], scope="lab"))
    assert [row["count"] for row in result.events] == [3, 3, 2]  # ORDER BY count DESC
    assert sorted(result.events, key=lambda row: row["host.hostname"]) == [
        {"host.hostname": "MORDORDC", "count": 3},
        {"host.hostname": "WORKSTATION5", "count": 3},
        {"host.hostname": "WORKSTATION6", "count": 2},
    ]
    assert result.total == 3 and "GROUP BY" in result.query and not result.truncated
    # (MORDORDC, pgustavo), (WORKSTATION5, pgustavo), (WORKSTATION5, admin), (WORKSTATION6, pgustavo)
    limited = connector.search(EventQuery(group_by=["host.hostname", "user.name"], limit=2))
    assert len(limited.events) == 2 and limited.total == 4 and limited.truncated


def test_time_range_scope_limit_and_order(connector):
    window = TimeRange(start=datetime(2024, 3, 1, 10, 1, tzinfo=timezone.utc), end=datetime(2024, 3, 1, 10, 3, tzinfo=timezone.utc))
    assert pids(connector.search(EventQuery(time_range=window))) == [102, 103, 104]
    assert pids(search(connector, Filter(field="process.command_line", op="contains", value="100%"))) == [201, 101]
    assert pids(search(connector, Filter(field="process.command_line", op="contains", value="100%"), scope="other")) == [201]
    since = datetime(2024, 3, 1, 10, 4, tzinfo=timezone.utc)
    assert pids(search(connector, Filter(field="@timestamp", op="gte", value=since), Filter(field="process.pid", op="exists"))) == [105, 106, 107]
    page = connector.search(EventQuery(limit=2, order="desc", filters=[Filter(field="process.pid", op="exists")]))
    assert pids(page) == [107, 106] and page.total == 8 and page.truncated


def test_negative_limit_returns_nothing_but_counts(connector):
    result = connector.search(EventQuery(limit=-1, filters=[Filter(field="host.hostname", value="MORDORDC")]))
    assert result.events == [] and result.total == 3 and result.truncated


def test_concurrent_searches_from_worker_threads(connector):
    query = EventQuery(filters=[Filter(field="process.command_line", op="contains", value="100%")])
    with ThreadPoolExecutor(max_workers=4) as pool:
        totals = list(pool.map(lambda _: connector.search(query).total, range(40)))
    assert totals == [2] * 40


def test_unknown_field_is_empty_not_an_error(connector):
    result = search(connector, Filter(field="dns.question.name", value="evil.example"))
    assert result.total == 0 and result.events == []


def test_run_native_reads_and_restricts_time(connector):
    result = connector.run_native('SELECT "host.hostname" AS host, COUNT(*) AS n FROM events GROUP BY 1 ORDER BY 1')
    assert result.events == [
        {"host": "MORDORDC", "n": 3},
        {"host": "WORKSTATION5", "n": 4},
        {"host": "WORKSTATION6", "n": 2},
    ]
    window = TimeRange(start=datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc), end=datetime(2024, 3, 1, 10, 2, tzinfo=timezone.utc))
    docs = connector.run_native("WITH w AS (SELECT * FROM events) SELECT * FROM w ORDER BY \"@timestamp\";", time_range=window, limit=2)
    assert docs.query == 'WITH w AS (SELECT * FROM events) SELECT * FROM w ORDER BY "@timestamp"'  # as sent
    assert pids(docs) == [101, 102] and docs.total == 3 and docs.truncated  # the window is the view's
    regex = connector.run_native("SELECT COUNT(*) AS n FROM events WHERE \"process.command_line\" REGEXP 'ECHO\\s+100'")
    assert regex.events == [{"n": 3}]
    assert connector.run_native("SELECT replace('a;b', ';', '') AS x -- ; trailing comment").events == [{"x": "ab"}]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM events",
        "SELECT 1; DROP TABLE events",
        "select * from events;; update events set doc = ''",
        "PRAGMA table_info(events)",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "WITH x AS (SELECT 1) INSERT INTO events (scope) SELECT * FROM x",
        "REPLACE INTO events (scope) VALUES ('x')",
        "CREATE TABLE t (x)",
        "VACUUM",
        "SELECT load_extension('/tmp/evil')",
        "",
    ],
)
def test_run_native_guard_refuses_writes(connector, sql):
    with pytest.raises(QueryRefused):
        connector.run_native(sql)
    assert connector.store.count() == 9


def test_agent_connection_is_read_only_even_without_the_guard(connector):
    for sql in ("DELETE FROM events", "UPDATE events SET doc = ''", "CREATE TABLE t (x)", "PRAGMA query_only=OFF"):
        with pytest.raises(QueryRefused):
            connector.store.query(sql)
    assert connector.store.count() == 9


def test_runaway_query_hits_the_time_budget(tmp_path: Path):
    store = EventStore(query_timeout=0.2)
    connector = LocalConnector(store)
    with pytest.raises(ConnectorError, match="budget"):
        connector.run_native("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT COUNT(*) FROM c")
    with pytest.raises(ConnectorError, match="failed"):
        connector.run_native("SELECT * FROM no_such_table")
