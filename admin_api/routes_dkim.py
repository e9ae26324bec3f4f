"""DKIM keys: selector, algorithm and the DNS TXT record to publish (public part only)."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import Route, ok, relaybox
from relay.delivery import dkim


def keys(cfg) -> list[dict]:
    out = []
    for domain, kc in sorted(cfg.domains.items()):
        item = {"domain": domain, "selector": kc.selector, "dns_name": f"{kc.selector}._domainkey.{domain}",
                "default": domain.lower() == (cfg.default_domain or "").lower(), "enabled": cfg.enabled}
        try:
            with open(kc.key_file, "rb") as fh:
                key = dkim.load_key(domain, kc.selector, fh.read())
            item.update(algorithm=key.algorithm, dns_record=dkim.dns_record(key.key), error=None)
        except (OSError, dkim.DKIMError) as exc:
            item.update(algorithm=None, dns_record=None,
                        error=exc.strerror if isinstance(exc, OSError) else str(exc))
        out.append(item)
    return out


async def list_keys(request: web.Request) -> web.Response:
    cfg = relaybox(request).settings.relay.dkim
    return ok({"enabled": cfg.enabled, "items": keys(cfg), "next_cursor": None})


ROUTES = [
    Route("GET", "/api/v1/dkim/keys", list_keys, "DKIM keys: public DNS records only", "dkim",
          response={"type": "object", "properties": {"items": {"type": "array", "items": {
              "type": "object", "properties": {"domain": {"type": "string"}, "selector": {"type": "string"},
                                               "dns_name": {"type": "string"},
                                               "dns_record": {"type": "string", "nullable": True}}}}}}),
]
