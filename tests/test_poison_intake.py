"""Intake that cannot be poisoned: an alert nested or sized past what any SIEM sends is refused at the edge with
422 naming the limit, and a stored case that no longer reads is quarantined and reported, never blocking
listing, `run` or `serve`."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, run_cli
from fastapi.testclient import TestClient

from siemcrew.config.settings import Settings
from siemcrew.crew.casestore import CaseStore
from siemcrew.crew.models import MAX_PAYLOAD_DEPTH, Alert
from siemcrew.service import create_app

TOKEN = "intake-token-for-tests"
ALERT = json.loads((EXAMPLES / "alerts" / "demo-4-procdump.json").read_text(encoding="utf-8"))


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SIEMCREW_SERVE_TOKEN", TOKEN)
    settings = Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path / "home"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.mark.parametrize("depth", [MAX_PAYLOAD_DEPTH + 1, 200, 900])
def test_a_deeply_nested_alert_is_refused_with_422_naming_the_limit(client: Any, depth: int) -> None:
    answer = client.post("/v1/alerts", json={**ALERT, "raw": nested(depth)}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 422, answer.text
    assert f"deeper than {MAX_PAYLOAD_DEPTH} levels" in answer.text
    listed = client.get("/v1/cases", headers={"Authorization": f"Bearer {TOKEN}"})
    assert listed.status_code == 200 and listed.json() == []


def test_an_alert_at_the_limit_and_an_oversized_one(client: Any) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert client.post("/v1/alerts", json={**ALERT, "raw": nested(MAX_PAYLOAD_DEPTH)}, headers=headers).status_code == 202
    huge = client.post("/v1/alerts", json={**ALERT, "id": "huge", "raw": {"blob": "x" * 1_100_000}}, headers=headers)
    assert huge.status_code == 422 and "larger than" in huge.text


def test_an_unreadable_stored_case_is_quarantined_and_blocks_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = CaseStore(home / "cases.db")
    good, _ = store.admit(Alert.model_validate(ALERT))
    bad, _ = store.admit(Alert.model_validate({**ALERT, "id": "other", "process": None,
                                               "entities": {"hosts": ["WS-OTHER"]}}))
    with sqlite3.connect(home / "cases.db") as db:  # written by a build that allowed it, or damaged on disk
        db.execute("UPDATE cases SET body = ? WHERE id = ?", (json.dumps({"id": bad.id, "raw": nested(300)}), bad.id))
    assert [c.id for c in store.list()] == [good.id]
    assert [q["case"] for q in store.quarantined()] == [bad.id]
    with pytest.raises(KeyError):
        store.get(bad.id)
    config = tmp_path / "siemcrew.yaml"
    config.write_text(json.dumps({"home": str(home)}), encoding="utf-8")
    listed = run_cli("cases", "list", "--json", "--config", str(config))
    assert listed.returncode == 0 and [c["id"] for c in json.loads(listed.stdout)] == [good.id]
    doctor = json.loads(run_cli("doctor", "--json", "--no-data", "--config", str(config)).stdout)
    check = next(c for c in doctor["checks"] if c["check"] == "case store")
    assert not check["ok"] and bad.id in check["detail"]


def test_an_archive_that_unpacks_past_its_cap_is_refused_unread(tmp_path: Path) -> None:
    """A zip bomb (a small zip holding a member far larger than any recording) is refused before it is read:
    peak memory stays near the cap, not the member's size; what fits is loaded."""
    import resource
    import zipfile

    from siemcrew.connectors.local.store import EventStore

    event = json.dumps({"EventID": 1, "Hostname": "WS-1", "Image": "C:\\\\x.exe", "@timestamp": "2024-05-01T10:00:00Z"})
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("small.json", event + "\n")
        archive.writestr("huge.json", (event + "\n") * (64 * 1024**2 // len(event)))  # ~64 MB unpacked
    assert bomb.stat().st_size < 2 * 1024**2
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = EventStore().load([bomb], max_archive_bytes=8 * 1024**2)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    skipped = dict(report.skipped)
    assert "more than 8388608 bytes" in skipped[f"{bomb}:huge.json"]
    assert report.events == 1 and grown_mb < 48


def test_a_long_alert_list_is_admitted_in_the_background_in_batches(client: Any) -> None:
    """A backlog of 250 alerts (three batches) answers 202 at once with a job; the job admits them batch by batch and
    reports how far it got; posting the same list again admits nothing twice."""
    import time

    from siemcrew.service import INTAKE_BATCH

    headers = {"Authorization": f"Bearer {TOKEN}"}
    backlog = [{**ALERT, "id": f"backlog-{i}", "entities": {"hosts": [f"WS-{i:04d}"]}} for i in range(250)]
    started = time.monotonic()
    answer = client.post("/v1/alerts", json=backlog, headers=headers)
    assert answer.status_code == 202 and answer.json()["alerts"] == 250
    assert time.monotonic() - started < 30  # validated and queued, not admitted inline
    job = answer.json()["job"]
    deadline = time.monotonic() + 240
    while (status := client.get(f"/v1/intake/{job}", headers=headers).json())["state"] != "done":
        assert status["state"] in ("queued", "admitting") and status["admitted"] % INTAKE_BATCH in (0, 50), status
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert (status["admitted"], status["accepted"], len(status["case_ids"])) == (250, 250, 250)
    again = client.post("/v1/alerts", json=backlog, headers=headers).json()["job"]
    while (status := client.get(f"/v1/intake/{again}", headers=headers).json())["state"] != "done":
        time.sleep(0.5)
    assert status["accepted"] == 0 and status["admitted"] == 250
    assert client.get("/v1/intake/nope", headers=headers).status_code == 404


def test_a_boolean_is_not_a_timestamp() -> None:
    """`true` passed as epoch second 1 (a bool is an int in Python); Schemathesis found it in the contract run."""
    from pydantic import ValidationError

    from siemcrew.crew.models import TimeRange

    for bad in (True, False):
        with pytest.raises(ValidationError, match="not a timestamp"):
            Alert(id="a", rule_name="r", timestamp=bad)
        with pytest.raises(ValidationError, match="not a timestamp"):
            TimeRange(start=bad, end="2026-01-01T00:00:00Z")
    assert Alert(id="a", rule_name="r", timestamp=1_700_000_000).timestamp.year == 2023
