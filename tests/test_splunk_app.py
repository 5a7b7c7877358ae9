"""The Splunk app package: layout, config consistency, reproducible build, and AppInspect precert."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from siemcrew.connectors.splunk.app_builder import APP_SOURCE, build_app

ACTION = "siemcrew_investigate"


def conf(relative: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False, default_section="__none__")
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(APP_SOURCE / relative, encoding="utf-8")
    return parser


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_app(tmp_path_factory.mktemp("app"), version="1.2.3")


def test_package_has_one_top_level_app_dir_and_the_required_files(package: Path) -> None:
    assert package.name == "siemcrew-1.2.3.tgz"
    with tarfile.open(package) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {name.split("/")[0] for name in members} == {"siemcrew"}
    for required in (
        "default/app.conf", "default/alert_actions.conf", f"default/data/ui/alerts/{ACTION}.html",
        "README/alert_actions.conf.spec", "README/savedsearches.conf.spec", f"bin/{ACTION}.py",
        "metadata/default.meta", "static/appIcon.png", "static/appIcon_2x.png", f"appserver/static/{ACTION}.png",
    ):
        assert f"siemcrew/{required}" in members, required
    assert not [n for n in members if n.endswith((".pyc", ".pyo")) or "__pycache__" in n or "/local/" in n]
    assert all(m.uid == 0 and m.gid == 0 for m in members.values())
    assert members[f"siemcrew/bin/{ACTION}.py"].mode == 0o755 and members["siemcrew/default/app.conf"].mode == 0o644


def test_the_version_is_written_into_app_conf(package: Path) -> None:
    with tarfile.open(package) as tar:
        text = tar.extractfile("siemcrew/default/app.conf").read().decode()  # type: ignore[union-attr]
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    assert parser["id"]["version"] == "1.2.3" and parser["launcher"]["version"] == "1.2.3" and parser["id"]["name"] == "siemcrew"


def test_builds_are_reproducible_and_versions_validated(tmp_path: Path) -> None:
    first = build_app(tmp_path / "a", version="1.2.3").read_bytes()
    assert build_app(tmp_path / "b", version="1.2.3").read_bytes() == first
    with pytest.raises(ValueError, match="MAJOR.MINOR.PATCH"):
        build_app(tmp_path / "c", version="1.2")


def test_alert_action_declares_python3_and_json_payload() -> None:
    stanza = conf("default/alert_actions.conf")[ACTION]
    assert stanza["is_custom"] == "1" and stanza["payload_format"] == "json"
    assert stanza["python.version"] == "python3" and stanza["python.required"] == "3.13"
    assert stanza["label"] == "Investigate with siemcrew"
    meta = (APP_SOURCE / "metadata" / "default.meta").read_text()
    assert re.search(rf"^\[alert_actions/{ACTION}\]\nexport = system$", meta, re.M)


def test_params_are_declared_in_specs_and_form_and_none_is_a_secret() -> None:
    params = {k for k in conf("default/alert_actions.conf")[ACTION] if k.startswith("param.")}
    spec = (APP_SOURCE / "README" / "alert_actions.conf.spec").read_text()
    saved_spec = (APP_SOURCE / "README" / "savedsearches.conf.spec").read_text()
    form = (APP_SOURCE / "default" / "data" / "ui" / "alerts" / f"{ACTION}.html").read_text()
    for param in params:
        assert re.search(rf"^{re.escape(param)} = ", spec, re.M), param
        assert re.search(rf"^action\.{ACTION}\.{re.escape(param)} = ", saved_spec, re.M), param
    assert set(re.findall(rf'name="action\.{ACTION}\.(param\.\w+)"', form)) <= params
    assert not [p for p in params if re.search("token|password|secret", p)]
    assert "<script" not in form.lower()


def test_the_action_script_uses_only_the_standard_library() -> None:
    source = (APP_SOURCE / "bin" / f"{ACTION}.py").read_text()
    imported = set(re.findall(r"^(?:from|import) (\w+)", source, re.M))
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_appinspect_precert_reports_no_failures_or_errors(package: Path, tmp_path: Path) -> None:
    appinspect = Path(sys.executable).parent / "splunk-appinspect"
    assert appinspect.exists(), "splunk-appinspect is part of the test extra: pip install -e '.[test]'"
    report = tmp_path / "appinspect.json"
    done = subprocess.run(
        [str(appinspect), "inspect", str(package), "--mode", "precert", "--output-file", str(report)],
        capture_output=True, text=True, timeout=240,
    )
    assert report.exists(), done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(report.read_text())
    problems = [
        (check["name"], [m["message"] for m in check["messages"]])
        for item in result["reports"] for group in item["groups"] for check in group["checks"]
        if check["result"] in ("failure", "error")
    ]
    assert result["summary"]["failure"] == 0 and result["summary"]["error"] == 0, problems
    assert result["summary"]["success"] > 50


def test_the_example_saved_search_enables_the_action_with_declared_params() -> None:
    example = (APP_SOURCE.parents[3] / "examples" / "splunk" / "savedsearches.conf").read_text()
    params = {k for k in conf("default/alert_actions.conf")[ACTION] if k.startswith("param.")}
    assert re.search(rf"^action\.{ACTION} = 1$", example, re.M)
    used = set(re.findall(rf"^action\.{ACTION}\.(param\.\w+) = ", example, re.M))
    assert used and used <= params
