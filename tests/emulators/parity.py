"""Parity: the same labelled OTRF alerts investigated from the embedded store and from a SIEM holding the
same recording the way customers index it (Splunk add-ons, Winlogbeat ECS), through `siemcrew run`
with the packaged defaults. Used by tests/test_parity.py (a few recordings) and benchmarks/parity.py
(all of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from siemcrew.crew.casestore import CaseStore
from siemcrew.evaluation import RecordingJob, _score, evaluate_recording, summarize

ENV = {"SPLUNK_TOKEN": "test-bearer-token", "SPLUNK_HEC_TOKEN": "test-hec-token",
       "ELASTIC_API_KEY": "test-api-key"}
QUALITY = ("tp_recall", "tp_malicious_rate", "fp_rate", "fp_malicious_rate", "analyst_queue_rate",
           "host_recall", "account_recall", "evidence_complete_rate")


@dataclass
class PathResult:
    """One path's verdicts for a recording's alerts, keyed by the labelled row's position."""

    verdicts: dict[int, str] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)  # scored like `siemcrew eval` rows
    errors: list[str] = field(default_factory=list)


def run_siemcrew(config: dict[str, Any], work: Path, env: dict[str, str] | None = None, rounds: int = 3) -> CaseStore:
    """`siemcrew run` as cron would start it, until it fetches nothing new; the case store it filled."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / "siemcrew.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    full_env = {**os.environ, **ENV, **(env or {})}
    full_env.pop("SIEMCREW_CONFIG", None)
    for _ in range(rounds):
        proc = subprocess.run([sys.executable, "-m", "siemcrew.cli", "run", "--json", "--config", str(path)],
                              capture_output=True, text=True, env=full_env, timeout=1800)
        if proc.returncode not in (0, 4):
            raise RuntimeError(f"siemcrew run failed ({proc.returncode}): {proc.stderr[-2000:]}")
        if json.loads(proc.stdout or "{}").get("fetched", 0) == 0:
            break
    return CaseStore(Path(config["home"]) / "cases.db")


def score_cases(job: RecordingJob, store: CaseStore, key_of: Callable[[dict[str, str]], str]) -> PathResult:
    """Each labelled row's case (found by the alert id the SIEM gave it), scored as `siemcrew eval` scores."""
    cases = {}
    for case in store.list(limit=10_000):
        for alert in case.alerts:
            cases[alert.id] = case
    result = PathResult()
    for index, row in enumerate(job.rows):
        case = cases.get(key_of(row))
        if case is None:
            result.errors.append(f"no case for {row['rule_title']} on {row['host']}")
        scored = _score(row, job.split, job.truth, case, 0.0, None if case else "no case")
        result.rows.append(scored)
        result.verdicts[index] = scored["verdict"]
    return result


def local_result(job: RecordingJob) -> PathResult:
    rows = evaluate_recording(job).rows
    return PathResult(verdicts={i: r["verdict"] for i, r in enumerate(rows)}, rows=rows)


def merged(results: list[PathResult]) -> PathResult:
    """Several recordings' results as one, alerts numbered in order."""
    out = PathResult()
    for result in results:
        offset = len(out.rows)
        out.verdicts.update({offset + i: v for i, v in result.verdicts.items()})
        out.rows.extend(result.rows)
        out.errors.extend(result.errors)
    return out


def compare(local: PathResult, other: PathResult) -> dict[str, Any]:
    """Share of alerts with the same verdict, and the quality figures side by side."""
    same = sum(1 for i, v in local.verdicts.items() if other.verdicts.get(i) == v)
    ours, theirs = summarize(local.rows, 0), summarize(other.rows, 0)
    return {
        "alerts": len(local.verdicts),
        "same_verdict": round(same / len(local.verdicts), 4) if local.verdicts else 1.0,
        "differences": [{"alert": i, "local": v, "siem": other.verdicts.get(i)}
                        for i, v in local.verdicts.items() if other.verdicts.get(i) != v],
        "quality": {k: {"local": ours[k], "siem": theirs[k], "delta": round(abs(ours[k] - theirs[k]), 4)}
                    for k in QUALITY},
        "errors": other.errors,
    }


def splunk_result(job: RecordingJob, work: Path) -> PathResult:
    """The recording in a splunkd emulator (Splunk add-on data, ES notables), investigated by `siemcrew run`."""
    from emulators.splunk_ta import notable_id, recording_splunkd
    from emulators.splunkd import connector_settings

    with recording_splunkd(job.folder, job.rows) as emulator:
        config = {"source": "splunk", "home": str(work / "home"),
                  "investigation": {"sigma_rules_dir": str(job.rules_dir) if job.rules_dir else None},
                  "splunk": connector_settings(emulator, alerts={"initial_lookback": "0"})}
        store = run_siemcrew(config, work)
    return score_cases(job, store, lambda row: notable_id(row["dataset"], row["rule_id"], row["host"], row["first"]))


def elastic_result(job: RecordingJob, work: Path) -> PathResult:
    """The recording in the Elasticsearch + Kibana emulator (Winlogbeat / Elastic Agent data streams, an
    Elastic Security alert per labelled row), investigated by `siemcrew run` with the packaged defaults."""
    from emulators.otrf_elastic import alert_uuid, elastic_with_recording

    with elastic_with_recording(job.folder, job.rows, api_key=ENV["ELASTIC_API_KEY"]) as loaded:
        emulator = loaded.emulator
        config = {"source": "elastic", "home": str(work / "home"),
                  "investigation": {"sigma_rules_dir": str(job.rules_dir) if job.rules_dir else None},
                  "elastic": {"url": emulator.es_url, "kibana_url": emulator.kibana_url, "api_key_env": "ELASTIC_API_KEY"}}
        store = run_siemcrew(config, work)
    return score_cases(job, store, alert_uuid)
