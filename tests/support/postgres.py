"""A throwaway PostgreSQL cluster for the ingest tests and the fleet bench: initdb in a temp
dir, the server on a free loopback port (its unix socket in the same dir), stopped and removed
afterwards. Runs as the invoking user; as root (CI) as Debian's `postgres` user, because
PostgreSQL refuses to run as root.

    with PgCluster() as pg:
        url = pg.url              # postgresql://roadside@127.0.0.1:PORT/roadside
        pg.restart()              # a database restart under load

`make test` installs Debian's postgresql package (Makefile, system-deps) when initdb is
missing; a missing initdb fails the test saying so, it is never skipped.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

MISSING = ("PostgreSQL's initdb is not installed (Debian: apt-get install -y postgresql);"
           " `make test` installs it (Makefile, system-deps)")


def find_bin(name: str) -> str | None:
    """A PostgreSQL program from PATH, or Debian's /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[4]) if Path(p).parts[4].isdigit() else 0)
    return candidates[-1] if candidates else None


def require_postgres() -> None:
    import pytest

    if find_bin("initdb") is None or find_bin("pg_ctl") is None:
        pytest.fail(MISSING, pytrace=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, user: str = "roadside", database: str = "roadside") -> None:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError(MISSING)
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.user, self.database = user, database
        # short path: the unix socket's name must fit in 107 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="roadside-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.port = _free_port()
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")   # Debian's package creates it
            self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *cmd: str, timeout: float = 60) -> None:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, **self._run_as)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed ({proc.returncode}):"
                               f" {proc.stderr.strip() or proc.stdout.strip()}")

    def init(self) -> PgCluster:
        self._run(self.initdb, "-D", str(self.data), "-U", self.user, "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale", "C")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.dir}'\n"
                       # throwaway data: no fsync (a restart still goes through the WAL)
                       "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
                       "shared_buffers = 64MB\n")
        return self

    def start(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "start")

    def create_database(self) -> None:
        import psycopg

        url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.database}"'.encode())

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        try:
            if self.running():
                self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        try:
            self.init()
            self.start()
            self.create_database()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.destroy()

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return conn.execute(sql, params or None).fetchall()
