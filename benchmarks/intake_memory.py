"""Benchmark: memory and latency of big alert lists (issue #12: "memory stays flat").

Two measurements, each in its own `siemcrew` process on the demo's embedded source, memory read from
/proc (VmRSS sampled every 0.5 s, VmHWM at the end):

1. HTTP intake: `siemcrew serve`, one POST of N alerts (default 10 000) -> seconds to the 202, seconds until
   the background intake job has admitted every alert (while the worker is already investigating the
   first ones), RSS before and peak RSS of the server.
2. CLI: `siemcrew investigate --alert list.json` over M alerts (default 1 000) -> RSS after each tenth of the
   run, and the slope in MB per 1 000 alerts between the second tenth and the end (flat means ~0).

Writes benchmarks/results/intake_memory.json.

    python benchmarks/intake_memory.py [--http-alerts 10000] [--cli-alerts 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "intake_memory.json"
TOKEN = "bench-intake-token-0123456789abcdef"
TEMPLATE = "demo-4-procdump.json"


def proc_kb(pid: int, field: str) -> int:
    """A VmRSS/VmHWM figure of a process in kB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """RSS of one process every `every` seconds, with the time of each sample."""

    def __init__(self, pid: int, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.samples = pid, every, []  # type: ignore[var-annotated]
        self.peak_kb = 0
        self._halt = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self._halt.is_set():
            rss = proc_kb(self.pid, "VmRSS")
            if rss:
                self.samples.append((time.perf_counter() - started, rss))
                self.peak_kb = max(self.peak_kb, proc_kb(self.pid, "VmHWM"))
            self._halt.wait(self.every)

    def stop(self) -> None:
        self._halt.set()
        self.join()


def alerts(count: int, prefix: str) -> list[dict[str, Any]]:
    """`count` copies of a demo alert with distinct ids (each becomes its own case)."""
    template = json.loads((ROOT / "examples" / "alerts" / TEMPLATE).read_text())
    return [{**template, "id": f"{prefix}-{n:06d}"} for n in range(count)]


def config(folder: Path, port: int) -> Path:
    path = folder / "siemcrew.yaml"
    path.write_text(yaml.safe_dump({
        "home": str(folder / "home"), "source": "local",
        "local": {"events": [str(ROOT / "examples" / "events")]}, "assets_file": str(ROOT / "examples" / "assets.yaml"),
        "serve": {"host": "127.0.0.1", "port": port, "token_env": "BENCH_SERVE_TOKEN"},
    }), encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def siemcrew(*args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BENCH_SERVE_TOKEN": TOKEN}
    return subprocess.Popen([sys.executable, "-m", "siemcrew.cli", *args], env=env, **kwargs)


def http_intake(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="siemcrew-bench-", ignore_cleanup_errors=True) as tmp:
        port = free_port()
        server = siemcrew("serve", "--config", str(config(Path(tmp), port)),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sampler = Sampler(server.pid)
        try:
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=600) as client:
                deadline = time.time() + 60
                while True:
                    try:
                        if client.get("/healthz").status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.time() > deadline:
                        raise RuntimeError("serve did not start")
                    time.sleep(0.2)
                idle_kb = proc_kb(server.pid, "VmRSS")
                sampler.start()
                body = alerts(count, "bench-http")
                started = time.perf_counter()
                answer = client.post("/v1/alerts", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
                accepted_s = time.perf_counter() - started
                print(f"POST {count} alerts -> {answer.status_code} in {accepted_s:.1f} s", file=sys.stderr)
                if answer.status_code != 202:
                    raise RuntimeError(f"intake answered {answer.status_code}: {answer.text[:300]}")
                job = answer.json().get("job")
                state: dict[str, Any] = {}
                while job:
                    state = client.get(f"/v1/intake/{job}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
                    if state.get("state") in ("done", "failed"):
                        break
                    time.sleep(0.25)
                admitted_s = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(30)
            sampler.stop()
        return {"alerts": count, "body_mb": round(len(json.dumps(body)) / 2**20, 1),
                "seconds_to_202": round(accepted_s, 2), "seconds_all_admitted": round(admitted_s, 1),
                "job_state": state.get("state"), "admitted": state.get("admitted"),
                "rss_idle_mb": round(idle_kb / 1024, 1), "peak_rss_mb": round(sampler.peak_kb / 1024, 1)}


def cli_investigate(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="siemcrew-bench-") as tmp:
        listing = Path(tmp) / "alerts.json"
        listing.write_text(json.dumps(alerts(count, "bench-cli")), encoding="utf-8")
        started = time.perf_counter()
        proc = siemcrew("investigate", "--alert", str(listing), "--config", str(config(Path(tmp), free_port())),
                        "--json", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        sampler = Sampler(proc.pid, every=1.0)
        sampler.start()
        _, err = proc.communicate()
        sampler.stop()
        took = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"investigate exited {proc.returncode}: {err.decode()[-500:]}")
    samples = sampler.samples
    # time is a fair proxy for progress: every alert is the same investigation
    tenths = [round(samples[min(len(samples) - 1, int(len(samples) * k / 10))][1] / 1024, 1) for k in range(1, 11)]
    slope = (tenths[-1] - tenths[1]) / (0.8 * count / 1000)
    return {"alerts": count, "seconds": round(took, 1), "alerts_per_minute": round(count / took * 60, 1),
            "rss_mb_by_tenth": tenths, "slope_mb_per_1000_alerts": round(slope, 1),
            "peak_rss_mb": round(sampler.peak_kb / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--http-alerts", type=int, default=10_000)
    parser.add_argument("--cli-alerts", type=int, default=1_000)
    args = parser.parse_args()
    result = {"http_intake": http_intake(args.http_alerts), "cli_investigate": cli_investigate(args.cli_alerts)}
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
