"""Shared helpers for the benchmarks: temp relaybox processes, the no-op aiosmtpd ceiling, smtp-source."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.peers.ports import free_port  # noqa: E402
from tests.peers.relaybox_proc import RelayboxProcess  # noqa: E402

NOOP_SERVER = r"""
import asyncio, sys
from aiosmtpd.controller import Controller
class Noop:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"
c = Controller(Noop(), hostname="127.0.0.1", port=int(sys.argv[1]), data_size_limit=50_000_000)
c.start()
print("ready", flush=True)
sys.stdin.read()
c.stop()
"""


def smtp_source() -> str:
    path = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
    if not os.path.exists(path):
        sys.exit("smtp-source not found: install Debian's postfix package (make peers)")
    return path


def drive(port: int, messages: int, size: int, sessions: int = 20) -> float:
    """Send ``messages`` of ``size`` bytes over ``sessions`` parallel reused connections; return msgs/s."""
    cmd = [smtp_source(), "-d", "-s", str(sessions), "-l", str(size), "-m", str(messages),
           "-f", "bench@org.test", "-t", "sink@example.test", "-M", "bench.test", f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {out.stderr.strip()}")
    return messages / dt


class NoopServer:
    def __enter__(self):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-c", NOOP_SERVER, str(self.port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc):
        self.proc.stdin.close()
        self.proc.wait(10)


class TempRelaybox:
    def __init__(self, sections: dict | None = None):
        self.sections = sections or {}

    def __enter__(self) -> RelayboxProcess:
        self.dir = tempfile.mkdtemp(prefix="relaybox-bench-")
        admin_port = free_port()
        sections = {"delivery": {"enabled": False}, **self.sections}
        try:
            import admin_api.config  # noqa: F401
            sections.setdefault("admin", {"listen": f"127.0.0.1:{admin_port}"})
        except ImportError:
            pass
        self.proc = RelayboxProcess(self.dir, sections).start()
        return self.proc

    def __exit__(self, *exc):
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_supports_workers() -> bool:
    """Whether ``relaybox run`` takes ``--workers N`` (several intake/delivery processes)."""
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "run", "--help"], capture_output=True,
                         text=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    return "--workers" in out.stdout


class RelayboxRun(RelayboxProcess):
    """A RelayboxProcess started with extra ``relaybox run`` arguments (``--workers N``)."""

    def __init__(self, workdir: str, sections: dict, extra_args: list[str] | None = None):
        super().__init__(workdir, sections)
        self.extra_args = list(extra_args or [])

    def start(self, timeout: float = 30.0) -> "RelayboxRun":
        """As RelayboxProcess.start, and a relaybox that does not come up is stopped, not left behind."""
        try:
            super().start(timeout)
        except RuntimeError:
            self.stop()
            raise
        return self
