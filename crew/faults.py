"""Crash points for recovery tests: `SIEMCREW_FAULT_KILL_AT=<name>` kills the process at that point.

Crash safety is a claim about what a `kill -9` at each step leaves behind; tests make the claim
checkable by killing a real process exactly there. Two more modes serve the task-queue tests:
`SIEMCREW_FAULT_HOLD_AT` stops the process there (for an hour), so that a test can `kill -9` it from
outside at a known step, and `SIEMCREW_FAULT_RAISE_AT` raises an error there (a task that keeps
failing). Each takes a comma-separated list of points. With `SIEMCREW_FAULT_ONCE=<path prefix>` a
point fires once across all processes: the first to reach it creates `<prefix>-<point>` holding its
pid (which process to kill); the others pass. `SIEMCREW_FAULT_FILE=<file>` names a JSON object of the
same variables that is read at every point, so a test can arm and disarm points of a running process.
Outside tests this is a no-op.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path


class InjectedFault(RuntimeError):
    """The error SIEMCREW_FAULT_RAISE_AT raises."""


def _setting(variable: str) -> str | None:
    path = os.environ.get("SIEMCREW_FAULT_FILE")
    if path:
        try:
            value = json.loads(Path(path).read_text(encoding="utf-8")).get(variable)
        except (OSError, ValueError):
            value = None
        if value:
            return str(value)
    return os.environ.get(variable)


def _armed(variable: str, name: str) -> bool:
    points = _setting(variable)
    if not points or name not in points.split(","):
        return False
    prefix = _setting("SIEMCREW_FAULT_ONCE")
    if not prefix:
        return True
    try:
        handle = os.open(f"{prefix}-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(handle, "w") as out:
        out.write(str(os.getpid()))
    return True


def fault_point(name: str) -> None:
    """Die at once (exit 137, no clean-up, as SIGKILL would), hold, or raise, when the environment names this point."""
    if _armed("SIEMCREW_FAULT_KILL_AT", name):
        os._exit(137)
    if _armed("SIEMCREW_FAULT_HOLD_AT", name):
        time.sleep(3600)
    if _armed("SIEMCREW_FAULT_RAISE_AT", name):
        raise InjectedFault(f"fault injected at {name}")
