"""A real model as a brain, under a per-case call and token budget, every call on the record.

The model is any crewAI provider (`crewai.LLM`) or an OpenAI-compatible `base_url` (vLLM,
llama.cpp). Whatever it says, the deterministic gates still decide: findings must cite evidence,
the verifier's checks and the response policy are code.
"""

from __future__ import annotations

import json
from typing import Any

import siemcrew.crew.offline  # noqa: F401  (before crewai)
from crewai import BaseLLM
from pydantic import ConfigDict, Field

from siemcrew.config.settings import LlmSettings, secret
from siemcrew.crew.models import sha256_of


class BudgetExceeded(RuntimeError):
    """The case used up its LLM call or token budget: the case is marked failed (audited) and retried
    a bounded number of times; raise the budget or switch the role to the playbook brain."""


class ModelUnavailable(RuntimeError):
    """The model did not answer usably: it timed out, kept failing after the SDK's retries, or sent
    something that is not a completion (a body that is not JSON, an error in a 200). One exception
    type, whatever the provider SDK raised underneath (kept as `__cause__`)."""


def _passes_through(exc: BaseException) -> bool:
    """Exceptions crewAI itself acts on (context-window summarising, hooks) keep their type."""
    from crewai.hooks.dispatch import HookAborted
    from crewai.llms.base_llm import LLMCallBlockedError
    from crewai.utilities.exceptions.context_window_exceeding_exception import LLMContextLengthExceededError

    return isinstance(exc, (BudgetExceeded, HookAborted, LLMCallBlockedError, LLMContextLengthExceededError))


def _describe(exc: BaseException) -> str:
    """What went wrong, in a line: the status and message of an API error, the JSON error of a body
    that is not JSON, the timeout; never the request (prompts) or the key."""
    cause = exc.__cause__ if isinstance(exc, ConnectionError) and exc.__cause__ else exc
    status = getattr(cause, "status_code", None)
    if isinstance(cause, json.JSONDecodeError):
        return f"the answer is not JSON ({cause.msg} at char {cause.pos})"
    body = getattr(cause, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    text = " ".join(str(message or cause).split())[:300]
    return f"HTTP {status}: {text}" if status else f"{type(cause).__name__}: {text}"


def _strip(messages: Any) -> Any:
    """crewAI marks messages with `cache_breakpoint`; real APIs reject unknown keys."""
    if not isinstance(messages, list):
        return messages
    return [{k: v for k, v in m.items() if k != "cache_breakpoint"} if isinstance(m, dict) else m for m in messages]


def _size(value: Any) -> int:
    return len(str(value)) // 4 + 1


class BudgetedLLM(BaseLLM):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    inner: Any = Field(default=None, exclude=True)
    ctx: Any = Field(default=None, exclude=True)
    role: str = "hunter"
    max_calls: int = 60
    max_tokens: int = 200_000
    limits: str = ""  # the per-request bounds the inner model was built with, for error messages

    def supports_function_calling(self) -> bool:
        supports = getattr(self.inner, "supports_function_calling", None)
        return bool(supports()) if callable(supports) else True

    def get_context_window_size(self) -> int:
        size = getattr(self.inner, "get_context_window_size", None)
        return int(size()) if callable(size) else 32_000

    def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
        return _size(messages)

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
             from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        case = self.ctx.case
        if case.llm_calls >= self.max_calls or case.llm_tokens >= self.max_tokens:
            self.ctx.audit("llm_budget_exceeded", {"role": self.role, "calls": case.llm_calls, "tokens": case.llm_tokens})
            raise BudgetExceeded(f"LLM budget exhausted for {case.id}: {case.llm_calls} calls, {case.llm_tokens} tokens")
        prompt = _strip(messages)
        try:
            answer = self.inner.call(prompt, tools=tools, callbacks=callbacks, available_functions=None,
                                     from_task=from_task, from_agent=from_agent, response_model=response_model)
        except Exception as exc:
            if _passes_through(exc):
                raise
            reason = _describe(exc)
            self.ctx.audit("llm_call_failed", {"brain": "llm", "model": self.model, "role": self.role,
                                               "error": reason, "prompt_digest": sha256_of(prompt)})
            raise ModelUnavailable(f"model {self.model} failed for {case.id} ({self.role}): {reason} "
                                   f"[{self.limits}]") from exc
        case.llm_calls += 1
        case.llm_tokens += _size(prompt) + _size(answer)
        self.ctx.audit("llm_call", {"brain": "llm", "model": self.model, "role": self.role,
                                    "prompt_digest": sha256_of(prompt), "answer_digest": sha256_of(str(answer)),
                                    "tokens_estimate": _size(prompt) + _size(answer)})
        return answer


def budgeted_llm(settings: LlmSettings, ctx: Any, inner: Any = None) -> BudgetedLLM:
    if inner is None:
        from crewai import LLM

        # timeout / max_retries go to the provider SDK's client (openai: per request, retries with
        # backoff honouring Retry-After); max_tokens goes into every request body.
        inner = LLM(model=settings.model, base_url=settings.base_url, temperature=settings.temperature,
                    api_key=secret(settings.api_key_env) if settings.api_key_env else None,
                    timeout=settings.timeout_s, max_retries=settings.max_retries, max_tokens=settings.max_tokens)
    limits = f"timeout {settings.timeout_s:g}s per request, up to {settings.max_retries} retries"
    return BudgetedLLM(model=settings.model, inner=inner, ctx=ctx, role=ctx.agent, limits=limits,
                       max_calls=settings.max_calls_per_case, max_tokens=settings.max_tokens_per_case)
