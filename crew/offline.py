"""crewAI's network and storage switches, set before `import crewai` (see reference/crewai.md).

Telemetry, tracing prompts and version checks all reach the internet or block; storage must be
an absolute directory we own. Every module that imports crewai imports this first.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

SWITCHES = {
    "CREWAI_DISABLE_TELEMETRY": "true",
    "OTEL_SDK_DISABLED": "true",
    "CREWAI_TRACING_ENABLED": "false",
    "CREWAI_DISABLE_VERSION_CHECK": "true",
    "CREWAI_DISABLE_TRACKING": "true",
    "LITELLM_TELEMETRY": "False",
}


def prepare(storage_dir: str | Path | None = None) -> None:
    for key, value in SWITCHES.items():
        os.environ[key] = value
    target = storage_dir or os.environ.get("CREWAI_STORAGE_DIR") or Path.cwd() / ".siemcrew" / "crewai"
    target = Path(target).expanduser().resolve()
    target.mkdir(parents=True, exist_ok=True)
    os.environ["CREWAI_STORAGE_DIR"] = str(target)
    for name in ("crewai", "LiteLLM", "httpx", "opentelemetry"):
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet() -> None:
    """crewAI prints rich panels even with verbose=False; silence them once crewai is imported."""
    try:
        from crewai_core.printer import set_suppress_console_output  # type: ignore[import-not-found]

        set_suppress_console_output(True)
    except Exception:  # noqa: BLE001 - cosmetic only; older layouts lack the switch
        pass


prepare()
