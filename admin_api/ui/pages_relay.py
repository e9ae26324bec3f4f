"""Console pages of DKIM keys (the DNS TXT record to publish), event webhooks (status, deliveries, retry
pending now), and CSV downloads of the bounces and suppressions lists as currently searched (the routes
are in ``pages_routes.py``).

The same calls as the API: ``routes_dkim.keys``, ``routes_webhooks.statuses/retry_pending`` and
``store.outbox.deliveries``, ``store.bounces.list/suppressions``. No SQL here."""

from __future__ import annotations

import csv
import io
from typing import Any, AsyncIterator

from aiohttp import web

from admin_api import routes_dkim, routes_suppressions, routes_webhooks
from admin_api.common import ApiError, iso
from admin_api.ui.views import SESSION, Handler, back, param, rb, render, signed_in, writes
from store import suppressions as supp

EXPORT_PAGE = 1000
BOUNCE_FILTERS = ("address", "category", "kind", "reason")
BOUNCE_COLUMNS = ("id", "at", "address", "category", "kind", "reason", "status", "diagnostic", "source",
                  "message_id", "recipient_id")
DELIVERY_STATES = ("pending", "delivered", "failed")


# ---- DKIM ----------------------------------------------------------------------------------------------
@signed_in
async def dkim_keys(request: web.Request) -> web.StreamResponse:
    cfg = rb(request).settings.relay.dkim
    return render(request, "dkim.html", {"page": "dkim", "enabled": cfg.enabled,
                                         "items": routes_dkim.keys(cfg)})


# ---- webhooks ------------------------------------------------------------------------------------------
def _hook_names(request: web.Request) -> list[str]:
    return [h.name for h in (rb(request).settings.section("webhooks") or [])]


@signed_in
async def webhooks(request: web.Request) -> web.StreamResponse:
    return render(request, "webhooks.html", {"page": "webhooks",
                                             "items": await routes_webhooks.statuses(rb(request))})


@signed_in
async def webhook_deliveries(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    if name not in _hook_names(request):
        raise ApiError(404, "not_found", f"no webhook endpoint {name}")
    state = request.query.get("state", "")
    rows = await rb(request).store.outbox.deliveries(name, state=state if state in DELIVERY_STATES else None,
                                                     after=0, limit=200)
    return render(request, "webhook_deliveries.html", {
        "page": "webhooks", "name": name, "state": state, "states": DELIVERY_STATES,
        "items": [d.as_dict() for d in rows]})


@writes
async def webhook_retry(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    if name not in _hook_names(request):
        raise ApiError(404, "not_found", f"no webhook endpoint {name}")
    n = await routes_webhooks.retry_pending(rb(request), name)
    request[SESSION].flash("ok", f"{name}: {n} pending deliveries retried now")
    raise back("/ui/webhooks")


# ---- exports -------------------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    """A CSV cell a spreadsheet will not run: a leading = + - @ (or tab / CR) is quoted with '."""
    s = "" if v is None else str(v)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


async def _csv(request: web.Request, filename: str, header: tuple[str, ...],
               rows: AsyncIterator[list[Any]]) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/csv; charset=utf-8",
                                       "Content-Disposition": f'attachment; filename="{filename}"',
                                       "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
    await resp.prepare(request)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    async for batch in rows:
        for row in batch:
            w.writerow([_cell(v) for v in row])
        await resp.write(buf.getvalue().encode())
        buf.seek(0)
        buf.truncate()
    await resp.write(buf.getvalue().encode())
    await resp.write_eof()
    return resp


@signed_in
async def bounces_csv(request: web.Request) -> web.StreamResponse:
    """Every bounce the Bounces page's current search finds (the same ``store.bounces.list`` as
    ``GET /api/v1/bounces``, page after page, newest first)."""
    filters = {k: v for k in BOUNCE_FILTERS if (v := request.query.get(k, "").strip()[:320])}
    store = rb(request).store

    async def pages() -> AsyncIterator[list[Any]]:
        before = None
        while True:
            found = await store.bounces.list(filters, before=before, limit=EXPORT_PAGE)
            if not found:
                return
            yield [[iso(b.at) if c == "at" else getattr(b, c, None) for c in BOUNCE_COLUMNS] for b in found]
            before = found[-1].id

    return await _csv(request, "bounces.csv", BOUNCE_COLUMNS, pages())


@signed_in
async def suppressions_csv(request: web.Request) -> web.StreamResponse:
    """The Suppressions page's current search as CSV (``store.bounces.suppressions``, as the API's list);
    without a search, every active entry through the API's own export handler."""
    search = request.query.get("search", "").strip()[:320]
    if not search:
        return await routes_suppressions.export_csv(request)
    store = rb(request).store

    async def pages() -> AsyncIterator[list[Any]]:
        offset = 0
        while True:
            found = await store.bounces.suppressions(search=search, limit=EXPORT_PAGE, offset=offset)
            if not found:
                return
            yield [[iso(v) if k in ("created_at", "expires_at") else v
                    for k, v in ((c, e.as_dict().get(c)) for c in supp.COLUMNS)] for e in found]
            offset += len(found)

    return await _csv(request, "suppressions.csv", tuple(supp.COLUMNS), pages())


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/ui/dkim", dkim_keys),
    ("GET", "/ui/webhooks", webhooks), ("GET", "/ui/webhooks/{name}", webhook_deliveries),
    ("POST", "/ui/webhooks/{name}/retry", webhook_retry),
    ("GET", "/ui/bounces.csv", bounces_csv), ("GET", "/ui/suppressions.csv", suppressions_csv),
]
