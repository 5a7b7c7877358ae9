"""A real model as a brain, under a per-case call and token budget, every call on the record.

The model is any crewAI provider (`crewai.LLM`) or an OpenAI-compatible `base_url` (vLLM,
llama.cpp). Whatever it says, the deterministic gates still decide: findings must cite evidence,
the verifier's checks and the response policy are code.
"""

from __future__ import annotations

from typing import Any

import siemcrew.crew.offline  # noqa: F401  (before crewai)
from crewai import BaseLLM
from pydantic import ConfigDict, Field

from siemcrew.config.settings import LlmSettings, secret
from siemcrew.crew.models import sha256_of


class BudgetExceeded(RuntimeError):
    """The case used up its LLM call or token budget: the case is marked failed (audited) and retried
    a bounded number of times; raise the budget or switch the role to the playbook brain."""


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
        answer = self.inner.call(prompt, tools=tools, callbacks=callbacks, available_functions=None,
                                 from_task=from_task, from_agent=from_agent, response_model=response_model)
        case.llm_calls += 1
        case.llm_tokens += _size(prompt) + _size(answer)
        self.ctx.audit("llm_call", {"brain": "llm", "model": self.model, "role": self.role,
                                    "prompt_digest": sha256_of(prompt), "answer_digest": sha256_of(str(answer)),
                                    "tokens_estimate": _size(prompt) + _size(answer)})
        return answer


def budgeted_llm(settings: LlmSettings, ctx: Any, inner: Any = None) -> BudgetedLLM:
    if inner is None:
        from crewai import LLM

        inner = LLM(model=settings.model, base_url=settings.base_url, temperature=settings.temperature,
                    api_key=secret(settings.api_key_env) if settings.api_key_env else None)
    return BudgetedLLM(model=settings.model, inner=inner, ctx=ctx, role=ctx.agent,
                       max_calls=settings.max_calls_per_case, max_tokens=settings.max_tokens_per_case)
