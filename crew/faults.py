"""Crash points for recovery tests: `SIEMCREW_FAULT_KILL_AT=<name>` kills the process at that point.

Crash safety is a claim about what a `kill -9` at each step leaves behind; tests make the claim
checkable by killing a real process exactly there. Outside tests this is a no-op.
"""

from __future__ import annotations

import os


def fault_point(name: str) -> None:
    """Die at once (exit 137, no clean-up, as SIGKILL would) when the environment names this point."""
    if os.environ.get("SIEMCREW_FAULT_KILL_AT") == name:
        os._exit(137)
