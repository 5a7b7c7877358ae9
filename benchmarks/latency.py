"""Benchmark: one investigation against a SIEM that takes a fixed time to answer each search.

A real SIEM answers a search in about a second; what matters then is how many searches run one
after another. The local connector is wrapped so that every search waits `--latency` seconds and at
most `--concurrency` searches run at once, then the demo alerts are investigated by a process that has
already started (start-up — imports, crew construction — is measured by investigate.py).
Writes benchmarks/results/latency.json.

    python benchmarks/latency.py [--latency 1.0] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "latency.json"


class SlowSiem:
    """A connector that answers like a remote SIEM: a fixed delay per search, and the connector's cap on
    concurrent searches (the Splunk connector's: the chain's searches first, see connectors/slots.py)."""

    def __init__(self, inner: Any, latency: float, concurrency: int) -> None:
        from siemcrew.connectors.slots import PrioritySlots

        self.inner = inner
        self.latency = latency
        self.slots = PrioritySlots(concurrency)
        self.searches = 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _slow(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        with self.slots:
            with self.lock:
                self.searches += 1
            time.sleep(self.latency)
            return fn(*args, **kwargs)

    def search(self, query: Any) -> Any:
        return self._slow(self.inner.search, query)

    def run_sigma(self, *args: Any, **kwargs: Any) -> Any:
        return self._slow(self.inner.run_sigma, *args, **kwargs)

    def run_native(self, *args: Any, **kwargs: Any) -> Any:
        return self._slow(self.inner.run_native, *args, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8, help="the connector's cap (Splunk max_concurrent)")
    args = parser.parse_args()

    from siemcrew.config.settings import Settings
    from siemcrew.connectors.local.factory import local_connector
    from siemcrew.crew.models import Alert
    from siemcrew.crew.operations import investigate
    from siemcrew.crew.runtime import Runtime

    settings = Settings.load(ROOT / "examples" / "demo.yaml", home=tempfile.mkdtemp(prefix="bench-latency-"))
    siem = SlowSiem(local_connector(settings), args.latency, args.concurrency)
    rt = Runtime(settings, siem=siem)
    warm = Runtime(Settings.load(ROOT / "examples" / "demo.yaml", home=tempfile.mkdtemp(prefix="bench-warm-")))
    first = sorted((ROOT / "examples" / "alerts").glob("*.json"))[0]
    investigate(warm, Alert.model_validate_json(first.read_text(encoding="utf-8")))  # start-up is not measured
    rows = []
    for path in sorted((ROOT / "examples" / "alerts").glob("*.json")):
        alert = Alert.model_validate_json(path.read_text(encoding="utf-8"))
        before = siem.searches
        started = time.perf_counter()
        case = investigate(rt, alert)
        rows.append({"alert": alert.id, "verdict": case.verdict, "seconds": round(time.perf_counter() - started, 2),
                     "searches": siem.searches - before})
        print(rows[-1], flush=True)
    result = {"latency_s": args.latency, "concurrency": args.concurrency, "per_alert": rows,
              "median_seconds": statistics.median(r["seconds"] for r in rows),
              "max_seconds": max(r["seconds"] for r in rows),
              "median_searches": statistics.median(r["searches"] for r in rows)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "per_alert"}))


if __name__ == "__main__":
    main()
