"""Campaign targets: where a routed inbound message goes. Each delivery carries the inbound id as its
idempotency key, so a redelivery after a crash is recognisable (maildir: same file name; webhook:
``Idempotency-Key``; smtp: the relay queue id is reserved on the inbound message before the enqueue, see
``PollerService._forward``).

A target raises ``TargetError`` on failure (retried with backoff, then quarantine); it returns a short
result string recorded on the inbound row (file name, HTTP status, queue id).
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import hashlib
import hmac
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import aiohttp
from prometheus_client import Counter

from poller.config import CampaignConfig
from poller.router import MessageView
from relay.envelope import NewMessage
from relay.intake.data import has_bare_cr_or_lf, normalize_eol

WEBHOOK_DELIVERIES = Counter("relaybox_poller_webhook_deliveries", "Campaign webhook POSTs by result",
                             ["campaign", "result"])


_HOST = socket.gethostname()
_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    _libc.syncfs.argtypes = [ctypes.c_int]
except (OSError, AttributeError):
    _libc = None


class TargetError(Exception):
    """The target did not accept the message (temporary from our side: retried, then quarantined)."""


def document(view: MessageView, *, inbound_id: int, channel: str, campaign: str, filter_index: int | None,
             attachments: str = "base64") -> dict:
    atts = []
    for name, ctype, data in view.attachments():
        item = {"name": name, "type": ctype, "size": len(data)}
        if attachments == "base64":
            item["content_base64"] = base64.b64encode(data).decode()
        atts.append(item)
    headers = [[k, v] for k, v in view.fields()]
    return {
        "id": inbound_id, "channel": channel, "campaign": campaign, "filter": filter_index,
        "message_id": view.header("Message-ID"), "from": view.sender, "to": view.addresses("To"),
        "cc": view.addresses("Cc"), "subject": view.subject, "date": view.header("Date"),
        "headers": headers, "text": view.text, "html": view.html, "attachments": atts,
        "raw_base64": base64.b64encode(view.raw).decode(),
    }


def sign(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


async def deliver_webhook(c: CampaignConfig, doc: dict, inbound_id: int,
                          session: aiohttp.ClientSession) -> str:
    body = json.dumps(doc).encode()
    ts = str(int(time.time()))
    headers = {"Content-Type": "application/json", "Idempotency-Key": f"relaybox-inbound-{inbound_id}",
               "X-Relaybox-Timestamp": ts, "User-Agent": "relaybox-poller"}
    if c.secret:
        headers["X-Relaybox-Signature"] = sign(c.secret, ts, body)
    try:
        async with session.post(c.url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=c.timeout)) as resp:
            if 200 <= resp.status < 300:
                WEBHOOK_DELIVERIES.labels(c.name, "accepted").inc()
                return f"HTTP {resp.status}"
            text = (await resp.text())[:200]
            WEBHOOK_DELIVERIES.labels(c.name, "rejected").inc()
            raise TargetError(f"webhook {c.url} answered {resp.status}: {text}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        WEBHOOK_DELIVERIES.labels(c.name, "error").inc()
        raise TargetError(f"webhook {c.url}: {type(exc).__name__}: {exc}") from exc


def maildir_path(c: CampaignConfig, root: str) -> str:
    return c.path or os.path.join(root, c.name)


@dataclass(frozen=True)
class Staged:
    """A message for a campaign's Maildir, accepted but not yet written: ``publish_maildir`` writes,
    syncs and renames into new/ a whole batch of them, before their acceptances are committed."""
    inbound_id: int
    name: str                # holds the inbound id: a redelivery finds the file instead of writing a copy
    base: str
    raw: bytes

    @property
    def newdir(self) -> str:
        return os.path.join(self.base, "new")


def ensure_maildir(c: CampaignConfig, root: str) -> str:
    """The campaign's Maildir, with tmp/, new/ and cur/ created if missing (``TargetError`` when they
    cannot be: counted as a failed delivery)."""
    base = maildir_path(c, root)
    try:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
    except OSError as exc:
        raise TargetError(f"maildir {base}: {exc}") from exc
    return base


def stage_maildir(c: CampaignConfig, raw: bytes, inbound_id: int, root: str) -> Staged:
    """The message's file in the campaign's Maildir, to be written with its batch (no I/O here)."""
    return Staged(inbound_id, f"relaybox-{inbound_id}.{_HOST}", maildir_path(c, root), raw)


FSYNC_EACH = 8      # a batch of at most this many files is synced file by file, a bigger one with syncfs()


def publish_maildir(items: Sequence[Staged], first_attempt: Collection[int] = ()) -> None:
    """Make a batch of messages durable and visible: each written to tmp/, synced, renamed into new/, then
    one fsync per new/ directory. Only after this returns may their acceptance be committed. Blocking:
    run it in a worker thread, one call per batch (a file creation costs up to a millisecond on a busy
    disk, too much for the event loop's thread).

    A message delivered before (a crash or a failed commit came between its publication and the recording
    of its acceptance) is found under its name in new/ or cur/ and not written again; the messages of
    ``first_attempt`` (inbound ids stored by this very poll, never handed to a campaign before) need no
    such look-up. Syncing: up to FSYNC_EACH files one fsync() each; more, one syncfs() per file system (an
    fsync costs a journal commit, several ms on a busy disk; syncfs() also writes what other programs left
    dirty on that file system, so it is kept for big batches, where it is the cheaper of the two)."""
    todo = _write_tmp(items, first_attempt)
    if not todo:
        return
    _sync_files([tmp for _, tmp in todo])
    for s, tmp in todo:
        os.rename(tmp, os.path.join(s.newdir, s.name))
    fsync_dirs({s.newdir for s, _ in todo})


def _write_tmp(items: Sequence[Staged], first_attempt: Collection[int]) -> list[tuple[Staged, str]]:
    """Write into tmp/ the messages not delivered before; returns them with their tmp/ paths."""
    todo: list[tuple[Staged, str]] = []
    for base, group in _by_base(items).items():
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        there = _delivered_before(base, [s.name for s in group if s.inbound_id not in first_attempt])
        for s in group:
            if s.name in there:
                continue
            tmp = os.path.join(base, "tmp", f"{s.name}.{os.getpid()}")
            with open(tmp, "wb") as fh:
                fh.write(s.raw)
            todo.append((s, tmp))
    return todo


def _by_base(items: Sequence[Staged]) -> dict[str, list[Staged]]:
    out: dict[str, list[Staged]] = {}
    for s in items:
        out.setdefault(s.base, []).append(s)
    return out


def _delivered_before(base: str, names: list[str]) -> set[str]:
    """Which of ``names`` are already in the Maildir: in new/, or in cur/ (where a reader moved them,
    adding ":2,<flags>" to the name)."""
    if not names:
        return set()
    found = {n for n in names if os.path.exists(os.path.join(base, "new", n))}
    rest = [n for n in names if n not in found]
    if rest:
        for f in _listdir(os.path.join(base, "cur")):
            found.update(n for n in rest if f.startswith(n))
    return found


def _sync_files(paths: list[str]) -> None:
    if len(paths) > FSYNC_EACH and _libc is not None:
        devices: dict[int, str] = {}
        for path in paths:
            devices.setdefault(os.stat(path).st_dev, path)
        if all(_syncfs(probe) for probe in devices.values()):
            return
    for path in paths:                     # few files, or no syncfs(): one fsync per file
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(probe: str) -> bool:
    fd = os.open(probe, os.O_RDONLY)
    try:
        return _libc is not None and _libc.syncfs(fd) == 0
    finally:
        os.close(fd)


def fsync_dirs(dirs: Iterable[str]) -> None:
    for d in dirs:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def smtp_forward_message(c: CampaignConfig, raw: bytes, channel_address: str) -> NewMessage:
    if has_bare_cr_or_lf(raw):
        raw = normalize_eol(raw)
    return NewMessage(sender=c.sender or channel_address or "", recipients=[c.forward_to], body=raw,
                      client_ip="", client_helo="poller", auth_user=None)

