"""`siemcrew serve`: alert hand-offs from Splunk and Kibana, cases and approvals over HTTP.

Requests answer at once; investigations run on a worker thread over the same operations as the
CLI. Hand-offs are idempotent (Splunk `sid`, Elastic alert uuid), and cases left unfinished by a
crash are picked up again when the service starts.
"""

from __future__ import annotations

import hmac
import logging
import queue
import threading
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Literal

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, ValidationError

from siemcrew.config.settings import Settings, SettingsError, secret, serve_token_clashes

log = logging.getLogger("siemcrew.serve")


class Decision(BaseModel):
    by: str | None = Field(default=None, description="must be the authenticated approver, if given")
    reason: str = Field(min_length=1)
    target: str | None = None
    args_sha256: str | None = Field(default=None, description="the full sha256 (64 hex) of the arguments the "
                                                              "approver reviewed; refused if they changed")


class Worker:
    """One investigation at a time, in arrival order; crewAI flows run in this thread."""

    def __init__(self, runtime: Any) -> None:
        self.rt = runtime
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
            case_id = self.queue.get()
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
        state["worker"] = Worker(rt)
        state["worker"].start()
        app.state.worker = state["worker"]
        yield
        state["worker"].stop()

    app = FastAPI(title="siemcrew", version="0.1.0", lifespan=lifespan)

    def rt() -> Any:
        return state["rt"]

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

    def admit(alerts: list[Any], intake_key: str | None) -> JSONResponse:
        """Admit every alert (idempotent by alert id, so a repeated hand-off finds its cases), then
        record the intake key: a crash in between loses nothing, and a retry is a duplicate.
        `accepted` counts alerts not seen before; one joining an open case is accepted, not new work."""
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
        if intake_key:
            runtime_.cases.remember_intake(intake_key, case_ids)  # a record; the alert ids do the deduplication
        duplicate = bool(alerts) and accepted == 0
        return JSONResponse({"accepted": accepted, "case_ids": case_ids, "duplicate": duplicate},
                            status_code=200 if duplicate else 202)

    @app.get("/healthz")
    def health() -> dict[str, Any]:
        return {"ok": True, "source": settings.source, "idle": state["worker"].idle.is_set()}

    @app.post("/v1/alerts", dependencies=[Depends(bearer)])
    def post_alerts(body: Any = Body(...)) -> JSONResponse:
        from siemcrew.crew.models import Alert

        items = body if isinstance(body, list) else [body]
        try:
            alerts = [Alert.model_validate(item) for item in items]
        except (ValidationError, ValueError, TypeError, OverflowError) as exc:
            raise HTTPException(422, _errors(exc)) from None
        return admit(alerts, None)

    @app.post("/v1/alerts/splunk", dependencies=[Depends(bearer)])
    def post_splunk(body: Any = Body(...)) -> JSONResponse:
        from siemcrew.connectors.splunk.intake import SplunkActionHandoff, alerts_from_handoff

        try:
            handoff = SplunkActionHandoff.model_validate(body)
            alerts = alerts_from_handoff(handoff)
        except (ValidationError, ValueError, TypeError, OverflowError) as exc:
            raise HTTPException(422, _errors(exc)) from None
        return admit(alerts, f"splunk:{handoff.sid}")

    @app.post("/v1/alerts/elastic", dependencies=[Depends(shared_secret)])
    def post_elastic(body: Any = Body(...)) -> JSONResponse:
        from siemcrew.connectors.elastic.intake import AlertDocError, alerts_from_webhook

        try:
            alerts = alerts_from_webhook(body)
        except (ValidationError, ValueError, AlertDocError) as exc:  # AlertDocError: every unreadable body
            raise HTTPException(422, _errors(exc)) from None
        return admit(alerts, None)

    @app.get("/v1/cases", dependencies=[Depends(bearer)])
    def list_cases(status: str | None = None) -> list[dict[str, Any]]:
        return [_summary(c) for c in rt().cases.list(status=status)]

    @app.get("/v1/cases/{case_id}", dependencies=[Depends(bearer)])
    def get_case(case_id: str) -> dict[str, Any]:
        try:
            return rt().cases.get(case_id).model_dump(mode="json")
        except KeyError:
            raise HTTPException(404, f"no case {case_id}") from None

    @app.get("/v1/cases/{case_id}/report", dependencies=[Depends(bearer)])
    def get_report(case_id: str, format: Literal["md", "json", "html"] = "md") -> PlainTextResponse:
        from siemcrew.crew.report import RENDERERS

        try:
            case = rt().cases.get(case_id)
        except KeyError:
            raise HTTPException(404, f"no case {case_id}") from None
        media = {"md": "text/markdown", "json": "application/json", "html": "text/html"}[format]
        return PlainTextResponse(RENDERERS[format](case), media_type=media)

    @app.get("/v1/approvals", dependencies=[Depends(bearer)])
    def approvals() -> list[dict[str, Any]]:
        return [p.model_dump(mode="json") for p in rt().approvals.pending()]

    @app.post("/v1/cases/{case_id}/actions/{action}/{decision}")
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
        return JSONResponse({"detail": _errors(exc)}, status_code=422)

    return app


def _errors(exc: Exception) -> Any:
    if isinstance(exc, ValidationError):
        return [{"loc": e.get("loc"), "msg": e.get("msg")} for e in exc.errors()][:20]
    return str(exc)[:1000]


def _summary(case: Any) -> dict[str, Any]:
    return {"id": case.id, "status": case.status, "verdict": case.verdict, "confidence": case.confidence,
            "alert": case.alert.id, "rule": case.alert.rule_name, "affected_hosts": case.affected_hosts,
            "affected_users": case.affected_users, "results": [r.model_dump(mode="json") for r in case.results]}
