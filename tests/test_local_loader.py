"""Loading files into the store: zips, directories, odd encodings, junk files, duplicates."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import pytest
from emulators.local_data import recording, sysmon_process, write_ndjson

from siemcrew.connectors.local import EventStore

RUN_KEYS = "SDWIN-200722001847_empire_run_keys_elevated_user"


def test_load_real_zip_then_reload_does_not_duplicate():
    store = EventStore()
    zip_path = next(recording(RUN_KEYS).glob("*.zip"))
    first = store.load(zip_path)
    assert (first.files_loaded, first.files_skipped, first.bad_lines) == (1, 0, 0)
    assert first.events == 657 == store.count()
    assert store.scopes() == [zip_path.stem]  # default scope: the file stem
    again = store.load(zip_path)
    assert again.events == 0 and again.duplicates == 657
    assert store.count() == 657


def test_load_recording_folder_scope_is_folder_name():
    store = EventStore()
    report = store.load(recording(RUN_KEYS))
    # The folder's metadata YAML is passed over quietly; the zip is loaded.
    assert (report.files_loaded, report.files_skipped, report.events) == (1, 0, 657)
    assert store.scopes() == [RUN_KEYS] and store.count(RUN_KEYS) == 657
    # Raw Windows names became columns; ECS columns hold normalized values.
    assert {"TargetObject", "Image", "EventID", "Channel", "Details"} <= store.columns()
    stamps = store.query('SELECT "@timestamp" FROM events ORDER BY "@timestamp"')[1]
    assert all(len(s) == 24 and s.endswith("Z") for (s,) in stamps)


@pytest.fixture
def junk_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "case42"
    good = [sysmon_process("2024-03-01T10:00:00.000Z", "cmd /c whoami", pid=1), sysmon_process("2024-03-01T10:00:01.000Z", "cmd /c ver", pid=2)]
    lines = [json.dumps(event) for event in good]
    (folder).mkdir()
    (folder / "good.ndjson").write_text(lines[0] + "\n\n" + '{"EventID": 1, "Chan' + "\n" + lines[1] + "\n", encoding="utf-8")
    ecs = [
        {"@timestamp": "2024-03-01T11:00:00Z", "host": {"name": "web01"}, "event": {"code": "4624"}, "user": {"name": "bob"}},
        {"@timestamp": "2024-03-01T11:00:01Z", "host": {"name": "web01"}, "event": {"code": "4625"}, "user": {"name": "eve"}},
    ]
    (folder / "array.json").write_text(json.dumps(ecs, indent=2), encoding="utf-8")
    (folder / "single.json").write_text(json.dumps(sysmon_process("2024-03-01T12:00:00Z", "notepad", pid=3), indent=2), encoding="utf-8")
    (folder / "conn.log").write_text(
        "#separator \\x09\n#fields\tts\tuid\tid.orig_h\n1600000000.1\tC1\t10.0.0.1\n", encoding="utf-8"
    )
    write_ndjson(folder / "zeek_dns.json", [{"ts": 1.5, "uid": "C2", "id.orig_h": "10.0.0.2", "query": "example.org"}] * 2)
    (folder / "truncated.json").write_text('[{"EventID": 1, "Channel": "Security", "Hostname": "A"}, {"EventID": 4', encoding="utf-8")
    (folder / "blob.bin").write_bytes(bytes(range(256)) * 4)
    latin = sysmon_process("2024-03-01T13:00:00Z", "echo café", pid=4)
    (folder / "latin1.ndjson").write_bytes(json.dumps(latin, ensure_ascii=False).encode("latin-1") + b"\n")
    utf16 = sysmon_process("2024-03-01T14:00:00Z", "echo utf16", pid=5)
    (folder / "utf16.json").write_bytes(json.dumps(utf16).encode("utf-16"))
    bom = sysmon_process("2024-03-01T15:00:00Z", "echo bom", pid=6)
    (folder / "bom.ndjson").write_bytes(b"\xef\xbb\xbf" + json.dumps(bom).encode("utf-8") + b"\n")
    (folder / ".hidden.json").write_text("this is ignored", encoding="utf-8")
    (folder / "metadata.yaml").write_text("title: recording notes", encoding="utf-8")
    with zipfile.ZipFile(folder / "bundle.zip", "w") as archive:
        archive.writestr("inner/more.ndjson", json.dumps(sysmon_process("2024-03-01T16:00:00Z", "echo zipped", pid=7)) + "\n")
        archive.writestr("inner/readme.txt", "not events")
    (folder / "broken.zip").write_bytes(b"PK\x03\x04 this is not a zip")
    return folder


def test_junk_files_are_skipped_with_warnings_never_raised(junk_folder: Path, caplog):
    caplog.set_level(logging.WARNING)
    store = EventStore()
    report = store.load(junk_folder)
    skipped = {name.removeprefix(f"{junk_folder}/"): reason for name, reason in report.skipped}
    assert set(skipped) == {"conn.log", "zeek_dns.json", "truncated.json", "blob.bin", "bundle.zip:inner/readme.txt", "broken.zip"}
    assert "invalid JSON" in skipped["conn.log"]
    assert "no Windows or ECS events" in skipped["zeek_dns.json"]
    assert "binary" in skipped["blob.bin"]
    assert "zip" in skipped["broken.zip"]
    assert report.files_skipped == 6
    # good, array, single, latin1, utf16, bom and the zip member
    assert report.files_loaded == 7
    assert report.events == 2 + 2 + 1 + 1 + 1 + 1 + 1 == store.count()
    assert report.bad_lines == 1  # the truncated line inside good.ndjson
    messages = "\n".join(record.getMessage() for record in caplog.records)
    for name in ("conn.log", "zeek_dns.json", "truncated.json", "blob.bin", "broken.zip", "latin1.ndjson", "good.ndjson"):
        assert name in messages
    assert any("latin-1" in text and name.endswith("latin1.ndjson") for name, text in report.warnings)
    assert store.scopes() == ["case42"]


def test_decoded_values_survive_odd_encodings(junk_folder: Path):
    store = EventStore()
    store.load(junk_folder)
    rows = store.query('SELECT "process.command_line" FROM events WHERE "process.pid" IN (4, 5, 6, 7) ORDER BY "process.pid"')[1]
    assert [row[0] for row in rows] == ["echo café", "echo utf16", "echo bom", "echo zipped"]


def test_raw_columns_are_case_insensitive_and_kept_in_doc(tmp_path: Path):
    events = [
        sysmon_process("2024-03-01T10:00:00Z", "a", pid=1, LogonId="0x1"),
        sysmon_process("2024-03-01T10:00:01Z", "b", pid=2, LogonID="0x2"),
    ]
    store = EventStore()
    store.load(write_ndjson(tmp_path / "x.ndjson", events))
    names = [name for name in store.columns() if name.lower() == "logonid"]
    assert len(names) == 1
    rows = store.query(f'SELECT "{names[0]}", doc FROM events ORDER BY "@timestamp"')[1]
    assert [row[0] for row in rows] == ["0x1", "0x2"]
    assert json.loads(rows[1][1])["winlog.event_data.LogonID"] == "0x2"


def test_scope_argument_and_multiple_paths(tmp_path: Path):
    a = write_ndjson(tmp_path / "a.ndjson", [sysmon_process("2024-03-01T10:00:00Z", "a", pid=1)])
    b = write_ndjson(tmp_path / "b.ndjson", [sysmon_process("2024-03-01T10:00:00Z", "b", pid=2)])
    store = EventStore()
    store.load([a, b])
    assert store.scopes() == ["a", "b"]
    store.load(a, scope="incident-7")
    assert store.count("incident-7") == 1 and store.count() == 3


def test_missing_path_is_reported(tmp_path: Path):
    report = EventStore().load(tmp_path / "nope")
    assert report.files_skipped == 1 and "no such file" in report.skipped[0][1]


def test_file_backed_store_persists(tmp_path: Path):
    db = tmp_path / "store" / "events.sqlite"
    store = EventStore(db)
    store.load(write_ndjson(tmp_path / "a.ndjson", [sysmon_process("2024-03-01T10:00:00Z", "a", pid=1)]))
    store.close()
    reopened = EventStore(db)
    assert reopened.count() == 1 and reopened.scopes() == ["a"]
    assert "CommandLine" in reopened.columns()
