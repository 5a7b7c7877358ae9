"""The task queue's pieces without workers: settings, the broker password, what `run`, `serve` and the
sweep put on the real Redis (the session's `redis-server`), the death counter, and a clear exit when
there is no queue or no broker. The workers themselves are in test_queue_workers.py."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli

from siemcrew.config.settings import Settings, SettingsError
from siemcrew.crew.checkpoints import CheckpointStore
from siemcrew.crew.queue.app import DRAIN_OUTBOX, INVESTIGATE, POLL, SWEEP, make_app
from siemcrew.crew.queue.broker import broker_url
from siemcrew.crew.queue.deaths import DeathCounter

from servers.workers import EXAMPLES, deployment  # isort: skip


def _settings(tmp_path: Path, **queue: Any) -> Settings:
    return Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path / "home"), queue=queue)


def _queued(redis: Any, name: str) -> list[dict[str, Any]]:
    """The task messages waiting in a queue, oldest first (kombu's Redis list: newest at the head)."""
    return [json.loads(raw) for raw in reversed(redis.client().lrange(name, 0, -1))]


def _args(message: dict[str, Any]) -> list[Any]:
    """A task message's positional arguments (Celery's protocol 2: a base64 JSON body [args, kwargs, embed])."""
    import base64

    return list(json.loads(base64.b64decode(message["body"]))[0])


def test_queue_settings_keep_the_password_out_and_the_timeouts_consistent(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="must not hold a password"):
        _settings(tmp_path, broker="redis://:hunter2@127.0.0.1:6379/0").queue_settings()
    with pytest.raises(SettingsError, match="redis://"):
        _settings(tmp_path, broker="amqp://127.0.0.1//").queue_settings()
    with pytest.raises(SettingsError, match="must exceed queue.task_time_limit_s"):
        _settings(tmp_path, task_time_limit_s=600, visibility_timeout_s=600).queue_settings()
    with pytest.raises(SettingsError, match="case lease"):
        make_app(_settings(tmp_path, task_time_limit_s=3600))
    queue = _settings(tmp_path, task_time_limit_s=900).queue_settings()
    assert queue.visibility_s == 1200 and queue.stale_after_s == 1200 and queue.periodic_queue == "siemcrew.periodic"
    assert Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path)).queue_settings() is None


def test_the_broker_password_comes_from_the_environment_or_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    monkeypatch.delenv("SIEMCREW_QUEUE_PASSWORD", raising=False)
    plain = _settings(tmp_path, broker="redis://queue.example:6380/2").queue_settings()
    assert broker_url(plain) == "redis://queue.example:6380/2"
    monkeypatch.setenv("SIEMCREW_QUEUE_PASSWORD", "p@ss/w:rd")
    assert broker_url(plain) == "redis://:p%40ss%2Fw%3Ard@queue.example:6380/2"
    secret_file = tmp_path / "redis.pass"
    secret_file.write_text("from-a-file\n", encoding="utf-8")
    monkeypatch.delenv("SIEMCREW_QUEUE_PASSWORD")
    acl = _settings(tmp_path, broker="rediss://siemcrew@[::1]:6379/0", password_file=str(secret_file)).queue_settings()
    assert broker_url(acl) == "rediss://siemcrew:from-a-file@[::1]:6379/0"
    assert "from-a-file" not in json.dumps(_settings(tmp_path, password_file=str(secret_file)).redacted())


def test_the_app_delivers_at_least_once_and_keeps_upkeep_apart(tmp_path: Path) -> None:
    app = make_app(_settings(tmp_path, name="soc", task_time_limit_s=1200, poll_every_s=300))
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 1500 > conf.task_time_limit == 1200
    assert conf.accept_content == ["json"] and conf.task_default_queue == "soc"
    assert {conf.task_routes[name]["queue"] for name in (DRAIN_OUTBOX, SWEEP, POLL)} == {"soc.periodic"}
    assert {entry["task"] for entry in conf.beat_schedule.values()} == {DRAIN_OUTBOX, SWEEP, POLL}
    assert all(entry["options"]["expires"] == entry["schedule"] for entry in conf.beat_schedule.values())


def test_worker_and_beat_exit_clearly_without_a_queue(tmp_path: Path) -> None:
    config = tmp_path / "siemcrew.yaml"
    config.write_text(f"home: {tmp_path / 'home'}\n", encoding="utf-8")
    for command in ("worker", "beat"):
        proc = run_cli(command, "--config", str(config), timeout=60)
        assert proc.returncode == 1, proc.stderr
        assert "no task queue is configured" in proc.stderr
    config.write_text(f"home: {tmp_path / 'home'}\nqueue: {{broker: 'redis://:pw@127.0.0.1:1/0'}}\n", encoding="utf-8")
    proc = run_cli("worker", "--config", str(config), timeout=60)
    assert proc.returncode == 1 and "must not hold a password" in proc.stderr and "pw@" not in proc.stderr


def test_run_with_a_queue_stores_and_enqueues_without_investigating(redis_server: Any, tmp_path: Path) -> None:
    dep = deployment(tmp_path, redis_server)
    first = dep.cli_json("run")
    assert (first["fetched"], first["enqueued"], first["investigated"], first["verdicts"]) == (6, 6, 0, {}), first
    name = yaml.safe_load(Path(dep.config).read_text(encoding="utf-8"))["queue"]["name"]
    messages = _queued(redis_server, name)
    assert [m["headers"]["task"] for m in messages] == [INVESTIGATE] * 6
    cases = {c.id: c for c in dep.cases()}
    assert sorted(_args(m)[0] for m in messages) == sorted(cases)  # a case id each, nothing more
    assert {c.status for c in cases.values()} == {"new"}  # nothing was investigated in the run's process
    assert not dep.audit("stage")
    again = dep.cli_json("run")
    assert (again["fetched"], again["enqueued"]) == (0, 0) and len(_queued(redis_server, name)) == 6
    doctor = dep.cli("doctor", "--no-data", "--json")
    row = next(r for r in json.loads(doctor.stdout)["checks"] if r["check"] == "task queue")
    assert row["ok"] and f"{name} 6" in row["detail"]
    assert dep.env["SIEMCREW_QUEUE_PASSWORD"] not in doctor.stdout + doctor.stderr


def test_run_fails_clearly_when_the_broker_cannot_be_reached(redis_server: Any, tmp_path: Path) -> None:
    dep = deployment(tmp_path, redis_server)
    config = yaml.safe_load(Path(dep.config).read_text(encoding="utf-8"))
    config["queue"]["broker"] = f"redis://127.0.0.1:{redis_server.port + 1 if redis_server.port < 65535 else 1}/0"
    Path(dep.config).write_text(yaml.safe_dump(config), encoding="utf-8")
    proc = dep.cli("run", "--json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "run failed" in proc.stderr and json.loads(proc.stdout)["fetched"] == 0
    assert CheckpointStore(dep.home / "cases.db").get("local") is None  # nothing fetched, nothing lost


def test_serve_with_a_queue_admits_and_enqueues(redis_server: Any, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from siemcrew.service import create_app

    dep = deployment(tmp_path, redis_server)
    for key, value in {**dep.env, "SIEMCREW_SERVE_TOKEN": "tok-queue-serve"}.items():
        monkeypatch.setenv(key, value)
    settings = Settings.load(dep.config)
    alert = json.loads((EXAMPLES / "alerts" / "demo-5-powershell-bypass.json").read_text(encoding="utf-8"))
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/alerts", json=alert, headers={"Authorization": "Bearer tok-queue-serve"})
        assert answer.status_code == 202 and answer.json()["accepted"] == 1
        replay = client.post("/v1/alerts", json=alert, headers={"Authorization": "Bearer tok-queue-serve"})
        assert replay.status_code == 200 and replay.json()["duplicate"]
        time.sleep(0.5)
        case_id = answer.json()["case_ids"][0]
        assert client.get(f"/v1/cases/{case_id}", headers={"Authorization": "Bearer tok-queue-serve"}).json()["status"] == "new"
    messages = _queued(redis_server, settings.queue_settings().name)
    assert [(m["headers"]["task"], _args(m)) for m in messages] == [(INVESTIGATE, [case_id])]


def test_the_sweep_enqueues_stale_work_again_and_leaves_the_dead_letters(redis_server: Any, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from siemcrew.crew.models import Alert, DeadLetter
    from siemcrew.crew.queue.sweep import sweep
    from siemcrew.crew.runtime import Runtime

    dep = deployment(tmp_path, redis_server, sweep_after_s=60)
    for key, value in dep.env.items():
        monkeypatch.setenv(key, value)
    rt = Runtime(Settings.load(dep.config))
    alerts = [Alert.model_validate_json(p.read_text(encoding="utf-8")) for p in sorted((EXAMPLES / "alerts").glob("*.json"))]
    lost, parked, fresh = (rt.cases.admit(a)[0] for a in alerts[:3])
    parked.status, parked.dead_letter = "needs_human", DeadLetter(task="investigate", reason="poison", attempts=3)
    rt.cases.save(parked)
    assert sweep(rt, now=time.time()) == 0  # nothing is stale yet: it may still be on its way
    assert sweep(rt, now=time.time() + 120) == 2  # the lost one and the fresh one; never the dead letter
    queued = [_args(m) for m in _queued(redis_server, rt.queue_settings.name)]
    assert sorted(queued) == sorted([c.id] for c in (lost, fresh))
    assert {r["actor"] for r in dep.audit("enqueued")} == {"sweep"}


def test_the_death_counter_counts_only_starts_that_never_ended(redis_server: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIEMCREW_QUEUE_PASSWORD", redis_server.password)
    counter = DeathCounter(_settings(tmp_path, broker=redis_server.url, name=f"d-{uuid.uuid4().hex[:8]}").queue_settings())
    assert counter.start("investigate", "case-1") == 0
    assert counter.start("investigate", "case-1") == 1  # the first start died (never ended)
    assert counter.start("investigate", "case-1") == 2
    counter.ended("investigate", "case-1", finished=False)  # a retry scheduled: this start is not a death
    assert counter.start("investigate", "case-1") == 2
    assert counter.start("resume", "case-1") == 0  # counted per task kind
    counter.ended("investigate", "case-1", finished=True)  # done: its deaths are forgotten
    assert counter.start("investigate", "case-1") == 0
    monkeypatch.setenv("SIEMCREW_QUEUE_PASSWORD", "wrong")
    blind = DeathCounter(_settings(tmp_path, broker=redis_server.url).queue_settings())
    assert blind.start("investigate", "case-1") == 0  # unreachable: counts nothing, stops nothing


def test_an_intake_while_the_broker_is_down_is_kept_and_swept_later(redis_server: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from siemcrew.crew.queue.sweep import sweep
    from siemcrew.crew.runtime import Runtime
    from siemcrew.service import create_app

    dep = deployment(tmp_path, redis_server, sweep_after_s=1)
    config = yaml.safe_load(Path(dep.config).read_text(encoding="utf-8"))
    up = dict(config["queue"])
    config["queue"]["broker"] = f"redis://127.0.0.1:{redis_server.port + 1 if redis_server.port < 65535 else 1}/0"
    Path(dep.config).write_text(yaml.safe_dump(config), encoding="utf-8")
    for key, value in {**dep.env, "SIEMCREW_SERVE_TOKEN": "tok-down"}.items():
        monkeypatch.setenv(key, value)
    alerts = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((EXAMPLES / "alerts").glob("*.json"))]
    with TestClient(create_app(Settings.load(dep.config))) as client:
        started = time.monotonic()
        answer = client.post("/v1/alerts", json=alerts, headers={"Authorization": "Bearer tok-down"})
        took = time.monotonic() - started
    assert answer.status_code == 202 and answer.json()["accepted"] == 6, answer.text
    assert took < 15, took  # one send waits out the publish retries; the next ones fail at once
    assert len(dep.audit("enqueue_failed")) == 6 and not dep.audit("enqueued")
    assert {c.status for c in dep.cases()} == {"new"}  # stored: nothing is lost

    config["queue"] = up  # the broker is back: the sweep sends what the intake could not
    Path(dep.config).write_text(yaml.safe_dump(config), encoding="utf-8")
    rt = Runtime(Settings.load(dep.config))
    assert sweep(rt, now=time.time() + 5) == 6
    assert sorted(_args(m)[0] for m in _queued(redis_server, up["name"])) == sorted(c.id for c in dep.cases())


def test_a_decision_with_no_paused_flow_is_executed_by_the_execute_task(redis_server: Any, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        awaiting_isolation: Any) -> None:
    """A case whose isolation waits without a flow (built by hand, as a proposal after the investigation
    is): the last decision enqueues `siemcrew.execute`, and that task, run here through Celery's own
    `apply`, executes it once; run again, it finds nothing to do."""
    from siemcrew.crew.operations import decide
    from siemcrew.crew.queue.app import EXECUTE
    from siemcrew.crew.runtime import Runtime

    _, case = awaiting_isolation
    name = f"x-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SIEMCREW_QUEUE_PASSWORD", redis_server.password)
    settings = Settings.load(tmp_path / "siemcrew.yaml", queue={"broker": redis_server.url, "name": name})
    rt = Runtime(settings)
    approval, waiting = decide(rt, case.id, "isolate_host", "approve", by="alice", reason="confirmed", target="WS-01")
    assert waiting.status == "awaiting_approval" and not waiting.flow_id
    assert [(m["headers"]["task"], _args(m)) for m in _queued(redis_server, name)] == [(EXECUTE, [case.id])]

    app = make_app(settings)
    app.loader.import_default_modules()
    assert app.tasks[EXECUTE].apply(args=[case.id]).get() == "escalated"
    assert app.tasks[EXECUTE].apply(args=[case.id]).get() == "nothing to do: escalated"
    done = rt.cases.get(case.id)
    assert [(r.action, r.state) for r in done.results if r.action == "isolate_host"] == [("isolate_host", "dry_run")]
    assert rt.ledger.get(f"{case.id}:isolate_host:WS-01").state == "dry_run"
    assert approval.by == "alice"
