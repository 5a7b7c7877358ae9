"""The containment executor against all four vendor emulators: once-only sends, resume, timeouts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from emulators import edr_defender, edr_elastic_defend, edr_falcon, edr_sentinelone
from emulators.edr_common import EmulatorServer
from emulators.edr_defender import defender_emulator  # noqa: F401
from emulators.edr_elastic_defend import elastic_defend_emulator  # noqa: F401
from emulators.edr_falcon import falcon_emulator  # noqa: F401
from emulators.edr_sentinelone import sentinelone_emulator  # noqa: F401
from emulators.edr_testkit import SleepRecorder, fast_options, sleeps  # noqa: F401

from siemcrew.config.edr import CrowdStrikeSettings, DefenderSettings, ElasticDefendSettings, SentinelOneSettings
from siemcrew.connectors.base import ConnectorError, EdrConnector, HostRef
from siemcrew.connectors.edr.crowdstrike import FalconEdr
from siemcrew.connectors.edr.defender import DefenderEdr
from siemcrew.connectors.edr.elastic_defend import ElasticDefendEdr
from siemcrew.connectors.edr.executor import ContainmentExecutor, SqliteIdempotencyStore
from siemcrew.connectors.edr.http import ActionNotSupported
from siemcrew.connectors.edr.sentinelone import SentinelOneEdr

COMMENT = "siemcrew case C-42 action contain approved by alice"


@dataclass
class Rig:
    vendor: str
    emulator: EmulatorServer
    connector: EdrConnector
    host: HostRef
    contain_requests: Callable[[], int]
    failure_state: str  # what a vendor-side failure looks like to the executor


def _falcon(emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Rig:
    monkeypatch.setenv("FALCON_CLIENT_ID", edr_falcon.CLIENT_ID)
    monkeypatch.setenv("FALCON_CLIENT_SECRET", edr_falcon.CLIENT_SECRET)
    connector = FalconEdr(CrowdStrikeSettings(base_url=emulator.base_url), fast_options(sleeps, **options))
    host = HostRef(vendor="crowdstrike", id="4f1c0e5a9b2d4c6e8f0a1b2c3d4e5f60", hostname="WS-042")
    # Falcon reports no failure: a containment that never lands is a timeout.
    return Rig("crowdstrike", emulator, connector, host, lambda: len(emulator.contain_requests()), "timed_out")


def _defender(emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Rig:
    monkeypatch.setenv("MDE_CLIENT_ID", edr_defender.CLIENT_ID)
    monkeypatch.setenv("MDE_CLIENT_SECRET", edr_defender.CLIENT_SECRET)
    base = emulator.base_url
    settings = DefenderSettings(tenant_id=edr_defender.TENANT, api_base=base, graph_base=base, login_base=base)
    connector = DefenderEdr(settings, fast_options(sleeps, **options))
    host = HostRef(vendor="defender", id=edr_defender.MACHINE_ID, hostname="ws-042.contoso.com")
    return Rig("defender", emulator, connector, host, lambda: len(emulator.isolate_requests()), "failed")


def _sentinelone(emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Rig:
    monkeypatch.setenv("S1_API_TOKEN", edr_sentinelone.TOKEN)
    connector = SentinelOneEdr(SentinelOneSettings(base_url=emulator.base_url), fast_options(sleeps, **options))
    host = HostRef(vendor="sentinelone", id=edr_sentinelone.AGENT_ID, hostname="WS-042")
    return Rig("sentinelone", emulator, connector, host, lambda: len(emulator.disconnect_requests()), "timed_out")


def _elastic(emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Rig:
    monkeypatch.setenv("KIBANA_API_KEY", edr_elastic_defend.API_KEY)
    connector = ElasticDefendEdr(ElasticDefendSettings(kibana_url=emulator.base_url), fast_options(sleeps, **options))
    host = HostRef(vendor="elastic_defend", id=edr_elastic_defend.AGENT_ID, hostname="ws-042")
    return Rig("elastic_defend", emulator, connector, host, lambda: len(emulator.action_requests("isolate")), "failed")


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
    assert ticket.state == "done" and "already in flight" in restarted.puts[0]["detail"]
    assert rig.contain_requests() == 1


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


def test_a_refused_send_that_did_not_land_is_an_error_and_nothing_is_recorded(
    falcon_emulator: Any, sleeps: SleepRecorder, monkeypatch: pytest.MonkeyPatch, executor: ContainmentExecutor
) -> None:
    rig = _falcon(falcon_emulator, sleeps, monkeypatch)
    rig.connector.health()
    # the host's state is read first (device, online state, alerts), then the send is refused
    falcon_emulator.fail_next(falcon_emulator.error(500, "internal error"), after=3)
    store = SqliteIdempotencyStore()
    with pytest.raises(ConnectorError, match="internal error"):
        executor.execute(rig.connector, "contain", rig.host, COMMENT, store, "k-refused")
    assert store.get("k-refused") is None and rig.connector.host_context(rig.host).containment == "normal"
    assert rig.contain_requests() == 1  # refused, read back, not resent


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

