"""/metrics after real SMTP traffic delivered to a real sink; the Grafana dashboard and alert rules only use
metrics relaybox really exports."""

from __future__ import annotations

import asyncio
import importlib
import json
import pkgutil
import re
import sqlite3
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from tests.admin_support import running, smtp_send
from tests.peers.sink import Sink

pytestmark = pytest.mark.component

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple, float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap: dict, name: str, **labels) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


def total(snap: dict, name: str, **labels) -> float:
    return sum(v for (n, ls), v in snap.items() if n == name and all((k, w) in ls for k, w in labels.items()))


async def test_metrics_after_real_traffic(tmp_path):
    sink = await Sink().start()
    sink.faults.rcpt["nobody@x.test"] = "550 5.1.1 no such user"
    sink.faults.rcpt["later@x.test"] = "451 4.3.0 try later"
    route = [{"name": "sink", "host": "127.0.0.1", "port": sink.port, "tls": "none", "default": True}]
    try:
        async with running(tmp_path, scheduler=True, routes=route) as (app, api):
            st, before = await api.call("GET", "/metrics")
            before = samples(before.decode())
            for i in range(5):
                code, _ = await asyncio.to_thread(smtp_send, app.smtp_port, "app@org.test", [f"ok{i}@x.test"],
                                                  subject=f"m{i}")
                assert code == 250
            assert (await asyncio.to_thread(smtp_send, app.smtp_port, "app@org.test",
                                            ["nobody@x.test"]))[0] == 250
            assert (await asyncio.to_thread(smtp_send, app.smtp_port, "app@org.test",
                                            ["later@x.test"]))[0] == 250
            code, _ = await asyncio.to_thread(smtp_send, app.smtp_port, "app@org.test", ["r@x.test"],
                                              source="127.0.0.2")
            assert code == 550

            db = str(tmp_path / "relaybox.db")

            def settled():
                with sqlite3.connect(db) as c:
                    busy = c.execute("SELECT COUNT(*) FROM recipients WHERE status IN ('queued','sending')"
                                     ).fetchone()[0]
                    counts = dict(c.execute("SELECT status, COUNT(*) FROM recipients GROUP BY status")
                                  .fetchall())
                return busy == 0 and counts.get("deferred") == 1 and counts.get("bounced") == 1, counts
            deadline = time.monotonic() + 15
            while not settled()[0] and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            ok, counts = settled()
            assert ok, counts
            with sqlite3.connect(db) as c:
                delivered_db = c.execute("SELECT COUNT(*) FROM recipients WHERE status='delivered'"
                                         ).fetchone()[0]
                attempts_db = c.execute("SELECT COUNT(*) FROM attempts").fetchone()[0]
            assert delivered_db >= 5     # 5 messages (+ the DSN of the bounce, to the sender, via the sink)

            st, text = await api.call("GET", "/metrics")
            assert st == 200
            after = samples(text.decode())

            def delta(name, **labels):
                return total(after, name, **labels) - total(before, name, **labels)

            assert delta("relaybox_smtp_accepted_messages_total") == 7
            assert delta("relaybox_smtp_rejected_total") >= 1
            for status in ("delivered", "deferred", "bounced", "queued", "sending"):
                assert value(after, "relaybox_queue_recipients", status=status) == counts.get(status,
                                                                                              0), status
            assert value(after, "relaybox_queue_oldest_age_seconds") > 0          # the deferred one waits
            assert delta("relaybox_delivery_results_total", route="sink", result="delivered") == delivered_db
            assert delta("relaybox_delivery_results_total", route="sink", result="bounced") == 1
            assert delta("relaybox_delivery_results_total", route="sink", result="deferred") == 1
            assert delta("relaybox_delivery_attempts_total") == attempts_db
            assert delta("relaybox_delivery_latency_seconds_count", route="sink") == delivered_db
            assert delta("relaybox_delivery_latency_seconds_bucket", route="sink", le="15.0") == delivered_db
            assert value(after, "relaybox_smtp_sessions_active") == 0
            assert 0 < value(after, "relaybox_disk_free_ratio") <= 1
            assert value(after, "relaybox_database_size_bytes") > 10000
            assert len(sink.messages) == delivered_db
            # no message-level or address labels anywhere
            assert "ok0@x.test" not in text.decode() and "x.test" not in text.decode()
    finally:
        await sink.stop()


def exported_names() -> set[str]:
    """Every sample name relaybox can export: import all modules, then walk the default registry."""
    for pkg_name in ("relay", "admin_api", "poller", "relaybox"):
        try:
            pkg = importlib.import_module(pkg_name)
        except ImportError:
            continue
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            try:
                importlib.import_module(info.name)
            except ImportError:   # a module needing an optional extra; a duplicate metric name still fails
                pass
    names = set()
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001
        names.update(REGISTRY._collector_to_names[collector])  # noqa: SLF001
    return {n for n in names if n.startswith("relaybox_")}


def metric_refs(expr: str) -> set[str]:
    return set(re.findall(r"\brelaybox_[a-zA-Z0-9_]+", expr))


def test_dashboard_and_alerts_use_exported_metrics():
    names = exported_names()
    assert "relaybox_queue_recipients" in names and "relaybox_delivery_latency_seconds_bucket" in names
    dash = json.loads((ROOT / "conf/grafana/relaybox.json").read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))
    walk(dash["panels"])
    assert len(exprs) >= 10
    cells: dict = {}
    for p in dash["panels"]:              # a layout Grafana shows as drawn: no two panels on one cell
        g = p["gridPos"]
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
            assert cell not in cells, (p["title"], cells[cell])
            cells[cell] = p["title"]
        assert g["x"] + g["w"] <= 24
    titles = {p["title"].lower() for p in dash["panels"] if p.get("type") == "row"}
    for topic in ("queue", "throughput", "latency", "bounces", "channels"):
        assert any(topic in t for t in titles), topic
    rules = yaml.safe_load((ROOT / "conf/prometheus/alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {"RelayboxQueueGrowing", "RelayboxOldestMessageTooOld", "RelayboxChannelDown",
            "RelayboxBounceRateHigh", "RelayboxDiskLow"} <= {a["alert"] for a in alerts}
    for expr in exprs + [a["expr"] for a in alerts]:
        refs = metric_refs(expr)
        assert refs, expr
        unknown = refs - names
        assert not unknown, f"{expr!r} uses metrics relaybox does not export: {unknown}"
    for a in alerts:
        assert a["labels"]["severity"] in ("warning", "critical") and a["annotations"]["summary"]
