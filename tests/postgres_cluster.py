"""A real PostgreSQL 15 cluster for the tests, in a temporary directory, on 127.0.0.1.

``initdb`` and ``postgres`` refuse to run as root: as root they run as the ``postgres`` system user (in a
directory it owns), otherwise as the current user. The cluster listens on a free port with password
(scram) authentication over TCP for the role ``bot``; :meth:`Cluster.database` makes a fresh database for
each test. Stopped with ``pg_ctl stop -m immediate`` at the end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.fakes.serving import free_port

BIN = next((Path(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None) \
    if Path("/usr/lib/postgresql").exists() else None
PASSWORD = "bot-test-password"


def available() -> bool:
    return BIN is not None and (BIN / "initdb").exists()



class Cluster:
    def __init__(self, directory: Path, port: int, as_user: list[str]) -> None:
        self.directory = directory
        self.port = port
        self.as_user = as_user
        self._names = itertools.count(1)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://bot:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        assert BIN is not None
        run = subprocess.run([*self.as_user, str(BIN / "psql"), "-h", str(self.directory), "-p", str(self.port),
                              "-U", "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
                             capture_output=True, text=True, timeout=60)
        if run.returncode != 0:
            raise RuntimeError(run.stderr)
        return run.stdout

    def database(self) -> str:
        """A new, empty database owned by ``bot``; its URL."""
        name = f"t{os.getpid()}_{next(self._names)}"
        self.psql(f"CREATE DATABASE {name} OWNER bot")
        return self.url(name)


@contextlib.contextmanager
def cluster() -> Iterator[Cluster]:
    assert BIN is not None
    root = Path(tempfile.mkdtemp(prefix="internvl-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = root / "data"
    port = free_port()
    try:
        subprocess.run([*as_user, str(BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"], check=True,
                       capture_output=True, timeout=120)
        subprocess.run([*as_user, str(BIN / "pg_ctl"), "-D", str(data), "-w", "-l", str(root / "log"), "-o",
                        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} "
                        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                        "start"], check=True, capture_output=True, timeout=120)
        found = Cluster(root, port, as_user)
        found.psql(f"CREATE ROLE bot LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        yield found
    finally:
        subprocess.run([*as_user, str(BIN / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate"],
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
