"""End to end against the Elasticsearch + Kibana emulator: the product as an Elastic admin runs it.

The demo's raw Windows events are indexed the way the Elastic Agent's Windows and System
integrations index them (Winlogbeat ECS in `logs-windows.sysmon_operational-default`,
`logs-system.security-default`, ..., with the integrations' mappings), over TLS with a private CA;
Elastic Security alerts for demo attacks and a benign look-alike sit in
`.alerts-security.alerts-default`, each a copy of its triggering event's document.

* A Kibana rule webhook to a running `siemcrew serve` opens a case per alert; the verdict goes back
  (workflow status through Kibana's `signals/status`, a Kibana case for the escalated attack, every
  case in `siemcrew-cases`); a repeated webhook is deduplicated; a wrong secret is refused.
* `siemcrew run` with `source: elastic` in separate processes: verdicts written back, the checkpoint
  honoured, a new alert picked up by the next run and only it.
* The same run with 429s, 503s and timeouts injected into Elasticsearch and Kibana finishes with
  every alert handled exactly once: no lost verdict, no second Kibana case.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import EXAMPLES, run_cli

from emulators.e2e_helpers import (
    audit_records,
    expected_verdict,
    security_alert,
    serve,
    verdict_class,
    wait_for_case,
    webhook_body,
    winlogbeat_events,
    write_config,
)
from emulators.elastic import ElasticEmulator
from emulators.winlogbeat import index_mappings

ATTACK, BENIGN, LATER = "demo-2-encoded-powershell", "demo-4-procdump", "demo-3-wmi-powershell-dc"
UUIDS = {name: secrets.token_hex(32) for name in (ATTACK, BENIGN, LATER)}
SERVE_TOKEN = "serve-" + secrets.token_hex(8)
ALICE_TOKEN = "approver-alice-" + secrets.token_hex(8)
WEBHOOK_SECRET = "hook-" + secrets.token_hex(8)
REQUEST_TIMEOUT_S = 1.5


@pytest.fixture(scope="module")
def events() -> dict[str, tuple[list[str], list[dict[str, Any]]]]:
    """Data stream -> (ids, documents) of the demo scenarios, as the Elastic Agent indexes them."""
    streams: dict[str, tuple[list[str], list[dict[str, Any]]]] = {}
    for stream, doc_id, doc in winlogbeat_events(ATTACK, BENIGN, LATER):
        ids, docs = streams.setdefault(stream, ([], []))
        ids.append(doc_id)
        docs.append(doc)
    return streams


@pytest.fixture
def elastic(tmp_path: Path, events: dict[str, tuple[list[str], list[dict[str, Any]]]]) -> Iterator[ElasticEmulator]:
    with ElasticEmulator(tls=True, cert_dir=tmp_path / "tls", timeout_delay=REQUEST_TIMEOUT_S + 1.0) as emulator:
        for stream, (ids, docs) in events.items():
            emulator.index(stream, docs, ids=ids, mappings=index_mappings())
        yield emulator


def _env(emulator: ElasticEmulator) -> dict[str, str]:
    return {"ELASTIC_API_KEY": emulator.api_key, "SIEMCREW_SERVE_TOKEN": SERVE_TOKEN,
            "SIEMCREW_WEBHOOK_SECRET": WEBHOOK_SECRET, "SIEMCREW_APPROVER_ALICE": ALICE_TOKEN}


def _config(tmp_path: Path, emulator: ElasticEmulator) -> str:
    elastic = {"url": emulator.es_url, "kibana_url": emulator.kibana_url, "api_key_env": "ELASTIC_API_KEY",
               "ca_file": str(emulator.ca_file), "request_timeout": REQUEST_TIMEOUT_S, "retries": 3,
               "retry_wait": 0.01, "retry_wait_max": 0.05}
    # the demo's CONTOSO events, so the demo's CONTOSO inventory (its admins' sanctioned tools)
    return write_config(tmp_path / "siemcrew.yaml", {"source": "elastic", "home": str(tmp_path / "home"),
                                                     "assets_file": str(EXAMPLES / "assets.yaml"),
                                                     "elastic": elastic,
                                                     "serve": {"approvers": {"alice": "SIEMCREW_APPROVER_ALICE"}}})


def _alerts(emulator: ElasticEmulator, *names: str, detected_after_s: float = 60.0) -> list[dict[str, Any]]:
    docs = [security_alert(name, UUIDS[name], detected_after_s) for name in names]
    emulator.add_alerts(docs)
    return docs


def _cli(emulator: ElasticEmulator, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=_env(emulator), timeout=120)


def _json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _workflow(emulator: ElasticEmulator, name: str) -> str:
    doc = emulator.get_doc(".alerts-security.alerts-default", UUIDS[name])
    assert doc is not None
    return doc["kibana.alert.workflow_status"]


def _status_updates(emulator: ElasticEmulator, name: str) -> list[dict[str, Any]]:
    return [u for u in emulator.signal_status_updates if u["signal_ids"] == [UUIDS[name]]]


def _kibana_cases(emulator: ElasticEmulator, name: str) -> list[dict[str, Any]]:
    return [c for c in emulator.cases.values() if f"siemcrew-alert:{UUIDS[name]}" in c["tags"]]


def _attached_alerts(case: dict[str, Any]) -> list[str]:
    ids: list[str] = []
    for comment in case.get("comments", []):
        if comment.get("type") == "alert":
            ids.extend(comment["alertId"] if isinstance(comment["alertId"], list) else [comment["alertId"]])
    return ids


def _stored_case(emulator: ElasticEmulator, case_id: str) -> dict[str, Any] | None:
    return emulator.get_doc("siemcrew-cases", case_id)


def _event_searches(emulator: ElasticEmulator) -> int:
    return len(emulator.calls("es", path_contains="logs-"))


def _assert_written_back(emulator: ElasticEmulator, name: str, case: dict[str, Any]) -> None:
    """Benign: closed with a reason, no Kibana case. Attack: acknowledged and one Kibana case holding the alert."""
    assert verdict_class(case["verdict"]) == verdict_class(expected_verdict(name)), (name, case["summary"])
    if verdict_class(expected_verdict(name)) == "benign":
        assert _workflow(emulator, name) == "closed"
        assert [(u["status"], u.get("reason")) for u in _status_updates(emulator, name)] == [("closed", "benign_positive")]
        assert _kibana_cases(emulator, name) == []
    else:
        assert _workflow(emulator, name) == "acknowledged"
        assert {u["status"] for u in _status_updates(emulator, name)} == {"acknowledged"}
        kibana = _kibana_cases(emulator, name)
        assert len(kibana) == 1, kibana
        assert _attached_alerts(kibana[0]) == [UUIDS[name]]
        notes = [c["comment"] for c in kibana[0]["comments"] if c.get("type") == "user"]
        assert notes and all("siemcrew" in n for n in notes)


def _decide_all(emulator: ElasticEmulator, config: str, case_id: str) -> None:
    """A human in another process: approve the isolation, deny the rest."""
    pending = [p for p in _json(_cli(emulator, "approvals", "--json", "--config", config)) if p["case_id"] == case_id]
    assert pending, "the attack waits for a human"
    for p in sorted(pending, key=lambda p: p["action"] == "isolate_host"):
        decided = _cli(emulator, "approve" if p["action"] == "isolate_host" else "deny", case_id, p["action"],
                       "--target", p["target"], "--by", "alice", "--reason", "reviewed", "--config", config, "--json")
        assert decided.returncode == 0, decided.stderr[-2000:]


# -- the Kibana webhook into `siemcrew serve` -----------------------------------------------------
def test_kibana_webhook_to_serve_opens_cases_writes_back_and_dedupes(tmp_path: Path, elastic: ElasticEmulator) -> None:
    attack_doc, benign_doc = _alerts(elastic, ATTACK, BENIGN)
    config = _config(tmp_path, elastic)
    bearer = {"Authorization": f"Bearer {SERVE_TOKEN}"}
    with serve(config, _env(elastic), tmp_path / "serve.log") as url:
        hook = f"{url}/v1/alerts/elastic"
        body = webhook_body([attack_doc])
        assert httpx.post(hook, json=body).status_code == 401
        assert httpx.post(hook, json=body, headers={"X-Siemcrew-Secret": "guess"}).status_code == 403
        secret = {"X-Siemcrew-Secret": WEBHOOK_SECRET}
        garbled = httpx.post(hook, content=b"\xff{not json", headers={**secret, "Content-Type": "application/json"})
        assert garbled.status_code in (400, 422)  # a clear refusal, not a 500
        no_uuid = httpx.post(hook, json={**body, "alerts": [{"@timestamp": "2026-11-18T15:42:09Z"}]}, headers=secret)
        assert no_uuid.status_code == 422 and "kibana.alert.uuid" in no_uuid.text
        assert httpx.get(f"{url}/v1/cases", headers=bearer).json() == []

        first = httpx.post(hook, json=body, headers=secret)
        assert first.status_code == 202, first.text
        attack_case_id = first.json()["case_ids"][0]
        attack = wait_for_case(url, SERVE_TOKEN, attack_case_id)
        assert attack["alerts"][0]["id"] == UUIDS[ATTACK] and attack["status"] == "awaiting_approval"
        _assert_written_back(elastic, ATTACK, attack)
        searches = _event_searches(elastic)
        assert searches > 5  # the crew hunted in Elasticsearch

        # Kibana sends the same alert again (a re-run of the rule action): nothing new happens
        again = httpx.post(hook, json=body, headers=secret)
        assert again.status_code == 200 and again.json()["duplicate"] is True
        assert again.json()["case_ids"] == [attack_case_id]
        time.sleep(0.5)
        assert httpx.get(f"{url}/healthz").json()["idle"] is True
        assert _event_searches(elastic) == searches
        assert len(httpx.get(f"{url}/v1/cases", headers=bearer).json()) == 1

        benign = httpx.post(hook, json=webhook_body([benign_doc]), headers=secret)
        assert benign.status_code == 202, benign.text
        closed = wait_for_case(url, SERVE_TOKEN, benign.json()["case_ids"][0])
        assert closed["status"] == "closed"
        _assert_written_back(elastic, BENIGN, closed)
        stored = _stored_case(elastic, closed["id"])
        assert stored and stored["verdict"] == "benign" and stored["alert_ids"] == [UUIDS[BENIGN]]

        # the analyst approves over HTTP: the attack case finishes and is published
        pending = [p for p in httpx.get(f"{url}/v1/approvals", headers=bearer).json() if p["case_id"] == attack_case_id]
        for p in sorted(pending, key=lambda p: p["action"] == "isolate_host"):
            decision = "approve" if p["action"] == "isolate_host" else "deny"
            answer = httpx.post(f"{url}/v1/cases/{attack_case_id}/actions/{p['action']}/{decision}",
                                headers={"Authorization": f"Bearer {ALICE_TOKEN}"},
                                json={"by": "alice", "reason": "reviewed", "target": p["target"]}, timeout=60)
            assert answer.status_code == 200, answer.text
        assert answer.json()["case"]["status"] == "escalated"

    stored = _stored_case(elastic, attack_case_id)
    kibana = _kibana_cases(elastic, ATTACK)
    assert stored and stored["status"] == "escalated" and stored["kibana_case_id"] == kibana[0]["id"]
    assert len(elastic.cases) == 1  # one Kibana case: the escalated attack
    assert [a["action"] for a in stored["actions"]].count("isolate_host") == 1
    intakes = [(r["data"]["alert"], r["data"]["new"]) for r in audit_records(tmp_path / "home", "intake")]
    assert intakes == [(UUIDS[ATTACK], True), (UUIDS[ATTACK], False), (UUIDS[BENIGN], True)]  # the repeat is on record


# -- `siemcrew run` with source: elastic -----------------------------------------------------------
def test_run_writes_verdicts_back_and_picks_up_only_new_alerts(tmp_path: Path, elastic: ElasticEmulator) -> None:
    _alerts(elastic, ATTACK, BENIGN)
    config = _config(tmp_path, elastic)

    first = _json(_cli(elastic, "run", "--json", "--config", config))
    assert (first["fetched"], first["investigated"], first["failed"]) == (2, 2, 0), first
    cases = {c["alert"]: c for c in _json(_cli(elastic, "cases", "list", "--json", "--config", config))}
    assert set(cases) == {UUIDS[ATTACK], UUIDS[BENIGN]}
    for name in (ATTACK, BENIGN):
        _assert_written_back(elastic, name, cases[UUIDS[name]])
    assert cases[UUIDS[BENIGN]]["status"] == "closed"
    assert _stored_case(elastic, cases[UUIDS[BENIGN]]["id"])["status"] == "closed"
    attack_id = cases[UUIDS[ATTACK]]["id"]
    assert cases[UUIDS[ATTACK]]["status"] == "awaiting_approval"
    assert _stored_case(elastic, attack_id)["status"] == "awaiting_approval"  # published while it waits

    _decide_all(elastic, config, attack_id)
    stored = _stored_case(elastic, attack_id)
    assert stored and stored["status"] == "escalated"
    assert stored["kibana_case_id"] == _kibana_cases(elastic, ATTACK)[0]["id"] and len(elastic.cases) == 1

    updates, searches = len(elastic.signal_status_updates), _event_searches(elastic)
    second = _json(_cli(elastic, "run", "--json", "--config", config))
    assert (second["fetched"], second["investigated"]) == (0, 0), second
    assert (len(elastic.signal_status_updates), _event_searches(elastic)) == (updates, searches)

    _alerts(elastic, LATER, detected_after_s=120.0)
    third = _json(_cli(elastic, "run", "--json", "--config", config))
    assert (third["fetched"], third["investigated"], third["failed"]) == (1, 1, 0), third
    later = next(c for c in _json(_cli(elastic, "cases", "list", "--json", "--config", config))
                 if c["id"] == third["cases"][0])
    assert later["alert"] == UUIDS[LATER]
    _assert_written_back(elastic, LATER, later)
    assert len(_status_updates(elastic, ATTACK)) + len(_status_updates(elastic, BENIGN)) == updates
    assert sorted(r["data"]["alert"] for r in audit_records(tmp_path / "home", "intake")) == sorted(UUIDS.values())
    assert run_cli("audit", "verify", "--config", config).returncode == 0


def test_run_recovers_from_429_503_and_timeouts_without_losing_or_repeating_work(
        tmp_path: Path, elastic: ElasticEmulator) -> None:
    _alerts(elastic, ATTACK, BENIGN)
    config = _config(tmp_path, elastic)
    elastic.fail_next("429", 2, path=".alerts-security", retry_after="0")   # the alert feed is throttled
    elastic.fail_next("503", 2, path="logs-")                                 # hunts hit an unavailable cluster
    elastic.fail_next("timeout", 1, path="logs-")                             # ... and one answer never comes
    elastic.fail_next("429", 1, server="kibana", path="signals/status")       # write-back throttled
    elastic.fail_next("503", 1, server="kibana", path="signals/status")
    elastic.fail_next("timeout", 1, server="kibana", path="/api/cases", method="POST")  # case made, answer lost

    summary = _json(_cli(elastic, "run", "--json", "--config", config))
    assert (summary["fetched"], summary["investigated"], summary["failed"]) == (2, 2, 0), summary
    assert elastic.faults == []  # every fault fired
    cases = {c["alert"]: c for c in _json(_cli(elastic, "cases", "list", "--json", "--config", config))}
    for name in (ATTACK, BENIGN):
        _assert_written_back(elastic, name, cases[UUIDS[name]])
        shown = _json(_cli(elastic, "cases", "show", cases[UUIDS[name]]["id"], "--json", "--config", config))
        assert [e["id"] for e in shown["evidence"] if e["status"] == "error"] == []  # every failed query recovered
        assert all(r["state"] in ("done", "dry_run") for r in shown["results"]), shown["results"]
    assert len(elastic.cases) == 1  # the timed-out case creation was found, not repeated
    assert sorted(r["data"]["alert"] for r in audit_records(tmp_path / "home", "intake")) == sorted(
        [UUIDS[ATTACK], UUIDS[BENIGN]])
    statuses = [r for r in elastic.requests if r.server == "kibana" and "signals/status" in r.path]
    assert len(statuses) == len(elastic.signal_status_updates) + 2  # the two refused attempts, then applied once each


def test_a_signals_status_that_keeps_failing_is_kept_and_sent_by_the_next_run(
        tmp_path: Path, elastic: ElasticEmulator) -> None:
    """Kibana answering 503 to every signals/status and case call beyond the retries: the run exits 4 listing
    the write-backs; the next run, with Kibana back, sends each exactly once and opens the Kibana case."""
    _alerts(elastic, ATTACK, BENIGN)
    config = _config(tmp_path, elastic)
    elastic.fail_next("503", 400, server="kibana")

    first = _cli(elastic, "run", "--json", "--config", config)
    assert first.returncode == 4, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert (summary["fetched"], summary["investigated"], summary["failed"]) == (2, 2, 0), summary
    assert summary["writeback_pending"] and not elastic.signal_status_updates
    waiting = _json(_cli(elastic, "cases", "list", "--status", "writeback_pending", "--json", "--config", config))
    assert {c["alert"] for c in waiting} == {UUIDS[ATTACK], UUIDS[BENIGN]}

    with elastic.lock:
        elastic.faults.clear()  # Kibana is back
    second = _cli(elastic, "run", "--json", "--config", config)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["writeback_pending"] == []
    cases = {c["alert"]: c for c in _json(_cli(elastic, "cases", "list", "--json", "--config", config))}
    assert cases[UUIDS[BENIGN]]["status"] == "closed"
    assert [u for u in _status_updates(elastic, BENIGN)] and len(_status_updates(elastic, BENIGN)) == 1
    assert len(_status_updates(elastic, ATTACK)) == 1
    assert _json(_cli(elastic, "cases", "list", "--status", "writeback_pending", "--json", "--config", config)) == []
    assert run_cli("audit", "verify", "--config", config).returncode == 0
