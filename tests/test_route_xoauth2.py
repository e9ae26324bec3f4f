"""Outbound XOAUTH2 on a smarthost route, as Microsoft 365 (client credentials) and Google (a refresh token,
rotated on use) want it: the tests' own OAuth2 token server (tests/peers/oauth2.py) and an SMTP receiver
that accepts only the access tokens that server issued, through the real scheduler and store."""

import base64

import pytest

from relay import oauth2
from relay.config import DeliveryConfig, RelayConfig, RouteConfig, SMTPConfig
from relay.delivery.scheduler import Scheduler
from relay.envelope import NewMessage
from relay.spool.spool import Spool
from store import Store
from tests.peers.oauth2 import TokenServer
from tests.peers.sink import Sink

pytestmark = pytest.mark.component

MAILBOX = "notifications@org.test"


@pytest.fixture
def tokens():
    server = TokenServer("app-id", "app-secret", MAILBOX, refresh_token="rt-first").begin()
    oauth2._cache.clear()
    yield server
    server.close()
    oauth2._cache.clear()


@pytest.fixture
async def hub(tokens):
    seen: list[tuple[str, str]] = []

    def check(user: str, token: str) -> bool:
        seen.append((user, token))
        return user == MAILBOX and token in tokens.active

    s = await Sink(tls=True, xoauth2=check).start()
    s.seen = seen
    yield s
    await s.stop()


def route(hub, tokens, **kw) -> RouteConfig:
    base = dict(name="m365", host="127.0.0.1", port=hub.port, tls="starttls", tls_verify=False,
                username=MAILBOX, oauth2_token_url=tokens.token_url, oauth2_client_id="app-id",
                oauth2_client_secret="app-secret", oauth2_scope="https://outlook.office365.com/.default",
                default=True)
    base.update(kw)
    return RouteConfig(**base)


async def send(store, routes, n=1):
    spool = Spool(store)
    cfg = RelayConfig(smtp=SMTPConfig(hostname="relay.test"), routes=routes,
                      delivery=DeliveryConfig(retry_jitter=0.0, connect_timeout=3, command_timeout=5))
    qids = [await spool.enqueue(NewMessage(sender=MAILBOX, recipients=[f"r{i}@dst.test"],
                                           body=b"Subject: hi\r\n\r\nhello\r\n", from_header=MAILBOX))
            for i in range(n)]
    sched = Scheduler(spool, cfg)
    await sched.run_burst()
    await sched.delivery.close()
    return [await store.history.show(q) for q in qids]


def statuses(details) -> list[str]:
    return [r.status for d in details for r in d.recipients]


async def test_client_credentials_token_is_fetched_once_used_and_never_shown(tmp_path, hub, tokens):
    store = Store(str(tmp_path / "q.db")).open()
    try:
        details = await send(store, [route(hub, tokens)], n=3)
        assert statuses(details) == ["delivered"] * 3
        assert {m.auth_user for m in hub.messages} == {MAILBOX}
        assert tokens.grants == ["client_credentials"]          # one token, cached for every session
        token = hub.seen[0][1]
        blob = repr([a.transcript for d in details for a in d.attempts])
        assert "AUTH XOAUTH2 [redacted]" in blob and "235 2.7.0" in blob
        assert token not in blob and "app-secret" not in blob
        assert base64.b64encode(f"user={MAILBOX}".encode()).decode()[:16] not in blob
    finally:
        store.close()


async def test_a_refused_token_defers_and_the_next_attempt_asks_for_a_new_one(tmp_path, hub, tokens):
    store = Store(str(tmp_path / "q.db")).open()
    try:
        r = route(hub, tokens)
        assert statuses(await send(store, [r])) == ["delivered"]
        tokens.revoke_all()                          # the tenant revoked it before it expired
        [d] = await send(store, [r])
        rcpt = d.recipients[0]
        assert rcpt.status == "deferred" and rcpt.last_code == 535      # waits: never bounced for our AUTH
        assert "token invalid or expired" in rcpt.last_text
        assert statuses(await send(store, [r])) == ["delivered"]         # a fresh token at the next attempt
        assert tokens.grants == ["client_credentials"] * 2
    finally:
        store.close()


async def test_refresh_token_grant_rotates_and_the_rotated_token_is_stored_encrypted(tmp_path, hub, tokens):
    db = str(tmp_path / "q.db")
    store = Store(db).open()
    try:
        google = route(hub, tokens, name="gmail", oauth2_refresh_token="rt-first", oauth2_scope="")
        assert statuses(await send(store, [google])) == ["delivered"]
        rotated = tokens.refresh_token
        assert rotated != "rt-first" and await store.kv.oauth_refresh("route:gmail") == rotated
        oauth2._cache.clear()                       # a restart: only the stored rotated token still works
        assert statuses(await send(store, [google])) == ["delivered"]
        assert tokens.grants == ["refresh_token", "refresh_token"] and not tokens.errors
    finally:
        store.close()
    wal = tmp_path / "q.db-wal"
    raw = open(db, "rb").read() + (wal.read_bytes() if wal.exists() else b"")
    assert tokens.refresh_token.encode() not in raw and rotated.encode() not in raw


async def test_token_endpoint_refusal_defers_with_the_providers_words(tmp_path, hub, tokens):
    store = Store(str(tmp_path / "q.db")).open()
    try:
        [d] = await send(store, [route(hub, tokens, oauth2_client_secret="wrong")])
        rcpt = d.recipients[0]
        assert rcpt.status == "deferred" and (rcpt.last_code, rcpt.last_enhanced) == (454, "4.7.0")
        assert "AADSTS700016" in rcpt.last_text and "wrong" not in rcpt.last_text
        assert hub.messages == [] and hub.seen == []     # nothing was tried with a token we did not get
    finally:
        store.close()


def test_route_settings_are_checked():
    with pytest.raises(ValueError, match="oauth2_client_id: required"):
        RouteConfig(name="x", host="smtp.office365.com", username=MAILBOX, oauth2_token_url="https://t/x")
    with pytest.raises(ValueError, match="password: not used with oauth2_token_url"):
        RouteConfig(name="x", host="smtp.office365.com", username=MAILBOX, password="pw",
                    oauth2_token_url="https://t/x", oauth2_client_id="id")
    with pytest.raises(ValueError, match="expected an https:// URL"):
        RouteConfig(name="x", host="smtp.office365.com", username=MAILBOX, oauth2_client_id="id",
                    oauth2_token_url="http://login.example/token")
