"""The pages in a real browser: the distribution's Chromium, headless, driven by Selenium against
`siemcrew serve` on loopback over a demo home. A viewer opens the queue, a case and an evidence link;
approvers approve and deny the demo's containment and see the case resume with the actions' results; the
queue refreshes by itself; injected markup never runs; no page asks for anything beyond 127.0.0.1.

Screenshots of the queue and a case page are written to $SIEMCREW_SCREENSHOTS (the README's come from
`SIEMCREW_SCREENSHOTS=docs pytest tests/test_web_browser.py`), else to the test's temporary folder.
There is no skip: without Chromium these tests fail, naming the packages to install."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import httpx
import pytest

from browser import chromium, requested_urls
from conftest import EXAMPLES, run_cli
from emulators.e2e_helpers import serve
from webcase import xss_case

TOKENS = {"SIEMCREW_APPROVER_ALICE": "alice-browser-token-4f1e2d", "SIEMCREW_APPROVER_BOB": "bob-browser-token-9c8b7a",
          "SIEMCREW_VIEWER_TOKEN": "viewer-browser-token-3a2b1c", "SIEMCREW_SERVE_TOKEN": "intake-browser-token-5d6e7f"}
ALICE, BOB, VIEWER, INTAKE = TOKENS.values()
WAIT_S = 60

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """The demo investigated into a fresh home, served on loopback."""
    root = tmp_path_factory.mktemp("web")
    home = root / "home"
    done = run_cli("demo", "--home", str(home), env={"SIEMCREW_HOME": str(home)}, timeout=400)
    assert done.returncode in (0, 4), done.stderr[-2000:]
    log = root / "serve.log"
    with serve(str(EXAMPLES / "demo.yaml"), {"SIEMCREW_HOME": str(home), **TOKENS}, log, timeout_s=120) as base:
        api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {INTAKE}"}, timeout=120)
        cases = {c["rule"]: c["id"] for c in api.get("/v1/cases").json()}
        yield SimpleNamespace(base=base, log=log, api=api, cases=cases, root=root, home=home)
        api.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "profile") as driver:
        yield driver


def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("SIEMCREW_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def wait_for(driver: Any, condition: Any, what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition, message=what)


def css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def sign_in(driver: Any, base: str, token: str, path: str = "/") -> None:
    driver.get(base + path)
    wait_for(driver, lambda d: "/signin" in d.current_url, "the sign-in page")
    css(driver, "#token")[0].send_keys(token)
    css(driver, "form.signin button[type=submit]")[0].click()
    wait_for(driver, lambda d: "/signin" not in d.current_url, "signed in")


def only_loopback(driver: Any, base: str) -> None:
    asked = [u for u in requested_urls(driver) if u.startswith(("http:", "https:", "ws:", "wss:"))]
    assert asked and all(u.startswith(base + "/") for u in asked), [u for u in asked if not u.startswith(base)]


def decide(driver: Any, action: str, target: str, reason: str, button: str) -> str:
    """Fill the reason of the pending (action, target) form and press Approve or Deny; returns the flash."""
    forms = [f for f in css(driver, "form.decide")
             if f.find_element("css selector", "input[name=action]").get_attribute("value") == action
             and f.find_element("css selector", "input[name=target]").get_attribute("value") == target]
    assert len(forms) == 1, f"one pending {action} {target}"
    forms[0].find_element("css selector", "textarea[name=reason]").send_keys(reason)
    forms[0].find_element("css selector", f"button.{button}").click()
    flash = wait_for(driver, lambda d: css(d, "p.flash.ok"), "the decision's confirmation")[0].text
    return flash


def test_a_viewer_opens_the_queue_a_case_and_an_evidence_link(site: SimpleNamespace, browser: Any, tmp_path: Path) -> None:
    assert f"the queue is at {site.base}/" in site.log.read_text()  # serve prints where to go
    sign_in(browser, site.base, VIEWER)
    rows = wait_for(browser, lambda d: css(d, "#queue-live table.grid tbody tr"), "the queue's rows")
    assert "Case queue" in browser.title or browser.find_element("tag name", "h1").text == "Case queue"
    waiting = site.api.get("/v1/approvals").json()
    with_pending = len({p["case_id"] for p in waiting})
    pending_first = [r.get_attribute("class") for r in css(browser, "#cases-h + table tbody tr")]
    assert pending_first == ["attention"] * with_pending + [""] * (len(pending_first) - with_pending)
    assert len(css(browser, "#pending-h + table tbody tr")) == len(waiting) >= 6
    browser.save_screenshot(str(shots(tmp_path) / "queue.png"))
    assert rows
    case_id = site.cases["LSASS Memory Dump via Comsvcs DLL"]
    css(browser, f'a[href="/cases/{case_id}"]')[0].click()
    wait_for(browser, lambda d: case_id in d.current_url, "the case page")
    assert browser.find_element("tag name", "h1").text == f"Case {case_id}: LSASS Memory Dump via Comsvcs DLL"
    assert css(browser, "span.verdict.v-malicious") and css(browser, "svg.tree a") and css(browser, "svg.graph path.e-lateral")
    assert not css(browser, "button.approve") and "viewers can read, not decide" in browser.page_source
    browser.save_screenshot(str(shots(tmp_path) / "case.png"))
    browser.set_window_size(1280, 1250)
    browser.execute_script("document.getElementById('tree').scrollIntoView()")
    browser.save_screenshot(str(shots(tmp_path) / "case-chain.png"))
    browser.set_window_size(1280, 900)
    from selenium.webdriver.common.keys import Keys

    browser.find_element("tag name", "body").send_keys(Keys.TAB)  # keyboard: the first stop skips to the content
    assert browser.execute_script("return document.activeElement.textContent") == "Skip to content"
    browser.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(browser, lambda d: d.execute_script("return document.activeElement.id") == "content", "focus on main")
    context = css(browser, "table.timeline tr.context")
    assert context and not any(row.is_displayed() for row in context)  # the chain first; context on request
    css(browser, "label[for=show-context]")[0].click()
    assert all(row.is_displayed() for row in context[:5])
    link = css(browser, "table.timeline tr.chain a.ev")[0]
    evidence_id = link.text
    link.click()
    wait_for(browser, lambda d: d.current_url.endswith(f"#evidence-{evidence_id}"), "the evidence anchor")
    target = browser.execute_script("return document.querySelector(':target').id")
    assert target == f"evidence-{evidence_id}"
    article = css(browser, f"#evidence-{evidence_id}")[0]
    assert article.is_displayed() and "SELECT" in article.find_element("css selector", "pre.query").text
    assert "embedded local store: no SIEM to open" in article.text
    for name in ("queue.png", "case.png", "case-chain.png"):
        assert (shots(tmp_path) / name).stat().st_size > 20_000
    only_loopback(browser, site.base)


def test_an_approver_approves_an_isolation_and_the_case_resumes(site: SimpleNamespace, browser: Any) -> None:
    case_id = site.cases["Suspicious Encoded PowerShell Command Line"]
    pending = {(p["action"], p["target"]): p for p in site.api.get("/v1/approvals").json() if p["case_id"] == case_id}
    sign_in(browser, site.base, ALICE, f"/cases/{case_id}")
    assert "Signed in as alice (approver)" in css(browser, "form.who")[0].text
    forms = {f.find_element("css selector", "input[name=target]").get_attribute("value"): f for f in css(browser, "form.decide")}
    isolation = pending[("isolate_host", "WS-HR-02")]
    assert forms["WS-HR-02"].find_element("css selector", "input[name=args_sha256]").get_attribute("value") \
        == isolation["args_sha256"]
    assert isolation["args_sha256"] in forms["WS-HR-02"].text  # the sha256 the approver reviews is shown
    flash = decide(browser, "isolate_host", "WS-HR-02", "encoded PowerShell beacon confirmed", "approve")
    assert flash == "approved isolate_host WS-HR-02 as alice; the case is now awaiting approval"
    flash = decide(browser, "disable_user", "CONTOSO\\asmith", "account used by the beacon", "approve")
    assert flash == "approved disable_user CONTOSO\\asmith as alice; the case is now escalated"
    article = css(browser, "#action-isolate-host-ws-hr-02")[0]
    assert "dry run via dry-run: would isolate_host WS-HR-02" in article.text
    assert "Approved\nby alice" in article.text and not css(browser, "form.decide")
    case = site.api.get(f"/v1/cases/{case_id}").json()
    assert case["status"] == "escalated"
    assert {(a["action"], a["by"], a["decision"]) for a in case["approvals"]} == {
        ("isolate_host", "alice", "approve"), ("disable_user", "alice", "approve")}
    assert {(r["action"], r["state"]) for r in case["results"]} >= {("isolate_host", "dry_run"), ("disable_user", "dry_run")}
    only_loopback(browser, site.base)


def test_an_approver_denies_and_the_case_resumes_without_the_actions(site: SimpleNamespace, browser: Any) -> None:
    case_id = site.cases["LSASS Memory Dump via Comsvcs DLL"]
    sign_in(browser, site.base, BOB, f"/cases/{case_id}")
    decide(browser, "isolate_host", "SRV-FS01", "file server stays up; IR team on site", "deny")
    decide(browser, "disable_user", "CONTOSO\\jdoe", "password reset instead", "deny")
    flash = decide(browser, "isolate_host", "WS-FIN-07", "already unplugged by the desk", "deny")
    assert flash == "denied isolate_host WS-FIN-07 as bob; the case is now escalated"
    article = css(browser, "#action-isolate-host-ws-fin-07")[0]
    assert "skipped via approval: denied by bob: already unplugged by the desk" in article.text
    case = site.api.get(f"/v1/cases/{case_id}").json()
    assert case["status"] == "escalated"
    assert {(a["by"], a["decision"]) for a in case["approvals"]} == {("bob", "deny")} and len(case["approvals"]) == 3
    results = {(r["action"], r["target"]): r for r in case["results"]}
    assert results[("isolate_host", "SRV-FS01")]["state"] == "skipped"
    assert results[("kill_process", "WS-FIN-07:504")]["state"] == "dry_run"  # the automatic ones still ran
    only_loopback(browser, site.base)


def test_the_queue_refreshes_without_a_reload(site: SimpleNamespace, browser: Any) -> None:
    case_id = site.cases["WMI Spawning PowerShell"]
    sign_in(browser, site.base, VIEWER)
    browser.execute_script("window.__sameDocument = true")
    before = len(css(browser, f'#pending-h + table a[href="/cases/{case_id}#actions"]'))
    assert before >= 2
    answer = httpx.post(f"{site.base}/v1/cases/{case_id}/actions/disable_user/deny", timeout=120,
                        headers={"Authorization": f"Bearer {BOB}"}, json={"reason": "service account", "target": "CONTOSO\\mlee"})
    assert answer.status_code == 200, answer.text
    wait_for(browser, lambda d: len(css(d, f'#pending-h + table a[href="/cases/{case_id}#actions"]')) == before - 1,
             "the queue to show one pending approval fewer")
    assert browser.execute_script("return window.__sameDocument") is True
    assert css(browser, "#queue-updated")[0].text.startswith("Updated ")
    only_loopback(browser, site.base)


def test_injected_markup_never_runs_in_the_browser(site: SimpleNamespace, browser: Any, tmp_path: Path) -> None:
    from siemcrew.config.settings import Settings
    from siemcrew.crew.runtime import Runtime

    rt = Runtime(Settings.load(EXAMPLES / "demo.yaml", home=str(site.home)), siem=SimpleNamespace(name="local"))
    evil = xss_case(rt).id  # stored in the home serve reads: a case whose every log-derived field attacks the page
    sign_in(browser, site.base, ALICE, f"/cases/{evil}")
    report = tmp_path / "report.html"
    done = run_cli("report", evil, "--format", "html", "--out", str(report), "--config", str(EXAMPLES / "demo.yaml"),
                   env={"SIEMCREW_HOME": str(site.home)})
    assert done.returncode == 0, done.stderr
    for url in (f"{site.base}/cases/{evil}", f"{site.base}/?q=xss", report.as_uri()):
        browser.get(url)
        wait_for(browser, lambda d: d.execute_script("return document.readyState") == "complete", "the page")
        for element in css(browser, "a, code, td, h1, h3")[:400]:  # hover and focus what could carry a handler
            browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseover', {bubbles: true}))", element)
        time.sleep(0.5)
        state = browser.execute_script("""
            const all = Array.from(document.querySelectorAll('*'));
            return {
              xss: window.__xss === undefined ? null : window.__xss,
              scripts: Array.from(document.scripts).map(s => s.src || 'inline'),
              handlers: all.filter(e => Array.from(e.attributes).some(a => a.name.startsWith('on'))).map(e => e.tagName),
              jsLinks: Array.from(document.querySelectorAll('a[href], form[action], iframe')).map(
                  e => e.getAttribute('href') || e.getAttribute('action') || 'iframe').filter(
                  h => h === 'iframe' || /^\\s*javascript:/i.test(h) || /evil/.test(h)),
              images: document.querySelectorAll('img').length,
              text: document.body.innerText.includes('<script>window.__xss=1</script>'),
            };""")
        assert state["xss"] is None and state["handlers"] == [] and state["jsLinks"] == [] and state["images"] == 0, (url, state)
        assert all(src.endswith("/static/queue.js") for src in state["scripts"]), (url, state)
        assert state["text"], f"{url}: the payloads are shown as text"
        from selenium.common.exceptions import NoAlertPresentException

        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text  # noqa: B018 - no dialog was opened
    only_loopback(browser, site.base)
