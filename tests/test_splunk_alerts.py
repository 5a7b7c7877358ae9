"""Alerts in (ES notables, saved searches, the alert-action hand-off) and verdicts out (notable_update, HEC)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from emulators.splunkd import NOW, T0, SavedSearch, SplunkdEmulator, connector_settings, sample_events, sample_notables
from siemcrew.connectors.base import AlertUpdate, ConnectorError
from siemcrew.connectors.splunk.alerts import alert_from_notable
from siemcrew.connectors.splunk.checkpoint import AlertCheckpoint, Stamped
from siemcrew.connectors.splunk.connector import SplunkConnector
from siemcrew.connectors.splunk.intake import SplunkActionHandoff, alerts_from_handoff
from siemcrew.crew.models import ActionProposal, ActionResult, Alert, Case, Evidence, Finding, PolicyDecision

HEC_TOKEN = "test-hec-token"
SAVED = "SOC - wks-7 activity"


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLUNK_TOKEN", "test-bearer-token")
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", HEC_TOKEN)


@pytest.fixture
def splunkd() -> Iterator[SplunkdEmulator]:
    saved = [SavedSearch(SAVED, "index=main host=wks-7 | table _time host dest user process_path src dest_ip")]
    with SplunkdEmulator(sample_events(), sample_notables(), saved_searches=saved, now=NOW) as emulator:
        yield emulator


def connect(emulator: SplunkdEmulator, **overrides: Any) -> SplunkConnector:
    return SplunkConnector.from_settings(connector_settings(emulator, **overrides))


def drain(connector: SplunkConnector, limit: int, checkpoint: str | None = None) -> tuple[list[list[str]], str | None]:
    batches: list[list[str]] = []
    for _ in range(10):
        batch = connector.fetch_alerts(checkpoint, limit=limit)
        checkpoint = batch.checkpoint
        if not batch.alerts:
            break
        batches.append([a.id for a in batch.alerts])
    return batches, checkpoint


# -- notables in ---------------------------------------------------------------------------------
def test_notables_come_in_time_order_and_alerts_sharing_a_timestamp_are_not_skipped(splunkd: SplunkdEmulator) -> None:
    batches, _ = drain(connect(splunkd), limit=2)
    ids = [alert_id for batch in batches for alert_id in batch]
    open_notables = [n["event_id"] for n in sample_notables() if n["status"] in ("0", "1")]
    assert sorted(ids) == sorted(open_notables) and len(ids) == len(set(ids))
    assert [len(b) for b in batches] == [2, 2, 1]
    query = splunkd.calls("search/v2/jobs", "POST")[0].params["search"][0]
    assert query.startswith('search `notable` | search status IN ("0", "1")')


def test_a_drained_checkpoint_returns_nothing_twice(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd)
    _, checkpoint = drain(connector, limit=10)
    again = connector.fetch_alerts(checkpoint, limit=10)
    assert again.alerts == [] and again.checkpoint == checkpoint


def test_late_notables_within_the_overlap_are_picked_up(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd, alerts={"overlap_s": 300})
    _, checkpoint = drain(connector, limit=10)
    late = {**sample_notables()[0], "_time": T0 + 100, "event_id": "LATE@@notable@@1", "annotations.mitre_attack": "T1110"}
    splunkd.load([], [late])
    batch = connector.fetch_alerts(checkpoint, limit=10)
    assert [a.id for a in batch.alerts] == ["LATE@@notable@@1"]


def test_a_notable_becomes_a_normalized_alert(splunkd: SplunkdEmulator) -> None:
    alert = connect(splunkd).fetch_alerts(None, limit=1).alerts[0]
    notable = sample_notables()[0]
    assert alert.id == notable["event_id"] and alert.source == "splunk"
    assert alert.rule_name == "Excessive Failed Logins" and alert.rule_id == notable["rule_id"]
    assert alert.severity == "high" and alert.risk_score == 80.0
    assert alert.timestamp.timestamp() == T0 + 7
    assert alert.entities.hosts == ["dc01"] and alert.entities.users == ["alice"] and alert.entities.ips == ["10.0.0.5"]
    assert alert.drilldown == "index=auth action=failure src=10.0.0.5"
    assert alert.techniques == ["T1110", "T1110.001"]
    assert alert.raw["event_id"] == notable["event_id"] and alert.raw["status_label"] == "New"


def test_a_notable_keeps_the_time_of_its_triggering_event() -> None:
    """ES stamps a notable when its search ran (`_time`); `orig_time` is when the triggering event happened."""
    alert = alert_from_notable({**sample_notables()[0], "orig_time": T0 - 45})
    assert alert.timestamp.timestamp() == T0 + 7 and alert.first_seen.timestamp() == T0 - 45
    assert alert.last_seen == alert.first_seen  # one event: the search's run time bounds nothing
    assert alert_from_notable(sample_notables()[0]).first_seen is None


def test_an_aggregating_notable_spans_its_first_and_last_events() -> None:
    """security_content searches name their span in firstTime/lastTime (epoch or ctime text); the alert's
    own events are looked for in that span, not up to when the correlation search ran."""
    alert = alert_from_notable({**sample_notables()[0], "orig_time": T0 - 45,
                                "firstTime": "2020-09-04T07:09:12", "lastTime": str(T0 - 30)})
    assert alert.first_seen.isoformat() == "2020-09-04T07:09:12+00:00"
    assert alert.last_seen.timestamp() == T0 - 30 and alert.timestamp.timestamp() == T0 + 7


def test_a_transient_server_error_on_the_alert_fetch_is_retried(splunkd: SplunkdEmulator) -> None:
    """One HTTP 500 creating the notable search (a read) does not fail the run: it is sent again."""
    expected = [a.id for a in connect(splunkd).fetch_alerts(None, limit=10).alerts]
    splunkd.fail_next("status", 1, path="search/v2/jobs", code=500)
    assert [a.id for a in connect(splunkd).fetch_alerts(None, limit=10).alerts] == expected and expected
    assert [f.remaining for f in splunkd.faults] == [0]
    assert 500 in {r.status for r in splunkd.requests}


def test_a_malformed_checkpoint_is_a_clear_error(splunkd: SplunkdEmulator) -> None:
    with pytest.raises(ConnectorError, match="checkpoint"):
        connect(splunkd).fetch_alerts("not-json", limit=1)


def test_checkpoint_orders_by_time_then_id_and_forgets_ids_outside_the_overlap() -> None:
    items = [Stamped("b", 10.0, "b"), Stamped("a", 10.0, "a"), Stamped("c", 5.0, "c"), Stamped("d", 20.0, "d")]
    taken, after = AlertCheckpoint().advance(items, 3, overlap_s=5)
    assert taken == ["c", "a", "b"] and after.time == 10.0 and set(after.seen) == {"a", "b", "c"}
    taken, after = AlertCheckpoint.decode(after.encode()).advance(items, 3, overlap_s=5)
    assert taken == ["d"] and after.seen == {"d": 20.0}


# -- saved search in ------------------------------------------------------------------------------
def test_saved_search_rows_become_alerts_with_stable_ids(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd, alerts={"source": "saved_search", "saved_search": SAVED})
    first = connector.fetch_alerts(None, limit=10)
    second = connector.fetch_alerts(None, limit=10)
    assert [a.id for a in first.alerts] == [a.id for a in second.alerts] and len(first.alerts) == 3
    assert all(a.rule_name == SAVED and a.entities.hosts == ["wks-7"] for a in first.alerts)
    assert connector.fetch_alerts(first.checkpoint, limit=10).alerts == []
    dispatches = splunkd.calls("/dispatch", "POST")
    assert dispatches and dispatches[0].params["dispatch.earliest_time"] == ["0"]


def test_an_unknown_saved_search_is_a_clear_error(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd, alerts={"source": "saved_search", "saved_search": "nope"})
    with pytest.raises(ConnectorError, match="saved search 'nope' not found"):
        connector.fetch_alerts(None)


# -- verdicts out -------------------------------------------------------------------------------
def notable_alert(splunkd: SplunkdEmulator) -> Alert:
    return connect(splunkd).fetch_alerts(None, limit=1).alerts[0]


@pytest.mark.parametrize(
    ("status", "code", "urgency"),
    [("closed", "5", None), ("in_progress", "2", None), ("acknowledged", "2", None), ("escalated", "2", "high")],
)
def test_update_alert_maps_status_and_writes_the_verdict_comment(
    splunkd: SplunkdEmulator, status: str, code: str, urgency: str | None
) -> None:
    alert = notable_alert(splunkd)
    update = AlertUpdate(status=status, verdict="benign", comment="Closed by siemcrew", summary="Backup agent noise",
                         report_link="https://siemcrew.example.com/cases/c1")
    connect(splunkd).update_alert(alert, update)
    sent = splunkd.notable_updates[-1]
    assert sent["ruleUIDs"] == [alert.id] and sent["status"] == code and sent.get("urgency") == urgency
    assert sent["comment"].splitlines() == ["siemcrew verdict: benign", "Backup agent noise", "Report: https://siemcrew.example.com/cases/c1", "Closed by siemcrew"]
    review = splunkd.review[alert.id]
    assert review["status"] == code


def test_a_closed_notable_is_no_longer_fetched(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd)
    alert = notable_alert(splunkd)
    connector.update_alert(alert, AlertUpdate(status="closed", verdict="benign", comment="x", owner="admin"))
    assert splunkd.review[alert.id]["owner"] == "admin"
    assert alert.id not in [a.id for a in connector.fetch_alerts(None, limit=10).alerts]


def test_the_resolved_status_can_be_chosen_for_closing(splunkd: SplunkdEmulator) -> None:
    connect(splunkd, alerts={"closed_status": 4}).update_alert(notable_alert(splunkd), AlertUpdate(status="closed", verdict="benign", comment="x"))
    assert splunkd.notable_updates[-1]["status"] == "4"


def test_notable_update_errors_are_reported(splunkd: SplunkdEmulator) -> None:
    with pytest.raises(ConnectorError, match="Invalid owner value"):
        connect(splunkd).update_alert(notable_alert(splunkd), AlertUpdate(status="closed", verdict="benign", comment="x", owner="mallory"))


def test_notable_update_is_retried_only_when_splunk_did_not_apply_it(splunkd: SplunkdEmulator) -> None:
    connector = connect(splunkd)
    alert = notable_alert(splunkd)
    splunkd.fail_next("status", 2, code=503, path="notable_update")
    connector.update_alert(alert, AlertUpdate(status="in_progress", verdict="suspicious", comment="busy then ok"))
    assert len(splunkd.notable_updates) == 1 and len(splunkd.calls("notable_update")) == 3
    splunkd.fail_next("drop", 1, path="notable_update")
    with pytest.raises(ConnectorError):
        connector.update_alert(alert, AlertUpdate(status="in_progress", verdict="suspicious", comment="lost answer"))
    assert len(splunkd.calls("notable_update")) == 4, "a write whose outcome is unknown must not be repeated"


def test_alerts_that_are_not_notables_send_no_update(splunkd: SplunkdEmulator) -> None:
    handoff = SplunkActionHandoff(sid="s1", search_name="x", rows=[{"dest": "wks-7"}])
    connect(splunkd).update_alert(alerts_from_handoff(handoff)[0], AlertUpdate(status="closed", verdict="benign", comment="x"))
    assert not splunkd.calls("notable_update")


def make_case(alert: Alert) -> Case:
    evidence = Evidence(kind="process_events", connector="splunk", language="spl", query="search index=main dest=dc01",
                        count=2, sample=[{"process.command_line": "SECRET-LOOKING SAMPLE"}], status="ok").seal()
    proposal = ActionProposal(action="disable_user", target="alice", reason="brute force", evidence_ids=[evidence.id])
    return Case(
        id="case-1", status="closed", verdict="malicious", confidence="high", summary="Brute force from 10.0.0.5",
        alerts=[alert], evidence=[evidence],
        findings=[Finding(agent="hunter", kind="malicious", confidence="high", statement="42 failures", evidence_ids=[evidence.id])],
        proposals=[proposal],
        decisions=[PolicyDecision(action="disable_user", target="alice", args_sha256=proposal.args_sha256, outcome="approval_required")],
        results=[ActionResult(key=proposal.key("case-1"), action="disable_user", target="alice", state="dry_run", executor="dry-run")],
    )


def test_publish_case_sends_one_hec_event_without_samples(splunkd: SplunkdEmulator) -> None:
    case = make_case(notable_alert(splunkd))
    connect(splunkd, hec={"index": "siemcrew"}).publish_case(case)
    [record] = splunkd.hec_events
    assert record["sourcetype"] == "siemcrew:case" and record["index"] == "siemcrew" and record["host"] == "siemcrew-test"
    event = record["event"]
    assert event["case_id"] == "case-1" and event["verdict"] == "malicious" and event["summary"] == "Brute force from 10.0.0.5"
    assert event["evidence"] == [{"id": case.evidence[0].id, "kind": "process_events", "connector": "splunk", "language": "spl",
                                  "query": "search index=main dest=dc01", "count": 2, "status": "ok", "entity": None, "truncated": False}]
    assert event["findings"][0]["evidence_ids"] == [case.evidence[0].id]
    assert event["actions"]["proposals"][0]["action"] == "disable_user"
    assert event["actions"]["results"][0]["state"] == "dry_run"
    assert "SECRET-LOOKING SAMPLE" not in str(record)
    assert record["fields"] == {"case_id": "case-1", "verdict": "malicious"}


def test_hec_busy_is_retried_and_indexed_once(splunkd: SplunkdEmulator) -> None:
    splunkd.fail_next("hec_busy", 2)
    connect(splunkd).publish_case(make_case(notable_alert(splunkd)))
    assert len(splunkd.hec_events) == 1 and len(splunkd.calls("collector")) == 3


def test_a_rejected_hec_token_names_the_variable_not_the_value(splunkd: SplunkdEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPLUNK_HEC_TOKEN", "wrong-hec-token")
    with pytest.raises(ConnectorError, match="SPLUNK_HEC_TOKEN") as failure:
        connect(splunkd).publish_case(make_case(notable_alert(splunkd)))
    assert "wrong-hec-token" not in str(failure.value) and "code 4" in str(failure.value)
    assert len(splunkd.calls("collector")) == 1


def test_an_incorrect_index_is_reported_and_not_retried() -> None:
    with SplunkdEmulator(sample_events(), sample_notables(), hec_indexes={"main"}, now=NOW) as splunkd:
        connector = connect(splunkd, hec={"index": "nope"})
        with pytest.raises(ConnectorError, match="Incorrect index"):
            connector.publish_case(make_case(connector.fetch_alerts(None, limit=1).alerts[0]))
        assert len(splunkd.calls("collector")) == 1 and not splunkd.hec_events


def test_without_hec_the_case_goes_to_receivers_simple(splunkd: SplunkdEmulator) -> None:
    connect(splunkd, hec={"url": None}).publish_case(make_case(notable_alert(splunkd)))
    [received] = splunkd.receiver_events
    assert received["params"]["sourcetype"] == "siemcrew:case"
    assert '"case_id":"case-1"' in received["body"]


# -- the alert-action hand-off --------------------------------------------------------------------
def handoff_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "sid": "scheduler__admin__search__RMD5e7649a8a42798738_at_1714557600_2",
        "search_name": "SOC - Excessive Failed Logins",
        "app": "search", "owner": "admin",
        "results_link": "http://sh01.example.com:8000/app/search/@go?sid=scheduler__admin__search__RMD5e7649a8a42798738_at_1714557600_2",
        "server_uri": "https://127.0.0.1:8089",
        "configuration": {"serve_url": "https://siemcrew.example.com:8787", "max_rows": "100"},
        "rows": [
            {"_time": "1714557600", "src": "10.0.0.5", "dest": "dc01", "user": ["alice", "svc_backup"], "count": "42"},
            {"_time": "1714557660", "src": "10.0.0.9", "dest": "dc02", "user": "bob", "count": "17"},
            {"dest": "wks-7", "process_path": "C:\\Windows\\System32\\whoami.exe", "process": "whoami /all"},
        ],
    }
    body.update(overrides)
    return body


def test_handoff_rows_become_alerts_keyed_on_the_sid() -> None:
    body = SplunkActionHandoff.model_validate(handoff_body())
    alerts = alerts_from_handoff(body)
    assert [a.id for a in alerts] == [f"splunk:{body.sid}:{i}" for i in range(3)]
    assert [a.id for a in alerts_from_handoff(SplunkActionHandoff.model_validate(handoff_body()))] == [a.id for a in alerts]
    first = alerts[0]
    assert first.rule_name == "SOC - Excessive Failed Logins" and first.source == "splunk"
    assert first.timestamp.timestamp() == 1714557600 and first.link == body.results_link
    assert first.entities.users == ["alice", "svc_backup"] and first.entities.ips == ["10.0.0.5"] and first.entities.hosts == ["dc01"]
    assert alerts[2].entities.processes == ["C:\\Windows\\System32\\whoami.exe"]
    assert alerts[2].process is not None and alerts[2].process.command_line == "whoami /all"
    assert abs(alerts[2].timestamp.timestamp() - NOW) > 0, "a row without _time is stamped with the intake time"


@pytest.mark.parametrize(
    "bad",
    [
        {"session_key": "onrmI0ToM9zNp5BLDl_EXAMPLE"},
        {"configuration": {"serve_url": "x", "token": "leak"}},
        {"sid": ""},
        {"sid": " padded "},
        {"rows": "not a list"},
        {"rows": [{"user": {"nested": "object"}}]},
    ],
)
def test_bad_handoffs_are_rejected(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SplunkActionHandoff.model_validate(handoff_body(**bad))
