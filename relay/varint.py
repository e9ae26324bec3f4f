"""Unsigned LEB128 integers: the compact recipient ids inside VERP return paths and tracking tokens."""

from __future__ import annotations


def encode(n: int) -> bytes:
    if n < 0:
        raise ValueError("recipient id must be >= 0")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode(data: bytes) -> tuple[int, int] | None:
    """(value, bytes used) from the start of ``data``, or None when it does not hold one (at most 9 bytes)."""
    n = shift = 0
    for i, byte in enumerate(data[:9]):
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i + 1
    return None
