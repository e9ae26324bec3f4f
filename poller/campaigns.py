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
    headers = []
    for k, v in view.head.items():
        try:
            headers.append([k, str(v)])
        except Exception:  # noqa: BLE001 - keep the raw text of a malformed header
            headers.append([k, repr(v)])
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


def deliver_maildir(c: CampaignConfig, raw: bytes, inbound_id: int, root: str) -> tuple[str, str]:
    """One message, durable on return: stage + publish (see below); returns (file name, new/ directory)."""
    staged = stage_maildir(c, raw, inbound_id, root)
    publish_maildir([staged])
    return staged.name, staged.newdir


@dataclass
class Staged:
    """A message written to a Maildir's tmp/ (not yet synced): ``publish_maildir`` makes it visible."""
    name: str
    newdir: str
    tmp: str | None          # None: a redelivery found it already delivered


def stage_maildir(c: CampaignConfig, raw: bytes, inbound_id: int, root: str) -> Staged:
    """Write the message into tmp/ under a name holding the inbound id (so a redelivery of the same
    message finds it already there instead of writing a copy). Nothing is synced yet."""
    base = maildir_path(c, root)
    newdir = os.path.join(base, "new")
    name = f"relaybox-{inbound_id}.{_HOST}"
    try:
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(base, sub), exist_ok=True)
        if os.path.exists(os.path.join(newdir, name)) or any(
                f.startswith(name) for f in _listdir(os.path.join(base, "cur"))):
            return Staged(name, newdir, None)
        tmp = os.path.join(base, "tmp", f"{name}.{os.getpid()}")
        with open(tmp, "wb") as fh:
            fh.write(raw)
    except OSError as exc:
        raise TargetError(f"maildir {base}: {exc}") from exc
    return Staged(name, newdir, tmp)


def publish_maildir(items: list[Staged]) -> None:
    """Make staged messages durable and visible, for a whole batch at once: one syncfs() per file system
    (instead of one fsync per message: 7 ms each here), then the renames into new/, then one fsync per
    new/ directory. Only after this returns may their acceptance be committed."""
    todo = [(s, s.tmp) for s in items if s.tmp is not None]
    if not todo:
        return
    synced: set[int] = set()
    for _, tmp in todo:
        dev = os.stat(tmp).st_dev
        if dev not in synced:
            _syncfs_or_fsync(tmp, [t for _, t in todo if os.stat(t).st_dev == dev])
            synced.add(dev)
    for s, tmp in todo:
        os.rename(tmp, os.path.join(s.newdir, s.name))
    fsync_dirs({s.newdir for s, _ in todo})


def _syncfs_or_fsync(probe: str, paths: list[str]) -> None:
    fd = os.open(probe, os.O_RDONLY)
    try:
        if _libc is not None and _libc.syncfs(fd) == 0:
            return
    finally:
        os.close(fd)
    for path in paths:                     # no syncfs(): one fsync per file
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dirs(dirs) -> None:
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

