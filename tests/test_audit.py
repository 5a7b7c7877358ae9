"""The audit log: chain integrity under every kind of tampering, concurrency, redaction and bounds."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from siemcrew.crew.audit import (
    GENESIS,
    MAX_LIST_ITEMS,
    MAX_STRING_CHARS,
    REDACTED,
    AuditError,
    AuditLog,
    is_secret_key,
    read,
    verify,
)
from siemcrew.crew.models import canonical_json, sha256_of


def _log(tmp_path: Path, count: int = 6) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl")
    for index in range(count):
        log.append("tool_call", f"agent{index % 2}", {"n": index, "query": f"q{index}"}, case_id=f"case-{index % 3}")
    return log


def _lines(log: AuditLog) -> list[str]:
    return log.path.read_text(encoding="utf-8").splitlines()


def _write(log: AuditLog, lines: list[str]) -> None:
    log.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _rehash(record: dict) -> dict:
    record["hash"] = sha256_of({k: v for k, v in record.items() if k != "hash"})
    return record


def test_intact_chain_verifies_and_links(tmp_path: Path) -> None:
    log = _log(tmp_path)
    result = verify(log.path)
    assert result.ok and result.records == 6 and result.first_bad is None
    records = [json.loads(line) for line in _lines(log)]
    assert [r["seq"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[0]["prev"] == GENESIS
    assert all(b["prev"] == a["hash"] for a, b in zip(records, records[1:]))
    head = json.loads((tmp_path / "audit.jsonl.head").read_text())
    assert head == {"seq": 6, "hash": records[-1]["hash"]}


def _modify(index: int, rehash: bool, **changes: object):
    """Change fields of line `index` (0-based), optionally recomputing its hash to match."""

    def mutate(lines: list[str]) -> None:
        record = {**json.loads(lines[index]), **changes}
        lines[index] = canonical_json(_rehash(record) if rehash else record)

    return mutate


def _forge_after(index: int):
    """Insert after line `index` a record that links correctly to it, with a valid own hash."""

    def mutate(lines: list[str]) -> None:
        before = json.loads(lines[index])
        forged = {**before, "seq": before["seq"] + 1, "prev": before["hash"], "data": {"forged": True}}
        lines.insert(index + 1, canonical_json(_rehash(forged)))

    return mutate


def _swap(lines: list[str]) -> None:
    lines[1], lines[2] = lines[2], lines[1]


def _retype_seq(lines: list[str]) -> None:
    lines[0] = lines[0].replace('"seq":1', '"seq":"1"')


# name: (mutation of the 6 lines, first bad record, words in the reason)
TAMPERING = {
    "modify a data field": (_modify(2, False, data={"query": "other"}), 3, "modified"),
    "modify a field and recompute the hash": (_modify(3, True, actor="attacker"), 4, "altered"),
    "modify the last record and recompute": (_modify(5, True, kind="nothing"), 6, "head anchor"),
    "change a type only": (_retype_seq, 1, "not a valid audit record"),
    "delete a middle line": (lambda lines: lines.pop(2), 3, "missing"),
    "delete the last line": (lambda lines: lines.pop(), 6, "truncated"),
    "insert a forged line": (_forge_after(1), 3, "inserted"),
    "append a forged record": (_forge_after(5), 7, "without moving the head anchor"),
    "swap two lines": (_swap, 2, "out of order"),
    "duplicate a line": (lambda lines: lines.insert(3, lines[2]), 4, "repeats"),
    "append garbage": (lambda lines: lines.append("this is not json"), 7, "not a valid audit record"),
}


@pytest.mark.parametrize("tamper", TAMPERING)
def test_tampering_is_detected_and_the_first_bad_record_named(tmp_path: Path, tamper: str) -> None:
    mutate, first_bad, words = TAMPERING[tamper]
    log = _log(tmp_path)
    lines = _lines(log)
    mutate(lines)
    _write(log, lines)
    result = verify(log.path)
    assert not result.ok
    assert result.first_bad == first_bad, result.reason
    assert words in result.reason


@pytest.mark.parametrize("tamper", ["delete the last line", "append garbage", "modify the last record and recompute"])
def test_appending_to_a_damaged_tail_is_refused(tmp_path: Path, tamper: str) -> None:
    log = _log(tmp_path)
    lines = _lines(log)
    TAMPERING[tamper][0](lines)
    _write(log, lines)
    with pytest.raises(AuditError, match="verify"):
        log.append("case", "x", {})


def _killed_append(path: Path, point: str, key_env: str | None = None) -> None:
    """Append one record in another process that is killed at `point` of the append (as `kill -9` would)."""
    code = (
        "import os, sys\n"
        "from siemcrew.crew.audit import AuditLog\n"
        "key = os.environ[sys.argv[2]].encode() if sys.argv[2] else None\n"
        "AuditLog(sys.argv[1], key=key).append('action_start', 'alice', {'key': 'c:isolate_host:WS-1'})\n"
    )
    env = {**os.environ, "SIEMCREW_FAULT_KILL_AT": point}
    proc = subprocess.run([sys.executable, "-c", code, str(path), key_env or ""], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 137, proc.stderr[-2000:]


KILL_POINTS = {"audit:after_intent": False, "audit:after_record": True}  # point: was the record written?


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_killed_append_is_no_false_alarm_and_the_next_writer_records_its_recovery(tmp_path: Path, point: str) -> None:
    log = _log(tmp_path, count=3)
    anchored = json.loads((tmp_path / "audit.jsonl.head").read_text())
    _killed_append(log.path, point)
    written = KILL_POINTS[point]
    assert len(_lines(log)) == 3 + written
    result = verify(log.path)
    assert result.ok, result.reason  # a crash is not tampering: no alarm in between
    assert result.notes and "interrupted" in result.notes[0]

    after = log.append("case", "flow", {"after": "crash"})
    records = list(read(log.path))
    recovery = records[-2]
    assert recovery.kind == "recovery" and after.seq == recovery.seq + 1
    assert recovery.data["anchor"] == {"seq": 3, "hash": anchored["hash"]}
    assert len(recovery.data["intent"]) == 1 and recovery.data["torn"] is None
    if written:  # the record the killed process wrote is named, with its hash, not silently adopted
        assert recovery.data["found"] == [{"seq": 4, "hash": records[3].hash, "kind": "action_start",
                                           "actor": "alice", "case_id": None}]
        assert recovery.data["intent"] == [records[3].hash] and recovery.data["missing"] == 0
    else:
        assert recovery.data["found"] == [] and recovery.data["missing"] == 1
    final = verify(log.path)
    assert final.ok and final.notes == [], final


def test_a_writer_killed_while_recovering_leaves_the_found_record_named(tmp_path: Path) -> None:
    """The recovery record is announced like any append, with the records it is about still announced:
    a crash while recovering never leaves them adopted without a recovery record naming them."""
    log = _log(tmp_path, count=3)
    _killed_append(log.path, "audit:after_record")
    interrupted = list(read(log.path))[3]
    _killed_append(log.path, "audit:after_intent")  # this writer dies announcing its recovery record
    assert verify(log.path).ok
    log.append("case", "flow", {})
    assert verify(log.path).ok
    recoveries = [r for r in read(log.path) if r.kind == "recovery"]
    assert [f["hash"] for r in recoveries for f in r.data["found"]] == [interrupted.hash]
    assert recoveries[0].data["anchor"]["seq"] == 3


@pytest.mark.parametrize("point", [None, *KILL_POINTS])
def test_a_forged_record_beyond_the_anchor_is_never_adopted(tmp_path: Path, point: str | None) -> None:
    """A correctly chained record appended without moving the anchor was adopted by the next write as an
    "interrupted append". Only a record the interrupted append announced in the anchor is one."""
    log = _log(tmp_path, count=3)
    if point:
        _killed_append(log.path, point)
    lines = _lines(log)
    _forge_after(len(lines) - 1)(lines)
    _write(log, lines)
    result = verify(log.path)
    assert not result.ok and result.first_bad == len(lines), result.reason
    assert "not announced" in result.reason
    with pytest.raises(AuditError, match="verify"):
        log.append("case", "flow", {})
    assert _lines(log) == lines  # nothing adopted, nothing written


def test_a_torn_line_is_recovered_only_after_an_announced_append(tmp_path: Path) -> None:
    torn = b'{"seq":4,"ts":"2024-'
    log = _log(tmp_path, count=3)
    with open(log.path, "ab") as handle:  # bytes that no append announced: tampering
        handle.write(torn)
    assert not verify(log.path).ok
    with pytest.raises(AuditError, match="verify"):
        log.append("case", "flow", {})

    log = _log(tmp_path / "crash", count=3)
    _killed_append(log.path, "audit:after_intent")
    with open(log.path, "ab") as handle:  # what a power cut during the announced write leaves
        handle.write(torn)
    result = verify(log.path)
    assert result.ok and "torn" in result.notes[0], result
    record = log.append("case", "flow", {"after": "crash"})
    assert record.seq == 5
    recovery = list(read(log.path))[3]
    assert recovery.kind == "recovery"
    assert recovery.data["torn"] == {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()}
    assert verify(log.path).ok


def test_a_recovery_record_that_misdescribes_the_log_fails(tmp_path: Path) -> None:
    log = _log(tmp_path, count=3)
    _killed_append(log.path, "audit:after_record")
    log.append("case", "flow", {})
    lines = _lines(log)
    recovery = json.loads(lines[4])
    recovery["data"]["found"][0]["hash"] = "f" * 64  # someone rewrote what the recovery says it found
    lines[4] = canonical_json(_rehash(recovery))
    lines[5] = canonical_json(_rehash({**json.loads(lines[5]), "prev": recovery["hash"]}))
    _write(log, lines)
    last = json.loads(lines[5])
    (tmp_path / "audit.jsonl.head").write_text(canonical_json({"seq": 6, "hash": last["hash"]}), encoding="utf-8")
    result = verify(log.path)
    assert not result.ok and result.first_bad == 5 and "recovery" in result.reason, result


def test_a_missing_anchor_is_refused_even_for_a_single_record(tmp_path: Path) -> None:
    """Every append announces itself in the anchor before writing, so no crash leaves records without one."""
    single = _log(tmp_path, count=1)
    (tmp_path / "audit.jsonl.head").unlink()
    with pytest.raises(AuditError, match="head anchor"):
        single.append("case", "flow", {})
    assert not verify(single.path).ok


def test_empty_or_missing_log_is_ok_but_missing_log_with_anchor_is_not(tmp_path: Path) -> None:
    assert verify(tmp_path / "none.jsonl").ok
    log = _log(tmp_path, count=2)
    log.path.unlink()
    result = verify(log.path)
    assert not result.ok and result.first_bad == 1


def test_read_filters_by_case_and_kind(tmp_path: Path) -> None:
    log = _log(tmp_path)
    log.append("policy", "gate", {"outcome": "denied"}, case_id="case-0")
    assert [r.seq for r in read(log.path, case_id="case-0")] == [1, 4, 7]
    assert [r.seq for r in log.read(case_id="case-0", kind="policy")] == [7]


def test_secret_keys_are_redacted_at_any_depth(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    record = log.append(
        "tool_call",
        "connector",
        {
            "headers": {"Authorization": "Bearer abc", "X-Splunk-Token": "tok", "Accept": "json"},
            "auth": [{"password": "hunter2", "user": "bob"}, {"client_secret": "s3"}],
            "accessToken": "a",
            "apiKey": "k",
            "Session_Key": "sk",
            "cookie": "c=1",
            "usage": {"total_tokens": 12, "prompt_tokens": 7},
        },
    )
    text = log.path.read_text(encoding="utf-8")
    assert "SEKRIT" not in text
    assert text.count(REDACTED) == 8
    assert record.data["headers"]["Accept"] == "json"
    assert record.data["auth"][0] == {"password": REDACTED, "user": "bob"}
    assert record.data["usage"] == {"total_tokens": 12, "prompt_tokens": 7}
    assert verify(log.path).ok


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("token", True),
        ("refresh_token", True),
        ("Passwd", True),
        ("db-password", True),
        ("api_key", True),
        ("sessionKey", True),
        ("secret", True),
        ("tokens", False),
        ("total_tokens", False),
        ("keyword", False),
        ("user", False),
    ],
)
def test_secret_key_detection(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_huge_strings_and_lists_are_bounded_with_digests(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    rows = [{"i": i} for i in range(MAX_LIST_ITEMS + 10)]
    big = "x" * (MAX_STRING_CHARS + 1000)
    record = log.append("tool_call", "hunter", {"rows": rows, "text": big, "result_digest": "d" * 64})
    assert record.data["rows"]["count"] == len(rows)
    assert record.data["rows"]["sha256"] == sha256_of(rows)
    assert len(record.data["rows"]["head"]) < len(rows)
    assert record.data["text"].startswith("x" * MAX_STRING_CHARS)
    assert f"truncated 1000 chars, sha256={sha256_of(big)}" in record.data["text"]
    assert record.data["result_digest"] == "d" * 64
    assert log.path.stat().st_size < 8 * 1024


def test_oversized_payload_is_replaced_by_digest(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    data = {f"field{i}": "y" * 3000 for i in range(40)}
    record = log.append("tool_call", "hunter", data)
    assert record.data["oversized"] is True and record.data["bytes"] > 64 * 1024
    assert log.path.stat().st_size < 8 * 1024


def test_non_json_values_are_stored_in_a_stable_form(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("case", "x", {"at": datetime(2024, 1, 2, tzinfo=timezone.utc), "ratio": float("nan"), 3: {1, 2}})
    (record,) = list(read(log.path))
    assert record.data == {"at": "2024-01-02T00:00:00.000Z", "ratio": "nan", "3": [1, 2]}
    assert verify(log.path).ok


def test_threads_append_a_contiguous_chain(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    threads = [
        threading.Thread(target=lambda n=n: [log.append("query", f"t{n}", {"i": i}) for i in range(25)])
        for n in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = verify(log.path)
    assert result.ok and result.records == 100


def _append_many(path: str, worker: int, start: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    start.wait()
    log = AuditLog(path)
    for index in range(50):
        log.append("query", f"worker{worker}", {"i": index})


def test_four_processes_append_a_contiguous_chain(tmp_path: Path) -> None:
    path = str(tmp_path / "audit.jsonl")
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=_append_many, args=(path, n, start)) for n in range(4)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    result = verify(path)
    assert result.ok, result.reason
    assert result.records == 200
    records = list(read(path))
    assert [r.seq for r in records] == list(range(1, 201))
    for n in range(4):
        assert [r.data["i"] for r in records if r.actor == f"worker{n}"] == list(range(50))


# -- the keyed chain (HMAC with a key kept outside the home) ---------------------------------------------------
KEY = b"k3y-outside-the-home-" + b"x" * 16


def _keyed(tmp_path: Path, count: int = 4) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl", key=KEY)
    for index in range(count):
        log.append("tool_call", "hunter", {"n": index}, case_id="case-1")
    return log


def test_a_keyed_chain_verifies_only_with_its_key(tmp_path: Path) -> None:
    log = _keyed(tmp_path)
    assert verify(log.path, key=KEY).ok
    assert all(r.mac == "hmac-sha256" for r in read(log.path))
    without = verify(log.path)
    assert not without.ok and "key" in without.reason
    wrong = verify(log.path, key=b"another key, just as long as the first")
    assert not wrong.ok and wrong.first_bad == 1


def test_without_the_key_a_consistent_rewrite_of_a_keyed_chain_is_detected(tmp_path: Path) -> None:
    """Whoever can write the home can recompute a plain chain and its anchor; not a keyed one."""
    log = _keyed(tmp_path)
    records = [json.loads(line) for line in _lines(log)]
    records[1]["data"] = {"n": "forged"}
    prev = records[0]["hash"]
    for record in records[1:]:  # relink everything after the edit, as an attacker would
        record["prev"] = prev
        prev = _rehash(record)["hash"]
    _write(log, [canonical_json(r) for r in records])
    (tmp_path / "audit.jsonl.head").write_text(canonical_json({"seq": 4, "hash": prev}), encoding="utf-8")
    assert verify(log.path).ok is False
    result = verify(log.path, key=KEY)
    assert not result.ok and result.first_bad == 2, result


def test_cutting_a_keyed_chain_short_needs_the_key_to_move_the_anchor(tmp_path: Path) -> None:
    log = _keyed(tmp_path)
    lines = _lines(log)
    _write(log, lines[:-1])
    third = json.loads(lines[2])
    (tmp_path / "audit.jsonl.head").write_text(canonical_json({"seq": 3, "hash": third["hash"]}), encoding="utf-8")
    result = verify(log.path, key=KEY)
    assert not result.ok and "anchor" in result.reason, result


def test_a_plain_log_continues_keyed_and_a_writer_without_the_key_is_refused(tmp_path: Path) -> None:
    plain = _log(tmp_path, count=2)
    keyed = AuditLog(plain.path, key=KEY)
    keyed.append("audit", "siemcrew", {"keyed": True})
    assert verify(plain.path, key=KEY).ok
    assert not verify(plain.path).ok
    with pytest.raises(AuditError, match="key"):
        plain.append("case", "flow", {})
    assert len(_lines(plain)) == 3


def test_a_killed_keyed_append_recovers_and_a_forgery_after_it_is_refused(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_AUDIT_KEY", KEY.decode())
    log = _keyed(tmp_path, count=2)
    _killed_append(log.path, "audit:after_record", key_env="TEST_AUDIT_KEY")
    assert verify(log.path, key=KEY).ok
    log.append("case", "flow", {})
    kinds = [r.kind for r in read(log.path)]
    assert kinds[-2:] == ["recovery", "case"] and verify(log.path, key=KEY).ok


def test_the_audit_key_comes_from_the_environment_or_a_file_outside_the_home(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from siemcrew.config.settings import Settings, SettingsError

    home = tmp_path / "home"
    monkeypatch.delenv("SIEMCREW_AUDIT_KEY", raising=False)
    assert Settings.load(None, home=str(home)).audit_key() is None  # absent: plain sha256, as before
    monkeypatch.setenv("SIEMCREW_AUDIT_KEY", KEY.decode())
    assert Settings.load(None, home=str(home)).audit_key() == KEY
    monkeypatch.delenv("SIEMCREW_AUDIT_KEY")
    outside = tmp_path / "etc" / "audit.key"
    outside.parent.mkdir()
    outside.write_text(KEY.decode() + "\n", encoding="utf-8")
    assert Settings.load(None, home=str(home), audit={"key_file": str(outside)}).audit_key() == KEY
    inside = home / "audit.key"
    home.mkdir()
    inside.write_text(KEY.decode(), encoding="utf-8")
    with pytest.raises(SettingsError, match="outside"):
        Settings.load(None, home=str(home), audit={"key_file": str(inside)}).audit_key()
    with pytest.raises(SettingsError, match="not found|cannot read"):
        Settings.load(None, home=str(home), audit={"key_file": str(tmp_path / "none")}).audit_key()
    outside.write_text("short", encoding="utf-8")
    with pytest.raises(SettingsError, match="32"):
        Settings.load(None, home=str(home), audit={"key_file": str(outside)}).audit_key()
