"""Benchmark: how throughput grows with `siemcrew worker` processes when an investigation mostly waits.

Everything runs on 127.0.0.1 and nothing is mocked inside siemcrew:
- a real `redis-server` is the broker;
- the splunkd emulator (tests/emulators/splunkd.py), driven by the real splunk-sdk, holds the demo's
  events as the Splunk add-ons index them and `--alerts` ES notables (the six demo detections over and
  over, each copy with ids of its own, so each is a case of its own); every search takes
  `--search-delay` seconds (its job stays RUNNING that long) and at most `--siem-cap` run at once (a
  dispatch beyond gets Splunk's 503 role-quota answer, which the connector retries with backoff);
- the OpenAI-compatible fake model (tests/emulators/openai_server.py) answers every role through the
  real openai SDK as a competent analyst (tests/emulators/scripted_models.py) after `--llm-delay` seconds.
For each worker count: a fresh home and queue, the workers started and ready, then `siemcrew run`
enqueues every notable at once and the clock runs until every case reached its verdict (closed,
escalated, or waiting for approval).

Reported per worker count: alerts/minute (first enqueue to last verdict), time to verdict p50/p95
(enqueue to verdict: queue wait included), investigation p50/p95 (task start to verdict), model calls
and searches per alert, peak RSS of a pool process, CPU seconds of the workers and of this process
(the emulators), the size of the state files, and the efficiency against linear scaling from one worker
(this run's first round, or the 1-worker round of `--linear-from`). Writes benchmarks/results/scale.json.

    python benchmarks/scale.py [--alerts 500 | --alerts-per-worker 12] [--workers 1,2,4,8] [--threads 1]
                               [--llm-delay 1.0] [--search-delay 0.5] [--siem-cap 0] [--out FILE]
                               [--linear-from FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
NOW = 1795392000.0  # the end of the demo week: the emulator's clock
KEY_ENV = "BENCH_LLM_KEY"
ENV = {"SPLUNK_TOKEN": "test-bearer-token", "SPLUNK_HEC_TOKEN": "test-hec-token", "SPLUNK_PASSWORD": "changeme",
       KEY_ENV: "sk-bench-scale", "SIEMCREW_QUEUE_PASSWORD": uuid.uuid4().hex}
ROLES = ["triage", "hunter", "impact", "verifier", "responder"]
STOPS = ("closed", "escalated", "awaiting_approval", "needs_human", "failed")


class Oracle(dict[str, dict[str, Any]]):
    """The competent model's judgement per alert id: a copy's is its demo detection's."""

    def __init__(self, base: dict[str, dict[str, Any]], family: dict[str, str]) -> None:
        super().__init__(base)
        self.family = family

    def get(self, key: Any, default: Any = None) -> Any:
        return super().get(self.family.get(key, key), default)


def playbook_oracle(names: list[str], work: Path) -> dict[str, dict[str, Any]]:
    """What the deterministic playbooks conclude on the demo alerts (the reference the model follows)."""
    from siemcrew.config.settings import Settings
    from siemcrew.crew.models import Alert
    from siemcrew.crew.operations import investigate
    from siemcrew.crew.runtime import Runtime

    rt = Runtime(Settings.load(ROOT / "examples" / "demo.yaml", home=str(work / "oracle")))
    out = {}
    for name in names:
        case = investigate(rt, Alert.model_validate_json((ROOT / "examples" / "alerts" / f"{name}.json").read_text()))
        out[name] = {"verdict": case.verdict, "confidence": case.confidence, "hosts": list(case.affected_hosts),
                     "users": list(case.affected_users)}
    return out


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    import redis

    from emulators.e2e_helpers import free_port

    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                             "--save", "", "--appendonly", "no", "--requirepass", ENV["SIEMCREW_QUEUE_PASSWORD"]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, password=ENV["SIEMCREW_QUEUE_PASSWORD"])
    for _ in range(100):
        try:
            client.ping()
            return proc, port
        except redis.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))], 2) if ordered else 0.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def one_round(workers: int, args: argparse.Namespace, model_url: str, redis_port: int, events: list[dict[str, Any]],
              names: list[str], family: dict[str, str], work: Path) -> dict[str, Any]:
    from emulators.e2e_helpers import notable, write_config
    from emulators.splunkd import SplunkdEmulator, connector_settings
    from siemcrew.crew.casestore import CaseStore

    home = work / f"home-{workers}"
    notables = []
    for index in range(args.alerts):
        name = names[index % len(names)]
        event_id = f"{uuid.uuid4().hex[:8].upper()}-BE00-4C1A-9D5B-{index:012d}@@notable@@{workers}x{index}"
        family[event_id] = name
        notables.append(notable(name, event_id))
    cap = args.siem_cap or None
    with SplunkdEmulator(events, notables, now=NOW, search_delay_s=args.search_delay, max_running_searches=cap) as splunkd:
        splunk = connector_settings(splunkd, alerts={"initial_lookback": "0"},
                                    search={"poll_interval_s": 0.1, "job_timeout_s": 600},
                                    retry={"attempts": 20, "initial_wait_s": 0.2, "max_wait_s": 3.0})
        config = write_config(work / f"siemcrew-{workers}.yaml", {
            "source": "splunk", "home": str(home), "assets_file": str(ROOT / "examples" / "assets.yaml"),
            "splunk": splunk,
            "llm": {"model": "openai/scripted-model", "base_url": model_url, "api_key_env": KEY_ENV, "roles": ROLES,
                    "timeout_s": 120, "max_retries": 2, "max_calls_per_case": 400, "max_tokens_per_case": 5_000_000},
            "queue": {"broker": f"redis://127.0.0.1:{redis_port}/0", "name": f"bench-{workers}-{uuid.uuid4().hex[:6]}",
                      "task_time_limit_s": 1800},
        })
        env = {**os.environ, **ENV}
        env.pop("SIEMCREW_CONFIG", None)
        procs = []
        for index in range(workers):
            log = open(work / f"worker-{workers}-{index}.log", "wb")
            pool = ["--pool", "threads", "--concurrency", str(args.threads)] if args.threads > 1 else \
                ["--pool", "prefork", "--concurrency", "1"]
            procs.append(subprocess.Popen([sys.executable, "-m", "siemcrew.cli", "worker", "--config", config, *pool,
                                           "--name", f"b{index}@bench", "--loglevel", "INFO"],
                                          stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        deadline = time.monotonic() + 300
        while not all(f"b{i}@bench ready.".encode() in (work / f"worker-{workers}-{i}.log").read_bytes()
                      for i in range(workers)):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"workers did not start: see {work}")
            time.sleep(0.5)
        cpu_before = sum(cpu_seconds(p.pid) + sum(cpu_seconds(c) for c in children(p.pid)) for p in procs)
        here_before = time.process_time()
        started = time.time()
        enqueue = subprocess.run([sys.executable, "-m", "siemcrew.cli", "run", "--json", "--config", config,
                                  "--limit", str(args.alerts + 10)], capture_output=True, text=True, env=env, timeout=600)
        summary = json.loads(enqueue.stdout)
        if summary.get("enqueued") != args.alerts:
            raise RuntimeError(f"run enqueued {summary.get('enqueued')}: {enqueue.stderr[-2000:]}")
        store = CaseStore(home / "cases.db")
        peaks: dict[int, float] = {}
        cpu_seen: dict[int, float] = {}
        while True:
            for p in procs:  # pool processes come and go; keep the peaks and CPU of every one seen
                for pid in [p.pid, *children(p.pid)]:
                    peaks[pid] = max(peaks.get(pid, 0.0), peak_rss_mb(pid))
                    cpu_seen[pid] = max(cpu_seen.get(pid, 0.0), cpu_seconds(pid))
            statuses = store.statuses()  # counted by the database: parsing 500 case bodies every poll costs a core
            if sum(statuses.values()) >= args.alerts and set(statuses) <= set(STOPS):
                break
            time.sleep(2.0)
        finished = time.time()
        worker_cpu = sum(cpu_seen.values()) - cpu_before
        here_cpu = time.process_time() - here_before
        searches = sum(1 for r in splunkd.requests  # searches run: jobs created, export streams
                       if r.method == "POST" and r.status in (200, 201) and r.endpoint.rstrip("/") in (
                           "search/jobs", "search/v2/jobs", "search/jobs/export", "search/v2/jobs/export"))
        quota = sum(1 for r in splunkd.requests if r.status == 503)
        for p in procs:
            os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
    cases = store.list(limit=100_000)
    state_mb = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(home.iterdir()) if p.is_file()}
    audit = [json.loads(line) for line in (home / "audit.jsonl").read_text().splitlines() if line.strip()]
    enqueued = {r["case_id"]: ts(r["ts"]) for r in audit if r["kind"] == "enqueued"}
    begun: dict[str, float] = {}
    for r in audit:
        if r["kind"] == "task":
            begun.setdefault(r["case_id"], ts(r["ts"]))
    verdict = {c.id: max(t.at.timestamp() for t in c.timeline if t.event in ("done", "awaiting_approval", "halted"))
               for c in cases if any(t.event in ("done", "awaiting_approval", "halted") for t in c.timeline)}
    to_verdict = [verdict[c] - enqueued[c] for c in verdict if c in enqueued]
    investigation = [verdict[c] - begun[c] for c in verdict if c in begun]
    pool_peaks = [mb for pid, mb in peaks.items() if pid not in {p.pid for p in procs}]
    first = min(enqueued.values())
    last = max(verdict.values())
    return {
        "workers": workers, "threads_per_worker": args.threads, "alerts": args.alerts,
        "seconds": round(last - first, 1), "alerts_per_minute": round(args.alerts / (last - first) * 60, 2),
        "time_to_verdict_p50_s": percentile(to_verdict, 0.5), "time_to_verdict_p95_s": percentile(to_verdict, 0.95),
        "investigation_p50_s": percentile(investigation, 0.5), "investigation_p95_s": percentile(investigation, 0.95),
        "statuses": {s: sum(1 for c in cases if c.status == s) for s in sorted({c.status for c in cases})},
        "llm_calls_per_alert": round(statistics.mean(c.llm_calls for c in cases), 1),
        "searches_per_alert": round(searches / args.alerts, 1), "siem_quota_answers": quota,
        "peak_rss_mb_pool_process": round(max(pool_peaks or [0.0]), 1),
        "peak_rss_mb_worker_main": round(max(peaks.get(p.pid, 0.0) for p in procs), 1),
        "worker_cpu_s": round(worker_cpu, 1), "emulators_cpu_s": round(here_cpu, 1),
        "wall_enqueue_to_done_s": round(finished - started, 1),
        "state_mb": {name: mb for name, mb in state_mb.items() if mb >= 0.1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=500)
    parser.add_argument("--alerts-per-worker", type=int, default=0,
                        help="instead of --alerts: this many alerts per worker process (the same backlog per worker)")
    parser.add_argument("--workers", default="1,2,4,8", help="worker process counts, comma-separated")
    parser.add_argument("--threads", type=int, default=1, help="tasks at once per worker (threads pool when > 1)")
    parser.add_argument("--llm-delay", type=float, default=1.0, help="seconds the model takes per answer")
    parser.add_argument("--search-delay", type=float, default=0.5, help="seconds each SIEM search takes")
    parser.add_argument("--siem-cap", type=int, default=0, help="searches the SIEM runs at once (0: no cap)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--linear-from", type=Path, default=None,
                        help="results of an earlier run whose 1-worker round is the linear reference")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (homes, worker logs)")
    args = parser.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server is needed (apt-get install -y redis-server)")

    import siemcrew.crew.offline  # noqa: F401  (before crewai)
    from emulators.e2e_helpers import EXPECTED, splunk_events
    from emulators.openai_server import OpenAIServer
    from emulators.scripted_models import CompetentModel

    names = sorted(EXPECTED)
    family: dict[str, str] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    model = CompetentModel(Oracle(playbook_oracle(names, work), family))
    lock = threading.Lock()
    calls = [0]

    def slow_model(body: dict[str, Any]) -> Any:
        time.sleep(args.llm_delay)  # the model thinking: the worker waits on I/O
        with lock:
            calls[0] += 1
        return model(body)

    events = splunk_events(*names)
    redis_proc, redis_port = start_redis(work)
    rows = []
    try:
        with OpenAIServer(slow_model) as server:
            for count in [int(n) for n in args.workers.split(",")]:
                with server.lock:
                    server.requests.clear()  # the recorded bodies of the last round
                if args.alerts_per_worker:
                    args.alerts = args.alerts_per_worker * count * args.threads
                row = one_round(count, args, server.base_url, redis_port, events, names, family, work)
                rows.append(row)
                print(json.dumps(row), flush=True)
            errors = list(server.errors)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    reference = rows
    if args.linear_from:
        reference = [r for r in json.loads(args.linear_from.read_text())["rounds"] if r["workers"] == 1] or rows
    base = reference[0]["alerts_per_minute"] / reference[0]["workers"] if reference else 0
    for row in rows:
        row["efficiency_vs_linear"] = round(row["alerts_per_minute"] / (base * row["workers"]), 2) if base else None
    result = {"config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "cpus": os.cpu_count(), "model_errors": errors[:5], "rounds": rows,
              "bench_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({r["workers"]: (r["alerts_per_minute"], r["efficiency_vs_linear"]) for r in rows}))


if __name__ == "__main__":
    main()
