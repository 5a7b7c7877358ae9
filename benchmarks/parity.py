"""Benchmark: the same verdicts from a SIEM as from the embedded store, on every labelled recording.

Each recording is loaded into the splunkd emulator (as the Splunk add-ons for Windows and Sysmon
index it, ES notables for the labelled alerts) and into the Elasticsearch emulator (Winlogbeat /
Elastic Agent ECS data streams, Elastic Security alerts), its alerts are investigated by
`siemcrew run` with the packaged defaults, and each verdict is compared with the embedded store's
(`siemcrew eval`). Target: the same verdict for >= 95% of alerts on each path, the quality figures
within 0.05. Writes benchmarks/results/parity.json.

    python benchmarks/parity.py [--dataset DIR ...] [--path splunk --path elastic] [--only PREFIX] [--jobs N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "parity.json"
DATASETS = [ROOT.parent / "shared" / "datasets" / "otrf", ROOT.parent / "shared" / "datasets" / "otrf-dev2"]
PATHS = ("splunk", "elastic")


def _prepare() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    os.environ.setdefault("CREWAI_STORAGE_DIR", tempfile.mkdtemp(prefix="siemcrew-crewai-"))
    from siemcrew.crew import offline

    offline.prepare(os.environ["CREWAI_STORAGE_DIR"])


def run_recording(job: Any, paths: tuple[str, ...]) -> dict[str, Any]:
    """One recording: the local verdicts, then each SIEM path's (in a worker process)."""
    _prepare()
    from emulators import parity

    started = time.perf_counter()
    results = {"local": parity.local_result(job)}
    seconds = {"local": time.perf_counter() - started}
    for path in paths:
        started = time.perf_counter()
        results[path] = getattr(parity, f"{path}_result")(job, job.home / path)
        seconds[path] = time.perf_counter() - started
    return {"name": job.name, "results": results, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, action="append", help="labelled dataset folder (repeatable)")
    parser.add_argument("--path", action="append", choices=PATHS, help="SIEM path(s) to compare (default: both)")
    parser.add_argument("--only", default="", help="only recordings whose name starts with this")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rules", type=Path, default=None, help="Sigma rules (default: DIR/../detection-content/sigma)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    _prepare()
    from emulators import parity
    from emulators.parity import PathResult, compare
    from siemcrew.evaluation import plan

    datasets = [d.resolve() for d in (args.dataset or DATASETS)]
    paths = tuple(args.path or PATHS)
    rules = (args.rules or datasets[0].parent / "detection-content" / "sigma").resolve()
    work = Path(tempfile.mkdtemp(prefix="siemcrew-parity-"))
    jobs = [job for job in plan(datasets, None, rules, None, work) if job.name.startswith(args.only)]
    results: dict[str, list[PathResult]] = {name: [] for name in ("local", *paths)}
    per_recording: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for done in pool.map(run_recording, jobs, [paths] * len(jobs)):
            for name, result in done["results"].items():
                results[name].append(result)
            summary = {path: compare(done["results"]["local"], done["results"][path])["same_verdict"] for path in paths}
            per_recording.append({"recording": done["name"], "alerts": len(done["results"]["local"].rows),
                                  "same_verdict": summary, "seconds": {k: round(v, 1) for k, v in done["seconds"].items()}})
            print(f"{done['name']}: " + ", ".join(f"{p} {s:.2f}" for p, s in summary.items()), flush=True)
    merged = {name: parity.merged(items) for name, items in results.items()}
    report = {"datasets": [d.name for d in datasets], "recordings": per_recording,
              "paths": {path: compare(merged["local"], merged[path]) for path in paths}}
    for path in paths:
        for difference in report["paths"][path]["differences"]:
            row = merged["local"].rows[difference["alert"]]
            difference.update(recording=row.get("dataset"), rule=row.get("rule_title"), host=row.get("host"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for path in paths:
        figures = report["paths"][path]
        worst = max(q["delta"] for q in figures["quality"].values())
        print(f"{path}: same verdict {figures['same_verdict']:.3f} of {figures['alerts']} alerts, "
              f"largest quality difference {worst:.3f}, errors {len(figures['errors'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
