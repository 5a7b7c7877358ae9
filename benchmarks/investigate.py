"""Benchmark: `siemcrew --help` wall time, offline investigations after start-up (demo alerts), and the
evaluation over the OTRF dev set (events/s, investigations per minute, p50/p95 s per alert, queries
per alert, peak memory). Writes benchmarks/results/investigate.json.

    python benchmarks/investigate.py [--dataset ../shared/datasets/otrf] [--rounds 3] [--skip-eval]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "investigate.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return round(ordered[index], 3)


def help_seconds(runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "siemcrew.cli", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 3)


def demo_investigations(rounds: int) -> dict[str, float]:
    from siemcrew.config.settings import Settings
    from siemcrew.crew.models import Alert
    from siemcrew.crew.operations import investigate
    from siemcrew.crew.runtime import Runtime

    alerts = [Alert.model_validate_json(p.read_text(encoding="utf-8"))
              for p in sorted((ROOT / "examples" / "alerts").glob("*.json"))]
    def runtime() -> Runtime:  # a fresh home per round: every alert is a new case, never a grouped one
        return Runtime(Settings.load(ROOT / "examples" / "demo.yaml", home=tempfile.mkdtemp(prefix="bench-")))

    started = time.perf_counter()
    investigate(runtime(), alerts[0])  # start-up: imports, store load, first crew
    startup = time.perf_counter() - started
    seconds: list[float] = []
    for _ in range(rounds):
        rt = runtime()
        for alert in alerts:
            t = time.perf_counter()
            case = investigate(rt, alert)
            seconds.append(time.perf_counter() - t)
            assert case.status != "new", case.id
    return {"startup_s": round(startup, 3), "investigations": len(seconds),
            "median_s": round(statistics.median(seconds), 3), "p95_s": percentile(seconds, 0.95)}


def evaluation(dataset: Path) -> dict[str, float]:
    from siemcrew.connectors.local.store import EventStore
    from siemcrew.evaluation import evaluate

    store = EventStore(":memory:")
    t = time.perf_counter()
    report = store.load(sorted(p for p in (dataset / "dev").iterdir() if p.is_dir()))
    load_s = time.perf_counter() - t
    store.close()
    t = time.perf_counter()
    result = evaluate(dataset, quiet=True)
    total = time.perf_counter() - t
    seconds = [r["seconds"] for r in result["per_alert"]]
    queries = [r["queries"] for r in result["per_alert"]]
    return {
        "events": report.events, "load_s": round(load_s, 2), "events_per_s": round(report.events / load_s),
        "alerts": result["alerts"], "eval_total_s": round(total, 1),
        "investigations_per_minute": round(60 * len(seconds) / sum(seconds), 1),
        "p50_s": percentile(seconds, 0.5), "p95_s": percentile(seconds, 0.95),
        "queries_per_alert_median": statistics.median(queries),
        "metrics": {k: v for k, v in result.items() if k != "per_alert"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "otrf")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    out: dict[str, object] = {"help_s": help_seconds(), "demo": demo_investigations(args.rounds)}
    if not args.skip_eval and args.dataset.is_dir():
        out["eval"] = evaluation(args.dataset.resolve())
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
