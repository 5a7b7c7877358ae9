"""`siemcrew eval` on small datasets laid out like datasets/otrf: stray and broken files are counted,
recordings that reuse host names are kept apart, the report explains misses, bars fail the run; several
datasets are scored together and per split, in worker processes or not with the same result; the verdict
metrics make "suspicious" cost what it costs (an analyst)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import OTRF, SHARED, run_cli

from siemcrew.evaluation import METRIC_KEYS, EvalError, check_requirements, evaluate, render_markdown, summarize

RECORDING = "SDWIN-190518202151_empire_mimikatz_logonpasswords"
RULES = SHARED / "datasets" / "detection-content" / "sigma"


def _rows(count: int) -> list[dict[str, str]]:
    """The first labelled alerts of RECORDING, as the real CSV has them."""
    with (OTRF / "alerts_dev_labelled.csv").open(encoding="utf-8") as handle:
        return [r for r in csv.DictReader(handle) if r["dataset"] == RECORDING][:count]


def _build(root: Path, folder: str, recordings: dict[str, list[dict[str, str]]]) -> Path:
    """A dataset laid out like datasets/otrf: every recording is a copy of RECORDING under `root/folder`, with
    its labels in alerts_<folder>_labelled.csv and RECORDING's ground truth in ground_truth_<folder>.json."""
    for name in recordings:
        target = root / folder / name
        target.mkdir(parents=True)
        for source in (OTRF / "dev" / RECORDING).glob("*.zip"):
            shutil.copy(source, target / source.name)
    rows = [dict(r, dataset=name) for name, items in recordings.items() for r in items]
    with (root / f"alerts_{folder}_labelled.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    truth = json.loads((OTRF / "ground_truth_dev.json").read_text(encoding="utf-8"))
    entry = next(e for e in truth if Path(e["dir"]).name == RECORDING)
    entries = [dict(entry, dir=f"{folder}/{name}") for name in recordings]
    (root / f"ground_truth_{folder}.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


def _junk(folder: Path) -> None:
    """A Zeek log the loader does not read and a truncated JSON file: both counted as skipped."""
    (folder / "conn.log").write_text("#separator \\x09\n#fields\tts\tuid\tid.orig_h\n1600000000.0\tC1\t10.0.0.1\n",
                                     encoding="utf-8")
    (folder / "truncated.json").write_text('{"EventID": 1, "Hostname": "WORKSTATION5", "Ima', encoding="utf-8")


def _dataset(tmp_path: Path) -> Path:
    """Two recordings with the same hosts (WORKSTATION5), one of them carrying junk files."""
    rows = _rows(2)
    twin_rows = [dict(r) for r in rows]
    # the twin's first alert is relabelled as benign background: it must be scored against the twin only
    twin_rows[0]["label"] = "FP_benign_background"
    twin = RECORDING + "_twin"
    root = _build(tmp_path / "otrf", "dev", {RECORDING: rows, twin: twin_rows})
    _junk(root / "dev" / twin)
    return root


def test_eval_scores_every_alert_counts_junk_and_reports_misses(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    result = evaluate(dataset, rules=RULES, quiet=True, home=tmp_path / "home")
    assert set(METRIC_KEYS) | {"per_alert"} == set(result)
    assert result["alerts"] == 4 and len(result["per_alert"]) == 4
    assert result["skipped_files"] == 2
    assert result["tp_recall"] == 1.0
    assert result["fp_rate"] == 1.0  # the relabelled alert is really an attack: escalating it is "wrong" here
    assert result["accuracy"] == 0.75
    assert result["unsupported_findings"] == 0
    for row in result["per_alert"]:
        assert {"dataset", "rule", "label", "verdict", "hosts", "accounts", "verification", "seconds"} <= set(row)
        assert row["hosts"] == ["WORKSTATION5"] and row["split"] == "dev"
    report = render_markdown(result)
    assert "Confusion matrix" in report and "Per technique" in report
    assert "FP_benign_background" in report and "case says:" in report


def test_eval_cli_fails_under_a_quality_bar(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    out = tmp_path / "report.md"
    proc = run_cli("eval", "--dataset", str(dataset), "--rules", str(RULES), "--json", "--out", str(out),
                   "--require", "tp_recall>=0.95", "--require", "fp_rate<=0.5", "--require", "analyst_queue_rate<=1",
                   timeout=400)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert "fp_rate" in proc.stderr and "analyst_queue_rate" not in proc.stderr
    result = json.loads(proc.stdout)  # worker processes (default --jobs) print nothing on stdout
    assert result["tp_recall"] == 1.0 and "per_split" not in result
    assert out.read_text(encoding="utf-8").startswith("# siemcrew evaluation")
    bad = run_cli("eval", "--dataset", str(dataset), "--dataset", str(dataset), "--require", "nonsense>=1")
    assert bad.returncode == 1 and "unknown metric" in bad.stderr
    assert run_cli("eval", "--dataset", str(dataset), "--jobs", "0").returncode == 2


def test_ground_truth_is_found_by_folder_name_or_dataset_id() -> None:
    from siemcrew.evaluation import truth_for

    truth = {"dev/SDWIN-1_x": {"dataset_id": "SDWIN-1"}, "other": {"dataset_id": "SDWIN-22"}}
    assert truth_for(truth, "dev/SDWIN-1_x") is truth["dev/SDWIN-1_x"]
    assert truth_for(truth, "SDWIN-22_renamed_folder") is truth["other"]
    assert truth_for(truth, "SDWIN-3_unknown") is None


def _row(label: str, verdict: str, split: str = "dev") -> dict[str, Any]:
    """A scored alert as evaluate() writes it, with perfect scope and evidence."""
    return {"split": split, "dataset": "rec", "rule": "Some Rule", "rule_path": None, "techniques": "attack.t1003",
            "host": "H1", "label": label, "verdict": verdict, "hosts": ["H1"], "accounts": ["alice"],
            "truth_hosts": ["H1"], "truth_accounts": ["alice"], "verification": "complete", "seconds": 1.0,
            "queries": 3, "brain_calls": 9, "llm_calls": 0, "llm_tokens": 0, "halt": None, "unsupported_findings": 0,
            "summary": "", "gaps": [], "case_id": None}


def _verdicts(result: dict[str, Any]) -> dict[str, Any]:
    keys = ("tp_recall", "tp_malicious_rate", "fp_rate", "fp_malicious_rate", "analyst_queue_rate")
    return {k: result[k] for k in keys}


def test_verdict_metrics_separate_malicious_from_suspicious_and_count_the_analyst_queue() -> None:
    rows = [_row("TP_attack", v) for v in ("malicious", "malicious", "suspicious", "error")]
    rows += [_row("FP_benign_background", v) for v in ("benign", "benign", "malicious", "inconclusive")]
    assert _verdicts(summarize(rows, 0)) == {"tp_recall": 0.75, "tp_malicious_rate": 0.5, "fp_rate": 0.5,
                                             "fp_malicious_rate": 0.25, "analyst_queue_rate": 0.375}
    thirds = summarize([_row("TP_attack", v) for v in ("malicious", "malicious", "suspicious")], 0)
    assert thirds["tp_malicious_rate"] == 0.6667 and thirds["tp_recall"] == 1.0
    # no benign alert: the benign ratios are 0.0, not a division error; no alert at all: every ratio is 0.0
    assert thirds["fp_rate"] == 0.0 and thirds["fp_malicious_rate"] == 0.0 and thirds["analyst_queue_rate"] == 0.3333
    assert set(_verdicts(summarize([], 0)).values()) == {0.0}


def test_escalating_everything_as_suspicious_scores_badly() -> None:
    rows = [_row("TP_attack", "suspicious") for _ in range(3)] + [_row("FP_benign_background", "suspicious")]
    assert _verdicts(summarize(rows, 0)) == {"tp_recall": 1.0, "tp_malicious_rate": 0.0, "fp_rate": 1.0,
                                             "fp_malicious_rate": 0.0, "analyst_queue_rate": 1.0}


def test_metrics_per_split_only_when_alerts_span_several() -> None:
    rows = [_row("TP_attack", "malicious"), _row("TP_attack", "malicious"),
            _row("FP_benign_background", "benign", "dev2"), _row("FP_benign_background", "malicious", "dev2")]
    result = summarize(rows, 3, {"dev2": 3})
    assert set(result) == set(METRIC_KEYS) | {"per_alert", "per_split"}
    dev, dev2 = result["per_split"]["dev"], result["per_split"]["dev2"]
    assert set(dev) == set(dev2) == set(METRIC_KEYS)
    assert (dev["alerts"], dev["tp_malicious_rate"], dev["fp_rate"], dev["skipped_files"]) == (2, 1.0, 0.0, 0)
    assert (dev2["alerts"], dev2["tp_recall"], dev2["fp_malicious_rate"], dev2["skipped_files"]) == (2, 0.0, 0.5, 3)
    assert (result["fp_malicious_rate"], result["tp_malicious_rate"], result["skipped_files"]) == (0.5, 1.0, 3)
    report = render_markdown(result)
    assert report.index("## Verdict quality") < report.index("## All metrics") < report.index("## Confusion matrix")
    assert "| metric | all | dev | dev2 |" in report and "| fp_malicious_rate | 0.5 | 0.0 | 0.5 |" in report
    assert "### Split dev" in report and "### Split dev2" in report and "**dev2 / rec / Some Rule**" in report
    single = summarize(rows[:2], 0)
    assert "per_split" not in single and "| metric | value |" in render_markdown(single)


def test_requirements_accept_the_verdict_metrics() -> None:
    bars = ["tp_malicious_rate>=0.85", "fp_malicious_rate<=0.02", "analyst_queue_rate<=0.2"]
    assert check_requirements({}, bars, parse_only=True) == bars
    metrics = summarize([_row("TP_attack", "suspicious"), _row("FP_benign_background", "benign")], 0)
    assert check_requirements(metrics, bars) == ["tp_malicious_rate = 0.0 (needs >= 0.85)",
                                                 "analyst_queue_rate = 0.5 (needs <= 0.2)"]
    with pytest.raises(EvalError, match="unknown metric"):
        check_requirements({}, ["dev2.fp_rate<=0.1"], parse_only=True)


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two datasets of two alerts each, whose recordings share a name (and hosts): "dev" from the CSV column,
    and one whose split column is empty (so its folder name, otrf-dev2, is the split) with a junk file."""
    root = tmp_path_factory.mktemp("datasets")
    first = _build(root / "otrf", "dev", {RECORDING: _rows(2)})
    rows = [dict(r, split="") for r in _rows(2)]
    rows[1]["label"] = "FP_benign_background"
    second = _build(root / "otrf-dev2", "dev2", {RECORDING: rows})
    (second / "dev2" / RECORDING / "truncated.json").write_text('{"EventID": 1', encoding="utf-8")
    return [first, second]


@pytest.fixture(scope="module")
def in_process(two_datasets: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return evaluate(two_datasets, rules=RULES, quiet=True, home=tmp_path_factory.mktemp("serial"), jobs=1)


def _identity(result: dict[str, Any]) -> list[tuple[str, ...]]:
    return [(r["split"], r["dataset"], r["rule"], r["label"], r["verdict"]) for r in result["per_alert"]]


def test_several_datasets_are_scored_together_and_per_split(two_datasets: list[Path],
                                                            in_process: dict[str, Any]) -> None:
    result = in_process
    assert set(result) == set(METRIC_KEYS) | {"per_alert", "per_split"}
    assert result["alerts"] == 4 and result["skipped_files"] == 1
    assert [r["split"] for r in result["per_alert"]] == ["dev", "dev", "otrf-dev2", "otrf-dev2"]
    assert list(result["per_split"]) == ["dev", "otrf-dev2"]
    dev, dev2 = result["per_split"]["dev"], result["per_split"]["otrf-dev2"]
    assert (dev["alerts"], dev["skipped_files"], dev2["alerts"], dev2["skipped_files"]) == (2, 0, 2, 1)
    assert dev["tp_recall"] == 1.0 and dev2["tp_recall"] == 1.0 and result["tp_recall"] == 1.0
    # the relabelled alert is really an attack: it is escalated, so counted as a false positive of its split
    assert dev["fp_rate"] == 0.0 and dev2["fp_rate"] == 1.0
    for row in result["per_alert"]:
        assert row["hosts"] == ["WORKSTATION5"] and row["truth_hosts"] == ["WORKSTATION5"]
    assert "| metric | all | dev | otrf-dev2 |" in render_markdown(result)


def test_parallel_workers_give_the_same_verdicts(two_datasets: list[Path], in_process: dict[str, Any],
                                                 tmp_path: Path) -> None:
    result = evaluate(two_datasets, rules=RULES, quiet=True, home=tmp_path / "home", jobs=2)
    assert _identity(result) == _identity(in_process)
    timing = ("seconds_per_alert_median",)
    assert {k: v for k, v in result.items() if k not in ("per_alert", "per_split", *timing)} == \
        {k: v for k, v in in_process.items() if k not in ("per_alert", "per_split", *timing)}
    # each worker set crewAI up in its own folder; each recording had its own home (case store)
    assert any((tmp_path / "home" / "workers").iterdir())
    assert (tmp_path / "home" / "00-00" / "cases.db").exists() and (tmp_path / "home" / "01-00" / "cases.db").exists()


def test_model_requests_tokens_and_halts_are_reported_per_alert_and_as_medians() -> None:
    from siemcrew.crew.models import Alert, Case, Halt
    from siemcrew.evaluation import _score

    alert = Alert(id="a1", rule_name="r", timestamp="2024-01-01T00:00:00Z")
    case = Case(id="case-1", alerts=[alert], llm_calls=7, llm_tokens=12_345, brain_calls=9,
                halt=Halt(reason="budget_exhausted", stage="hunter"))
    row = _score({"dataset": "rec", "rule_title": "r", "host": "H1", "label": "TP_attack"}, "dev", {}, case, 1.0, None)
    assert (row["llm_calls"], row["llm_tokens"], row["brain_calls"], row["halt"]) == (7, 12_345, 9, "budget_exhausted")
    rows = [_row("TP_attack", "malicious") | {"llm_calls": c, "llm_tokens": t, "halt": h}
            for c, t, h in ((2, 100, None), (4, 300, "model_unavailable"), (10, 900, None))]
    result = summarize(rows, 0)
    assert (result["llm_calls_per_alert_median"], result["llm_tokens_per_alert_median"]) == (4, 300)
    assert result["llm_halted"] == 1 and result["brain_calls_per_alert_median"] == 9
    assert "| llm_tokens_per_alert_median | 300 |" in render_markdown(result)


def test_eval_scores_a_users_own_model_and_reports_its_calls_and_tokens(tmp_path: Path) -> None:
    """`siemcrew eval --config <llm config>`: the crew's triage on a model (here the OpenAI-compatible server
    of tests/emulators, answering as a cautious model that reads the alert's chain and calls it suspicious),
    scored like the playbooks, with the model's requests and tokens per alert in the result."""
    import re

    from emulators.openai_server import OpenAIServer, call_tool, text

    def cautious(body: dict[str, Any]) -> Any:
        said = "\n".join(str(m.get("content") or "") for m in body["messages"])
        if not any(m["role"] == "tool" for m in body["messages"]):
            alert = re.search(r'"alert": \{"id": "([^"]+)"', said)
            return call_tool("alert_chain", {"alert_id": alert.group(1) if alert else ""},
                             usage={"prompt_tokens": 3000, "completion_tokens": 30})
        seen = re.findall(r"evidence (ev-[0-9a-f]{12}) kind=", said)
        return text(json.dumps({"verdict": "suspicious", "confidence": "medium", "summary": "needs a closer look",
                                "findings": [{"kind": "suspicious", "statement": "the alert's own chain",
                                              "evidence_ids": seen[:1]}], "pivots": []}),
                    usage={"prompt_tokens": 5000, "completion_tokens": 80})

    dataset = _build(tmp_path / "otrf", "dev", {RECORDING: _rows(2)})
    with OpenAIServer(cautious) as server:
        config = tmp_path / "llm.yaml"
        config.write_text(f"llm:\n  model: openai/scripted-model\n  base_url: {server.base_url}\n"
                          "  api_key_env: SIEMCREW_EVAL_KEY\n  roles: [triage]\n  max_retries: 0\n  timeout_s: 10\n",
                          encoding="utf-8")
        proc = run_cli("eval", "--dataset", str(dataset), "--rules", str(RULES), "--config", str(config),
                       "--jobs", "1", "--json", env={"SIEMCREW_EVAL_KEY": "sk-eval", "OPENAI_API_KEY": ""}, timeout=400)
        chats = len(server.chats)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["alerts"] == 2 and not server.errors
    # two requests per alert (the tool call, then the answer), tokens from the server's usage
    assert chats == 4 and result["llm_calls_per_alert_median"] == 2
    assert result["llm_tokens_per_alert_median"] == 3030 + 5080 and result["llm_halted"] == 0
    assert all(row["llm_calls"] == 2 and row["verdict"] in ("suspicious", "malicious") for row in result["per_alert"])


def test_eval_without_a_home_leaves_no_folder_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dataset = _build(tmp_path / "otrf", "dev", {RECORDING: _rows(1)})
    result = evaluate(dataset, rules=RULES, quiet=True)
    assert result["alerts"] == 1
    assert not list(tmp_path.glob("siemcrew-eval-*"))
