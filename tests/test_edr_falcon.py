"""CrowdStrike Falcon connector against the Falcon emulator, through real httpx."""

from __future__ import annotations

import pytest
from emulators.edr_common import Reply
from emulators.edr_falcon import CLIENT_ID, CLIENT_SECRET, FalconEmulator, falcon_emulator  # noqa: F401
from emulators.edr_testkit import SleepRecorder, fast_options, sleeps  # noqa: F401

from siemcrew.config.edr import CrowdStrikeSettings, RetrySettings
from siemcrew.connectors.base import ConnectorError, EdrConnector, HostRef
from siemcrew.connectors.edr.crowdstrike import FalconEdr
from siemcrew.crew.models import TimeRange

AID = "4f1c0e5a9b2d4c6e8f0a1b2c3d4e5f60"
WINDOW = TimeRange(start="2025-06-02T07:00:00Z", end="2025-06-02T08:00:00Z")


@pytest.fixture()
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALCON_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("FALCON_CLIENT_SECRET", CLIENT_SECRET)


@pytest.fixture()
def falcon(falcon_emulator: FalconEmulator, creds: None, sleeps: SleepRecorder) -> FalconEdr:
    connector = FalconEdr(CrowdStrikeSettings(base_url=falcon_emulator.base_url), fast_options(sleeps))
    yield connector
    connector.close()


def host() -> HostRef:
    return HostRef(vendor="crowdstrike", id=AID, hostname="WS-042")


def test_implements_the_protocol(falcon: FalconEdr) -> None:
    assert isinstance(falcon, EdrConnector)


def test_find_host_by_fqdn_falls_back_to_short_name(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    ref = falcon.find_host(name="ws-042.corp.example")
    assert ref is not None and ref.id == AID and ref.hostname == "WS-042" and ref.ip == "10.1.2.42"
    filters = [r.arg("filter") for r in falcon_emulator.requests("GET", "/devices/queries/devices/v1")]
    assert filters == ["hostname:'ws-042.corp.example'", "hostname:'ws-042'"]


def test_find_host_by_ip_and_agent_id_and_missing(falcon: FalconEdr) -> None:
    assert falcon.find_host(ip="10.1.9.5").hostname == "SRV-DB01"
    assert falcon.find_host(agent_id=AID).hostname == "WS-042"
    assert falcon.find_host(agent_id="0" * 32) is None
    assert falcon.find_host(name="nope") is None


def test_hostile_host_name_never_reaches_the_filter(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    with pytest.raises(ConnectorError, match="refusing unusual host name"):
        falcon.find_host(name="x'+hostname:'*")
    assert falcon_emulator.requests("GET", "/devices/queries/devices/v1") == []


def test_host_context(falcon: FalconEdr) -> None:
    ctx = falcon.host_context(host())
    assert ctx.containment == "normal"
    assert ctx.online is True
    assert ctx.os == "Windows 11"
    assert ctx.logged_on_users == ["alice"]
    assert ctx.detections == 2  # the closed alert is not counted
    assert ctx.last_seen is not None and ctx.last_seen.year == 2025


def test_detections_and_process_events_in_window(falcon: FalconEdr) -> None:
    detections = falcon.detections(host(), WINDOW)
    assert [d["rule.name"] for d in detections] == ["EncodedPowerShell", "CredentialDumping"]
    assert detections[0]["threat.technique.id"] == "T1059.001"
    events = falcon.process_events(host(), WINDOW)
    assert events[0]["process.pid"] == 4242 and events[0]["process.parent.pid"] == 1000
    assert events[0]["process.command_line"] == "powershell.exe -enc SQBFAFgA"
    assert events[0]["process.parent.executable"].endswith("WINWORD.EXE")
    assert events[0]["user.name"] == "alice" and events[0]["host.name"] == "WS-042"
    assert events[0]["@timestamp"] == "2025-06-02T07:15:00.000Z"
    # pid filter keeps the process and its children
    assert [e["process.pid"] for e in falcon.process_events(host(), WINDOW, pid=4242)] == [4242, 4300]
    assert falcon.process_events(host(), WINDOW, pid=1) == []


def test_contain_carries_the_note_and_is_confirmed_by_host_state(
    falcon: FalconEdr, falcon_emulator: FalconEmulator
) -> None:
    ticket = falcon.contain(host(), "siemcrew case C-1 action contain approved by alice")
    assert ticket.state == "pending"
    assert falcon_emulator.actions == [
        {"id": AID, "action_name": "contain", "note": "siemcrew case C-1 action contain approved by alice"}
    ]
    assert falcon.host_context(host()).containment == "pending"
    assert falcon.action_status(ticket).state == "done"
    assert falcon.host_context(host()).containment == "contained"
    release = falcon.release(host(), "siemcrew case C-1 action release approved by bob")
    assert falcon.host_context(host()).containment == "release_pending"
    assert falcon.action_status(release).state == "done"
    assert falcon.host_context(host()).containment == "normal"


def test_containment_that_never_lands_stays_pending(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    falcon_emulator.lifecycle.outcome = "never"
    ticket = falcon.contain(host(), "c")
    for _ in range(5):
        assert falcon.action_status(ticket).state == "pending"


def test_kill_process_through_rtr(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    ticket = falcon.kill_process(host(), 4242, "siemcrew case C-1 action kill_process approved by alice")
    assert ticket.ticket_id.startswith("rtr:")
    assert falcon.action_status(ticket).state == "pending"
    assert falcon.action_status(ticket).state == "done"
    assert 4242 not in falcon_emulator.processes[AID]
    missing = falcon.kill_process(host(), 5555, "c")
    falcon.action_status(missing)
    failed = falcon.action_status(missing)
    assert failed.state == "failed" and "Cannot find process" in failed.detail


def test_token_refreshed_before_expiry(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    falcon_emulator.token_ttl = 100.0  # shorter than the refresh margin: every call must get a new token
    falcon.find_host(agent_id=AID)
    falcon.find_host(agent_id=AID)
    assert falcon_emulator.token_requests == 2
    assert all((r.header("authorization") or "").startswith("Bearer ") for r in falcon_emulator.requests("GET"))


def test_token_cached_while_valid(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    for _ in range(3):
        falcon.find_host(agent_id=AID)
    assert falcon_emulator.token_requests == 1


def test_expired_token_is_refreshed_after_401(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    falcon.find_host(agent_id=AID)
    falcon_emulator.expire_tokens()
    assert falcon.find_host(agent_id=AID) is not None
    assert falcon_emulator.token_requests == 2


def test_bad_credentials_reported_without_secret(
    falcon_emulator: FalconEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FALCON_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("FALCON_CLIENT_SECRET", "wrong-secret-123")
    connector = FalconEdr(CrowdStrikeSettings(base_url=falcon_emulator.base_url), fast_options(SleepRecorder()))
    report = connector.health()
    assert report.ok is False
    assert "Not Authorized" in report.detail and "wrong-secret-123" not in report.detail
    with pytest.raises(ConnectorError) as caught:
        connector.find_host(name="WS-042")
    assert "wrong-secret-123" not in str(caught.value)


def test_missing_secret_env_is_a_clear_error(falcon_emulator: FalconEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FALCON_CLIENT_SECRET", raising=False)
    monkeypatch.setenv("FALCON_CLIENT_ID", CLIENT_ID)
    connector = FalconEdr(CrowdStrikeSettings(base_url=falcon_emulator.base_url), fast_options(SleepRecorder()))
    with pytest.raises(ValueError, match="FALCON_CLIENT_SECRET"):
        connector.find_host(name="WS-042")
    report = connector.health()
    assert not report.ok and "client secret is not set" in report.detail


def test_429_waits_for_retry_after(falcon: FalconEdr, falcon_emulator: FalconEmulator, sleeps: SleepRecorder) -> None:
    """Falcon says when to come back in X-RateLimit-RetryAfter (an epoch second), not Retry-After."""
    falcon.find_host(agent_id=AID)
    falcon_emulator.fail_next(falcon_emulator.too_many_requests(7))
    assert falcon.find_host(agent_id=AID) is not None
    assert len(sleeps.waits) == 1 and 6.0 <= sleeps.waits[0] <= 7.0


def test_5xx_on_read_is_retried_with_backoff(
    falcon: FalconEdr, falcon_emulator: FalconEmulator, sleeps: SleepRecorder
) -> None:
    falcon.find_host(agent_id=AID)
    falcon_emulator.fail_next(falcon_emulator.error(503, "unavailable"), falcon_emulator.error(502, "bad gateway"))
    assert falcon.find_host(agent_id=AID) is not None
    assert len(sleeps.waits) == 2 and sleeps.waits[1] >= sleeps.waits[0]


def test_5xx_on_contain_is_not_resent(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    falcon.find_host(agent_id=AID)
    falcon_emulator.fail_next(falcon_emulator.error(500, "internal error"))
    with pytest.raises(ConnectorError, match="internal error"):
        falcon.contain(host(), "c")
    assert len(falcon_emulator.contain_requests()) == 1


def test_429_on_contain_is_retried_because_it_was_refused(
    falcon: FalconEdr,
    falcon_emulator: FalconEmulator,
    sleeps: SleepRecorder,
) -> None:
    falcon.find_host(agent_id=AID)
    falcon_emulator.fail_next(falcon_emulator.too_many_requests(3))
    assert falcon.contain(host(), "c").state == "pending"
    assert len(falcon_emulator.contain_requests()) == 2 and len(sleeps.waits) == 1 and 2.0 <= sleeps.waits[0] <= 3.0
    assert len(falcon_emulator.actions) == 1


def test_rate_limit_window_exhausts_retries(
    falcon_emulator: FalconEmulator, creds: None, sleeps: SleepRecorder
) -> None:
    options = fast_options(sleeps, retry=RetrySettings(attempts=3, initial_wait_s=0.01, max_wait_s=0.01))
    connector = FalconEdr(CrowdStrikeSettings(base_url=falcon_emulator.base_url), options)
    falcon_emulator.throttle(2, 60.0)
    connector.find_host(agent_id=AID)  # token + first device read fill the window
    with pytest.raises(ConnectorError, match="rate limit"):
        connector.find_host(agent_id=AID)
    assert len(sleeps.waits) == 2 and all(w >= 1 for w in sleeps.waits)


def test_read_timeout_is_retried_but_a_write_timeout_is_not(
    falcon_emulator: FalconEmulator, creds: None, sleeps: SleepRecorder
) -> None:
    connector = FalconEdr(CrowdStrikeSettings(base_url=falcon_emulator.base_url), fast_options(sleeps, timeout_s=0.25))
    connector.find_host(agent_id=AID)
    falcon_emulator.delay_next(0.5)
    assert connector.find_host(agent_id=AID) is not None
    assert len(sleeps.waits) == 1
    falcon_emulator.delay_next(0.5)
    with pytest.raises(ConnectorError, match="timed out"):
        connector.contain(host(), "c")
    assert len(falcon_emulator.contain_requests()) == 1
    assert falcon_emulator.devices[AID]["status"] == "containment_pending"  # the vendor did act


def test_malformed_body_is_a_clear_error(falcon: FalconEdr, falcon_emulator: FalconEmulator) -> None:
    falcon.find_host(agent_id=AID)
    falcon_emulator.fail_next(Reply(200, b"<html>proxy login</html>", {"Content-Type": "text/html"}))
    with pytest.raises(ConnectorError, match="malformed response"):
        falcon.find_host(agent_id=AID)


def test_region_selects_base_url() -> None:
    assert CrowdStrikeSettings(region="eu-1").api_base == "https://api.eu-1.crowdstrike.com"
    with pytest.raises(ValueError):
        CrowdStrikeSettings(region="mars-1")
