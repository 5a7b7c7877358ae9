"""A real `redis-server` for the session, on a free loopback port in a temporary folder.

It runs with a password (`requirepass`), so every queue test also proves that the broker password
travels from the environment into Celery and redis-py, and never into a log. Nothing is persisted
(`--save ''`, no AOF). Missing `redis-server` fails the tests that need it, loudly (CI installs it,
see .ci/run); locally `SIEMCREW_TEST_NO_REDIS=1` skips them on purpose (never in CI, where CI=true).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

PASSWORD_ENV = "SIEMCREW_QUEUE_PASSWORD"


@dataclass
class RedisServer:
    port: int
    password: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The broker URL as a config holds it: no password (that comes from PASSWORD_ENV)."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def env(self) -> dict[str, str]:
        return {PASSWORD_ENV: self.password}

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(executable: str, folder: Path) -> RedisServer:
    password = secrets.token_hex(16)
    for _ in range(3):  # a port taken between choosing and binding: choose again
        port = _free_port()
        log = folder / f"redis-{port}.log"
        process = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
             "--appendonly", "no", "--requirepass", password, "--daemonize", "no", "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server = RedisServer(port, password, folder, process)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if server.client().ping():
                    return server
            except Exception:  # noqa: BLE001 - not listening yet
                time.sleep(0.05)
        process.kill()
        process.wait(timeout=5)
    tail = log.read_text(encoding="utf-8", errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"redis-server did not start:\n{tail}")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if os.environ.get("SIEMCREW_TEST_NO_REDIS") == "1" and os.environ.get("CI") != "true":
        pytest.skip("SIEMCREW_TEST_NO_REDIS=1: the task queue tests are skipped on request")
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.fail("redis-server is not installed: `apt-get install -y redis-server` (CI does it in .ci/run); "
                    "set SIEMCREW_TEST_NO_REDIS=1 to skip these tests on purpose", pytrace=False)
    server = _start(executable, tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)
