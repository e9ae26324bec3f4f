"""PollerService: one task per enabled channel (IDLE when offered, else an interval), campaign delivery,
quarantine, status, validation. One failing channel never stops the others: each task catches its own
errors, records them on the channel and backs off (5 s doubling to ``poller.error_backoff_cap``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Awaitable, Callable

import aiohttp
from prometheus_client import Counter, Gauge

from poller import campaigns, channels
from poller.config import CampaignConfig, ChannelConfig, PollerConfig
from poller.fetcher import Accepted, PollResult, poll_imap, run_once, wait_idle
from poller.imap import MailboxError
from poller.router import MessageView, ParseError, route
from poller.validate import Validation, open_session, validate_stored
from relay.spool.retry import RetryPolicy, backoff
from relay.spool.spool import Spool
from relay.tasks import cancel_and_wait
from store import StorageError, Store
from store.inbound import Delivery

log = logging.getLogger("poller")

RECORD_EVERY = 10.0           # seconds between two records of a channel's successful polls (last_poll_at)

FETCHED = Counter("relaybox_poller_fetched_messages", "Messages fetched and stored, by channel",
                  ["channel"])
ROUTED = Counter("relaybox_poller_routed_messages", "Messages accepted by a campaign",
                 ["channel", "campaign"])
QUARANTINED = Counter("relaybox_poller_quarantined_messages", "Messages put in quarantine", ["channel"])
# the poller runs in one process (worker 0 with worker processes): its live values, no pid label
LAST_SUCCESS = Gauge("relaybox_poller_last_success_timestamp_seconds", "Last successful poll", ["channel"],
                     multiprocess_mode="livemostrecent")
CHANNEL_UP = Gauge("relaybox_poller_channel_up", "1 when the last poll of the channel succeeded", ["channel"],
                   multiprocess_mode="livemostrecent")


class PollerService:
    def __init__(self, store: Store, settings: Any, spool: Spool | None = None,
                 bounce_sink: Callable[..., Awaitable[Any]] | None = None, leases: Any = None):
        self.store = store
        self.inbound = store.inbound
        self.settings = settings
        self.pcfg: PollerConfig = _section(settings, "poller", PollerConfig())
        self.spool = spool
        self.bounce_sink = bounce_sink
        self.tasks: dict[str, asyncio.Task] = {}
        self.state: dict[str, dict] = {}
        self.http: aiohttp.ClientSession | None = None
        self._watch: asyncio.Task | None = None
        self._campaigns: dict[str, tuple[CampaignConfig | None, float]] = {}
        self._maildirs: set[str] = set()          # campaign Maildirs whose directories exist
        # several nodes on one database (relaybox/cluster.py): ``await leases.channels(names)`` -> the
        # channels this node holds the lease of, renewed every ``leases.interval`` seconds
        self.leases = leases

    # ---- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        seeds_c = _section(self.settings, "campaigns", [])
        seeds_ch = _section(self.settings, "channels", [])
        if seeds_c or seeds_ch:
            await channels.seed(self.inbound, seeds_c, seeds_ch)
        self.http = aiohttp.ClientSession()
        if self.pcfg.enabled:
            await self.sync_tasks()
            self._watch = asyncio.get_running_loop().create_task(self._watch_loop())

    async def stop(self) -> None:
        if self._watch:
            self._watch.cancel()
        for t in self.tasks.values():
            t.cancel()
        await asyncio.gather(*self.tasks.values(), *([self._watch] if self._watch else []),
                             return_exceptions=True)
        self.tasks.clear()
        if self.http:
            await self.http.close()

    async def _watch_loop(self) -> None:
        while True:                      # pick up channels added/changed/disabled through the API or CLI
            await asyncio.sleep(5 if self.leases is None else min(5.0, self.leases.interval))
            try:
                await self.sync_tasks()
            except Exception:  # noqa: BLE001
                log.exception("poller: cannot refresh the channel list")

    async def sync_tasks(self) -> None:
        wanted = set(await self.inbound.channel_names(enabled_only=True))
        if self.leases is not None:           # one node polls each channel: the holder of its lease
            wanted = await self.leases.channels(wanted)
        for name in list(self.tasks):
            if name not in wanted:            # disabled or removed: its session ends (IDLE included)
                await cancel_and_wait(self.tasks.pop(name))
                self.state.pop(name, None)
                CHANNEL_UP.labels(name).set(0)
        loop = asyncio.get_running_loop()
        for name in wanted - set(self.tasks):
            self.tasks[name] = loop.create_task(self._channel_loop(name), name=f"channel:{name}")

    # ---- per channel ---------------------------------------------------------------------------------
    async def _channel_loop(self, name: str) -> None:
        errors = RetryPolicy(first=5.0, cap=float(self.pcfg.error_backoff_cap), jitter=0.0)
        st = self.state.setdefault(name, {"up": False, "idle": False, "last_error": None, "failures": 0})
        while True:
            ch = await channels.get_channel(self.inbound, name)
            if ch is None:
                return
            try:
                if ch.protocol == "imap" and ch.idle:
                    await self._imap_persistent(ch, st)
                else:
                    res = await run_once(self.inbound, ch, self.pcfg, self.deliver, self.connect, time.time())
                    await self._success(ch, st, res)
                    await asyncio.sleep(ch.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one channel's trouble stays in that channel
                msg = str(exc) or type(exc).__name__
                st["failures"] = failures = st.get("failures", 0) + 1   # reset by every successful poll
                delay = backoff(failures, errors)
                st.update(up=False, last_error=msg)
                CHANNEL_UP.labels(name).set(0)
                log.warning("channel %s: %s (retry in %.0f s)", name, msg, delay)
                await self.inbound.record_poll(name, msg)
                st.update(recorded=(msg,), recorded_at=time.time())
                await asyncio.sleep(delay)

    async def _imap_persistent(self, ch: ChannelConfig, st: dict) -> None:
        """One logged-in session: poll, then IDLE (if offered) until the server pushes or the interval
        ends."""
        session = await self.connect(ch)
        try:
            while True:
                res = await poll_imap(self.inbound, session, ch, self.pcfg, self.deliver, time.time())
                await self._success(ch, st, res)
                fresh = await channels.get_channel(self.inbound, ch.name)
                if fresh != ch:
                    return                       # settings changed: reconnect with the new ones
                if res.fetched or res.delivered:
                    # more may have come meanwhile, announced in FETCH/STORE replies we do not watch: look
                    # again before IDLE (a quiet poll ends in IDLE, which reports anything newer)
                    continue
                wait: float = min(self.pcfg.idle_timeout, ch.poll_interval)
                retry_at = await self.inbound.next_retry_at(ch.name)
                if retry_at is not None:            # a failed campaign delivery is due again before that
                    wait = max(0.2, min(wait, retry_at - time.time()))
                if "IDLE" in session.capabilities and not ch.sync_all_folders:
                    st["idle"] = True
                    await session.ensure_selected(ch.folder)
                    await wait_idle(session, wait)
                    if session.lost.is_set():
                        raise MailboxError("connection lost during IDLE")
                else:
                    await asyncio.sleep(wait)
        finally:
            await session.logout()

    async def _success(self, ch: ChannelConfig, st: dict, res: PollResult) -> None:
        now = time.time()
        error = "; ".join(res.errors) or None
        # a successful poll ends an outage: the next error backs off from 5 s again (the IDLE loop polls
        # many times in one session, so the reset happens here, not when the session ends)
        st.update(up=error is None, last_error=error, last_poll=now, failures=0)
        CHANNEL_UP.labels(ch.name).set(1 if error is None else 0)
        LAST_SUCCESS.labels(ch.name).set(now)
        if res.fetched:
            FETCHED.labels(ch.name).inc(res.fetched)
        # in the database when the outcome changed, else at most every RECORD_EVERY seconds: an IDLE
        # session polls after every push, and a commit per poll is a disk sync in the way of the next one
        if st.get("recorded") != (error,) or now - st.get("recorded_at", 0.0) >= RECORD_EVERY:
            await self.inbound.record_poll(ch.name, error)
            st.update(recorded=(error,), recorded_at=now)

    async def connect(self, ch: ChannelConfig) -> Any:
        return await open_session(ch, self.inbound, self.http, self.pcfg.timeout)

    # ---- delivery to the campaign -------------------------------------------------------------------
    async def deliver(self, ch: ChannelConfig, inbound_id: int, raw: bytes) -> Accepted | None:
        """Hand one stored message to its campaign. Returns the acceptance for the caller to record (a batch
        of them commits together), or None after recording the failure. A storage failure is the channel's,
        not the message's: it propagates (the channel backs off) instead of counting a try."""
        try:
            if ch.purpose == "bounces":
                if self.bounce_sink is None:
                    raise campaigns.TargetError("no bounce processor configured")
                await self.bounce_sink(raw, raw_ref=f"inbound:{inbound_id}")
                return Accepted(Delivery(inbound_id, "bounces", "parsed"))
            try:
                view = MessageView(raw)
            except ParseError as exc:
                await self._quarantine(ch, inbound_id, f"unparsable: {exc}", final=True)
                return None
            r = route(ch.filters, ch.default_campaign, view)
            camp = await self._campaign(r.campaign)
            if camp is None:
                raise campaigns.TargetError(f"campaign {r.campaign!r} does not exist")
            accepted = await self._to_campaign(ch, camp, inbound_id, raw, view, r.filter_index)
            ROUTED.labels(ch.name, camp.name).inc()
            return accepted
        except campaigns.TargetError as exc:
            await self._quarantine(ch, inbound_id, str(exc))
            return None
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bug on one message must not block the channel
            log.exception("channel %s: delivering inbound %d failed", ch.name, inbound_id)
            await self._quarantine(ch, inbound_id, f"{type(exc).__name__}: {exc}")
            return None

    async def _campaign(self, name: str) -> CampaignConfig | None:
        """The campaign's settings, read at most once a second (not once per message of a backlog)."""
        hit = self._campaigns.get(name)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        camp = await channels.get_campaign(self.inbound, name)
        self._campaigns[name] = (camp, now + 1.0)
        return camp

    async def _to_campaign(self, ch: ChannelConfig, camp: CampaignConfig, inbound_id: int, raw: bytes,
                           view: MessageView, filter_index: int | None) -> Accepted:
        if camp.kind == "maildir":
            base = campaigns.maildir_path(camp, self.pcfg.maildir_root)
            if base not in self._maildirs:            # its directories, created once per Maildir
                self._maildirs.add(await asyncio.to_thread(campaigns.ensure_maildir, camp,
                                                           self.pcfg.maildir_root))
            staged = campaigns.stage_maildir(camp, raw, inbound_id, self.pcfg.maildir_root)
            # written, synced and renamed into new/ with its batch, before the batch's acceptances commit
            return Accepted(Delivery(inbound_id, camp.name, staged.name, filter_index), staged=staged)
        if camp.kind == "webhook":
            if self.http is None:
                raise campaigns.TargetError("the poller is not started (no HTTP client)")
            doc = campaigns.document(view, inbound_id=inbound_id, channel=ch.name, campaign=camp.name,
                                     filter_index=filter_index, attachments=camp.attachments)
            result = await campaigns.deliver_webhook(camp, doc, inbound_id, self.http)
            return Accepted(Delivery(inbound_id, camp.name, result, filter_index), record_now=True)
        return Accepted(Delivery(inbound_id, camp.name, await self._forward(ch, camp, inbound_id, raw),
                                 filter_index))

    async def _forward(self, ch: ChannelConfig, camp: CampaignConfig, inbound_id: int, raw: bytes) -> str:
        """SMTP campaign: into the relay's queue (durable on return). The queue id is reserved on the
        inbound message first and the enqueue is keyed by it, so a redelivery after a crash between the
        enqueue and the recording of the acceptance finds the message queued instead of queueing a copy."""
        if self.spool is None:
            raise campaigns.TargetError("smtp campaign needs the relay queue")
        msg = campaigns.smtp_forward_message(camp, raw, ch.address)
        qid = await self.inbound.reserve_forward(inbound_id, msg.queue_id)
        qid, _created = await self.spool.enqueue_once(dataclasses.replace(msg, queue_id=qid), actor="poller")
        return f"queued as {qid}"

    async def _quarantine(self, ch: ChannelConfig, inbound_id: int, error: str, final: bool = False) -> None:
        went = await self.inbound.mark_failed(inbound_id, error,
                                              max_tries=1 if final else self.pcfg.max_tries,
                                              retry_first=self.pcfg.retry_first,
                                              retry_cap=self.pcfg.retry_cap)
        if went:
            QUARANTINED.labels(ch.name).inc()
            log.warning("channel %s: inbound %d quarantined: %s", ch.name, inbound_id, error)
        else:
            log.warning("channel %s: inbound %d not delivered (tried again later): %s", ch.name, inbound_id,
                        error)

    # ---- admin ---------------------------------------------------------------------------------------
    async def validate(self, name: str) -> Validation:
        return await validate_stored(self.inbound, name, self.pcfg.timeout, self.http)

    def status(self) -> list[dict]:
        """Per channel the poller has run: ``up`` only while its task runs and its last poll succeeded
        without an error (a disabled channel is never up)."""
        out = []
        for name, st in sorted(self.state.items()):
            running = name in self.tasks
            out.append({"name": name, "running": running,
                        "up": running and bool(st.get("up")) and not st.get("last_error"),
                        "idle": running and bool(st.get("idle")), "last_poll": st.get("last_poll"),
                        "last_error": st.get("last_error")})
        return out


def _section(settings: Any, name: str, default: Any) -> Any:
    getter = getattr(settings, "section", None)
    value = getter(name) if getter else None
    return default if value is None else value
