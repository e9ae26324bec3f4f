"""Poller benchmark on a local Dovecot: first full sync of a big mailbox into a maildir campaign, the same
into a webhook campaign whose receiver (aiohttp, answering 200) runs in its own process on this machine, and
the IDLE latency from APPEND to the message being in the campaign's Maildir.

Reference in the same run: the raw fetch rate of Python's imaplib (UID FETCH of the same messages in the
same batches, nothing stored) — the ceiling of what any IMAP poller can do against this server here.

    .venv/bin/python bench/poller.py [--messages 10000] [--idle-samples 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from poller import channels  # noqa: E402
from poller.config import CampaignConfig, ChannelConfig  # noqa: E402
from poller.fetcher import run_once  # noqa: E402
from poller.runner import PollerService  # noqa: E402
from relaybox.settings import parse  # noqa: E402
from store import Store  # noqa: E402
from tests.peers.dovecot import Dovecot  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")

USER = "bench@org.test"


def fill_maildir(dc: Dovecot, n: int) -> int:
    """Write n messages (1 KB .. 200 KB, mostly small) straight into the user's Maildir/new."""
    rng = random.Random(7)
    root = os.path.join(dc.mail, USER, "Maildir")
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    total = 0
    for i in range(n):
        size = rng.choice([1_000] * 6 + [10_000] * 3 + [200_000])
        line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
        body = line * (size // len(line))
        raw = (f"From: c{i}@cust.test\r\nTo: {USER}\r\nSubject: bench {i}\r\nMessage-ID: <b{i}@cust.test>\r\n"
               f"\r\n").encode() + body
        with open(os.path.join(root, "new", f"{1700000000 + i}.M{i}P1.bench"), "wb") as fh:
            fh.write(raw)
        total += len(raw)
    for dirpath, _, files in os.walk(os.path.join(dc.mail, USER)):
        shutil.chown(dirpath, "nobody", "nogroup")
        for f in files:
            shutil.chown(os.path.join(dirpath, f), "nobody", "nogroup")
    return total


def imaplib_ceiling(dc: Dovecot, batch: int) -> tuple[int, float]:
    m = dc.imap(USER, "pw")
    m.select("INBOX", readonly=True)
    uids = m.uid("SEARCH", None, "ALL")[1][0].split()
    t0 = time.perf_counter()
    for i in range(0, len(uids), batch):
        m.uid("FETCH", b",".join(uids[i:i + batch]).decode(), "(UID BODY.PEEK[])")
    dt = time.perf_counter() - t0
    m.logout()
    return len(uids), dt


RECEIVER = r"""
import sys
from aiohttp import web
async def hook(request):
    await request.read()
    return web.json_response({"ok": True})
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/hook", hook)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


async def full_sync(dc: Dovecot, workdir: str, batch: int, campaign: CampaignConfig,
                    name: str = "bench") -> tuple[int, float]:
    st = Store(os.path.join(workdir, f"{name}.db")).open()
    settings = parse({"poller": {"maildir_root": os.path.join(workdir, "maildir"), "enabled": False,
                                 "fetch_batch": batch}})
    svc = PollerService(st, settings)
    ch = ChannelConfig(name=name, host="127.0.0.1", port=dc.imap_port, tls="none", user=USER,
                       password="pw", default_campaign=campaign.name, after="seen")
    await channels.seed(st.inbound, [campaign], [ch])
    await svc.start()
    t0 = time.perf_counter()
    res = await run_once(st.inbound, ch, svc.pcfg, svc.deliver, svc.connect, time.time())
    dt = time.perf_counter() - t0
    await svc.stop()
    st.close()
    return res.delivered, dt


async def idle_latency(dc: Dovecot, workdir: str, samples: int) -> list[float]:
    st = Store(os.path.join(workdir, "idle.db")).open()
    root = os.path.join(workdir, "idle-maildir")
    settings = parse({"poller": {"maildir_root": root}})
    svc = PollerService(st, settings)
    ch = ChannelConfig(name="idle", host="127.0.0.1", port=dc.imap_port, tls="none", user="idle@org.test",
                       password="pw", default_campaign="live", poll_interval=60)
    await channels.seed(st.inbound, [CampaignConfig("live")], [ch])
    await svc.start()
    await asyncio.sleep(1.5)
    out = []
    newdir = os.path.join(root, "live", "new")
    for i in range(samples):
        before = len(os.listdir(newdir)) if os.path.isdir(newdir) else 0
        raw = f"Subject: live {i}\r\nMessage-ID: <l{i}@x>\r\n\r\nping\r\n".encode()
        await asyncio.to_thread(dc.append, "idle@org.test", "pw", raw)
        t0 = time.perf_counter()
        while (len(os.listdir(newdir)) if os.path.isdir(newdir) else 0) <= before:
            await asyncio.sleep(0.005)
            if time.perf_counter() - t0 > 30:
                raise RuntimeError("IDLE delivery timed out")
        out.append(time.perf_counter() - t0)
        await asyncio.sleep(0.1)
    await svc.stop()
    st.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--idle-samples", type=int, default=50)
    args = ap.parse_args()
    dc = Dovecot(users={USER: "pw", "idle@org.test": "pw"}).start()
    workdir = tempfile.mkdtemp(prefix="relaybox-pollbench-")
    try:
        size = fill_maildir(dc, args.messages)
        pcfg = parse({"poller": {"fetch_batch": args.batch}}).section("poller")
        print(f"mailbox: {args.messages} messages, {size / 1e6:.0f} MB (1 KB .. 200 KB); poller.fetch_batch"
              f" {pcfg.fetch_batch}, parallel_deliveries {pcfg.parallel_deliveries}; load average"
              f" {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        n, dt_ref = imaplib_ceiling(dc, args.batch)
        print(f"imaplib UID FETCH only (ceiling): {n / dt_ref:8.0f} msgs/s  ({dt_ref:.1f} s)")
        delivered, dt = asyncio.run(full_sync(dc, workdir, args.batch, CampaignConfig("inbox")))
        print(f"relaybox first full sync:         {delivered / dt:8.0f} msgs/s  ({dt:.1f} s, {delivered}"
              " delivered"
              f" to maildir, marked \\Seen)  ratio {dt_ref / dt:.2f} of the ceiling")
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
        try:
            wait_port(port)
            hook = CampaignConfig("hook", kind="webhook", url=f"http://127.0.0.1:{port}/hook",
                                  secret="bench-webhook-secret-0123456789")
            delivered, dt = asyncio.run(full_sync(dc, workdir, args.batch, hook, name="bench-hook"))
        finally:
            receiver.terminate()
            receiver.wait(10)
        print(f"relaybox first full sync:         {delivered / dt:8.0f} msgs/s  ({dt:.1f} s, {delivered}"
              f" delivered to a webhook on this machine)  ratio {dt_ref / dt:.2f} of the ceiling")
        lat = asyncio.run(idle_latency(dc, workdir, args.idle_samples))
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
        print(f"IDLE latency APPEND -> maildir:   median {statistics.median(lat) * 1000:.0f} ms,"
              f" p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms ({len(lat)} samples)")
        print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    finally:
        dc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
