"""A real PostgreSQL server for tests: Debian's binaries, a cluster in a temporary folder, on a
free loopback port. As root it runs as the `postgres` user (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import psycopg

from helpers import free_port

SECURED_ROLE = "secured"


def binary(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))[-1:]), None)
    if found is None:
        raise RuntimeError(f"PostgreSQL's {name} not found: scripts/setup.sh installs Debian's postgresql")
    return found


class PostgresCluster:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="graytune-pg-"))
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.folder, "postgres")
        self.running = False
        self._run(binary("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
        # Every role is trusted, except SECURED_ROLE, which must give its password (pg_hba.conf's
        # first matching line wins).
        hba = self.folder / "data" / "pg_hba.conf"
        hba.write_text(f"host all {SECURED_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        self.start()

    @property
    def data(self) -> str:
        return str(self.folder / "data")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_secured_database(self, name: str, password: str) -> str:
        """A database owned by SECURED_ROLE, who logs in with `password` -> its URL, without it."""
        with psycopg.connect(self.url(), autocommit=True) as db:
            db.execute(f"CREATE ROLE {SECURED_ROLE} LOGIN PASSWORD '{password}'")
            db.execute(f'CREATE DATABASE "{name}" OWNER {SECURED_ROLE}')
        return f"postgresql://{SECURED_ROLE}@127.0.0.1:{self.port}/{name}"

    def start(self) -> None:
        if self.running:
            return
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(binary("pg_ctl"), "-D", self.data, "-o", options, "-l", str(self.folder / "log"), "-w", "start")
        self.running = True

    def stop(self) -> None:
        """A fast shutdown: open connections are ended, as when the server goes away."""
        self._run(binary("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")
        self.running = False

    def close(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
