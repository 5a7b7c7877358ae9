"""The ES|QL guard (and the `POST _query` door of the console guard) against corpora: queries that
ship rows to an inference endpoint or write them somewhere, which it must refuse (each for its own
reason), and the read queries siemcrew itself sends, analysts write and the docs show, which it
must accept.

The refused corpus tries what an attacker would: COMPLETION / RERANK / EMBED / COLLECT in every
position and spelling, comment markers inside strings and strings inside comments, triple quotes,
quoted names, lexer-mode differences between ES|QL versions (FROM, KEEP...), inference functions,
sub-pipelines in parentheses, parameters, statements, look-alikes, and `POST _query` bodies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from siemcrew.connectors.base import EventQuery, Filter, QueryRefused
from siemcrew.connectors.elastic import guard
from siemcrew.connectors.elastic import sigma
from siemcrew.connectors.elastic.esql import esql_for
from siemcrew.connectors.elastic.guard import ESQL_REFUSED
from siemcrew.connectors.elastic.profile import Profile
from siemcrew.connectors.elastic.scope import events_expression

DATA = Path(__file__).parent / "data" / "guard_allowed.jsonl"


def sends(command: str) -> str:
    """The reason a refused command's refusal must give."""
    return f"ES|QL command {command.upper()} refused: {ESQL_REFUSED[command]}"


def calls(function: str) -> str:
    return f"ES|QL function {function.upper()} refused: it calls an inference endpoint"


def unlisted(command: str) -> str:
    return f"ES|QL command {command.upper()!r} is not on the read-only allowlist"


IN_NAMES = "some ES|QL versions read it there as structure"
FIRST = "must start with FROM"
ESCAPE = "invalid escape"
UNTERMINATED = "unterminated string literal"
TRIPLE = "unterminated triple-quoted string"
COMMENT = "unterminated /* comment"
NESTED = "nested /*"
SEMICOLON = "';'"
PARAMS = "query parameters"
LOOKALIKE = "look-alike"
CONTROL = "control character"
NAME = "expected a command name"
EMPTY = "empty ES|QL command"

REFUSED: list[tuple[str, str]] = [
    # -- commands that send rows out or write them, in every spelling and position -----------------
    ('FROM logs-* | COMPLETION answer = message WITH { "inference_id": "llm" }', sends("completion")),
    ('FROM logs-* | completion answer = message WITH {"inference_id": "llm"}', sends("completion")),
    ("FROM logs-* | Completion x", sends("completion")),
    ("FROM logs-* | cOmPlEtIoN x", sends("completion")),
    ("FROM logs-* |COMPLETION x", sends("completion")),
    ("FROM logs-*\n|\nCOMPLETION x", sends("completion")),
    ("FROM logs-* |\tCOMPLETION x", sends("completion")),
    ("FROM logs-* | /* hidden? */ COMPLETION x", sends("completion")),
    ("FROM logs-* | // a line comment\nCOMPLETION x", sends("completion")),
    ("FROM logs-* | COMPLETION\u00a0x", sends("completion")),
    ('FROM logs-* | RERANK "query" ON message WITH {"inference_id": "r"}', sends("rerank")),
    ('FROM logs-* | rerank "q" ON message', sends("rerank")),
    ('FROM logs-* | EMBED message WITH {"inference_id": "e"}', sends("embed")),
    ("FROM logs-* | COLLECT stolen-copy", sends("collect")),
    ("FROM logs-* | KEEP message | COLLECT exfil-index", sends("collect")),
    ("FROM logs-* | COLLECT id=abc copy-index", sends("collect")),
    ("ROW a = 1 | COMPLETION a", sends("completion")),
    ("SHOW INFO | COMPLETION x", sends("completion")),
    ('TS metrics-* | RERANK "q" ON x', sends("rerank")),
    ("COMPLETION x", sends("completion")),
    ("FROM logs-* | WHERE true | SORT @timestamp | LIMIT 10 | COMPLETION c = message", sends("completion")),
    ('FROM logs-* | WHERE a == "x" | EVAL b = 1 | RERANK "q" ON b', sends("rerank")),
    ("FROM logs-* | STATS c = COUNT(*) BY host.name | EMBED host.name", sends("embed")),
    ("FROM logs-* | LOOKUP JOIN hosts ON host.name | COMPLETION x", sends("completion")),
    ('FROM logs-* | ENRICH hosts-policy ON host.name | RERANK "q" ON host.name', sends("rerank")),
    ("FROM logs-* METADATA _id | COMPLETION x", sends("completion")),
    ('FROM logs-* | WHERE message LIKE "*|*" | COMPLETION x', sends("completion")),
    ('FROM logs-* | WHERE message RLIKE ".*(a|b).*" | EMBED message', sends("embed")),
    ('FROM logs-* | DISSECT message "%{a} | %{b}" | COMPLETION a', sends("completion")),
    ('FROM logs-* | GROK message "%{WORD:a}" | COMPLETION a', sends("completion")),
    ("FROM logs-* | MV_EXPAND tags | COMPLETION tags", sends("completion")),
    ("FROM logs-* | SAMPLE 0.1 | COMPLETION message", sends("completion")),
    ("FROM logs-* | CHANGE_POINT v ON @timestamp | COMPLETION v", sends("completion")),
    ("FROM logs-* | INLINESTATS c = COUNT(*) | COMPLETION c", sends("completion")),
    # -- comment markers in strings, strings in comments (the bypass and its kin) -----------
    ('FROM logs-* | WHERE message == "/*" | COMPLETION c = message WITH {"inference_id": "llm"} | WHERE message != "*/"',
     sends("completion")),
    ('FROM logs-* | WHERE message == "//" | COMPLETION c = message', sends("completion")),
    ('FROM logs-* | WHERE message == """//""" | COMPLETION c = message', sends("completion")),
    ('FROM logs-* | WHERE message == """/*""" | COMPLETION c = message | WHERE m == """*/"""', sends("completion")),
    ('FROM logs-* | WHERE message == "a\\"/*" | COMPLETION c = message | WHERE m == "*/"', sends("completion")),
    ('FROM logs-* | WHERE message == "\\\\" | COMPLETION c = message', sends("completion")),
    ('FROM logs-* | WHERE message == """a"""" | COMPLETION c = message', sends("completion")),
    ('FROM logs-* | WHERE message == """a""""" | COMPLETION x', sends("completion")),
    ('FROM logs-* | EVAL x = "|" | COMPLETION x', sends("completion")),
    ("FROM logs-* /* | LIMIT 1 */ | COMPLETION x", sends("completion")),
    ("FROM logs-* // | LIMIT 1\n| COMPLETION x", sends("completion")),
    ("FROM logs-* | WHERE x == 1 /* */ | COMPLETION x /* */", sends("completion")),
    ("FROM logs-* /* outer /* inner */ | COMPLETION x */", NESTED),
    ("FROM logs-* /* never closed | COMPLETION x", COMMENT),
    ("FROM logs-* | WHERE a == 1 /* | COMPLETION x", COMMENT),
    ('FROM logs-* | WHERE message == "unterminated | COMPLETION x', UNTERMINATED),
    ('FROM logs-* | WHERE message == "line\nbreak | COMPLETION x | WHERE b == "', UNTERMINATED),
    ('FROM logs-* | WHERE message == "a\\q" | COMPLETION x | WHERE b == "c"', ESCAPE),
    ('FROM logs-* | WHERE message == "a\\', ESCAPE),
    ('FROM logs-* | WHERE message == """never closed | COMPLETION x', TRIPLE),
    ('FROM logs-* | WHERE message == """two\nlines | COMPLETION x"""', TRIPLE),
    # -- where ES|QL versions and lexer modes read quotes and backticks differently -----------------
    ("FROM logs-* | WHERE `a\"` == 1 | COMPLETION x | WHERE `\"b` == 1", IN_NAMES),
    ('FROM logs-"x | COMPLETION y | z"', IN_NAMES),
    ('FROM logs-* , "a/*" | WHERE a == "*/ | COMPLETION x | EVAL b = "', IN_NAMES),
    ("FROM logs-`x | COMPLETION y | EVAL z = `", IN_NAMES),
    ('FROM logs-* METADATA `_id"` | COMPLETION x', IN_NAMES),
    ('FROM logs-* | KEEP "a|b" | COMPLETION x', IN_NAMES),
    ('FROM logs-* | RENAME `a/*` AS b | WHERE c == "*/ | COMPLETION x"', IN_NAMES),
    ("FROM logs-* | ENRICH `p|q` ON host.name", IN_NAMES),
    ("FROM logs-* | DROP `(x)` | COMPLETION y", IN_NAMES),
    ("FROM logs-* | DROP ``x`` | COMPLETION y", "empty or ``-escaped quoted name"),
    ("FROM logs-* | EVAL `a``b` = 1 | COMPLETION x", "empty or ``-escaped quoted name"),
    ("FROM logs-* | EVAL `unterminated = 1 | COMPLETION x", "unterminated `quoted name`"),
    # -- functions that call inference endpoints -----------------------------------------------------
    ('FROM logs-* | EVAL e = TEXT_EMBEDDING(message, "e5")', calls("text_embedding")),
    ('FROM logs-* | EVAL e = text_embedding("q", "e5")', calls("text_embedding")),
    ('FROM logs-* | WHERE KNN(vec, TEXT_EMBEDDING("q", "e5"))', calls("text_embedding")),
    ('FROM logs-* | EVAL s = TEXT_SIMILARITY("q", message, "rerank-ep")', calls("text_similarity")),
    ('FROM logs-* | EVAL e = EMBED_TEXT(message, "e5")', calls("embed_text")),
    ('ROW e = TEXT_EMBEDDING("secret", "ep")', calls("text_embedding")),
    ('FROM logs-* | STATS c = COUNT(*) BY e = TEXT_EMBEDDING(host.name, "ep")', calls("text_embedding")),
    ('FROM logs-* | SORT TEXT_EMBEDDING(message, "ep")', calls("text_embedding")),
    ('FROM logs-* | EVAL e = `text_embedding`(message, "ep")', calls("text_embedding")),
    ('FROM logs-* | EVAL e = TEXT_EMBEDDING /* c */ (message, "ep")', calls("text_embedding")),
    ('FROM logs-* | EVAL e = COMPLETION(message, "ep")', calls("completion")),
    ("FROM logs-* | WHERE RERANK(message) > 0", calls("rerank")),
    ("FROM logs-* | EVAL x = embed(message)", calls("embed")),
    # -- sub-pipelines and groups --------------------------------------------------------------------
    ("FROM logs-* | WHERE host.name IN (FROM hosts | COMPLETION x)", sends("completion")),
    ('FROM logs-*, (FROM other | RERANK "q" ON message)', sends("rerank")),
    ("FROM logs-* | WHERE x IN (COMPLETION y)", sends("completion")),
    ("FROM logs-* | EVAL x = [COMPLETION y]", sends("completion")),
    ("FROM logs-* | FORK (WHERE a == 1 | COMPLETION x) (LIMIT 1)", unlisted("fork")),
    ("FROM logs-* | FORK (COMPLETION x) (LIMIT 1)", unlisted("fork")),
    ("EXPLAIN [FROM logs-* | COMPLETION x]", unlisted("explain")),
    # -- commands nobody listed, statements, parameters ---------------------------------------------
    ("FROM logs-* | FUSE", unlisted("fuse")),
    ("FROM logs-* | RRF", unlisted("rrf")),
    ("FROM logs-* | LOAD_RESULT abc", unlisted("load_result")),
    ("FROM logs-* | INSERT INTO x", unlisted("insert")),
    ('FROM logs-* | WEBHOOK "https://evil.example"', unlisted("webhook")),
    ("FROM logs-* | PROMQL x", unlisted("promql")),
    ('SET project_routing="_alias:*"; FROM logs-*', SEMICOLON),
    ("FROM logs-*; FROM secrets", SEMICOLON),
    ("FROM logs-* | LIMIT 1;", SEMICOLON),
    ("FROM logs-* | EVAL x = ??fn(message)", PARAMS),
    ("FROM logs-* | WHERE host.name == ?h | COMPLETION x", PARAMS),
    ("FROM logs-* | KEEP ??fields", PARAMS),
    ("WHERE true | COMPLETION x", FIRST),
    ("EVAL x = 1", FIRST),
    ("| COMPLETION x", EMPTY),
    ("FROM logs-* | | COMPLETION x", EMPTY),
    ("FROM logs-* |", EMPTY),
    # -- characters -------------------------------------------------------------------------------------
    ("FROM logs-* \uff5c COMPLETION x", LOOKALIKE),
    ("FROM logs-* | WHERE a == 1 \uff0f* x *\uff0f | COMPLETION x", LOOKALIKE),
    ("FROM logs-* | \u0421OMPLETION x", NAME),
    ("FROM logs-* | \u200bCOMPLETION x", NAME),
    ("FROM logs-*\x00 | COMPLETION x", CONTROL),
    ("FROM logs-* | COMPLETION\x0cx", CONTROL),
]

CONSOLE_REFUSED: list[tuple[str, str]] = [
    ('POST _query {"query": "FROM logs-* | COMPLETION x"}', sends("completion")),
    ('POST /_query {"query": "FROM logs-* | WHERE message == \\"/*\\" | COMPLETION x | WHERE m != \\"*/\\""}', sends("completion")),
    ('POST _query {"query": "FROM logs-* | WHERE message == \\"\\"\\"//\\"\\"\\" | COMPLETION x"}', sends("completion")),
    ('POST _query {"query": "FROM logs-* | \\u0043OMPLETION x"}', sends("completion")),
    ('POST _query {"query": "FROM logs-* | EVAL e = TEXT_EMBEDDING(message, \\"ep\\")"}', calls("text_embedding")),
    ('POST _query {"query": "SET a=\\"b\\"; FROM logs-*"}', SEMICOLON),
    ('POST _query {"query": "FROM logs-* | LIMIT 1", "query": "FROM logs-* | COMPLETION x"}', "repeats the key"),
    ('POST _query {"query": "FROM logs-*", "filter": {"match_all": {}, "match_all": {"x": 1}}}', "repeats the key"),
    ('POST _query {"query": "FROM logs-*", "params": [{"fn": "text_embedding"}]}', "_query body keys not allowed"),
    ('POST _query {"query": "FROM logs-*", "tables": {}}', "_query body keys not allowed"),
    ('POST _query {"query": "FROM logs-* | LIMIT 1", "QUERY": "x"}', "_query body keys not allowed"),
    ('POST _query {"query": ["FROM logs-* | COMPLETION x"]}', "needs an ES|QL query string"),
    ('POST _query {"query": "FROM logs-*", "filter": {"script": {"script": "x"}}}', "scripts are refused"),
    ('POST _query ["FROM logs-*"]', "a _query body must be a JSON object"),
    ("POST _query", "POST _query needs a body"),
    ('POST _query/async {"query": "FROM logs-*"}', "is not a read endpoint"),
    ('POST /_query/ {"query": "FROM logs-*"}', "is not a read endpoint"),
    ('PUT _query {"query": "FROM logs-*"}', "is not a read endpoint"),
    ('POST _query%2F..%2F_inference {"query": "FROM logs-*"}', "encoded or relative"),
    ('POST /_inference/completion/llm {"input": "secrets"}', "is not a read endpoint"),
    ('POST _query?wait_for_completion_timeout=1s {"query": "FROM logs-*"}', "URL parameters not allowed"),
]


@pytest.mark.parametrize(("query", "reason"), REFUSED)
def test_refused_corpus(query: str, reason: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        guard.check_esql(query)
    assert reason in str(refused.value)


@pytest.mark.parametrize(("request_text", "reason"), CONSOLE_REFUSED)
def test_refused_query_requests(request_text: str, reason: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        guard.parse_console(request_text)
    assert reason in str(refused.value)


def test_the_refused_corpus_is_large_and_distinct() -> None:
    queries = [query for query, _ in REFUSED + CONSOLE_REFUSED]
    assert len(set(queries)) == len(queries) >= 100


# Every refused command after every read command, behind every string or comment that once hid it.
HIDERS = [
    "FROM logs-* | {c} x",
    'FROM logs-* | WHERE m == "/*" | {c} x | WHERE m == "*/"',
    'FROM logs-* | WHERE m == """//""" | {c} x',
    "FROM logs-* /* c */ | {c} x",
    "FROM logs-* | WHERE a == 1 // c\n| {c} x",
    "FROM logs-* | WHERE host.name IN (FROM hosts | {c} x)",
    "FROM logs-* | {C} x",
]
MATRIX = [(hider.format(c=command, C=command.upper()), command) for hider in HIDERS for command in ESQL_REFUSED]


@pytest.mark.parametrize(("query", "command"), MATRIX)
def test_every_refused_command_behind_every_hiding_place(query: str, command: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        guard.check_esql(query)
    assert sends(command) in str(refused.value)


# -- allowed: what siemcrew sends, what analysts write, what the docs show --------------------------
ANALYST = [
    'FROM logs-* | WHERE host.name == "a|b" | LIMIT 5',
    "from logs-* metadata _id | where x like \"*\" | stats c = count(*) by host.name | sort c desc",
    'FROM logs-* | WHERE process.command_line == """x | COMPLETION y"""',
    'FROM logs-* | WHERE message == "/*" | WHERE message != "*/" | LIMIT 10',
    "FROM logs-* // comment\n| WHERE a == 1 /* block */ | LIMIT 10",
    'FROM logs-* | WHERE message == """// not a comment""" | KEEP message',
    'FROM logs-* | EVAL lower = TO_LOWER(message) | WHERE lower LIKE "*completion*"',
    'FROM logs-* | WHERE message == "COMPLETION | RERANK" | LIMIT 1',
    "FROM logs-* | EVAL text_embedding = 1 | KEEP text_embedding",
    "FROM logs-* | STATS c = COUNT(*) BY a, b | SORT c DESC | LIMIT 10",
    "FROM logs-* | KEEP `@timestamp`, `host.name`, `process.command_line`",
    "FROM logs-* | ENRICH hosts-policy ON host.name WITH owner",
    "FROM logs-* | LOOKUP JOIN hosts-lookup ON host.name",
    'FROM logs-* | DISSECT message "%{a} - %{b}"',
    'FROM logs-* | GROK message "%{IP:ip} %{WORD:verb}"',
    "FROM logs-* | MV_EXPAND tags | LIMIT 5",
    "FROM logs-* | RENAME host.name AS host | DROP message",
    'ROW a = 1, b = "two" | EVAL c = a + 1',
    "SHOW INFO",
    "TS metrics-* | STATS max(rate(requests)) BY host",
    "FROM logs-* | WHERE @timestamp >= NOW() - 1 hour | STATS c = COUNT(*) BY bucket = BUCKET(@timestamp, 5 minutes)",
    "FROM logs-* | SAMPLE 0.05 | LIMIT 10",
    "FROM logs-* | INLINESTATS c = COUNT(*) BY host.name",
    'FROM logs-* | WHERE message RLIKE ".*(mimikatz|sekurlsa).*"',
    'FROM "logs-*" | LIMIT 1',
    "FROM logs-*,winlogbeat-*,-.alerts-* | LIMIT 1",
    'FROM logs-* | WHERE user.name == "o\'neil" AND host.name == "ｆｕｌｌ｜ｗｉｄｔｈ"',
    'FROM logs-* | WHERE process.command_line LIKE "*I`EX*"',
    'FROM logs-* | WHERE message == "tab\\tand \\"escapes\\" and \\\\"',
    "FROM logs-* | CHANGE_POINT count ON @timestamp",
    "FROM logs-*, (FROM other-* | WHERE a == 1) | LIMIT 1",
    "FROM logs-* | WHERE host.name IN (FROM hosts | KEEP host.name)",
]
CONSOLE_ALLOWED = [
    'GET logs-*/_search?size=5 {"query": {"match_all": {}}}',
    'POST /_query {"query": "FROM x | LIMIT 1"}',
    'POST _query {"query": "FROM logs-* | LIMIT 1", "filter": {"range": {"@timestamp": {"gte": "now-1h"}}}}',
    'POST _query?format=txt {"query": "FROM logs-* | LIMIT 1"}',
    'POST _query {"query": "FROM logs-* | LIMIT 1", "columnar": true, "locale": "en-US"}',
    'POST _query {"query": "FROM logs-* | WHERE message == \\"/*\\" | LIMIT 1"}',
]


def recorded(dialect: str) -> list[str]:
    """Queries the connector sent while the Elastic connector, fields and parity tests ran (recorded once
    by wrapping the guard; `seen_in` names the test)."""
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    return [row["query"] for row in rows if row["dialect"] == dialect]


# Values as attackers write them into logs (ES|QL strings cannot hold raw line breaks: not here).
VALUES = ['a"b', "C:\\Windows\\x.exe", "x | COMPLETION y", "/* */", "//", '"""', "I`EX", "`x`", "?p", "o'neil",
          "ｆｕｌｌ｜ｗｉｄｔｈ", "*", ";"]
QUERIES = [
    EventQuery(filters=[Filter(field="host.name", value="WS-01"), Filter(field="process.command_line", op="contains", value=v)])
    for v in VALUES
] + [
    EventQuery(filters=[Filter(field="process.executable", op="endswith", value="\\cmd.exe"),
                        Filter(field="process.parent.executable", op="startswith", value="C:\\Windows"),
                        Filter(field="user.name", op="exists", negate=True), Filter(field="process.pid", op="gte", value=4)],
               any_of=[[Filter(field="source.ip", value="10.0.0.5"), Filter(field="destination.ip", value="10.0.0.9")]],
               categories=["process"], order="desc", limit=5),
    EventQuery(filters=[Filter(field="event.code", op="in", value=[4624, 4625])], group_by=["host.name", "user.name"], limit=10),
]
RULE = """
title: Whoami with odd arguments
logsource: {category: process_creation, product: windows}
detection:
  selection:
    Image|endswith: '\\\\whoami.exe'
    CommandLine|contains|all: ['/all', '|', '`x`', '"q"', '/*']
  filter: {User|startswith: 'NT AUTHORITY'}
  condition: selection and not filter
"""


def generated() -> list[str]:
    """ES|QL the product writes: EventQuery with and without the data profile, and Sigma rules."""
    profile = Profile.load()
    index = events_expression("logs-*,winlogbeat-*", "siemcrew-cases")
    out = [esql_for(query, index) for query in QUERIES]
    out += [esql_for(query, index, profile, lambda name: True, ["@timestamp", "host.name", "process.command_line"])
            for query in QUERIES]
    out += [conversion.text for conversion in sigma.convert_rules(RULE, "esql", index, None, profile)]
    return out


@pytest.mark.parametrize("query", ANALYST + recorded("esql") + generated())
def test_allowed_corpus(query: str) -> None:
    assert guard.check_esql(query)


@pytest.mark.parametrize("request_text", CONSOLE_ALLOWED + recorded("console"))
def test_allowed_query_requests(request_text: str) -> None:
    method, path, _, _ = guard.parse_console(request_text)
    assert method in ("GET", "POST") and path.startswith("/")


def test_the_allowed_corpus_covers_what_the_product_sends() -> None:
    assert len(recorded("esql")) >= 10 and len(set(generated())) >= 25


def test_commands_come_back_without_comments_for_the_limit_check() -> None:
    assert guard.check_esql("FROM logs-* // c\n| WHERE a == \"x|y\" /* z */ | LIMIT 5 // t") == [
        "FROM logs-*", 'WHERE a == "x|y"', "LIMIT 5"]
