"""Inbound bounce parsing: DSN (RFC 3464/6533), ARF (RFC 5965), auto-replies (RFC 3834), and the
non-standard notices of common MTAs. ``parse(raw) -> Parsed`` is pure and never raises."""

from relay.bounces.parser import Parsed, Recipient, parse

__all__ = ["Parsed", "Recipient", "parse"]
