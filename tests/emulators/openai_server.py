"""An OpenAI-compatible chat server on 127.0.0.1 that the real openai SDK (through crewAI's `LLM` with
`base_url`) talks to, driven by a script instead of a model.

It speaks the wire format of `POST /v1/chat/completions` as OpenAI, vLLM and llama.cpp serve it:
the request's `model`, `messages`, `tools`, `tool_choice`, `max_tokens` / `max_completion_tokens`,
`response_format` and `stream`; the answer's `id`, `object: chat.completion`, `choices[0].message`
with `content` or `tool_calls` (`id`, `type: function`, `function: {name, arguments}` where
`arguments` is a JSON *string*), `finish_reason` (`stop` | `tool_calls` | `length`) and `usage`. With
`stream: true` it answers Server-Sent Events (`chat.completion.chunk` deltas, then `data: [DONE]`),
with a last usage chunk when `stream_options.include_usage` asks for it. `GET /v1/models` lists the
served model. Requests are checked as a strict server checks them: unknown top-level parameters,
unknown message keys (e.g. crewAI's `cache_breakpoint`), a message without a role or a malformed
tool schema get OpenAI's 400 `invalid_request_error`; a wrong bearer token gets 401 when `api_key`
is set.

The script is a callable `(request body as JSON) -> reply`, or a list of replies served in order
(`scripted(...)`). A reply is an `Answer` (content or tool calls, optional usage; usage is estimated
when not given, and left out with `report_usage=False`) or a `Fault`:
  hang(seconds)           accept the request and answer nothing for `seconds` (a hung model: the
                          client's read timeout fires); released at once when the server stops
  rate_limited(after)     429 with `Retry-After` (OpenAI's rate-limit error body)
  server_error(status)    500 (or any status) with OpenAI's error body
  malformed()             200, `Content-Type: application/json`, a body that is not JSON
  empty()                 a completion whose content is empty
  unknown_tool(name)      a tool call naming a tool the request did not offer
  bad_arguments(name)     a tool call whose `arguments` is not JSON
  length(text)            a completion cut at max_tokens (`finish_reason: length`)
A script that runs out, or raises, answers 500 with `x-should-retry: false` (the SDK does not retry
it) and the error is kept in `errors`, so a test sees its own script's mistakes.

Every request is recorded (`requests`, `chats`): method, path, headers, parsed body, raw bytes and
the monotonic time it arrived.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

import siemcrew.crew.offline  # noqa: F401  (before crewai)
from crewai.tools import BaseTool
from pydantic import BaseModel

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"

# What /v1/chat/completions accepts at the top level (OpenAI's API reference, plus what vLLM adds
# that clients send); anything else is "Unrecognized request argument supplied".
REQUEST_KEYS = {
    "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens",
    "temperature", "top_p", "n", "stream", "stream_options", "stop", "presence_penalty", "frequency_penalty",
    "logit_bias", "logprobs", "top_logprobs", "response_format", "seed", "user", "reasoning_effort", "metadata",
    "store", "service_tier", "modalities", "prediction", "audio", "web_search_options", "verbosity",
    "prompt_cache_key", "safety_identifier", "functions", "function_call",
}
MESSAGE_KEYS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal", "function_call", "audio"}
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)  # a str is sent verbatim (bad JSON on purpose)
    id: str | None = None

    def wire(self, index: int) -> dict[str, Any]:
        arguments = self.arguments if isinstance(self.arguments, str) else json.dumps(self.arguments)
        return {"id": self.id or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": self.name, "arguments": arguments}}


@dataclass
class Answer:
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: Literal["stop", "tool_calls", "length"] | None = None
    usage: dict[str, int] | None = None  # {"prompt_tokens", "completion_tokens"}; estimated when None
    report_usage: bool = True  # False: no `usage` in the answer, as some servers do


@dataclass
class Fault:
    kind: Literal["hang", "status", "malformed"]
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    seconds: float = 30.0


Reply = Answer | Fault
Script = Callable[[dict[str, Any]], Reply]


# -- replies ---------------------------------------------------------------------------------------
def text(content: str, usage: dict[str, int] | None = None, report_usage: bool = True) -> Answer:
    return Answer(content=content, usage=usage, report_usage=report_usage)


def call_tool(name: str, arguments: dict[str, Any] | str | None = None, *more: ToolCall,
              usage: dict[str, int] | None = None, report_usage: bool = True) -> Answer:
    return Answer(tool_calls=[ToolCall(name, arguments if arguments is not None else {}), *more], usage=usage,
                  report_usage=report_usage)


def hang(seconds: float = 30.0) -> Fault:
    return Fault("hang", seconds=seconds)


def rate_limited(retry_after: float = 1) -> Fault:
    value = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
    return Fault("status", 429, {"Retry-After": value},
                 _error("Rate limit reached for requests. Please try again in %ss." % value,
                        "requests", "rate_limit_exceeded"))


def server_error(status: int = 500, message: str = "The server had an error while processing your request.") -> Fault:
    return Fault("status", status, {}, _error(message, "server_error", None))


def malformed() -> Fault:
    return Fault("malformed", 200, {}, b'{"id": "chatcmpl-broken", "object": "chat.completion", "choices": [{"index": 0, "mess')


def empty() -> Answer:
    return Answer(content="")


def unknown_tool(name: str = "format_disk", arguments: dict[str, Any] | None = None) -> Answer:
    return call_tool(name, arguments or {"target": "everything"})


def bad_arguments(name: str) -> Answer:
    return call_tool(name, '{"host": "WS01", ')


def length(content: str) -> Answer:
    return Answer(content=content, finish_reason="length")


def scripted(*replies: Reply) -> Script:
    """Serve these replies in order, one per chat request; more requests than replies are an error."""
    queue = list(replies)
    lock = threading.Lock()

    def script(body: dict[str, Any]) -> Reply:
        with lock:
            if not queue:
                raise AssertionError(f"script exhausted: no reply left for request {len(replies) + 1}")
            return queue.pop(0)

    return script


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# -- the server ------------------------------------------------------------------------------------
@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any
    at: float  # time.monotonic() when the request arrived


class OpenAIServer:
    """`with OpenAIServer(script) as server: LLM(model="openai/<model>", base_url=server.base_url, ...)`."""

    def __init__(self, script: Script | Iterable[Reply], model: str = "scripted-model", api_key: str | None = None,
                 strict: bool = True) -> None:
        self.script: Script = script if callable(script) else scripted(*script)
        self.model = model
        self.api_key = api_key
        self.strict = strict
        self.requests: list[Recorded] = []
        self.errors: list[str] = []
        self.lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.base_url = ""

    # -- what the tests read -----------------------------------------------------------------
    @property
    def chats(self) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.method == "POST" and r.path == CHAT_PATH]

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "OpenAIServer":
        handler = type("OpenAIHandler", (_Handler,), {"server_state": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="OpenAIServer", daemon=True)
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hung handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def __enter__(self) -> "OpenAIServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, record: Recorded) -> tuple[int, dict[str, str], Any]:
        """(status, headers, body) where body is a dict (JSON), bytes (verbatim), a Fault or an SSE list."""
        with self.lock:
            self.requests.append(record)
        if self.api_key is not None and record.headers.get("authorization") != f"Bearer {self.api_key}":
            return 401, {}, _error("Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if record.method == "GET" and record.path == MODELS_PATH:
            return 200, {}, {"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 1700000000, "owned_by": "siemcrew-tests"}]}
        if record.method == "GET" and record.path.startswith(MODELS_PATH + "/"):
            name = record.path[len(MODELS_PATH) + 1:]
            if name == self.model:
                return 200, {}, {"id": self.model, "object": "model", "created": 1700000000, "owned_by": "siemcrew-tests"}
            return 404, {}, _error(f"The model `{name}` does not exist.", "invalid_request_error", "model_not_found")
        if record.path != CHAT_PATH:
            return 404, {}, _error(f"Invalid URL ({record.method} {record.path})", "invalid_request_error", None)
        if record.method != "POST":
            return 405, {}, _error("Method not allowed.", "invalid_request_error", None)
        body = record.body
        problem = self._invalid(body)
        if problem is not None:
            return 400, {}, _error(problem[0], "invalid_request_error", None, problem[1])
        try:
            reply = self.script(body)
        except Exception as exc:  # the test's own script is wrong: say so, and do not let the SDK retry it
            with self.lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            return 500, {"x-should-retry": "false"}, _error(f"script error: {exc}", "server_error", None)
        if isinstance(reply, Fault):
            if reply.kind == "hang":
                return 0, {}, reply
            return reply.status, reply.headers, reply.body
        if body.get("stream"):
            return 200, {"Content-Type": "text/event-stream"}, self._chunks(body, reply)
        return 200, {}, self._completion(body, reply)

    def _invalid(self, body: Any) -> tuple[str, str | None] | None:
        if not isinstance(body, dict):
            return "We could not parse the JSON body of your request.", None
        if not body.get("model"):
            return "you must provide a model parameter", "model"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "[] is too short - 'messages'", "messages"
        if not self.strict:
            return None
        unknown = sorted(set(body) - REQUEST_KEYS)
        if unknown:
            return f"Unrecognized request argument supplied: {', '.join(unknown)}", unknown[0]
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return f"Invalid value for 'messages[{index}].role'", f"messages[{index}].role"
            extra = sorted(set(message) - MESSAGE_KEYS)
            if extra:
                return f"Additional properties are not allowed ('{extra[0]}' was unexpected)", f"messages[{index}]"
            if message["role"] == "tool" and not message.get("tool_call_id"):
                return f"Missing required parameter: 'messages[{index}].tool_call_id'", f"messages[{index}].tool_call_id"
        for index, tool in enumerate(body.get("tools") or []):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict) \
                    or not function.get("name"):
                return f"Invalid value for 'tools[{index}]'", f"tools[{index}]"
        return None

    def _message(self, reply: Answer) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
        calls = [call.wire(i) for i, call in enumerate(reply.tool_calls)]
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else (reply.content or ""),
                                   "refusal": None}
        if calls:
            message["tool_calls"] = calls
        finish = reply.finish_reason or ("tool_calls" if calls else "stop")
        return message, finish, calls

    def _usage(self, body: dict[str, Any], reply: Answer, calls: list[dict[str, Any]]) -> dict[str, int]:
        if reply.usage is not None:
            prompt = int(reply.usage.get("prompt_tokens", 0))
            completion = int(reply.usage.get("completion_tokens", 0))
        else:  # an estimate in the provider's way of counting: the prompt includes the tool schemas
            prompt = len(json.dumps(body.get("messages", [])) + json.dumps(body.get("tools") or [])) // 4 + 1
            completion = len((reply.content or "") + json.dumps(calls)) // 4 + 1
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _completion(self, body: dict[str, Any], reply: Answer) -> dict[str, Any]:
        message, finish, calls = self._message(reply)
        answer = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                  "model": body.get("model"), "system_fingerprint": "fp_siemcrew_tests",
                  "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]}
        if reply.report_usage:
            answer["usage"] = self._usage(body, reply, calls)
        return answer

    def _chunks(self, body: dict[str, Any], reply: Answer) -> list[dict[str, Any]]:
        message, finish, calls = self._message(reply)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model"), "system_fingerprint": "fp_siemcrew_tests"}

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        out = [chunk({"role": "assistant", "content": "" if not calls else None})]
        content = message.get("content") or ""
        for start in range(0, len(content), 16):
            out.append(chunk({"content": content[start:start + 16]}))
        for index, call in enumerate(calls):
            arguments = call["function"]["arguments"]
            out.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                              "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            for start in range(0, len(arguments), 16):
                out.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[start:start + 16]}}]}))
        out.append(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage") and reply.report_usage:
            out.append({**base, "choices": [], "usage": self._usage(body, reply, calls)})
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_state: OpenAIServer

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _serve(self) -> None:
        state = self.server_state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        record = Recorded(method=self.command, path=urlsplit(self.path).path,
                          headers={k.lower(): v for k, v in self.headers.items()}, raw=raw, body=body,
                          at=time.monotonic())
        try:
            status, headers, payload = state.handle(record)
        except Exception as exc:  # a server bug shows up as a 500 the SDK does not retry, never a hang
            with state.lock:
                state.errors.append(f"server: {exc!r}")
            status, headers, payload = 500, {"x-should-retry": "false"}, _error(repr(exc), "server_error", None)
        try:
            if isinstance(payload, Fault) and payload.kind == "hang":
                state._stopping.wait(payload.seconds)
                self.close_connection = True  # nothing is ever answered
                return
            if isinstance(payload, list):
                self._stream(payload)
                return
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode("utf-8")
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            self.close_connection = True

    def _stream(self, chunks: list[dict[str, Any]]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in [f"data: {json.dumps(c)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]:
            data = event.encode("utf-8")
            self.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    do_GET = do_POST = do_PUT = do_DELETE = _serve



class _HostArgs(BaseModel):
    host: str


class LookupHost(BaseTool):
    """A tool for agent-loop tests against the server: remembers the hosts it was asked about."""

    name: str = "lookup_host"
    description: str = "Look a host up in the inventory."
    args_schema: type[BaseModel] = _HostArgs
    ran: list[str] = []

    def _run(self, host: str) -> str:
        self.ran.append(host)
        return f"host {host} is a workstation in Finance"
