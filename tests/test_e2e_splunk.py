"""End to end against the splunkd emulator: the product as a Splunk admin runs it.

* The app's alert action script, run as splunkd runs it (`--execute`, JSON on stdin, gzipped CSV
  results, the serve token read from Splunk's credential store), hands a demo attack to a running
  `siemcrew serve`; the case is investigated, a retried hand-off is a duplicate, a bad token is
  refused, and an approval over HTTP resumes the case and runs the action once.
* `siemcrew run` with `source: splunk` in separate processes: ES notables for a demo attack and a
  benign look-alike are investigated over the demo events held as the Splunk add-ons for Windows and
  Sysmon index them (XML field names and CIM aliases, fast-mode searches), verdicts go
  back through `notable_update` and the cases to HEC; the checkpoint holds across runs.
* The same run with faults injected mid-way (search quota, session expiry, slow jobs, a dropped
  results page, a busy `notable_update` and HEC) finishes with every notable handled exactly once.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EXAMPLES, run_cli

from emulators.e2e_helpers import (
    action_rows,
    audit_records,
    expected_verdict,
    notable,
    scenario_events,
    serve,
    splunk_events,
    verdict_class,
    wait_for_case,
    write_config,
)
from emulators.splunkd import SplunkdEmulator, connector_settings
from siemcrew.connectors.splunk.app_builder import APP_SOURCE

ATTACK, BENIGN, LATER = "demo-2-encoded-powershell", "demo-4-procdump", "demo-3-wmi-powershell-dc"
NOW = 1795392000.0  # 2026-11-23T00:00:00Z, the end of the demo week
SCRIPT = APP_SOURCE / "bin" / "siemcrew_investigate.py"
SERVE_TOKEN = "serve-" + secrets.token_hex(8)
SID = "scheduler__admin__search__RMD5e7649a8a42798738_at_1795012800_41"
APPROVERS = {"alice": "approver-alice-" + secrets.token_hex(6), "bob": "approver-bob-" + secrets.token_hex(6)}
ENV = {"SPLUNK_TOKEN": "test-bearer-token", "SPLUNK_HEC_TOKEN": "test-hec-token", "SPLUNK_PASSWORD": "changeme",
       "SIEMCREW_SERVE_TOKEN": SERVE_TOKEN, **{f"SIEMCREW_APPROVER_{n.upper()}": t for n, t in APPROVERS.items()}}
NOTABLE_IDS = {name: f"{index:08X}-E2E0-4C1A-9D5B-3F2A1C0E9B7{index}@@notable@@{index}abc" for index, name in
               enumerate((ATTACK, BENIGN, LATER))}


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return splunk_events(ATTACK, BENIGN, LATER)


@pytest.fixture
def splunkd(tmp_path: Path, events: list[dict[str, Any]]) -> Iterator[SplunkdEmulator]:
    emulator = SplunkdEmulator(events, tls=True, tls_dir=tmp_path / "tls", now=NOW,
                               passwords={("siemcrew", "serve_token"): SERVE_TOKEN})
    with emulator:
        yield emulator


def _config(tmp_path: Path, emulator: SplunkdEmulator, **overrides: Any) -> str:
    splunk = connector_settings(emulator, alerts={"initial_lookback": "0"}, **overrides)
    splunk["hec"]["ca_file"] = str(emulator.tls.ca_file)  # type: ignore[union-attr]
    # the demo's CONTOSO events, so the demo's CONTOSO inventory (its admins' sanctioned tools)
    return write_config(tmp_path / "siemcrew.yaml", {"source": "splunk", "home": str(tmp_path / "home"),
                                                     "assets_file": str(EXAMPLES / "assets.yaml"),
                                                     "splunk": splunk, "serve": {"approvers": {
                                                         n: f"SIEMCREW_APPROVER_{n.upper()}" for n in APPROVERS}}})


def _as(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {APPROVERS[name]}"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=ENV, timeout=120)


def _summary(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _updates(emulator: SplunkdEmulator, name: str) -> list[dict[str, Any]]:
    return [u for u in emulator.notable_updates if u["ruleUIDs"] == [NOTABLE_IDS[name]]]


def _hec_cases(emulator: SplunkdEmulator) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for record in emulator.hec_events:
        assert record["sourcetype"] == "siemcrew:case", record
        event = record["event"] if isinstance(record["event"], dict) else json.loads(record["event"])
        found.setdefault(event.get("case_id") or event.get("id"), []).append(event)
    return found


def _assert_written_back(emulator: SplunkdEmulator, name: str) -> None:
    """Benign: one update to the closed status. Attack: in progress, escalated urgency, verdict in the comment."""
    updates = _updates(emulator, name)
    if verdict_class(expected_verdict(name)) == "benign":
        assert [u["status"] for u in updates] == ["5"], updates
        assert updates[0]["comment"].startswith("siemcrew verdict: benign")
    else:
        # one notable_update per write-back action (update_alert, escalate), never a repeat of one
        assert updates and all(u["status"] == "2" and u["urgency"] == "high" for u in updates), updates
        assert all(re.match(r"siemcrew verdict: (malicious|suspicious)", u["comment"]) for u in updates)
        assert len({u["comment"] for u in updates}) == len(updates) <= 2, updates
    state = emulator.review[NOTABLE_IDS[name]]
    assert state["status"] == ("5" if verdict_class(expected_verdict(name)) == "benign" else "2")


def _searches(emulator: SplunkdEmulator) -> int:
    """Search jobs created on splunkd so far."""
    return sum(1 for r in emulator.requests if r.method == "POST" and r.endpoint.endswith("jobs"))


def _pending(config: str, case_id: str) -> list[dict[str, Any]]:
    proc = _cli("approvals", "--json", "--config", config)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return [p for p in json.loads(proc.stdout) if p["case_id"] == case_id]


# -- the alert action against a running `siemcrew serve` ------------------------------------------
def _results_file(path: Path, rows: list[dict[str, Any]]) -> Path:
    """The gzipped CSV splunkd writes for an alert action: multivalue fields also in `__mv_` columns."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    header = columns + [f"__mv_{c}" for c in columns]
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for row in rows:
            out: dict[str, str] = {}
            for key, value in row.items():
                if isinstance(value, list):
                    out[key] = "\n".join(str(v) for v in value)
                    out[f"__mv_{key}"] = ";".join("$" + str(v).replace("$", "$$") + "$" for v in value)
                else:
                    out[key] = str(value)
            writer.writerow(out)
    return path


def _run_action(payload: dict[str, Any], splunk_home: Path) -> subprocess.CompletedProcess[str]:
    """The script exactly as splunkd runs it: its own Python, `--execute`, the payload on stdin."""
    env = {"PATH": os.environ.get("PATH", ""), "SPLUNK_HOME": str(splunk_home)}
    return subprocess.run([sys.executable, str(SCRIPT), "--execute"], input=json.dumps(payload), env=env,
                          capture_output=True, text=True, timeout=60)


def test_alert_action_hands_off_to_serve_which_investigates_dedupes_and_takes_approvals(
        tmp_path: Path, splunkd: SplunkdEmulator) -> None:
    config = _config(tmp_path, splunkd)
    splunk_home = tmp_path / "splunk"
    (splunk_home / "etc" / "auth").mkdir(parents=True)
    (splunk_home / "etc" / "auth" / "cacert.pem").write_bytes(splunkd.tls.ca_file.read_bytes())  # type: ignore[union-attr]
    session_key = secrets.token_hex(16)
    splunkd.sessions.add(session_key)
    rows = action_rows(ATTACK)
    assert isinstance(rows[0]["tag"], list) and len(rows[0]["tag"]) >= 1  # a multivalue column travels too

    with serve(config, ENV, tmp_path / "serve.log") as url:
        payload = {
            "sid": SID, "search_name": "SOC - Suspicious Encoded PowerShell", "app": "search", "owner": "admin",
            "results_link": f"https://splunk.example.com/app/search/@go?sid={SID}", "server_uri": splunkd.url,
            "session_key": session_key, "results_file": str(_results_file(tmp_path / "results.csv.gz", rows)),
            "configuration": {"serve_url": url, "max_rows": "200", "timeout": "10"},
        }
        first = _run_action(payload, splunk_home)
        assert first.returncode == 0, first.stderr
        assert "accepted by siemcrew serve" in first.stderr
        assert splunkd.calls("storage/passwords")[0].auth == "splunk"  # the token came from Splunk's store
        case_ids = re.findall(r"case-[0-9a-f]+", first.stderr)
        assert len(case_ids) == 1, first.stderr
        headers = {"Authorization": f"Bearer {SERVE_TOKEN}"}
        case = wait_for_case(url, SERVE_TOKEN, case_ids[0])
        assert case["alerts"][0]["id"] == f"splunk:{SID}:0"
        assert case["alerts"][0]["process"]["command_line"] == rows[0]["process"]
        assert verdict_class(case["verdict"]) == verdict_class(expected_verdict(ATTACK)), case["summary"]
        assert case["status"] == "awaiting_approval"
        searches = _searches(splunkd)
        assert searches > 5  # the crew hunted in Splunk
        report = httpx.get(f"{url}/v1/cases/{case_ids[0]}/report", params={"format": "md"}, headers=headers)
        assert report.status_code == 200 and case_ids[0] in report.text and "spl" in report.text.lower()

        # splunkd retries the alert action: the same sid is a duplicate, nothing is investigated again
        again = _run_action(payload, splunk_home)
        assert again.returncode == 0 and "already handed off" in again.stderr, again.stderr
        time.sleep(0.5)
        assert httpx.get(f"{url}/healthz").json()["idle"] is True
        assert [c["id"] for c in httpx.get(f"{url}/v1/cases", headers=headers).json()] == case_ids
        assert _searches(splunkd) == searches
        intakes = [(r["data"]["alert"], r["data"]["new"]) for r in audit_records(tmp_path / "home", "intake")]
        assert intakes == [(f"splunk:{SID}:0", True), (f"splunk:{SID}:0", False)]  # the repeat is on record only

        # a wrong token in the credential store is refused; the script says so and exits 2
        splunkd.passwords[("siemcrew", "serve_token")] = "not-the-token"
        refused = _run_action({**payload, "sid": SID + "_retry"}, splunk_home)
        assert refused.returncode == 2 and "rejected the token (HTTP 403)" in refused.stderr, refused.stderr
        assert httpx.post(f"{url}/v1/alerts/splunk", json={"sid": "x", "search_name": "y"}).status_code == 401
        assert len(httpx.get(f"{url}/v1/cases", headers=headers).json()) == 1

        # approvals over HTTP: deny the rest, approve the isolation; the case resumes and acts once
        pending = [p for p in httpx.get(f"{url}/v1/approvals", headers=headers).json() if p["case_id"] == case_ids[0]]
        isolate = next(p for p in pending if p["action"] == "isolate_host")
        for p in pending:
            if p is not isolate:
                answer = httpx.post(f"{url}/v1/cases/{case_ids[0]}/actions/{p['action']}/deny", headers=_as("bob"),
                                    json={"reason": "not needed", "target": p["target"]}, timeout=60)
                assert answer.status_code == 200, answer.text
        decision = {"reason": "confirmed stager", "target": isolate["target"], "args_sha256": isolate["args_sha256"]}
        # the intake token (held by the Splunk app) cannot approve; nor can one approver speak for another
        assert httpx.post(f"{url}/v1/cases/{case_ids[0]}/actions/isolate_host/approve", headers=headers,
                          json=decision, timeout=60).status_code == 403
        assert httpx.post(f"{url}/v1/cases/{case_ids[0]}/actions/isolate_host/approve", headers=_as("bob"),
                          json={**decision, "by": "alice"}, timeout=60).status_code == 403
        approved = httpx.post(f"{url}/v1/cases/{case_ids[0]}/actions/isolate_host/approve", headers=_as("alice"),
                              json=decision, timeout=60)
        assert approved.status_code == 200, approved.text
        assert approved.json()["case"]["status"] == "escalated"
        results = [(r["action"], r["target"], r["state"]) for r in approved.json()["case"]["results"]]
        assert [r for r in results if r[0] == "isolate_host"] == [("isolate_host", isolate["target"], "dry_run")]
        repeat = httpx.post(f"{url}/v1/cases/{case_ids[0]}/actions/isolate_host/approve", headers=_as("alice"),
                            json=decision, timeout=60)
        assert repeat.status_code == 409
        assert httpx.get(f"{url}/v1/approvals", headers=headers).json() == []

    started = [r for r in audit_records(tmp_path / "home", "action_start") if r["data"]["action"] == "isolate_host"]
    assert len(started) == 1
    published = _hec_cases(splunkd)
    assert list(published) == case_ids and published[case_ids[0]][-1]["status"] == "escalated"
    assert splunkd.notable_updates == []  # a saved-search hand-off is no notable: the case goes to HEC only


# -- `siemcrew run` with source: splunk -----------------------------------------------------------
def test_run_investigates_notables_writes_verdicts_back_and_honours_the_checkpoint(
        tmp_path: Path, splunkd: SplunkdEmulator) -> None:
    splunkd.load([], [notable(ATTACK, NOTABLE_IDS[ATTACK]), notable(BENIGN, NOTABLE_IDS[BENIGN])])
    config = _config(tmp_path, splunkd)

    first = _summary(_cli("run", "--json", "--config", config))
    assert (first["fetched"], first["investigated"], first["failed"]) == (2, 2, 0), first
    cases = {}
    for case_id in first["cases"]:
        shown = json.loads(_cli("cases", "show", case_id, "--json", "--config", config).stdout)
        cases[shown["alerts"][0]["id"]] = shown
    assert set(cases) == {NOTABLE_IDS[ATTACK], NOTABLE_IDS[BENIGN]}
    for name in (ATTACK, BENIGN):
        case = cases[NOTABLE_IDS[name]]
        assert verdict_class(case["verdict"]) == verdict_class(expected_verdict(name)), (name, case["summary"])
        _assert_written_back(splunkd, name)
    benign, attack = cases[NOTABLE_IDS[BENIGN]], cases[NOTABLE_IDS[ATTACK]]
    # evidence counts what matched in Splunk, not the rows fetched: first/last-seen lookups fetch one row
    executable = attack["alerts"][0]["process"]["executable"]
    matched = sum(1 for e in scenario_events(ATTACK, BENIGN, LATER)
                  if str(e.get("process.executable", "")).lower() == executable.lower())
    lookups = [e for e in attack["evidence"] if e["kind"] == "prevalence" and e["entity"] == executable
               and "stats" not in e["query"]]
    assert lookups and all(e["count"] == matched > 1 and e["truncated"] for e in lookups), (matched, lookups)
    assert benign["status"] == "closed" and attack["status"] == "awaiting_approval"
    assert [e["status"] for e in _hec_cases(splunkd)[benign["id"]]] == ["closed"]

    # a human decides in another process: the attack case finishes and reaches HEC too
    for p in _pending(config, attack["id"]):
        decided = _cli("approve" if p["action"] == "isolate_host" else "deny", attack["id"], p["action"],
                       "--target", p["target"], "--by", "alice", "--reason", "reviewed", "--config", config, "--json")
        assert decided.returncode == 0, decided.stderr[-2000:]
    # published once while waiting for the human, once when finished
    assert [e["status"] for e in _hec_cases(splunkd)[attack["id"]]] == ["awaiting_approval", "escalated"]

    updates, hec = len(splunkd.notable_updates), len(splunkd.hec_events)
    second = _summary(_cli("run", "--json", "--config", config))
    assert (second["fetched"], second["investigated"]) == (0, 0), second
    assert (len(splunkd.notable_updates), len(splunkd.hec_events)) == (updates, hec)

    splunkd.load([], [notable(LATER, NOTABLE_IDS[LATER])])
    third = _summary(_cli("run", "--json", "--config", config))
    assert (third["fetched"], third["investigated"], third["failed"]) == (1, 1, 0), third
    later = json.loads(_cli("cases", "show", third["cases"][0], "--json", "--config", config).stdout)
    assert later["alerts"][0]["id"] == NOTABLE_IDS[LATER]
    assert verdict_class(later["verdict"]) == verdict_class(expected_verdict(LATER)), later["summary"]
    _assert_written_back(splunkd, LATER)
    assert len(_updates(splunkd, ATTACK)) + len(_updates(splunkd, BENIGN)) == updates  # the others untouched
    intakes = [r["data"]["alert"] for r in audit_records(tmp_path / "home", "intake")]
    assert sorted(intakes) == sorted(NOTABLE_IDS.values())  # each notable admitted exactly once
    assert run_cli("audit", "verify", "--config", config).returncode == 0


def test_run_recovers_from_faults_without_losing_or_repeating_work(tmp_path: Path, splunkd: SplunkdEmulator) -> None:
    splunkd.load([], [notable(ATTACK, NOTABLE_IDS[ATTACK]), notable(BENIGN, NOTABLE_IDS[BENIGN])])
    config = _config(tmp_path, splunkd, auth="password", username="admin")
    splunkd.fail_next("quota", 2, after=4)                 # 503 search quota, twice in a row
    splunkd.fail_next("expire", 1, after=25)               # the session expires mid-run: log in again
    splunkd.fail_next("slow", 3, after=8, polls=4)         # jobs that keep running for a while
    splunkd.fail_next("drop", 1, path="/results", after=12)  # a results page lost on the wire
    splunkd.fail_next("status", 1, path="notable_update", code=503)  # busy: provably not applied, sent again
    splunkd.fail_next("lost_reply", 1, path="notable_update")  # then applied, answer lost: read back, not resent
    splunkd.fail_next("hec_busy", 1)

    summary = _summary(_cli("run", "--json", "--config", config))
    assert (summary["fetched"], summary["investigated"], summary["failed"]) == (2, 2, 0), summary
    assert [f.kind for f in splunkd.faults if f.remaining] == []  # every fault fired
    assert splunkd.logins >= 2  # logged in again after the expiry
    for name in (ATTACK, BENIGN):
        _assert_written_back(splunkd, name)
    statuses = {r.status for r in splunkd.requests}
    assert {401, 503, -1} <= statuses
    sent = [r.status for r in splunkd.requests if r.endpoint == "notable_update"]
    assert len(sent) == len(splunkd.notable_updates) + 1 and sent.count(503) == 1  # only the refused one repeated
    home = tmp_path / "home"
    assert sorted(r["data"]["alert"] for r in audit_records(home, "intake")) == sorted(
        [NOTABLE_IDS[ATTACK], NOTABLE_IDS[BENIGN]])
    cases = {c["alert"]: c for c in json.loads(_cli("cases", "list", "--json", "--config", config).stdout)}
    for name in (ATTACK, BENIGN):
        case = cases[NOTABLE_IDS[name]]
        assert verdict_class(case["verdict"]) == verdict_class(expected_verdict(name))
        assert all(a.rsplit(":", 1)[1] in ("done", "dry_run") for a in case["actions"]), case["actions"]
    assert cases[NOTABLE_IDS[BENIGN]]["status"] == "closed"
    benign_case = cases[NOTABLE_IDS[BENIGN]]["id"]
    assert [e["status"] for e in _hec_cases(splunkd)[benign_case]] == ["closed"]  # HEC busy once, indexed once
    from siemcrew.crew.checkpoints import CheckpointStore

    checkpoint = CheckpointStore(home / "cases.db").get("splunk")
    assert checkpoint and NOTABLE_IDS[BENIGN] in checkpoint


def test_write_backs_that_keep_failing_are_kept_listed_and_retried_by_the_next_run(
        tmp_path: Path, splunkd: SplunkdEmulator) -> None:
    """notable_update answering 500 and HEC busy beyond the connector's retries: nothing is lost. The run exits 4
    listing the pending write-backs, `cases list --status writeback_pending` and `doctor` show them, the next run
    sends them (reading back first), and each notable gets its verdict exactly once."""
    splunkd.load([], [notable(ATTACK, NOTABLE_IDS[ATTACK]), notable(BENIGN, NOTABLE_IDS[BENIGN])])
    config = _config(tmp_path, splunkd)
    splunkd.fail_next("status", 50, path="notable_update", code=500)
    splunkd.fail_next("hec_busy", 200)

    first = _cli("run", "--json", "--config", config)
    assert first.returncode == 4, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert (summary["fetched"], summary["investigated"], summary["failed"]) == (2, 2, 0), summary
    assert summary["writeback_pending"] and "needs attention" in first.stderr
    pending_keys = {line.split(": ", 1)[0] for line in summary["writeback_pending"]}
    assert any(k.endswith(":publish") for k in pending_keys)
    assert any(":update_alert:" in k or ":close_alert:" in k for k in pending_keys)
    assert not splunkd.notable_updates  # nothing reached splunkd
    listed = json.loads(_cli("cases", "list", "--status", "writeback_pending", "--json", "--config", config).stdout)
    assert {c["alert"] for c in listed} == {NOTABLE_IDS[ATTACK], NOTABLE_IDS[BENIGN]}
    doctor = _cli("doctor", "--json", "--no-data", "--config", config)
    checks = {c["check"]: c for c in json.loads(doctor.stdout)["checks"]}
    assert not checks["write-backs"]["ok"] and "write-back(s) not yet in the SIEM" in checks["write-backs"]["detail"]
    assert json.loads(_cli("cases", "list", "--json", "--config", config).stdout)  # cases are there, verdicts kept

    for fault in splunkd.faults:  # splunkd is back
        fault.remaining = 0
    second = _cli("run", "--json", "--config", config)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["writeback_pending"] == []
    for name in (ATTACK, BENIGN):
        _assert_written_back(splunkd, name)
    assert {e for e in _hec_cases(splunkd)} >= {c["id"] for c in listed}
    assert json.loads(_cli("cases", "list", "--status", "writeback_pending", "--json", "--config", config).stdout) == []
    kinds = [r["kind"] for r in audit_records(tmp_path / "home")]
    assert "outbox_retry" in kinds
    assert run_cli("audit", "verify", "--config", config).returncode == 0


def test_doctor_checks_hec_and_its_token_without_indexing_anything(tmp_path: Path, splunkd: SplunkdEmulator) -> None:
    config = _config(tmp_path, splunkd)
    good = json.loads(_cli("doctor", "--json", "--no-data", "--config", config).stdout)
    row = next(c for c in good["checks"] if c["check"] == "splunk HEC (case records)")
    assert row["ok"] and "token accepted" in row["detail"]
    bad = run_cli("doctor", "--json", "--no-data", "--config", config, env={**ENV, "SPLUNK_HEC_TOKEN": "wrong"})
    row = next(c for c in json.loads(bad.stdout)["checks"] if c["check"] == "splunk HEC (case records)")
    assert not row["ok"] and "rejected the token" in row["detail"] and not row["detail"].startswith("RuntimeError")
    assert splunkd.hec_events == []  # the probes indexed nothing
