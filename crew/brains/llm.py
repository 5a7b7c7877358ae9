"""A real model as a brain, under a per-case request and token budget, every request on the record.

The model is any crewAI provider (`crewai.LLM`) or an OpenAI-compatible `base_url` (vLLM,
llama.cpp). Whatever it says, the deterministic gates still decide: findings must cite evidence,
the verifier's checks and the response policy are code.

Counting: a call of the brain is one answer asked of the model (an agent step, or one of crewAI's
converter re-asks with `response_model`); it may be several HTTP requests when the provider SDK retries.
`case.llm_calls` counts the requests, seen on the wire through crewAI's transport `interceptor`
(OpenAI and Anthropic providers; one per call where it cannot be attached); `case.llm_tokens` adds the
provider's `usage` for the call (crewAI's per-LLM usage totals, before and after), or an estimate of the
prompt (messages, tool schemas, response schema) plus the answer when the provider reports none. The
budget is checked before each call against what it may cost: the counted requests plus one, the counted
tokens plus the prompt's estimate plus `max_tokens` (the answer cap sent with the request).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import siemcrew.crew.offline  # noqa: F401  (before crewai)
import httpx
from crewai import BaseLLM
from crewai.llms.hooks.base import BaseInterceptor
from pydantic import ConfigDict, Field

from siemcrew.config.settings import LlmSettings, secret
from siemcrew.crew.models import sha256_of


class BudgetExceeded(RuntimeError):
    """The case's next model call would go past its LLM request or token budget: nothing is sent, the
    stage stops and the case is escalated to a human ("needs human: LLM budget exhausted")."""


class ModelUnavailable(RuntimeError):
    """The model did not answer usably: it timed out, kept failing after the SDK's retries, or sent
    something that is not a completion (a body that is not JSON, an error in a 200). One exception
    type, whatever the provider SDK raised underneath (kept as `__cause__`)."""


class ModelHalted(RuntimeError):
    """A stage run on a model stopped: the model failed (ModelUnavailable, or an answer crewAI could not
    use, e.g. an empty one) or the case's budget ran out. The case is escalated, never left `failed`."""

    def __init__(self, reason: str, stage: str, detail: str) -> None:
        super().__init__(f"{stage}: {reason}: {detail}")
        self.reason = reason  # "model_unavailable" | "budget_exhausted"
        self.stage = stage
        self.detail = detail

    @classmethod
    def of(cls, stage: str, exc: BaseException | None, halted: BaseException | None) -> "ModelHalted":
        """What stopped the stage: the failure the brain recorded first (crewAI's converter swallows
        exceptions and re-asks), else the exception the stage ended with."""
        cause = halted or exc
        chain = _chain(cause) + _chain(exc)
        reason = "budget_exhausted" if any(isinstance(e, BudgetExceeded) for e in chain) else "model_unavailable"
        text = str(cause) if isinstance(cause, (BudgetExceeded, ModelUnavailable)) else f"{type(cause).__name__}: {cause}"
        return cls(reason, stage, " ".join(text.split())[:500])


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


class RequestMeter(BaseInterceptor[httpx.Request, httpx.Response]):
    """Sees every HTTP request the provider SDK sends for a call, its retries included (crewAI's public
    transport interceptor): the attempt number (the SDK's `x-stainless-retry-count`) and the status, or
    none when no answer came (a timeout, a dropped connection)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []

    def on_outbound(self, message: httpx.Request) -> httpx.Request:
        try:
            attempt = int(message.headers.get("x-stainless-retry-count") or 0)
        except ValueError:
            attempt = 0
        with self._lock:
            self._requests.append({"attempt": attempt, "status": None, "seconds": None, "started": time.monotonic()})
        return message

    def on_inbound(self, message: httpx.Response) -> httpx.Response:
        with self._lock:
            waiting = [r for r in self._requests if r["status"] is None]
            if waiting:
                waiting[-1]["status"] = message.status_code
                waiting[-1]["seconds"] = round(time.monotonic() - waiting[-1]["started"], 3)
        return message

    async def aon_outbound(self, message: httpx.Request) -> httpx.Request:
        return self.on_outbound(message)

    async def aon_inbound(self, message: httpx.Response) -> httpx.Response:
        return self.on_inbound(message)

    def take(self) -> list[dict[str, Any]]:
        """The requests seen since the last `take`, oldest first, for the audit record."""
        with self._lock:
            taken, self._requests = self._requests, []
        now = time.monotonic()
        return [{"attempt": r["attempt"], "status": r["status"],
                 "seconds": r["seconds"] if r["seconds"] is not None else round(now - r["started"], 3)}
                for r in taken]


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


def estimate_tokens(messages: Any, tools: Any = None, response_model: Any = None) -> int:
    """About four characters a token, over everything the request carries: the messages, the tool schemas
    (3-6 KB for the hunter's tools) and the response schema of a converter re-ask."""
    text = json.dumps(messages, default=str)
    if tools:
        text += json.dumps(tools, default=str)
    schema = getattr(response_model, "model_json_schema", None)
    if callable(schema):
        text += json.dumps(schema(), default=str)
    return len(text) // 4 + 1


class BudgetedLLM(BaseLLM):
    model_config = ConfigDict(arbitrary_types_allowed=True)
    inner: Any = Field(default=None, exclude=True)
    ctx: Any = Field(default=None, exclude=True)
    meter: Any = Field(default=None, exclude=True)  # a RequestMeter on the inner model's HTTP client, if any
    role: str = "hunter"
    max_calls: int = 60  # requests to the model per case
    max_tokens: int = 200_000  # tokens per case
    answer_tokens: int = 2048  # the answer cap of one call (`max_tokens` in each request)
    limits: str = ""  # the per-request bounds the inner model was built with, for error messages

    def supports_function_calling(self) -> bool:
        supports = getattr(self.inner, "supports_function_calling", None)
        return bool(supports()) if callable(supports) else True

    def get_context_window_size(self) -> int:
        size = getattr(self.inner, "get_context_window_size", None)
        return int(size()) if callable(size) else 32_000

    def get_input_tokens_count(self, messages: Any, tools: Any = None, response_model: Any = None) -> int:
        return estimate_tokens(messages, tools, response_model)

    def _usage(self) -> tuple[int, int, int]:
        """The inner model's cumulative provider usage (prompt, completion, total): crewAI adds each
        response's `usage` to it; zeros when the provider reports none or the model is not a crewAI LLM."""
        summary = getattr(self.inner, "get_token_usage_summary", None)
        if not callable(summary):
            return 0, 0, 0
        try:
            usage = summary()
        except Exception:  # noqa: BLE001 - a stand-in without usage tracking: estimate instead
            return 0, 0, 0
        return (int(getattr(usage, "prompt_tokens", 0) or 0), int(getattr(usage, "completion_tokens", 0) or 0),
                int(getattr(usage, "total_tokens", 0) or 0))

    def _requests(self) -> list[dict[str, Any]]:
        """The requests a call sent: as seen on the wire, else (no meter) one, status unknown."""
        if self.meter is not None:
            return self.meter.take()
        return [{"attempt": 0, "status": None, "seconds": None}]

    def call(self, messages: Any, tools: Any = None, callbacks: Any = None, available_functions: Any = None,
             from_task: Any = None, from_agent: Any = None, response_model: Any = None) -> Any:
        ctx, case = self.ctx, self.ctx.case
        halted = getattr(ctx, "halted", None)
        if halted is not None:
            # This stage's model already failed or ran out (crewAI's converter re-asks after any error):
            # nothing more is sent; the flow escalates the case.
            raise type(halted)(str(halted))
        prompt = _strip(messages)
        purpose = "convert" if response_model is not None else "agent"
        prompt_estimate = estimate_tokens(prompt, tools, response_model)
        expected = prompt_estimate + self.answer_tokens
        if case.llm_calls + 1 > self.max_calls or case.llm_tokens + expected > self.max_tokens:
            self.ctx.audit("llm_budget_exceeded", {
                "role": self.role, "purpose": purpose, "calls": case.llm_calls, "max_calls": self.max_calls,
                "tokens": case.llm_tokens, "max_tokens": self.max_tokens, "next_call_estimate": expected})
            exc = BudgetExceeded(f"LLM budget exhausted for {case.id} ({self.role}): {case.llm_calls} of "
                                 f"{self.max_calls} requests and {case.llm_tokens} of {self.max_tokens} tokens "
                                 f"used, the next call may need {expected}")
            ctx.halted = exc
            raise exc
        if self.meter is not None:
            self.meter.take()  # nothing stale
        before = self._usage()
        try:
            answer = self.inner.call(prompt, tools=tools, callbacks=callbacks, available_functions=None,
                                     from_task=from_task, from_agent=from_agent, response_model=response_model)
        except Exception as exc:
            requests = self._requests()
            spent = self._usage()[2] - before[2]
            case.llm_calls += len(requests)
            case.llm_tokens += max(spent, 0)  # failed requests carry no usage; nothing is guessed for them
            case.brain_calls += 1
            if _passes_through(exc):
                self.ctx.audit("llm_call", {"brain": "llm", "model": self.model, "role": self.role,
                                            "purpose": purpose, "requests": requests, "error": _describe(exc)})
                raise
            reason = _describe(exc)
            self.ctx.audit("llm_call_failed", {"brain": "llm", "model": self.model, "role": self.role,
                                               "purpose": purpose, "error": reason, "requests": requests,
                                               "prompt_digest": sha256_of(prompt)})
            failure = ModelUnavailable(f"model {self.model} failed for {case.id} ({self.role}): {reason} "
                                       f"[{self.limits}]")
            ctx.halted = failure
            raise failure from exc
        requests = self._requests()
        after = self._usage()
        prompt_tokens, completion_tokens, total = (a - b for a, b in zip(after, before))
        if total > 0:
            source = "usage"
        else:
            source = "estimate"
            prompt_tokens, completion_tokens = prompt_estimate, _size(answer)
            total = prompt_tokens + completion_tokens
        case.llm_calls += len(requests)
        case.llm_tokens += total
        case.brain_calls += 1
        self.ctx.audit("llm_call", {"brain": "llm", "model": self.model, "role": self.role, "purpose": purpose,
                                    "requests": requests, "retries": len(requests) - 1,
                                    "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                    "tokens": total, "counted_from": source,
                                    "prompt_digest": sha256_of(prompt), "answer_digest": sha256_of(str(answer))})
        return answer


_MODELS = threading.local()
"""This thread's provider models, by their options: building one costs two TLS contexts (~0.1 s of CPU,
a fifth of a worker's CPU per alert when built per role and case) and drops the connection pool. A thread
uses its model for one call at a time, so the meter's and the usage counter's deltas stay the call's."""
MODELS_KEPT = 4


def _provider_model(settings: LlmSettings) -> tuple[Any, RequestMeter | None]:
    """The crewAI model for these settings, kept per thread (a changed setting or secret builds a new one)."""
    from crewai import LLM

    # timeout / max_retries go to the provider SDK's client (openai: per request, retries with
    # backoff honouring Retry-After); max_tokens goes into every request body.
    options: dict[str, Any] = dict(
        model=settings.model, base_url=settings.base_url, temperature=settings.temperature,
        api_key=secret(settings.api_key_env) if settings.api_key_env else None,
        timeout=settings.timeout_s, max_retries=settings.max_retries, max_tokens=settings.max_tokens)
    key = sha256_of(json.dumps(options, sort_keys=True, default=str))
    kept: dict[str, tuple[Any, RequestMeter | None]] = getattr(_MODELS, "kept", None) or {}
    _MODELS.kept = kept
    if key in kept:
        return kept[key]
    meter: RequestMeter | None = None
    inner: Any = None
    if not _proxied(settings.base_url):
        meter = RequestMeter()
        try:
            inner = LLM(**options, interceptor=meter)
        except Exception as exc:  # noqa: BLE001 - providers without interceptors: one request per call
            if "interceptor" not in str(exc).lower():
                raise
            meter, inner = None, None
    if inner is None:
        inner = LLM(**options)
    if meter is not None and not (getattr(inner, "interceptor", None) is meter and type(inner).__module__.startswith(
            ("crewai.llms.providers.openai", "crewai.llms.providers.anthropic"))):
        meter = None  # kept by a provider that does not use it: one request per call
    if len(kept) >= MODELS_KEPT:
        kept.clear()
    kept[key] = (inner, meter)
    return inner, meter


def _proxied(base_url: str | None) -> bool:
    """Does an environment proxy apply to the model's address? crewAI's interceptor transport would not go
    through it (httpx ignores the environment's proxies once a transport is given)."""
    host = urlsplit(base_url or "https://api.openai.com/v1").hostname or ""
    scheme = urlsplit(base_url or "https://").scheme or "https"
    proxies = urllib.request.getproxies()
    if not (proxies.get(scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)


def budgeted_llm(settings: LlmSettings, ctx: Any, inner: Any = None) -> BudgetedLLM:
    meter: RequestMeter | None = None
    if inner is None:
        inner, meter = _provider_model(settings)
    limits = f"timeout {settings.timeout_s:g}s per request, up to {settings.max_retries} retries"
    return BudgetedLLM(model=settings.model, inner=inner, ctx=ctx, role=ctx.agent, limits=limits, meter=meter,
                       max_calls=settings.max_calls_per_case, max_tokens=settings.max_tokens_per_case,
                       answer_tokens=settings.max_tokens)
