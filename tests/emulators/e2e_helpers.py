"""Shared pieces of the end-to-end tests against the Splunk and Elastic emulators.

Demo data goes in the way each SIEM would hold it: raw Windows events become Splunk events as the
Splunk add-ons for Windows and Sysmon index them (`splunk_ta.py`, written from the vendors'
definitions), or Elasticsearch documents as Winlogbeat / the Elastic Agent index them
(`winlogbeat.py`, likewise written from the vendors' ingest pipelines).
Alerts are built from the demo's alert files in the shape each SIEM hands them out: ES notables, alert-action result rows, Elastic Security alert documents. The
`siemcrew serve` process helper starts the real service and waits for it.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml

from siemcrew.crew.timeutil import iso, parse_time

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
EXPECTED = json.loads((EXAMPLES / "expected.json").read_text(encoding="utf-8"))["alerts"]
WEBHOOK_PAYLOAD = REPO.parent / "shared" / "reference" / "elastic" / "webhook_payload.json"
FINISHED = ("closed", "escalated", "failed", "awaiting_approval")


# -- demo data ------------------------------------------------------------------------------------
def demo_alert(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / "alerts" / f"{name}.json").read_text(encoding="utf-8"))


def expected_verdict(name: str) -> str:
    return EXPECTED[name]["verdict"]


def verdict_class(verdict: str) -> str:
    """benign | attack (malicious and suspicious both mean: escalate, never close) | the verdict itself."""
    return "attack" if verdict in ("malicious", "suspicious") else verdict


def scenario_raw_events(*names: str) -> list[dict[str, Any]]:
    """The raw Windows events (NXLog JSON) of the named demo alerts' scenario files."""
    events: list[dict[str, Any]] = []
    for name in names:
        for relative in EXPECTED[name]["events_files"]:
            for line in (EXAMPLES / relative).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    events.append(json.loads(line))
    return events


def scenario_events(*names: str) -> list[dict[str, Any]]:
    """Flat ECS events of the named demo alerts' scenario files, through siemcrew's normalizer."""
    from siemcrew.connectors.local.normalize import Normalizer

    normalizer = Normalizer()
    normalized = (normalizer.normalize(raw) for raw in scenario_raw_events(*names))
    return [item.doc for item in normalized if item is not None]


def shifted(timestamp: str, seconds: float) -> str:
    """An ISO timestamp moved by `seconds` (a detection comes a little after its event)."""
    moment = parse_time(timestamp)
    assert moment is not None, timestamp
    return iso(moment + timedelta(seconds=seconds))


# -- Splunk shapes --------------------------------------------------------------------------------
def splunk_events(*names: str) -> list[dict[str, Any]]:
    """The named demo scenarios' events as the Splunk add-ons for Windows and Sysmon index them."""
    from emulators.splunk_ta import ta_event

    return [ta_event(raw) for raw in scenario_raw_events(*names)]


def notable(name: str, event_id: str, delay_s: float = 45.0) -> dict[str, Any]:
    """An ES notable for a demo alert, as the `notable` macro returns it (fields of the triggering event)."""
    alert = demo_alert(name)
    proc = alert.get("process") or {}
    event = alert.get("event") or {}
    row = {
        "_time": shifted(alert["timestamp"], delay_s),
        "event_id": event_id,
        "rule_id": event_id,
        "rule_name": alert["rule_name"],
        "search_name": f"Endpoint - {alert['rule_name']} - Rule",
        "rule_description": alert.get("description", ""),
        "security_domain": "endpoint",
        "severity": alert.get("severity", "medium"),
        "urgency": alert.get("severity", "medium"),
        "status": "1",
        "owner": "unassigned",
        "dest": event.get("host.name") or alert["entities"]["hosts"][0],
        "user": (alert["entities"].get("users") or [None])[0],
        **_process_fields(proc),
        "EventCode": event.get("event.code"),
        "annotations.mitre_attack": alert.get("techniques") or [],
        "orig_time": alert["timestamp"],
        "drilldown_search": f'index=wineventlog dest="{event.get("host.name", "")}"',
    }
    return {key: value for key, value in row.items() if value not in (None, "", [])}


def _process_fields(proc: dict[str, Any]) -> dict[str, Any]:
    """A demo alert's process as the CIM process fields of a Splunk row."""
    return {"process_path": proc.get("executable"), "process": proc.get("command_line"), "process_id": proc.get("pid"),
            "parent_process_path": proc.get("parent_executable"), "parent_process": proc.get("parent_command_line"),
            "parent_process_id": proc.get("parent_pid")}


def action_rows(name: str) -> list[dict[str, Any]]:
    """The result rows of a saved search that fired on a demo alert's event (fields as `table` keeps them)."""
    alert = demo_alert(name)
    event = alert["event"]
    proc = alert.get("process") or {}
    row = {
        "_time": alert["timestamp"],
        "dest": event.get("host.name"),
        "user": (alert["entities"].get("users") or [None])[0],
        **_process_fields(proc),
        "EventCode": event.get("event.code"),
        "tag": list(event.get("event.category") or []),
    }
    return [{key: value for key, value in row.items() if value not in (None, "", [])}]


# -- Elastic shapes -------------------------------------------------------------------------------
def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat dotted keys -> nested objects, as Beats ship ECS and the webhook's `asJSON` renders it."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{key}: a parent of this field is itself a value")
        node[parts[-1]] = value
    return out


def winlogbeat_events(*names: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The named demo scenarios' events as the Elastic Agent indexes them: (data stream, id, document)."""
    import hashlib

    from emulators.winlogbeat import winlogbeat_document

    out = []
    for raw in scenario_raw_events(*names):
        stream, doc = winlogbeat_document(raw)
        out.append((stream, hashlib.sha1(json.dumps(raw, sort_keys=True).encode()).hexdigest(), doc))
    return out


def security_alert(name: str, uuid: str, detected_after_s: float = 60.0) -> dict[str, Any]:
    """An Elastic Security alert document for a demo alert: the detection engine's copy of the
    triggering event as the Agent indexed it (found by record id and host), its `kibana.alert.*`
    keys, and the rule's ATT&CK mapping from the demo alert's techniques."""
    from emulators.elastic_security import Rule, detection_alert, threat_from_tags

    alert = demo_alert(name)
    record, host = str(alert["event"].get("winlog.record_id")), str(alert["event"].get("host.name"))
    stream, doc_id, doc = next(
        (s, i, d) for s, i, d in winlogbeat_events(name)
        if d["winlog"].get("record_id") == record and d["winlog"].get("computer_name") == host
    )
    rule = Rule(
        name=alert["rule_name"], rule_id=alert.get("rule_id") or f"rule-{name}", uuid=f"rule-{name}",
        severity=alert.get("severity", "medium"), risk_score=alert.get("risk_score") or 73,
        description=alert.get("description", ""), tags=alert.get("tags") or [],
        threat=threat_from_tags([f"attack.{t}" for t in alert.get("techniques") or []] + list(alert.get("tags") or [])),
    )
    return detection_alert(doc, stream, doc_id, uuid, rule, detected_after_s)


def webhook_body(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Kibana rule action body (examples/elastic/kibana_rule_action.json's template) for these alerts."""
    body = json.loads(WEBHOOK_PAYLOAD.read_text(encoding="utf-8"))
    rendered = []
    for doc in docs:
        flat_kibana = {k: v for k, v in doc.items() if k.startswith("kibana.")}
        rest = {k: v for k, v in doc.items() if not k.startswith("kibana.")}
        rendered.append({**copy.deepcopy(rest), **nest(flat_kibana)})
    body.update(rule_name=docs[0]["kibana.alert.rule.name"], rule_id=docs[0]["kibana.alert.rule.uuid"],
                alerts_count=len(docs), alerts=rendered)
    return body


# -- processes ------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(path: Path, data: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(path)


@contextmanager
def serve(config: str, env: dict[str, str], log_path: Path, timeout_s: float = 60.0) -> Iterator[str]:
    """`siemcrew serve` in its own process; yields its base URL once /healthz answers."""
    port = free_port()
    full_env = {**os.environ, **env}
    full_env.pop("SIEMCREW_CONFIG", None)
    with log_path.open("w", encoding="utf-8") as log:
        proc = subprocess.Popen([sys.executable, "-m", "siemcrew.cli", "serve", "--config", config, "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, env=full_env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"siemcrew serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"siemcrew serve did not answer /healthz:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def wait_for_case(url: str, token: str, case_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll `GET /v1/cases/{id}` until the investigation stopped (verdict, or waiting for a human)."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = httpx.get(f"{url}/v1/cases/{case_id}", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert answer.status_code == 200, answer.text
        case = answer.json()
        if case["status"] in FINISHED:
            return case
        if time.monotonic() > deadline:
            raise AssertionError(f"case {case_id} still {case['status']} after {timeout_s}s")
        time.sleep(0.2)


def audit_records(home: Path, kind: str | None = None) -> list[dict[str, Any]]:
    path = home / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]
