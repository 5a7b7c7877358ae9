"""Package the Splunk app source (`app/siemcrew/`) into `siemcrew-<version>.tgz` for installation.

The archive has one top-level `siemcrew/` directory, no bytecode or other build leftovers, no
`local/` settings, normalised owners and permissions (dirs and scripts 0755, files 0644) and a
fixed mtime, so the same source always packs to the same bytes. The version is written into
`default/app.conf` (`[id]` and `[launcher]`), which is what Splunk and AppInspect read.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from pathlib import Path

from siemcrew import __version__

APP_NAME = "siemcrew"
APP_SOURCE = Path(__file__).resolve().parent / "app" / APP_NAME
EXCLUDED_DIRS = {"__pycache__", "local", ".git", ".pytest_cache"}
EXCLUDED_SUFFIXES = {".pyc", ".pyo", ".so", ".dll", ".dylib", ".exe", ".swp"}
EXCLUDED_NAMES = {".DS_Store", "local.meta", "Thumbs.db"}
FIXED_MTIME = 1_700_000_000
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _included(path: Path) -> bool:
    relative = path.relative_to(APP_SOURCE)
    return (
        not any(part in EXCLUDED_DIRS for part in relative.parts)
        and path.suffix not in EXCLUDED_SUFFIXES
        and path.name not in EXCLUDED_NAMES
    )


def _with_version(app_conf: str, version: str) -> str:
    """Set `version = ...` in the [id] and [launcher] stanzas."""
    out: list[str] = []
    stanza = ""
    for line in app_conf.splitlines():
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            stanza = header.group(1)
        elif stanza in ("id", "launcher") and re.match(r"^\s*version\s*=", line):
            line = f"version = {version}"
        out.append(line)
    return "\n".join(out) + "\n"


def _info(name: str, mode: int, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = mode
    info.size = size
    info.mtime = FIXED_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def build_app(out_dir: Path, version: str | None = None) -> Path:
    """Write `<out_dir>/siemcrew-<version>.tgz` and return its path."""
    version = version or __version__
    if not _VERSION.match(version):
        raise ValueError(f"app version must be MAJOR.MINOR.PATCH (AppInspect requires it), got {version!r}")
    if not (APP_SOURCE / "default" / "app.conf").is_file():
        raise FileNotFoundError(f"Splunk app source not found at {APP_SOURCE}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{APP_NAME}-{version}.tgz"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info(APP_NAME, 0o755, directory=True))
        for path in sorted(p for p in APP_SOURCE.rglob("*") if _included(p)):
            name = f"{APP_NAME}/{path.relative_to(APP_SOURCE).as_posix()}"
            if path.is_dir():
                tar.addfile(_info(name, 0o755, directory=True))
                continue
            data = path.read_bytes()
            if name == f"{APP_NAME}/default/app.conf":
                data = _with_version(data.decode("utf-8"), version).encode("utf-8")
            mode = 0o755 if path.parent.name == "bin" and path.suffix == ".py" else 0o644
            tar.addfile(_info(name, mode, len(data)), io.BytesIO(data))
    with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=FIXED_MTIME) as gz:
        gz.write(buffer.getvalue())
    return target
