"""The inbound aggregate of the store (``store.inbound``): channels, filters, campaigns, checkpoints,
inbound messages and the quarantine, exercised through the typed interface only (no SQL), for every backend
in ``tests/conftest.py: STORE_BACKENDS``. ``open_store()`` reopens the same database, so restarts are part
of the contract."""

from __future__ import annotations

import dataclasses

import pytest

from store.inbound import (
    Campaign,
    CampaignInUse,
    Channel,
    Checkpoint,
    Delivery,
    Fetched,
    Filter,
    InboundMessage,
    QuarantineItem,
)

pytestmark = pytest.mark.component

def box(name: str = "box", *, enabled: bool = True, filters=(), **settings) -> Channel:
    return Channel(name=name, settings={"host": "imap.test", "default_campaign": "desk", **settings},
                   enabled=enabled, filters=tuple(filters))


def mail(n: int, mid: str | None = None) -> bytes:
    return f"Subject: {n}\r\nMessage-ID: {mid or f'<{n}@x>'}\r\n\r\nbody {n}\r\n".encode()


async def test_channels_filters_campaigns_round_trip_and_survive_a_restart(open_store):
    s = open_store()
    await s.inbound.save_campaign(Campaign("desk", "maildir", {"path": "/srv/desk"}))
    await s.inbound.save_campaign(Campaign("crm", "webhook", {"url": "http://crm.test", "secret": "k"}))
    rules = [Filter("subject", "contains", "invoice", "crm"), Filter("sender", "equals", "a@b.test", "desk")]
    await s.inbound.save_channel(box(filters=rules, password="pw"))
    await s.inbound.save_channel(box("off", enabled=False))
    s.close()

    s = open_store()
    ch = await s.inbound.channel("box")
    assert isinstance(ch, Channel) and ch.filters == tuple(rules) and ch.settings["password"] == "pw"
    assert (ch.enabled, ch.fetched, ch.routed, ch.quarantined, ch.last_error) == (True, 0, 0, 0, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ch.enabled = False  # type: ignore[misc]
    assert [c.name for c in await s.inbound.channels()] == ["box", "off"]
    assert [c.name for c in await s.inbound.channels(enabled_only=True)] == ["box"]
    assert await s.inbound.channel_names(enabled_only=True) == ["box"]
    assert await s.inbound.channel("nope") is None

    crm = await s.inbound.campaign("crm")
    assert crm == Campaign("crm", "webhook", {"url": "http://crm.test", "secret": "k"}, crm.created_at)
    assert crm.as_dict() == {"name": "crm", "kind": "webhook", "url": "http://crm.test", "secret": "k"}
    assert [c.name for c in await s.inbound.campaigns()] == ["crm", "desk"]
    assert await s.inbound.campaign_names() == {"crm", "desk"}

    # a save replaces settings and filters, and keeps the status
    await s.inbound.record_poll("box", "timeout")
    await s.inbound.save_channel(box(filters=rules[1:]))
    ch = await s.inbound.channel("box")
    assert ch.filters == tuple(rules[1:]) and "password" not in ch.settings and ch.last_error == "timeout"
    await s.inbound.record_poll("box", None)
    ch = await s.inbound.channel("box")
    assert ch.last_error is None and ch.last_success_at == ch.last_poll_at is not None


async def test_campaigns_in_use_cannot_be_deleted_and_checks_run_in_the_saving_transaction(open_store):
    s = open_store()
    await s.inbound.save_campaign(Campaign("desk", "maildir", {}))
    await s.inbound.save_campaign(Campaign("crm", "maildir", {}))
    await s.inbound.save_channel(box(filters=[Filter("subject", "contains", "x", "crm")]))
    for name in ("desk", "crm"):             # the default campaign, a filter's campaign
        with pytest.raises(CampaignInUse):
            await s.inbound.delete_campaign(name)

    seen: list[frozenset[str]] = []

    def refuse(ch: Channel, names: frozenset[str]) -> None:
        seen.append(names)
        raise ValueError(f"{ch.name}: no")

    with pytest.raises(ValueError, match="other: no"):
        await s.inbound.save_channel(box("other"), refuse)
    assert seen == [frozenset({"crm", "desk"})] and await s.inbound.channel("other") is None
    with pytest.raises(ValueError):          # a refused seed saves nothing, not even its campaigns
        await s.inbound.seed([Campaign("new", "maildir", {})], [box("seeded")], refuse)
    assert await s.inbound.campaign("new") is None and await s.inbound.channel("seeded") is None

    assert await s.inbound.delete_channel("box") and not await s.inbound.delete_channel("box")
    assert await s.inbound.delete_campaign("crm") and not await s.inbound.delete_campaign("crm")


async def test_rotated_oauth_refresh_token_is_dropped_when_an_admin_gives_a_new_one(open_store):
    s = open_store()
    await s.inbound.save_campaign(Campaign("desk", "maildir", {}))
    await s.inbound.save_channel(box(oauth2_refresh_token="rt-1"))
    assert await s.inbound.oauth_refresh("box") is None
    await s.inbound.set_oauth_refresh("box", "rt-rotated")
    await s.inbound.save_channel(box(oauth2_refresh_token="rt-1", folder="Support"))     # same token: kept
    assert await s.inbound.oauth_refresh("box") == "rt-rotated"
    await s.inbound.save_channel(box(oauth2_refresh_token="rt-2"))                       # re-consent
    assert await s.inbound.oauth_refresh("box") is None


async def test_fetched_batches_checkpoints_and_dedupe(open_store):
    s = open_store()
    await s.inbound.save_campaign(Campaign("desk", "maildir", {}))
    await s.inbound.save_channel(box())
    assert await s.inbound.checkpoint("box", "INBOX") is None
    ids = await s.inbound.store_fetched("box", "INBOX", 7, [
        Fetched("1", mail(1), message_id="<1@x>"), Fetched("2", None, "too large"),
        Fetched("3", mail(3), "not-addressed")], last_uid=3, dedupe=True)
    assert len(ids) == 1
    cp = await s.inbound.checkpoint("box", "INBOX")
    assert isinstance(cp, Checkpoint) and (cp.uidvalidity, cp.last_uid) == (7, 3)
    # the same UIDs again (a crash before the checkpoint moved): nothing new
    assert await s.inbound.store_fetched("box", "INBOX", 7, [Fetched("1", mail(1), message_id="<1@x>")]) == []
    # after a UIDVALIDITY change the same message (content and Message-ID) is a duplicate, a new one is not
    again = await s.inbound.store_fetched("box", "INBOX", 8, [
        Fetched("1", mail(1), message_id="<1@x>"), Fetched("2", mail(4), message_id="<4@x>")],
        last_uid=2, dedupe=True)
    assert len(again) == 1
    by_status = {m.uid + "/" + str(m.uidvalidity): m.status for m in await s.inbound.messages("box")}
    assert by_status == {"1/7": "received", "2/7": "quarantined", "3/7": "skipped", "1/8": "duplicate",
                         "2/8": "received"}
    ch = await s.inbound.channel("box")
    assert (ch.fetched, ch.quarantined) == (5, 1)
    [q] = await s.inbound.quarantine()
    assert isinstance(q, QuarantineItem) and (q.uid, q.last_error, q.has_raw) == ("2", "too large", False)
    assert not await s.inbound.retry_quarantined(q.id)        # nothing stored to retry

    assert await s.inbound.seen_uidls("box") == set()
    await s.inbound.store_fetched("box", "POP3", 0, [Fetched("uidl-a", mail(9)), Fetched("uidl-b", None,
                                                                                        "not-addressed")])
    assert await s.inbound.seen_uidls("box") == {"uidl-a", "uidl-b"}
    # POP3 messages whose mailbox action was sent: DELEted again while the server still lists them
    assert await s.inbound.finished_uidls("box") == set()
    [pop] = [m for m in await s.inbound.messages("box") if m.uid == "uidl-a"]
    await s.inbound.mark_delivered([Delivery(pop.id, "desk", "ok")])
    assert await s.inbound.finished_uidls("box") == set()          # accepted, DELE not sent yet
    await s.inbound.mark_done([pop.id])
    assert await s.inbound.finished_uidls("box") == {"uidl-a"}


async def test_delivery_retries_backoff_quarantine_retry_and_done(open_store, clock):
    s = open_store()
    await s.inbound.save_campaign(Campaign("desk", "maildir", {}))
    await s.inbound.save_channel(box())
    a, b = await s.inbound.store_fetched("box", "INBOX", 1, [Fetched("1", mail(1)), Fetched("2", mail(2))])
    pending = await s.inbound.pending("box", clock.t)
    assert [m.id for m in pending] == [a, b] and all(isinstance(m, InboundMessage) for m in pending)
    assert await s.inbound.raw(a) == mail(1) and pending[0].has_raw

    # b fails: retried after 10 s, then 20 s, quarantined at the third failure
    for n, delay in ((1, 10), (2, 20)):
        assert not await s.inbound.mark_failed(b, f"fail {n}", max_tries=3, retry_first=10, retry_cap=60)
        assert (await s.inbound.get(b)).next_try_at == clock.t + delay
    assert await s.inbound.next_retry_at("box") == 0          # a is due now
    assert [m.id for m in await s.inbound.pending("box", clock.t)] == [a]
    assert [m.id for m in await s.inbound.pending("box", clock.t + 20)] == [a, b]
    assert await s.inbound.mark_failed(b, "fail 3", max_tries=3, retry_first=10, retry_cap=60)
    q = await s.inbound.quarantined(b)
    assert q is not None and (q.tries, q.last_error, q.has_raw) == (3, "fail 3", True)
    assert await s.inbound.quarantined(a) is None

    # a is accepted: delivered (the mailbox action still due), then done without its content
    await s.inbound.mark_delivered([])
    await s.inbound.mark_delivered([Delivery(a, "desk", "relaybox-1.host", 0)])
    m = await s.inbound.get(a)
    assert (m.status, m.campaign, m.filter_id, m.result) == ("delivered", "desk", 0, "relaybox-1.host")
    assert [p.status for p in await s.inbound.pending("box", clock.t)] == ["delivered"]
    await s.inbound.mark_done([a])
    m = await s.inbound.get(a)
    assert m.status == "done" and not m.has_raw and await s.inbound.raw(a) is None
    ch = await s.inbound.channel("box")
    assert (ch.routed, ch.quarantined) == (1, 1) and await s.inbound.next_retry_at("box") is None

    assert await s.inbound.retry_quarantined(b)
    assert [(p.id, p.tries) for p in await s.inbound.pending("box", clock.t)] == [(b, 0)]
    assert await s.inbound.mark_failed(b, "again", max_tries=1, retry_first=10, retry_cap=60)
    assert [x.id for x in await s.inbound.quarantine(channel="box")] == [b]
    assert await s.inbound.quarantine(channel="other") == []
    assert await s.inbound.drop_quarantined(b) and not await s.inbound.drop_quarantined(b)
    assert await s.inbound.get(b) is None


async def test_forward_reservation_is_stable_across_redeliveries(open_store):
    s = open_store()
    await s.inbound.save_campaign(Campaign("desk", "smtp", {"forward_to": "d@x.test"}))
    await s.inbound.save_channel(box())
    [iid] = await s.inbound.store_fetched("box", "INBOX", 1, [Fetched("1", mail(1))])
    assert await s.inbound.reserve_forward(iid, "QID-1") == "QID-1"
    s.close()
    s = open_store()                          # a restart between the enqueue and the recording
    assert await s.inbound.reserve_forward(iid, "QID-2") == "QID-1"
