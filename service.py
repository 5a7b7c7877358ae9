"""`siemcrew serve`: alert hand-offs from Splunk and Kibana, cases and approvals over HTTP.

Requests answer at once; investigations run on a worker thread over the same operations as the
CLI, or, with a task queue configured, on `siemcrew worker` processes (the service only enqueues). Hand-offs are idempotent (Splunk `sid`, Elastic alert uuid), and cases left unfinished by a
crash are picked up again when the service starts.
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Literal

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from pydantic import BaseModel, Field, ValidationError

from siemcrew.config.settings import Settings, SettingsError, secret, serve_token_clashes

log = logging.getLogger("siemcrew.serve")


class Problem(BaseModel):
    """Every error answer: a kind a client can branch on, and what went wrong (a sentence, or one entry per
    invalid field with where it is and why; the offending input is never echoed back)."""

    type: Literal["unauthorized", "forbidden", "not_found", "conflict", "invalid", "too_large", "error"]
    detail: str | list[dict[str, Any]]


PROBLEM_TYPES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not_found", 409: "conflict", 413: "too_large",
                 422: "invalid"}
PROBLEM_TEXT = {400: "the body is not JSON", 401: "no credentials", 403: "wrong credentials, or not allowed for this token",
                404: "no such case, job or route", 409: "the approval cannot be recorded (nothing pending, already "
                "decided, arguments changed since review)", 413: "the body is too large", 422: "the request is invalid"}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for the error statuses a route can answer."""
    return {code: {"model": Problem, "description": PROBLEM_TEXT[code]} for code in codes}


class IntakeAnswer(BaseModel):
    """Alerts admitted (202; 200 with `duplicate` when every one was known), or, for a long list, the job that
    admits them in the background (202 with `job`)."""

    accepted: int | None = None
    case_ids: list[str] = Field(default_factory=list)
    duplicate: bool = False
    job: str | None = None
    alerts: int | None = None
    status: str | None = None


INTAKE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": IntakeAnswer, "description": "every alert was known already (`duplicate: true`)"},
    202: {"model": IntakeAnswer, "description": "admitted; investigated in the background"},
}


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """`openapi_extra` documenting a JSON request body the route validates itself (to answer 422 with the
    limit it broke and without echoing the input)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class Decision(BaseModel):
    by: str | None = Field(default=None, description="must be the authenticated approver, if given")
    reason: str = Field(min_length=1)
    target: str | None = None
    args_sha256: str | None = Field(default=None, description="the full sha256 (64 hex) of the arguments the "
                                                              "approver reviewed; refused if they changed")


class Worker:
    """One investigation at a time, in arrival order; crewAI flows run in this thread. Between them (at most
    every `outbox_every_s` while idle) it sends again the write-backs that are due (crew/outbox.py)."""

    def __init__(self, runtime: Any, outbox_every_s: float = 30.0) -> None:
        self.rt = runtime
        self.outbox_every_s = outbox_every_s
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="siemcrew-worker", daemon=True)
        self.idle = threading.Event()
        self.idle.set()

    def start(self) -> None:
        from siemcrew.crew.operations import retryable

        for status in ("new", "investigating", "failed"):
            for case in self.rt.cases.list(status=status):
                if retryable(case):
                    self.queue.put(case.id)
        self.thread.start()

    def submit(self, case_id: str) -> None:
        self.idle.clear()
        self.queue.put(case_id)

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        from siemcrew.crew.operations import retryable, run_case

        while True:
            try:
                case_id = self.queue.get(timeout=self.outbox_every_s)
            except queue.Empty:
                self._drain()
                continue
            if case_id is None:
                return
            try:
                case = self.rt.cases.get(case_id)
                if retryable(case):
                    run_case(self.rt, case)
            except Exception:  # noqa: BLE001 - the case is marked failed by run_case; keep serving
                log.exception("investigation of %s failed", case_id)
            finally:
                if self.queue.empty():
                    self.idle.set()


    def _drain(self) -> None:
        from siemcrew.crew.operations import drain_outbox, reconcile_containment

        try:
            pending = drain_outbox(self.rt)
            reconcile_containment(self.rt)
        except Exception:  # noqa: BLE001 - the outbox keeps the items; the next round tries again
            log.exception("write-back retry round failed")
            return
        if pending:
            log.warning("%d write-back(s) still pending: %s", len(pending), "; ".join(i.line() for i in pending[:3]))


class Enqueuer:
    """With a task queue (`queue:`): admitted cases are sent to the workers (crew/queue/), this process
    investigates nothing itself. At start it sweeps: work stored but lost on its way to the queue is sent
    again (the beat's sweep does the same periodically)."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
        self.idle = threading.Event()
        self.idle.set()  # nothing is ever worked on here

    def start(self) -> None:
        from siemcrew.crew.queue.sweep import sweep

        try:
            sweep(self.rt)
        except Exception:  # noqa: BLE001 - the beat's sweep tries again; intake must come up
            log.exception("start-up sweep failed")

    def submit(self, case_id: str) -> None:
        self.rt.queue.investigate(case_id, by="serve")

    def stop(self) -> None:
        return None


INTAKE_BATCH = 100  # alerts admitted in one go; a longer list is admitted in the background, in batches
MAX_JOBS_KEPT = 1000


class IntakeJobs:
    """Long alert lists (a backlog replayed after an outage) are admitted on their own thread, one batch at a
    time, so the request answers at once and no request holds the store for minutes; `GET /v1/intake/{job}`
    tells how far it got. Admission is idempotent by alert id: a job cut short by a restart is completed by
    posting the list again."""

    def __init__(self, admit_batch: Callable[[list[Any]], tuple[int, list[str]]]) -> None:
        self.admit_batch = admit_batch
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue[tuple[str, list[Any]] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="siemcrew-intake", daemon=True)
        self.thread.start()

    def submit(self, alerts: list[Any]) -> str:
        job = uuid.uuid4().hex
        with self.lock:
            if len(self.jobs) >= MAX_JOBS_KEPT:  # forget the oldest finished jobs
                for old in [k for k, v in self.jobs.items() if v["state"] in ("done", "failed")][:100]:
                    del self.jobs[old]
            self.jobs[job] = {"job": job, "state": "queued", "total": len(alerts), "admitted": 0, "accepted": 0,
                              "case_ids": [], "error": None}
        self.queue.put((job, alerts))
        return job

    def get(self, job: str) -> dict[str, Any] | None:
        with self.lock:
            found = self.jobs.get(job)
            return {**found, "case_ids": list(found["case_ids"])} if found else None

    def stop(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            job, alerts = item
            self._update(job, state="admitting")
            try:
                for start in range(0, len(alerts), INTAKE_BATCH):
                    accepted, case_ids = self.admit_batch(alerts[start:start + INTAKE_BATCH])
                    with self.lock:
                        entry = self.jobs[job]
                        entry["admitted"] += len(alerts[start:start + INTAKE_BATCH])
                        entry["accepted"] += accepted
                        entry["case_ids"] += [c for c in case_ids if c not in entry["case_ids"]]
                self._update(job, state="done")
            except Exception as exc:  # noqa: BLE001 - reported on the job; what was admitted stays admitted
                log.exception("intake job %s failed", job)
                self._update(job, state="failed", error=f"{type(exc).__name__}: {exc}"[:500])
            del alerts

    def _update(self, job: str, **values: Any) -> None:
        with self.lock:
            self.jobs[job].update(values)


def create_app(settings: Settings, runtime: Any = None) -> FastAPI:
    """The HTTP service; refuses to start (SettingsError) when an intake token or the webhook secret is
    also an approver's token, or two approvers share one: the holder could approve."""
    clashes = serve_token_clashes(settings.serve)
    if clashes:
        raise SettingsError("every approver needs a token of their own, shared with no intake credential: "
                            + "; ".join(clashes))
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from siemcrew.crew.runtime import Runtime

        rt = runtime or Runtime(settings)
        state["rt"] = rt
        state["worker"] = (Enqueuer(rt) if rt.queue is not None
                           else Worker(rt, outbox_every_s=settings.serve.outbox_every_s))
        state["worker"].start()
        state["intake"] = IntakeJobs(admit_batch)
        app.state.worker = state["worker"]
        yield
        state["intake"].stop()
        state["worker"].stop()

    app = FastAPI(title="siemcrew", version="0.1.0", lifespan=lifespan)

    def rt() -> Any:
        return state["rt"]

    from siemcrew.web.pages import pages_router

    app.include_router(pages_router(settings, rt))  # the analyst's pages (web/): queue, case page, sign-in

    def bearer(authorization: str | None = Header(default=None)) -> None:
        expected = secret(settings.serve.token_env)
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "bearer token required", headers={"WWW-Authenticate": "Bearer"})
        if not expected or not hmac.compare_digest(authorization[7:].strip().encode(), expected.encode()):
            raise HTTPException(403, "invalid token")

    def approver(authorization: str | None = Header(default=None)) -> str:
        """The approver this token belongs to; only configured approvers may decide."""
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "approver token required", headers={"WWW-Authenticate": "Bearer"})
        presented = authorization[7:].strip().encode()
        for name, env in settings.serve.approvers.items():
            expected = secret(env)
            if expected and hmac.compare_digest(presented, expected.encode()):
                return name
        raise HTTPException(403, "not an approver token")

    def shared_secret(x_siemcrew_secret: str | None = Header(default=None)) -> None:
        expected = secret(settings.serve.webhook_secret_env)
        if not x_siemcrew_secret:
            raise HTTPException(401, "X-Siemcrew-Secret header required")
        if not expected or not hmac.compare_digest(x_siemcrew_secret.encode(), expected.encode()):
            raise HTTPException(403, "invalid secret")

    def admit_batch(alerts: list[Any]) -> tuple[int, list[str]]:
        """Admit alerts (idempotent by alert id): (how many were not seen before, their case ids)."""
        runtime_ = rt()
        case_ids: list[str] = []
        accepted = 0
        for alert in alerts:
            seen = runtime_.cases.known(alert)
            case, is_new = runtime_.cases.admit(alert)
            runtime_.audit.append("intake", "serve", {"alert": alert.id, "source": alert.source, "case": case.id,
                                                      "new": is_new}, case_id=case.id)
            if case.id not in case_ids:
                case_ids.append(case.id)
            accepted += not seen
            if is_new:
                state["worker"].submit(case.id)
        return accepted, case_ids

    def admit(alerts: list[Any], intake_key: str | None) -> JSONResponse:
        """Admit every alert, then record the intake key: a crash in between loses nothing, and a retry is a
        duplicate. `accepted` counts alerts not seen before; one joining an open case is accepted, not new
        work. A list longer than one batch is admitted in the background: 202 at once with a job id."""
        if len(alerts) > INTAKE_BATCH and intake_key is None:
            job = state["intake"].submit(alerts)
            return JSONResponse({"job": job, "alerts": len(alerts), "status": f"/v1/intake/{job}"}, status_code=202)
        runtime_ = rt()
        accepted, case_ids = admit_batch(alerts)
        if intake_key:
            runtime_.cases.remember_intake(intake_key, case_ids)  # a record; the alert ids do the deduplication
        duplicate = bool(alerts) and accepted == 0
        return JSONResponse({"accepted": accepted, "case_ids": case_ids, "duplicate": duplicate},
                            status_code=200 if duplicate else 202)

    @app.get("/v1/intake/{job}", dependencies=[Depends(bearer)], responses=problems(401, 403, 404))
    def intake_job(job: str) -> dict[str, Any]:
        found = state["intake"].get(job)
        if found is None:
            raise HTTPException(404, f"no intake job {job}")
        return found

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        return {"ok": True, "source": settings.source, "idle": state["worker"].idle.is_set()}

    @app.post("/v1/alerts", dependencies=[Depends(bearer)], status_code=202,
              responses={**INTAKE_RESPONSES, **problems(400, 401, 403, 413, 422)},
              openapi_extra=json_body({"oneOf": [{"$ref": "#/components/schemas/Alert"},
                                                 {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}}]}))
    def post_alerts(body: Any = Body(...)) -> JSONResponse:
        from siemcrew.crew.models import Alert

        items = body if isinstance(body, list) else [body]
        try:
            alerts = [Alert.model_validate(item) for item in items]
        except (ValidationError, ValueError, TypeError, OverflowError) as exc:
            raise HTTPException(422, _errors(exc)) from None
        return admit(alerts, None)

    @app.post("/v1/alerts/splunk", dependencies=[Depends(bearer)], status_code=202,
              responses={**INTAKE_RESPONSES, **problems(400, 401, 403, 413, 422)},
              openapi_extra=json_body({"$ref": "#/components/schemas/SplunkActionHandoff"}))
    def post_splunk(body: Any = Body(...)) -> JSONResponse:
        from siemcrew.connectors.splunk.intake import SplunkActionHandoff, alerts_from_handoff

        try:
            handoff = SplunkActionHandoff.model_validate(body)
            alerts = alerts_from_handoff(handoff)
        except (ValidationError, ValueError, TypeError, OverflowError) as exc:
            raise HTTPException(422, _errors(exc)) from None
        return admit(alerts, f"splunk:{handoff.sid}")

    @app.post("/v1/alerts/elastic", dependencies=[Depends(shared_secret)], status_code=202,
              responses={**INTAKE_RESPONSES, **problems(400, 401, 403, 413, 422)},
              openapi_extra=json_body({"$ref": "#/components/schemas/WebhookBody"}))
    def post_elastic(body: Any = Body(...)) -> JSONResponse:
        from siemcrew.connectors.elastic.intake import AlertDocError, alerts_from_webhook

        try:
            alerts = alerts_from_webhook(body)
        except (ValidationError, ValueError, AlertDocError) as exc:  # AlertDocError: every unreadable body
            raise HTTPException(422, _errors(exc)) from None
        return admit(alerts, None)

    @app.get("/v1/cases", dependencies=[Depends(bearer)], responses=problems(401, 403, 422))
    def list_cases(status: str | None = None) -> list[dict[str, Any]]:
        return [_summary(c) for c in rt().cases.list(status=status)]

    @app.get("/v1/cases/{case_id}", dependencies=[Depends(bearer)], responses=problems(401, 403, 404))
    def get_case(case_id: str) -> dict[str, Any]:
        try:
            return rt().cases.get(case_id).model_dump(mode="json")
        except KeyError:
            raise HTTPException(404, f"no case {case_id}") from None

    @app.get("/v1/cases/{case_id}/report", dependencies=[Depends(bearer)],
             responses={200: {"description": "the report", "content": {"text/markdown": {}, "application/json": {},
                                                                        "text/html": {}}},
                        **problems(401, 403, 404, 422)})
    def get_report(case_id: str, format: Literal["md", "json", "html"] = "md") -> PlainTextResponse:
        from siemcrew.crew.report import RENDERERS

        try:
            case = rt().cases.get(case_id)
        except KeyError:
            raise HTTPException(404, f"no case {case_id}") from None
        media = {"md": "text/markdown", "json": "application/json", "html": "text/html"}[format]
        if format == "html":  # the case page as one self-contained file, with its audit trail and SIEM links
            from siemcrew.web.render import report_html

            text = report_html(case, settings, list(rt().audit.read(case_id=case_id)), rt().approvals.pending(case_id))
            return PlainTextResponse(text, media_type=media)
        return PlainTextResponse(RENDERERS[format](case), media_type=media)

    @app.get("/v1/approvals", dependencies=[Depends(bearer)], responses=problems(401, 403))
    def approvals() -> list[dict[str, Any]]:
        return [p.model_dump(mode="json") for p in rt().approvals.pending()]

    @app.post("/v1/cases/{case_id}/actions/{action}/{decision}", responses=problems(400, 401, 403, 404, 409, 422))
    def decide_action(case_id: str, action: str, decision: Literal["approve", "deny"], body: Decision,
                      who: str = Depends(approver)) -> dict[str, Any]:
        from siemcrew.crew.approvals import ApprovalError
        from siemcrew.crew.operations import decide

        if body.by is not None and body.by != who:
            raise HTTPException(403, f"this token belongs to {who}, not {body.by}")
        try:
            approval, case = decide(rt(), case_id, action, decision, by=who, reason=body.reason,
                                    target=body.target, sha256=body.args_sha256)
        except KeyError:
            raise HTTPException(404, f"no case {case_id}") from None
        except ApprovalError as exc:
            raise HTTPException(409, str(exc)) from None
        return {"approval": approval.model_dump(mode="json"), "case": _summary(case)}

    @app.exception_handler(ValidationError)
    async def validation(_: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"type": "invalid", "detail": _errors(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg")} for e in exc.errors()][:20]
        return JSONResponse({"type": "invalid", "detail": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_problem(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"type": PROBLEM_TYPES.get(exc.status_code, "error"), "detail": exc.detail},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with the models the intake routes validate themselves as components."""
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            from siemcrew.connectors.elastic.intake import WebhookBody
            from siemcrew.connectors.splunk.intake import SplunkActionHandoff
            from siemcrew.crew.models import Alert

            document = get_openapi(title=app.title, version=app.version, routes=app.routes)
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for model in (Alert, SplunkActionHandoff, WebhookBody):
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    return app


def _errors(exc: Exception) -> Any:
    if isinstance(exc, ValidationError):
        return [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()][:20]
    return str(exc)[:1000]


def _summary(case: Any) -> dict[str, Any]:
    return {"id": case.id, "status": case.status, "verdict": case.verdict, "confidence": case.confidence,
            "alert": case.alert.id, "rule": case.alert.rule_name, "affected_hosts": case.affected_hosts,
            "affected_users": case.affected_users, "results": [r.model_dump(mode="json") for r in case.results]}
