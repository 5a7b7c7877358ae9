"""Written SQL on the local store reads the window view `events` and nothing else, within its time budget.

An escape corpus (window escapes, other tables and schemas, the catalog, pragma and table-valued
functions, functions outside the allow-list, writes, DDL, ATTACH, transactions, chaining) is run
twice: through `run_native` (the text guard, then the sandbox) and straight into the sandbox
(`EventStore.query_events`, no text guard), and every attempt must be refused for the reason the
corpus names, with the store unchanged and no file written. Legitimate queries must return what the
same SQL returns over a plain table holding exactly the window's rows.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from emulators.local_data import sysmon_process, write_ndjson

from siemcrew.connectors.base import AlertUpdate, ConnectorError, QueryRefused
from siemcrew.connectors.local import EventStore, LocalConnector
from siemcrew.connectors.local.sqltext import restriction
from siemcrew.crew.models import Alert, TimeRange

WINDOW = TimeRange(start=datetime(2024, 3, 1, 10, 0, tzinfo=timezone.utc), end=datetime(2024, 3, 1, 10, 59, tzinfo=timezone.utc))
SECRET = "exfiltrate-me"  # only in events outside the window


def at(minute: int, hour: int = 10) -> str:
    return f"2024-03-01T{hour:02d}:{minute:02d}:00.000Z"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalConnector, Path]:
    folder = tmp_path_factory.mktemp("confinement")
    inside = [
        sysmon_process(at(1), "cmd /c whoami", pid=11),
        sysmon_process(at(2), "powershell -nop -w hidden -enc SQBFAFgA", pid=12, host="WORKSTATION6.theshire.local"),
        sysmon_process(at(3), "C:\\temp\\a_b.exe --run", pid=13, image="C:\\temp\\a_b.exe"),
        sysmon_process(at(4), "net user admin /domain", pid=14, host="MORDORDC.theshire.local"),
    ]
    outside = [
        sysmon_process(at(0, hour=9), f"cmd /c echo {SECRET}", pid=21),
        sysmon_process(at(0, hour=11), f"cmd /c echo {SECRET} again", pid=22),
    ]
    store = EventStore(folder / "store.db")  # a file: ATTACH / VACUUM INTO would leave files beside it
    store.load(write_ndjson(folder / "lab.ndjson", inside + outside))
    connector = LocalConnector(store)
    alert = Alert(id="a-1", rule_name="rule", timestamp=datetime(2024, 3, 1, 10, 1, tzinfo=timezone.utc))
    connector.update_alert(alert, AlertUpdate(status="closed", verdict="benign", comment="written by the writer"))
    return connector, folder


# -- the escape corpus ------------------------------------------------------------------------
# Each entry: SQL, the text guard's reason (None: the guard lets it through to the sandbox), and the
# sandbox's reason when the guard is bypassed. Reasons are regular expressions over the error text.
MULTI = "only one SQL statement is allowed"
ONLY_SELECT = "only SELECT or WITH"
RESERVED = "'siemcrew_window' is reserved"


def guard(word: str) -> str:
    return f"{word} is not allowed: the local store is read-only for queries"


def reads(target: str) -> str:
    return f"reading {target} is not allowed: queries read the events view"


def function(name: str) -> str:
    return rf"function {re.escape(name)}\(\) is not allowed"


def action(name: str) -> str:
    return f"{name} is not allowed: the store is read-only"


MAIN_EVENTS = reads("main.events")
# SQLite asks first about the catalog write a statement would make: CREATE as an INSERT into
# sqlite_master (or sqlite_temp_master), DROP as a DELETE from it, and a table-valued function's
# virtual table declaration as an UPDATE of it. Each is refused there, before anything runs.
CREATES = action("INSERT on sqlite_(temp_)?master")
DROPS = action("DELETE on sqlite_(temp_)?master")
TABLE_FUNCTION = action("UPDATE on sqlite_master")

CORPUS: list[tuple[str, str | None, str]] = [
    # the time window: main.events by any spelling, in any position
    ("SELECT * FROM main.events", None, MAIN_EVENTS),
    ('SELECT * FROM "main"."events"', None, MAIN_EVENTS),
    ("SELECT * FROM [main].[events]", None, MAIN_EVENTS),
    ("SELECT * FROM `main`.`events`", None, MAIN_EVENTS),
    ("SELECT * FROM MAIN.EVENTS", None, MAIN_EVENTS),
    ("SELECT * FROM main . events", None, MAIN_EVENTS),
    ("SELECT * FROM main.events AS events", None, MAIN_EVENTS),
    ("SELECT doc FROM main.events WHERE \"@timestamp\" < '2024-03-01T10:00:00.000Z'", None, MAIN_EVENTS),
    ("SELECT COUNT(*) FROM main.events", None, MAIN_EVENTS),
    ("SELECT 1 FROM main.events", None, MAIN_EVENTS),
    ("SELECT (SELECT COUNT(*) FROM main.events)", None, MAIN_EVENTS),
    ("SELECT * FROM events WHERE EXISTS (SELECT 1 FROM main.events)", None, MAIN_EVENTS),
    ("SELECT * FROM events UNION ALL SELECT * FROM main.events", None, MAIN_EVENTS),
    ('SELECT * FROM events JOIN main.events m USING ("event.id")', None, MAIN_EVENTS),
    ('SELECT * FROM events WHERE "event.id" IN (SELECT "event.id" FROM main.events)', None, MAIN_EVENTS),
    ("WITH events AS (SELECT * FROM main.events) SELECT * FROM events", None, MAIN_EVENTS),
    ('WITH "events" AS (SELECT * FROM main.events) SELECT * FROM events', None, MAIN_EVENTS),
    ("WITH 'events' AS (SELECT * FROM main.events) SELECT * FROM events", None, MAIN_EVENTS),
    ("WITH [events] AS (SELECT * FROM main.events) SELECT COUNT(*) FROM events", None, MAIN_EVENTS),
    ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 2) SELECT * FROM r, main.events", None, MAIN_EVENTS),
    ("WITH x AS MATERIALIZED (SELECT * FROM main.events) SELECT * FROM x", None, MAIN_EVENTS),
    ("WITH x AS NOT MATERIALIZED (SELECT doc FROM main.events) SELECT * FROM x", None, MAIN_EVENTS),
    ("SELECT * FROM (SELECT * FROM main.events)", None, MAIN_EVENTS),
    ('SELECT * FROM main.events INDEXED BY "ix_events__timestamp"', None, MAIN_EVENTS),
    ("SELECT * FROM main.events NOT INDEXED", None, MAIN_EVENTS),
    ('SELECT max("@timestamp") FROM main.events', None, MAIN_EVENTS),
    ('SELECT "@timestamp", row_number() OVER () FROM main.events', None, MAIN_EVENTS),
    ('SELECT * FROM events e WHERE e."@timestamp" > (SELECT min("@timestamp") FROM main.events)', None, MAIN_EVENTS),
    ("SELECT group_concat(doc) FROM main.events", None, MAIN_EVENTS),
    ("SELECT * FROM events LEFT JOIN main.events ON 1", None, MAIN_EVENTS),
    ("SELECT json_extract(doc, '$') FROM main.events", None, MAIN_EVENTS),
    ("SELECT * FROM events, (SELECT * FROM main.events LIMIT 1)", None, MAIN_EVENTS),
    (f"SELECT doc FROM main.events WHERE doc LIKE '%{SECRET}%'", None, MAIN_EVENTS),
    ('SELECT "process.command_line" FROM main.events WHERE "process.pid" = 21', None, MAIN_EVENTS),
    ("SELECT * FROM events WHERE 0 UNION SELECT * FROM main.events WHERE 1", None, MAIN_EVENTS),
    ("SELECT * FROM events WHERE doc = (SELECT doc FROM main.events ORDER BY 1 LIMIT 1)", None, MAIN_EVENTS),
    ("SELECT CASE WHEN (SELECT COUNT(*) FROM main.events) > 4 THEN 1 END", None, MAIN_EVENTS),
    # the reserved window view: never named by written SQL, so no CTE can pass for it
    ("SELECT * FROM siemcrew_window", None, RESERVED),
    ("SELECT * FROM temp.siemcrew_window", None, RESERVED),
    ("WITH siemcrew_window AS (SELECT * FROM main.events) SELECT * FROM siemcrew_window", None, RESERVED),
    ('WITH "SIEMCREW_WINDOW" AS (SELECT * FROM main.events) SELECT * FROM "SIEMCREW_WINDOW"', None, RESERVED),
    ("WITH [SiemCrew_Window] AS (SELECT * FROM main.events) SELECT * FROM [SiemCrew_Window]", None, RESERVED),
    ("WITH `siemcrew_window` AS (SELECT doc FROM main.events) SELECT * FROM events", None, RESERVED),
    # the catalog and the store's other tables
    ("SELECT * FROM sqlite_master", None, reads("main.sqlite_master")),
    ("SELECT * FROM sqlite_schema", None, reads("main.sqlite_master")),
    ("SELECT * FROM main.sqlite_master", None, reads("main.sqlite_master")),
    ("SELECT sql FROM sqlite_master WHERE name = 'events'", None, reads("main.sqlite_master")),
    ("SELECT * FROM sqlite_temp_master", None, reads("temp.sqlite_temp_master")),
    ("SELECT * FROM temp.sqlite_master", None, reads("temp.sqlite_temp_master")),
    ("SELECT * FROM sqlite_temp_schema", None, reads("temp.sqlite_temp_master")),
    ("SELECT * FROM sqlite_stat1", None, reads("main.sqlite_stat1")),
    ("SELECT * FROM verdicts", None, reads("main.verdicts")),
    ("SELECT * FROM main.verdicts", None, reads("main.verdicts")),
    ("SELECT COUNT(*) FROM verdicts", None, reads("main.verdicts")),
    ("SELECT * FROM events WHERE EXISTS (SELECT 1 FROM verdicts)", None, reads("main.verdicts")),
    ("SELECT verdict FROM verdicts UNION SELECT doc FROM events", None, reads("main.verdicts")),
    # pragma and other table-valued functions
    ("SELECT * FROM pragma_table_info('events')", None, TABLE_FUNCTION),
    ("SELECT * FROM pragma_database_list", None, TABLE_FUNCTION),
    ("SELECT * FROM pragma_compile_options", None, TABLE_FUNCTION),
    ("SELECT * FROM pragma_function_list", None, TABLE_FUNCTION),
    ("SELECT * FROM pragma_module_list", None, TABLE_FUNCTION),
    ("SELECT * FROM pragma_index_list('events')", None, TABLE_FUNCTION),
    ("SELECT * FROM pragma_query_only", None, TABLE_FUNCTION),
    ("SELECT * FROM pragma_table_list", None, TABLE_FUNCTION),
    ("SELECT name FROM pragma_table_xinfo('verdicts')", None, TABLE_FUNCTION),
    ("SELECT * FROM events WHERE 1 = (SELECT 1 FROM pragma_table_info('events') LIMIT 1)", None, TABLE_FUNCTION),
    ("SELECT * FROM events, json_each(events.doc)", None, TABLE_FUNCTION),
    ("SELECT * FROM json_tree('{\"a\": 1}')", None, TABLE_FUNCTION),
    ("SELECT * FROM events WHERE \"event.id\" IN (SELECT value FROM json_each('[\"x\"]'))", None, TABLE_FUNCTION),
    ("SELECT * FROM dbstat", None, TABLE_FUNCTION),
    ("SELECT * FROM sqlite_stmt", None, TABLE_FUNCTION),
    # functions outside the allow-list
    ("SELECT load_extension('/tmp/evil')", guard("LOAD_EXTENSION"), function("load_extension")),
    ("SELECT \"load_extension\"('/tmp/evil')", None, function("load_extension")),
    ("SELECT [load_extension]('/tmp/evil', 'entry')", None, function("load_extension")),
    ("WITH x AS (SELECT 1) SELECT likely(load_extension('x')) FROM x", guard("LOAD_EXTENSION"), function("load_extension")),
    ("SELECT fts3_tokenizer('simple')", None, function("fts3_tokenizer")),
    ("SELECT fts3_tokenizer('evil', X'4141414141414141')", None, function("fts3_tokenizer")),
    ("SELECT randomblob(1000000000)", None, function("randomblob")),
    ("SELECT zeroblob(1000000000)", None, function("zeroblob")),
    ("SELECT length(randomblob(999999999)) FROM events", None, function("randomblob")),
    ("SELECT sqlite_version()", None, function("sqlite_version")),
    ("SELECT sqlite_source_id()", None, function("sqlite_source_id")),
    ("SELECT sqlite_compileoption_used('ENABLE_LOAD_EXTENSION')", None, function("sqlite_compileoption_used")),
    ("SELECT sqlite_compileoption_get(0)", None, function("sqlite_compileoption_get")),
    ("SELECT changes()", None, function("changes")),
    ("SELECT total_changes()", None, function("total_changes")),
    ("SELECT last_insert_rowid()", None, function("last_insert_rowid")),
    ("SELECT sqlite_log(1, 'forged log line')", None, function("sqlite_log")),
    ("SELECT fts5_source_id()", None, function("fts5_source_id")),
    ("SELECT rtreenode(2, X'00')", None, function("rtreenode")),
    ("SELECT rtreecheck('events')", None, function("rtreecheck")),
    ("SELECT * FROM events WHERE doc MATCH 'x'", None, function("match")),
    # writes, DDL, pragmas, attach, transactions, maintenance
    ("DELETE FROM main.events", ONLY_SELECT, action("DELETE on events")),
    ("UPDATE main.events SET doc = ''", ONLY_SELECT, action("UPDATE on events")),
    ("INSERT INTO main.events (scope, \"event.id\", doc) VALUES ('x', 'y', '{}')", ONLY_SELECT, action("INSERT on events")),
    ("REPLACE INTO main.verdicts VALUES ('a', 'b', 'c', 'd', 'e')", ONLY_SELECT, action("INSERT on verdicts")),
    ("INSERT OR REPLACE INTO verdicts VALUES ('a', 'b', 'c', 'd', 'e')", ONLY_SELECT, action("INSERT on verdicts")),
    ("WITH x AS (SELECT 1) INSERT INTO main.events (scope) SELECT * FROM x", guard("INSERT"), action("INSERT on events")),
    ("WITH x AS (SELECT 1) DELETE FROM main.events", guard("DELETE"), action("DELETE on events")),
    ("WITH x AS (SELECT 1) UPDATE main.verdicts SET status = 'open'", guard("UPDATE"), action("UPDATE on verdicts")),
    ("WITH x AS (SELECT 1) REPLACE INTO verdicts SELECT 1, 2, 3, 4, 5 FROM x", guard("REPLACE"), action("INSERT on verdicts")),
    ("CREATE TABLE t (x)", ONLY_SELECT, CREATES),
    ("CREATE TEMP TABLE t (x)", ONLY_SELECT, CREATES),
    ("CREATE TEMP TABLE t AS SELECT * FROM main.events", ONLY_SELECT, CREATES),
    ("CREATE TEMP VIEW v AS SELECT * FROM main.events", ONLY_SELECT, CREATES),
    ("CREATE VIEW v AS SELECT 1", ONLY_SELECT, CREATES),
    ("CREATE TEMP TRIGGER t AFTER INSERT ON verdicts BEGIN SELECT 1; END", MULTI, action("CREATE_TEMP_TRIGGER")),
    ("CREATE VIRTUAL TABLE temp.t USING fts5(x)", ONLY_SELECT, CREATES),
    ('CREATE INDEX main.i ON events ("scope")', ONLY_SELECT, CREATES),
    ("DROP VIEW events", ONLY_SELECT, DROPS),
    ("DROP VIEW temp.siemcrew_window", ONLY_SELECT, RESERVED),
    ("DROP TABLE main.events", ONLY_SELECT, DROPS),
    ("ALTER TABLE main.events ADD COLUMN x", ONLY_SELECT, action("ALTER_TABLE")),
    ("ALTER TABLE main.verdicts RENAME TO v2", ONLY_SELECT, action("ALTER_TABLE")),
    ("PRAGMA query_only = OFF", ONLY_SELECT, action("PRAGMA")),
    ("PRAGMA query_only=OFF", ONLY_SELECT, action("PRAGMA")),  # verbatim what the store runs to redefine the window
    ("PRAGMA writable_schema = ON", ONLY_SELECT, action("PRAGMA")),
    ("PRAGMA table_info(events)", ONLY_SELECT, action("PRAGMA")),
    ("PRAGMA temp.table_info(siemcrew)", ONLY_SELECT, action("PRAGMA")),
    ("PRAGMA main.journal_mode = DELETE", ONLY_SELECT, action("PRAGMA")),
    ("ATTACH DATABASE ':memory:' AS x", ONLY_SELECT, action("ATTACH")),
    ("ATTACH '{tmp}/evil.db' AS evil", ONLY_SELECT, action("ATTACH")),
    ("DETACH DATABASE main", ONLY_SELECT, action("DETACH")),
    ("BEGIN", ONLY_SELECT, action("TRANSACTION")),
    ("BEGIN IMMEDIATE", ONLY_SELECT, action("TRANSACTION")),
    ("COMMIT", ONLY_SELECT, action("TRANSACTION")),
    ("ROLLBACK", ONLY_SELECT, action("TRANSACTION")),
    ("SAVEPOINT s", ONLY_SELECT, action("SAVEPOINT")),
    ("RELEASE s", ONLY_SELECT, action("SAVEPOINT")),
    ("VACUUM", ONLY_SELECT, action("ATTACH")),  # VACUUM attaches the copy it builds
    ("VACUUM INTO '{tmp}/copy.db'", ONLY_SELECT, action("ATTACH")),
    ("ANALYZE", ONLY_SELECT, action("ANALYZE")),
    ("REINDEX", ONLY_SELECT, action("REINDEX")),
    ("EXPLAIN SELECT * FROM main.events", ONLY_SELECT, MAIN_EVENTS),
    ("EXPLAIN QUERY PLAN SELECT * FROM sqlite_master", ONLY_SELECT, reads("main.sqlite_master")),
    # chaining: a second statement never runs
    ("SELECT 1; DROP TABLE main.events", MULTI, MULTI),
    ("SELECT 1; ATTACH ':memory:' AS x", MULTI, MULTI),
    ("select * from events;; update main.events set doc = ''", MULTI, MULTI),
    ("SELECT 1 /* ; */ ; DELETE FROM main.events", MULTI, MULTI),
    ("SELECT 1 -- x\n; DELETE FROM main.events", MULTI, MULTI),
    ("SELECT '1'';'; PRAGMA query_only = 0", MULTI, MULTI),
    ("SELECT * FROM events; SELECT * FROM main.events", MULTI, MULTI),
]


def corpus_ids() -> list[str]:
    return [f"{i:03d}-{re.sub(r'[^A-Za-z0-9]+', '_', sql)[:40]}" for i, (sql, _, _) in enumerate(CORPUS)]


def test_corpus_is_large_and_each_entry_names_a_reason():
    assert len(CORPUS) >= 100
    assert len({sql for sql, _, _ in CORPUS}) == len(CORPUS)
    assert all(sandbox for _, _, sandbox in CORPUS)


def _state(connector: LocalConnector, folder: Path) -> tuple:
    store = connector.store
    return (
        store.count(),
        store.scalar("SELECT group_concat(doc, '|') FROM (SELECT doc FROM events ORDER BY \"event.id\")"),
        connector.verdicts("a-1"),
        sorted(p.name for p in folder.iterdir()),
    )


@pytest.mark.parametrize(("sql", "guard_reason", "sandbox_reason"), CORPUS, ids=corpus_ids())
def test_escape_refused_by_run_native(world, sql: str, guard_reason: str | None, sandbox_reason: str):
    connector, folder = world
    before = _state(connector, folder)
    with pytest.raises(QueryRefused, match=guard_reason or sandbox_reason):
        connector.run_native(sql.replace("{tmp}", str(folder)), time_range=WINDOW)
    assert _state(connector, folder) == before


@pytest.mark.parametrize(("sql", "guard_reason", "sandbox_reason"), CORPUS, ids=corpus_ids())
def test_escape_refused_by_the_sandbox_alone(world, sql: str, guard_reason: str | None, sandbox_reason: str):
    """The text guard bypassed: SQLite's authorizer (and the reserved name) refuse on their own."""
    connector, folder = world
    before = _state(connector, folder)
    with pytest.raises(ConnectorError, match=sandbox_reason):
        connector.store.query_events(sql.replace("{tmp}", str(folder)), time_range=WINDOW)
    assert _state(connector, folder) == before


def test_the_statements_that_redefine_the_window_are_refused_when_written(world):
    """The store runs these on the sandbox with its authorizer off; written, they are judged like any other."""
    connector, folder = world
    before = _state(connector, folder)
    narrow = TimeRange(start=WINDOW.start, end=WINDOW.start.replace(minute=2))
    for window in (narrow, WINDOW, None, narrow):
        connector.run_native("SELECT COUNT(*) FROM events", time_range=window)  # the window view redefined
        with pytest.raises(QueryRefused, match=action("PRAGMA")):
            connector.store.query_events("PRAGMA query_only=OFF", time_range=window)
        with pytest.raises(QueryRefused, match=RESERVED):
            connector.store.query_events("DROP VIEW IF EXISTS temp.siemcrew_window", time_range=window)
        with pytest.raises(QueryRefused, match=action("INSERT on events")):
            connector.store.query_events("INSERT INTO main.events (scope, \"event.id\", doc) VALUES ('x', 'y', '{}')")
    assert _state(connector, folder) == before


def test_nothing_outside_the_window_reaches_an_answer(world):
    """The secret lives only outside the window; legitimate ways of asking for everything miss it."""
    connector, _ = world
    for sql in (
        "SELECT * FROM events",
        "SELECT group_concat(doc) AS all_docs FROM events",
        "SELECT * FROM temp.events",
        "WITH everything AS (SELECT * FROM events) SELECT * FROM everything",
        "SELECT * FROM events WHERE \"@timestamp\" < '2024-03-01T10:00:00.000Z' OR 1",
    ):
        result = connector.run_native(sql, time_range=WINDOW, limit=100)
        assert result.events and SECRET not in str(result.events), sql
        assert result.total == 4 or (result.total == 1 and "group_concat" in sql), sql


# -- legitimate queries ---------------------------------------------------------------------------
LEGITIMATE = [
    "SELECT * FROM events",
    "SELECT * FROM events ORDER BY \"@timestamp\"",
    "SELECT COUNT(*) AS n FROM events",
    "SELECT count() FROM events",
    "SELECT 1 FROM events",
    'SELECT "host.hostname" AS host, COUNT(*) AS n FROM events GROUP BY 1 ORDER BY 1',
    "WITH w AS (SELECT * FROM events) SELECT * FROM w ORDER BY \"@timestamp\"",
    'WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT x FROM c',
    'SELECT COUNT(*) FROM (SELECT * FROM events WHERE "process.pid" > 11)',
    "SELECT * FROM temp.events",
    "SELECT json_extract(doc, '$.\"process.name\"') AS name FROM events ORDER BY 1",
    "SELECT doc ->> '$.\"process.pid\"' AS pid, doc -> '$.\"host.name\"' AS host FROM events ORDER BY 1",
    "SELECT \"process.command_line\" FROM events WHERE \"process.command_line\" REGEXP '-enc\\s+[A-Za-z0-9+/=]+'",
    "SELECT \"process.command_line\" FROM events WHERE \"process.command_line\" LIKE '%WHOAMI%'",
    "SELECT \"process.executable\" FROM events WHERE \"process.executable\" GLOB '*a_b.exe'",
    "SELECT \"process.executable\" FROM events WHERE \"process.executable\" LIKE '%a\\_b%' ESCAPE '\\'",
    "SELECT strftime('%H', \"@timestamp\") AS hour, datetime(\"@timestamp\") AS at, julianday(\"@timestamp\") > 0 AS j FROM events",
    "SELECT \"process.pid\", row_number() OVER (ORDER BY \"@timestamp\") AS n, lag(\"process.pid\") OVER (ORDER BY \"@timestamp\") AS prev FROM events",
    'SELECT e1."process.pid", e2."process.pid" FROM events e1 JOIN events e2 ON e1."host.hostname" = e2."host.hostname" AND e1."process.pid" < e2."process.pid"',
    'SELECT "process.pid" FROM events WHERE "process.pid" IN (SELECT "process.pid" FROM events WHERE "host.hostname" = \'WORKSTATION5\')',
    'SELECT "process.pid" FROM events UNION SELECT 99 ORDER BY 1',
    "SELECT CASE WHEN \"process.pid\" > 12 THEN 'late' ELSE 'early' END AS k, CAST(\"process.pid\" AS TEXT) AS p, COALESCE(\"dll.path\", 'none') AS d FROM events",
    "SELECT group_concat(\"process.pid\", ',') AS pids, printf('%05d', max(\"process.pid\")) AS top, json_group_array(\"process.pid\") AS arr FROM events",
    "SELECT lower(\"host.hostname\"), upper(\"user.name\"), substr(\"process.command_line\", 1, 3), instr(\"process.command_line\", ' '), length(doc) > 0, replace(\"process.command_line\", ' ', '_'), trim('  x '), hex('a'), abs(-1), round(1.5) FROM events",
    "SELECT replace('a;b', ';', '') AS x -- ; trailing comment",
    "SELECT 'a -- b' AS x /* a comment */",
    "SELECT * FROM events;",
    "SELECT * FROM events; -- a comment after the statement",
    "SELECT typeof(\"process.pid\"), iif(\"process.pid\" % 2 = 0, 'even', 'odd'), nullif(1, 1), ifnull(NULL, 2), json_valid(doc), json_type(doc) FROM events",
]


def _oracle(store_path: Path, sql: str) -> tuple[list[str], list[tuple]]:
    """The same SQL over a plain table `events` holding exactly the window's rows, no sandbox."""
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    conn.create_function("REGEXP", 2, lambda p, v: None if p is None or v is None else int(bool(re.search(p, str(v), re.I))))
    conn.execute(f"CREATE TEMP TABLE events AS SELECT * FROM main.events WHERE {restriction(None, WINDOW)}")
    cursor = conn.execute(sql.rstrip().removesuffix("-- a comment after the statement").rstrip().rstrip(";"))
    names = [d[0] for d in cursor.description]
    rows = cursor.fetchall()
    conn.close()
    return names, rows


@pytest.mark.parametrize("sql", LEGITIMATE)
def test_legitimate_queries_answer_as_over_the_window_alone(world, sql: str):
    connector, folder = world
    text = connector.run_native(sql, time_range=WINDOW, limit=1000).query
    names, rows = connector.store.query_events(text, time_range=WINDOW)
    expected_names, expected_rows = _oracle(folder / "store.db", text)
    assert names == expected_names and sorted(map(repr, rows)) == sorted(map(repr, expected_rows))
    assert rows, f"no rows: the comparison would prove nothing for {sql!r}"
    assert SECRET not in repr(rows)


def test_without_a_window_every_event_and_count_star_over_the_table():
    """No window: the view has no WHERE, SQLite counts the table directly, and that is allowed."""
    store = EventStore()
    connector = LocalConnector(store)
    assert connector.run_native("SELECT COUNT(*) AS n FROM events").events == [{"n": 0}]
    assert connector.run_native("SELECT 1 AS one FROM events").events == []
    with pytest.raises(QueryRefused, match=reads("main.events")):
        connector.run_native("SELECT doc FROM main.events")  # no window, still only the view


def test_values_are_bounded_in_size(world):
    """A query cannot make one string or blob larger than MAX_VALUE_BYTES (memory, not only time)."""
    connector, _ = world
    grow = "SELECT length(replace(printf('%.*c', 1000000, 'x'), 'x', '{}')) AS n"
    with pytest.raises(ConnectorError, match="string or blob too big"):
        connector.run_native(grow.format("x" * 70), time_range=WINDOW)  # 70 MB
    assert connector.run_native(grow.format("x" * 60), time_range=WINDOW).events == [{"n": 60_000_000}]
    big = connector.run_native("SELECT printf('%.*c', 100000000, 'x') IS NULL AS capped", time_range=WINDOW)
    assert big.events == [{"capped": 1}]  # SQLite's printf gives up at the limit rather than allocate 100 MB


def test_a_window_sqlite_cannot_hold_is_a_query_error_and_the_next_query_runs(world):
    connector, _ = world
    with pytest.raises(ConnectorError, match="cannot set its window"):
        connector.store.query_events("SELECT COUNT(*) FROM events", scope="lab\x00")
    assert connector.run_native("SELECT COUNT(*) AS n FROM events", time_range=WINDOW).events == [{"n": 4}]


def test_window_changes_between_queries_and_the_reader_is_untouched(world):
    """A windowed sandbox query leaves nothing behind: the next one and the code's own searches see theirs."""
    connector, _ = world
    narrow = TimeRange(start=datetime(2024, 3, 1, 10, 1, tzinfo=timezone.utc), end=datetime(2024, 3, 1, 10, 2, tzinfo=timezone.utc))
    assert connector.run_native("SELECT COUNT(*) AS n FROM events", time_range=narrow).events == [{"n": 2}]
    assert connector.run_native("SELECT COUNT(*) AS n FROM events", time_range=WINDOW).events == [{"n": 4}]
    assert connector.run_native("SELECT COUNT(*) AS n FROM events").events == [{"n": 6}]
    assert connector.run_native("SELECT COUNT(*) AS n FROM events", time_range=narrow).events == [{"n": 2}]
    assert connector.store.count() == 6  # the reader reads main.events, never the sandbox's view


# -- the row limit with comments -------------------------------------------------------------------
@pytest.mark.parametrize(
    "sql",
    [
        'SELECT * FROM events ORDER BY "@timestamp" -- every event in the window',
        'SELECT * FROM events ORDER BY "@timestamp" /* every event */',
        'SELECT * FROM events ORDER BY "@timestamp"; -- every event',
        'SELECT * FROM events -- first line\nORDER BY "@timestamp" -- second line',
    ],
)
def test_trailing_comment_does_not_break_the_row_limit(world, sql: str):
    connector, _ = world
    result = connector.run_native(sql, time_range=WINDOW, limit=2)
    assert [e["process.pid"] for e in result.events] == [11, 12]
    assert result.total == 4 and result.truncated


def test_unterminated_block_comment_is_refused_with_its_reason(world):
    connector, _ = world
    with pytest.raises(QueryRefused, match="unterminated /\\* comment"):
        connector.run_native("SELECT * FROM events /* the rest", time_range=WINDOW, limit=2)
    assert connector.run_native("SELECT '/*' AS x", time_range=WINDOW).events == [{"x": "/*"}]


# -- REGEXP within the time budget ------------------------------------------------------------------
def test_catastrophic_regexp_fails_the_query_within_its_budget_and_frees_the_store():
    store = EventStore(query_timeout=0.5)
    connector = LocalConnector(store)
    sql = "SELECT '" + "a" * 40 + "!' REGEXP '^(a|a)*$' AS hit"  # 2**40 paths for a backtracking engine
    started = time.monotonic()
    with pytest.raises(ConnectorError, match=r"exceeded its 0.5s budget \(a REGEXP match ran out of time\)") as caught:
        connector.run_native(sql)
    elapsed = time.monotonic() - started
    assert not isinstance(caught.value, QueryRefused)  # a failed query, not a refusal and not "no match"
    assert elapsed < 5, elapsed  # CPU-time bound; wall time stretches only by CPU contention
    assert connector.run_native("SELECT 'abc' REGEXP 'B' AS hit").events == [{"hit": 1}]  # lock released


def test_the_reported_pattern_now_answers_at_once():
    """`'aaa…a!' REGEXP '^(a+)+$'` (27 characters) took 7.4 s past a 2 s limit with `re`."""
    connector = LocalConnector(EventStore(query_timeout=2.0))
    started = time.monotonic()
    assert connector.run_native("SELECT '" + "a" * 27 + "!' REGEXP '^(a+)+$' AS hit").events == [{"hit": 0}]
    assert time.monotonic() - started < 1.0


def test_other_threads_wait_at_most_one_budget_for_the_store():
    store = EventStore(query_timeout=0.5)
    connector = LocalConnector(store)
    errors: list[Exception] = []

    def pathological() -> None:
        try:
            connector.run_native("SELECT '" + "a" * 40 + "!' REGEXP '^(a|a)*$'")
        except ConnectorError as exc:
            errors.append(exc)

    worker = threading.Thread(target=pathological)
    worker.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert connector.run_native("SELECT 1 AS one").events == [{"one": 1}]
    waited = time.monotonic() - started
    worker.join(timeout=10)
    assert not worker.is_alive() and len(errors) == 1 and "REGEXP" in str(errors[0])
    assert waited < 5, waited


def test_invalid_regular_expression_is_a_clear_query_error(world):
    connector, _ = world
    with pytest.raises(ConnectorError, match=r"invalid regular expression '\(unclosed'"):
        connector.run_native("SELECT * FROM events WHERE doc REGEXP '(unclosed'", time_range=WINDOW)


def test_regexp_too_large_to_compile_is_refused_before_compiling(world):
    """Compiling is not covered by a match timeout; `regex` needs seconds for nested bounded repeats."""
    connector, _ = world
    started = time.monotonic()
    with pytest.raises(ConnectorError, match=r"too large to compile within a query budget \(3200000 nodes"):
        connector.run_native("SELECT 'a' REGEXP '((((a{20}){20}){20}){20}){20}'", time_range=WINDOW)
    assert time.monotonic() - started < 1.0
    assert connector.run_native("SELECT 'ab' REGEXP '(a{1,20}){1,20}b' AS hit").events == [{"hit": 1}]


def test_regexp_syntax_is_what_re_accepted(world):
    """`re`'s parser decides the syntax, as before the engine changed: lookarounds and backreferences
    work; `regex`-only syntax is refused as `re` refused it."""
    connector, _ = world
    sql = "SELECT 'xy' REGEXP '(?i)X(?=Y)' AS look, 'abab' REGEXP '^(ab)\\1$' AS back"
    assert connector.run_native(sql).events == [{"look": 1, "back": 1}]
    with pytest.raises(ConnectorError, match=r"invalid regular expression .*bad escape \\p"):
        connector.run_native("SELECT 'a' REGEXP '\\p{L}'")


SIGMA_RE = """
title: Encoded PowerShell by regular expression
id: 6f4d3c1a-4c2e-4a57-8a53-0e3d8f2b9c11
logsource: {product: windows, category: process_creation}
detection:
  selection:
    CommandLine|re: '-enc\\s+[A-Za-z0-9+/=]{4,}'
  condition: selection
level: high
"""


def test_sigma_re_modifier_runs_on_the_bounded_regexp(world):
    connector, _ = world
    result = connector.run_sigma(SIGMA_RE, time_range=WINDOW)
    assert "REGEXP" in result.query
    assert [e["process.pid"] for e in result.events] == [12]


def test_catastrophic_sigma_regexp_is_an_error_not_a_miss(tmp_path: Path):
    store = EventStore(query_timeout=0.5)
    store.load(write_ndjson(tmp_path / "x.ndjson", [sysmon_process(at(1), "a" * 40 + "!", pid=31)]))
    rule = SIGMA_RE.replace("-enc\\s+[A-Za-z0-9+/=]{4,}", "^(a|a)*$")
    assert "^(a|a)*$" in rule
    with pytest.raises(ConnectorError, match="REGEXP match ran out of time"):
        LocalConnector(store).run_sigma(rule)
