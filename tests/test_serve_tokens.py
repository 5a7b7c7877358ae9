"""Who may approve over HTTP, and what `doctor` says about secrets.

An intake token equal to an approver's token was not refused, so whoever held the intake token (the
Splunk app does) could approve; a secret pasted into a `*_env` field was printed by `doctor`; replaying
a decided approval over HTTP said "request changed" instead of "already decided"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from siemcrew.config.settings import Settings, SettingsError
from siemcrew.crew.doctor import checks
from siemcrew.service import create_app

INTAKE = "intake-token-0f3a9c1d2b7e"
WEBHOOK = "webhook-secret-8d2c4e6f0a1b"
ALICE = "approver-alice-5e7d9b1c3a2f"
BOB = "approver-bob-2b4d6f8a0c1e"


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for env, value in {"SIEMCREW_SERVE_TOKEN": INTAKE, "SIEMCREW_WEBHOOK_SECRET": WEBHOOK,
                       "SIEMCREW_APPROVER_ALICE": ALICE, "SIEMCREW_APPROVER_BOB": BOB}.items():
        monkeypatch.setenv(env, value)
    return monkeypatch


def _settings(tmp_path: Path, **serve: object) -> Settings:
    approvers = {"alice": "SIEMCREW_APPROVER_ALICE", "bob": "SIEMCREW_APPROVER_BOB"}
    return Settings.load(None, home=str(tmp_path / "home"), serve={"approvers": approvers, **serve})


def _doctor_row(settings: Settings) -> dict:
    return next(r for r in checks(settings, data_days=None) if r["check"] == "serve secrets")


@pytest.mark.parametrize(("env", "words"), [
    ("SIEMCREW_SERVE_TOKEN", "serve.token_env and serve.approvers.alice"),
    ("SIEMCREW_WEBHOOK_SECRET", "serve.webhook_secret_env and serve.approvers.alice"),
    ("SIEMCREW_APPROVER_BOB", "serve.approvers.alice and serve.approvers.bob"),
])
def test_a_token_shared_with_an_approver_is_refused_at_start_and_by_doctor(
        tmp_path: Path, tokens: pytest.MonkeyPatch, env: str, words: str) -> None:
    settings = _settings(tmp_path)
    create_app(settings)  # distinct tokens: starts
    assert _doctor_row(settings)["ok"]
    tokens.setenv(env, ALICE)
    with pytest.raises(SettingsError, match=words):
        create_app(settings)
    row = _doctor_row(settings)
    assert not row["ok"] and words in row["detail"], row
    assert ALICE not in json.dumps(checks(settings, data_days=None))


def test_doctor_never_echoes_a_secret_pasted_into_an_env_field(tmp_path: Path, tokens: pytest.MonkeyPatch) -> None:
    pasted = "A1b2C3d4E5f6G7h8I9j0KlMnOpQrStUv"  # name-shaped: letters and digits, as many API secrets are
    dotted = "sk-proj.abc123/def456=="
    tokens.setenv("SPLUNK_TOKEN", "the-real-splunk-token-value")
    settings = Settings.load(None, home=str(tmp_path / "home"),
                             serve={"token_env": pasted, "approvers": {"alice": dotted}},
                             llm={"model": "openai/gpt-4o-mini", "api_key_env": pasted})
    rows = checks(settings, data_days=None)
    text = json.dumps(rows)
    assert pasted not in text and dotted not in text and "the-real-splunk-token-value" not in text
    brains = next(r for r in rows if r["check"] == "brains")
    assert not brains["ok"] and "llm.api_key_env" in brains["detail"], brains


def test_replaying_a_decided_approval_over_http_says_already_decided(awaiting_isolation, tokens) -> None:  # noqa: ANN001
    rt, case = awaiting_isolation
    rt.settings.serve.approvers = {"alice": "SIEMCREW_APPROVER_ALICE"}
    (pending,) = rt.approvals.pending(case.id)
    url = f"/v1/cases/{case.id}/actions/isolate_host/approve"
    alice = {"Authorization": f"Bearer {ALICE}"}
    with TestClient(create_app(rt.settings, runtime=rt)) as client:
        intake = client.post(url, json={"reason": "ok"}, headers={"Authorization": f"Bearer {INTAKE}"})
        assert intake.status_code == 403
        short = client.post(url, json={"reason": "ok", "args_sha256": pending.args_sha256[:1]}, headers=alice)
        assert short.status_code == 409 and "64 hex" in short.json()["detail"]
        approved = client.post(url, json={"reason": "ok", "args_sha256": pending.args_sha256}, headers=alice)
        assert approved.status_code == 200, approved.text
        replay = client.post(url, json={"reason": "ok", "args_sha256": pending.args_sha256}, headers=alice)
        assert replay.status_code == 409 and "already decided" in replay.json()["detail"], replay.text
