"""AUTH abuse figures against a relaybox subprocess (default settings unless --no-throttle).

1. One client sends wrong AUTH PLAIN passwords, reconnecting whenever it is disconnected, until it has made
   30 attempts or --budget seconds have passed: what the 30 attempts cost it (time, disconnects, 454s).
2. 20 brute-force sessions (wrong passwords, known and unknown users, reconnecting) from 127.0.0.5 (not on
   the allowlist, so the per-address session and connection-rate limits apply, as for a real attacker) while
   another client on 127.0.0.2 sends NOOP every 20 ms: that client's NOOP and greeting latency.
   --no-throttle sets the delays to 0 and the lockout/disconnect limits out of reach, so every attempt
   costs a real scrypt run: this shows the loop is not blocked by hashing itself.

    .venv/bin/python bench/auth_abuse.py [--budget 40] [--seconds 10] [--no-throttle]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import statistics
import time

from _common import TempRelaybox


def plain(user: str, pw: str) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{pw}".encode()) + b"\r\n"


async def session(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    banner = await r.readline()
    return r, w, banner


async def reply(r: asyncio.StreamReader) -> bytes:
    while True:
        line = await r.readline()
        if not line or line[3:4] != b"-":
            return line


async def ehlo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(b"EHLO bench.test\r\n")
    await reply(r)


async def thirty_attempts(port: int, budget: float) -> dict[str, float]:
    attempts = disconnects = locked = 0
    t0 = time.monotonic()
    r = w = None
    while attempts < 30 and time.monotonic() - t0 < budget:
        if w is None:
            r, w, banner = await session(port, "127.0.0.1")
            if not banner.startswith(b"220"):
                disconnects += 1
                w.close()
                w = None
                await asyncio.sleep(0.2)
                continue
            await ehlo(r, w)
        assert r is not None
        w.write(plain("app1", f"guess-{attempts}"))
        try:
            line = await asyncio.wait_for(reply(r), max(0.1, budget - (time.monotonic() - t0)))
        except asyncio.TimeoutError:
            break
        attempts += 1
        locked += line.startswith(b"454")
        if not line or r.at_eof():
            disconnects += 1
            w.close()
            w = None
            continue
        try:
            extra = await asyncio.wait_for(r.readline(), 0.05)      # a 421 after the reply = disconnect
        except asyncio.TimeoutError:
            extra = b""
        if extra.startswith(b"421") or (extra == b"" and r.at_eof()):
            disconnects += 1
            w.close()
            w = None
    if w is not None:
        w.close()
    return {"attempts": attempts, "seconds": time.monotonic() - t0, "disconnects": disconnects,
            "locked_replies": locked}


async def brute(port: int, stop: asyncio.Event, counter: list[int], i: int) -> None:
    """counter: [replies 535 (a real check), replies 454 (locked out, nothing checked), refused sessions]"""
    n = 0
    while not stop.is_set():
        try:
            r, w, banner = await session(port, "127.0.0.5")
        except OSError:
            await asyncio.sleep(0.1)
            continue
        if not banner.startswith(b"220"):
            counter[2] += 1
            w.close()
            await asyncio.sleep(0.1)
            continue
        await ehlo(r, w)
        while not stop.is_set():
            w.write(plain("app1" if n % 2 else f"ghost{i}", f"guess-{n}"))
            n += 1
            line = await reply(r)
            counter[0] += line.startswith(b"535")
            counter[1] += line.startswith(b"454")
            if not line or not line.startswith((b"535", b"454")):
                break
            if r.at_eof():
                break
        w.close()


async def latency_under_brute_force(port: int, seconds: float, sessions: int = 20) -> dict[str, float]:
    stop = asyncio.Event()
    counter = [0, 0, 0]
    tasks = [asyncio.create_task(brute(port, stop, counter, i)) for i in range(sessions)]
    await asyncio.sleep(1.0)                         # let the sessions get going
    r, w, _ = await session(port, "127.0.0.2")
    await ehlo(r, w)
    noop: list[float] = []
    greet: list[float] = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        t0 = time.perf_counter()
        w.write(b"NOOP\r\n")
        await reply(r)
        noop.append(time.perf_counter() - t0)
        if len(noop) % 25 == 0:
            t0 = time.perf_counter()
            _, w2, _ = await session(port, "127.0.0.2")
            greet.append(time.perf_counter() - t0)
            w2.close()
        await asyncio.sleep(0.02)
    stop.set()
    w.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    noop.sort()
    return {"checked": counter[0], "locked": counter[1], "refused": counter[2],
            "noop_p50_ms": statistics.median(noop) * 1000,
            "noop_p99_ms": noop[int(len(noop) * 0.99) - 1] * 1000, "noop_max_ms": noop[-1] * 1000,
            "greeting_max_ms": max(greet) * 1000 if greet else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budget", type=float, default=40.0, help="seconds allowed for the 30 attempts")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of the latency run")
    ap.add_argument("--no-throttle", action="store_true")
    args = ap.parse_args()
    smtp = {"require_tls_for_auth": False}
    if args.no_throttle:
        smtp.update({"auth_failure_delay": "0s", "auth_failure_delay_cap": "0s", "auth_lockout_after": 10**9,
                     "auth_max_failures_per_session": 10**9})
    sections = {"smtp": smtp, "[[smtp.users]]": [{"username": "app1", "password": "right-password"}]}
    mode = "throttling off (--no-throttle)" if args.no_throttle else "default settings"
    with TempRelaybox(sections) as relay:
        a = asyncio.run(thirty_attempts(relay.smtp_port, args.budget))
    print(f"[{mode}] 30 wrong AUTH attempts from one client: {a['attempts']} made in {a['seconds']:.1f} s, "
          f"{a['disconnects']} disconnects, {a['locked_replies']} answered 454 (locked out)")
    with TempRelaybox(sections) as relay:
        b = asyncio.run(latency_under_brute_force(relay.smtp_port, args.seconds))
    print(f"[{mode}] 20 brute-force sessions for {args.seconds:.0f} s ({b['checked']} answered 535,"
          f" {b['locked']} answered 454 locked out, {b['refused']} sessions refused); other client:"
          f" NOOP p50 {b['noop_p50_ms']:.1f} ms, p99 {b['noop_p99_ms']:.1f} ms,"
          f" max {b['noop_max_ms']:.1f} ms;"
          f" greeting max {b['greeting_max_ms']:.1f} ms")


if __name__ == "__main__":
    main()
