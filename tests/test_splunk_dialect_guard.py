"""SplDialect (EventQuery -> SPL) with the `splunk_cim` profile, the CIM mapping both ways, and the
read-only SPL guard. The default profile (Windows add-ons) is tested in test_splunk_profile.py."""

from __future__ import annotations

import pytest

from siemcrew.connectors.base import EventQuery, Filter, QueryRefused
from siemcrew.connectors.splunk.dialect import SplDialect
from siemcrew.connectors.splunk.guard import SplGuard
from siemcrew.connectors.splunk.mapping import CimMapping, default_mapping
from siemcrew.connectors.splunk.profile import load_profile

CIM = load_profile("splunk_cim")


def spl(query: EventQuery, scope: str = "index=*") -> str:
    text = SplDialect(CIM, scope=scope).translate(query)
    return text.split(" | fields ", 1)[0]


def test_ecs_fields_are_searched_under_their_cim_names() -> None:
    text = spl(EventQuery(filters=[Filter(field="host.name", value="wks-7"), Filter(field="process.command_line", op="contains", value="whoami")]))
    assert text == 'search index=* dest="wks-7" process="*whoami*" | sort 0 +_time | head 200'


def test_every_operator_has_spl_syntax() -> None:
    query = EventQuery(
        filters=[
            Filter(field="event.code", op="in", value=[4688, 1]),
            Filter(field="process.executable", op="endswith", value="\\cmd.exe"),
            Filter(field="process.parent.executable", op="startswith", value="C:\\Windows"),
            Filter(field="user.name", op="exists", negate=True),
            Filter(field="process.pid", op="gte", value=4),
            Filter(field="process.pid", op="lte", value=9),
        ],
        any_of=[[Filter(field="source.ip", value="10.0.0.5"), Filter(field="destination.ip", value="10.0.0.9")]],
        categories=["process"],
        order="desc",
        limit=5,
    )
    assert spl(query, scope="") == (
        'search EventCode IN (4688, 1) process_path="*\\\\cmd.exe" parent_process_path="C:\\\\Windows*" NOT (user=*) '
        'process_id>=4 process_id<=9 (src="10.0.0.5" OR dest_ip="10.0.0.9") tag IN ("process") | sort 0 -_time | head 5'
    )


def test_quotes_backslashes_and_literal_asterisks_are_escaped() -> None:
    text = spl(EventQuery(filters=[Filter(field="process.command_line", value='a "b" \\c *d')]))
    assert 'process="a \\"b\\" \\\\c \\*d"' in text
    contains = spl(EventQuery(filters=[Filter(field="file.path", op="contains", value="x*y")]))
    assert 'file_path="*x\\*y*"' in contains


def test_group_by_counts_per_group() -> None:
    text = spl(EventQuery(filters=[Filter(field="event.code", value=4624)], group_by=["host.name", "user.name"], limit=10))
    assert text == 'search index=* EventCode=4624 | fillnull value="-" dest user | stats count by dest user | head 50000'


def test_event_searches_name_the_fields_they_need() -> None:
    text = SplDialect(CIM, scope="index=*").translate(EventQuery(filters=[Filter(field="host.name", value="x")]))
    named = text.split(" | fields ", 1)[1].split(", ")
    assert {"_time", "host", "source", "dest", "process", "process_path", "parent_process_path", "src"} <= set(named)


def test_unmapped_ecs_fields_pass_through() -> None:
    text = spl(EventQuery(filters=[Filter(field="winlog.event_data.LogonType", value="3")]))
    assert 'winlog.event_data.LogonType="3"' in text


def test_rows_map_back_to_ecs_first_alias_wins_and_bookkeeping_is_dropped() -> None:
    row = {"_time": "2024-05-01 10:00:00.000 UTC", "dest": "dc01", "host": "forwarder-1", "Image": "C:\\x.exe",
           "user": ["alice", "svc"], "_cd": "12:34", "punct": "--", "custom_field": "kept"}
    ecs = default_mapping().to_ecs(row)
    assert ecs["@timestamp"] == "2024-05-01T10:00:00.000Z"
    assert ecs["host.name"] == "dc01" and ecs["host"] == "forwarder-1"
    assert ecs["process.executable"] == "C:\\x.exe"
    assert ecs["user.name"] == ["alice", "svc"]
    assert ecs["custom_field"] == "kept"
    assert "_cd" not in ecs and "punct" not in ecs and "dest" not in ecs


def test_a_row_that_already_has_the_ecs_name_keeps_it() -> None:
    mapping = CimMapping({"host.name": ["dest"]})
    assert mapping.to_ecs({"host.name": "native", "dest": "cim"}) == {"host.name": "native", "dest": "cim"}


@pytest.mark.parametrize(
    "query",
    [
        "index=main user=bob | stats count by host | sort 10 -count",
        "search `notable` | search status IN (\"0\", \"1\") | head 5",
        "| makeresults count=1",
        "| tstats count from datamodel=Endpoint.Processes by Processes.dest",
        'index=main "| outputlookup in quotes is data" | head 1',
        "index=main (a=1 OR b=2) | join dest [search index=cmdb | fields dest owner] | table dest owner",
    ],
)
def test_read_only_searches_pass(query: str) -> None:
    SplGuard().check(query)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("index=main | outputlookup hosts.csv", "`outputlookup` writes a lookup"),
        ("index=main | collect index=summary", "`collect` writes events into an index"),
        ("index=main | head 1 | sendemail to=x@example.com", "`sendemail` sends email"),
        ("| rest /services/authentication/users", "`rest` calls the REST API"),
        ("index=main | script python evil.py", "`script` runs a script"),
        ("index=main | DELETE", "`delete` deletes indexed events"),
        ("index=main | map search=\"search index=$x$\"", "`map` runs searches built from result rows"),
        ("index=main (a=1 OR [search index=b | outputlookup x.csv]) | head 1", "`outputlookup` writes a lookup"),
        ("index=main | frobnicate", "not on the read-only command allowlist"),
        ("index=main | `exfiltrate`", "macro `exfiltrate` is not allowed"),
        ('index=main "unterminated', "unterminated quoted string"),
        ("index=main | ", "empty command"),
        ("   ", "empty"),
    ],
)
def test_writing_sending_or_unknown_searches_are_refused_with_the_reason(query: str, reason: str) -> None:
    with pytest.raises(QueryRefused) as refused:
        SplGuard().check(query)
    assert reason in str(refused.value)


def test_allowed_macros_are_configurable() -> None:
    with pytest.raises(QueryRefused):
        SplGuard(allowed_macros=frozenset()).check("search `notable`")
    SplGuard(allowed_macros=frozenset({"notable", "cim_Endpoint_indexes"})).check("search `cim_Endpoint_indexes` | head 1")

def test_macros_may_stand_as_commands_when_allowed() -> None:
    SplGuard(allowed_macros=frozenset({"drop_dm_object_name"})).check("| tstats count from datamodel=Endpoint.Processes by Processes.dest | `drop_dm_object_name(Processes)`")
    with pytest.raises(QueryRefused, match="macro `drop_dm_object_name`"):
        SplGuard().check("| tstats count from datamodel=Endpoint.Processes by Processes.dest | `drop_dm_object_name(Processes)`")
