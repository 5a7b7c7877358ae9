"""Test helpers shared by the EDR connector tests: a sleep that records instead of waiting."""

from __future__ import annotations

from typing import Any

import pytest

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
