"""The pages of `siemcrew serve`: the queue, the case page, sign-in, and decisions from the browser.

Mounted by `service.create_app` as one router. Every page needs a signed-in person (an approver or the
viewer, see session.py); every POST carries the session's CSRF token and a same-origin Origin. A decision
calls the same operation as the HTTP API and the CLI (`operations.decide`, with the signed-in approver's
name and the args sha256 they reviewed), so policy, audit and the bound-approval check stay one path.
Responses carry a strict Content-Security-Policy: the pages load only /static, and nothing inline runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from siemcrew.config.settings import Settings
from siemcrew.web.deeplinks import LinkTargets
from siemcrew.web.render import STATIC_DIR, case_page, render
from siemcrew.web.session import COOKIE, SIGNIN_COOKIE, People, Session, Sessions, SignInThrottle, load_key

log = logging.getLogger("siemcrew.web")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make Chrome send `Origin: null` on our own forms
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
STATIC_FILES = {"siemcrew.css": "text/css; charset=utf-8", "queue.js": "text/javascript; charset=utf-8"}
STATUSES = ("awaiting_approval", "escalated", "investigating", "new", "failed", "closed")
VERDICTS = ("malicious", "suspicious", "inconclusive", "benign")
MAX_FORM_BYTES = 16_384
QUEUE_LIMIT = 500
REFRESH_S = 10


def _safe_next(value: str | None) -> str:
    """Only a path on this site: never another origin (`//host`, `/\\host`, a scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or "\n" in value:
        return "/"
    return value


def pages_router(settings: Settings, runtime: Callable[[], Any]) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    people = People(settings.serve)
    state: dict[str, Any] = {}
    throttle = SignInThrottle()
    targets = LinkTargets.from_settings(settings)
    secure_cookie = (settings.serve.public_url or "").startswith("https://")

    def sessions() -> Sessions:
        if "sessions" not in state:
            state["sessions"] = Sessions(load_key(Path(settings.home)), people,
                                         idle_s=settings.serve.session_minutes * 60.0,
                                         max_s=settings.serve.session_max_hours * 3600.0)
        return state["sessions"]

    def html(body: str, status: int = 200, session: Session | None = None) -> HTMLResponse:
        response = HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)
        if session is not None:
            renewed = sessions().renew(session)
            if renewed:
                _set_cookie(response, COOKIE, renewed, settings.serve.session_minutes * 60)
        return response

    def _set_cookie(response: Response, name: str, value: str, max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", secure=secure_cookie,
                            path="/")

    def current(request: Request) -> Session | None:
        return sessions().read(request.cookies.get(COOKIE))

    def to_signin(request: Request) -> RedirectResponse:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/signin?" + urlencode({"next": _safe_next(target)}), status_code=303,
                                headers=SECURITY_HEADERS)

    def same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True  # no Origin (an older client): the CSRF token and SameSite=Strict still hold
        allowed = {f"{request.url.scheme}://{request.headers.get('host', '')}"}
        if settings.serve.public_url:
            public = urlsplit(settings.serve.public_url)
            allowed.add(f"{public.scheme}://{public.netloc}")
        return origin in allowed

    async def form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(413, "the form is too large")
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True).items()}

    def error_page(status: int, title: str, detail: str, session: Session | None) -> HTMLResponse:
        return html(render("error.html", title=title, detail=detail, person=session.person if session else None,
                           csrf=session.csrf if session else ""), status)

    # -- static -------------------------------------------------------------------------------
    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return Response((STATIC_DIR / name).read_bytes(), media_type=STATIC_FILES[name],
                        headers={**SECURITY_HEADERS, "Cache-Control": "max-age=300"})

    # -- sign-in ------------------------------------------------------------------------------
    @router.get("/signin")
    def signin_form(request: Request, next: str = "/") -> Response:
        nonce, token = sessions().signin_nonce()
        response = html(render("signin.html", signin_csrf=token, next=_safe_next(next), person=None))
        _set_cookie(response, SIGNIN_COOKIE, nonce, 600)
        return response

    @router.post("/signin")
    async def signin(request: Request) -> Response:
        fields = await form(request)
        if not same_origin(request) or not sessions().signin_ok(request.cookies.get(SIGNIN_COOKIE), fields.get("csrf")):
            return error_page(403, "Sign-in refused", "The sign-in form expired or came from another site: open it again.",
                              None)
        if throttle.blocked():
            return error_page(429, "Too many attempts", "Too many failed sign-ins; wait a minute.", None)
        found = people.identify(fields.get("token", "").strip())
        if found is None:
            throttle.failed()
            time.sleep(0.2)
            log.warning("web sign-in refused (not an approver or viewer token)")
            nonce, token = sessions().signin_nonce()
            response = html(render("signin.html", signin_csrf=token, next=_safe_next(fields.get("next")), person=None,
                                   error="That token is not an approver's or the viewer's token."), 403)
            _set_cookie(response, SIGNIN_COOKIE, nonce, 600)
            return response
        person, token_value = found
        _, cookie = sessions().issue(person, token_value)
        await run_in_threadpool(runtime().audit.append, "web_signin", person.name, {"role": person.role})
        response = RedirectResponse(_safe_next(fields.get("next")), status_code=303, headers=SECURITY_HEADERS)
        _set_cookie(response, COOKIE, cookie, settings.serve.session_minutes * 60)
        response.delete_cookie(SIGNIN_COOKIE, path="/")
        return response

    @router.post("/signout")
    async def signout(request: Request) -> Response:
        session = current(request)
        fields = await form(request)
        if session is not None and sessions().csrf_ok(session, fields.get("csrf")):
            sessions().end(session)
        response = RedirectResponse("/signin", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- queue --------------------------------------------------------------------------------
    def queue_context(request: Request) -> dict[str, Any]:
        from siemcrew.crew.timeutil import utcnow

        params = request.query_params
        filters = {"status": params.get("status", "") if params.get("status") in STATUSES else "",
                   "verdict": params.get("verdict", "") if params.get("verdict") in VERDICTS else "",
                   "q": params.get("q", "")[:200], "pending": params.get("pending") == "1"}
        rt = runtime()
        pending = rt.approvals.pending()
        waiting: dict[str, int] = {}
        for item in pending:
            waiting[item.case_id] = waiting.get(item.case_id, 0) + 1
        cases = rt.cases.list(status=filters["status"] or None, limit=QUEUE_LIMIT)
        listed = {c.id for c in cases}
        for case_id in waiting:
            if case_id not in listed:
                try:
                    extra = rt.cases.get(case_id)
                except KeyError:
                    continue
                if not filters["status"] or extra.status == filters["status"]:
                    cases.append(extra)
        total = len(cases)
        needle = filters["q"].lower()

        def keep(case: Any) -> bool:
            if filters["verdict"] and case.verdict != filters["verdict"]:
                return False
            if filters["pending"] and not waiting.get(case.id):
                return False
            if needle:
                hay = " ".join([case.id, case.alert.rule_name, case.alert.primary_host or "", *case.affected_hosts,
                                *case.affected_users]).lower()
                return needle in hay
            return True

        rows = [{"case": c, "pending": waiting.get(c.id, 0)} for c in cases if c.alerts and keep(c)]
        rows.sort(key=lambda r: (-r["pending"], r["case"].status != "awaiting_approval", -r["case"].created_at.timestamp()))
        shown = {r["case"].id for r in rows}
        query = {k: v for k, v in (("status", filters["status"]), ("verdict", filters["verdict"]), ("q", filters["q"]),
                                   ("pending", "1" if filters["pending"] else "")) if v}
        return {"rows": rows, "total": total, "pending": [p for p in pending if p.case_id in shown],
                "filters": filters, "statuses": STATUSES, "verdicts": VERDICTS, "now": utcnow(),
                "refresh_s": REFRESH_S, "query": ("?" + urlencode(query)) if query else ""}

    @router.get("/")
    async def queue(request: Request) -> Response:
        session = current(request)
        if session is None:
            return to_signin(request)
        context = await run_in_threadpool(queue_context, request)
        return html(render("queue.html", person=session.person, csrf=session.csrf, **context), session=session)

    @router.get("/queue/rows")
    async def queue_rows(request: Request) -> Response:
        session = current(request)
        if session is None:
            return Response("signed out", status_code=401, headers=SECURITY_HEADERS)
        context = await run_in_threadpool(queue_context, request)
        return html(render("_queue_live.html", **context), session=session)

    # -- case ---------------------------------------------------------------------------------
    def case_html(case_id: str, session: Session, decided: str = "", error: str = "") -> str | None:
        rt = runtime()
        try:
            case = rt.cases.get(case_id)
        except KeyError:
            return None
        pending = rt.approvals.pending(case_id)
        decisions = rt.approvals.decisions(case_id)
        message = ""
        if decided:  # "action|target": the message is read from the store, never from the URL
            action, _, target = decided.partition("|")
            latest = [a for a in decisions if (a.action, a.target) == (action, target)]
            if latest:
                a = latest[-1]
                message = (f"{'approved' if a.decision == 'approve' else 'denied'} {a.action} {a.target} as {a.by}; the case is now "
                           f"{case.status.replace('_', ' ')}")
        audit = list(rt.audit.read(case_id=case_id))
        return case_page(case, pending, audit, targets, person=session.person, csrf=session.csrf,
                         message=message, error=error, decisions=decisions)

    @router.get("/cases/{case_id}")
    async def case_view(request: Request, case_id: str) -> Response:
        session = current(request)
        if session is None:
            return to_signin(request)
        body = await run_in_threadpool(case_html, case_id, session, request.query_params.get("decided", "")[:300])
        if body is None:
            return error_page(404, "No such case", f"There is no case {case_id}.", session)
        return html(body, session=session)

    @router.post("/cases/{case_id}/decide")
    async def decide_form(request: Request, case_id: str) -> Response:
        from siemcrew.crew.approvals import ApprovalError
        from siemcrew.crew.operations import decide

        session = current(request)
        fields = await form(request)
        if session is None:
            return error_page(401, "Signed out", "Your session ended: sign in again, then decide.", None)
        if not same_origin(request) or not sessions().csrf_ok(session, fields.get("csrf")):
            return error_page(403, "Refused", "This form did not come from your session's page: reload the case "
                              "page and decide again.", session)
        if not session.person.can_decide:
            return error_page(403, "Not an approver", "Viewers can read cases; only an approver can decide.", session)
        decision = fields.get("decision", "")
        reason = fields.get("reason", "").strip()
        if decision not in ("approve", "deny") or not reason or not fields.get("action"):
            body = await run_in_threadpool(case_html, case_id, session, "", "A decision needs Approve or Deny and a reason.")
            return html(body or "", 422, session=session)
        try:
            approval, _ = await run_in_threadpool(
                lambda: decide(runtime(), case_id, fields["action"], decision, by=session.person.name, reason=reason[:1000],
                               target=fields.get("target") or None, sha256=fields.get("args_sha256") or None))
        except KeyError:
            return error_page(404, "No such case", f"There is no case {case_id}.", session)
        except ApprovalError as exc:
            body = await run_in_threadpool(case_html, case_id, session, "", f"Not recorded: {exc}")
            return html(body or "", 409, session=session)
        decided = f"{approval.action}|{approval.target}"
        return RedirectResponse(f"/cases/{quote(case_id, safe='')}?{urlencode({'decided': decided})}#actions",
                                status_code=303, headers=SECURITY_HEADERS)

    return router
