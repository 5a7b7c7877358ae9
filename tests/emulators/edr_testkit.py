"""Test helpers shared by the EDR tests: a sleep that records instead of waiting, and one kit per vendor."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from emulators import edr_defender, edr_elastic_defend, edr_falcon, edr_sentinelone

from siemcrew.config.edr import RetrySettings, VendorSection
from siemcrew.connectors.edr.http import HttpOptions


class SleepRecorder:
    """Stands in for time.sleep: records each wait and advances a fake clock by it."""

    def __init__(self) -> None:
        self.waits: list[float] = []
        self.now = 1000.0

    def __call__(self, seconds: float) -> None:
        self.waits.append(round(seconds, 3))
        self.now += seconds

    def clock(self) -> float:
        return self.now


def fast_options(sleeps: SleepRecorder, section: VendorSection | None = None, **overrides: Any) -> HttpOptions:
    """HttpOptions (from `section` when given) whose waits go to the recorder: fast, and checkable."""
    values: dict[str, Any] = {
        "retry": RetrySettings(attempts=4, initial_wait_s=0.5, max_wait_s=8.0, max_retry_after_s=120.0),
        "timeout_s": 5.0,
        "sleep": sleeps,
        "clock": sleeps.clock,
    }
    values.update(overrides)
    if section is not None:
        return HttpOptions.from_section(section, **values)
    return HttpOptions(**values)


@pytest.fixture()
def sleeps() -> SleepRecorder:
    return SleepRecorder()


@dataclass(frozen=True)
class VendorKit:
    """One EDR vendor as the tests see it: its emulator, where a containment is sent, what the vendor acted on,
    and the `edr.<vendor>` block that points siemcrew at the emulator. One place, so tests do not repeat it."""

    name: str
    emulator: Callable[[], Any]
    send_path: str  # the request that contains a host (where a fault lands on the send)
    sends: Callable[[Any], list[Any]]  # the containment requests the emulator received
    env: dict[str, str]
    section: Callable[[Any], dict[str, Any]]
    add_host: Callable[[Any, str, str], None]  # (emulator, host id, host name)
    applied: Callable[[Any], list[str]]  # the containments the vendor acted on: its action ids where it lists them
    lists_actions: bool  # the vendor keeps an action list (`applied` are then its own action ids)


def _defender_section(emulator: Any) -> dict[str, Any]:
    base = emulator.base_url
    return {"tenant_id": edr_defender.TENANT, "api_base": base, "graph_base": base, "login_base": base}


KITS: dict[str, VendorKit] = {
    "crowdstrike": VendorKit(
        "crowdstrike", edr_falcon.FalconEmulator, "/devices/entities/devices-actions/v2",
        lambda e: e.contain_requests(), {"FALCON_CLIENT_ID": edr_falcon.CLIENT_ID, "FALCON_CLIENT_SECRET": edr_falcon.CLIENT_SECRET},
        lambda e: {"base_url": e.base_url},
        lambda e, host_id, name: e.add_device(host_id, name),
        lambda e: [a["id"] for a in e.actions if a["action_name"] == "contain"], lists_actions=False),
    "defender": VendorKit(
        "defender", edr_defender.DefenderEmulator, "/isolate",
        lambda e: e.isolate_requests(), {"MDE_CLIENT_ID": edr_defender.CLIENT_ID, "MDE_CLIENT_SECRET": edr_defender.CLIENT_SECRET},
        _defender_section,
        lambda e, host_id, name: e.add_machine(host_id, f"{name.lower()}.contoso.com"),
        lambda e: [a["id"] for a in e.machine_actions.values() if a["type"] == "Isolate"], lists_actions=True),
    "sentinelone": VendorKit(
        "sentinelone", edr_sentinelone.SentinelOneEmulator, "/agents/actions/disconnect",
        lambda e: e.disconnect_requests(), {"S1_API_TOKEN": edr_sentinelone.TOKEN},
        lambda e: {"base_url": e.base_url},
        lambda e, host_id, name: e.add_agent(host_id, name, "10.3.0.99"),
        lambda e: [agent for verb, agent in e.applied if verb == "disconnect"], lists_actions=False),
    "elastic_defend": VendorKit(
        "elastic_defend", edr_elastic_defend.ElasticDefendEmulator, "/api/endpoint/action/isolate",
        lambda e: e.action_requests("isolate"), {"KIBANA_API_KEY": edr_elastic_defend.API_KEY},
        lambda e: {"kibana_url": e.base_url},
        lambda e, host_id, name: e.add_endpoint(host_id, name, "10.4.0.99"),
        lambda e: [a["id"] for a in e.actions.values() if a["command"] == "isolate"], lists_actions=True),
}
