"""Read event files: NDJSON / JSON array / single JSON object, zip archives and directories of them.

The loader only turns bytes into JSON objects, each with a stable id (sha1 of its raw line, or
of its canonical JSON when it came from an array). Deciding whether an object is an event is the
normalizer's job; storing it is the store's. Anything unreadable is reported, never raised.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

try:
    import orjson

    _loads = orjson.loads
    _JSONError: tuple[type[Exception], ...] = (orjson.JSONDecodeError, ValueError)

    def _canonical(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=str)

except ImportError:  # pragma: no cover - orjson ships with crewai
    import json

    _loads = json.loads
    _JSONError = (ValueError,)

    def _canonical(obj: Any) -> bytes:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")


log = logging.getLogger(__name__)

# What an archive may unpack to, its members and nested archives together: real recordings unpack to
# ~120 MB, a zip bomb (1 MB holding a 1 GiB member) is refused before it is read into memory. Members are
# read through a bounded stream, so a header that lies about its size does not get past it.
MAX_ARCHIVE_BYTES = 256 * 1024**2
# Recording folders carry metadata and docs beside the events; a directory walk passes over these
# quietly. Every other file is read and, if it is not event JSON, reported as skipped.
IGNORED_IN_FOLDERS = frozenset([".yaml", ".yml", ".md", ".rst", ".csv", ".html", ".pdf", ".png", ".jpg", ".svg"])
_SNIFF_BYTES = 4096


class LoadReport(BaseModel):
    """What a load did: per-file outcome and per-line problems, never an exception."""

    files_loaded: int = 0
    files_skipped: int = 0
    skipped: list[tuple[str, str]] = Field(default_factory=list)
    events: int = 0
    duplicates: int = 0
    bad_lines: int = 0
    seconds: float = 0.0
    warnings: list[tuple[str, str]] = Field(default_factory=list)

    def warn(self, name: str, message: str) -> None:
        log.warning("%s: %s", name, message)
        self.warnings.append((name, message))

    def skip(self, name: str, reason: str) -> None:
        log.warning("skipped %s: %s", name, reason)
        self.files_skipped += 1
        self.skipped.append((name, reason))


@dataclass
class Unit:
    """One file or archive member, decoded into JSON objects with their stable ids."""

    name: str
    objects: list[tuple[str, Any]] = field(default_factory=list)
    bad_lines: int = 0
    error: str | None = None
    first_bad: str | None = None
    warning: str | None = None


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def decode(data: bytes) -> tuple[str | None, str | None]:
    """(text, note) or (None, reason). UTF-16 with a BOM, UTF-8 (BOM optional), else latin-1."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError as exc:
            return None, f"undecodable UTF-16 ({exc.reason})"
    if b"\x00" in data[:_SNIFF_BYTES]:
        return None, "binary content (NUL bytes), not JSON text"
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return data.decode("latin-1"), "not valid UTF-8; decoded as latin-1"


def parse_text(name: str, text: str) -> Unit:
    """A whole JSON document (array or object) if it parses as one, otherwise NDJSON lines."""
    unit = Unit(name=name)
    body = text.strip()
    if not body:
        unit.error = "empty file"
        return unit
    if body[0] in "[{":
        try:
            document = _loads(body)
        except _JSONError:
            document = None
        if isinstance(document, list):
            unit.objects = [(sha1_hex(_canonical(item)), item) for item in document]
            return unit
        if isinstance(document, dict):
            unit.objects = [(sha1_hex(_canonical(document)), document)]
            return unit
    for line in text.split("\n"):
        line = line.strip()
        if not line:
            continue
        try:
            unit.objects.append((sha1_hex(line.encode("utf-8")), _loads(line)))
        except _JSONError as exc:
            unit.bad_lines += 1
            unit.first_bad = unit.first_bad or f"invalid JSON ({str(exc).splitlines()[0][:80]})"
    return unit


def read_bytes(name: str, data: bytes) -> Unit:
    text, note = decode(data)
    if text is None:
        return Unit(name=name, error=note)
    unit = parse_text(name, text)
    unit.warning = note
    return unit


class _Budget:
    """The bytes an archive (with its nested archives) may still unpack to."""

    def __init__(self, limit: int) -> None:
        self.limit, self.left = limit, limit


def _zip_units(name: str, source: Path | io.BytesIO, budget: _Budget) -> Iterator[Unit]:
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Unit(name=name, error=f"not a readable zip archive ({exc})")
        return
    with archive:
        for info in archive.infolist():
            if info.is_dir() or Path(info.filename).name.startswith("."):
                continue
            member = f"{name}:{info.filename}"
            too_big = f"archive unpacks to more than {budget.limit} bytes (local.max_archive_bytes)"
            if info.file_size > budget.left:
                yield Unit(name=member, error=too_big)
                continue
            try:
                with archive.open(info) as handle:
                    data = handle.read(budget.left + 1)
            except (zipfile.BadZipFile, OSError, RuntimeError, EOFError) as exc:
                yield Unit(name=member, error=f"unreadable zip member ({exc})")
                continue
            if len(data) > budget.left:
                yield Unit(name=member, error=too_big)
                continue
            budget.left -= len(data)
            if info.filename.lower().endswith(".zip"):
                yield from _zip_units(member, io.BytesIO(data), budget)
            else:
                yield read_bytes(member, data)


def _file_units(path: Path, max_archive_bytes: int) -> Iterator[Unit]:
    if path.suffix.lower() == ".zip":
        yield from _zip_units(str(path), path, _Budget(max_archive_bytes))
        return
    try:
        data = path.read_bytes()
    except OSError as exc:
        yield Unit(name=str(path), error=f"unreadable file ({exc.strerror or exc})")
        return
    yield read_bytes(str(path), data)


def iter_units(path: Path, max_archive_bytes: int = MAX_ARCHIVE_BYTES) -> Iterator[Unit]:
    """Every file under `path` (a file, a zip or a directory), in name order.

    In directories, hidden files and metadata/docs (`IGNORED_IN_FOLDERS`) are passed over.
    """
    if path.is_dir():
        for child in sorted(path.rglob("*")):
            hidden = any(part.startswith(".") for part in child.relative_to(path).parts)
            if child.is_file() and not hidden and child.suffix.lower() not in IGNORED_IN_FOLDERS:
                yield from _file_units(child, max_archive_bytes)
    elif path.is_file():
        yield from _file_units(path, max_archive_bytes)
    else:
        yield Unit(name=str(path), error="no such file or directory")


def default_scope(path: Path) -> str:
    """The recording a path belongs to: a folder's name, or a file's stem."""
    return path.name if path.is_dir() else path.stem
