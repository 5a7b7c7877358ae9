"""`siemcrew eval`: score the crew on labelled alerts over real recordings it did not write.

For every recording folder: one fresh embedded store holds that recording alone (so host names are
never compared across recordings), every labelled alert of that recording is rebuilt from its CSV row
plus the matching raw events, investigated by the full crew with the default brains, and scored
against the ground truth. Metric definitions follow datasets/README.md.

Several datasets can be scored in one run (each keeps its own labels, ground truth and recordings);
metrics are given over all alerts and per split. Recordings can run in worker processes: each worker
evaluates whole recordings and the rows are merged in a fixed order, so the result does not depend on
the number of workers.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import re
import statistics
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from siemcrew.crew.timeutil import parse_time

log = logging.getLogger("siemcrew.eval")
ESCALATED = ("malicious", "suspicious")
# verdicts that leave the alert to a human: "suspicious" by design, "inconclusive" and a crash ("error") by default
ANALYST_QUEUE = ("suspicious", "inconclusive", "error")
METRIC_KEYS = ("alerts", "tp_recall", "tp_malicious_rate", "fp_rate", "fp_malicious_rate", "analyst_queue_rate",
               "accuracy", "host_recall", "host_precision", "account_recall", "account_precision",
               "evidence_complete_rate", "unsupported_findings", "seconds_per_alert_median",
               "queries_per_alert_median", "brain_calls_per_alert_median", "llm_calls_per_alert_median",
               "llm_tokens_per_alert_median", "llm_halted", "skipped_files")
# the verdict metrics the markdown report shows first
QUALITY_KEYS = ("alerts", "tp_malicious_rate", "fp_malicious_rate", "analyst_queue_rate", "tp_recall", "fp_rate")
# called with None and the number of alerts before the first investigation, then with each scored row
Progress = Callable[[dict[str, Any] | None, int], None]


class EvalError(RuntimeError):
    """The dataset folder does not have the expected layout."""


def _tags(text: str | None) -> list[str]:
    """ATT&CK tags as the CSV writes them: separated by spaces, commas or semicolons."""
    return [t for t in re.split(r"[\s,;]+", text or "") if t]


def _short(host: str) -> str:
    return host.split(".")[0].strip().upper()


def _account(name: str) -> str:
    return name.split("\\")[-1].split("@")[0].strip().lower()


def _ratio(num: float, den: float) -> float:
    return round(num / den, 4) if den else 0.0


def load_labels(dataset: Path, split: str | None) -> list[dict[str, str]]:
    files = sorted(dataset.glob("alerts_*.csv"))
    if not files:
        raise EvalError(f"{dataset}: no alerts_*.csv with labelled alerts")
    rows: list[dict[str, str]] = []
    for file in files:
        with file.open(encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                if split and row.get("split") and row["split"] != split:
                    continue
                rows.append(row)
    return rows


def load_truth(dataset: Path) -> dict[str, dict[str, Any]]:
    truth: dict[str, dict[str, Any]] = {}
    for file in sorted(dataset.glob("ground_truth*.json")):
        for entry in json.loads(file.read_text(encoding="utf-8")):
            folder = Path(entry.get("dir", "")).name or entry.get("dataset_id", "")
            truth[folder] = entry
    return truth


def truth_for(truth: dict[str, dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The ground truth of a recording folder: by folder name, else by the dataset id it starts with."""
    if name in truth:
        return truth[name]
    for entry in truth.values():
        dataset_id = str(entry.get("dataset_id") or "")
        if dataset_id and name.startswith(dataset_id):
            return entry
    log.warning("no ground truth for recording %s: its scope metrics count as unknown", name)
    return None


def find_recording(dataset: Path, name: str) -> Path:
    for candidate in [dataset / name, *dataset.glob(f"*/{name}")]:
        if candidate.is_dir():
            return candidate
    raise EvalError(f"recording folder {name} not found under {dataset}")


def build_alert(connector: Any, row: dict[str, str], scope: str, rules_dir: Path | None) -> Any:
    """The alert a SOC would have received: the CSV row plus the raw events it was raised on."""
    from siemcrew.connectors.base import EventQuery, Filter
    from siemcrew.connectors.local.alerts import entities_from_events, process_ref_from_event
    from siemcrew.crew.models import Alert, TimeRange

    first = parse_time(row["first"])
    last = parse_time(row["last"]) or first
    if first is None:
        raise EvalError(f"bad 'first' time in row {row.get('rule_title')}")
    channel, _, code = (row.get("sample_event") or "").rpartition("/")
    window = TimeRange(start=first - timedelta(milliseconds=5), end=last + timedelta(milliseconds=5))
    base = [Filter(field="host.hostname", value=_short(row["host"]))]
    if code:
        base.append(Filter(field="event.code", value=code))
    if channel:
        base.append(Filter(field="winlog.channel", value=channel))
    attempts = []
    if row.get("sample_image"):
        attempts.append(base + [Filter(field="process.executable", value=row["sample_image"])])
    attempts.append(base)
    events: list[dict[str, Any]] = []
    for filters in attempts:
        result = connector.search(EventQuery(filters=filters, time_range=window, scope=scope, limit=200))
        if result.events:
            events = result.events
            break
    techniques = _tags(row.get("attack_tags"))
    entities = entities_from_events(events)
    if not entities.hosts:
        entities.hosts = [_short(row["host"])]
    rule_path = str((rules_dir / row["rule_path"]).resolve()) if rules_dir and row.get("rule_path") else row.get("rule_path")
    return Alert(
        id=f"{row['dataset']}|{row['rule_id']}|{row['host']}", source="eval", rule_name=row["rule_title"],
        rule_id=row.get("rule_id"), rule_path=rule_path, severity=row.get("level") or "medium",
        description=f"{row['rule_title']} on {row['host']} ({row.get('n_events')} event(s))",
        timestamp=first, first_seen=first, last_seen=last, techniques=techniques,
        tags=techniques, entities=entities, process=process_ref_from_event(events[0]) if events else None,
        event=events[0] if events else {}, scope=scope,
        raw={k: v for k, v in row.items() if k not in ("label", "label_reason")},
    )


def default_jobs() -> int:
    """Two workers unless the machine has one core: recordings are independent, each worker holds a crew."""
    return max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class RecordingJob:
    """One recording and everything needed to evaluate it, picklable so a worker process can take it."""

    folder: Path
    name: str
    split: str  # for rows whose CSV `split` column is empty: the dataset folder name
    rows: list[dict[str, str]]
    truth: dict[str, Any]
    rules_dir: Path | None
    config: Path | None
    home: Path


@dataclass(frozen=True)
class RecordingResult:
    rows: list[dict[str, Any]]
    skipped_files: int


def plan(datasets: Sequence[Path], split: str | None, rules_dir: Path | None, config: Path | None,
         work: Path) -> list[RecordingJob]:
    """Every recording of every dataset, in merge order: datasets as given, then recording name, then CSV order.

    Each dataset keeps its own labels and ground truth; each recording gets its own home under `work`.
    """
    jobs: list[RecordingJob] = []
    for d_index, dataset in enumerate(datasets):
        truth = load_truth(dataset)
        by_recording: dict[str, list[dict[str, str]]] = defaultdict(list)
        for row in load_labels(dataset, split):
            by_recording[row["dataset"]].append(row)
        for r_index, (name, rows) in enumerate(sorted(by_recording.items())):
            gt = (truth_for(truth, name) or {}).get("derived_ground_truth") or {}
            jobs.append(RecordingJob(find_recording(dataset, name), name, dataset.name, rows, gt, rules_dir, config,
                                     work / f"{d_index:02d}-{r_index:02d}"))
    return jobs


def evaluate_recording(job: RecordingJob, on_alert: Callable[[dict[str, Any]], None] | None = None
                       ) -> RecordingResult:
    """One fresh store holding this recording alone, every alert of it investigated and scored."""
    from siemcrew.config.settings import Settings
    from siemcrew.connectors.local.connector import LocalConnector
    from siemcrew.connectors.local.store import EventStore
    from siemcrew.crew.operations import investigate
    from siemcrew.crew.runtime import Runtime

    store = EventStore(":memory:")
    rows: list[dict[str, Any]] = []
    try:
        report = store.load([job.folder], scope=job.name)
        connector = LocalConnector(store, cases_dir=None)
        rules = str(job.rules_dir) if job.rules_dir else None
        settings = Settings.load(job.config, home=str(job.home), investigation={"sigma_rules_dir": rules})
        rt = Runtime(settings, siem=connector)
        for row in job.rows:
            alert = build_alert(connector, row, job.name, job.rules_dir)
            started = time.perf_counter()
            try:
                case = investigate(rt, alert)
                error = None
            except Exception as exc:  # noqa: BLE001 - a crash is scored as a miss, with its reason
                case, error = None, f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - started
            rows.append(_score(row, row.get("split") or job.split, job.truth, case, seconds, error))
            if on_alert:
                on_alert(rows[-1])
    finally:
        store.close()
    return RecordingResult(rows, report.files_skipped)


def _worker_init(work: Path) -> None:
    """Set a worker up as the main process is: crewAI's offline switches and a storage folder of its own,
    before anything imports crewai. Its stdout goes to stderr: results travel back over the pool, and the
    parent's stdout may be carrying `--json`."""
    storage = work / "workers" / str(os.getpid()) / "crewai"
    os.environ["CREWAI_STORAGE_DIR"] = str(storage)
    from siemcrew.crew import offline

    offline.prepare(storage)
    try:
        os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # streams without a file descriptor
        sys.stdout = sys.stderr


def run_jobs(jobs: list[RecordingJob], workers: int, work: Path,
             on_alert: Callable[[dict[str, Any]], None]) -> list[RecordingResult]:
    """Results in the order of `jobs`, whatever the number of workers.

    With one worker (or one recording) everything runs in this process and `on_alert` sees each alert as it
    is scored; otherwise recordings run in spawned processes (crewAI and sqlite are not fork-safe once
    imported), the biggest first, and `on_alert` sees a recording's alerts when it is done.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [evaluate_recording(job, on_alert) for job in jobs]
    done: dict[int, RecordingResult] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context, initializer=_worker_init,
                             initargs=(work,)) as pool:
        order = sorted(range(len(jobs)), key=lambda i: -len(jobs[i].rows))
        futures = {pool.submit(evaluate_recording, jobs[i]): i for i in order}
        try:
            for future in as_completed(futures):
                done[futures[future]] = result = future.result()
                for row in result.rows:
                    on_alert(row)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [done[i] for i in range(len(jobs))]


def evaluate(datasets: Path | str | Sequence[Path | str], rules: Path | None = None, config: Path | None = None,
             split: str | None = None, quiet: bool = False, home: Path | None = None, jobs: int = 1,
             progress: Progress | None = None) -> dict[str, Any]:
    """Score the crew over one or several dataset folders; `jobs` worker processes (1: in this process)."""
    given = [datasets] if isinstance(datasets, (str, Path)) else list(datasets)
    if not given:
        raise EvalError("no dataset folder given")
    folders = list(dict.fromkeys(Path(d).resolve() for d in given))
    rules_dir: Path | None = (rules or folders[0].parent / "detection-content" / "sigma").resolve()
    if not rules_dir.is_dir():
        log.warning("no Sigma rules at %s: sigma hunting is off", rules_dir)
        rules_dir = None
    work = Path(home or tempfile.mkdtemp(prefix="siemcrew-eval-")).resolve()
    try:
        return _evaluate(folders, split, rules_dir, config, work, jobs, quiet, progress)
    finally:
        if home is None:  # the stores of a throw-away run; a given home is the caller's to keep
            shutil.rmtree(work, ignore_errors=True)


def _evaluate(folders: list[Path], split: str | None, rules_dir: Path | None, config: Path | None, work: Path,
              jobs: int, quiet: bool, progress: Progress | None
              ) -> dict[str, Any]:
    recordings = plan(folders, split, rules_dir, config, work)
    total = sum(len(job.rows) for job in recordings)
    if progress:
        progress(None, total)

    def on_alert(row: dict[str, Any]) -> None:
        if not quiet:
            log.info("%s | %s -> %s (%.2fs)", row["dataset"], row["rule"], row["verdict"], row["seconds"])
        if progress:
            progress(row, total)

    results = run_jobs(recordings, jobs, work, on_alert)
    skipped_by_split: Counter[str] = Counter()
    for result in results:
        for name in {row["split"] for row in result.rows}:
            skipped_by_split[name] += result.skipped_files
    return summarize([row for result in results for row in result.rows],
                     sum(result.skipped_files for result in results), skipped_by_split)


def _score(row: dict[str, str], split: str, gt: dict[str, Any], case: Any, seconds: float, error: str | None
           ) -> dict[str, Any]:
    verdict = case.verdict if case else "error"
    status = case.verification.status if case and case.verification else "none"
    hosts = sorted({_short(h) for h in (case.affected_hosts if case else [])})
    accounts = sorted({a for a in (case.affected_users if case else [])})
    unsupported = 0
    if case:
        ids = {e.id for e in case.evidence}
        unsupported = case.unsupported_findings + sum(
            1 for f in case.findings if not f.evidence_ids or any(i not in ids for i in f.evidence_ids))
    truth_hosts = {_short(h) for h in gt.get("victim_hosts", [])}
    truth_accounts = {_account(a) for a in gt.get("accounts", [])}
    return {
        "split": split, "dataset": row["dataset"], "rule": row["rule_title"], "rule_path": row.get("rule_path"),
        "techniques": row.get("attack_tags", ""), "host": row["host"], "label": row["label"], "verdict": verdict,
        "hosts": hosts, "accounts": accounts, "truth_hosts": sorted(truth_hosts), "truth_accounts": sorted(truth_accounts),
        "verification": status, "seconds": round(seconds, 3), "queries": case.queries if case else 0,
        "brain_calls": case.brain_calls if case else 0, "llm_calls": case.llm_calls if case else 0,
        "llm_tokens": case.llm_tokens if case else 0, "halt": case.halt.reason if case and case.halt else None,
        "unsupported_findings": unsupported,
        "summary": (case.summary if case else error) or "",
        "gaps": [g.detail for g in case.verification.gaps] if case and case.verification else [],
        "case_id": case.id if case else None,
    }


def _recall_precision(pred: set[str], truth: set[str]) -> tuple[float, float]:
    hit = len(pred & truth)
    return (hit / len(truth) if truth else 1.0), (hit / len(pred) if pred else 0.0)


def _metrics(per_alert: list[dict[str, Any]], skipped_files: int) -> dict[str, Any]:
    """The METRIC_KEYS over some alerts (definitions in datasets/README.md)."""
    tp = [r for r in per_alert if r["label"].startswith("TP")]
    fp = [r for r in per_alert if not r["label"].startswith("TP")]
    correct = sum(1 for r in tp if r["verdict"] in ESCALATED) + sum(1 for r in fp if r["verdict"] == "benign")
    host_r, host_p, acc_r, acc_p = [], [], [], []
    for r in tp:
        hr, hp = _recall_precision(set(r["hosts"]), set(r["truth_hosts"]))
        ar, ap = _recall_precision({_account(a) for a in r["accounts"]}, set(r["truth_accounts"]))
        host_r.append(hr), host_p.append(hp), acc_r.append(ar), acc_p.append(ap)

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 4) if values else 0.0

    def median(key: str) -> float:
        return round(statistics.median([r[key] for r in per_alert]), 4) if per_alert else 0.0

    def share(rows: list[dict[str, Any]], verdicts: tuple[str, ...]) -> float:
        return _ratio(sum(1 for r in rows if r["verdict"] in verdicts), len(rows))

    return {
        "alerts": len(per_alert),
        "tp_recall": share(tp, ESCALATED),
        # escalated is not enough: "suspicious" still needs an analyst to decide
        "tp_malicious_rate": share(tp, ("malicious",)),
        "fp_rate": _ratio(sum(1 for r in fp if r["verdict"] != "benign"), len(fp)),
        # the dangerous false positive: a benign alert called malicious (responses may follow)
        "fp_malicious_rate": share(fp, ("malicious",)),
        "analyst_queue_rate": share(per_alert, ANALYST_QUEUE),
        "accuracy": _ratio(correct, len(per_alert)),
        "host_recall": mean(host_r), "host_precision": mean(host_p),
        "account_recall": mean(acc_r), "account_precision": mean(acc_p),
        "evidence_complete_rate": _ratio(sum(1 for r in per_alert if r["verification"] == "complete"), len(per_alert)),
        "unsupported_findings": sum(r["unsupported_findings"] for r in per_alert),
        "seconds_per_alert_median": median("seconds"),
        "queries_per_alert_median": median("queries"),
        "brain_calls_per_alert_median": median("brain_calls"),
        # requests sent to a model (retries and converter re-asks included) and the tokens they used
        "llm_calls_per_alert_median": median("llm_calls"),
        "llm_tokens_per_alert_median": median("llm_tokens"),
        # alerts escalated because the model failed or the LLM budget ran out
        "llm_halted": sum(1 for r in per_alert if r["halt"]),
        "skipped_files": skipped_files,
    }


def _split(row: dict[str, Any]) -> str:
    return str(row.get("split") or "")


def summarize(per_alert: list[dict[str, Any]], skipped_files: int,
              skipped_by_split: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Metrics over all alerts; when they span several splits, the same metrics per split (`per_split`), so a
    split with few alerts (e.g. the benign ones) is not drowned by a larger one."""
    result = _metrics(per_alert, skipped_files)
    splits = sorted({_split(r) for r in per_alert})
    if len(splits) > 1:
        result["per_split"] = {name: _metrics([r for r in per_alert if _split(r) == name],
                                              (skipped_by_split or {}).get(name, 0)) for name in splits}
    result["per_alert"] = per_alert
    return result


_VERDICTS = ("malicious", "suspicious", "benign", "inconclusive", "error")


def _metric_table(result: dict[str, Any], keys: Sequence[str]) -> list[str]:
    """A metric per line; one column over all alerts, plus one per split when there are several."""
    columns = [("all", result), *sorted(result.get("per_split", {}).items())]
    header = ["value"] if len(columns) == 1 else [name for name, _ in columns]
    lines = ["| metric | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    lines += [f"| {key} | " + " | ".join(str(metrics[key]) for _, metrics in columns) + " |" for key in keys]
    return lines


def _confusion(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| label | " + " | ".join(_VERDICTS) + " |", "|---|" + "---|" * len(_VERDICTS)]
    for label in sorted({r["label"] for r in rows}):
        counts = Counter(r["verdict"] for r in rows if r["label"] == label)
        lines.append(f"| {label} | " + " | ".join(str(counts.get(c, 0)) for c in _VERDICTS) + " |")
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    rows = result["per_alert"]
    splits = sorted(result.get("per_split", {}))
    lines = ["# siemcrew evaluation", "", "## Verdict quality", "", *_metric_table(result, QUALITY_KEYS), "",
             "An attack should end malicious; suspicious, inconclusive and error verdicts go to an analyst "
             "(analyst_queue_rate). A benign alert called malicious is the costly mistake (fp_malicious_rate).",
             "", "## All metrics", "", *_metric_table(result, METRIC_KEYS),
             "", "## Confusion matrix (label × verdict)", "", *_confusion(rows)]
    for name in splits:
        lines += ["", f"### Split {name}", "", *_confusion([r for r in rows if _split(r) == name])]
    lines += ["", "## Per technique", "", "| technique | alerts | correct | evidence complete |", "|---|---|---|---|"]
    by_tech: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        for tech in _tags(r["techniques"]) or ["-"]:
            by_tech[tech.removeprefix("attack.").upper()].append(r)
    for tech, items in sorted(by_tech.items()):
        ok = sum(1 for r in items if (r["verdict"] in ESCALATED) == r["label"].startswith("TP"))
        complete = sum(1 for r in items if r["verification"] == "complete")
        lines.append(f"| {tech} | {len(items)} | {ok} | {complete} |")
    misses = [r for r in rows if (r["verdict"] in ESCALATED) != r["label"].startswith("TP")
              or r["verification"] != "complete" or set(r["truth_hosts"]) - set(r["hosts"])]
    lines += ["", "## Misses and gaps, with the case's own explanation", ""]
    for r in misses:
        where = f"{_split(r)} / " if splits else ""
        lines.append(f"- **{where}{r['dataset']} / {r['rule']}** on {r['host']}: label {r['label']}, verdict "
                     f"{r['verdict']}, verification {r['verification']}; hosts {r['hosts']} vs {r['truth_hosts']}, "
                     f"accounts {r['accounts']} vs {r['truth_accounts']}")
        lines.append(f"  - case says: {r['summary'][:600]}")
        for gap in r["gaps"]:
            lines.append(f"  - gap: {gap}")
    if not misses:
        lines.append("none")
    lines += ["", "_Alerts are SigmaHQ rules (Detection Rule License 1.1; rule authors credited in each rule file)._"]
    return "\n".join(lines) + "\n"


_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b}


def check_requirements(metrics: dict[str, Any], requirements: list[str], parse_only: bool = False) -> list[str]:
    """Each requirement is `metric>=x`, `metric<=x` or `metric==x`; returns those not met."""
    failed: list[str] = []
    for text in requirements:
        for op in (">=", "<=", "=="):
            if op in text:
                name, _, value = (part.strip() for part in text.partition(op))
                break
        else:
            raise EvalError(f"bad requirement {text!r}: use metric>=x, metric<=x or metric==x")
        if name not in METRIC_KEYS:
            raise EvalError(f"unknown metric {name!r} in {text!r}")
        try:
            bound = float(value)
        except ValueError:
            raise EvalError(f"bad number in {text!r}") from None
        if not parse_only and not _OPS[op](float(metrics[name]), bound):
            failed.append(f"{name} = {metrics[name]} (needs {op} {value})")
    return failed if not parse_only else requirements
