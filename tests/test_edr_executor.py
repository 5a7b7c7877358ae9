"""The containment executor against all four vendor emulators: once-only sends, resume, timeouts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from emulators import edr_defender, edr_elastic_defend, edr_falcon, edr_sentinelone
from emulators.edr_common import EmulatorServer, Reply
from emulators.edr_defender import defender_emulator  # noqa: F401
from emulators.edr_elastic_defend import elastic_defend_emulator  # noqa: F401
from emulators.edr_falcon import falcon_emulator  # noqa: F401
from emulators.edr_sentinelone import sentinelone_emulator  # noqa: F401
from emulators.edr_testkit import KITS, SleepRecorder, VendorKit, fast_options, sleeps  # noqa: F401

from siemcrew.config.edr import CrowdStrikeSettings, DefenderSettings, ElasticDefendSettings, SentinelOneSettings
from siemcrew.connectors.base import ConnectorError, EdrConnector, HostRef
from siemcrew.connectors.edr.common import action_marker
from siemcrew.connectors.edr.executor import OBSERVED, UNCONFIRMED, ContainmentExecutor, SqliteIdempotencyStore
from siemcrew.connectors.edr.http import ActionNotSupported
from siemcrew.connectors.edr.registry import BUILDERS

COMMENT = "siemcrew case C-42 action contain approved by alice"


@dataclass
class Rig:
    vendor: str
    emulator: EmulatorServer
    connector: EdrConnector
    host: HostRef
    failure_state: str  # what a vendor-side failure looks like to the executor

    @property
    def kit(self) -> VendorKit:
        return KITS[self.vendor]

    @property
    def send_path(self) -> str:
        return self.kit.send_path

    def contain_requests(self) -> int:
        return len(self.kit.sends(self.emulator))

    def action_ids(self) -> list[str]:
        """The vendor's own ids of its containment actions (only vendors that keep an action list have them)."""
        assert self.kit.lists_actions, f"{self.vendor} keeps no action list"
        return self.kit.applied(self.emulator)


def _connect(vendor: str, emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch,
             **options: Any) -> EdrConnector:
    kit = KITS[vendor]
    for name, value in kit.env.items():
        monkeypatch.setenv(name, value)
    settings = SETTINGS[vendor].model_validate(kit.section(emulator))
    return BUILDERS[vendor](settings, fast_options(sleeps, **options))


def _falcon(emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Rig:
    host = HostRef(vendor="crowdstrike", id="4f1c0e5a9b2d4c6e8f0a1b2c3d4e5f60", hostname="WS-042")
    # Falcon reports no failure: a containment that never lands is a timeout.
    return Rig("crowdstrike", emulator, _connect("crowdstrike", emulator, sleeps, monkeypatch, **options), host,
               "timed_out")


def _defender(emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Rig:
    host = HostRef(vendor="defender", id=edr_defender.MACHINE_ID, hostname="ws-042.contoso.com")
    return Rig("defender", emulator, _connect("defender", emulator, sleeps, monkeypatch, **options), host, "failed")


def _sentinelone(emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Rig:
    host = HostRef(vendor="sentinelone", id=edr_sentinelone.AGENT_ID, hostname="WS-042")
    return Rig("sentinelone", emulator, _connect("sentinelone", emulator, sleeps, monkeypatch, **options), host,
               "timed_out")


def _elastic(emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Rig:
    host = HostRef(vendor="elastic_defend", id=edr_elastic_defend.AGENT_ID, hostname="ws-042")
    return Rig("elastic_defend", emulator, _connect("elastic_defend", emulator, sleeps, monkeypatch, **options), host,
               "failed")


SETTINGS: dict[str, Any] = {"crowdstrike": CrowdStrikeSettings, "defender": DefenderSettings,
                            "sentinelone": SentinelOneSettings, "elastic_defend": ElasticDefendSettings}
RIGS = {
    "crowdstrike": ("falcon_emulator", _falcon),
    "defender": ("defender_emulator", _defender),
    "sentinelone": ("sentinelone_emulator", _sentinelone),
    "elastic_defend": ("elastic_defend_emulator", _elastic),
}


def build_rig(
    vendor: str, request: pytest.FixtureRequest, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch
) -> Rig:
    fixture_name, build = RIGS[vendor]
    return build(request.getfixturevalue(fixture_name), sleeps, monkeypatch)


@pytest.fixture(params=list(RIGS))
def rig(request: pytest.FixtureRequest, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch) -> Rig:
    built = build_rig(request.param, request, sleeps, monkeypatch)
    yield built
    built.connector.close()


@pytest.fixture()
def executor(sleeps: SleepRecorder) -> ContainmentExecutor:
    return ContainmentExecutor(timeout_s=30, poll_interval_s=2, sleep=sleeps, clock=sleeps.clock)


class RecordingStore(SqliteIdempotencyStore):
    """The SQLite store, remembering every put (to check what was recorded when)."""

    def __init__(self, path: str | Path = ":memory:", crash_on_first_put: bool = False) -> None:
        super().__init__(path)
        self.puts: list[dict[str, Any]] = []
        self.crash_on_first_put = crash_on_first_put

    def put(self, key: str, ticket_json: dict[str, Any]) -> None:
        if self.crash_on_first_put:
            self.crash_on_first_put = False
            raise RuntimeError("simulated crash right after the vendor accepted the action")
        self.puts.append(dict(ticket_json))
        super().put(key, ticket_json)


def test_contain_is_sent_once_and_confirmed(rig: Rig, executor: ContainmentExecutor) -> None:
    store = RecordingStore()
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "C-42:isolate_host:ws-042")
    assert ticket.state == "done"
    assert rig.connector.host_context(rig.host).containment == "contained"
    assert store.puts[0]["state"] == "pending"  # recorded before polling
    assert store.get("C-42:isolate_host:ws-042")["state"] == "done"
    again = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "C-42:isolate_host:ws-042")
    assert again == ticket
    assert rig.contain_requests() == 1


def test_crash_after_send_resumes_without_a_second_send(
    rig: Rig, executor: ContainmentExecutor, tmp_path: Path
) -> None:
    crashing = RecordingStore(tmp_path / "ledger.db", crash_on_first_put=True)
    with pytest.raises(RuntimeError, match="simulated crash"):
        executor.execute(rig.connector, "contain", rig.host, COMMENT, crashing, "k1")
    assert rig.contain_requests() == 1
    restarted = RecordingStore(tmp_path / "ledger.db")  # a new process: nothing was recorded
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, restarted, "k1")
    assert ticket.state == "done" and rig.contain_requests() == 1
    if not rig.kit.lists_actions:  # no action list: the host state shows the action in flight
        assert "already in flight" in restarted.puts[0]["detail"]
    else:  # the vendor's list holds our request (by its marker): its own id is adopted
        assert ticket.ticket_id == rig.action_ids()[0] and "in the vendor's action list" in restarted.puts[0]["detail"]


def test_timeout_is_reported_and_a_retry_resumes_the_same_ticket(
    rig: Rig, executor: ContainmentExecutor, tmp_path: Path
) -> None:
    rig.emulator.lifecycle.outcome = "never"
    store = RecordingStore(tmp_path / "ledger.db")
    first = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "k2", timeout_s=10, poll_interval_s=3)
    assert first.state == "timed_out" and "no confirmation within 10s" in first.detail
    assert rig.connector.host_context(rig.host).containment == "pending"
    assert store.get("k2")["state"] == "timed_out"
    rig.emulator.lifecycle.outcome = "succeed"
    second = executor.execute(
        rig.connector, "contain", rig.host, COMMENT, SqliteIdempotencyStore(tmp_path / "ledger.db"), "k2"
    )
    assert second.state == "done" and second.ticket_id == first.ticket_id
    assert rig.contain_requests() == 1


def test_already_contained_host_gets_no_request(rig: Rig, executor: ContainmentExecutor) -> None:
    executor.execute(rig.connector, "contain", rig.host, COMMENT, SqliteIdempotencyStore(), "first-approval")
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, SqliteIdempotencyStore(), "second-approval")
    assert ticket.state == "done" and "already contained" in ticket.detail
    assert rig.contain_requests() == 1


def test_vendor_failure_is_reported_not_assumed(rig: Rig, executor: ContainmentExecutor) -> None:
    rig.emulator.lifecycle.outcome = "fail"
    store = SqliteIdempotencyStore()
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "k3", timeout_s=20)
    assert ticket.state == rig.failure_state
    assert rig.connector.host_context(rig.host).containment == "normal"
    assert store.get("k3")["state"] == rig.failure_state


def test_release_on_a_later_approval(rig: Rig, executor: ContainmentExecutor) -> None:
    store = SqliteIdempotencyStore()
    assert executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "C-42:isolate_host:h").state == "done"
    release = executor.execute(
        rig.connector,
        "release",
        rig.host,
        "siemcrew case C-42 action release approved by bob",
        store,
        "C-42:release_host:h",
    )
    assert release.state == "done" and release.action == "release"
    assert rig.connector.host_context(rig.host).containment == "normal"
    again = executor.execute(rig.connector, "release", rig.host, "x", SqliteIdempotencyStore(), "other-key")
    assert "already normal" in again.detail


@pytest.mark.parametrize("vendor", ["crowdstrike", "elastic_defend"])
def test_kill_process_runs_once(
    vendor: str,
    request: pytest.FixtureRequest,
    sleeps: SleepRecorder,
    monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    rig = build_rig(vendor, request, sleeps, monkeypatch)
    store = SqliteIdempotencyStore()
    first = executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, "kill-1", pid=4242)
    second = executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, "kill-1", pid=4242)
    assert first.state == second.state == "done"
    sent = [r for r in rig.emulator.requests("POST") if "kill" in r.path or "active-responder-command" in r.path]
    assert len(sent) == 1


@pytest.mark.parametrize("vendor", ["defender", "sentinelone"])
def test_kill_process_unsupported_records_nothing(
    vendor: str,
    request: pytest.FixtureRequest,
    sleeps: SleepRecorder,
    monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    rig = build_rig(vendor, request, sleeps, monkeypatch)
    store = SqliteIdempotencyStore()
    with pytest.raises(ActionNotSupported):
        executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, "kill-2", pid=4242)
    assert store.get("kill-2") is None


def test_connectors_report_healthy(rig: Rig) -> None:
    report = rig.connector.health()
    assert report.ok and report.connector == rig.vendor


def test_write_timeout_then_retry_never_sends_twice(
    falcon_emulator: Any,
    sleeps: SleepRecorder,
    monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    rig = _falcon(falcon_emulator, sleeps, monkeypatch, timeout_s=0.25)
    rig.connector.health()  # fetch the token first: only the contain POST is slow
    falcon_emulator.delay_next(0.5, method="POST")
    store = SqliteIdempotencyStore()
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "k-timeout")
    # the answer was lost, but the vendor's host state shows the containment: recorded and watched, not resent
    assert ticket.state == "done" and rig.contain_requests() == 1
    assert store.get("k-timeout")["state"] == "done"
    again = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "k-timeout")
    assert again.state == "done" and rig.contain_requests() == 1


def test_a_send_refused_with_a_4xx_is_an_error_and_nothing_is_recorded(
    falcon_emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, executor: ContainmentExecutor
) -> None:
    rig = _falcon(falcon_emulator, sleeps, monkeypatch)
    falcon_emulator.fail_next(falcon_emulator.error(403, "access denied, scope Hosts: Write missing"),
                              method="POST", path_contains=rig.send_path)
    store = SqliteIdempotencyStore()
    with pytest.raises(ConnectorError, match="access denied"):
        executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "k-refused")
    assert store.get("k-refused") is None and rig.connector.host_context(rig.host).containment == "normal"
    assert rig.contain_requests() == 1  # refused, read back, not resent: a 403 will not change


def test_a_5xx_send_that_did_not_land_is_sent_again_only_after_the_vendor_shows_nothing(
    rig: Rig, executor: ContainmentExecutor, sleeps: SleepRecorder
) -> None:
    """The vendor answers 500 without acting: its action list (where it keeps one) and the host state show nothing
    of ours, so one more send cannot do it twice; it lands and is confirmed."""
    rig.emulator.fail_next(Reply(500, {"error": "internal error"}), method="POST", path_contains=rig.send_path)
    store = RecordingStore()
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "k-500")
    assert ticket.state == "done" and rig.connector.host_context(rig.host).containment == "contained"
    assert rig.contain_requests() == 2 and 2.0 in sleeps.waits  # the refused send, then one that landed
    if rig.kit.lists_actions:
        assert rig.action_ids() == [ticket.ticket_id]


def test_a_lost_reply_is_read_back_from_the_vendor_and_never_sent_again(
    rig: Rig, executor: ContainmentExecutor, tmp_path: Path
) -> None:
    """The vendor applies the containment but the answer never arrives: the executor finds its own request at the
    vendor (by the marker in its comment) and records the vendor's action id, or, for vendors that keep no
    action list, the host state; a second approval or run of the same action sends nothing."""
    rig.emulator.lose_reply_next("POST", rig.send_path)
    store = RecordingStore(tmp_path / "tickets.db")
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "C-42:isolate_host:ws-042")
    assert ticket.state == "done" and rig.contain_requests() == 1
    if not rig.kit.lists_actions:
        assert ticket.ticket_id.startswith(OBSERVED) and "the vendor shows the host" in store.puts[0]["detail"]
    else:
        assert rig.action_ids() == [ticket.ticket_id]
        assert "action list has our request" in store.puts[0]["detail"]
    again = executor.execute(rig.connector, "contain", rig.host, COMMENT, SqliteIdempotencyStore(tmp_path / "tickets.db"),
                             "C-42:isolate_host:ws-042")
    assert again == ticket and rig.contain_requests() == 1


@pytest.mark.parametrize("vendor", ["defender", "elastic_defend"])
def test_a_lost_reply_ends_with_the_vendor_actions_own_status(
    vendor: str, request: pytest.FixtureRequest, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    """The adopted action fails at the vendor: the case says failed (the vendor's word), with the vendor's id."""
    rig = build_rig(vendor, request, sleeps, monkeypatch)
    rig.emulator.lifecycle.outcome = "fail"
    rig.emulator.lose_reply_next("POST", rig.send_path)
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, SqliteIdempotencyStore(), "k-fail")
    assert ticket.state == "failed" and rig.action_ids() == [ticket.ticket_id]
    assert ("Failed" if vendor == "defender" else "failed: ") in ticket.detail
    assert rig.contain_requests() == 1


def _vendor_comments(rig: Rig) -> list[str]:
    emulator: Any = rig.emulator
    if rig.vendor == "defender":
        return [a["requestorComment"] for a in emulator.machine_actions.values()]
    if rig.vendor == "elastic_defend":
        return [a["comment"] for a in emulator.actions.values()]
    return [a["note"] for a in emulator.actions]


@pytest.mark.parametrize("vendor", ["crowdstrike", "defender", "elastic_defend"])
def test_the_request_carries_the_approval_and_a_marker_unique_to_its_action_key(
    vendor: str, request: pytest.FixtureRequest, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    rig = build_rig(vendor, request, sleeps, monkeypatch)
    executor.execute(rig.connector, "contain", rig.host, COMMENT, SqliteIdempotencyStore(), "C-42:isolate_host:ws-042")
    (comment,) = _vendor_comments(rig)
    assert comment == f"{COMMENT} [{action_marker('C-42:isolate_host:ws-042')}]"
    assert action_marker("C-42:isolate_host:ws-042") != action_marker("C-43:isolate_host:ws-042")


def _someone_elses_isolation(rig: Rig, pending: bool = False) -> None:
    """An analyst isolated the host from the vendor's console; the comment even quotes another key's marker."""
    emulator: Any = rig.emulator
    comment = f"isolated by bob, see INC-7 [{action_marker('C-1:isolate_host:ws-042')}]"
    if rig.vendor == "defender":
        emulator.add_action(rig.host.id, "Isolate", comment, status="Pending" if pending else "Succeeded")
    else:
        emulator.add_action(rig.host.id, "isolate", comment)


@pytest.mark.parametrize("vendor", ["defender", "elastic_defend"])
def test_someone_elses_isolation_is_never_adopted_and_is_recorded_as_theirs(
    vendor: str, request: pytest.FixtureRequest, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    """The host is already contained by another actor: nothing is sent, the goal is met, and the record says whose
    it was (an observed ticket, never the other actor's action id)."""
    rig = build_rig(vendor, request, sleeps, monkeypatch)
    _someone_elses_isolation(rig)
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, SqliteIdempotencyStore(), "C-42:isolate_host:x")
    assert ticket.state == "done" and ticket.ticket_id.startswith(OBSERVED)
    assert "already contained" in ticket.detail and "by another actor" in ticket.detail
    assert ticket.ticket_id not in rig.action_ids()
    assert rig.contain_requests() == 0


def test_an_isolation_in_flight_by_another_actor_is_watched_as_theirs_and_ours_is_not_sent(
    defender_emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, executor: ContainmentExecutor
) -> None:
    """Someone else's isolation is pending (Defender would refuse a second one): none of ours in the list, the
    host pending -> watched to its end and recorded as another actor's; nothing is sent."""
    rig = _defender(defender_emulator, sleeps, monkeypatch)
    defender_emulator.lifecycle.reads = 6
    _someone_elses_isolation(rig, pending=True)
    store = RecordingStore()
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "C-42:isolate_host:x")
    assert "in flight" in store.puts[0]["detail"] and "by another actor" in store.puts[0]["detail"]
    assert ticket.state == "done" and ticket.ticket_id.startswith(OBSERVED) and "by another actor" in ticket.detail
    assert rig.contain_requests() == 0


@pytest.mark.parametrize("vendor", ["defender", "elastic_defend"])
def test_an_observed_ticket_that_timed_out_is_resolved_by_the_vendors_action_list(
    vendor: str, request: pytest.FixtureRequest, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    """A ticket known only from the host state (recorded by an earlier siemcrew, or while the list was unreadable)
    and timed out: the next attempt finds our request by its marker and ends with the vendor's id and status."""
    rig = build_rig(vendor, request, sleeps, monkeypatch)
    key = "C-42:isolate_host:ws-042"
    rig.connector.contain(rig.host, f"{COMMENT} [{action_marker(key)}]")  # it landed; the record kept only this:
    store = RecordingStore()
    store.put(key, {"vendor": rig.vendor, "action": "contain", "host_id": rig.host.id, "state": "timed_out",
                    "ticket_id": f"{OBSERVED}{rig.host.id}", "detail": "no confirmation within 300s"})
    ticket = executor.execute(rig.connector, "contain", rig.host, COMMENT, store, key)
    assert ticket.state == "done" and rig.action_ids() == [ticket.ticket_id]
    assert "found our request in the vendor's action list" in store.puts[1]["detail"]
    assert rig.contain_requests() == 1


def test_asking_about_an_action_never_sends_one(rig: Rig, executor: ContainmentExecutor) -> None:
    """A later run asks about an action (`may_send=False`): with nothing recorded and nothing at the vendor it
    says so and sends nothing, even though the approval stands."""
    with pytest.raises(ConnectorError, match="not sent"):
        executor.execute(rig.connector, "contain", rig.host, COMMENT, SqliteIdempotencyStore(), "k-ask", may_send=False)
    assert rig.contain_requests() == 0


KILL = {"crowdstrike": "/active-responder-command/v1", "elastic_defend": "/api/endpoint/action/kill_process"}
KILL_LIST = {"crowdstrike": "/real-time-response/queries/sessions/v1", "elastic_defend": "/api/endpoint/action"}


def _kill_ids(rig: Rig) -> list[str]:
    emulator: Any = rig.emulator
    if rig.vendor == "crowdstrike":
        return [f"rtr:{request_id}" for request_id in emulator.commands]
    return [a["id"] for a in emulator.actions.values() if a["command"] == "kill-process"]


@contextmanager
def _list_down(rig: Rig, after: int) -> Iterator[None]:
    """The vendor's action list answers 503 (after `after` good answers) until the block ends."""
    outage = Reply(503, {"error": "unavailable"})
    rig.emulator.fail_next(*[outage] * 100, after=after, method="GET", path_contains=KILL_LIST[rig.vendor])
    try:
        yield
    finally:
        with rig.emulator.lock:
            rig.emulator.faults = [f for f in rig.emulator.faults if f.reply is not outage]


def _kill_requests(rig: Rig) -> list[Any]:
    return [r for r in rig.emulator.requests("POST") if KILL[rig.vendor] in r.path]


@pytest.mark.parametrize("vendor", ["crowdstrike", "elastic_defend"])
def test_a_kill_whose_reply_was_lost_is_found_by_its_marker_and_never_repeated(
    vendor: str, request: pytest.FixtureRequest, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    """No host state shows a kill: the vendor's own record does (Falcon: the `kill` in the log of the RTR session
    whose origin is our marker; Elastic Defend: the kill-process action whose comment carries it)."""
    rig = build_rig(vendor, request, sleeps, monkeypatch)
    rig.emulator.lose_reply_next("POST", KILL[vendor])
    store = SqliteIdempotencyStore()
    key = "C-42:kill_process:ws-042:4242"
    ticket = executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, key, pid=4242)
    assert ticket.state == "done" and _kill_ids(rig) == [ticket.ticket_id]
    assert executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, key, pid=4242) == ticket
    assert len(_kill_requests(rig)) == 1
    if vendor == "crowdstrike":
        (session,) = rig.emulator.sessions.values()  # type: ignore[attr-defined]
        assert session["origin"] == action_marker(key)


@pytest.mark.parametrize("vendor", ["crowdstrike", "elastic_defend"])
def test_a_kill_the_vendor_cannot_be_asked_about_is_unconfirmed_never_failed_and_resolved_later(
    vendor: str, request: pytest.FixtureRequest, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch,
    executor: ContainmentExecutor,
) -> None:
    """The kill's answer is lost and the vendor's list is down too: it may have run, so it is recorded as
    unconfirmed (timed out, "check the console"), not failed; once the list answers, the kill is found."""
    rig = build_rig(vendor, request, sleeps, monkeypatch)
    rig.emulator.lose_reply_next("POST", KILL[vendor])
    store = SqliteIdempotencyStore()
    key = "C-42:kill_process:ws-042:4242"
    with _list_down(rig, after=1):  # the pre-send lookup passes; the read-back and the polls do not
        first = executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, key, pid=4242, timeout_s=0)
    assert first.state == "timed_out" and first.ticket_id.startswith(UNCONFIRMED)
    assert "may have run" in first.detail and "console" in first.detail
    later = executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, key, pid=4242)
    assert later.state == "done" and _kill_ids(rig) == [later.ticket_id]
    assert len(_kill_requests(rig)) == 1


def test_an_unconfirmed_send_the_vendor_later_shows_no_sign_of_is_failed_and_never_resent(
    elastic_defend_emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, executor: ContainmentExecutor
) -> None:
    """The kill was refused unapplied (503) while the action list was down: unconfirmed. Asked again once the list
    answers, the vendor holds no kill of ours: failed, saying it did not land, and nothing is sent again."""
    rig = _elastic(elastic_defend_emulator, sleeps, monkeypatch)
    unavailable = Reply(503, {"statusCode": 503, "error": "Service Unavailable", "message": "unavailable"})
    rig.emulator.fail_next(unavailable, method="POST", path_contains=KILL["elastic_defend"])
    store = SqliteIdempotencyStore()
    key = "C-42:kill_process:ws-042:4242"
    with _list_down(rig, after=1):  # the pre-send lookup passes; the read-back and the polls do not
        first = executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, key, pid=4242, timeout_s=0)
    assert first.state == "timed_out" and first.ticket_id.startswith(UNCONFIRMED)
    later = executor.execute(rig.connector, "kill_process", rig.host, COMMENT, store, key, pid=4242)
    assert later.state == "failed" and "did not land" in later.detail and "nothing is re-sent" in later.detail
    assert len(_kill_requests(rig)) == 1 and _kill_ids(rig) == []


def test_bad_arguments_are_refused(executor: ContainmentExecutor) -> None:
    with pytest.raises(ValueError):
        executor.execute(None, "wipe", HostRef(vendor="x", id="1"), "c", SqliteIdempotencyStore(), "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pid"):
        executor.execute(None, "kill_process", HostRef(vendor="x", id="1"), "c", SqliteIdempotencyStore(), "k")  # type: ignore[arg-type]


def test_sqlite_store_is_shared_through_the_file(tmp_path: Path) -> None:
    first = SqliteIdempotencyStore(tmp_path / "t.db")
    first.put("k", {"state": "pending", "ticket_id": "a"})
    first.put("k", {"state": "done", "ticket_id": "a"})
    other = SqliteIdempotencyStore(tmp_path / "t.db")
    assert other.get("k") == {"state": "done", "ticket_id": "a"}
    assert other.get("missing") is None

