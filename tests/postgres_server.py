"""A private PostgreSQL for fault tests, on a free loopback port.

The machine's shared PostgreSQL must not be restarted by a test; this one is a fresh
cluster (``initdb``) in a temporary directory, run as the ``postgres`` user (PostgreSQL
refuses to run as root), with trust authentication on loopback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .redis_server import free_port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


def available() -> bool:
    return all(_binary(name) for name in ("initdb", "pg_ctl")) and (
        os.geteuid() != 0 or shutil.which("runuser") is not None
    )


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        self._dir = Path(tempfile.mkdtemp(prefix="pg-test-"))
        self._data = self._dir / "data"
        self._log = self._dir / "server.log"

    @property
    def admin_url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:
            shutil.chown(self._dir, "postgres")
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> PostgresServer:
        if not self._data.exists():
            self._run(
                str(_binary("initdb")), "-D", str(self._data), "-U", "postgres", "-A", "trust", "-E", "UTF8"
            )
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self._dir}"
        self._run(
            str(_binary("pg_ctl")), "-D", str(self._data), "-l", str(self._log), "-o", options, "-w", "start"
        )
        return self

    def stop(self) -> None:
        if (self._data / "postmaster.pid").exists():
            self._run(str(_binary("pg_ctl")), "-D", str(self._data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return self._log.read_text(errors="replace")
        except OSError:
            return ""
