"""The pages over HTTP (FastAPI's test client): sign-in, sessions, CSRF, decisions as the signed-in approver
through the same operation as the API, escaping of log text, labels and contrast, and the HTML report as
one self-contained file."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from conftest import run_cli
from siemcrew.service import create_app
from siemcrew.web.render import STATIC_DIR, report_html
from webcase import MARKERS, xss_case

ALICE, BOB, VIEWER, INTAKE = "alice-token-5e7d9b1c3a2f", "bob-token-2b4d6f8a0c1e", "viewer-token-77aa99", "intake-0f3a9c"


@pytest.fixture
def web(awaiting_isolation: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """(runtime, case awaiting an isolation, app) with alice and bob as approvers and a viewer token."""
    rt, case = awaiting_isolation
    for env, value in {"W_ALICE": ALICE, "W_BOB": BOB, "W_VIEWER": VIEWER, "SIEMCREW_SERVE_TOKEN": INTAKE}.items():
        monkeypatch.setenv(env, value)
    rt.settings.serve.approvers = {"alice": "W_ALICE", "bob": "W_BOB"}
    rt.settings.serve.viewer_token_env = "W_VIEWER"
    return rt, case, create_app(rt.settings, runtime=rt)


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(client: TestClient, token: str, next_: str = "/") -> Any:
    form = client.get("/signin", params={"next": next_})
    return client.post("/signin", data={"csrf": _csrf(form.text), "token": token, "next": next_}, follow_redirects=False)


def test_pages_need_a_signed_in_person_and_carry_security_headers(web: Any) -> None:
    rt, case, app = web
    with TestClient(app) as client:
        for path in ("/", f"/cases/{case.id}"):
            answer = client.get(path, follow_redirects=False)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/signin?next=")
        assert client.get("/queue/rows").status_code == 401
        form = client.get("/signin")
        csp = form.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert form.headers["x-content-type-options"] == "nosniff" and form.headers["referrer-policy"] == "same-origin"
        signed = sign_in(client, ALICE, f"/cases/{case.id}")
        assert signed.status_code == 303 and signed.headers["location"] == f"/cases/{case.id}"
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=1200" in cookie
        assert ALICE not in signed.headers["location"] and ALICE not in signed.headers["set-cookie"]
        page = client.get(f"/cases/{case.id}")
        assert page.status_code == 200 and "Signed in as <strong>alice</strong> (approver)" in page.text
        assert client.get("/queue/rows").status_code == 200
        # an offsite `next` is never followed
        assert sign_in(client, ALICE, "//evil.example/x").headers["location"] == "/"
    assert [r.actor for r in rt.audit.read(kind="web_signin")] == ["alice", "alice"]


def test_the_intake_token_a_wrong_token_and_a_forged_form_do_not_sign_in(web: Any) -> None:
    _, _, app = web
    with TestClient(app) as client:
        for token in (INTAKE, "", ALICE + "x"):
            answer = sign_in(client, token)
            assert answer.status_code == 403 and "siemcrew_session" not in answer.headers.get("set-cookie", "")
        client.get("/signin")
        forged = client.post("/signin", data={"csrf": "forged", "token": ALICE}, follow_redirects=False)
        assert forged.status_code == 403 and "siemcrew_session" not in forged.headers.get("set-cookie", "")
        assert client.get("/", follow_redirects=False).status_code == 303


def test_an_approver_approves_in_the_page_and_the_case_resumes(web: Any) -> None:
    rt, case, app = web
    (pending,) = rt.approvals.pending(case.id)
    with TestClient(app) as client:
        sign_in(client, ALICE)
        page = client.get(f"/cases/{case.id}")
        assert pending.args_sha256 in page.text and 'value="approve"' in page.text
        decided = client.post(f"/cases/{case.id}/decide", follow_redirects=False, data={
            "csrf": _csrf(page.text), "action": "isolate_host", "target": "WS-01", "args_sha256": pending.args_sha256,
            "reason": "confirmed in the timeline", "decision": "approve"})
        assert decided.status_code == 303
        after = client.get(decided.headers["location"])
        assert "approved isolate_host WS-01 as alice; the case is now escalated" in after.text
    (approval,) = rt.approvals.decisions(case.id)
    assert (approval.by, approval.decision, approval.args_sha256) == ("alice", "approve", pending.args_sha256)
    assert [r.actor for r in rt.audit.read(case_id=case.id, kind="approval")] == ["alice"]
    stored = rt.cases.get(case.id)
    result = next(r for r in stored.results if r.action == "isolate_host")
    assert stored.status == "escalated" and result.state == "dry_run"


def test_decisions_need_the_session_csrf_same_origin_an_approver_and_the_reviewed_arguments(web: Any) -> None:
    rt, case, app = web
    (pending,) = rt.approvals.pending(case.id)
    fields = {"action": "isolate_host", "target": "WS-01", "args_sha256": pending.args_sha256, "reason": "r",
              "decision": "approve"}
    with TestClient(app) as client:
        assert client.post(f"/cases/{case.id}/decide", data=fields).status_code == 401
        sign_in(client, VIEWER)
        page = client.get(f"/cases/{case.id}")
        assert 'value="approve"' not in page.text and "viewers can read, not decide" in page.text
        assert client.post(f"/cases/{case.id}/decide", data={**fields, "csrf": _csrf(page.text)}).status_code == 403
        sign_in(client, BOB)
        csrf = _csrf(client.get(f"/cases/{case.id}").text)
        assert client.post(f"/cases/{case.id}/decide", data=fields).status_code == 403  # no CSRF token
        assert client.post(f"/cases/{case.id}/decide", data={**fields, "csrf": "0" * 64}).status_code == 403
        assert client.post(f"/cases/{case.id}/decide", data={**fields, "csrf": csrf},
                           headers={"Origin": "https://evil.example"}).status_code == 403
        changed = client.post(f"/cases/{case.id}/decide", data={**fields, "csrf": csrf, "args_sha256": "a" * 64})
        assert changed.status_code == 409 and "Not recorded" in changed.text
        assert client.post(f"/cases/{case.id}/decide", data={**fields, "csrf": csrf, "reason": " "}).status_code == 422
        assert rt.approvals.decisions(case.id) == [] and len(rt.approvals.pending(case.id)) == 1
        denied = client.post(f"/cases/{case.id}/decide", data={**fields, "csrf": csrf, "decision": "deny",
                                                               "reason": "not this host"})
        assert denied.status_code == 200 and "denied isolate_host WS-01 as bob" in denied.text
    (decision,) = rt.approvals.decisions(case.id)
    assert (decision.by, decision.decision) == ("bob", "deny")
    result = next(r for r in rt.cases.get(case.id).results if r.action == "isolate_host")
    assert result.state == "skipped" and "denied by bob" in result.detail


def test_signing_out_ends_the_session_for_the_cookie_too(web: Any) -> None:
    _, case, app = web
    with TestClient(app) as client:
        sign_in(client, ALICE)
        stolen = client.cookies.get("siemcrew_session")
        csrf = _csrf(client.get("/").text)
        assert client.post("/signout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
        client.cookies.set("siemcrew_session", stolen)
        assert client.get("/", follow_redirects=False).status_code == 303


def test_log_text_is_escaped_in_every_page_and_the_report(web: Any) -> None:
    rt, _, app = web
    case = xss_case(rt)
    with TestClient(app) as client:
        sign_in(client, ALICE)
        pages = {"queue": client.get("/").text, "rows": client.get("/queue/rows").text,
                 "case": client.get(f"/cases/{case.id}").text}
    pages["report"] = report_html(rt.cases.get(case.id), rt.settings, list(rt.audit.read(case_id=case.id)),
                                  rt.approvals.pending(case.id))
    for name, html in pages.items():
        found = MARKERS.findall(html)
        assert not found, (name, found[:5])
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in pages["case"]
    assert "&lt;/textarea&gt;" in pages["case"] and 'href="javascript:' not in pages["case"]
    assert pages["case"].count("<script") == 0 and pages["queue"].count("<script") == 1  # /static/queue.js only


class _Structure(HTMLParser):
    """What an accessibility check needs: controls and their labels, headings, the language, tables, SVGs."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str]] = []
        self.labels: set[str] = set()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if tag == "label" and values.get("for"):
            self.labels.add(values["for"])
        if tag in ("input", "select", "textarea") and values.get("type") != "hidden":
            self.controls.append(values)


def test_pages_are_semantic_and_every_control_is_labelled(web: Any) -> None:
    rt, case, app = web
    with TestClient(app) as client:
        pages = [client.get("/signin").text]
        sign_in(client, ALICE)
        pages += [client.get("/").text, client.get(f"/cases/{case.id}").text]
    for html in pages:
        parsed = _Structure()
        parsed.feed(html)
        assert ("html", {"lang": "en"}) in parsed.tags
        assert sum(1 for tag, _ in parsed.tags if tag == "h1") == 1 and any(tag == "main" for tag, _ in parsed.tags)
        for control in parsed.controls:
            assert control.get("id") in parsed.labels or control.get("aria-label"), control
        for tag, attrs in parsed.tags:
            if tag == "th":
                assert attrs.get("scope") in ("col", "row"), attrs
            if tag == "svg":
                assert attrs.get("role") == "img" and attrs.get("aria-labelledby"), attrs
            if tag == "button":
                assert attrs.get("type") == "submit"


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


def test_the_palette_passes_wcag_aa_contrast() -> None:
    css = (STATIC_DIR / "siemcrew.css").read_text(encoding="utf-8")
    colours = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-f]{6})", css))
    text_pairs = [("fg", "bg"), ("muted", "bg"), ("link", "bg"), ("fg", "panel"), ("muted", "panel"), ("link", "panel"),
                  ("red-fg", "red-bg"), ("amber-fg", "amber-bg"), ("green-fg", "green-bg"), ("blue-fg", "blue-bg"),
                  ("violet-fg", "violet-bg"), ("fg", "red-bg"), ("fg", "amber-bg"), ("fg", "blue-bg"),
                  ("fg", "violet-bg"), ("fg", "orange-bg"), ("fg", "grey-bg"), ("muted", "amber-bg"),
                  ("link", "amber-bg"), ("muted", "blue-bg"), ("muted", "red-bg"), ("muted", "violet-bg"),
                  ("muted", "orange-bg")]
    for fg, bg in text_pairs:
        assert contrast(colours[fg], colours[bg]) >= 4.5, (fg, bg, round(contrast(colours[fg], colours[bg]), 2))
    assert contrast("#ffffff", "#1f7a38") >= 4.5  # the Approve button
    for line in ("red", "blue", "violet", "orange", "focus"):  # borders, edges and focus rings (non-text: 3:1)
        assert contrast(colours[line], colours["bg"]) >= 3, line


def test_report_html_is_the_case_page_in_one_file_that_loads_nothing(web: Any, tmp_path: Path) -> None:
    rt, case, _ = web
    config = Path(rt.settings.config_path)
    config.write_text(config.read_text() + "splunk: {url: 'https://splunkd:8089', web_url: 'https://splunk.example.com'}\n")
    out = tmp_path / "case.html"
    done = run_cli("report", case.id, "--format", "html", "--out", str(out), "--config", str(config))
    assert done.returncode == 0, done.stderr
    html = out.read_text(encoding="utf-8")
    assert "<svg" not in html or "xmlns" in html
    assert f"Case {case.id}" in html and 'id="evidence-' in html and "Audit log records" in html
    assert "Waiting for an approver" in html and "<form" not in html
    assert '<meta http-equiv="Content-Security-Policy" content="default-src &#39;none&#39;;' in html
    assert "<script" not in html and "<link rel=\"stylesheet\"" not in html and "<style>" in html
    assert not re.search(r"""(src|srcset|action|data)=["']?(https?:)?//""", html)
    assert "url(" not in html.split("<style>")[1].split("</style>")[0]
