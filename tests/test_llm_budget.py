"""Honest LLM budgets, at the wire: crewAI's `LLM` (native OpenAI provider, the openai SDK underneath) on the
OpenAI-compatible server in `emulators/openai_server.py`. Tokens are the server's `usage` numbers when it
sends them and an estimate that includes the tool schemas when it does not; every HTTP request counts,
SDK retries and crewAI's converter re-asks included, and each is on the audit record; the budget is checked
before a call against what the call may cost, so a case never sends a call it cannot afford."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES

from siemcrew.config.settings import Settings
from siemcrew.crew.audit import read as read_audit
from siemcrew.crew.brains.llm import BudgetedLLM, BudgetExceeded, RequestMeter, estimate_tokens
from siemcrew.crew.context import InvestigationContext
from siemcrew.crew.models import Alert, Case
from siemcrew.crew.runtime import Runtime

from emulators.openai_server import LookupHost, OpenAIServer, call_tool, hang, server_error, text  # isort: skip

from crewai import Agent, Crew, Task  # noqa: E402  (after siemcrew: offline switches first)
from pydantic import BaseModel  # noqa: E402

KEY_ENV = "SIEMCREW_TEST_LLM_KEY"

# a hunter-sized tool list: what crewAI sends with every agent call (3-6 KB on the real crew)
TOOLS = [{"type": "function", "function": {
    "name": f"tool_{i}", "description": "Searches the events of a host around the alert time. " * 4,
    "parameters": {"type": "object", "properties": {
        "host": {"type": "string", "description": "the host name, as the alert gives it"},
        "minutes": {"type": "integer", "description": "how far either side of the alert time"}},
        "required": ["host"]}}} for i in range(8)]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-budget-test")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def _brain(tmp_path: Path, server: OpenAIServer, **llm: Any) -> tuple[BudgetedLLM, InvestigationContext]:
    config = {"model": "openai/scripted-model", "base_url": server.base_url, "api_key_env": KEY_ENV,
              "roles": ["triage"], "timeout_s": 5, "max_retries": 0, **llm}
    runtime = Runtime(Settings.load(None, home=str(tmp_path / "home"), llm=config))
    alert = Alert.model_validate_json((EXAMPLES / "alerts" / "demo-4-procdump.json").read_text(encoding="utf-8"))
    ctx = InvestigationContext(case=Case(id="case-budget", alerts=[alert]), runtime=runtime, agent="triage")
    brain = runtime.brain("triage", ctx)
    assert isinstance(brain, BudgetedLLM) and isinstance(brain.meter, RequestMeter)  # requests seen on the wire
    return brain, ctx


def _records(ctx: InvestigationContext, *kinds: str) -> list[dict[str, Any]]:
    return [r.data for r in read_audit(ctx.runtime.settings.home_path / "audit.jsonl") if r.kind in kinds]


def _wire(requests: list[dict[str, Any]]) -> list[tuple[int, int | None]]:
    return [(r["attempt"], r["status"]) for r in requests]


def test_tokens_are_the_providers_usage(tmp_path: Path) -> None:
    with OpenAIServer([text("looks routine", usage={"prompt_tokens": 1234, "completion_tokens": 56}),
                       call_tool("tool_0", {"host": "WS01"}, usage={"prompt_tokens": 2000, "completion_tokens": 11})]
                      ) as server:
        brain, ctx = _brain(tmp_path, server)
        brain.call([{"role": "user", "content": "judge"}])
        brain.call([{"role": "user", "content": "hunt"}], tools=TOOLS)

    assert ctx.case.llm_tokens == 1234 + 56 + 2000 + 11  # exactly what the server reported, no estimate
    assert ctx.case.llm_calls == 2 and ctx.case.brain_calls == 2
    first, second = _records(ctx, "llm_call")
    assert (first["prompt_tokens"], first["completion_tokens"], first["tokens"]) == (1234, 56, 1290)
    assert first["counted_from"] == second["counted_from"] == "usage"
    assert _wire(first["requests"]) == [(0, 200)] and first["retries"] == 0


def test_without_usage_the_estimate_counts_the_tool_schemas(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hunt on WS01"}]
    with OpenAIServer([text("done", report_usage=False), text("done", report_usage=False)]) as server:
        brain, ctx = _brain(tmp_path, server)
        brain.call(messages)
        plain = ctx.case.llm_tokens
        brain.call(messages, tools=TOOLS)
        with_tools = ctx.case.llm_tokens - plain

    schema_tokens = len(json.dumps(TOOLS)) // 4
    assert schema_tokens > 700  # the schemas are most of the request
    assert with_tools - plain >= schema_tokens - 1  # the estimate counts what was sent, tools included
    records = _records(ctx, "llm_call")
    assert [r["counted_from"] for r in records] == ["estimate", "estimate"]
    assert records[1]["prompt_tokens"] == estimate_tokens(messages, TOOLS)


@pytest.mark.timeout(60)
def test_a_retried_500_is_two_requests_and_one_answer(tmp_path: Path) -> None:
    with OpenAIServer([server_error(500), text("second time lucky", usage={"prompt_tokens": 100, "completion_tokens": 5})]
                      ) as server:
        brain, ctx = _brain(tmp_path, server, max_retries=1)
        assert brain.call([{"role": "user", "content": "go"}]) == "second time lucky"

    assert [r.headers["x-stainless-retry-count"] for r in server.chats] == ["0", "1"]
    assert ctx.case.llm_calls == 2 and ctx.case.brain_calls == 1 and ctx.case.llm_tokens == 105
    (record,) = _records(ctx, "llm_call")
    assert _wire(record["requests"]) == [(0, 500), (1, 200)] and record["retries"] == 1


@pytest.mark.timeout(60)
def test_requests_that_time_out_are_counted_and_audited(tmp_path: Path) -> None:
    with OpenAIServer([hang(30), text("late but there", usage={"prompt_tokens": 10, "completion_tokens": 3})]) as server:
        brain, ctx = _brain(tmp_path, server, max_retries=1, timeout_s=1)
        assert brain.call([{"role": "user", "content": "go"}]) == "late but there"

    assert len(server.chats) == 2 and ctx.case.llm_calls == 2 and ctx.case.llm_tokens == 13
    (record,) = _records(ctx, "llm_call")
    assert _wire(record["requests"]) == [(0, None), (1, 200)]  # the first got no answer
    assert record["requests"][0]["seconds"] >= 0.9


def test_the_budget_is_checked_before_a_call_that_would_exceed_it(tmp_path: Path) -> None:
    with OpenAIServer([text("a", usage={"prompt_tokens": 700, "completion_tokens": 50}),
                       text("b", usage={"prompt_tokens": 30, "completion_tokens": 20}),
                       text("never sent")]) as server:
        brain, ctx = _brain(tmp_path, server, max_tokens_per_case=1000, max_tokens=100)
        brain.call([{"role": "user", "content": "first"}])
        assert ctx.case.llm_tokens == 750
        brain.call([{"role": "user", "content": "small"}])  # ~10 + 100 (the answer cap) fits in what is left
        assert ctx.case.llm_tokens == 800
        big = [{"role": "user", "content": "x" * 600}]  # ~150 + 100 would go past 1000
        with pytest.raises(BudgetExceeded, match="800 of 1000 tokens"):
            brain.call(big)
        assert len(server.chats) == 2  # refused before anything was sent

    assert ctx.case.llm_tokens <= 1000 and ctx.case.llm_calls == 2
    (refusal,) = _records(ctx, "llm_budget_exceeded")
    assert refusal["next_call_estimate"] == estimate_tokens(big) + 100 and refusal["tokens"] == 800


@pytest.mark.timeout(60)
def test_retries_count_against_the_request_budget(tmp_path: Path) -> None:
    with OpenAIServer([server_error(503), text("ok", usage={"prompt_tokens": 5, "completion_tokens": 1}),
                       text("never sent")]) as server:
        brain, ctx = _brain(tmp_path, server, max_retries=1, max_calls_per_case=2)
        brain.call([{"role": "user", "content": "go"}])
        with pytest.raises(BudgetExceeded, match="2 of 2 requests"):
            brain.call([{"role": "user", "content": "again"}])
    assert len(server.chats) == 2 and ctx.case.llm_calls == 2


class _Verdict(BaseModel):
    verdict: str
    summary: str


def test_converter_re_asks_are_counted_and_audited(tmp_path: Path) -> None:
    """A model that answers prose where the task wants JSON: crewAI's converter asks again with the response
    schema (`response_format`); that request goes through the budget like any other."""

    def script(body: dict[str, Any]) -> Any:
        if body.get("response_format"):
            return text(json.dumps({"verdict": "suspicious", "summary": "as converted"}),
                        usage={"prompt_tokens": 300, "completion_tokens": 20})
        if not any(m["role"] == "tool" for m in body["messages"]):
            return call_tool("lookup_host", {"host": "WS01"}, usage={"prompt_tokens": 700, "completion_tokens": 15})
        return text("It looks suspicious to me.", usage={"prompt_tokens": 500, "completion_tokens": 10})

    with OpenAIServer(script) as server:
        brain, ctx = _brain(tmp_path, server)
        agent = Agent(role="triage", goal="judge the alert", backstory="an analyst", llm=brain, tools=[LookupHost(ran=[])],
                      max_retry_limit=0, max_iter=6, allow_delegation=False, verbose=False)
        task = Task(description="Judge host WS01.", expected_output="a verdict", agent=agent, output_pydantic=_Verdict)
        out = Crew(agents=[agent], tasks=[task], verbose=False).kickoff()

    assert out.pydantic is not None and out.pydantic.summary == "as converted"
    assert [bool(r.body.get("response_format")) for r in server.chats] == [False, False, True]
    assert ctx.case.llm_calls == 3 and ctx.case.llm_tokens == 715 + 510 + 320
    assert [r["purpose"] for r in _records(ctx, "llm_call")] == ["agent", "agent", "convert"]
