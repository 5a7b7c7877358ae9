"""The analyst's view, piece by piece: rison, SIEM deep links, sessions and sign-in rules, the write-back's
case link, the entity graph's lateral movement and the timeline's order."""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from siemcrew.config.settings import ServeSettings, Settings, SettingsError, serve_token_clashes
from siemcrew.crew.models import Alert, Case, Entities, Evidence, TimeRange
from siemcrew.web import rison
from siemcrew.web.deeplinks import LinkTargets, links_for
from siemcrew.web.session import People, Person, Sessions, load_key

T0 = datetime(2026, 11, 19, 14, 0, tzinfo=timezone.utc)
WINDOW = TimeRange(start=T0, end=datetime(2026, 11, 19, 15, 0, tzinfo=timezone.utc))


def _evidence(connector: str, language: str, query: str, **extra: object) -> Evidence:
    return Evidence(kind="host_activity", connector=connector, language=language, query=query, status="ok",
                    time_range=WINDOW, **extra).seal()


# -- rison ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (None, "!n"), (True, "!t"), (False, "!f"), (0, "0"), (-1.5, "-1.5"), (1e21, "1e21"), ("", "''"),
    ("abc", "abc"), ("a b", "'a b'"), ("it's!", "'it!'s!!'"), ("1abc", "'1abc'"), ("-x", "'-x'"),
    ([1, "a", []], "!(1,a,!())"), ({"a": 0, "b c": {"d": "e"}}, "(a:0,'b c':(d:e))"),
    ({"time": {"from": "2026-11-19T14:00:00.000Z"}}, "(time:(from:'2026-11-19T14:00:00.000Z'))"),
])
def test_rison_encodes_as_kibana_reads_it(value: object, expected: str) -> None:
    assert rison.dumps(value) == expected


def test_rison_refuses_what_json_cannot_hold() -> None:
    for bad in (float("nan"), float("inf"), {1, 2}):
        with pytest.raises(ValueError):
            rison.dumps(bad)


# -- deep links ------------------------------------------------------------------------------------
def test_splunk_link_reruns_the_exact_search_over_the_same_window() -> None:
    spl = 'search index=win host="WS-01" "a&b=c #x" | head 10'
    targets = LinkTargets(splunk_web="https://splunk.example.com:8000", splunk_app="SplunkEnterpriseSecuritySuite")
    (link,) = links_for(_evidence("splunk", "spl", spl), targets)
    parts = urlsplit(link.url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "splunk.example.com:8000",
                                                        "/app/SplunkEnterpriseSecuritySuite/search")
    query = parse_qs(parts.query)
    assert query["q"] == [spl] and query["earliest"] == [str(int(WINDOW.start.timestamp()))]
    assert query["latest"] == [str(int(WINDOW.end.timestamp()))]
    # a search without the `search` command gets it, as Splunk Web needs; generating searches keep their pipe
    (bare,) = links_for(_evidence("splunk", "spl", "index=win EventCode=1"), targets)
    assert parse_qs(urlsplit(bare.url).query)["q"] == ["search index=win EventCode=1"]
    (tstats,) = links_for(_evidence("splunk", "spl", "| tstats count where index=win"), targets)
    assert parse_qs(urlsplit(tstats.url).query)["q"] == ["| tstats count where index=win"]


def test_a_sigma_rule_run_as_several_splunk_searches_gets_one_link_each() -> None:
    query = "search index=a EventCode=1 | fields x\nsearch index=a EventCode=4688 | fields x"
    links = links_for(_evidence("splunk", "spl", query), LinkTargets(splunk_web="https://s:8000"))
    assert [parse_qs(urlsplit(l.url).query)["q"][0] for l in links] == query.splitlines()
    assert [l.label for l in links] == ["Open in Splunk (1/2)", "Open in Splunk (2/2)"]


def _kibana_state(url: str) -> tuple[str, str, str]:
    base, _, fragment = url.partition("#/?")
    g, a = fragment.split("&")
    return base, unquote(g.removeprefix("_g=")), unquote(a.removeprefix("_a="))


def test_kibana_link_opens_discover_with_the_dsl_query_and_window() -> None:
    body = {"query": {"bool": {"filter": [{"term": {"host.name": "ws-01"}}]}}, "size": 50}
    targets = LinkTargets(kibana="https://kibana.example.com:5601", kibana_space="soc")
    (link,) = links_for(_evidence("elastic", "dsl", json.dumps(body)), targets)
    base, g, a = _kibana_state(link.url)
    assert base == "https://kibana.example.com:5601/s/soc/app/discover"
    assert g == "(time:(from:'2026-11-19T14:00:00.000Z',to:'2026-11-19T15:00:00.000Z'))"
    assert "query:(bool:(filter:!((term:(host.name:ws-01)))))" in a and "type:custom" in a
    assert "#" not in link.url.partition("#")[2] and " " not in link.url


def test_kibana_link_runs_esql_in_discover_and_says_why_eql_has_none() -> None:
    targets = LinkTargets(kibana="https://kibana.example.com:5601")
    esql = "FROM logs-* | WHERE host.name == \"ws-01\" AND process.name LIKE \"it's\" | LIMIT 10"
    (link,) = links_for(_evidence("elastic", "esql", esql), targets)
    base, _, a = _kibana_state(link.url)
    assert base == "https://kibana.example.com:5601/app/discover"  # the default space has no /s/ prefix
    assert a == "(dataSource:(type:esql),query:(esql:'" + esql.replace("'", "!'") + "'))"
    (eql,) = links_for(_evidence("elastic", "eql", "process where process.name == \"cmd.exe\""), targets)
    assert eql.url is None and "Timelines" in eql.note


def test_evidence_without_a_siem_search_ui_says_so() -> None:
    (local,) = links_for(_evidence("local", "sql", "SELECT 1"), LinkTargets())
    assert local.url is None and "local store" in local.note
    (unset,) = links_for(_evidence("splunk", "spl", "search x"), LinkTargets())
    assert unset.url is None and "splunk.web_url" in unset.note
    (edr,) = links_for(_evidence("crowdstrike", "api", "GET /devices"), LinkTargets(splunk_web="https://s"))
    assert edr.url is None


def test_link_targets_come_from_settings_and_refuse_credentials_in_urls(tmp_path: Path) -> None:
    settings = Settings.load(None, home=str(tmp_path), splunk={"url": "https://splunkd:8089", "web_url": "https://web:8000/"},
                             elastic={"url": "http://es:9200", "kibana_url": "https://kb:5601", "space": "ir"})
    assert LinkTargets.from_settings(settings) == LinkTargets("https://web:8000", "search", "https://kb:5601", "ir")
    with pytest.raises(SettingsError):
        Settings.load(None, home=str(tmp_path), serve={"public_url": "https://user:pw@siemcrew.example.com"})
    from siemcrew.config.splunk import SplunkSettings

    with pytest.raises(ValueError):
        SplunkSettings(web_url="javascript:alert(1)")


# -- sessions --------------------------------------------------------------------------------------
@pytest.fixture
def people(monkeypatch: pytest.MonkeyPatch) -> People:
    monkeypatch.setenv("T_ALICE", "alice-secret-token-1")
    monkeypatch.setenv("T_VIEW", "viewer-secret-token-2")
    monkeypatch.setenv("T_INTAKE", "intake-secret-token-3")
    return People(ServeSettings(approvers={"alice": "T_ALICE"}, viewer_token_env="T_VIEW", token_env="T_INTAKE"))


def test_only_approvers_and_the_viewer_sign_in(people: People) -> None:
    assert people.identify("alice-secret-token-1") == (Person("alice", "approver"), "alice-secret-token-1")
    assert people.identify("viewer-secret-token-2")[0] == Person("viewer", "viewer")
    assert people.identify("intake-secret-token-3") is None  # the SIEM's token signs in as nobody
    assert people.identify("") is None and people.identify("alice-secret-token") is None
    assert "alice-secret-token-1" not in " ".join(people.configured())


def test_a_viewer_token_equal_to_an_approvers_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_ALICE", "same-token-value-xyz")
    monkeypatch.setenv("T_VIEW", "same-token-value-xyz")
    clashes = serve_token_clashes(ServeSettings(approvers={"alice": "T_ALICE"}, viewer_token_env="T_VIEW"))
    assert clashes == ["serve.viewer_token_env and serve.approvers.alice hold the same token"]


def test_session_cookies_are_signed_expire_and_end(people: People, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = Sessions(load_key(tmp_path), people, idle_s=600, max_s=3600)
    session, cookie = sessions.issue(Person("alice", "approver"), "alice-secret-token-1", now=1000.0)
    assert sessions.read(cookie, now=1001.0).person == Person("alice", "approver")
    body, mac = cookie.split(".")
    assert sessions.read(f"{body}.{'0' * len(mac)}", now=1001.0) is None  # tampered
    forged = json.dumps({"n": "alice", "r": "approver", "s": "x", "i": 1000, "t": 1000, "f": "0"})
    assert sessions.read(forged, now=1001.0) is None
    assert sessions.read(cookie, now=1000.0 + 601) is None  # idle
    renewed = sessions.renew(sessions.read(cookie, now=1500.0), now=1500.0)
    assert sessions.read(renewed, now=2000.0) is not None  # activity keeps it alive...
    assert sessions.read(renewed, now=1000.0 + 3601) is None  # ...but never past the maximum
    again, cookie2 = sessions.issue(Person("alice", "approver"), "alice-secret-token-1", now=1000.0)
    assert again.sid != session.sid and again.csrf != session.csrf  # each sign-in is a new session
    assert sessions.csrf_ok(again, again.csrf) and not sessions.csrf_ok(again, session.csrf)
    assert not sessions.csrf_ok(again, None) and not sessions.csrf_ok(again, "")
    sessions.end(again)
    assert sessions.read(cookie2, now=1001.0) is None  # signed out
    monkeypatch.setenv("T_ALICE", "rotated-token-value")
    assert sessions.read(cookie, now=1001.0) is None  # the token changed: the session is over
    assert sessions.signin_ok(*sessions.signin_nonce()) and not sessions.signin_ok("nonce", "forged")


def test_the_session_key_is_private_and_kept(tmp_path: Path) -> None:
    key = load_key(tmp_path)
    path = tmp_path / "web-session.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and load_key(tmp_path) == key and len(key) == 32
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        load_key(tmp_path)


# -- write-back link --------------------------------------------------------------------------------
def test_the_write_back_links_to_the_case_page_under_public_url(tmp_path: Path) -> None:
    from siemcrew.web.urls import case_url, queue_url

    settings = Settings.load(None, home=str(tmp_path), serve={"public_url": "https://soc.example.com/siemcrew/"})
    assert case_url(settings, "case-1a2b") == "https://soc.example.com/siemcrew/cases/case-1a2b"
    assert queue_url(settings) == "https://soc.example.com/siemcrew/"
    plain = Settings.load(None, home=str(tmp_path), serve={"host": "0.0.0.0", "port": 9000})
    assert case_url(plain, "case-1a2b") is None and queue_url(plain) == "http://127.0.0.1:9000/"

    from siemcrew.connectors.base import AlertUpdate
    from siemcrew.connectors.splunk.connector import notable_comment
    from siemcrew.crew.runtime import Runtime

    rt = Runtime(settings)
    case = Case(id="case-1a2b", alerts=[Alert(id="a", rule_name="r", timestamp=T0)])
    link = rt.report_link(case)
    assert link == "https://soc.example.com/siemcrew/cases/case-1a2b"
    assert f"Report: {link}" in notable_comment(AlertUpdate(status="escalated", verdict="malicious", comment="c",
                                                                          report_link=link))
    assert Runtime(plain).report_link(case) == "siemcrew report case-1a2b"


# -- entity graph and timeline ------------------------------------------------------------------------
def _row(**fields: object) -> dict[str, object]:
    return {"@timestamp": "2026-11-19T14:05:00Z", "user.domain": "CONTOSO", **fields}


def test_a_logon_from_another_hosts_address_is_drawn_as_lateral_movement() -> None:
    from siemcrew.web.graph import build_graph

    alert = Alert(id="a", rule_name="r", timestamp=T0, entities=Entities(hosts=["WS-01"], users=["CONTOSO\\eve"]))
    addresses = Evidence(kind="host_addresses", entity_type="host", entity="WS-01", connector="local", language="sql",
                         query="q1", status="ok", sample=[{"source.ip": "10.0.0.5", "count": 3}]).seal()
    remote = Evidence(kind="remote_execution", entity_type="target", entity="SRV-02", connector="local", language="sql",
                      query="q2", status="ok", sample=[
                          _row(**{"host.hostname": "SRV-02", "event.code": "4624", "user.name": "eve",
                                  "source.ip": "10.0.0.5", "logon.type": "3"}),
                          _row(**{"host.hostname": "SRV-02", "event.code": "4624", "user.name": "SRV-02$",
                                  "source.ip": "127.0.0.1"})]).seal()
    others = Evidence(kind="logon_activity", entity_type="host", entity="SRV-02", connector="local", language="sql",
                      query="q3", status="ok", sample=[_row(**{"host.hostname": "SRV-02", "event.code": "4624",
                                                               "user.name": "bystander", "source.ip": "10.9.9.9"})]).seal()
    case = Case(id="c", alerts=[alert], evidence=[addresses, remote, others], affected_hosts=["WS-01", "SRV-02"],
                affected_users=["CONTOSO\\eve"])
    graph = build_graph(case)
    (lateral,) = graph.lateral
    assert (lateral.source, lateral.target, lateral.evidence_id) == ("host:ws-01", "host:srv-02", remote.id)
    names = {n.name for n in graph.nodes}
    assert names == {"WS-01", "SRV-02", "CONTOSO\\eve"}  # no machine account, no bystander, no loopback
    assert all(n.affected for n in graph.nodes)


def test_the_timeline_is_ordered_and_every_row_names_its_evidence() -> None:
    from siemcrew.web.timeline import build_timeline

    late = _row(**{"@timestamp": "2026-11-19T14:09:00Z", "host.hostname": "ws-01.contoso.local", "event.code": "3",
                   "destination.ip": "203.0.113.9", "destination.port": 443, "user.name": "eve"})
    early = _row(**{"@timestamp": "2026-11-19T14:01:00Z", "host.hostname": "WS-01", "event.code": "1",
                    "process.command_line": "cmd.exe /c whoami", "user.name": "eve"})
    first = Evidence(kind="host_activity", connector="local", language="sql", query="a", status="ok", sample=[late, early]).seal()
    again = Evidence(kind="network_connections", connector="local", language="sql", query="b", status="ok", sample=[late]).seal()
    case = Case(id="c", alerts=[Alert(id="a", rule_name="r", timestamp=T0)], evidence=[first, again])
    rows, dropped = build_timeline(case, None)
    assert [(r.event, r.what, r.host, r.who) for r in rows] == [
        ("process start", "cmd.exe /c whoami", "WS-01", "CONTOSO\\eve"),
        ("network connection", "203.0.113.9:443", "WS-01", "CONTOSO\\eve")]
    assert rows[1].evidence_ids == [first.id, again.id] and dropped == 0
    rows, dropped = build_timeline(case, None, limit=1)
    assert len(rows) == 1 and dropped == 1
