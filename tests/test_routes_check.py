"""The full SMTP test of a route (relay.delivery.route_check) against real aiosmtpd receivers: connect,
EHLO, STARTTLS, AUTH, MAIL FROM, RCPT TO, RSET, QUIT; the step and the server's own words when it fails."""

from __future__ import annotations

import pytest

from relay.config import RouteConfig
from relay.delivery.route_check import check_route
from tests.peers.ports import free_port
from tests.peers.sink import Sink

pytestmark = pytest.mark.component

PW = "Route-Pa55-word-91"


@pytest.fixture
async def hub():
    s = await Sink(tls=True, users={"relay@org.test": PW}).start()
    yield s
    await s.stop()


def route(port: int, **kw) -> RouteConfig:
    base = dict(name="hub", host="127.0.0.1", port=port, tls="starttls", tls_verify=False,
                username="relay@org.test", password=PW, from_addresses=["app@org.test"])
    return RouteConfig(**{**base, **kw})


def lines(result) -> list[str]:
    return [f"{e['dir']}: {e['line']}" for e in result.transcript]


async def test_success_goes_through_mail_rcpt_and_rset_without_sending(hub):
    result = await check_route(route(hub.port), "relay.test", rcpt="probe@dest.test")
    assert result.ok and result.summary == "Connection succeeded", lines(result)
    t = lines(result)
    for want in ("C: STARTTLS", "C: AUTH **** (credentials not logged)",
                 "S: 235 2.7.0 Authentication successful", "C: MAIL FROM:<app@org.test>",
                 "C: RCPT TO:<probe@dest.test>", "C: RSET", "C: QUIT"):
        assert want in t, (want, t)
    assert t.index("C: RSET") < len(t) - 1 and t[t.index("C: RSET") + 1].startswith("S: 250")
    assert [c[:2] for c in hub.commands if c[0] in ("MAIL", "RCPT")] == [("MAIL", "app@org.test"),
                                                                       ("RCPT", "probe@dest.test")]
    assert hub.messages == []                           # RSET: nothing was sent
    assert PW not in str(result.as_dict())
    assert result.as_dict()["port"] == hub.port and result.sender == "app@org.test"


async def test_send_delivers_a_real_test_message(hub):
    result = await check_route(route(hub.port), "relay.test", rcpt="probe@dest.test", send=True)
    assert result.ok and result.sent and result.summary == "Connection succeeded (test message accepted)"
    [m] = hub.messages
    assert m.rcpts == ["probe@dest.test"] and m.auth_user == "relay@org.test" and m.tls
    assert b"Subject: relaybox route test (hub)" in m.data


async def test_wrong_password_fails_at_auth_with_the_servers_words(hub):
    result = await check_route(route(hub.port, password="wrong-" + PW), "relay.test")
    assert not result.ok and result.step == "AUTH"
    assert result.summary == "Connection failed at AUTH: 535 5.7.8 Authentication credentials invalid"
    assert "wrong-" not in str(result.as_dict()) and PW not in str(result.as_dict())
    assert not any(c[0] == "MAIL" for c in hub.commands)


async def test_refused_recipient_and_sender_fail_at_their_step(hub):
    hub.faults.rcpt["nobody@dest.test"] = "550 5.1.1 <nobody@dest.test>: no such user here"
    result = await check_route(route(hub.port), "relay.test", rcpt="nobody@dest.test")
    assert not result.ok and result.step == "RCPT"
    assert result.summary == "Connection failed at RCPT: 550 5.1.1 <nobody@dest.test>: no such user here"
    hub.faults.mail = "553 5.7.1 Sender address rejected: not owned by user relay@org.test"
    result = await check_route(route(hub.port), "relay.test", sender="other@org.test")
    assert result.summary == ("Connection failed at MAIL: 553 5.7.1 Sender address rejected: not owned by"
                              " user relay@org.test")


async def test_connection_refused_and_missing_starttls_and_the_effective_port():
    port = free_port()
    result = await check_route(route(port), "relay.test", rcpt="x@dest.test", timeout=3)
    assert not result.ok and result.step == "CONNECT" and result.summary.startswith("Connection failed at"
                                                                                    " CONNECT: ")
    plain = await Sink().start()
    try:
        result = await check_route(route(plain.port), "relay.test")
        assert result.summary == ("Connection failed at STARTTLS: 421 4.7.4 127.0.0.1 does not offer"
                                  " STARTTLS, which the route requires")
    finally:
        await plain.stop()
    # no port: the TLS mode's usual one, never "None"
    assert RouteConfig("a", "smtp.example.test", tls="implicit").port == 465
    assert RouteConfig("a", "smtp.example.test", tls="starttls").port == 587
    assert RouteConfig("a", "smtp.example.test", tls="none").port == 25


async def test_bad_test_addresses_are_refused_before_connecting():
    with pytest.raises(ValueError, match="rcpt"):
        await check_route(route(free_port()), "relay.test", rcpt="a@b.test\r\nRCPT TO:<x@y.test>")


async def test_an_xoauth2_route_is_tested_with_a_token_from_its_endpoint():
    from relay import oauth2
    from tests.peers.oauth2 import TokenServer

    mailbox = "notifications@org.test"
    tokens = TokenServer("app-id", "app-secret", mailbox).begin()
    oauth2._cache.clear()
    sink = await Sink(tls=True,
                      xoauth2=lambda user, token: user == mailbox and token in tokens.active).start()
    try:
        r = RouteConfig(name="m365", host="127.0.0.1", port=sink.port, tls="starttls", tls_verify=False,
                        username=mailbox, oauth2_token_url=tokens.token_url, oauth2_client_id="app-id",
                        oauth2_client_secret="app-secret", from_addresses=[mailbox])
        result = await check_route(r, "relay.test", rcpt="probe@dest.test")
        assert result.ok, lines(result)
        assert "C: MAIL FROM:<notifications@org.test>" in lines(result)
        assert "app-secret" not in str(result.as_dict())
        wrong = RouteConfig(**{**r.__dict__, "oauth2_client_secret": "not-the-secret"})
        oauth2._cache.clear()
        result = await check_route(wrong, "relay.test")
        assert not result.ok and result.step == "AUTH", lines(result)
        assert "not-the-secret" not in str(result.as_dict())
    finally:
        await sink.stop()
        tokens.close()
        oauth2._cache.clear()
