"""The append-only, hash-chained audit log: every tool call, query, decision and action, provably intact.

One JSON object per line. Each record carries the hash of the record before it (`prev`) and its own
hash over its canonical JSON (without `hash`), so editing, deleting, inserting or reordering lines
breaks the chain. A small anchor file (`<log>.head`) holds the seq and hash of the last record, so
cutting records off the END is detected too. Appends are serialized across threads and processes by
an exclusive `flock` on a sidecar `<log>.lock` file and are fsync'ed before the anchor moves.

The chain is not keyed: someone who can rewrite the whole file and the anchor can forge a consistent
history. It proves the log was not edited in place; ship it off-host (SIEM, WORM storage) for more.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from siemcrew.crew.models import Model, canonical_json, sha256_of
from siemcrew.crew.timeutil import iso, utcnow

GENESIS = "0" * 64
REDACTED = "[redacted]"
MAX_STRING_CHARS = 4096
MAX_LIST_ITEMS = 50
LIST_HEAD_ITEMS = 5
MAX_DATA_BYTES = 64 * 1024

# Key words whose values are secrets. A key matches when one of these appears in it as whole
# words (`X-Splunk-Token`, `accessToken`, `db_password`), so `total_tokens` or `token_count`-style
# counters with a different word are kept while `session_key` or `apiKey` are not.
SECRET_WORDS = (
    "token",
    "password",
    "passwd",
    "secret",
    "api_key",
    "apikey",
    "authorization",
    "session_key",
    "cookie",
    "client_secret",
)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")


class AuditError(RuntimeError):
    """The log cannot be appended to or read safely (damaged, tampered, or unreadable)."""


class AuditRecord(Model):
    """One line of the log."""

    seq: int
    ts: str
    kind: str
    actor: str
    case_id: str | None = None
    data: dict[str, Any]
    prev: str
    hash: str

    def body(self) -> dict[str, Any]:
        """The record without its hash: what the hash is taken over."""
        return self.model_dump(exclude={"hash"})

    def computed_hash(self) -> str:
        return sha256_of(self.body())


class VerifyResult(Model):
    """Outcome of `verify`: `first_bad` is the seq (= line number) of the first record not proven intact."""

    ok: bool
    records: int
    first_bad: int | None = None
    reason: str


def is_secret_key(key: str) -> bool:
    """True when a mapping key names a secret (case-insensitive, whole words, camelCase aware)."""
    words = [w for w in _WORD_SPLIT.split(_CAMEL.sub("_", key).lower()) if w]
    joined = "_" + "_".join(words) + "_"
    return any(f"_{word}_" in joined for word in SECRET_WORDS)


def sanitize(value: Any) -> Any:
    """A JSON-native, bounded copy of `value`: secrets redacted, huge strings and lists digested."""
    if isinstance(value, BaseModel):
        return sanitize(value.model_dump(mode="json"))
    if isinstance(value, dict):
        return {
            str(key): REDACTED if is_secret_key(str(key)) and item is not None else sanitize(item)
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [sanitize(item) for item in value]
        if len(items) <= MAX_LIST_ITEMS:
            return items
        return {
            "truncated_list": True,
            "count": len(items),
            "sha256": sha256_of(items),
            "head": items[:LIST_HEAD_ITEMS],
        }
    if isinstance(value, str):
        if len(value) <= MAX_STRING_CHARS:
            return value
        return (
            value[:MAX_STRING_CHARS]
            + f"...[truncated {len(value) - MAX_STRING_CHARS} chars, sha256={sha256_of(value)}]"
        )
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return iso(value)
    return sanitize(str(value))


def _bounded(data: dict[str, Any]) -> dict[str, Any]:
    """Keep one record small: an oversized payload is replaced by its size, keys and digest."""
    clean = sanitize(data)
    size = len(canonical_json(clean).encode("utf-8"))
    if size <= MAX_DATA_BYTES:
        return clean
    return {
        "oversized": True,
        "bytes": size,
        "sha256": sha256_of(clean),
        "keys": [key[:200] for key in sorted(clean)[:50]],
    }


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _read_anchor(path: Path) -> dict[str, Any] | None:
    anchor = _sidecar(path, ".head")
    try:
        value = json.loads(anchor.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AuditError(f"audit head anchor {anchor} is unreadable: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("seq"), int) or not isinstance(value.get("hash"), str):
        raise AuditError(f"audit head anchor {anchor} is malformed")
    return value


def _write_anchor(path: Path, seq: int, digest: str) -> None:
    """Replace the anchor atomically (write a temp file, fsync, rename, fsync the directory)."""
    anchor = _sidecar(path, ".head")
    tmp = _sidecar(path, f".head.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(canonical_json({"seq": seq, "hash": digest}))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, anchor)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse_record(line: bytes) -> AuditRecord:
    """Parse one line; raises ValueError on anything that is not a well-formed record."""
    try:
        value = json.loads(line.decode("utf-8"))
        return AuditRecord.model_validate(value, strict=True)
    except (UnicodeDecodeError, ValueError, ValidationError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def _tail(handle: Any) -> tuple[bytes, bytes]:
    """(last complete line, bytes after the last newline), reading backwards from the end.

    The second part is non-empty only when an append was torn (the file does not end in a newline).
    """
    pos = handle.seek(0, os.SEEK_END)
    data = b""
    while pos > 0:
        step = min(4096, pos)
        pos -= step
        handle.seek(pos)
        data = handle.read(step) + data
        cut = data.rfind(b"\n")
        if cut >= 0 and data.rfind(b"\n", 0, cut) >= 0:
            break
    cut = data.rfind(b"\n")
    if cut < 0:
        return b"", data
    start = data.rfind(b"\n", 0, cut)
    return data[start + 1 : cut], data[cut + 1 :]


class AuditLog:
    """Append records to one log file; safe across threads and processes."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread_lock = threading.Lock()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock, open(_sidecar(self.path, ".lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def append(self, kind: str, actor: str, data: dict[str, Any], case_id: str | None = None) -> AuditRecord:
        """Append one record (secrets redacted, bounded in size) and return it as written."""
        with self._locked(), open(self.path, "a+b") as handle:
            seq, prev = self._head(handle)
            record = self._write(handle, self._seal(seq + 1, prev, kind, actor, case_id, _bounded(data)))
            _write_anchor(self.path, record.seq, record.hash)
            return record

    @staticmethod
    def _write(handle: Any, record: AuditRecord) -> AuditRecord:
        """Append one line and make it durable before anything else (the anchor) moves."""
        handle.write((canonical_json(record.model_dump()) + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
        return record

    @staticmethod
    def _seal(seq: int, prev: str, kind: str, actor: str, case_id: str | None, data: dict[str, Any]) -> AuditRecord:
        record = AuditRecord(
            seq=seq, ts=iso(utcnow()), kind=kind, actor=actor, case_id=case_id, data=data, prev=prev, hash=""
        )
        record.hash = record.computed_hash()
        return record

    def _head(self, handle: Any) -> tuple[int, str]:
        """Seq and hash of the last record, after checking it against the anchor (lock held).

        A torn final line (a crash mid-append, never anchored) is cut off and the cut is itself
        recorded; any other disagreement with the anchor means truncation or tampering: refuse.
        """
        last_line, torn = _tail(handle)
        anchor = _read_anchor(self.path)
        if last_line:
            try:
                last = _parse_record(last_line)
            except ValueError as exc:
                raise AuditError(
                    f"last line of audit log {self.path} is not a valid record ({exc}); run `siemcrew audit verify`"
                ) from None
            seq, digest = last.seq, last.hash
        else:
            last, seq, digest = None, 0, GENESIS
        anchored = (anchor["seq"], anchor["hash"]) if anchor is not None else (0, GENESIS)
        # An append that crashed after its fsync but before moving the anchor leaves it one behind.
        interrupted = last is not None and anchored == (seq - 1, last.prev)
        if anchored != (seq, digest) and not interrupted:
            raise AuditError(
                f"audit log {self.path} does not end at its head anchor (seq {anchored[0]}): "
                "truncated or tampered; run `siemcrew audit verify`"
            )
        if torn:
            handle.truncate(handle.seek(0, os.SEEK_END) - len(torn))
            note = self._seal(
                seq + 1,
                digest,
                "audit",
                "siemcrew.audit",
                None,
                {
                    "recovered": "torn final line from an interrupted append",
                    "bytes": len(torn),
                    "sha256": hashlib.sha256(torn).hexdigest(),
                },
            )
            self._write(handle, note)
            seq, digest = note.seq, note.hash
        return seq, digest

    def verify(self) -> VerifyResult:
        return verify(self.path)

    def read(self, case_id: str | None = None, kind: str | None = None) -> Iterator[AuditRecord]:
        return read(self.path, case_id=case_id, kind=kind)


def verify(path: Path | str) -> VerifyResult:
    """Walk the chain and name the first record that is not proven intact.

    A record is proven when its own hash matches its content, its seq is the next one, and the
    record after it links to it (or, for the last one, the head anchor names it). So an edited
    record whose hash was recomputed is named by the broken link that follows it.
    """
    path = Path(path)
    try:
        anchor = _read_anchor(path)
    except AuditError as exc:
        return VerifyResult(ok=False, records=0, first_bad=None, reason=str(exc))
    if not path.exists():
        if anchor is not None and anchor["seq"] > 0:
            return VerifyResult(
                ok=False, records=0, first_bad=1, reason="audit log is missing but its head anchor exists"
            )
        return VerifyResult(ok=True, records=0, reason="empty log")
    count = 0
    previous: AuditRecord | None = None
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw[:-1] if raw.endswith(b"\n") else raw
            try:
                record = _parse_record(line)
            except ValueError as exc:
                return _bad(count, number, f"line {number} is not a valid audit record: {exc}")
            if record.hash != record.computed_hash():
                return _bad(count, number, f"record {number}: content does not match its hash (modified)")
            if record.seq > number:
                return _bad(
                    count, number, f"line {number} holds seq {record.seq}: record {number} is missing or out of order"
                )
            if previous is not None and record.hash == previous.hash:
                return _bad(count, number, f"line {number} repeats record {previous.seq}")
            if record.seq < number:
                return _bad(
                    count,
                    number - 1,
                    f"line {number} holds seq {record.seq}: record {number - 1} was inserted or lines were reordered",
                )
            expected_prev = previous.hash if previous is not None else GENESIS
            if record.prev != expected_prev:
                return _bad(
                    count,
                    number - 1,
                    f"record {number} does not link to record {number - 1}: "
                    f"record {number - 1} was altered (hash recomputed) or replaced",
                )
            previous = record
            count += 1
    last_seq, last_hash = (previous.seq, previous.hash) if previous else (0, GENESIS)
    if anchor is None:
        if count:
            return _bad(count, None, "head anchor file is missing: truncation at the end cannot be ruled out")
        return VerifyResult(ok=True, records=0, reason="empty log")
    if anchor["seq"] > last_seq:
        return _bad(
            count, last_seq + 1, f"log ends at seq {last_seq} but its head anchor names seq {anchor['seq']}: truncated"
        )
    if anchor["seq"] < last_seq:
        return _bad(
            count,
            anchor["seq"] + 1,
            f"records after seq {anchor['seq']} were appended without moving the head anchor "
            "(an interrupted append, or forged)",
        )
    if anchor["hash"] != last_hash:
        return _bad(count, last_seq, f"record {last_seq} does not match the head anchor: altered (hash recomputed)")
    return VerifyResult(ok=True, records=count, reason=f"{count} records intact")


def _bad(records: int, first_bad: int | None, reason: str) -> VerifyResult:
    return VerifyResult(ok=False, records=records, first_bad=first_bad, reason=reason)


def read(path: Path | str, case_id: str | None = None, kind: str | None = None) -> Iterator[AuditRecord]:
    """Records in order, optionally only one case's or one kind's; a damaged line raises AuditError."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.rstrip(b"\n")
            try:
                record = _parse_record(line)
            except ValueError as exc:
                raise AuditError(f"{path}: line {number} is not a valid audit record: {exc}") from None
            if (case_id is None or record.case_id == case_id) and (kind is None or record.kind == kind):
                yield record
