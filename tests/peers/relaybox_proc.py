"""relaybox as a real subprocess on a temporary directory and free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from tests.peers.ports import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_config(path: str, sections: dict[str, dict]) -> None:
    """sections: {"smtp": {...}, "smtp.tls": {...}, "storage": {...}}; lists of tables: key "[[name]]"."""
    lines = []
    for name, values in sections.items():
        if name.startswith("[["):
            for item in values:
                lines.append(name)
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items()]
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


class RelayboxProcess:
    def __init__(self, workdir: str, sections: dict[str, dict] | None = None, smtp_port: int | None = None):
        self.workdir = workdir
        os.makedirs(workdir, exist_ok=True)
        self.smtp_port = smtp_port or free_port()
        self.db_path = os.path.join(workdir, "relaybox.db")
        self.config_path = os.path.join(workdir, "relaybox.toml")
        self.admin_port = free_port()
        base = {
            "smtp": {"listen": [f"127.0.0.1:{self.smtp_port}"], "hostname": "relay.test"},
            "storage": {"path": self.db_path, "min_free": 0.0},
            "admin": {"listen": f"127.0.0.1:{self.admin_port}"},
            # one process, as these tests were written for (relaybox run defaults to one worker per core);
            # tests/test_workers.py runs several: sections={"process": {"workers": N}} or --workers N
            "process": {"workers": 1},
        }
        for k, v in (sections or {}).items():
            if isinstance(v, dict) and k in base:
                base[k] = {**base[k], **v}
            else:
                base[k] = v
        self.sections = base
        write_config(self.config_path, base)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(workdir, "relaybox.log")
        self.extra_args: list[str] = []     # more ``relaybox run`` arguments (``--workers N``)

    def start(self, timeout: float = 15.0) -> "RelayboxProcess":
        env = dict(os.environ, PYTHONPATH=REPO)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "relaybox.cli", "run", "--config",
                                      self.config_path, *self.extra_args],
                                     cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"relaybox exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=0.5) as s:
                    if s.recv(100).startswith(b"220") and self._admin_up():
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"relaybox did not start: {self.log()}")

    def _admin_up(self) -> bool:
        """The admin listener starts after SMTP intake: ready means both answer (when admin is on)."""
        admin = self.sections.get("admin") or {}
        if admin.get("enabled") is False or not admin.get("listen"):
            return True
        host, _, port = str(admin["listen"]).rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=0.5):
                return True
        except OSError:
            return False

    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                return fh.read().decode("utf-8", "replace")[-5000:]
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode
