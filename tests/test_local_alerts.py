"""Local alert sources, the checkpoint contract, write-back, and the entity helpers."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from emulators.local_data import SIGMA, labelled_alerts, recording

from siemcrew.connectors.base import AlertUpdate, ConnectorError
from siemcrew.connectors.local import EventStore, LocalConnector, entities_from_events, process_ref_from_event
from siemcrew.crew.models import Alert, Case

RUN_KEYS = "SDWIN-200722001847_empire_run_keys_elevated_user"


def alert_json(alert_id: str, timestamp: str, **extra) -> dict:
    return {"id": alert_id, "rule_name": f"rule {alert_id}", "timestamp": timestamp, **extra}


@pytest.fixture(scope="module")
def run_keys_store() -> EventStore:
    store = EventStore()
    store.load(sorted(recording(RUN_KEYS).glob("*.zip")), scope=RUN_KEYS)
    return store


def test_sigma_rules_become_grouped_alerts(run_keys_store):
    rows = labelled_alerts(RUN_KEYS)
    rules = [SIGMA / row["rule_path"] for row in rows]
    connector = LocalConnector(run_keys_store, sigma_rules=rules)
    batch = connector.fetch_alerts(None, limit=100)
    assert len(batch.alerts) == len(rows) == 2
    for alert, row in zip(sorted(batch.alerts, key=lambda a: a.rule_id or ""), sorted(rows, key=lambda r: r["rule_id"])):
        assert alert.rule_id == row["rule_id"] and alert.rule_name == row["rule_title"]
        assert alert.severity == row["level"] and alert.scope == RUN_KEYS
        assert alert.rule_path and alert.rule_path.endswith(Path(row["rule_path"]).name)
        assert alert.techniques == [tag.removeprefix("attack.").upper() for tag in row["attack_tags"].split()]
        assert alert.timestamp.isoformat().startswith(row["first"][:19])
        assert alert.first_seen <= alert.last_seen
        assert alert.entities.hosts == [row["host"]]
        assert alert.entities.processes == [row["sample_image"]]
        assert alert.entities.users == []  # these Sysmon 13 events carry no User field
        assert alert.event["event.category"] == "registry" and alert.event["registry.path"]
        assert alert.process is not None and alert.process.executable == row["sample_image"]
        assert alert.raw["n_events"] == int(row["n_events"])
        assert alert.drilldown and alert.drilldown.startswith("SELECT * FROM events WHERE")
    # Ids are stable: the same store and rules give the same alerts again.
    assert {a.id for a in connector.fetch_alerts(None).alerts} == {a.id for a in batch.alerts}


def test_checkpoint_no_repeats_none_missed_equal_timestamps(tmp_path: Path, run_keys_store):
    alerts_dir = tmp_path / "alerts"
    alerts_dir.mkdir()
    same = "2024-05-01T10:00:00.000Z"
    (alerts_dir / "a.json").write_text(json.dumps([alert_json("a1", same), alert_json("a2", same)]), encoding="utf-8")
    (alerts_dir / "b.json").write_text(json.dumps(alert_json("a3", same)), encoding="utf-8")
    (alerts_dir / "c.json").write_text(json.dumps(alert_json("a4", "2024-05-01T09:00:00Z")), encoding="utf-8")
    rules = [SIGMA / row["rule_path"] for row in labelled_alerts(RUN_KEYS)]
    connector = LocalConnector(run_keys_store, alert_files=[alerts_dir], sigma_rules=rules)

    seen: list[Alert] = []
    checkpoint = None
    for _ in range(10):
        batch = connector.fetch_alerts(checkpoint, limit=2)
        checkpoint = batch.checkpoint
        if not batch.alerts:
            break
        assert len(batch.alerts) <= 2
        seen.extend(batch.alerts)
    ids = [a.id for a in seen]
    assert len(ids) == len(set(ids)) == 6  # 4 file alerts + 2 Sigma alerts, each once
    assert [a.timestamp for a in seen] == sorted(a.timestamp for a in seen)
    assert ids[-3:] == ["a1", "a2", "a3"]  # same timestamp: all three, ordered by id, none skipped

    # A late alert with an OLDER timestamp than everything emitted is still delivered, once.
    (alerts_dir / "late.json").write_text(json.dumps(alert_json("late", "2000-01-01T00:00:00Z")), encoding="utf-8")
    late = connector.fetch_alerts(checkpoint, limit=10)
    assert [a.id for a in late.alerts] == ["late"]
    assert connector.fetch_alerts(late.checkpoint, limit=10).alerts == []


def test_malformed_alert_files_are_skipped_with_a_warning(tmp_path: Path, caplog):
    caplog.set_level(logging.WARNING)
    (tmp_path / "good.json").write_text(json.dumps(alert_json("g1", "2024-05-01T10:00:00Z")), encoding="utf-8")
    (tmp_path / "broken.json").write_text('{"id": "x", "rule_name": ', encoding="utf-8")
    (tmp_path / "invalid.json").write_text(json.dumps({"id": "y", "timestamp": "not a time"}), encoding="utf-8")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00garbage")
    connector = LocalConnector(EventStore(), alert_files=[tmp_path])
    batch = connector.fetch_alerts(None)
    assert [a.id for a in batch.alerts] == ["g1"]
    problems = {Path(name).name for name, _ in connector.alert_problems}
    assert problems == {"broken.json", "invalid.json", "binary.json"}
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "broken.json" in messages and "invalid.json" in messages and "binary.json" in messages


def test_unreadable_checkpoint_is_a_clear_error():
    connector = LocalConnector(EventStore())
    with pytest.raises(ConnectorError, match="checkpoint"):
        connector.fetch_alerts("not json")
    with pytest.raises(ConnectorError, match="checkpoint"):
        connector.fetch_alerts('{"v": 99}')


def test_update_alert_publish_case_and_health(tmp_path: Path, run_keys_store):
    connector = LocalConnector(run_keys_store, cases_dir=tmp_path / "cases")
    alert = Alert.model_validate(alert_json("al-1", "2024-05-01T10:00:00Z"))
    connector.update_alert(alert, AlertUpdate(status="escalated", verdict="malicious", comment="run key persistence"))
    connector.update_alert(alert, AlertUpdate(status="closed", verdict="malicious", comment="contained"))
    history = connector.verdicts("al-1")
    assert [(v["status"], v["verdict"], v["comment"]) for v in history] == [
        ("escalated", "malicious", "run key persistence"),
        ("closed", "malicious", "contained"),
    ]
    assert all(v["at"].endswith("Z") for v in history)

    case = Case(id="case/../42", alerts=[alert], summary="persistence via Run key")
    connector.publish_case(case)
    files = list((tmp_path / "cases").iterdir())
    assert [f.name for f in files] == ["case_.._42.json"]
    assert Case.model_validate_json(files[0].read_text(encoding="utf-8")) == case
    case.summary = "updated"
    connector.publish_case(case)
    assert [f.name for f in (tmp_path / "cases").iterdir()] == ["case_.._42.json"]  # replaced, no temp left
    assert "updated" in files[0].read_text(encoding="utf-8")

    health = connector.health()
    assert health.ok and health.connector == "local"
    assert health.detail.startswith("657 events in 1 scopes") and RUN_KEYS in health.detail


def test_entities_from_events_skips_service_accounts_and_local_addresses():
    events = [
        {"host.hostname": "WORKSTATION5", "user.name": "pgustavo", "user.domain": "THESHIRE",
         "process.executable": "C:\\a.exe", "source.ip": "172.18.39.5", "destination.ip": "127.0.0.1",
         "process.hash.sha256": "ab" * 32, "file.path": "C:\\x.txt"},
        {"host.name": "mordordc.theshire.local", "user.name": "SYSTEM", "user.domain": "NT AUTHORITY",
         "source.ip": "fe80::1", "destination.ip": "-"},
        {"host.hostname": "WORKSTATION5", "user.name": "WORKSTATION5$", "source.ip": "::ffff:10.1.2.3",
         "destination.ip": "0.0.0.0"},
        {"user.name": "LOCAL SERVICE"}, {"user.name": "-"}, {"user.name": "alice"}, {"user.name": "DWM-1", "user.domain": "Window Manager"},
    ]  # fmt: skip
    entities = entities_from_events(events)
    assert entities.hosts == ["WORKSTATION5", "MORDORDC"]
    assert entities.users == ["THESHIRE\\pgustavo", "alice"]
    assert entities.processes == ["C:\\a.exe"]
    assert entities.ips == ["172.18.39.5", "10.1.2.3"]
    assert entities.hashes == ["ab" * 32] and entities.files == ["C:\\x.txt"]


def test_process_ref_from_event():
    ref = process_ref_from_event(
        {"process.executable": "C:\\w.exe", "process.pid": "6504", "process.parent.pid": 1648,
         "process.entity_id": "{g}", "process.parent.executable": "C:\\p.exe", "process.command_line": "-"}
    )  # fmt: skip
    assert (ref.executable, ref.pid, ref.parent_pid, ref.entity_id) == ("C:\\w.exe", 6504, 1648, "{g}")
    assert ref.parent_executable == "C:\\p.exe" and ref.command_line is None and ref.hash_sha256 is None
