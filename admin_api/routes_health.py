"""/healthz (process alive, no auth), /readyz (database writable, listeners bound, disk above the floor),
/metrics (Prometheus text format; gauges are computed from the database at scrape time)."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from admin_api import metrics
from admin_api.common import TAIL_KEY, Route, relaybox


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rb = relaybox(request)
    listener = getattr(rb, "listener", None)
    checks = {
        "database_writable": await rb.store.stats.writable(),
        "listeners_bound": bool(listener is not None and listener.bound),
        "disk_above_floor": bool(rb.disk.ok()),
    }
    ready = all(checks.values())
    return web.json_response({"ready": ready, "checks": checks, "reasons": _reasons(rb, checks),
                              "uptime_seconds": round(time.time() - rb.started_at, 1)},
                             status=200 if ready else 503)


def _reasons(rb, checks: dict[str, bool]) -> list[str]:
    """Why not ready, in words: the database's last error (a node waiting for PostgreSQL says so)."""
    from store.postgres import redact

    out = []
    if not checks["database_writable"]:
        out.append("database not writable: " + redact(rb.store.last_error or "no answer within 5 s"))
    if not checks["listeners_bound"]:
        out.append("SMTP listeners not bound")
    if not checks["disk_above_floor"]:
        out.append("free disk space below storage.min_free")
    return out


async def scrape(request: web.Request) -> web.Response:
    await metrics.refresh(relaybox(request), request.app.get(TAIL_KEY))
    resp = web.Response(body=generate_latest(metrics.registry()))   # with workers: all their samples
    resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return resp


READY = {"type": "object", "required": ["ready", "checks"], "properties": {
    "ready": {"type": "boolean"}, "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
    "reasons": {"type": "array", "items": {"type": "string"}}}}

ROUTES = [
    Route("GET", "/healthz", healthz, "Liveness: the process answers", "health", auth=False,
          response={"type": "object", "properties": {"status": {"type": "string"}}}),
    Route("GET", "/readyz", readyz, "Readiness: database writable, listeners bound, disk above floor (503 if"
          " not)", "health", response=READY, errors=(503,)),
    Route("GET", "/metrics", scrape, "Prometheus metrics", "health", content_type="text/plain"),
]
