"""Failing safe with a model: `investigate(...)` on the demo data with the hunter on a model behind the
OpenAI-compatible server (`emulators/openai_server.py`, through crewAI's real `LLM`), the other roles on
the playbooks. A model that fails, hangs, answers nothing usable or runs out of budget escalates the case
to a human with the evidence it gathered, written back to the SIEM, never `failed` and never retried by
itself; `rerun` continues it from the stage that stopped once the model is back or the budget raised."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, run_cli

from siemcrew.config.settings import Settings
from siemcrew.crew.audit import read as read_audit
from siemcrew.crew.models import Alert, Case
from siemcrew.crew.operations import RerunError, investigate, rerun, retryable, run_case
from siemcrew.crew.runtime import Runtime

from emulators.openai_server import OpenAIServer, Reply, call_tool, empty, hang, malformed, server_error, text  # isort: skip

KEY_ENV = "SIEMCREW_TEST_LLM_KEY"
ALERT = Alert.model_validate_json((EXAMPLES / "alerts" / "demo-1-lsass-comsvcs.json").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-failsafe-test")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


class Hunter:
    """A scripted hunter: looks at the alert's events first, then answers with `then` (a fault, or None for
    a competent HuntResult)."""

    def __init__(self, then: Reply | None) -> None:
        self.then = then

    def __call__(self, body: dict[str, Any]) -> Reply:
        if not any(m["role"] == "tool" for m in body["messages"]):
            return call_tool("alert_events", {"alert_id": ALERT.id}, usage={"prompt_tokens": 1500, "completion_tokens": 20})
        if self.then is not None:
            return self.then
        host = ALERT.entities.hosts[0]
        return text(json.dumps({"summary": f"comsvcs.dll MiniDump of lsass on {host}: credential theft",
                                "findings": [], "affected_hosts": [host], "affected_users": [], "pivoted": ["host"]}),
                    usage={"prompt_tokens": 2500, "completion_tokens": 60})


def _runtime(tmp_path: Path, server: OpenAIServer, **llm: Any) -> Runtime:
    config = {"model": "openai/scripted-model", "base_url": server.base_url, "api_key_env": KEY_ENV,
              "roles": ["hunter"], "timeout_s": 5, "max_retries": 0, **llm}
    return Runtime(Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path / "home"), llm=config))


def _audit(rt: Runtime) -> list[Any]:
    return list(read_audit(rt.settings.home_path / "audit.jsonl"))


def _published(rt: Runtime, case: Case) -> dict[str, Any]:
    return json.loads((rt.settings.home_path / "published" / f"{case.id}.json").read_text(encoding="utf-8"))


def _assert_escalated_for_a_human(rt: Runtime, case: Case, reason: str, label: str) -> None:
    assert case.status == "escalated" and case.halt is not None
    assert case.halt.reason == reason and case.halt.stage == "hunter"
    assert case.summary.startswith(f"needs human: {label}")
    # the playbook triage had found it malicious: an escalation is at most suspicious, never benign
    assert case.triage is not None and case.triage.verdict == "malicious"
    assert case.verdict == "suspicious"
    # the evidence gathered so far is kept: triage's, and what the model's own tool call recorded
    agents = {e.agent for e in case.evidence}
    assert {"triage", "hunter"} <= agents and len(case.evidence) > 10 and case.findings
    # no action but the write-back: the update of the alert and the hand-over to a human
    assert [(r.action, r.state) for r in case.results] == [("update_alert", "done"), ("escalate", "done")]
    assert not rt.approvals.pending(case.id)
    # written back to the SIEM like any escalation: the alert's status and the published case
    latest = rt.siem.verdicts(ALERT.id)[-1]
    assert latest["status"] == "escalated" and latest["verdict"] == "suspicious" and f"needs human: {label}" in latest["comment"]
    published = _published(rt, case)
    assert published["status"] == "escalated" and published["halt"]["reason"] == reason
    kinds = [r.kind for r in _audit(rt)]
    assert "case_halted" in kinds and kinds.index("case_halted") < len(kinds) - 1 - kinds[::-1].index("publish")
    assert "case_failed" not in kinds
    halted = next(r for r in _audit(rt) if r.kind == "case_halted")
    assert halted.data["reason"] == reason and halted.data["stage"] == "hunter"
    # never retried by itself: not retryable, and a new intake of the alert sends the model nothing
    assert not retryable(case)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault, settings, cause", [
    (server_error(500), {"max_retries": 1}, "HTTP 500"),
    (hang(30), {"timeout_s": 1}, "timed out"),
    (malformed(), {}, "not JSON"),
    # crewAI turns an empty answer into a ValueError (from 1.15.4x: EmptyLLMResponseError, after one retry)
    (empty(), {}, "ValueError|EmptyLLMResponseError"),
], ids=["500", "hang", "malformed", "empty"])
def test_a_failing_model_escalates_the_case_with_its_evidence_and_writes_it_back(
        tmp_path: Path, fault: Reply, settings: dict[str, Any], cause: str) -> None:
    with OpenAIServer(Hunter(fault)) as server:
        rt = _runtime(tmp_path, server, **settings)
        started = time.monotonic()
        case = investigate(rt, ALERT)
        elapsed = time.monotonic() - started
        sent = len(server.chats)
        again = investigate(rt, ALERT)
        assert len(server.chats) == sent and again.status == "escalated"

    _assert_escalated_for_a_human(rt, case, "model_unavailable", "model unavailable")
    assert re.search(cause, case.halt.detail) and re.search(cause, case.summary)
    assert elapsed < 30  # the hung request was abandoned after timeout_s, not the server's 30 s
    assert case.llm_calls == sent  # every request the server saw is counted (retries too)


@pytest.mark.timeout(120)
def test_a_rerun_once_the_model_is_back_continues_from_the_stage_that_stopped(tmp_path: Path) -> None:
    hunter = Hunter(server_error(500))
    with OpenAIServer(hunter) as server:
        rt = _runtime(tmp_path, server)
        halted = investigate(rt, ALERT)
        assert halted.halt is not None and halted.halt.reason == "model_unavailable"
        calls, tokens = halted.llm_calls, halted.llm_tokens
        assert calls == 2 and tokens == 1520  # the tool call (usage 1500 + 20) and the failed request

        hunter.then = None  # the model is back
        case = rerun(rt, halted.id, by="alice")

    assert case.halt is None and case.status != "failed"
    assert case.verdict == "malicious"  # the escalation's cap is gone: the stages' own verdict stands
    assert "triage" in case.stages_done and "hunter@0" in case.stages_done and "impact@0" in case.stages_done
    records = _audit(rt)
    stages = [r.data["stage"] for r in records if r.kind == "stage"]
    assert stages.count("triage") == 1  # triage was kept, not run again
    rerun_record = next(r for r in records if r.kind == "rerun")
    assert rerun_record.actor == "alice" and rerun_record.data["after"] == "model_unavailable"
    # the counters add up over both attempts
    assert case.llm_calls > calls and case.llm_tokens > tokens
    # the rerun's outcome is written back too, after the halt's
    verdicts = [(v["status"], v["verdict"]) for v in rt.siem.verdicts(ALERT.id)]
    assert verdicts[0] == ("escalated", "suspicious") and verdicts[-1][1] == "malicious" and len(verdicts) == 2
    assert _published(rt, case)["halt"] is None
    # a case that was not halted is not rerun
    with pytest.raises(RerunError, match="nothing to rerun"):
        rerun(rt, case.id)


@pytest.mark.timeout(120)
def test_out_of_budget_escalates_without_overshooting_and_a_raised_budget_continues(tmp_path: Path) -> None:
    with OpenAIServer(Hunter(None)) as server:
        # the hunter's first request (~5 600 tokens of prompt with the case record and tool schemas, plus the
        # 256-token answer cap) fits in 8 000; after it (1 520 by the server's usage), the next one (the same
        # plus the tool's result) does not
        rt = _runtime(tmp_path, server, max_tokens_per_case=8000, max_tokens=256)
        case = investigate(rt, ALERT)
        sent = len(server.chats)

        _assert_escalated_for_a_human(rt, case, "budget_exhausted", "LLM budget exhausted")
        # checked before each call, against what it may cost: the second was never sent
        assert sent == 1 and case.llm_calls == 1 and case.llm_tokens == 1520 <= 8000
        assert "llm_budget_exceeded" in [r.kind for r in _audit(rt)]

        with pytest.raises(RerunError, match="raise llm.max_calls_per_case"):
            rerun(rt, case.id)  # the same budget would stop it again at once
        assert len(server.chats) == sent

        raised = _runtime(tmp_path, server, max_tokens_per_case=100_000, max_tokens=256)
        done = rerun(raised, case.id)

    assert done.halt is None and done.verdict == "malicious" and "hunter@0" in done.stages_done
    assert done.llm_tokens <= 100_000 and done.llm_tokens > 1520


@pytest.mark.timeout(120)
def test_the_request_budget_stops_a_model_that_keeps_calling_tools(tmp_path: Path) -> None:
    def busy(body: dict[str, Any]) -> Reply:
        return call_tool("alert_events", {"alert_id": ALERT.id}, usage={"prompt_tokens": 100, "completion_tokens": 5})

    with OpenAIServer(busy) as server:
        rt = _runtime(tmp_path, server, max_calls_per_case=3)
        case = investigate(rt, ALERT)
    assert len(server.chats) == 3 and case.llm_calls == 3
    assert case.halt is not None and case.halt.reason == "budget_exhausted" and case.status == "escalated"


def test_a_crash_that_is_not_the_model_still_fails_and_is_retried(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the model's failures are escalations: a bug in a playbook stage stays a bounded retry."""
    from siemcrew.crew.brains import playbook

    def broken(ctx: Any) -> Any:
        raise RuntimeError("a bug in the impact playbook")

    original = playbook.CONCLUSIONS["impact"]
    monkeypatch.setitem(playbook.CONCLUSIONS, "impact", broken)
    with OpenAIServer(Hunter(None)) as server:
        rt = _runtime(tmp_path, server)
        with pytest.raises(RuntimeError, match="a bug in the impact playbook"):
            investigate(rt, ALERT)
    case = rt.cases.list()[0]
    assert case.status == "failed" and case.halt is None and retryable(case)
    assert "hunter@0" in case.stages_done
    monkeypatch.setitem(playbook.CONCLUSIONS, "impact", original)  # fixed
    with OpenAIServer(Hunter(None)) as server:
        retried = run_case(_runtime(tmp_path, server), case)
    assert retried.status != "failed" and retried.halt is None
    hunts = [r.data["round"] for r in _audit(rt) if r.kind == "stage" and r.data["stage"] == "hunter"]
    assert hunts.count(0) == 1  # the retry kept round 0's hunt: the model was not asked for it again


def test_rerun_from_the_command_line_refuses_a_case_that_was_not_halted(tmp_path: Path) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text((EXAMPLES / "demo.yaml").read_text(encoding="utf-8").replace(
        "home: ../.siemcrew-demo", f"home: {tmp_path / 'home'}").replace("events: [events]", f"events: [{EXAMPLES / 'events'}]")
        .replace("alerts: [alerts]", f"alerts: [{EXAMPLES / 'alerts'}]").replace("assets_file: assets.yaml",
                                                                                  f"assets_file: {EXAMPLES / 'assets.yaml'}"),
        encoding="utf-8")
    done = run_cli("investigate", "--alert", str(EXAMPLES / "alerts" / "demo-4-procdump.json"), "--config", str(config),
                   "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout)[0]
    assert row["halt"] is None and row["llm_calls"] == 0 and row["brain_calls"] > 0
    refused = run_cli("rerun", row["id"], "--config", str(config))
    assert refused.returncode == 1 and "nothing to rerun" in refused.stdout + refused.stderr
