"""A private Dovecot (IMAP + STARTTLS, IMAPS, POP3 + STLS) in a temp dir on free loopback ports.

Facts from shared/PEERS.md: login processes run as dovenull, mail access as nobody (every parent of the
Maildir root must be enterable by nobody, so the root lives under /tmp with mode 0755), auth reads a
passwd-file, the anvil auth penalty file is removed right after start, and stopping sends TERM to the
master's whole process group (logged-in children survive the master otherwise).
"""

from __future__ import annotations

import imaplib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

from tests.peers.certs import make_cert
from tests.peers.ports import free_port

CONF = """
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
default_login_user = dovenull
default_internal_user = root
mail_uid = nobody
mail_gid = nogroup
first_valid_uid = 0
mail_location = maildir:{mail}/%u/Maildir
auth_mechanisms = plain login{oauth2_mechs}
auth_failure_delay = 0
disable_plaintext_auth = no
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
mailbox_idle_check_interval = 1 secs
protocol imap {{
  mail_max_userip_connections = 100
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/users
}}
{oauth2_passdb}userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={mail}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
"""

# Dovecot's oauth2 passdb: XOAUTH2/OAUTHBEARER logins are checked by POSTing the token to an RFC 7662
# introspection endpoint (tests/peers/oauth2.py); the answer's "username" must be the login name
OAUTH2_PASSDB = """passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/oauth2.conf.ext
}}
"""
OAUTH2_CONF = """introspection_mode = post
introspection_url = {url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
"""


class Dovecot:
    def __init__(self, users: dict[str, str] | None = None, oauth2_introspection_url: str = ""):
        """``oauth2_introspection_url``: also accept XOAUTH2/OAUTHBEARER, checked at that endpoint."""
        self.base = tempfile.mkdtemp(prefix="dc", dir="/tmp")
        os.chmod(self.base, 0o755)
        self.mail = os.path.join(self.base, "mail")
        os.makedirs(self.mail, mode=0o755)
        shutil.chown(self.mail, "nobody", "nogroup")
        self.cert, self.key = make_cert(os.path.join(self.base, "tls"))
        self.imap_port, self.imaps_port, self.pop3_port = free_port(), free_port(), free_port()
        self.conf = os.path.join(self.base, "dovecot.conf")
        with open(self.conf, "w") as fh:
            fh.write(CONF.format(
                base=self.base, mail=self.mail, cert=self.cert, key=self.key, imap=self.imap_port,
                imaps=self.imaps_port, pop3=self.pop3_port,
                oauth2_mechs=" xoauth2 oauthbearer" if oauth2_introspection_url else "",
                oauth2_passdb=OAUTH2_PASSDB.format(base=self.base) if oauth2_introspection_url else ""))
        if oauth2_introspection_url:
            with open(os.path.join(self.base, "oauth2.conf.ext"), "w") as fh:
                fh.write(OAUTH2_CONF.format(url=oauth2_introspection_url))
        open(os.path.join(self.base, "users"), "w").close()
        self.pid: int | None = None
        for user, password in (users or {}).items():
            self.add_user(user, password)

    def start(self, timeout: float = 10.0) -> "Dovecot":
        dovecot = shutil.which("dovecot") or "/usr/sbin/dovecot"
        if not os.path.exists(dovecot):
            raise RuntimeError("dovecot is not installed (Debian dovecot-imapd dovecot-pop3d; make peers)")
        # the daemonised master keeps the inherited stdio open: never give it a pipe (that would hang)
        with open(os.path.join(self.base, "start.log"), "wb") as out:
            subprocess.run([dovecot, "-c", self.conf], check=True, stdin=subprocess.DEVNULL,
                           stdout=out, stderr=out, timeout=timeout)
        pidfile = os.path.join(self.base, "run", "master.pid")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ports_open = self._port_open(self.imap_port) and self._port_open(self.pop3_port)
            if os.path.exists(pidfile) and ports_open:
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"dovecot did not start: {self.log()}")
        with open(pidfile) as fh:
            self.pid = int(fh.read().strip())
        self.clear_penalty()
        return self

    def clear_penalty(self) -> None:
        try:
            os.unlink(os.path.join(self.base, "run", "anvil-auth-penalty"))
        except OSError:
            pass

    @staticmethod
    def _port_open(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def log(self) -> str:
        try:
            with open(os.path.join(self.base, "dovecot.log"), errors="replace") as fh:
                return fh.read()[-4000:]
        except OSError:
            return ""

    def _ours(self) -> bool:
        """The pid read from our pidfile still is our master (its command line names our config), not a
        pid the kernel gave to another process after ours died."""
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as fh:
                return self.conf.encode() in fh.read().split(b"\0")
        except OSError:
            return False

    def stop(self) -> None:
        """Stops the Dovecot this object started, by its pid, and nothing else (never by name: a system
        Dovecot on the same machine is none of our business). Does not wait: the master takes ~6 s to
        exit after SIGTERM, and nothing of a later test depends on it (fresh ports, fresh directory)."""
        if self.pid and self._ours():
            try:
                # the master daemonises with setsid(): when it leads its own group, that group is the master
                # and its children only; otherwise signal the master alone, which stops its children
                if os.getpgid(self.pid) == self.pid:
                    try:
                        os.killpg(self.pid, signal.SIGTERM)
                    except PermissionError:      # not one member of the group may be signalled by us
                        os.kill(self.pid, signal.SIGTERM)
                else:
                    os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.pid = None
        if not os.environ.get("RELAYBOX_KEEP_PEERS"):
            shutil.rmtree(self.base, ignore_errors=True)

    # ---- fixtures' helpers ---------------------------------------------------------------------------
    def add_user(self, user: str, password: str) -> None:
        """Add a user. Dovecot looks at the passwd-file at most once a second, so a user added while it runs
        becomes usable up to a second later: tests that need many users pre-create them (``users=``)."""
        with open(os.path.join(self.base, "users"), "a") as fh:
            fh.write(f"{user}:{{PLAIN}}{password}::::::\n")
        if self.pid:
            time.sleep(1.1)

    def imap(self, user: str, password: str) -> imaplib.IMAP4:
        self.clear_penalty()
        m = imaplib.IMAP4("127.0.0.1", self.imap_port)
        m.login(user, password)
        return m

    def append(self, user: str, password: str, raw: bytes, folder: str = "INBOX", flags: str = "",
               date: float | None = None) -> None:
        """APPEND (``date``: the internal date, a Unix time; default now)."""
        m = self.imap(user, password)
        try:
            when = imaplib.Time2Internaldate(date) if date else None
            typ, data = m.append(folder, flags or None, when, raw)
            if typ != "OK":
                raise RuntimeError(f"APPEND failed: {data}")
        finally:
            m.logout()

    def create(self, user: str, password: str, folder: str) -> None:
        m = self.imap(user, password)
        try:
            m.create(folder)
        finally:
            m.logout()

    def uids(self, user: str, password: str, folder: str = "INBOX", criteria: str = "ALL") -> list[int]:
        m = self.imap(user, password)
        try:
            m.select(folder)
            typ, data = m.uid("SEARCH", None, criteria)
            return [int(x) for x in data[0].split()]
        finally:
            m.logout()

    def ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.cert)
        return ctx
