"""SentinelOne connector against the SentinelOne emulator, through real httpx."""

from __future__ import annotations

import pytest
from emulators.edr_sentinelone import AGENT_ID, API, TOKEN, SentinelOneEmulator, sentinelone_emulator  # noqa: F401
from emulators.edr_testkit import SleepRecorder, fast_options, sleeps  # noqa: F401

from siemcrew.config.edr import SentinelOneSettings
from siemcrew.connectors.base import ConnectorError, EdrConnector, HostRef
from siemcrew.connectors.edr.http import ActionNotSupported
from siemcrew.connectors.edr.sentinelone import SentinelOneEdr
from siemcrew.crew.models import TimeRange

WINDOW = TimeRange(start="2025-06-02T07:00:00Z", end="2025-06-02T07:30:00Z")


@pytest.fixture()
def s1(
    sentinelone_emulator: SentinelOneEmulator, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder
) -> SentinelOneEdr:
    monkeypatch.setenv("S1_API_TOKEN", TOKEN)
    settings = SentinelOneSettings(base_url=sentinelone_emulator.base_url, page_size=2)
    connector = SentinelOneEdr(settings, fast_options(sleeps))
    yield connector
    connector.close()


def host() -> HostRef:
    return HostRef(vendor="sentinelone", id=AGENT_ID, hostname="WS-042")


def test_implements_the_protocol(s1: SentinelOneEdr) -> None:
    assert isinstance(s1, EdrConnector)


def test_base_url_gets_the_api_prefix() -> None:
    assert (
        SentinelOneSettings(base_url="https://acme.sentinelone.net").api_base
        == "https://acme.sentinelone.net/web/api/v2.1"
    )


def test_token_goes_in_the_header_never_the_url(s1: SentinelOneEdr, sentinelone_emulator: SentinelOneEmulator) -> None:
    s1.find_host(name="WS-042")
    request = sentinelone_emulator.requests("GET", f"{API}/agents")[0]
    assert request.header("authorization") == f"ApiToken {TOKEN}"
    assert not any(TOKEN in value for values in request.query.values() for value in values)


def test_cursor_paging_over_several_pages(s1: SentinelOneEdr, sentinelone_emulator: SentinelOneEmulator) -> None:
    agents = s1.agents()
    assert len(agents) == 6 and len({a["id"] for a in agents}) == 6
    cursors = [r.arg("cursor") for r in sentinelone_emulator.requests("GET", f"{API}/agents")]
    assert cursors[0] is None and all(cursors[1:]) and len(cursors) == 3


def test_find_host(s1: SentinelOneEdr) -> None:
    ref = s1.find_host(name="ws-042.contoso.com")
    assert ref is not None and ref.id == AGENT_ID and ref.ip == "10.3.0.42"
    assert s1.find_host(ip="10.3.1.4").hostname == "LAB-04"
    assert s1.find_host(agent_id=AGENT_ID).hostname == "WS-042"
    assert s1.find_host(name="unknown") is None


def test_host_context(s1: SentinelOneEdr) -> None:
    ctx = s1.host_context(host())
    assert ctx.containment == "normal" and ctx.online is True
    assert ctx.os == "Windows 11 Pro 22631" and ctx.detections == 2 and ctx.logged_on_users == ["alice"]


def test_disconnect_then_connect_confirmed_by_network_status(
    s1: SentinelOneEdr, sentinelone_emulator: SentinelOneEmulator
) -> None:
    ticket = s1.contain(host(), "siemcrew case C-9 action contain approved by alice")
    assert ticket.state == "pending" and "no comment field" in ticket.detail
    assert sentinelone_emulator.disconnect_requests()[0].json() == {"filter": {"ids": [AGENT_ID]}}
    assert s1.host_context(host()).containment == "pending"  # disconnecting
    assert s1.action_status(ticket).state == "done"
    assert s1.host_context(host()).containment == "contained"
    release = s1.release(host(), "c")
    assert s1.host_context(host()).containment == "release_pending"
    assert s1.action_status(release).state == "done"


def test_disconnect_of_unknown_agent_is_an_error(s1: SentinelOneEdr) -> None:
    with pytest.raises(ConnectorError, match="affected 0 agents"):
        s1.contain(HostRef(vendor="sentinelone", id="123"), "c")


def test_kill_process_not_supported(s1: SentinelOneEdr) -> None:
    with pytest.raises(ActionNotSupported):
        s1.kill_process(host(), 1, "c")


def test_detections_page_through_threats(s1: SentinelOneEdr, sentinelone_emulator: SentinelOneEmulator) -> None:
    detections = s1.detections(host(), WINDOW)
    assert [d["rule.name"] for d in detections] == ["invoice.docm", "stage2.dll"]
    assert detections[0]["file.path"].endswith("invoice.docm") and detections[0]["host.name"] == "WS-042"
    wide = TimeRange(start="2025-06-02T00:00:00Z", end="2025-06-03T00:00:00Z")
    assert len(s1.detections(host(), wide)) == 3
    assert len(sentinelone_emulator.requests("GET", f"{API}/threats")) == 1 + 2  # second call needed two pages


def test_process_events_via_deep_visibility(
    s1: SentinelOneEdr, sentinelone_emulator: SentinelOneEmulator, sleeps: SleepRecorder
) -> None:
    events = s1.process_events(host(), WINDOW)
    assert [e["process.pid"] for e in events] == [4242, 4300, 5000]
    assert (
        events[0]["process.parent.pid"] == 1000 and events[0]["process.command_line"] == "powershell.exe -enc SQBFAFgA"
    )
    assert events[0]["user.name"] == "CONTOSO\\alice" and events[0]["host.name"] == "WS-042"
    assert sleeps.waits == [1.0]  # one RUNNING status before FINISHED
    assert [e["process.pid"] for e in s1.process_events(host(), WINDOW, pid=4242)] == [4242, 4300]


def test_deep_visibility_failure_is_reported(s1: SentinelOneEdr, sentinelone_emulator: SentinelOneEmulator) -> None:
    sentinelone_emulator.dv_lifecycle.outcome = "fail"
    with pytest.raises(ConnectorError, match="Deep Visibility query FAILED"):
        s1.process_events(host(), WINDOW)


def test_deep_visibility_timeout_is_reported(
    sentinelone_emulator: SentinelOneEmulator, monkeypatch: pytest.MonkeyPatch, sleeps: SleepRecorder
) -> None:
    monkeypatch.setenv("S1_API_TOKEN", TOKEN)
    sentinelone_emulator.dv_lifecycle.outcome = "never"
    connector = SentinelOneEdr(
        SentinelOneSettings(base_url=sentinelone_emulator.base_url, dv_timeout_s=5), fast_options(sleeps)
    )
    with pytest.raises(ConnectorError, match="still RUNNING after 5s"):
        connector.process_events(host(), WINDOW)
    assert 4 <= len(sleeps.waits) <= 6


def test_wrong_token_is_reported_with_the_vendor_error(
    sentinelone_emulator: SentinelOneEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("S1_API_TOKEN", "bad-token-xyz")
    connector = SentinelOneEdr(
        SentinelOneSettings(base_url=sentinelone_emulator.base_url), fast_options(SleepRecorder())
    )
    report = connector.health()
    assert (
        not report.ok
        and "Authentication Failed (code 4010010)" in report.detail
        and "bad-token-xyz" not in report.detail
    )
    # a static token cannot be refreshed: one request, no pointless resend
    assert len(sentinelone_emulator.requests()) == 1


def test_429_then_success(s1: SentinelOneEdr, sentinelone_emulator: SentinelOneEmulator, sleeps: SleepRecorder) -> None:
    sentinelone_emulator.fail_next(sentinelone_emulator.too_many_requests(4))
    assert s1.find_host(agent_id=AGENT_ID) is not None
    assert sleeps.waits == [4.0]
