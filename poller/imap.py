"""A thin IMAP client over aioimaplib: TLS modes, LOGIN/XOAUTH2, UID-only operations, guarded IDLE.

Every call has a timeout; a NO/BAD reply raises ``MailboxError`` carrying the server's own text (that is
what "Validate" shows an admin). aioimaplib has no STARTTLS: we send the command and upgrade the
transport with ``loop.start_tls`` (shared/PEERS.md).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
from typing import Any

import aioimaplib
from aioimaplib.aioimaplib import Command

from poller import imap_wire
from relay.tls import client_context

_UIDVALIDITY = re.compile(rb"\[UIDVALIDITY (\d+)\]")
_FETCH_UID = re.compile(rb"\bUID (\d+)")
_FETCH_SIZE = re.compile(rb"\bRFC822\.SIZE (\d+)")
SIZE_CHUNK = 2000
_LIST_RE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$')


class MailboxError(Exception):
    """The server refused something or could not be reached; ``str()`` is the reason for admins."""


def _text(resp: Any) -> str:
    lines = [ln.decode("utf-8", "replace") if isinstance(ln, (bytes, bytearray)) else str(ln)
             for ln in resp.lines]
    return " ".join(x for x in lines if x).strip() or str(resp.result)


def _ok(resp: Any, what: str) -> Any:
    if resp.result != "OK":
        raise MailboxError(f"{what}: {resp.result} {_text(resp)}")
    return resp


class MailServer:
    """Where and how to reach a mailbox server (shared by the IMAP and POP3 sessions)."""

    def __init__(self, host: str, port: int, *, tls: str, server_name: str = "", verify: bool = True,
                 ca_file: str = "", timeout: float = 60.0):
        self.host, self.port, self.tls = host, port, tls
        self.server_name = server_name or host
        self.ctx = client_context(verify, ca_file) if tls != "none" else None
        self.timeout = timeout


class IMAPSession(MailServer):
    def __init__(self, host: str, port: int, **kw: Any):
        super().__init__(host, port, **kw)
        self.client: aioimaplib.IMAP4 | None = None
        self.selected: tuple[str, int] | None = None     # (folder, UIDVALIDITY)
        self.lost = asyncio.Event()
        self.in_idle = False

    @property
    def _c(self) -> Any:
        """The connected aioimaplib client."""
        if self.client is None:
            raise MailboxError(f"{self.host}: not connected")
        return self.client

    async def connect(self) -> None:
        def lost(_exc: Exception | None = None) -> None:
            self.lost.set()

        try:
            implicit = self.tls == "implicit"
            self.client = _IMAP4(self.host, self.port, timeout=self.timeout, conn_lost_cb=lost,
                                 ssl_context=self.ctx if implicit else None,
                                 server_hostname=self.server_name if implicit else None)
            await self._c.wait_hello_from_server()
            if self.tls == "starttls":
                await self._starttls()
            await self._w(self._c.protocol.capability())
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as exc:
            raise MailboxError(f"cannot connect to {self.host}:{self.port}:"
                               f" {exc or type(exc).__name__}") from exc

    async def _starttls(self) -> None:
        proto = self._c.protocol
        if self.ctx is None:
            raise MailboxError("STARTTLS without a TLS context")
        await self._w(proto.capability())
        if "STARTTLS" not in proto.capabilities:
            raise MailboxError(f"{self.host} does not offer STARTTLS")
        resp = await self._w(proto.execute(Command("STARTTLS", proto.new_tag(), loop=proto.loop)))
        _ok(resp, "STARTTLS")
        loop = asyncio.get_running_loop()
        transport = await loop.start_tls(proto.transport, proto, self.ctx, server_hostname=self.server_name)
        proto.transport = transport

    async def _w(self, coro: Any, timeout: float | None = None) -> Any:
        """Await an aioimaplib call with a deadline. Not wait_for(): on timeout it waits for the cancelled
        call to finish, and a call stuck on a dead server may never do so (seen in IDLE)."""
        limit = timeout or self.timeout
        task = asyncio.ensure_future(coro)
        # aioimaplib does not fail a pending command when the connection drops: the loss ends the wait too
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, timeout=limit, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task not in done:
            task.cancel()
            if self.lost.is_set():
                raise MailboxError(f"{self.host}: connection lost")
            raise MailboxError(f"{self.host}: no answer within {limit:.0f} s")
        return task.result()

    @property
    def capabilities(self) -> set[str]:
        return set(self.client.protocol.capabilities) if self.client is not None else set()

    async def login(self, user: str, password: str) -> None:
        resp = await self._w(self._c.login(user, password))
        _ok(resp, "login failed")
        await self._w(self._c.protocol.capability())

    async def xoauth2(self, user: str, token: str) -> None:
        """AUTHENTICATE XOAUTH2 with an initial response. A refusal comes as a continuation carrying a JSON
        error, which the client must answer with an empty line before the tagged NO (aioimaplib's own
        ``xoauth2`` does not, and waits for ever)."""
        proto = self._c.protocol
        blob = base64.b64encode(f"user={user}\x01auth=Bearer {token}\x01\x01".encode()).decode()
        cmd = _SaslCommand("AUTHENTICATE", proto.new_tag(), "XOAUTH2", blob, loop=proto.loop)
        cmd.transport = proto.transport
        resp = await self._w(proto.execute(cmd, scrub=blob))
        if resp.result != "OK":
            detail = _sasl_error(resp.lines)
            lines = [ln for ln in resp.lines if not bytes(ln).startswith(b"+")]
            text = " ".join(bytes(ln).decode("utf-8", "replace") for ln in lines if ln).strip()
            raise MailboxError(f"XOAUTH2 failed: {resp.result} {text}{detail}")
        proto.state = aioimaplib.AUTH
        await self._w(proto.capability())

    async def select(self, folder: str) -> int:
        """Select ``folder`` (always a real SELECT: that is how a UIDVALIDITY change is seen); returns its
        UIDVALIDITY."""
        self.selected = None
        resp = _ok(await self._w(self._c.select(_quote(folder))), f"cannot select {folder}")
        for line in resp.lines:
            m = _UIDVALIDITY.search(bytes(line)) if isinstance(line, (bytes, bytearray)) else None
            if m:
                self.selected = (folder, int(m.group(1)))
                return self.selected[1]
        raise MailboxError(f"{folder}: server sent no UIDVALIDITY")

    async def ensure_selected(self, folder: str) -> int:
        """Select ``folder`` unless it already is (a SELECT makes the server rescan a big mailbox: doing it
        per batch made a 10,000 message sync quadratic)."""
        if self.selected is not None and self.selected[0] == folder:
            return self.selected[1]
        return await self.select(folder)

    async def folders(self) -> list[tuple[str, set[str]]]:
        resp = _ok(await self._w(self._c.list('""', "*")), "LIST")
        out: list[tuple[str, set[str]]] = []
        for line in resp.lines:
            if not isinstance(line, (bytes, bytearray)):
                continue
            m = _LIST_RE.match(bytes(line))
            if not m:
                continue
            name = m.group("name").decode("utf-8", "replace").strip()
            if name.startswith('"') and name.endswith('"'):
                name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            flags = set(m.group("flags").decode().split())
            out.append((name, flags))
        return out

    async def uids_after(self, last_uid: int) -> list[int]:
        # "n:*" always includes the highest UID even when it is <= last_uid
        return [u for u in await self.search(f"UID {last_uid + 1}:*") if u > last_uid]

    async def search(self, criteria: str) -> list[int]:
        """UID SEARCH ``criteria`` (e.g. ``UNSEEN``, ``SINCE 1-Jan-2025``): the UIDs, ascending."""
        resp = _ok(await self._w(self._c.uid_search(criteria, charset=None)), "UID SEARCH")
        uids = []
        for line in resp.lines:
            if not isinstance(line, (bytes, bytearray)):
                continue
            words = bytes(line).split()
            if words[:1] == [b"SEARCH"]:
                words = words[1:]
            if words and all(w.isdigit() for w in words):
                uids += [int(w) for w in words]
        return sorted(uids)

    async def sizes_after(self, last_uid: int) -> dict[int, int]:
        """{uid: RFC822.SIZE} of the messages above ``last_uid`` (the sizes let oversized messages be
        quarantined unfetched and batches be cut by bytes)."""
        return await self.sizes_of(await self.uids_after(last_uid))

    async def sizes_of(self, uids: list[int]) -> dict[int, int]:
        """{uid: RFC822.SIZE} of ``uids`` (ascending), asked SIZE_CHUNK UIDs at a time (a bounded answer;
        ``imap_wire`` reads a long one linearly, aioimaplib's own reader overflowed the stack on it)."""
        out: dict[int, int] = {}
        for i in range(0, len(uids), SIZE_CHUNK):
            chunk = uid_set(uids[i:i + SIZE_CHUNK])
            resp = _ok(await self._uid_fetch(chunk, "(UID RFC822.SIZE)"), "UID FETCH RFC822.SIZE")
            for line in resp.lines:
                if not isinstance(line, (bytes, bytearray)) or b"FETCH" not in line:
                    continue
                uid, size = _FETCH_UID.search(line), _FETCH_SIZE.search(line)
                if uid and size:
                    out[int(uid.group(1))] = int(size.group(1))
        return {u: out[u] for u in uids if u in out}      # expunged meanwhile: absent

    async def fetch(self, uids: list[int]) -> dict[int, bytes]:
        """UID FETCH BODY.PEEK[] (never sets \\Seen) for a batch; returns {uid: raw}."""
        if not uids:
            return {}
        resp = _ok(await self._uid_fetch(uid_set(uids), "(UID BODY.PEEK[])", self.timeout * 4), "UID FETCH")
        out: dict[int, bytes] = {}
        current = None
        for line in resp.lines:
            if isinstance(line, bytearray):
                if current is not None:
                    out[current] = bytes(line)
                    current = None
                continue
            m = _FETCH_UID.search(line) if isinstance(line, bytes) else None
            if m and b"FETCH" in line:
                current = int(m.group(1))
        return out

    async def _uid_fetch(self, uids: str, items: str, timeout: float | None = None) -> Any:
        """UID FETCH through ``imap_wire.FetchCommand`` (aioimaplib's rescans its lines per line read)."""
        proto = self._c.protocol
        cmd = imap_wire.FetchCommand(proto.new_tag(), uids, items, prefix="UID", loop=proto.loop,
                                     timeout=self.timeout)
        return await self._w(proto.execute(cmd), timeout=timeout)

    async def mark_seen(self, uids: str) -> None:
        _ok(await self._w(self._c.uid("store", str(uids), "+FLAGS.SILENT (\\Seen)")), "STORE \\Seen")

    async def move(self, uid: str, folder: str) -> None:
        if "MOVE" in self.capabilities:
            _ok(await self._w(self._c.uid("move", str(uid), _quote(folder))), f"MOVE to {folder}")
            return
        _ok(await self._w(self._c.uid("copy", str(uid), _quote(folder))), f"COPY to {folder}")
        await self.delete(uid)

    async def delete(self, uid: str) -> None:
        _ok(await self._w(self._c.uid("store", str(uid), "+FLAGS.SILENT (\\Deleted)")),
            "STORE \\Deleted")
        if "UIDPLUS" in self.capabilities:
            _ok(await self._w(self._c.uid("expunge", str(uid))), "UID EXPUNGE")
        else:
            _ok(await self._w(self._c.expunge()), "EXPUNGE")

    async def idle(self, timeout: float) -> bool:
        """Wait for the server to announce a change (True) or for ``timeout`` (False)."""
        self.in_idle = True
        idle_task = await self._w(self._c.idle_start(timeout=timeout))
        waiting = asyncio.ensure_future(self._c.wait_server_push(timeout=timeout))
        lost = asyncio.ensure_future(self.lost.wait())
        try:                     # a connection lost while idling ends the wait at once, not at the timeout
            await asyncio.wait({waiting, lost}, timeout=timeout + 5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not waiting.done():
                waiting.cancel()
        if self.lost.is_set():
            raise MailboxError(f"{self.host}: connection lost during IDLE")
        try:
            push = waiting.result() if waiting.done() and not waiting.cancelled() else None
        except (MailboxError, asyncio.TimeoutError):
            push = None
        push = push or [b"stop_wait_server_push"]
        changed = any(isinstance(p, bytes) and (b"EXISTS" in p or b"RECENT" in p) for p in (push or []))
        try:
            self._c.idle_done()
            done, _ = await asyncio.wait({idle_task}, timeout=10)
            if not done:
                raise MailboxError("IDLE did not end cleanly")
        except MailboxError:
            raise
        except Exception:  # noqa: BLE001 - a broken IDLE ends the session
            raise MailboxError("IDLE did not end cleanly") from None
        self.in_idle = False
        return changed

    async def logout(self) -> None:
        if self.client is None:
            return
        try:
            if not self.lost.is_set() and not self.in_idle and \
                    self.client.protocol.state in ("AUTH", "SELECTED", "NONAUTH"):
                # never wait_for() an aioimaplib coroutine here: on timeout wait_for waits for the
                # cancellation, which aioimaplib may not honour; wait() with a timeout always returns
                task = asyncio.ensure_future(self.client.logout())
                done, _ = await asyncio.wait({task}, timeout=3)
                if not done:
                    task.cancel()
        except Exception:  # noqa: BLE001 - best effort (an interrupted IDLE just closes the socket)
            pass
        finally:
            try:
                self.client.protocol.transport.close()
            except Exception:  # noqa: BLE001
                pass
            for task in list(getattr(self.client, "tasks", ())):    # an interrupted IDLE's own tasks
                task.cancel()


class _IMAP4(aioimaplib.IMAP4):
    """aioimaplib's client with our linear response reader (``imap_wire``), and implicit TLS to
    ``server_hostname`` (SNI and the certificate's name), which aioimaplib itself always takes from the
    host it connects to."""

    def __init__(self, host: str, port: int, *, server_hostname: str | None, **kw: Any):
        self._server_hostname = server_hostname
        super().__init__(host, port, **kw)

    def create_client(self, host: str, port: int, loop: Any, conn_lost_cb: Any = None,
                      ssl_context: ssl.SSLContext | None = None) -> None:
        local_loop = loop if loop is not None else asyncio.get_running_loop()
        self.protocol = imap_wire.Protocol(local_loop, conn_lost_cb)
        self._client_task = local_loop.create_task(local_loop.create_connection(
            lambda: self.protocol, host, port, ssl=ssl_context,
            server_hostname=self._server_hostname if ssl_context is not None else None))


class _SaslCommand(Command):
    """AUTHENTICATE that answers the server's error continuation with the empty line SASL asks for."""

    transport = None
    _answered = False

    def flush(self) -> None:
        if not self._answered and self.transport is not None and any(
                bytes(ln).startswith(b"+") for ln in self._resp_lines):
            self._answered = True
            self.transport.write(b"\r\n")


def _sasl_error(lines: Any) -> str:
    """The JSON of an XOAUTH2 error continuation (``{"status":"401",...}``), decoded for the admin."""
    for ln in lines:
        ln = bytes(ln)
        if ln.startswith(b"+"):
            try:
                data = json.loads(base64.b64decode(ln[1:].strip()))
            except (ValueError, TypeError):
                return ""
            return f" (server: {json.dumps(data, sort_keys=True)})" if data else ""
    return ""


def uid_set(uids: list[int]) -> str:
    """[1,2,3,7,9,10] -> "1:3,7,9:10" (one short command for a whole batch)."""
    ranges: list[list[int]] = []
    for u in sorted(uids):
        if ranges and u == ranges[-1][1] + 1:
            ranges[-1][1] = u
        else:
            ranges.append([u, u])
    return ",".join(f"{a}:{b}" if b != a else str(a) for a, b in ranges)


def _quote(folder: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./-]+", folder):
        return folder
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'
