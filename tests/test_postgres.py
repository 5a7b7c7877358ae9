"""What only PostgreSQL must prove (tests/servers/postgres.py runs the real server): many processes appending
to the audit table at once leave one intact chain; the audit table works append-only for the application
role; the password comes from the environment, never from the URL, and neither it nor the URL's secret shows
in doctor or errors; doctor checks connectivity and the schema. (Leases, the run lock, approvals and the
demo end to end run on both engines: test_state_db.py, test_approvals.py, test_spine_e2e.py.)"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli
from servers.postgres import PASSWORD, PASSWORD_ROLE, PostgresServer
from sqlalchemy import text

from siemcrew.config.settings import Settings, SettingsError
from siemcrew.crew.audittable import TableAuditLog
from siemcrew.crew.database import Database, StoreError
from siemcrew.crew.doctor import checks
from siemcrew.crew.storage import Storage

FORK = multiprocessing.get_context("fork")
WRITERS, EACH = 6, 25


def _append(url: str, start: Any, done: Any) -> None:
    log = TableAuditLog(url)
    start.wait()
    for n in range(EACH):
        log.append("tool_call", f"worker-{os.getpid()}", {"n": n}, case_id=f"case-{n % 3}")
    done.put(os.getpid())


def test_processes_appending_at_once_leave_one_intact_chain_with_every_record(pg_url: str) -> None:
    TableAuditLog(pg_url)  # the tables, before the race
    start, done = FORK.Event(), FORK.Queue()
    workers = [FORK.Process(target=_append, args=(pg_url, start, done)) for _ in range(WRITERS)]
    for worker in workers:
        worker.start()
    start.set()
    pids = {done.get(timeout=120) for _ in workers}
    for worker in workers:
        worker.join(timeout=30)
    log = TableAuditLog(pg_url)
    result = log.verify()
    assert result.ok and result.records == WRITERS * EACH, result
    written = sorted((r.actor, r.data["n"]) for r in log.read())
    assert written == sorted((f"worker-{pid}", n) for pid in pids for n in range(EACH))
    assert [r.seq for r in log.read()] == list(range(1, WRITERS * EACH + 1))


def test_the_audit_table_works_with_update_and_delete_revoked(postgres: PostgresServer, pg_url: str) -> None:
    log = TableAuditLog(pg_url)
    log.append("intake", "intake", {"alert": "a1"}, case_id="c1")
    postgres.admin("REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM siemcrew", dbname=pg_url.rsplit("/", 1)[1])
    log.append("policy", "policy", {"outcome": "auto"}, case_id="c1")
    assert log.verify().ok and log.verify().records == 2
    with pytest.raises(StoreError, match="permission denied"):
        with Database.postgres(pg_url, "audit").transaction() as conn:
            conn.execute(text("DELETE FROM audit_log WHERE seq = 2"))


def _settings(tmp_path: Path, url: str) -> Settings:
    config = tmp_path / "siemcrew.yaml"
    config.write_text(f"home: {tmp_path / 'home'}\ndatabase: {url}\n", encoding="utf-8")
    return Settings.load(config)


def _row(results: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in results if r["check"] == name)


def test_the_password_comes_from_the_environment_and_is_never_shown(postgres: PostgresServer, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = postgres.url(postgres.create_database(owner=PASSWORD_ROLE), user=PASSWORD_ROLE)
    settings = _settings(tmp_path, url)
    monkeypatch.delenv("SIEMCREW_DATABASE_PASSWORD", raising=False)
    refused = _row(checks(settings, data_days=None), "state database")
    assert not refused["ok"] and "password" in refused["detail"], refused

    monkeypatch.setenv("SIEMCREW_DATABASE_PASSWORD", PASSWORD)
    fresh = _row(checks(settings, data_days=None), "state database")
    assert fresh["ok"] and "created on first use" in fresh["detail"] and f"{PASSWORD_ROLE}:***@" in fresh["detail"]
    from siemcrew.crew.runtime import Runtime

    assert Runtime(settings).flow_persistence is not None  # every store's tables (flows' on first use)
    results = checks(settings, data_days=None)
    assert "every store's tables present" in _row(results, "state database")["detail"], results
    assert _row(results, "audit log")["ok"] and _row(results, "case store")["ok"]
    assert PASSWORD not in json.dumps(results)

    proc = run_cli("doctor", "--json", "--no-data", "--config", str(settings.config_path),
                   env={"SIEMCREW_DATABASE_PASSWORD": PASSWORD})
    assert PASSWORD not in proc.stdout + proc.stderr
    assert _row(json.loads(proc.stdout)["checks"], "state database")["ok"]


def test_a_password_in_the_url_is_refused_without_being_echoed(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="must not hold the password") as refused:
        _settings(tmp_path, "postgresql+psycopg://siemcrew:hunter2-secret@db.example:5432/siemcrew")
    assert "hunter2-secret" not in str(refused.value)
    proc = run_cli("cases", "list", "--config", str(tmp_path / "siemcrew.yaml"))
    assert proc.returncode == 1 and "hunter2-secret" not in proc.stdout + proc.stderr


def test_an_unreachable_database_is_a_clear_error_without_the_password(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("SIEMCREW_DATABASE_PASSWORD", "hunter2-secret")
    settings = _settings(tmp_path, f"postgresql+psycopg://siemcrew@127.0.0.1:{port}/siemcrew")
    with pytest.raises(StoreError) as failed:
        Storage.from_settings(settings).cases()
    assert f"siemcrew:***@127.0.0.1:{port}" in str(failed.value) and "hunter2-secret" not in str(failed.value)
    row = _row(checks(settings, data_days=None), "state database")
    assert not row["ok"] and "hunter2-secret" not in row["detail"]
    proc = run_cli("cases", "list", "--config", str(settings.config_path), env={"SIEMCREW_DATABASE_PASSWORD": "hunter2-secret"})
    assert proc.returncode == 1 and "state database" in proc.stderr and "hunter2-secret" not in proc.stderr
