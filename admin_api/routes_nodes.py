"""The nodes of this database (``store.nodes``): who is alive, who leads, which channel leases and how many
recipients in ``sending`` each holds. Several relaybox nodes share one PostgreSQL database; on SQLite the
list has the one node (relaybox/cluster.py, docs/operations.md "Cluster")."""

from __future__ import annotations

from aiohttp import web

from admin_api.common import ApiError, Route, iso, ok, relaybox
from store import StorageError
from store.nodes import Node


def _present(n: Node) -> dict:
    out = n.as_dict()
    for key in ("started_at", "heartbeat_at", "stopped_at"):
        out[key] = iso(out[key])
    return out


async def list_nodes(request: web.Request) -> web.Response:
    rb = relaybox(request)
    cluster = getattr(rb, "cluster", None)
    ttl = cluster.ttl if cluster is not None else 15.0
    try:
        nodes = await rb.store.nodes.list_nodes(ttl)
    except StorageError as exc:
        raise ApiError(503, "unavailable", f"database unavailable: {exc}") from None
    return ok({"items": [_present(n) for n in nodes], "alive": sum(n.alive for n in nodes),
               "lease_seconds": ttl, "this_node": None if cluster is None else cluster.status()})


NODE = {"type": "object", "properties": {
    "owner": {"type": "string", "description": "hostname:pid, the lease_owner of its claims"},
    "name": {"type": "string"}, "host": {"type": "string"}, "pid": {"type": "integer"},
    "version": {"type": "string"}, "started_at": {"type": "string"}, "heartbeat_at": {"type": "string"},
    "stopped_at": {"type": "string", "nullable": True}, "alive": {"type": "boolean"},
    "leader": {"type": "boolean"}, "leases": {"type": "array", "items": {"type": "string"}},
    "channels": {"type": "array", "items": {"type": "string"}},
    "sending": {"type": "integer", "description": "recipients in 'sending' leased by this node"}}}

NODES = {"type": "object", "required": ["items"], "properties": {
    "items": {"type": "array", "items": NODE}, "alive": {"type": "integer"},
    "lease_seconds": {"type": "number"}, "this_node": {"type": "object", "nullable": True}}}

ROUTES = [
    Route("GET", "/api/v1/nodes", list_nodes,
          "The relaybox nodes of this database: alive or not, leader, channel leases, recipients in sending",
          "nodes", response=NODES, errors=(503,)),
]
