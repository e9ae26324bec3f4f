"""Blocklist awareness (``relay.dnsbl``): the state of each (sending address, DNSBL zone) pair, and a "check
now" action. The checker runs in relaybox (``[dnsbl]``); with it off the list is empty and says so."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import Route, conflict, iso, ok, relaybox
from relay.dnsbl import DnsblChecker, Listing, summary


def _checker(request: web.Request) -> DnsblChecker | None:
    checker = getattr(relaybox(request), "dnsbl", None)
    return checker if isinstance(checker, DnsblChecker) else None


def _present(s: Listing) -> dict:
    out = s.as_dict()
    out["since"], out["last_checked"] = iso(s.since), iso(s.last_checked)
    return out


def _body(checker: DnsblChecker | None) -> dict:
    if checker is None or not checker.enabled:
        return {"enabled": False, "zones": [], "interval": None, "checked_at": None,
                "summary": summary([]), "items": []}
    items = checker.snapshot()
    return {"enabled": True, "zones": list(checker.cfg.zones), "interval": float(checker.cfg.interval),
            "checked_at": iso(checker.checked_at), "summary": summary(items),
            "items": [_present(s) for s in items]}


async def list_blocklists(request: web.Request) -> web.Response:
    return ok(_body(_checker(request)))


async def check_now(request: web.Request) -> web.Response:
    checker = _checker(request)
    if checker is None or not checker.enabled:
        raise conflict("blocklist checks are off: set [dnsbl] enabled = true and zones in the config")
    await checker.check_now()
    return ok(_body(checker))


LISTING = {"type": "object", "properties": {
    "ip": {"type": "string"}, "zone": {"type": "string"},
    "status": {"type": "string", "enum": ["listed", "clear", "unknown"]}, "listed": {"type": "boolean"},
    "codes": {"type": "array", "items": {"type": "string"}}, "text": {"type": "string"},
    "since": {"type": "string", "nullable": True}, "last_checked": {"type": "string", "nullable": True},
    "routes": {"type": "array", "items": {"type": "string"}}}}
STATE = {"type": "object", "required": ["enabled", "items"], "properties": {
    "enabled": {"type": "boolean"}, "zones": {"type": "array", "items": {"type": "string"}},
    "interval": {"type": "number", "nullable": True}, "checked_at": {"type": "string", "nullable": True},
    "summary": {"type": "object",
                "properties": {k: {"type": "integer"} for k in ("listed", "clear", "unknown")}},
    "items": {"type": "array", "items": LISTING}}}

ROUTES = [
    Route("GET", "/api/v1/blocklists", list_blocklists,
          "DNSBL state of the relay's sending addresses, listed pairs first", "blocklists", response=STATE),
    Route("POST", "/api/v1/blocklists/check", check_now,
          "Check every sending address in every zone now", "blocklists", response=STATE, errors=(409,)),
]
