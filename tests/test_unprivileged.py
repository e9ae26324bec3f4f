"""relaybox runs confined the way the systemd unit confines it: an unprivileged user, no new privileges, only
CAP_NET_BIND_SERVICE in the bounding and ambient sets (setpriv reproduces CapabilityBoundingSet=,
AmbientCapabilities=, NoNewPrivileges= of systemd/relaybox.service), the unit's SystemCallFilter= loaded
as a seccomp filter (tests/peers/seccomp_exec.py), and a read-only file system but for its state directory,
with a private /tmp and hidden home directories (tests/peers/protect_system.sh in a mount namespace, as
ProtectSystem=strict, PrivateTmp=, ProtectHome=, StateDirectory= do); it binds a privileged port, accepts
mail, drains."""

from __future__ import annotations

import os
import random
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import tempfile

import pytest

from tests.peers.ports import free_port
from tests.peers.relaybox_proc import REPO, write_config

pytestmark = pytest.mark.integration

UNIT = os.path.join(REPO, "systemd", "relaybox.service")
NOBODY = 65534
STATE_MOUNT = "/srv"      # exists, empty, in Debian; bound over only inside the test's mount namespace
SRC_MOUNT = "/mnt"        # likewise: the checkout is bound here inside the namespace
CAP_NET_BIND_SERVICE = 1 << 10


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} (util-linux) is missing"
    return path


def privileged_port() -> int:
    for port in random.sample(range(600, 1024), 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below 1024")


def interpreter() -> str:
    """A Python the unprivileged user can execute (pyenv builds under /root are not)."""
    system = "/usr/bin/python3"
    if os.path.exists(system):
        out = subprocess.run([system, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                             text=True).stdout.strip()
        if out == str(tuple(sys.version_info[:2])):
            return system
    return sys.executable


def unit_caps() -> tuple[str, str]:
    values = {}
    for line in open(UNIT):
        key, _, value = line.strip().partition("=")
        values[key] = value
    return values["CapabilityBoundingSet"], values["AmbientCapabilities"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_runs_confined_like_the_unit_on_a_privileged_port():
    setpriv = tool("setpriv")
    bounding, ambient = unit_caps()
    assert bounding == ambient == "CAP_NET_BIND_SERVICE"
    cap = bounding.removeprefix("CAP_").lower()
    state = tempfile.mkdtemp(prefix="relaybox-unpriv-", dir="/tmp")   # pytest's tmp dirs are root-only
    try:
        os.chmod(state, 0o750)
        os.chown(state, NOBODY, NOBODY)
        port = privileged_port()
        config = os.path.join(state, "relaybox.toml")
        write_config(config, {
            "smtp": {"listen": [f"127.0.0.1:{port}"], "hostname": "relay.test"},
            "storage": {"path": f"{STATE_MOUNT}/relaybox.db", "min_free": 0.0},
            "admin": {"listen": f"127.0.0.1:{free_port()}"},
            "[[routes]]": [{"name": "closed", "host": "127.0.0.1", "port": free_port(), "tls": "none",
                            "default": True}],
        })
        os.chmod(config, 0o644)
        python = interpreter()
        hidden = [d for d in ("/home", "/root", "/run/user")
                  if not os.path.realpath(python).startswith(d + "/")]   # a pyenv build may live in /root
        # Type=notify: the readiness datagram must get out of the sandbox (AF_UNIX is allowed)
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(os.path.join(state, "notify"))
        os.chmod(os.path.join(state, "notify"), 0o666)
        notify.settimeout(20)
        # the checkout may itself be under /tmp or a home (a CI clone): it is bound at /mnt (as an install
        # in /opt would be) and every path into it is seen from there
        def seen(path: str) -> str:
            return SRC_MOUNT + path[len(REPO):] if path.startswith(REPO + "/") else path

        purelib = sysconfig.get_paths()["purelib"]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PROTECT_HOME": " ".join(hidden),
               "NOTIFY_SOCKET": f"{STATE_MOUNT}/notify", "REPO_BIND": f"{REPO}:{SRC_MOUNT}",
               "PYTHONPATH": f"{SRC_MOUNT}:{seen(purelib)}", "PYTHONDONTWRITEBYTECODE": "1"}
        log_path = os.path.join(state, "run.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [tool("unshare"), "--mount", "--propagation", "private",
                 "sh", os.path.join(REPO, "tests", "peers", "protect_system.sh"), state, STATE_MOUNT, "--",
                 setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs",
                 f"--bounding-set=-all,+{cap}", f"--inh-caps=-all,+{cap}", f"--ambient-caps=-all,+{cap}",
                 python, seen(os.path.join(REPO, "tests", "peers", "seccomp_exec.py")), seen(UNIT), "--",
                 python, "-m", "relaybox.cli", "run", "--config", f"{STATE_MOUNT}/relaybox.toml"],
                cwd=state, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            try:
                ready = notify.recv(4096).decode()
            except TimeoutError:
                raise AssertionError("no READY=1: " + open(log_path).read()[-3000:]) from None
            assert "READY=1" in ready.splitlines() and f"MAINPID={proc.pid}" in ready
            s = smtplib.SMTP("127.0.0.1", port, timeout=5)
            status = open(f"/proc/{proc.pid}/status").read()
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            assert fields["Uid"].split()[0] == str(NOBODY)
            assert int(fields["CapEff"], 16) == CAP_NET_BIND_SERVICE
            assert int(fields["CapBnd"], 16) == CAP_NET_BIND_SERVICE
            assert fields["NoNewPrivs"].strip() == "1"
            assert fields["Seccomp"].strip() == "2"         # filter mode: the unit's system-call list
            mounts = {}
            for line in open(f"/proc/{proc.pid}/mountinfo"):
                parts = line.split()
                mounts[parts[4]] = (parts[5].split(","), line.split(" - ")[1].split()[0])
            assert "ro" in mounts["/"][0] and "rw" in mounts[STATE_MOUNT][0]
            assert mounts["/tmp"][1] == "tmpfs" and "rw" in mounts["/tmp"][0]
            with s:
                s.ehlo("client.test")
                assert s.sendmail("app@example.test", ["x@example.org"], b"Subject: t\r\n\r\nhi\r\n") == {}
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0, open(log_path).read()[-3000:]
        finally:
            notify.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        db = os.path.join(state, "relaybox.db")
        assert os.stat(db).st_uid == NOBODY
        conn = sqlite3.connect(db)
        assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 1
        conn.close()
    finally:
        shutil.rmtree(state, ignore_errors=True)


def test_the_seccomp_harness_really_filters(tmp_path):
    """Control for the test above: with the unit's filter minus @network-io, creating a socket fails."""
    unit = tmp_path / "relaybox.service"
    unit.write_text(open(UNIT).read() + "\n[Service]\nSystemCallFilter=~@network-io\n")
    code = "import socket\ntry:\n    socket.socket()\nexcept PermissionError:\n    print('EPERM')\n"
    res = subprocess.run([shutil.which("setpriv"), "--no-new-privs", sys.executable,
                          os.path.join(REPO, "tests", "peers", "seccomp_exec.py"), str(unit), "--",
                          sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert res.stdout.strip() == "EPERM", res.stdout + res.stderr
