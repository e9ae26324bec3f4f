"""Route selection cost per message (relay.delivery.routes.Router.route_for, run once per claimed message on
the event loop): 50 routes by From domain, without and with submitter rules (AUTH users, client networks);
1000 messages x 100 rounds, best of 3, interleaved.

    .venv/bin/python bench/routes_select.py
"""
import time

from relay.config import RouteConfig
from relay.delivery.routes import Router
from store.records import Message

plain = Router([RouteConfig(f"r{i}", f"h{i}.test", from_domains=[f"d{i}.test"]) for i in range(50)])
full = Router([RouteConfig(f"r{i}", f"h{i}.test", from_domains=[f"d{i}.test"], auth_users=[f"u{i}"],
                           client_networks=[f"10.{i}.0.0/16"]) for i in range(50)])
msgs = [Message(id=str(i), created_at=0, sender=f"a@x{i}.test", size=1, body_sha256="",
                from_header=f"A <a@d{i % 60}.test>", client_ip=f"192.0.2.{i % 250}") for i in range(1000)]
best = {"from domain only": 1e9, "with AUTH users and client networks": 1e9}
for _ in range(3):
    for label, r in (("from domain only", plain), ("with AUTH users and client networks", full)):
        t = time.perf_counter()
        for _ in range(100):
            for m in msgs:
                r.route_for(m)
        best[label] = min(best[label], (time.perf_counter() - t) / 100000)
for label, dt in best.items():
    print(f"{label}: {dt * 1e6:.2f} us per message")
