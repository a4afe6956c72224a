"""A throwaway PostgreSQL + PostGIS cluster for the tests.

The cluster lives in a temporary folder, listens on 127.0.0.1 on a free port and is removed
when the tests end. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` system user, which the Debian packages create.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile


def _postgres_bin() -> str:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda path: int(path.split("/")[-2]))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql; "
                           "run scripts/setup.sh")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """A PostgreSQL cluster started from scratch in a temporary folder."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.root = tempfile.mkdtemp(prefix="georef-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.run_as_postgres = os.geteuid() == 0
        if self.run_as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o755)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        command = list(args)
        if self.run_as_postgres:
            command = ["runuser", "-u", "postgres", "--"] + command
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, cwd=self.root)

    def init(self) -> None:
        self._run(os.path.join(self.bin, "initdb"), "-D", self.data, "-A", "trust",
                  "-U", "postgres", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                   "-c max_connections=200")
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-o", options,
                  "-l", os.path.join(self.root, "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.root, ignore_errors=True)
