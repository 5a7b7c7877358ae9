"""A real PostgreSQL server for the tests (no emulator): `initdb` in a temporary folder, `postgres` on a free
loopback port with its socket folder inside, one fresh database per test, stopped at the end of the session.

PostgreSQL refuses to run as root: when the tests do, the server runs as the `postgres` user (else `nobody`)
through `setpriv`, in a folder owned by that user. Missing server binaries fail the PostgreSQL tests loudly;
`SIEMCREW_TEST_NO_POSTGRES=1` (set explicitly, for a laptop without PostgreSQL) skips them instead.

Fixtures: `postgres` (the server, session), `pg_url` (a fresh database's URL), and `state_db`, which runs a
test once on the embedded SQLite files and once on PostgreSQL.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

APP_ROLE = "siemcrew"
PASSWORD_ROLE = "siemcrew_pw"
"""A role that must give a password (scram-sha-256) over TCP; every other role is trusted on loopback."""
PASSWORD = "pw-for-the-test-server-only"
SKIP_ENV = "SIEMCREW_TEST_NO_POSTGRES"


def _bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = _free_port()
        self.as_user = None
        if os.geteuid() == 0:
            names = [entry.pw_name for entry in pwd.getpwall()]
            self.as_user = pwd.getpwnam("postgres" if "postgres" in names else "nobody")
        self.root = Path(tempfile.mkdtemp(prefix="siemcrew-pg-", dir="/tmp" if self.as_user else None))
        if self.as_user:
            os.chown(self.root, self.as_user.pw_uid, self.as_user.pw_gid)
        self.data = self.root / "data"
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)

    def _command(self, *args: str) -> list[str]:
        if self.as_user is None:
            return list(args)
        return ["setpriv", f"--reuid={self.as_user.pw_uid}", f"--regid={self.as_user.pw_gid}", "--clear-groups",
                "--reset-env", *args]

    def start(self) -> None:
        subprocess.run(self._command(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8", "--locale=C", "-N"),
                       check=True, capture_output=True, timeout=120)
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {PASSWORD_ROLE} 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n", encoding="utf-8")
        for attempt in range(3):  # a port taken between choosing and binding (parallel test runs): choose again
            if attempt:
                self.port = _free_port()
            if self._listen():
                break
        else:
            raise RuntimeError("PostgreSQL did not start: "
                               + (self.root / "server.log").read_text(errors="replace")[-2000:])
        self.admin(f"CREATE ROLE {APP_ROLE} LOGIN")
        self.admin(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{PASSWORD}'")

    def _listen(self) -> bool:
        """Start the server on self.port; False when it exited (e.g. the port was taken)."""
        log = open(self.root / "server.log", "wb")
        self.process = subprocess.Popen(self._command(
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=300", "-c", "shared_buffers=64MB",
        ), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.admin("SELECT 1")
                return True
            except Exception:  # noqa: BLE001 - not up yet
                if self.process.poll() is not None:
                    return False
                if time.monotonic() > deadline:
                    self.process.kill()
                    self.process.wait(timeout=10)
                    return False
                time.sleep(0.1)

    def admin(self, sql: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement as the superuser (autocommit)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=dbname, autocommit=True,
                             connect_timeout=5) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def create_database(self, owner: str = APP_ROLE) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} OWNER {owner}")
        return name

    def url(self, dbname: str, user: str = APP_ROLE) -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the PostgreSQL tests are skipped on request")
    bindir = _bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries (initdb, postgres) are not installed: install `postgresql` "
                    f"(.ci/run does), or set {SKIP_ENV}=1 to skip these tests on purpose", pytrace=False)
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh, empty database owned by the application role; its pooled connections closed after the test."""
    from siemcrew.crew.database import dispose_all

    yield postgres.url(postgres.create_database())
    dispose_all()


class StateDb:
    """One engine under test: SQLite files in a folder, or a fresh PostgreSQL database."""

    def __init__(self, name: str, folder: Path, url: str | None) -> None:
        self.name = name
        self.folder = folder
        self.url = url

    def target(self, store: str) -> str:
        """What a store's constructor takes: its SQLite file, or the URL (picklable, for child processes)."""
        from siemcrew.crew.storage import FILES

        return self.url or str(self.folder / FILES.get(store, f"{store}.db"))

    def database(self, store: str) -> object:
        from siemcrew.crew.database import Database

        return Database.of(self.target(store), store)

    def storage(self, home: Path | None = None) -> object:
        from sqlalchemy.engine import make_url

        from siemcrew.crew.storage import Storage

        return Storage(home or self.folder, make_url(self.url) if self.url else None)

    def config(self) -> str:
        """The settings line that selects this engine ('' for the embedded default)."""
        return f"database: {self.url}\n" if self.url else ""


@pytest.fixture(params=["sqlite", "postgresql"])
def state_db(request: pytest.FixtureRequest, tmp_path: Path) -> StateDb:
    """Runs the test on both engines."""
    if request.param == "sqlite":
        return StateDb("sqlite", tmp_path, None)
    return StateDb("postgresql", tmp_path, request.getfixturevalue("pg_url"))
