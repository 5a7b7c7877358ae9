"""The audit log: chain integrity under every kind of tampering, concurrency, redaction and bounds."""

from __future__ import annotations

import json
import multiprocessing
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


def test_torn_final_line_is_recovered_on_next_append_and_recorded(tmp_path: Path) -> None:
    log = _log(tmp_path, count=3)
    with open(log.path, "ab") as handle:
        handle.write(b'{"seq":4,"ts":"2024-')
    assert not verify(log.path).ok
    record = log.append("case", "flow", {"after": "crash"})
    assert record.seq == 5
    records = list(read(log.path))
    assert records[3].kind == "audit" and records[3].data["bytes"] == len(b'{"seq":4,"ts":"2024-')
    assert verify(log.path).ok


def test_append_interrupted_before_the_anchor_moved_is_healed(tmp_path: Path) -> None:
    log = _log(tmp_path, count=3)
    second = json.loads(_lines(log)[1])
    head = tmp_path / "audit.jsonl.head"
    head.write_text(canonical_json({"seq": 2, "hash": second["hash"]}), encoding="utf-8")
    assert verify(log.path).first_bad == 3
    assert log.append("case", "flow", {}).seq == 4
    assert verify(log.path).ok


def test_missing_anchor_is_only_tolerated_for_a_first_record(tmp_path: Path) -> None:
    head = tmp_path / "audit.jsonl.head"
    single = _log(tmp_path, count=1)
    head.unlink()
    assert single.append("case", "flow", {}).seq == 2
    head.unlink()
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
