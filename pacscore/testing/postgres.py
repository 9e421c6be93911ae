"""A real PostgreSQL server for tests, and a fresh database for each test.

``postgres_server`` (session) starts PostgreSQL (``initdb`` + ``postgres`` of
:data:`PG_BIN`, as the ``postgres`` user when the tests run as root: ``initdb`` refuses
root) in a private temp directory on a free loopback port, its socket in that
directory, and stops it at the end of the session even when tests failed.  With
``PACSCORE_PG_DSN`` set, that server is used instead (its user must be allowed to
create databases).  Without PostgreSQL binaries the tests that need it skip, saying
why.  ``postgres_dsn`` is a new, empty database per test, dropped afterwards.

Use from a test module or a conftest::

    from pacscore.testing.postgres import postgres_dsn, postgres_server  # noqa: F401

The server runs without fsync (``fsync=off``, ``synchronous_commit=off``): fast and
still transactional, but not crash-safe; benchmarks of commit latency need a real one
(``PACSCORE_PG_DSN``).  Needs pytest and psycopg (the ``test`` extra).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["PG_BIN", "PostgresServer", "postgres_dsn", "postgres_server", "start_postgres"]

PG_BIN = Path(os.environ.get("PACSCORE_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Where ``initdb`` and ``postgres`` are (``PACSCORE_PG_BIN`` overrides)."""
_names = itertools.count(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PostgresServer:
    """A server tests may create databases on."""

    dsn: str
    """Connection string of its maintenance database."""
    process: subprocess.Popen[bytes] | None = None
    """The postmaster, when this module started it."""
    directory: Path | None = None
    """Its temp directory (data, socket, log), removed by :meth:`stop`."""
    port: int = 0
    """Its port (0: not started here)."""
    log: Path | None = field(default=None)
    """Its log file."""
    watchdog: subprocess.Popen[bytes] | None = None
    """A process that stops the server and removes its directory when this one dies
    without doing it (killed: no fixture finaliser runs)."""
    launch: Callable[[], subprocess.Popen[bytes]] | None = field(default=None, repr=False)
    """Starts the postmaster on its data and port (:meth:`restart`)."""

    def dsn_of(self, database: str) -> str:
        """The connection string of ``database`` on this server."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo(self.dsn, dbname=database)

    def create_database(self) -> str:
        """A new empty database; its name."""
        import psycopg

        name = f"pacscore_test_{os.getpid()}_{next(_names)}"
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0'.encode())
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name`` (closing whatever is still connected to it)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'.encode())

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server this module started (fast shutdown, then SIGKILL) and remove
        its directory; nothing for a server given by ``PACSCORE_PG_DSN``."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
            self.process = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None
        if self.watchdog is not None:
            self.watchdog.stdin.close()  # type: ignore[union-attr]
            self.watchdog.wait(timeout)
            self.watchdog = None

    def shut_down(self, timeout: float = 20.0) -> None:
        """Stop the postmaster this module started (fast shutdown: open transactions
        are rolled back, clients disconnected) and keep its data for :meth:`start_again`."""
        if self.process is None:
            raise RuntimeError("this server was not started here")
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout)

    def start_again(self, timeout: float = 60.0) -> None:
        """Start the postmaster :meth:`shut_down` stopped, on the same port and data."""
        if self.launch is None or self.process is None or self.process.poll() is None:
            raise RuntimeError("shut_down() the server this module started first")
        self.process = self.launch()
        _wait_ready(self, timeout)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_postgres(*, settings: dict[str, str] | None = None, timeout: float = 60.0
                   ) -> PostgresServer:
    """Start a PostgreSQL server of :data:`PG_BIN` in a new temp directory.

    ``settings`` are extra ``-c`` options.  Raises ``FileNotFoundError`` without the
    binaries, ``RuntimeError`` (with the server's log) when it does not start."""
    initdb, postgres = PG_BIN / "initdb", PG_BIN / "postgres"
    if not (initdb.is_file() and postgres.is_file()):
        raise FileNotFoundError(f"no PostgreSQL binaries in {PG_BIN} (install postgresql, "
                                "or set PACSCORE_PG_BIN, or PACSCORE_PG_DSN for a server)")
    as_root = os.geteuid() == 0
    user = pwd.getpwnam("postgres") if as_root else None
    directory = Path(tempfile.mkdtemp(prefix="pacscore-pg-"))  # 0700
    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)
    uid, gid = (user.pw_uid, user.pw_gid) if user else (None, None)
    groups: list[int] | None = [] if user else None
    data, log = directory / "data", directory / "server.log"
    server = PostgresServer("", None, directory, 0, log)
    try:
        done = subprocess.run(
            [str(initdb), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync",
             "-E", "UTF8", "--locale=C"], capture_output=True, check=False,
            cwd=directory, user=uid, group=gid, extra_groups=groups)
        if done.returncode:
            raise RuntimeError(f"initdb failed: {done.stderr.decode(errors='replace')}")
        port = _free_port()
        options = {"listen_addresses": "127.0.0.1", "fsync": "off",
                   "synchronous_commit": "off", "full_page_writes": "off",
                   "max_connections": "200", **(settings or {})}

        def launch() -> subprocess.Popen[bytes]:
            with open(log, "ab") as out:
                if user is not None:
                    os.fchown(out.fileno(), user.pw_uid, user.pw_gid)
                return subprocess.Popen(
                    [str(postgres), "-D", str(data), "-p", str(port), "-k", str(directory),
                     *(a for k, v in options.items() for a in ("-c", f"{k}={v}"))],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=directory, start_new_session=True, user=uid, group=gid,
                    extra_groups=groups)

        server.launch = launch
        server.process = launch()
        server.watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(server.process.pid), str(directory)],
            stdin=subprocess.PIPE, start_new_session=True)
        server.port = port
        server.dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        _wait_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


# Reads its stdin until the test process closes it (or dies); then, if the server still
# runs, a fast shutdown (SIGKILL after 20 s) and its directory removed.  The postmaster
# is the one postmaster.pid names (started again by start_again: another pid).
_WATCHDOG = """
import os, shutil, signal, sys, time
sys.stdin.buffer.read()
pid, directory = int(sys.argv[1]), sys.argv[2]
try:
    with open(os.path.join(directory, "data", "postmaster.pid")) as f:
        pid = int(f.readline())
except (OSError, ValueError):
    pass
try:
    os.kill(pid, signal.SIGINT)
    for _ in range(200):
        time.sleep(0.1)
        os.kill(pid, 0)
    os.killpg(pid, signal.SIGKILL)
except ProcessLookupError:
    pass
shutil.rmtree(directory, ignore_errors=True)
"""


def _wait_ready(server: PostgresServer, timeout: float) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        assert server.process is not None
        if server.process.poll() is not None:
            raise RuntimeError(f"postgres exited ({server.process.returncode}): "
                               f"{_tail(server.log)}")
        try:
            psycopg.connect(server.dsn, connect_timeout=2).close()
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections within "
                                   f"{timeout:g} s: {exc}; {_tail(server.log)}") from exc
            time.sleep(0.05)


def _tail(log: Path | None) -> str:
    try:
        return log.read_text(errors="replace")[-2000:] if log else ""
    except OSError:
        return ""


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server for the session (``PACSCORE_PG_DSN``, or one started here)."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install "
                                          "pacscore[postgresql])")
    dsn = os.environ.get("PACSCORE_PG_DSN")
    if dsn:
        yield PostgresServer(dsn)
        return
    try:
        server = start_postgres()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_dsn(postgres_server: PostgresServer) -> Iterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.dsn_of(name)
    finally:
        postgres_server.drop_database(name)
