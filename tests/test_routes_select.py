"""Route selection order (header, AUTH user, client network, From address, From domain, default, MX), the
stored settings round trip, route validation, and the per-route status from delivery outcomes (pure)."""

from __future__ import annotations

import pytest

from relay.config import RouteConfig
from relay.delivery.attempt import Outcome
from relay.delivery.route_book import RouteStatus
from relay.delivery.routes import Router, route_from_settings, route_settings
from relay.errors import ConnectError, DeliveryError
from store.records import AttemptLog, RecipientResult
from store.routes import StoredRoute

pytestmark = pytest.mark.unit

ROUTES = [RouteConfig("hdr", "h1.test"), RouteConfig("user", "h2.test", auth_users=["app1"]),
          RouteConfig("lan", "h3.test", client_networks=["10.0.0.0/8"]),
          RouteConfig("lan-small", "h3.test", client_networks=["10.1.0.0/16"]),
          RouteConfig("ceo", "h4.test", from_addresses=["Boss@Corp.test"]),
          RouteConfig("corp", "h5.test", from_domains=["corp.test"]),
          RouteConfig("isp", "h6.test", default=True)]


def msg(**kw):
    return {"from_header": "Ann <ann@corp.test>", "sender": "ann@corp.test", **kw}


def test_the_selection_order():
    r = Router(ROUTES)
    assert r.route_for(msg(route_hint="HDR", auth_user="app1", client_ip="10.1.2.3")).name == "hdr"
    assert r.route_for(msg(route_hint="missing", auth_user="app1")).name == "user"   # unknown: ignored
    assert r.route_for(msg(auth_user="app1", client_ip="10.1.2.3")).name == "user"
    assert r.route_for(msg(client_ip="10.1.2.3")).name == "lan-small"               # most specific network
    assert r.route_for(msg(client_ip="10.9.2.3")).name == "lan"
    assert r.route_for(msg(client_ip="::1")).name == "corp"
    assert r.route_for(msg(from_header="boss@corp.test", client_ip="192.0.2.1")).name == "ceo"
    assert r.route_for(msg(from_header="x@sales.corp.test")).name == "corp"
    assert r.route_for(msg(from_header="x@else.test", sender="x@else.test")).name == "isp"
    assert Router(ROUTES[:-1]).route_for(msg(from_header="x@else.test", sender="")) is None    # MX


def test_settings_round_trip_and_the_effective_port():
    r = RouteConfig("m365", "smtp.office365.test", username="u", password="p", from_domains=["org.test"])
    assert route_from_settings(route_settings(r)) == r
    assert route_from_settings({**route_settings(r), "port": 0, "tls": "implicit"}).port == 465
    assert route_from_settings({"name": "a", "host": "h.test", "future_key": 1}).port == 587
    for bad in ({"name": "a b", "host": "h"}, {"name": "a", "host": "h h"},
                {"name": "a", "host": "h", "port": -1},
                {"name": "a", "host": "h", "tls": "ssl"}, {"name": "a", "host": "h", "from_domains": ["x"]},
                {"name": "a", "host": "h", "sender": "not-an-address"}):
        with pytest.raises(ValueError):
            route_from_settings(bad)


def _pair(rid: int, status: str):
    return (None, RecipientResult(rid, status))


def _attempt(host: str | None = "h.test") -> AttemptLog:
    return AttemptLog(message_id="m", started_at=0.0, ended_at=1.0, result="x", host=host)


def test_status_from_outcomes():
    clock = [100.0]
    st = RouteStatus(lambda: clock[0])
    hub = RouteConfig("hub", "h.test")
    stored = StoredRoute("hub", {}, delivered=10, last_error="old", last_error_at=50.0)
    st.begin(hub)
    assert st.view(stored)["in_flight"] == 1
    st.end(hub)
    st.record(hub, Outcome({1: None, 2: DeliveryError(550, "5.1.1", "no such user", stage="rcpt")},
                           attempt=_attempt()), [_pair(1, "delivered"), _pair(2, "bounced")])
    v = st.view(stored)
    assert (v["state"], v["delivered"], v["failed"], v["last_success_at"]) == ("up", 11, 1, 100.0)
    assert v["last_error"] == "550 5.1.1 no such user" and v["in_flight"] == 0
    clock[0] = 200.0
    st.record(hub, Outcome({3: DeliveryError(535, "5.7.8", "Authentication credentials invalid", False,
                                             stage="auth")}, attempt=_attempt()), [_pair(3, "bounced")])
    assert st.view(stored)["state"] == "failing"
    st.record(hub, Outcome({4: DeliveryError(550, "5.7.1", "rejected", stage="rcpt")}, attempt=_attempt()),
              [_pair(4, "bounced")])
    assert st.view(stored)["state"] == "up"          # the server answered: only that recipient was refused
    st.record(hub, Outcome({5: ConnectError(421, "4.4.1", "connection refused", stage="connect")},
                           attempt=_attempt(None)), [_pair(5, "deferred")])
    v = st.view(stored)
    assert v["state"] == "failing" and v["deferred"] == 1
    assert v["last_error"] == "421 4.4.1 connection refused"
    st.record(None, Outcome({6: None}), [_pair(6, "delivered")])      # direct MX: no route status
    deltas = st.take()
    assert [(d.name, d.delivered, d.deferred, d.failed, d.state) for d in deltas] == [("hub", 1, 1, 3,
                                                                                      "failing")]
    assert st.view(stored)["delivered"] == 10                         # taken: now the store's business
    st.give_back(deltas)                                              # a failed write: nothing lost
    assert st.view(stored)["delivered"] == 11
