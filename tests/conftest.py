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
from servers.postgres import pg_url, postgres, state_db  # noqa: E402,F401 - fixtures: a real PostgreSQL server

offline.prepare(_STORAGE)

from servers.redis import redis_server  # noqa: E402,F401  (a session fixture: the real Redis for queue tests)

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


def demo_config(tmp_path: Path, extra: str = "") -> str:
    """A copy of the demo config whose home is tmp_path/home, plus `extra` settings lines (e.g. `database:`)."""
    text = (EXAMPLES / "demo.yaml").read_text(encoding="utf-8")
    text = text.replace("home: ../.siemcrew-demo", f"home: {tmp_path / 'home'}")
    text = text.replace("events: [events]", f"events: [{EXAMPLES / 'events'}]")
    text = text.replace("alerts: [alerts]", f"alerts: [{EXAMPLES / 'alerts'}]")
    text = text.replace("assets_file: assets.yaml", f"assets_file: {EXAMPLES / 'assets.yaml'}")
    path = tmp_path / "siemcrew.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return str(path)


@pytest.fixture
def demo_settings(tmp_path: Path):  # noqa: ANN201
    from siemcrew.config.settings import Settings

    return Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path / "home"))


@pytest.fixture
def awaiting_isolation(tmp_path: Path):  # noqa: ANN201
    """A runtime (config file in tmp_path, no events) and a verified malicious case whose isolation of
    WS-01 waits for a human; its alert update already ran automatically."""
    return awaiting_isolation_on(tmp_path)


def awaiting_isolation_on(tmp_path: Path, config: str = ""):  # noqa: ANN201
    """`awaiting_isolation`, with more settings lines (`config`, e.g. the `database:` of `state_db`)."""
    from siemcrew.config.settings import Settings
    from siemcrew.crew.models import ActionProposal, Alert, Entities, Evidence, Grounds, VerificationReport
    from siemcrew.crew.runtime import Runtime
    from siemcrew.crew.timeutil import utcnow

    path = tmp_path / "siemcrew.yaml"
    path.write_text(f"home: {tmp_path / 'home'}\n{config}", encoding="utf-8")
    rt = Runtime(Settings.load(path))
    case, _ = rt.cases.admit(Alert(id="a1", rule_name="r", timestamp=utcnow(), entities=Entities(hosts=["WS-01"])))
    case.verdict, case.confidence = "malicious", "high"
    seen = Evidence(kind="alert_events", connector="t", language="t", query="q", status="ok", count=1,
                    sample=[{"host.hostname": "WS-01"}]).seal()
    case.evidence.append(seen)
    case.verifications.append(VerificationReport(status="complete", grounds=Grounds(hosts=["WS-01"])))
    case.proposals = [
        ActionProposal(action="isolate_host", target="WS-01", args={"host": "WS-01"}, evidence_ids=[seen.id]),
        ActionProposal(action="update_alert", target="a1", args={"status": "escalated", "verdict": "malicious"},
                       evidence_ids=[seen.id]),
    ]
    assert rt.gate(case) == 1
    rt.act(case, auto_only=True)
    rt.cases.save(case)
    return rt, case
