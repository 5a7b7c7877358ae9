"""`siemcrew worker` processes for the task-queue tests, and a demo deployment to point them at.

A deployment is the demo config (local source, bundled events and alerts, playbook brains, dry-run
executor) with a home of its own and a `queue:` section on the session's Redis under a queue name of
its own, so tests never see each other's tasks. Workers are real `siemcrew worker` processes, each in
a process group of its own so that a test can kill a whole worker (main process and pool) as a lost
machine would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
STOPS = ("closed", "escalated", "awaiting_approval", "needs_human")


@dataclass
class Worker:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        """kill -9 the whole worker: its main process and every pool process."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Warm shutdown (SIGTERM): running tasks finish, the rest stays queued."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        try:  # pool processes left behind by a main process killed alone
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Deployment:
    root: Path
    config: str
    env: dict[str, str]
    database: str | None = None
    """The PostgreSQL URL its state lives in; None: the SQLite files in its home."""
    workers: list[Worker] = field(default_factory=list)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @cached_property
    def storage(self) -> Any:
        """Its state, as its processes see it (the stores of crew/storage.py)."""
        from sqlalchemy.engine import make_url

        from siemcrew.crew.storage import Storage

        return Storage(self.home, make_url(self.database) if self.database else None)

    def cli(self, *args: str, timeout: int = 120, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        full = {**os.environ, **self.env, **(env or {})}
        full.pop("SIEMCREW_CONFIG", None)
        return subprocess.run([sys.executable, "-m", "siemcrew.cli", *args, "--config", self.config],
                              capture_output=True, text=True, env=full, timeout=timeout)

    def cli_json(self, *args: str) -> Any:
        proc = self.cli(*args, "--json")
        assert proc.returncode in (0, 4), proc.stderr[-3000:]
        return json.loads(proc.stdout)

    def start_worker(self, name: str, concurrency: int = 1, pool: str = "prefork", env: dict[str, str] | None = None,
                     wait: bool = True) -> Worker:
        log = self.root / f"worker-{name}.log"
        full = {**os.environ, **self.env, **(env or {})}
        full.pop("SIEMCREW_CONFIG", None)
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "siemcrew.cli", "worker", "--config", self.config, "--concurrency",
                 str(concurrency), "--pool", pool, "--name", f"{name}@test", "--loglevel", "INFO"],
                stdout=out, stderr=subprocess.STDOUT, env=full, start_new_session=True)
        worker = Worker(name, process, log)
        self.workers.append(worker)
        if wait:
            self.wait_ready(worker)
        return worker

    def wait_ready(self, worker: Worker, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while f"{worker.name}@test ready." not in worker.text():
            if worker.process.poll() is not None:
                raise AssertionError(f"worker {worker.name} exited {worker.process.returncode}:\n{worker.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {worker.name} not ready after {timeout_s}s:\n{worker.text()[-3000:]}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()

    def cases(self) -> list[Any]:
        """The stored cases, read in this process (a `cases list` process per poll would take a core)."""
        return self.storage.cases().list(limit=10_000)

    def wait_cases(self, done: Callable[[list[Any]], bool], timeout_s: float = 120.0) -> list[Any]:
        """Poll the case store until `done(cases)`; fails with the workers' logs otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            cases = self.cases()
            if done(cases):
                return cases
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.text()[-2500:]}" for w in self.workers)
                raise AssertionError(f"cases not done after {timeout_s}s: "
                                     f"{[(c.id, c.status) for c in cases]}\n{logs}")
            time.sleep(1.0)

    def wait_file(self, path: Path, timeout_s: float = 60.0) -> str:
        deadline = time.monotonic() + timeout_s
        while not path.exists() or not path.read_text(encoding="utf-8").strip():
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {w.name}\n{w.text()[-2500:]}" for w in self.workers)
                raise AssertionError(f"{path.name} not written after {timeout_s}s\n{logs}")
            time.sleep(0.1)
        return path.read_text(encoding="utf-8").strip()

    def faults(self, **points: str) -> None:
        """Arm fault points in every worker of this deployment from now on (crew/faults.py); none disarms."""
        (self.root / "faults.json").write_text(json.dumps(points), encoding="utf-8")

    def audit(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [r.model_dump() for r in self.storage.audit_log().read(kind=kind)]

    def executions(self) -> Counter[str]:
        """How often the executor started each action key (the audit's action_start records)."""
        return Counter(r["data"]["key"] for r in self.audit("action_start"))

    def deliveries(self, case_id: str, task: str | None = None) -> list[dict[str, Any]]:
        """The task deliveries workers recorded for a case (of one task kind if given), in order."""
        return [r["data"] for r in self.audit("task")
                if r.get("case_id") == case_id and (task is None or r["data"]["task"] == task)]


def parent_pid(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def deployment(root: Path, redis: Any, alerts: list[dict[str, Any]] | None = None, extra: dict[str, Any] | None = None,
               queue_name: str | None = None, database: str | None = None, **queue: Any) -> Deployment:
    """The demo deployment on `redis`, with its own home and queue name; `alerts` replace the demo's
    alert files (the local source reads them), `extra` adds top-level settings. Its workers read their
    fault points from `<root>/faults.json` (`Deployment.faults`). Machines of one deployment are
    deployments with a home each and the same `queue_name` and PostgreSQL `database`."""
    root.mkdir(parents=True, exist_ok=True)
    alerts_dir = EXAMPLES / "alerts"
    if alerts is not None:
        alerts_dir = root / "alerts"
        alerts_dir.mkdir(exist_ok=True)
        for alert in alerts:
            (alerts_dir / f"{alert['id']}.json").write_text(json.dumps(alert), encoding="utf-8")
    config = {
        "source": "local", "home": str(root / "home"),
        "local": {"db": ":memory:", "events": [str(EXAMPLES / "events")], "alerts": [str(alerts_dir)]},
        "executor": "dry-run", "assets_file": str(EXAMPLES / "assets.yaml"),
        "queue": {"broker": redis.url, "name": queue_name or f"q-{uuid.uuid4().hex[:10]}", "retry_backoff_s": 0.2,
                  "retry_backoff_max_s": 1.0, "max_retries": 4, **queue},
        **({"database": database} if database else {}),
        **(extra or {}),
    }
    path = root / "siemcrew.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return Deployment(root, str(path), {**redis.env, "SIEMCREW_FAULT_FILE": str(root / "faults.json")}, database)


def demo_alert(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / "alerts" / f"{name}.json").read_text(encoding="utf-8"))


def demo_alerts() -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted((EXAMPLES / "alerts").glob("*.json"))]


def copies(alerts: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """n copies of each alert with ids (and rule ids) of their own: separate detections, separate cases,
    the same investigation."""
    out = []
    for alert in alerts:
        for index in range(n):
            rule = alert.get("rule_id") or alert["rule_name"]
            out.append({**alert, "id": f"{alert['id']}-c{index}", "rule_id": f"{rule}-c{index}"})
    return out
