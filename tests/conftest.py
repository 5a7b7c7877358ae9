"""Shared fixtures. crewAI's offline switches and an absolute storage dir are set before anything
imports crewai; the network is closed to everything but loopback (pytest-socket, see pyproject)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

_STORAGE = Path(tempfile.mkdtemp(prefix="siemcrew-crewai-"))
os.environ["CREWAI_STORAGE_DIR"] = str(_STORAGE)

import pytest  # noqa: E402

import siemcrew.crew.offline as offline  # noqa: E402

offline.prepare(_STORAGE)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
SHARED = REPO.parent / "shared"
OTRF = SHARED / "datasets" / "otrf"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: int = 240, stdin: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    """Run `siemcrew` in a separate process, as an operator or cron would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("SIEMCREW_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "siemcrew.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, input=stdin)


@pytest.fixture
def demo_settings(tmp_path: Path):  # noqa: ANN201
    from siemcrew.config.settings import Settings

    return Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path / "home"))
