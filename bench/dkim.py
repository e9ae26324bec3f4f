"""DKIM signing speed: dkimpy (stock, pure-Python RSA) vs relay.delivery.dkim (OpenSSL RSA via cryptography).

    .venv/bin/python bench/dkim.py [--seconds 3] [--size 1024]

Both sign the same ~1 KB message with the same RSA-2048 key, relaxed/relaxed, on one core; prints
signatures/s for each and the ratio. Target (issue 3): relay.delivery.dkim >= 1,000 RSA-2048 signatures/s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# this file is named dkim.py: drop its own directory from the path so "import dkim" finds dkimpy
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
sys.path.insert(0, os.path.dirname(_here))

import dkim  # noqa: E402
from cryptography.hazmat.primitives import serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: E402

from relay.delivery.dkim import Signer, load_key  # noqa: E402


def message(size: int) -> bytes:
    head = (b"From: Alice Sender <alice@example.com>\r\nTo: bob@example.org\r\nSubject: Benchmark message\r\n"
            b"Date: Mon, 23 Nov 2026 07:00:00 +0000\r\nMessage-ID: <bench-1@example.com>\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    line = b"The quick brown fox jumps over the lazy dog, again and again.  \r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


def rate(fn, seconds: float) -> tuple[float, int]:
    n, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while True:
        fn()
        n += 1
        if n % 16 == 0 and time.perf_counter() >= end:
            break
    return n / (time.perf_counter() - t0), n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--size", type=int, default=1024)
    args = ap.parse_args()
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})   # one core
    except (AttributeError, OSError):
        pass
    msg = message(args.size)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    heads = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]

    def stock():
        dkim.sign(msg, b"sel", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed"),
                  include_headers=heads)

    signer = Signer({"example.com": load_key("example.com", "sel", pem)})
    ed = ed25519.Ed25519PrivateKey.generate()
    ed_pem = ed.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    ed_signer = Signer({"example.com": load_key("example.com", "sel", ed_pem)})

    print(f"message {len(msg)} bytes, RSA-2048, relaxed/relaxed, {args.seconds:.0f} s each, one core")
    stock_rate, n1 = rate(stock, args.seconds)
    print(f"dkimpy stock (pure RSA): {stock_rate:9.1f} signatures/s ({n1} signed)")
    ours_rate, n2 = rate(lambda: signer.sign(msg), args.seconds)
    print(f"relay.delivery.dkim rsa-sha256  : {ours_rate:9.1f} signatures/s ({n2} signed)")
    ed_rate, n3 = rate(lambda: ed_signer.sign(msg), args.seconds)
    print(f"relay.delivery.dkim ed25519     : {ed_rate:9.1f} signatures/s ({n3} signed)")
    print(f"ratio relay.delivery.dkim / dkimpy (RSA-2048): {ours_rate / stock_rate:.1f}x")
    ok = ours_rate >= 1000
    print(f"target >= 1000 RSA-2048 signatures/s: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
