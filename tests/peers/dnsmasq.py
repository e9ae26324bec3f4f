"""A real DNS server for tests: Debian's dnsmasq on 127.0.0.1:<free port> (UDP + TCP), records from a dict.

    zone = {
        "example.test": {"MX": [(10, "mx1.example.test"), (10, "mx2.example.test")]},
        "null.test": {"MX": [(0, ".")]},                      # RFC 7505 null MX
        "mx1.example.test": {"A": ["127.0.0.1"]},
        "sel._domainkey.example.test": {"TXT": ["v=DKIM1; k=rsa; p=..."]},
        "broken.test": "SERVFAIL",                             # forwarded to a dead upstream: times out
    }
    with DnsmasqServer(zone) as dns:       # dns.port, dns.host
        ...

Every other name gets NXDOMAIN (``--local=/#/``). ``address=("0.0.0.0", 53)`` + a network namespace of
its own (``unshare -rn``) is how tests/test_dkim.py serves opendkim, which only asks port 53.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

from tests.peers.ports import free_port

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def _txt_arg(name: str, text: str) -> str:
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [""]
    if any("," in c for c in chunks):
        raise ValueError("dnsmasq TXT strings cannot contain commas")
    return f"--txt-record={name}," + ",".join(chunks)    # argv: no shell, so no quotes


def build_args(records: dict, port: int, host: str = "127.0.0.1", workdir: str = "/tmp") -> list[str]:
    args = [DNSMASQ, "--keep-in-foreground", f"--port={port}", f"--listen-address={host}",
            "--bind-interfaces", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--user=root",
            f"--pid-file={workdir}/dnsmasq.pid", f"--log-facility={workdir}/dnsmasq.log", "--log-queries",
            "--local=/#/"]
    dead = free_port()
    for name, recs in records.items():
        if recs == "SERVFAIL":
            args.append(f"--server=/{name}/127.0.0.1#{dead}")
            continue
        for pref, target in recs.get("MX", []):
            args.append(f"--mx-host={name},{target},{pref}")
        addrs = list(recs.get("A", [])) + list(recs.get("AAAA", []))
        if addrs:
            args.append(f"--host-record={name}," + ",".join(addrs))
        for text in recs.get("TXT", []):
            args.append(_txt_arg(name, text))
    return args


class DnsmasqServer:
    def __init__(self, records: dict, host: str = "127.0.0.1", port: int | None = None):
        self.records = records
        self.host = host
        self.port = port or free_port(host)
        self.proc: subprocess.Popen | None = None
        self.workdir = ""

    def start(self) -> "DnsmasqServer":
        if not os.path.exists(DNSMASQ):
            raise RuntimeError("dnsmasq not installed (Debian dnsmasq-base; see .ci/install-peers.sh)")
        self.workdir = tempfile.mkdtemp(prefix="dnsmasq-")
        args = build_args(self.records, self.port, self.host, self.workdir)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 5.0) -> None:
        import socket

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"dnsmasq exited with {self.proc.returncode}: {err.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"dnsmasq did not listen on {self.host}:{self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(3)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = ""

    def log(self) -> str:
        try:
            with open(os.path.join(self.workdir, "dnsmasq.log")) as fh:
                return fh.read()
        except OSError:
            return ""

    def __enter__(self) -> "DnsmasqServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
