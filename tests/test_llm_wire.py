"""The LLM brain at the wire: crewAI's `LLM` (native OpenAI provider, the openai SDK underneath) with a
`base_url` on an OpenAI-compatible server on 127.0.0.1 (`emulators/openai_server.py`), driven by a
script. What the server received is asserted, and the request bounds the settings give
(`timeout_s`, `max_retries`, `max_tokens`) are shown to hold against a hung, rate-limited, failing
and garbled model."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES

from siemcrew.config.settings import LlmSettings, Settings, SettingsError
from siemcrew.crew.audit import read as read_audit
from siemcrew.crew.brains.llm import BudgetedLLM, ModelUnavailable, budgeted_llm
from siemcrew.crew.context import InvestigationContext
from siemcrew.crew.models import Alert, Case
from siemcrew.crew.runtime import Runtime

from emulators.openai_server import (  # isort: skip
    LookupHost,
    OpenAIServer, bad_arguments, call_tool, empty, hang, malformed, rate_limited, server_error, text,
    unknown_tool,
)

from crewai import LLM, Agent, Crew, Task  # noqa: E402  (after siemcrew: offline switches first)

MODEL = "scripted-model"
KEY_ENV = "SIEMCREW_TEST_LLM_KEY"
KEY = "sk-wire-test-4f1c9e0b7a"

HOST_TOOL = {"type": "function", "function": {
    "name": "host_activity", "description": "What a host did around the alert.",
    "parameters": {"type": "object", "properties": {"host": {"type": "string"}}, "required": ["host"]}}}


def _brain(tmp_path: Path, server: OpenAIServer, **llm: Any) -> tuple[BudgetedLLM, InvestigationContext]:
    """The brain the runtime builds for a role, with the model at the fake server."""
    config = {"model": f"openai/{MODEL}", "base_url": server.base_url, "api_key_env": KEY_ENV,
              "roles": ["triage"], "timeout_s": 5, "max_retries": 0, **llm}
    settings = Settings.load(None, home=str(tmp_path / "home"), llm=config)
    runtime = Runtime(settings)
    alert = Alert.model_validate_json((EXAMPLES / "alerts" / "demo-4-procdump.json").read_text(encoding="utf-8"))
    ctx = InvestigationContext(case=Case(id="case-wire", alerts=[alert]), runtime=runtime, agent="triage")
    brain = runtime.brain("triage", ctx)
    assert isinstance(brain, BudgetedLLM)
    return brain, ctx


def _kinds(ctx: InvestigationContext) -> list[str]:
    return [r.kind for r in read_audit(ctx.runtime.settings.home_path / "audit.jsonl")]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


# -- settings ---------------------------------------------------------------------------------------
def test_llm_request_bounds_have_defaults_and_are_validated(tmp_path: Path) -> None:
    plain = LlmSettings(model="openai/x")
    assert (plain.timeout_s, plain.max_retries, plain.max_tokens) == (60.0, 2, 2048)
    config = tmp_path / "llm.yaml"
    config.write_text("llm:\n  model: openai/x\n  timeout_s: 7.5\n  max_retries: 0\n  max_tokens: 512\n", encoding="utf-8")
    loaded = Settings.load(config, home=str(tmp_path / "home")).llm
    assert loaded is not None and (loaded.timeout_s, loaded.max_retries, loaded.max_tokens) == (7.5, 0, 512)
    for bad in ({"timeout_s": 0}, {"max_retries": -1}, {"max_tokens": 0}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            Settings.load(None, home=str(tmp_path / "home"), llm={"model": "openai/x", **bad})


def test_a_thread_keeps_its_provider_model_across_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building a provider model costs two TLS contexts: a thread builds one per setting and reuses it for
    every case (its own connection pool); another thread, a changed setting or a rotated key builds anew."""
    import threading

    with OpenAIServer([text("first"), text("second")], api_key=KEY) as server:
        first, first_ctx = _brain(tmp_path, server)
        second, second_ctx = _brain(tmp_path / "other", server)
        assert first is not second and first.inner is second.inner and first.meter is second.meter
        assert (first.call([{"role": "user", "content": "a"}]), second.call([{"role": "user", "content": "b"}])) == (
            "first", "second")
        assert (first_ctx.case.llm_calls, second_ctx.case.llm_calls) == (1, 1)  # each case counts its own
        elsewhere: list[Any] = []
        thread = threading.Thread(target=lambda: elsewhere.append(_brain(tmp_path / "t", server)[0].inner))
        thread.start()
        thread.join()
        assert elsewhere and elsewhere[0] is not first.inner
        assert _brain(tmp_path / "t2", server, timeout_s=9)[0].inner is not first.inner
        monkeypatch.setenv(KEY_ENV, "sk-rotated")
        assert _brain(tmp_path / "t3", server)[0].inner is not first.inner


# -- answers round-trip -----------------------------------------------------------------------------
def test_answer_round_trip_sends_model_messages_max_tokens_and_key(tmp_path: Path) -> None:
    with OpenAIServer([text("triage says: look closer", usage={"prompt_tokens": 40, "completion_tokens": 6})],
                      api_key=KEY) as server:
        brain, ctx = _brain(tmp_path, server, max_tokens=321, timeout_s=7)
        messages = [{"role": "system", "content": "You are triage.", "cache_breakpoint": True},
                    {"role": "user", "content": "Current Task: judge the alert", "cache_breakpoint": True}]
        answer = brain.call(messages)

    assert answer == "triage says: look closer"
    assert len(server.chats) == 1 and not server.errors
    request = server.chats[0]
    body = request.body
    assert body["model"] == MODEL  # the provider prefix is crewAI's routing, not the wire's
    assert body["messages"] == [{"role": "system", "content": "You are triage."},
                                {"role": "user", "content": "Current Task: judge the alert"}]
    assert body["max_tokens"] == 321 and body["temperature"] == 0.0
    assert not body.get("stream") and "tools" not in body
    assert not {"timeout", "max_retries", "api_key", "base_url"} & set(body)  # client settings stay client-side
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-stainless-read-timeout"] == "7.0"  # the SDK's read timeout is timeout_s
    assert request.headers["x-stainless-retry-count"] == "0"
    assert ctx.case.llm_calls == 1
    assert "llm_call" in _kinds(ctx)
    assert KEY not in (ctx.runtime.settings.home_path / "audit.jsonl").read_text(encoding="utf-8")


def test_tool_call_round_trip(tmp_path: Path) -> None:
    with OpenAIServer([call_tool("host_activity", {"host": "WS01"})]) as server:
        brain, _ = _brain(tmp_path, server)
        answer = brain.call([{"role": "user", "content": "hunt"}], tools=[HOST_TOOL])

    assert isinstance(answer, list) and len(answer) == 1
    call = answer[0]
    assert call.type == "function" and call.function.name == "host_activity"
    assert json.loads(call.function.arguments) == {"host": "WS01"} and call.id.startswith("call_")
    body = server.chats[0].body
    assert [t["function"]["name"] for t in body["tools"]] == ["host_activity"]
    assert body["tools"][0]["type"] == "function"
    assert body["tools"][0]["function"]["parameters"]["required"] == ["host"]
    assert body["tool_choice"] == "auto" and body["max_tokens"] == 2048


def _kickoff(llm: Any, tool: LookupHost) -> Any:
    agent = Agent(role="triage", goal="judge the alert", backstory="an analyst", llm=llm, tools=[tool],
                  max_retry_limit=0, max_iter=6, allow_delegation=False, verbose=False)
    task = Task(description="Look up host WS01 and say what it is.", expected_output="one sentence", agent=agent)
    return Crew(agents=[agent], tasks=[task], verbose=False).kickoff()


def test_an_agent_runs_a_tool_and_answers_over_the_wire(tmp_path: Path) -> None:
    """The executor's loop through the brain: tool call out, tool result back as a `tool` message."""

    def script(body: dict[str, Any]) -> Any:
        results = [m for m in body["messages"] if m["role"] == "tool"]
        if not results:
            return call_tool("lookup_host", {"host": "WS01"})
        return text(f"WS01: {results[-1]['content']}")

    tool = LookupHost(ran=[])
    with OpenAIServer(script) as server:
        brain, ctx = _brain(tmp_path, server)
        out = _kickoff(brain, tool)

    assert tool.ran == ["WS01"]
    assert out.raw == "WS01: host WS01 is a workstation in Finance"
    assert len(server.chats) == 2 and not server.errors
    first, second = (r.body for r in server.chats)
    assert [t["function"]["name"] for t in first["tools"]] == ["lookup_host"]
    assistant, result = second["messages"][-2:]
    call_id = assistant["tool_calls"][0]["id"]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["function"]["name"] == "lookup_host"
    assert result == {"role": "tool", "tool_call_id": call_id, "name": "lookup_host",
                      "content": "host WS01 is a workstation in Finance"}
    assert ctx.case.llm_calls == 2


def test_unknown_tools_and_bad_arguments_reach_no_tool(tmp_path: Path) -> None:
    tool = LookupHost(ran=[])
    with OpenAIServer([unknown_tool("format_disk"), bad_arguments("lookup_host"), text("nothing to add")]) as server:
        brain, _ = _brain(tmp_path, server)
        out = _kickoff(brain, tool)

    assert out.raw == "nothing to add" and tool.ran == []
    assert len(server.chats) == 3
    replies = [m for m in server.chats[2].body["messages"] if m["role"] == "tool"]
    assert replies[0]["name"] == "format_disk" and replies[0]["content"] == "Tool not found"
    assert replies[1]["name"] == "lookup_host" and "valid JSON" in replies[1]["content"]


def test_an_empty_answer_ends_the_stage_with_an_error(tmp_path: Path) -> None:
    """crewAI up to 1.15.3x raises at the first empty answer; later releases ask once more first. Either way
    the stage ends with a clear error, and the model is never asked a third time."""
    with OpenAIServer([empty(), empty(), text("never asked")]) as server:
        brain, _ = _brain(tmp_path, server)
        with pytest.raises(ValueError, match="empty|no content"):
            _kickoff(brain, LookupHost(ran=[]))
    assert len(server.chats) in (1, 2)


# -- faults: bounded by timeout_s and max_retries ------------------------------------------------------
@pytest.mark.timeout(60)
def test_429_is_retried_after_retry_after(tmp_path: Path) -> None:
    with OpenAIServer([rate_limited(retry_after=1), text("after the wait")]) as server:
        brain, ctx = _brain(tmp_path, server, max_retries=2)
        assert brain.call([{"role": "user", "content": "go"}]) == "after the wait"

    first, second = server.chats
    assert second.at - first.at >= 0.95  # Retry-After: 1, not the SDK's 0.5 s first backoff
    assert [r.headers["x-stainless-retry-count"] for r in server.chats] == ["0", "1"]
    assert ctx.case.llm_calls == 2 and ctx.case.brain_calls == 1  # the retried request counts too


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_retries", [0, 2])
def test_500_is_retried_max_retries_times_then_fails_clearly(tmp_path: Path, max_retries: int) -> None:
    replies = [server_error(500)] * (max_retries + 1) + [text("one retry too many")]
    with OpenAIServer(replies) as server:
        brain, ctx = _brain(tmp_path, server, max_retries=max_retries)
        with pytest.raises(ModelUnavailable, match=r"HTTP 500: The server had an error") as raised:
            brain.call([{"role": "user", "content": "go"}])

    assert len(server.chats) == max_retries + 1
    assert f"up to {max_retries} retries" in str(raised.value) and "case-wire" in str(raised.value)
    assert ctx.case.llm_calls == max_retries + 1 and ctx.case.llm_tokens == 0  # sent, but nothing answered
    assert "llm_call_failed" in _kinds(ctx)


@pytest.mark.timeout(60)
def test_a_hung_model_fails_the_call_within_the_timeout(tmp_path: Path) -> None:
    with OpenAIServer([hang(30), text("too late")]) as server:
        brain, ctx = _brain(tmp_path, server, timeout_s=1, max_retries=0)
        started = time.monotonic()
        with pytest.raises(ModelUnavailable, match="timed out"):
            brain.call([{"role": "user", "content": "go"}])
        elapsed = time.monotonic() - started

    assert elapsed < 15  # the server would have held it for 30 s
    assert len(server.chats) == 1
    assert "llm_call_failed" in _kinds(ctx)


@pytest.mark.timeout(60)
def test_a_hung_model_is_retried_and_still_bounded(tmp_path: Path) -> None:
    with OpenAIServer([hang(30), hang(30), text("too late")]) as server:
        brain, _ = _brain(tmp_path, server, timeout_s=1, max_retries=1)
        started = time.monotonic()
        with pytest.raises(ModelUnavailable, match="timed out"):
            brain.call([{"role": "user", "content": "go"}])
        elapsed = time.monotonic() - started

    assert len(server.chats) == 2 and elapsed < 20


def test_a_malformed_body_is_a_clear_error_ends_the_stage_and_the_next_stage_works(tmp_path: Path) -> None:
    with OpenAIServer([malformed(), text("back to normal")]) as server:
        brain, ctx = _brain(tmp_path, server, max_retries=2)
        with pytest.raises(ModelUnavailable, match="not JSON"):
            brain.call([{"role": "user", "content": "go"}])
        assert len(server.chats) == 1  # a 200 that does not parse is not retried
        # the stage is over: crewAI's converter would re-ask, nothing more is sent to a failed model
        with pytest.raises(ModelUnavailable, match="not JSON"):
            brain.call([{"role": "user", "content": "again"}])
        assert len(server.chats) == 1 and ctx.halted is not None
        # the next stage (a new brain on the same case) asks the model again
        next_ctx = InvestigationContext(case=ctx.case, runtime=ctx.runtime, agent="hunter")
        assert ctx.runtime.settings.llm is not None
        following = budgeted_llm(ctx.runtime.settings.llm, next_ctx)
        assert following.call([{"role": "user", "content": "again"}]) == "back to normal"
    assert ctx.case.llm_calls == 2  # the garbled answer was a request too


def test_a_wrong_key_is_not_retried_and_never_shown(tmp_path: Path) -> None:
    with OpenAIServer([text("never")], api_key="sk-the-right-one") as server:
        brain, ctx = _brain(tmp_path, server, max_retries=2)
        with pytest.raises(ModelUnavailable, match="HTTP 401") as raised:
            brain.call([{"role": "user", "content": "go"}])
    assert len(server.chats) == 1
    assert KEY not in str(raised.value)
    assert KEY not in (ctx.runtime.settings.home_path / "audit.jsonl").read_text(encoding="utf-8")


# -- the server itself: streaming and model listing ---------------------------------------------------
def test_streamed_answers_and_tool_calls_arrive_whole(tmp_path: Path) -> None:
    long_text = "a streamed answer that spans several chunks of sixteen characters"
    with OpenAIServer([text(long_text), call_tool("host_activity", {"host": "WS01", "window": 30})]) as server:
        llm = LLM(model=f"openai/{MODEL}", base_url=server.base_url, api_key="k", stream=True, max_retries=0,
                  timeout=5, max_tokens=64)
        assert llm.call([{"role": "user", "content": "go"}]) == long_text
        calls = llm.call([{"role": "user", "content": "hunt"}], tools=[HOST_TOOL])
    body = server.chats[0].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 64
    names = [c.function.name if hasattr(c, "function") else c["function"]["name"] for c in calls]
    arguments = [c.function.arguments if hasattr(c, "function") else c["function"]["arguments"] for c in calls]
    assert names == ["host_activity"] and json.loads(arguments[0]) == {"host": "WS01", "window": 30}


def test_models_are_listed_and_a_strict_server_rejects_unknown_fields() -> None:
    import httpx
    from openai import BadRequestError, OpenAI

    with OpenAIServer([text("unused")], api_key="k") as server:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=5)
        assert [m.id for m in client.models.list()] == [MODEL]
        with pytest.raises(BadRequestError, match="cache_breakpoint"):
            client.chat.completions.create(model=MODEL, messages=[
                {"role": "user", "content": "hi", "cache_breakpoint": True}])  # type: ignore[misc, list-item]
        assert httpx.get(f"{server.base_url}/models", timeout=5).status_code == 401
    assert len(server.chats) == 1 and not server.errors
