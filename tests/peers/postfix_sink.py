"""Postfix's ``smtp-sink`` as a real receiving MTA on 127.0.0.1:<free port>; each transaction is dumped to
a file in ``self.dir`` (``-d``), so tests can read what arrived. ``data_delay`` makes it wait before
answering DATA (``-w``), to catch a sender in the middle of a transaction."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from tests.peers.ports import free_port

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


class PostfixSink:
    def __init__(self, port: int | None = None, data_delay: int = 0):
        self.port = port or free_port()
        self.data_delay = data_delay
        self.dir = ""
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PostfixSink":
        if not os.path.exists(SMTP_SINK):
            raise RuntimeError("smtp-sink missing (Debian postfix; see .ci/install-peers.sh)")
        if not self.dir:
            self.dir = tempfile.mkdtemp(prefix="smtp-sink-", dir="/tmp")
            os.chmod(self.dir, 0o777)          # smtp-sink drops to nobody before writing dumps
        args = [SMTP_SINK, "-u", "nobody", "-d", f"{self.dir}/%H%M%S."]
        if self.data_delay:
            args += ["-w", str(self.data_delay)]
        self.proc = subprocess.Popen(args + [f"127.0.0.1:{self.port}", "256"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("smtp-sink did not start")

    def dumps(self) -> list[bytes]:
        out = []
        for path in sorted(glob.glob(os.path.join(self.dir, "*"))):
            with open(path, "rb") as fh:
                out.append(fh.read())
        return out

    def stop(self, cleanup: bool = True) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if cleanup and self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""
