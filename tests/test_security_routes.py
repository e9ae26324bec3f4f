"""Smarthost routes never send credentials over a connection without TLS unless the route says
``allow_plaintext_auth = true``: tls = "none", and opportunistic TLS that ended up in clear."""

from __future__ import annotations

import pytest

from relay.config import RouteConfig
from relay.delivery.routes import smtp_test
from relay.delivery.transport import Candidate, TLSPolicy, open_session
from relay.errors import DeliveryError
from relaybox.checks import problems
from relaybox.settings import parse
from tests.peers.sink import Sink

pytestmark = pytest.mark.component


def counting(sink: Sink) -> list[str]:
    """The logins the sink was asked to check (what crossed the wire)."""
    seen: list[str] = []
    orig = sink._authenticate

    def wrapped(server, session, envelope, mechanism, auth_data):
        seen.append(mechanism)
        return orig(server, session, envelope, mechanism, auth_data)

    sink._authenticate = wrapped  # type: ignore[method-assign]
    return seen


@pytest.mark.parametrize("mode", ["none", "opportunistic"])
async def test_auth_in_clear_is_refused_unless_the_route_allows_it(mode):
    # the peer offers AUTH without TLS (and, for "none", even offers STARTTLS we were told not to use)
    sink = await Sink(tls=(mode == "none"), users={"u1": "pw-123456"}, auth_require_tls=False).start()
    seen = counting(sink)
    cand = [Candidate("localhost", "127.0.0.1", sink.port)]
    try:
        for policy in (TLSPolicy(mode), TLSPolicy(mode, allow_plaintext_auth=False)):
            with pytest.raises(DeliveryError) as ei:
                await open_session(cand, helo="relay.test", tls=policy, username="u1", password="pw-123456")
            # deferred, not bounced: the route's configuration must change, the mail waits for it
            assert ei.value.code == 530 and ei.value.stage == "auth" and ei.value.temporary
            assert "allow_plaintext_auth" in ei.value.text
        assert seen == []                                   # nothing was sent
        if mode == "none":
            session = await open_session(cand, helo="relay.test", username="u1", password="pw-123456",
                                         tls=TLSPolicy(mode, allow_plaintext_auth=True))
            assert not session.tls and seen
            await session.close()
    finally:
        await sink.stop()


async def test_starttls_route_still_authenticates():
    sink = await Sink(tls=True, users={"u1": "pw-123456"}).start()
    try:
        session = await open_session([Candidate("localhost", "127.0.0.1", sink.port)], helo="relay.test",
                                     tls=TLSPolicy("starttls", verify=False), username="u1",
                                     password="pw-123456")
        assert session.tls
        await session.close()
    finally:
        await sink.stop()


async def test_smtp_test_and_check_config_follow_the_route_setting(tmp_path):
    sink = await Sink(users={"u1": "pw-123456"}, auth_require_tls=False).start()
    try:
        route = RouteConfig(name="hub", host="127.0.0.1", port=sink.port, tls="none", username="u1",
                            password="pw-123456")
        ok, summary, _ = await smtp_test(route, "relay.test")
        assert not ok and summary.startswith("530 5.7.0")
        allowed = RouteConfig(name="hub", host="127.0.0.1", port=sink.port, tls="none", username="u1",
                              password="pw-123456", allow_plaintext_auth=True)
        ok, summary, _ = await smtp_test(allowed, "relay.test")
        assert ok, summary
    finally:
        await sink.stop()
    base = {"storage": {"path": str(tmp_path / "db")}}
    route = {"name": "hub", "host": "127.0.0.1", "tls": "none", "username": "u1", "password": "x"}
    assert any("routes.hub" in p and "allow_plaintext_auth" in p
               for p in problems(parse({**base, "routes": [route]})))
    assert not [p for p in problems(parse({**base, "routes": [{**route, "allow_plaintext_auth": True}]}))
                if "routes.hub" in p]
