"""The append-only, hash-chained audit log: every tool call, query, decision and action, provably intact.

One JSON object per line. Each record carries the hash of the record before it (`prev`) and its own
hash over its canonical JSON (without `hash`), so editing, deleting, inserting or reordering lines
breaks the chain. A small anchor file (`<log>.head`) holds the seq and hash of the last record, so
cutting records off the END is detected too. Appends are serialized across threads and processes by
an exclusive `flock` on a sidecar `<log>.lock` file.

An append is announced before it is written: the anchor first names the hash of the record about to
be written (`next`), then the line is written and fsync'ed, then the anchor moves onto it. A process
killed in between leaves either nothing or exactly the announced record beyond the anchor (or a torn
part of it). That is how a crash is told from a forgery: a record beyond the anchor that no append
announced was not written by siemcrew, and the log is refused (`siemcrew audit verify` names it). The
next writer never adopts an interrupted append silently: it first appends a `recovery` record naming
where the anchor stood, what was announced, which records it found beyond the anchor (seq, hash, kind,
actor, case), what was never written and any torn bytes it cut off; `verify` checks that the recovery
record describes the records before it. The price is one more anchor write per append.

Keyed chain (optional): with a key (settings `audit.key_env` / `audit.key_file`, kept outside the
home), each record's hash and the anchor are HMAC-SHA256 under it and records say so (`mac`). Then
someone who can write the home but not read the key cannot forge a consistent history, even by
rewriting the whole file and the anchor; `verify` needs the key. Without a key the chain is plain
sha256: it proves the log was not edited in place, not that nobody rewrote all of it. Either way,
ship the log off-host (SIEM, WORM storage) as it is written for a copy the host cannot change.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import math
import os
import re
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from siemcrew.crew.faults import fault_point
from siemcrew.crew.models import Model, canonical_json, sha256_of
from siemcrew.crew.timeutil import iso, utcnow

GENESIS = "0" * 64
MAC_ALG = "hmac-sha256"
RECOVERY_ACTOR = "siemcrew.audit"
REDACTED = "[redacted]"
MAX_STRING_CHARS = 4096
MAX_LIST_ITEMS = 50
LIST_HEAD_ITEMS = 5
MAX_DATA_BYTES = 64 * 1024
_RECENT = 16  # records kept in view while verifying (a recovery names at most a few before it)

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


def _digest(body: dict[str, Any], key: bytes | None) -> str:
    """sha256 of the canonical JSON, or its HMAC-SHA256 under `key`."""
    data = canonical_json(body).encode("utf-8")
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hmac.new(key, data, hashlib.sha256).hexdigest()


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
    mac: str | None = None
    """`hmac-sha256` when `hash` is keyed; absent (plain sha256) otherwise."""

    def body(self) -> dict[str, Any]:
        """The record without its hash: what the hash is taken over (`mac` only when keyed, so plain
        records read and hash exactly as before keyed chains existed)."""
        body = self.model_dump(exclude={"hash"})
        if body["mac"] is None:
            del body["mac"]
        return body

    def line(self) -> str:
        return canonical_json({**self.body(), "hash": self.hash})

    def computed_hash(self, key: bytes | None = None) -> str:
        return _digest(self.body(), key if self.mac else None)

    def problem(self, key: bytes | None) -> str | None:
        """Why this record's hash does not prove its content (None when it does)."""
        if self.mac is not None and self.mac != MAC_ALG:
            return f"unknown hash algorithm {self.mac[:40]!r}"
        if self.mac is not None and key is None:
            return "is keyed (HMAC): verifying it needs the audit key (settings audit.key_env / audit.key_file)"
        if not hmac.compare_digest(self.hash, self.computed_hash(key)):
            if self.mac is not None:
                return "content does not match its keyed hash (modified, or another audit key)"
            return "content does not match its hash (modified)"
        return None

    def summary(self) -> dict[str, Any]:
        """What a recovery record says about a record it found."""
        return {"seq": self.seq, "hash": self.hash, "kind": self.kind, "actor": self.actor, "case_id": self.case_id}


class Anchor(Model):
    """The `<log>.head` file: the last record (`seq`, `hash`) and the records an append announced
    before writing them (`next`), HMAC'ed (`mac`) when the chain is keyed."""

    seq: int
    hash: str
    next: list[str] = Field(default_factory=list)
    mac: str | None = None

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"seq": self.seq, "hash": self.hash}
        if self.next:
            body["next"] = self.next
        return body

    def sealed(self, key: bytes | None) -> "Anchor":
        return self.model_copy(update={"mac": _digest(self.body(), key) if key is not None else None})

    def problem(self, key: bytes | None, keyed_chain: bool) -> str | None:
        """Why this anchor cannot be trusted: keyed without the key, a bad HMAC, or a plain anchor on a
        chain that must be keyed (`keyed_chain`)."""
        if self.mac is None:
            return "the head anchor is not keyed although the chain is: rewritten without the key" if keyed_chain else None
        if key is None:
            return "the head anchor is keyed (HMAC): this needs the audit key (settings audit.key_env / audit.key_file)"
        if not hmac.compare_digest(self.mac, _digest(self.body(), key)):
            return "the head anchor does not match the audit key: altered, or another key"
        return None


class VerifyResult(Model):
    """Outcome of `verify`: `first_bad` is the seq (= line number) of the first record not proven intact.

    `notes` name states that are not tampering but deserve a look (an interrupted append awaiting its
    recovery record; in a full check, logged approvals that never reached the store)."""

    ok: bool
    records: int
    first_bad: int | None = None
    reason: str
    notes: list[str] = Field(default_factory=list)
    mismatches: list[str] = Field(default_factory=list)


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


def bounded(data: dict[str, Any]) -> dict[str, Any]:
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


def _read_anchor(path: Path) -> Anchor | None:
    anchor = _sidecar(path, ".head")
    try:
        text = anchor.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"audit head anchor {anchor} is unreadable: {exc}") from None
    return parse_anchor(text, str(anchor))


def parse_anchor(text: str, where: str) -> Anchor:
    """An anchor as stored (its canonical JSON); AuditError naming `where` when it is not one."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise AuditError(f"audit head anchor {where} is unreadable: {exc}") from None
    try:
        return Anchor.model_validate(value, strict=True)
    except ValidationError:
        raise AuditError(f"audit head anchor {where} is malformed") from None


def anchor_text(anchor: Anchor, key: bytes | None) -> str:
    """The anchor as stored: canonical JSON, HMAC'ed under `key` when there is one."""
    sealed = anchor.sealed(key)
    return canonical_json(sealed.body() | ({"mac": sealed.mac} if sealed.mac else {}))


def _write_anchor(path: Path, anchor: Anchor, key: bytes | None) -> None:
    """Replace the anchor atomically (write a temp file, fsync, rename, fsync the directory)."""
    body = anchor_text(anchor, key)
    target = _sidecar(path, ".head")
    tmp = _sidecar(path, f".head.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(body)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_record(line: bytes) -> AuditRecord:
    """Parse one line; raises ValueError on anything that is not a well-formed record."""
    try:
        value = json.loads(line.decode("utf-8"))
        return AuditRecord.model_validate(value, strict=True)
    except (UnicodeDecodeError, ValueError, ValidationError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def _tail(handle: Any, count: int) -> tuple[list[bytes], bytes, bool]:
    """The last `count` complete lines, the bytes after the last newline, and whether those lines
    are the whole file; read backwards from the end.

    The second part is non-empty only when an append was torn (the file does not end in a newline).
    """
    pos = handle.seek(0, os.SEEK_END)
    data = b""
    while pos > 0 and data.count(b"\n") < count + 1:
        step = min(65536, pos)
        pos -= step
        handle.seek(pos)
        data = handle.read(step) + data
    cut = data.rfind(b"\n")
    if cut < 0:
        return [], data, pos == 0
    parts = data[:cut].split(b"\n")
    if pos > 0:
        parts = parts[1:]  # its beginning was not read
    return parts[-count:] if count else [], data[cut + 1 :], pos == 0 and len(parts) <= count


def seal(seq: int, prev: str, kind: str, actor: str, case_id: str | None, data: dict[str, Any],
         key: bytes | None) -> AuditRecord:
    """The record that follows (seq - 1, prev), hashed (HMAC'ed under `key`): what every storage appends."""
    record = AuditRecord(seq=seq, ts=iso(utcnow()), kind=kind, actor=actor, case_id=case_id, data=data,
                         prev=prev, hash="", mac=MAC_ALG if key is not None else None)
    record.hash = record.computed_hash(key)
    return record


def _links(records: list[AuditRecord], seq: int, digest: str) -> bool:
    """Do `records` continue the chain from (seq, digest), one after the other?"""
    for record in records:
        if record.seq != seq + 1 or record.prev != digest:
            return False
        seq, digest = record.seq, record.hash
    return True


class AuditLog:
    """Append records to one log file; safe across threads and processes.

    `key` keys the chain (HMAC-SHA256); without it records are plain sha256, and a keyed log is refused.
    """

    def __init__(self, path: Path | str, key: bytes | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.key = key
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
            anchor = self._head(handle)
            record = seal(anchor.seq + 1, anchor.hash, kind, actor, case_id, bounded(data), self.key)
            return self._commit(handle, anchor, record)

    def _commit(self, handle: Any, anchor: Anchor, record: AuditRecord, found: list[str] | None = None,
                torn: int = 0) -> AuditRecord:
        """Announce the record in the anchor, write it durably, then move the anchor onto it.

        For a recovery record, `found` are the records an interrupted append left beyond the anchor and
        `torn` the bytes it left after them: the anchor stays where it was, with the found records still
        announced before the recovery record, until the recovery record is written - so a crash while
        recovering leaves them to the next recovery, never adopted without one."""
        _write_anchor(self.path, Anchor(seq=anchor.seq, hash=anchor.hash, next=[*(found or []), record.hash]), self.key)
        fault_point("audit:after_intent")
        if torn:
            handle.truncate(handle.seek(0, os.SEEK_END) - torn)
        handle.write((record.line() + "\n").encode("utf-8"))
        handle.flush()
        os.fsync(handle.fileno())
        fault_point("audit:after_record")
        _write_anchor(self.path, Anchor(seq=record.seq, hash=record.hash), self.key)
        return record

    def _refuse(self, why: str) -> AuditError:
        return AuditError(f"audit log {self.path}: {why}; run `siemcrew audit verify`")

    def _head(self, handle: Any) -> Anchor:
        """The anchor to append after, once the end of the log is proven to be where it says (lock held).

        What an interrupted append left beyond the anchor - the records it announced, a torn part of
        the next one - is recorded in a `recovery` record first. Anything else beyond the anchor, or
        an end that does not reach it, is tampering or truncation: refused.
        """
        anchor = _read_anchor(self.path)
        lines, torn, whole = _tail(handle, len(anchor.next) + 1 if anchor is not None else 1)
        if anchor is None:
            if lines or torn:
                raise self._refuse("the head anchor file is missing")
            return Anchor(seq=0, hash=GENESIS)
        records: list[AuditRecord] = []
        for line in lines:
            try:
                records.append(parse_record(line))
            except ValueError as exc:
                raise self._refuse(f"a line near the end is not a valid record ({exc})") from None
        if anchor.seq == 0:
            start = 0 if whole and anchor.hash == GENESIS else None
        else:
            start = next((i + 1 for i, r in enumerate(records) if r.seq == anchor.seq and r.hash == anchor.hash), None)
        if start is None:
            raise self._refuse(f"it does not end at its head anchor (seq {anchor.seq}): truncated, tampered, "
                               "or records were appended that no append announced")
        anchored, beyond = records[:start], records[start:]
        keyed_chain = any(r.mac for r in records)
        if self.key is None and keyed_chain:
            raise self._refuse("the chain is keyed (HMAC) and this process has no audit key")
        problem = anchor.problem(self.key, keyed_chain=bool(anchored and anchored[-1].mac))
        problem = problem or next((f"record {r.seq} {p}" for r in beyond if (p := r.problem(self.key))), None)
        if problem:
            raise self._refuse(problem)
        announced = anchor.next[: len(beyond)] == [r.hash for r in beyond] and _links(beyond, anchor.seq, anchor.hash)
        if not announced or (torn and len(beyond) >= len(anchor.next)):
            raise self._refuse(f"records or bytes after seq {anchor.seq} were appended without moving the head "
                               "anchor and were not announced by an interrupted append: not written by siemcrew")
        if not (beyond or torn or anchor.next):
            return anchor
        return self._recover(handle, anchor, beyond, torn)

    def _recover(self, handle: Any, anchor: Anchor, beyond: list[AuditRecord], torn: bytes) -> Anchor:
        """Record what an interrupted append left, cut off its torn bytes, and continue after it."""
        last = beyond[-1] if beyond else None
        data = {
            "anchor": {"seq": anchor.seq, "hash": anchor.hash},
            "intent": anchor.next,
            "found": [r.summary() for r in beyond],
            "missing": len(anchor.next) - len(beyond),
            "torn": {"bytes": len(torn), "sha256": hashlib.sha256(torn).hexdigest()} if torn else None,
        }
        seq, digest = (last.seq, last.hash) if last else (anchor.seq, anchor.hash)
        note = seal(seq + 1, digest, "recovery", RECOVERY_ACTOR, None, data, self.key)
        self._commit(handle, anchor, note, found=[r.hash for r in beyond], torn=len(torn))
        return Anchor(seq=note.seq, hash=note.hash)

    def verify(self) -> VerifyResult:
        return verify(self.path, key=self.key)

    def read(self, case_id: str | None = None, kind: str | None = None) -> Iterator[AuditRecord]:
        return read(self.path, case_id=case_id, kind=kind)


def _recovery_problem(record: AuditRecord, recent: deque[AuditRecord]) -> str | None:
    """Does a recovery record truthfully describe the records just before it (the anchor it names,
    the records it found beyond it, announced in that order)?"""
    data = record.data
    try:
        found = [dict(item) for item in data["found"]]
        intent = [str(item) for item in data["intent"]]
        anchor_seq, anchor_hash = int(data["anchor"]["seq"]), str(data["anchor"]["hash"])
        missing = int(data["missing"])
    except (KeyError, TypeError, ValueError):
        return "is not a well-formed recovery record"
    before = {r.seq: r for r in recent}
    described = [before[s].summary() if s in before else None for s in range(anchor_seq + 1, record.seq)]
    anchored = GENESIS if anchor_seq == 0 else (before[anchor_seq].hash if anchor_seq in before else None)
    if anchored != anchor_hash or described != found:
        return "does not describe the records before it (where the anchor stood, what was beyond it)"
    if [f["hash"] for f in found] != intent[: len(found)] or missing != len(intent) - len(found):
        return "names records that the interrupted append had not announced"
    return None


class ChainCheck:
    """Walks a chain record by record, whatever holds it (a file, a table): `add` each stored record in
    order, then `end` judges where the chain stops against its head anchor.

    A record is proven when its own hash (HMAC under `key` for keyed records) matches its content,
    its seq is the next one, and the record after it links to it (or, for the last one, the head
    anchor names it). So an edited record whose hash was recomputed is named by the broken link that
    follows it. Records beyond the anchor are accepted only as the announced records of an interrupted
    append (a note says so); a `recovery` record must describe what it recovered.
    """

    def __init__(self, key: bytes | None) -> None:
        self.key = key
        self.count = 0
        self.last: AuditRecord | None = None
        self.recent: deque[AuditRecord] = deque(maxlen=_RECENT)
        self.keyed = False

    def add(self, number: int, raw: bytes) -> VerifyResult | None:
        """Check the `number`-th stored record (its canonical line, without the newline); a failed result
        names the first record not proven, None means go on."""
        count = self.count
        try:
            record = parse_record(raw)
        except ValueError as exc:
            return _bad(count, number, f"line {number} is not a valid audit record: {exc}")
        problem = record.problem(self.key)
        if problem:
            return _bad(count, number, f"record {number} {problem}")
        if self.keyed and record.mac is None:
            return _bad(count, number, f"record {number} is not keyed although records before it are: "
                                       "written without the key")
        if record.seq > number:
            return _bad(count, number, f"line {number} holds seq {record.seq}: record {number} is missing or out of order")
        previous = self.last
        if previous is not None and record.hash == previous.hash:
            return _bad(count, number, f"line {number} repeats record {previous.seq}")
        if record.seq < number:
            return _bad(count, number - 1,
                        f"line {number} holds seq {record.seq}: record {number - 1} was inserted or lines were reordered")
        expected_prev = previous.hash if previous is not None else GENESIS
        if record.prev != expected_prev:
            return _bad(count, number - 1, f"record {number} does not link to record {number - 1}: "
                                           f"record {number - 1} was altered (hash recomputed) or replaced")
        if record.kind == "recovery" and record.actor == RECOVERY_ACTOR:
            problem = _recovery_problem(record, self.recent)
            if problem:
                return _bad(count, number, f"recovery record {number} {problem}")
        self.keyed = self.keyed or record.mac is not None
        self.last = record
        self.recent.append(record)
        self.count += 1
        return None

    def end(self, anchor: Anchor | None, torn: bytes = b"") -> VerifyResult:
        return _judge_end(self.count, self.last, self.recent, torn, anchor, self.key, self.keyed)


def verify(path: Path | str, key: bytes | None = None) -> VerifyResult:
    """Walk the log file's chain (`ChainCheck`) and name the first record that is not proven intact."""
    path = Path(path)
    try:
        anchor = _read_anchor(path)
    except AuditError as exc:
        return VerifyResult(ok=False, records=0, first_bad=None, reason=str(exc))
    if not path.exists():
        if anchor is not None and anchor.seq > 0:
            return VerifyResult(
                ok=False, records=0, first_bad=1, reason="audit log is missing but its head anchor exists"
            )
        return VerifyResult(ok=True, records=0, reason="empty log")
    check = ChainCheck(key)
    torn = b""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                torn = raw  # a final line without its newline: an append was cut short (judged below)
                break
            failed = check.add(number, raw[:-1])
            if failed is not None:
                return failed
    return check.end(anchor, torn)


def _judge_end(count: int, last: AuditRecord | None, recent: deque[AuditRecord], torn: bytes,
               anchor: Anchor | None, key: bytes | None, keyed: bool) -> VerifyResult:
    """Does the log end where its anchor says, give or take what an interrupted append announced?"""
    last_seq, last_hash = (last.seq, last.hash) if last else (0, GENESIS)
    if anchor is None:
        if count or torn:
            return _bad(count, None, "head anchor file is missing: truncation at the end cannot be ruled out")
        return VerifyResult(ok=True, records=0, reason="empty log")
    problem = anchor.problem(key, keyed_chain=keyed or (key is not None and count > 0))
    if problem:
        return _bad(count, None, problem + (" (or nothing was appended since the key was set)"
                                            if key is not None and not keyed else ""))
    if anchor.seq > last_seq:
        return _bad(
            count, last_seq + 1, f"log ends at seq {last_seq} but its head anchor names seq {anchor.seq}: truncated"
        )
    by_seq = {r.seq: r for r in recent}
    anchored = GENESIS if anchor.seq == 0 else (by_seq[anchor.seq].hash if anchor.seq in by_seq else None)
    beyond = [by_seq[s].hash if s in by_seq else "" for s in range(anchor.seq + 1, last_seq + 1)]
    if anchor.seq == last_seq and anchor.hash != last_hash:
        return _bad(count, last_seq, f"record {last_seq} does not match the head anchor: altered (hash recomputed)")
    if anchored != anchor.hash or anchor.next[: len(beyond)] != beyond:
        announced = 0
        while (anchored == anchor.hash and announced < min(len(beyond), len(anchor.next))
               and beyond[announced] == anchor.next[announced]):
            announced += 1
        return _bad(
            count,
            anchor.seq + 1 + announced,
            f"records after seq {anchor.seq + announced} were appended without moving the head anchor and were not "
            "announced by an interrupted append: not written by siemcrew (forged)",
        )
    if torn and len(beyond) >= len(anchor.next):
        return _bad(count, count + 1, f"line {count + 1} is not a valid audit record: bytes without a newline "
                                      "that no append announced")
    notes = []
    if beyond:
        notes.append(f"record(s) {anchor.seq + 1}-{last_seq} were written by an append interrupted before its "
                     "anchor moved (announced in the anchor); the next append records their recovery")
    elif torn:
        notes.append(f"{len(torn)} torn byte(s) at the end are what an interrupted append left; the next append "
                     "cuts them off and records it")
    elif anchor.next:
        notes.append("an append was interrupted before its record was written; the next append records it")
    return VerifyResult(ok=True, records=count, reason=f"{count} records intact", notes=notes)


def _bad(records: int, first_bad: int | None, reason: str) -> VerifyResult:
    return VerifyResult(ok=False, records=records, first_bad=first_bad, reason=reason)


def read(path: Path | str, case_id: str | None = None, kind: str | None = None) -> Iterator[AuditRecord]:
    """Records in order, optionally only one case's or one kind's; a damaged line raises AuditError.

    A torn final line (an interrupted append; see `verify`) is not a record and is skipped."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                return
            try:
                record = parse_record(raw[:-1])
            except ValueError as exc:
                raise AuditError(f"{path}: line {number} is not a valid audit record: {exc}") from None
            if (case_id is None or record.case_id == case_id) and (kind is None or record.kind == kind):
                yield record
