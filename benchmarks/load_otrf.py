"""Load the nine OTRF dev recordings into one embedded store and report the speed.

Usage: python benchmarks/load_otrf.py [--data ../shared/datasets/otrf/dev] [--db :memory:]
Prints events/s, seconds and peak RSS, and writes them as one JSON line to
benchmarks/results/load_otrf.json. The target is <= 10 s for 28.5k events (105 MB unzipped).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

from siemcrew.connectors.local import EventStore

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "otrf" / "dev"
RESULT = ROOT / "benchmarks" / "results" / "load_otrf.json"


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with one sub-folder per recording")
    parser.add_argument("--db", default=":memory:", help="SQLite file, or :memory:")
    parser.add_argument("--out", type=Path, default=RESULT)
    args = parser.parse_args()
    recordings = sorted(p for p in args.data.iterdir() if p.is_dir()) if args.data.is_dir() else []
    if not recordings:
        print(f"no recordings under {args.data}", file=sys.stderr)
        return 2
    store = EventStore(args.db)
    started = time.perf_counter()
    events = skipped = bad = 0
    for folder in recordings:
        report = store.load(sorted(folder.glob("*.zip")), scope=folder.name)
        events += report.events
        skipped += report.files_skipped
        bad += report.bad_lines
    seconds = time.perf_counter() - started
    result = {
        "benchmark": "load_otrf",
        "recordings": len(recordings),
        "events": events,
        "stored": store.count(),
        "scopes": len(store.scopes()),
        "files_skipped": skipped,
        "bad_lines": bad,
        "seconds": round(seconds, 3),
        "events_per_second": round(events / seconds) if seconds else None,
        "peak_rss_mb": peak_rss_mb(),
        "db": args.db,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"{events} events from {len(recordings)} recordings in {seconds:.2f} s "
        f"({result['events_per_second']} events/s), peak RSS {result['peak_rss_mb']} MB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
