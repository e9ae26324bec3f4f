"""``relaybox nodes``: the relaybox nodes of the database (several share one PostgreSQL; SQLite has one):
alive or dead (heartbeat older than ``[cluster] lease``), the leader, the channels each polls, and its
recipients in ``sending``. Reads the database itself (``--db``, default the config's storage), so it
works while nodes are down too.
"""

from __future__ import annotations

import json
import time

from relaybox.commands._common import run
from relaybox.commands._common import table as _table

COLUMNS = ["name", "owner", "state", "leader", "channels", "sending", "heartbeat", "started", "version"]


def _lease(args) -> float:
    if args.lease is not None:
        return float(args.lease)
    from relaybox.cluster import ClusterConfig
    from relaybox.settings import load

    cfg = load(args.config).section("cluster") or ClusterConfig()
    return float(cfg.lease)


def _when(ts: float | None, now: float) -> str:
    if ts is None:
        return ""
    return f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(ts))} ({max(0.0, now - ts):.0f}s ago)"


def cmd_nodes(args) -> int:
    ttl = _lease(args)
    nodes = run(args, lambda s: s.nodes.list_nodes(ttl))
    if args.json:
        print(json.dumps({"lease_seconds": ttl, "items": [n.as_dict() for n in nodes]}))
        return 0
    now = time.time()
    rows = [{"name": n.name, "owner": n.owner,
             "state": "alive" if n.alive else ("stopped" if n.stopped_at is not None else "dead"),
             "leader": "yes" if n.leader else "", "channels": ",".join(n.channels), "sending": n.sending,
             "heartbeat": _when(n.heartbeat_at, now), "started": _when(n.started_at, now),
             "version": n.version} for n in nodes]
    _table(rows, COLUMNS)
    print(f"{sum(n.alive for n in nodes)} alive of {len(nodes)} (dead after {ttl:g}s without a heartbeat)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("nodes", help="the relaybox nodes of the database: alive, leader, channels, sending")
    p.add_argument("--db", default=None, help="database file or PostgreSQL URL (default: the config's)")
    p.add_argument("--lease", type=float, default=None,
                   help="seconds without a heartbeat after which a node is dead (default: [cluster] lease)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_nodes)
