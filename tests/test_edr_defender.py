"""Defender for Endpoint connector against the Defender emulator, through real httpx."""

from __future__ import annotations

import pytest
from emulators.edr_defender import (  # noqa: F401
    CLIENT_ID,
    CLIENT_SECRET,
    MACHINE_ID,
    TENANT,
    DefenderEmulator,
    defender_emulator,
)
from emulators.edr_testkit import SleepRecorder, fast_options, sleeps  # noqa: F401

from siemcrew.config.edr import DefenderSettings
from siemcrew.connectors.base import ConnectorError, EdrConnector, HostRef
from siemcrew.connectors.edr.defender import DefenderEdr
from siemcrew.connectors.edr.http import ActionNotSupported, RateLimiter
from siemcrew.crew.models import TimeRange

WINDOW = TimeRange(start="2025-06-02T07:00:00Z", end="2025-06-02T08:00:00Z")


def settings_for(emulator: DefenderEmulator, **extra: object) -> DefenderSettings:
    base = emulator.base_url
    return DefenderSettings(tenant_id=TENANT, api_base=base, graph_base=base, login_base=base, **extra)


@pytest.fixture()
def defender(
    defender_emulator: DefenderEmulator, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder
) -> DefenderEdr:
    monkeypatch.setenv("MDE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("MDE_CLIENT_SECRET", CLIENT_SECRET)
    connector = DefenderEdr(settings_for(defender_emulator), fast_options(sleeps))
    yield connector
    connector.close()


def host() -> HostRef:
    return HostRef(vendor="defender", id=MACHINE_ID, hostname="ws-042.contoso.com")


def test_implements_the_protocol(defender: DefenderEdr) -> None:
    assert isinstance(defender, EdrConnector)


def test_find_host_uses_odata_filter(defender: DefenderEdr, defender_emulator: DefenderEmulator) -> None:
    ref = defender.find_host(name="WS-042.contoso.com")
    assert ref is not None and ref.id == MACHINE_ID and ref.ip == "10.2.0.42"
    filters = [r.arg("$filter") for r in defender_emulator.requests("GET", "/api/machines")]
    assert filters == ["computerDnsName eq 'WS-042.contoso.com'", "computerDnsName eq 'ws-042.contoso.com'"]
    assert defender.find_host(name="SRV-DB01").hostname == "srv-db01.contoso.com"  # short name → startswith
    assert defender_emulator.requests("GET", "/api/machines")[-1].arg("$filter") == "startswith(computerDnsName,'srv-db01.')"
    assert defender.find_host(ip="10.2.9.5").hostname == "srv-db01.contoso.com"
    assert defender.find_host(agent_id=MACHINE_ID).hostname == "ws-042.contoso.com"
    assert defender.find_host(agent_id="f" * 40) is None
    assert defender.find_host(name="nothere.contoso.com") is None


def test_host_context_reads_isolation_from_machine_actions(defender: DefenderEdr) -> None:
    ctx = defender.host_context(host())
    assert ctx.containment == "normal" and ctx.online is True
    assert ctx.os == "Windows11 10.0.22631"
    assert ctx.logged_on_users == ["CONTOSO\\alice"]
    assert ctx.detections == 2
    ticket = defender.contain(host(), "siemcrew case C-7 action contain approved by alice")
    assert defender.host_context(host()).containment == "pending"
    while defender.action_status(ticket).state == "pending":
        pass
    assert defender.host_context(host()).containment == "contained"


def test_offline_machine(defender: DefenderEdr) -> None:
    ref = defender.find_host(ip="10.2.9.5")
    assert defender.host_context(ref).online is False


def test_isolate_sends_comment_and_polls_machine_action(
    defender: DefenderEdr, defender_emulator: DefenderEmulator
) -> None:
    ticket = defender.contain(host(), "siemcrew case C-7 action contain approved by alice")
    assert ticket.state == "pending" and ticket.ticket_id in defender_emulator.machine_actions
    sent = defender_emulator.isolate_requests()[0].json()
    assert sent == {"Comment": "siemcrew case C-7 action contain approved by alice", "IsolationType": "Full"}
    assert defender.action_status(ticket).state == "pending"  # InProgress
    assert defender.action_status(ticket).state == "done"  # Succeeded
    release = defender.release(host(), "siemcrew case C-7 action release approved by bob")
    assert defender_emulator.machine_actions[release.ticket_id]["requestorComment"].endswith("approved by bob")
    defender.action_status(release)
    assert defender.action_status(release).state == "done"
    assert defender.host_context(host()).containment == "normal"


@pytest.mark.parametrize(
    ("fail_status", "state"), [("Failed", "failed"), ("TimeOut", "timed_out"), ("Cancelled", "failed")]
)
def test_failed_machine_actions(
    defender: DefenderEdr, defender_emulator: DefenderEmulator, fail_status: str, state: str
) -> None:
    defender_emulator.lifecycle.outcome = "fail"
    defender_emulator.fail_status = fail_status
    ticket = defender.contain(host(), "c")
    defender.action_status(ticket)
    assert defender.action_status(ticket).state == state
    assert defender.host_context(host()).containment == "normal"


def test_second_isolation_while_pending_is_refused_by_the_vendor(defender: DefenderEdr) -> None:
    defender.contain(host(), "c")
    with pytest.raises(ConnectorError, match="ActiveRequestAlreadyExists"):
        defender.contain(host(), "c")


def test_kill_process_is_not_supported(defender: DefenderEdr, defender_emulator: DefenderEmulator) -> None:
    with pytest.raises(ActionNotSupported):
        defender.kill_process(host(), 4242, "c")
    assert defender_emulator.requests("POST") == []


def test_process_events_through_graph_hunting(defender: DefenderEdr, defender_emulator: DefenderEmulator) -> None:
    events = defender.process_events(host(), WINDOW)
    assert [e["process.pid"] for e in events] == [4242, 4300]
    first = events[0]
    assert first["process.parent.pid"] == 1000 and first["process.parent.executable"].endswith("WINWORD.EXE")
    assert first["process.command_line"] == "powershell.exe -enc SQBFAFgA"
    assert first["user.name"] == "alice" and first["host.name"] == "ws-042.contoso.com"
    assert [e["process.pid"] for e in defender.process_events(host(), WINDOW, pid=4300)] == [4300]
    assert 'DeviceId == "' + MACHINE_ID + '"' in defender_emulator.hunting_queries[0]
    # the Graph call used a Graph-scoped token, the machine calls an API-scoped one
    assert defender_emulator.token_requests == 1
    defender.host_context(host())
    assert defender_emulator.token_requests == 2


def test_hostile_machine_id_is_refused_before_kql(defender: DefenderEdr, defender_emulator: DefenderEmulator) -> None:
    bad = HostRef(vendor="defender", id='x" or 1==1 //')
    with pytest.raises(ConnectorError, match="refusing unusual machine id"):
        defender.process_events(bad, WINDOW)
    assert defender_emulator.hunting_queries == []


def test_detections_follow_next_links(defender: DefenderEdr, defender_emulator: DefenderEmulator) -> None:
    defender_emulator.page_size = 1
    detections = defender.detections(host(), WINDOW)
    assert [d["rule.name"] for d in detections] == [
        "Suspicious PowerShell command line",
        "Credential dumping via comsvcs.dll",
    ]
    assert detections[0]["threat.technique.id"] == ["T1059.001"]
    assert len(defender_emulator.requests("GET", f"/api/machines/{MACHINE_ID}/alerts")) == 3


def test_token_error_is_readable_and_secret_free(
    defender_emulator: DefenderEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MDE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("MDE_CLIENT_SECRET", "not-the-secret-987")
    connector = DefenderEdr(settings_for(defender_emulator), fast_options(SleepRecorder()))
    report = connector.health()
    assert not report.ok and "invalid_client" in report.detail and "AADSTS7000215" in report.detail
    assert "not-the-secret-987" not in report.detail


def test_expired_token_refreshed(defender: DefenderEdr, defender_emulator: DefenderEmulator) -> None:
    defender.find_host(agent_id=MACHINE_ID)
    defender_emulator.expire_tokens()
    assert defender.find_host(agent_id=MACHINE_ID) is not None
    assert defender_emulator.token_requests == 2


def test_429_too_many_requests_honours_retry_after(
    defender: DefenderEdr, defender_emulator: DefenderEmulator, sleeps: SleepRecorder
) -> None:
    defender.find_host(agent_id=MACHINE_ID)
    defender_emulator.fail_next(defender_emulator.too_many_requests(12))
    assert defender.find_host(agent_id=MACHINE_ID) is not None
    assert sleeps.waits == [12.0]


def test_client_side_limit_paces_calls(sleeps: SleepRecorder) -> None:
    limiter = RateLimiter(3, sleeps, sleeps.clock)
    for _ in range(3):
        limiter.acquire()
    assert sleeps.waits == []
    limiter.acquire()
    assert sleeps.waits == [60.0]


def test_default_limits_follow_the_reference() -> None:
    settings = DefenderSettings(tenant_id=TENANT)
    assert settings.rate_limit_per_minute == 100 and settings.hunting_rate_limit_per_minute == 45
    assert settings.machines_base == "https://api.securitycenter.microsoft.com"
    assert DefenderSettings(tenant_id=TENANT, geo="eu").machines_base == "https://eu.api.security.microsoft.com"


def test_limiter_is_used_by_the_connector(
    defender_emulator: DefenderEmulator, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder
) -> None:
    monkeypatch.setenv("MDE_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("MDE_CLIENT_SECRET", CLIENT_SECRET)
    connector = DefenderEdr(settings_for(defender_emulator, rate_limit_per_minute=2), fast_options(sleeps))
    for _ in range(3):
        connector.find_host(agent_id=MACHINE_ID)
    assert len(sleeps.waits) == 1 and sleeps.waits[0] == 60.0
