"""A verified malicious case → isolation proposal → approval in a separate process → containment
confirmed by the EDR → release on a later approval; never a second containment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from conftest import EXAMPLES, run_cli
from emulators.edr_falcon import CLIENT_ID, CLIENT_SECRET, FalconEmulator

from siemcrew.config.settings import Settings
from siemcrew.crew.models import Alert
from siemcrew.crew.operations import investigate
from siemcrew.crew.runtime import Runtime

HOST = "WS-HR-02"
AID = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


ENV = {"FALCON_CLIENT_ID": CLIENT_ID, "FALCON_CLIENT_SECRET": CLIENT_SECRET}


def _falcon_config(tmp_path: Path, monkeypatch, falcon: FalconEmulator, covered: str,
                   action_timeout_s: float = 20) -> Path:
    """The demo's events with `executor: edr` and Falcon covering the hosts that match `covered`."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "siemcrew.yaml"
    config.write_text(yaml.safe_dump({
        "home": str(tmp_path / "home"), "source": "local", "executor": "edr",
        "local": {"events": [str(EXAMPLES / "events")]},
        "edr": {"action_timeout_s": action_timeout_s, "poll_interval_s": 0.05,
                "crowdstrike": {"base_url": falcon.base_url, "verify": False},
                "coverage": [{"hosts": [covered], "vendor": "crowdstrike"}]},
    }), encoding="utf-8")
    return config


def _investigate_stager(config: Path) -> tuple[Runtime, Any]:
    rt = Runtime(Settings.load(config))
    alert = Alert.model_validate_json((EXAMPLES / "alerts" / "demo-2-encoded-powershell.json").read_text())
    return rt, investigate(rt, alert)


def test_containment_is_a_confirmed_state_executed_once_and_released_on_later_approval(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    falcon = FalconEmulator()
    falcon.add_device(AID, HOST, local_ip="10.10.20.12")
    falcon.start()
    try:
        env = ENV
        config = _falcon_config(tmp_path, monkeypatch, falcon, "WS-*")
        rt, case = _investigate_stager(config)
        assert case.verdict == "malicious" and case.verification.status == "complete"
        assert case.status == "awaiting_approval"
        pending = {(p.action, p.target) for p in rt.approvals.pending(case.id)}
        assert ("isolate_host", HOST) in pending
        assert falcon.contain_requests() == []  # nothing happens before a human decides
        # the endpoint's own view was collected as evidence while hunting
        assert any(e.kind == "endpoint_context" and e.status == "ok" for e in case.evidence)

        for action, target in sorted(pending - {("isolate_host", HOST)}):
            denied = run_cli("deny", case.id, action, "--target", target, "--by", "bob", "--reason", "not now",
                             "--config", str(config), env=env)
            assert denied.returncode == 0, denied.stderr[-2000:]
        approved = run_cli("approve", case.id, "isolate_host", "--target", HOST, "--by", "alice",
                           "--reason", "confirmed stager", "--config", str(config), "--json", env=env)
        assert approved.returncode == 0, approved.stderr[-3000:]
        row = json.loads(approved.stdout)["case"]
        assert f"isolate_host:{HOST}:done" in row["actions"]
        assert falcon.devices[AID]["status"] == "contained"
        assert len(falcon.contain_requests()) == 1
        note = falcon.actions[0]["note"] or ""
        assert case.id in note and "alice" in note

        again = run_cli("approve", case.id, "isolate_host", "--target", HOST, "--by", "alice", "--reason", "again",
                        "--config", str(config), env=env)
        assert again.returncode == 6
        assert len(falcon.contain_requests()) == 1

        proposed = run_cli("propose", case.id, "release_host", "--target", HOST, "--by", "bob",
                           "--reason", "reimaged and clean", "--config", str(config), "--json", env=env)
        assert proposed.returncode == 0, proposed.stderr[-3000:]
        assert json.loads(proposed.stdout)["decision"]["outcome"] == "approval_required"
        assert falcon.devices[AID]["status"] == "contained"
        released = run_cli("approve", case.id, "release_host", "--target", HOST, "--by", "carol",
                           "--reason", "verified clean", "--config", str(config), "--json", env=env)
        assert released.returncode == 0, released.stderr[-3000:]
        assert f"release_host:{HOST}:done" in json.loads(released.stdout)["case"]["actions"]
        assert falcon.devices[AID]["status"] == "normal"
        lifts = [a for a in falcon.actions if a["action_name"] == "lift_containment"]
        assert len(lifts) == 1 and len(falcon.contain_requests()) == 1
        assert run_cli("audit", "verify", "--config", str(config), env=env).returncode == 0
    finally:
        falcon.stop()


def test_under_executor_edr_a_host_no_edr_covers_is_a_failed_action_not_a_dry_run(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    falcon = FalconEmulator()
    falcon.add_device(AID, HOST, local_ip="10.10.20.12")
    falcon.start()
    try:
        _, case = _investigate_stager(_falcon_config(tmp_path, monkeypatch, falcon, "SRV-*"))  # not the workstations
        kills = [r for r in case.results if r.action == "kill_process"]
        assert kills and all(r.state == "failed" and "no configured EDR covers host" in r.detail for r in kills)
        assert not any(r.state == "dry_run" for r in case.results if r.action in ("isolate_host", "kill_process"))
        assert falcon.contain_requests() == []
    finally:
        falcon.stop()


def test_a_containment_that_timed_out_is_asked_about_again_by_the_next_run(tmp_path: Path, monkeypatch) -> None:
    """The vendor does not confirm within the timeout: the action is reported timed_out, never assumed. The next
    run asks the vendor about the same ticket (nothing is re-sent) and records what it says."""
    from siemcrew.crew.operations import decide, run

    falcon = FalconEmulator()
    falcon.add_device(AID, HOST, local_ip="10.10.20.12")
    falcon.lifecycle.outcome = "never"
    falcon.start()
    try:
        rt, case = _investigate_stager(_falcon_config(tmp_path, monkeypatch, falcon, "WS-*", action_timeout_s=0.3))
        for pending in rt.approvals.pending(case.id):
            decision = "approve" if pending.action == "isolate_host" else "deny"
            _, case = decide(rt, case.id, pending.action, decision, by="alice", reason="reviewed", target=pending.target)
        isolate = next(r for r in case.results if r.action == "isolate_host")
        assert isolate.state == "timed_out" and len(falcon.contain_requests()) == 1
        falcon.lifecycle.outcome = "succeed"
        summary = run(rt)
        assert summary.containment_unconfirmed == []
        again = next(r for r in rt.cases.get(case.id).results if r.action == "isolate_host")
        assert again.state == "done" and again.ticket == isolate.ticket
        assert rt.ledger.get(isolate.key).state == "done" and len(falcon.contain_requests()) == 1
        assert any(r["kind"] == "action_reconciled" for r in audit_lines(rt))
    finally:
        falcon.stop()


def audit_lines(rt: Runtime) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (rt.settings.home_path / "audit.jsonl").read_text().splitlines() if line.strip()]
