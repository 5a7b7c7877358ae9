"""The deterministic playbook brain: a crewAI BaseLLM that drives the same tools through native
function calling, then answers with the task's pydantic output built from the recorded evidence.
"""

from __future__ import annotations

import json
from typing import Any

import siemcrew.crew.offline  # noqa: F401  (before crewai)
from crewai import BaseLLM
from pydantic import ConfigDict, Field

from siemcrew.crew.brains.playbooks import CONCLUSIONS, PLANS
from siemcrew.crew.models import sha256_of

MAX_STEPS = 8


def issued_calls(messages: Any) -> set[str]:
    """Tool calls already made in this task (read back from the conversation)."""
    done: set[str] = set()
    if not isinstance(messages, list):
        return done
    for message in messages:
        for call in (message.get("tool_calls") or []) if isinstance(message, dict) else []:
            fn = call.get("function", {}) if isinstance(call, dict) else {}
            done.add(_key(fn.get("name", ""), fn.get("arguments", "{}")))
    return done


def _key(name: str, arguments: Any) -> str:
    try:
        args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments or {})
    except (TypeError, ValueError):
        args = {"raw": str(arguments)}
    return name + ":" + sha256_of({k: v for k, v in args.items() if v is not None})


class PlaybookBrain(BaseLLM):
    """One per role; `ctx` is the investigation context the tools write into."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    role: str = "triage"
    ctx: Any = Field(default=None, exclude=True)
    steps: int = 0

    def supports_function_calling(self) -> bool:
        return True

    def get_context_window_size(self) -> int:
        return 128_000

    def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
        return 0

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
             from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        ctx = self.ctx
        ctx.case.brain_calls += 1
        names = {t.get("function", {}).get("name") for t in (tools or []) if isinstance(t, dict)}
        plan = PLANS.get(self.role)
        answer: Any
        if plan and names and response_model is None and self.steps < MAX_STEPS:
            done = issued_calls(messages)
            calls = [(n, a) for n, a in plan(ctx) if n in names and _key(n, json.dumps(a, default=str)) not in done]
            if calls:
                self.steps += 1
                answer = [
                    {"id": f"call_{self.role}_{self.steps}_{i}", "type": "function",
                     "function": {"name": n, "arguments": json.dumps({k: v for k, v in a.items() if v is not None}, default=str)}}
                    for i, (n, a) in enumerate(calls)
                ]
                ctx.audit("llm_call", {"brain": "playbook", "role": self.role, "tool_calls": [c[0] for c in calls]})
                return answer
        result = CONCLUSIONS[self.role](ctx)
        text = result.model_dump_json()
        ctx.audit("llm_call", {"brain": "playbook", "role": self.role, "final": type(result).__name__,
                               "result_digest": sha256_of(text)})
        return text
