"""`siemcrew eval` on a small dataset laid out like datasets/otrf: stray and broken files are counted,
recordings that reuse host names are kept apart, the report explains misses, bars fail the run."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from conftest import OTRF, SHARED, run_cli

from siemcrew.evaluation import METRIC_KEYS, evaluate, render_markdown

RECORDING = "SDWIN-190518202151_empire_mimikatz_logonpasswords"
RULES = SHARED / "datasets" / "detection-content" / "sigma"


def _dataset(tmp_path: Path) -> Path:
    """Two recordings with the same hosts (WORKSTATION5), one of them carrying junk files."""
    root = tmp_path / "otrf"
    rows = [r for r in csv.DictReader((OTRF / "alerts_dev_labelled.csv").open(encoding="utf-8"))
            if r["dataset"] == RECORDING][:2]
    twin = RECORDING + "_twin"
    for name in (RECORDING, twin):
        folder = root / "dev" / name
        folder.mkdir(parents=True)
        for source in (OTRF / "dev" / RECORDING).glob("*.zip"):
            shutil.copy(source, folder / source.name)
    junk = root / "dev" / twin
    (junk / "conn.log").write_text("#separator \\x09\n#fields\tts\tuid\tid.orig_h\n1600000000.0\tC1\t10.0.0.1\n",
                                   encoding="utf-8")
    (junk / "truncated.json").write_text('{"EventID": 1, "Hostname": "WORKSTATION5", "Ima', encoding="utf-8")
    twin_rows = [dict(r, dataset=twin) for r in rows]
    # the twin's first alert is relabelled as benign background: it must be scored against the twin only
    twin_rows[0]["label"] = "FP_benign_background"
    with (root / "alerts_dev_labelled.csv").open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + twin_rows)
    truth = json.loads((OTRF / "ground_truth_dev.json").read_text(encoding="utf-8"))
    entry = next(e for e in truth if Path(e["dir"]).name == RECORDING)
    twin_entry = dict(entry, dir=f"dev/{twin}")
    (root / "ground_truth_dev.json").write_text(json.dumps([entry, twin_entry]), encoding="utf-8")
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
        assert row["hosts"] == ["WORKSTATION5"]
    report = render_markdown(result)
    assert "Confusion matrix" in report and "Per technique" in report
    assert "FP_benign_background" in report and "case says:" in report


def test_eval_cli_fails_under_a_quality_bar(tmp_path: Path) -> None:
    dataset = _dataset(tmp_path)
    out = tmp_path / "report.md"
    proc = run_cli("eval", "--dataset", str(dataset), "--rules", str(RULES), "--json", "--out", str(out),
                   "--require", "tp_recall>=0.95", "--require", "fp_rate<=0.5", timeout=400)
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert "fp_rate" in proc.stderr and json.loads(proc.stdout)["tp_recall"] == 1.0
    assert out.read_text(encoding="utf-8").startswith("# siemcrew evaluation")
    bad = run_cli("eval", "--dataset", str(dataset), "--require", "nonsense>=1")
    assert bad.returncode == 1 and "unknown metric" in bad.stderr


def test_ground_truth_is_found_by_folder_name_or_dataset_id() -> None:
    from siemcrew.evaluation import truth_for

    truth = {"dev/SDWIN-1_x": {"dataset_id": "SDWIN-1"}, "other": {"dataset_id": "SDWIN-22"}}
    assert truth_for(truth, "dev/SDWIN-1_x") is truth["dev/SDWIN-1_x"]
    assert truth_for(truth, "SDWIN-22_renamed_folder") is truth["other"]
    assert truth_for(truth, "SDWIN-3_unknown") is None
