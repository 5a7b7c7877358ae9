"""`siemcrew eval`: score the crew on labelled alerts over real recordings it did not write.

For every recording folder: one fresh embedded store holds that recording alone (so host names are
never compared across recordings), every labelled alert of that recording is rebuilt from its CSV row
plus the matching raw events, investigated by the full crew with the default brains, and scored
against the ground truth. Metric definitions follow datasets/README.md.
"""

from __future__ import annotations

import csv
import re
import json
import logging
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

from siemcrew.crew.timeutil import parse_time

log = logging.getLogger("siemcrew.eval")
ESCALATED = ("malicious", "suspicious")
METRIC_KEYS = ("alerts", "tp_recall", "fp_rate", "accuracy", "host_recall", "host_precision", "account_recall",
               "account_precision", "evidence_complete_rate", "unsupported_findings", "seconds_per_alert_median",
               "queries_per_alert_median", "llm_calls_per_alert_median", "skipped_files")


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


def evaluate(dataset: Path, rules: Path | None = None, config: Path | None = None, split: str | None = None,
             quiet: bool = False, home: Path | None = None) -> dict[str, Any]:
    from siemcrew.config.settings import Settings
    from siemcrew.connectors.local.connector import LocalConnector
    from siemcrew.connectors.local.store import EventStore
    from siemcrew.crew.operations import investigate
    from siemcrew.crew.runtime import Runtime

    dataset = dataset.resolve()
    rules_dir = (rules or dataset.parent / "detection-content" / "sigma").resolve()
    if not rules_dir.is_dir():
        log.warning("no Sigma rules at %s: sigma hunting is off", rules_dir)
    labels = load_labels(dataset, split)
    truth = load_truth(dataset)
    by_recording: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in labels:
        by_recording[row["dataset"]].append(row)
    work = Path(home or tempfile.mkdtemp(prefix="siemcrew-eval-"))
    per_alert: list[dict[str, Any]] = []
    skipped_files = 0
    for index, (name, rows) in enumerate(sorted(by_recording.items())):
        folder = find_recording(dataset, name)
        store = EventStore(":memory:")
        report = store.load([folder], scope=name)
        skipped_files += report.files_skipped
        connector = LocalConnector(store, cases_dir=None)
        settings = Settings.load(config, home=str(work / f"{index:02d}"),
                                 investigation={"sigma_rules_dir": str(rules_dir) if rules_dir.is_dir() else None})
        rt = Runtime(settings, siem=connector)
        gt = (truth_for(truth, name) or {}).get("derived_ground_truth") or {}
        for row in rows:
            alert = build_alert(connector, row, name, rules_dir if rules_dir.is_dir() else None)
            started = time.perf_counter()
            try:
                case = investigate(rt, alert)
                error = None
            except Exception as exc:  # noqa: BLE001 - a crash is scored as a miss, with its reason
                case, error = None, f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - started
            per_alert.append(_score(row, gt, case, seconds, error))
            if not quiet:
                last = per_alert[-1]
                log.info("%s | %s -> %s (%.2fs)", name, row["rule_title"], last["verdict"], seconds)
        store.close()
    return summarize(per_alert, skipped_files)


def _score(row: dict[str, str], gt: dict[str, Any], case: Any, seconds: float, error: str | None) -> dict[str, Any]:
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
        "dataset": row["dataset"], "rule": row["rule_title"], "rule_path": row.get("rule_path"),
        "techniques": row.get("attack_tags", ""), "host": row["host"], "label": row["label"], "verdict": verdict,
        "hosts": hosts, "accounts": accounts, "truth_hosts": sorted(truth_hosts), "truth_accounts": sorted(truth_accounts),
        "verification": status, "seconds": round(seconds, 3), "queries": case.queries if case else 0,
        "llm_calls": case.llm_calls if case else 0, "unsupported_findings": unsupported,
        "summary": (case.summary if case else error) or "",
        "gaps": [g.detail for g in case.verification.gaps] if case and case.verification else [],
        "case_id": case.id if case else None,
    }


def _recall_precision(pred: set[str], truth: set[str]) -> tuple[float, float]:
    hit = len(pred & truth)
    return (hit / len(truth) if truth else 1.0), (hit / len(pred) if pred else 0.0)


def summarize(per_alert: list[dict[str, Any]], skipped_files: int) -> dict[str, Any]:
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

    return {
        "alerts": len(per_alert),
        "tp_recall": _ratio(sum(1 for r in tp if r["verdict"] in ESCALATED), len(tp)),
        "fp_rate": _ratio(sum(1 for r in fp if r["verdict"] != "benign"), len(fp)),
        "accuracy": _ratio(correct, len(per_alert)),
        "host_recall": mean(host_r), "host_precision": mean(host_p),
        "account_recall": mean(acc_r), "account_precision": mean(acc_p),
        "evidence_complete_rate": _ratio(sum(1 for r in per_alert if r["verification"] == "complete"), len(per_alert)),
        "unsupported_findings": sum(r["unsupported_findings"] for r in per_alert),
        "seconds_per_alert_median": median("seconds"),
        "queries_per_alert_median": median("queries"),
        "llm_calls_per_alert_median": median("llm_calls"),
        "skipped_files": skipped_files,
        "per_alert": per_alert,
    }


def render_markdown(result: dict[str, Any]) -> str:
    rows = result["per_alert"]
    lines = ["# siemcrew evaluation", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {result[k]} |" for k in METRIC_KEYS]
    classes = ["malicious", "suspicious", "benign", "inconclusive", "error"]
    lines += ["", "## Confusion matrix (label × verdict)", "", "| label | " + " | ".join(classes) + " |",
              "|---|" + "---|" * len(classes)]
    for label in sorted({r["label"] for r in rows}):
        counts = Counter(r["verdict"] for r in rows if r["label"] == label)
        lines.append(f"| {label} | " + " | ".join(str(counts.get(c, 0)) for c in classes) + " |")
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
        lines.append(f"- **{r['dataset']} / {r['rule']}** on {r['host']}: label {r['label']}, verdict {r['verdict']}, "
                     f"verification {r['verification']}; hosts {r['hosts']} vs {r['truth_hosts']}, accounts "
                     f"{r['accounts']} vs {r['truth_accounts']}")
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
