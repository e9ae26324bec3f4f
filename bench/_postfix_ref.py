"""The reference side of bench/e2e_postfix.py: a private Postfix instance, the shared smtp-sink with its
message counter, and CPU time of a process tree read from /proc.

Private Postfix: ``postfix -c <dir> start`` with its own main.cf + master.cf, queue_directory and
data_directory in the bench's temp dir (the disk relaybox's spool is on), smtpd on a free 127.0.0.1 port,
``relayhost = [127.0.0.1]:<sink port>``, no local delivery, no TLS, no DNS, its log in ``maillog_file``
(postlogd) inside the temp dir. Postfix 3.7 (Debian) accepts ``-c`` from root for a directory that no
default main.cf lists in ``alternate_config_directories`` (that check is for the set-gid postdrop/postqueue
and sendmail, which this instance never uses: mail arrives over SMTP only); and this machine has no
/etc/postfix/main.cf at all, so no system instance can be touched. Stop = ``postfix -c <dir> stop``; if
the master is still there after that, SIGKILL to the PID in its own pid file — never a process by name.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
TICKS = os.sysconf("SC_CLK_TCK")

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-ref.test
mydomain = postfix-ref.test
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled
alias_maps =
alias_database =
relayhost = [127.0.0.1]:{sink_port}
default_transport = smtp
relay_transport = smtp
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtp_dns_support_level = disabled
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
maillog_file = {log}
maillog_file_prefixes = {base}
biff = no
"""

# Debian's master.cf without chroot, local delivery, pickup of a local maildrop, postscreen or TLS.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent PID, utime+stime+cutime+cstime in seconds) of one process, None if it is gone (or a
    zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()      # after "pid (comm) "; fields[0] is the state
    if fields[0] == "Z":
        return None
    return int(fields[1]), sum(int(x) for x in fields[11:15]) / TICKS


def tree_cpu(roots: list[int]) -> float:
    """CPU seconds (user + system) of processes ``roots`` and all their descendants, including children
    already reaped (cutime/cstime): sampled before and after a load, the difference is what it cost."""
    stats: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                stats[int(name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, [r for r in roots if r in stats], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo.extend(children.get(pid, ()))
    return total


class CountingSink:
    """One Postfix ``smtp-sink -c`` for the whole bench (both systems deliver to it); ``count()`` is its
    running message counter (``mesg=N``, written to a file after every transaction)."""

    def __init__(self, base: str, port: int) -> None:
        self.port = port
        self.out_path = os.path.join(base, "smtp-sink.out")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "CountingSink":
        self._out = open(self.out_path, "wb")
        self.proc = subprocess.Popen([SMTP_SINK, "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"],
                                     stdout=self._out, stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def count(self) -> int:
        with open(self.out_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(self.out_path) - 120))
            found = re.findall(rb"mesg=(\d+)", fh.read())
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()


class PostfixInstance:
    def __init__(self, base: str, port: int, sink_port: int) -> None:
        self.base, self.port = base, port
        self.conf = os.path.join(base, "conf")
        self.queue = os.path.join(base, "queue")
        self.data = os.path.join(base, "data")
        self.log = os.path.join(base, "maillog")
        os.chmod(base, 0o755)
        for d in (self.conf, self.queue, self.data):
            os.makedirs(d, mode=0o755, exist_ok=True)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data, pw.pw_uid, pw.pw_gid)      # master.lock and scache live here, as mail_owner
        with open(os.path.join(self.conf, "main.cf"), "w") as fh:
            fh.write(MAIN_CF.format(queue=self.queue, data=self.data, sink_port=sink_port, log=self.log,
                                    base=base))
        with open(os.path.join(self.conf, "master.cf"), "w") as fh:
            fh.write(MASTER_CF.format(port=port))
        self.started = False

    def _postfix(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([POSTFIX, "-c", self.conf, *argv], capture_output=True, text=True, timeout=120)

    def start(self) -> "PostfixInstance":
        if os.geteuid() != 0:
            raise RuntimeError("the Postfix reference needs root (postfix start; mail_owner postfix)")
        for step in ("check", "start"):
            r = self._postfix(step)
            if r.returncode:
                raise RuntimeError(f"postfix {step} failed: {r.stdout}{r.stderr}\n{self.log_tail()}")
        self.started = True
        wait_port(self.port)
        return self

    def master_pid(self) -> int:
        with open(os.path.join(self.queue, "pid", "master.pid"), encoding="ascii") as fh:
            return int(fh.read().strip())

    def log_tail(self) -> str:
        try:
            with open(self.log, encoding="utf-8", errors="replace") as fh:
                return fh.read()[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if not self.started:
            return
        pid = self.master_pid()
        self._postfix("stop")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and _stat(pid) is not None:
            time.sleep(0.1)
        if _stat(pid) is not None:
            os.kill(pid, signal.SIGKILL)
        self.started = False
