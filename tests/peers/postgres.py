"""A private PostgreSQL (``initdb`` + ``pg_ctl``) in a temp dir on a free loopback port, for the store's
PostgreSQL backend.

The binaries are the Debian ``postgresql`` package's (/usr/lib/postgresql/<major>/bin; installed by
.ci/install-peers.sh). PostgreSQL refuses to run as root: as root, the cluster belongs to the ``postgres``
system user (created by the package; ``nobody`` otherwise) and every binary runs through ``runuser -u``.
Authentication is ``trust`` for loopback and the socket directory (the cluster is private and temporary);
``--no-locale`` gives byte-wise text ordering, as SQLite has. ``stop()`` runs ``pg_ctl stop -m fast`` and, if
that fails, sends SIGKILL to the postmaster's PID (from postmaster.pid) — never anything found by name.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

from tests.peers.ports import free_port


def bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0)
    return os.path.dirname(found[-1]) if found else None


class PostgresServer:
    def __init__(self) -> None:
        self.bin = bindir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb):"
                               " run .ci/install-peers.sh")
        self.base = tempfile.mkdtemp(prefix="relaybox-pg-")
        os.chmod(self.base, 0o755)
        self.data = os.path.join(self.base, "data")
        self.sock = os.path.join(self.base, "sock")
        self.log = os.path.join(self.base, "postgres.log")
        self.port = 0
        self.user: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                os.makedirs(self.sock, exist_ok=True)
                for p in (self.base, self.sock):
                    os.chown(p, pw.pw_uid, pw.pw_gid)
                break
            else:
                raise RuntimeError("running as root and neither 'postgres' nor 'nobody' exists")
        os.makedirs(self.sock, exist_ok=True)

    def _run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [os.path.join(self.bin or "", argv[0]), *argv[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=self.base)

    def start(self) -> "PostgresServer":
        r = self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "--no-locale",
                      "-E", "UTF8", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stdout}{r.stderr}")
        for _ in range(5):
            self.port = free_port()
            opts = (f"-k {self.sock} -p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off"
                    " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            r = self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", opts, "start")
            if r.returncode == 0:
                break
        else:
            raise RuntimeError(f"pg_ctl start failed: {r.stdout}{r.stderr}\n{self.tail()}")
        return self

    def tail(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        import psycopg

        name = url.rsplit("/", 1)[1]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def _pid(self) -> int | None:
        try:
            with open(os.path.join(self.data, "postmaster.pid"), encoding="ascii") as fh:
                return int(fh.readline().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.port:
            pid = self._pid()
            try:
                r = self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "30", "stop", timeout=60)
                failed = r.returncode != 0
            except subprocess.TimeoutExpired:
                failed = True
            if failed and pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                    time.sleep(0.5)
                except ProcessLookupError:
                    pass
            self.port = 0
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
