"""Parity: labelled OTRF alerts reach the same verdicts from a SIEM as from the embedded store.

A few recordings (attack and benign alerts) are loaded into the splunkd emulator as the Splunk
add-ons for Windows and Sysmon index them (ES notables for the labelled alerts) and into the
Elasticsearch emulator as Winlogbeat / Elastic Agent ECS data streams (Elastic Security alerts that
copy their event's ECS); `siemcrew run` investigates them with the packaged defaults, no aliases
or mapping overrides. benchmarks/parity.py does the same on every labelled recording.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emulators import parity
from emulators.local_data import DATASETS, SIGMA
from siemcrew.evaluation import RecordingJob, plan

RECORDINGS = (  # small ones, together holding attack alerts and benign background alerts
    "SDWIN-190519005224_empire_getsession_netsessenum",
    "SDWIN-201022025808_cmd_mshta_vbscript_psh",
    "SDWIN-190319131123_empire_over_pth_patch_lsass",
)
SAME_VERDICT = 0.95
QUALITY_DELTA = 0.05


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> list[RecordingJob]:
    work = tmp_path_factory.mktemp("parity")
    chosen = [job for job in plan(DATASETS, None, SIGMA, None, work) if job.name in RECORDINGS]
    assert sorted(job.name for job in chosen) == sorted(RECORDINGS)
    return chosen


@pytest.fixture(scope="module")
def local(jobs: list[RecordingJob]) -> parity.PathResult:
    return parity.merged([parity.local_result(job) for job in jobs])


@pytest.mark.parametrize("path", ["splunk", "elastic"])
def test_a_siem_path_reaches_the_local_verdicts(path: str, jobs: list[RecordingJob], local: parity.PathResult) -> None:
    runner: Any = getattr(parity, f"{path}_result")
    siem = parity.merged([runner(job, job.home / path) for job in jobs])
    report = parity.compare(local, siem)
    assert not report["errors"], report["errors"]
    assert report["alerts"] >= 8 and {"malicious", "benign"} <= set(local.verdicts.values())
    assert report["same_verdict"] >= SAME_VERDICT, report["differences"]
    assert all(q["delta"] <= QUALITY_DELTA for q in report["quality"].values()), report["quality"]
