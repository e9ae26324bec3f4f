"""What delivery does for tracking: decide per message, then build each recipient's body before signing.

    tracker = Tracker(config.tracking)                   # keys loaded once (raises ValueError on a bad file)
    prepared = tracker.prepare(message, body, route)
    prepared.body            # the message without X-Relaybox-Track (byte for byte otherwise)
    prepared.personalize     # None: send prepared.body; else recipient -> that recipient's body

A message is tracked when tracking is enabled and it has an inline HTML part, and either its header says so
(``X-Relaybox-Track: opens`` / ``clicks`` / ``opens, clicks``) or its route (``tracking.routes``, ``mx``
for direct MX delivery) or From domain (``tracking.sender_domains``, parent domains included) is listed;
``X-Relaybox-Track: off`` opts a message out. The control header is stripped from every message, tracked
or not, before DKIM signs it.

The pixel names one recipient, so a tracked message needs one body per recipient: delivery then sends one
SMTP transaction per recipient on the same connection (as it already does with VERP), each body signed on
its own. A shared per-message token would record that *someone* opened the message, never who, and the
per-recipient flag is the point of the feature; the cost (one DATA per recipient) falls only on tracked mail.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from relay.config import RouteConfig, TrackingConfig
from relay.delivery.routes import from_address
from relay.tracking import html, tokens
from store.records import Message, Recipient

OPENS = "opens"
CLICKS = "clicks"
_WORDS = {"opens": OPENS, "open": OPENS, "on": OPENS, "yes": OPENS, "clicks": CLICKS, "click": CLICKS}
_OFF = {"off", "none", "no"}


@dataclass(frozen=True)
class Prepared:
    body: bytes
    personalize: Callable[[Recipient], bytes] | None = None
    features: frozenset[str] = frozenset()


def requested(value: str | None) -> frozenset[str] | None:
    """Features named by an ``X-Relaybox-Track`` value: a set (empty for ``off``), or None when the value
    names nothing we know (the config decides then)."""
    if value is None:
        return None
    words = [w for w in re.split(r"[\s,;]+", value.lower()) if w]
    if any(w in _OFF for w in words):
        return frozenset()
    found = frozenset(_WORDS[w] for w in words if w in _WORDS)
    return found or None


class Tracker:
    def __init__(self, config: TrackingConfig):
        self.config = config
        self.keys = tokens.load_keys(config) if config.enabled else []
        self.base = config.base_url.rstrip("/")
        self.routes = {r.strip() for r in config.routes}
        self.domains = {d.strip().lstrip("@").rstrip(".").lower() for d in config.sender_domains}

    def open_url(self, queue_id: str, recipient_id: int) -> str:
        return f"{self.base}/o/{tokens.open_token(queue_id, recipient_id, self.keys[0])}.gif"

    def click_url(self, queue_id: str, recipient_id: int, url: str) -> str | None:
        if url.startswith(self.base + "/"):
            return None                               # one of ours already
        return f"{self.base}/c/{tokens.click_token(queue_id, recipient_id, url, self.keys[0])}"

    def _listed(self, message: Message, route: RouteConfig | None) -> bool:
        if (route.name if route is not None else "mx") in self.routes:
            return True
        domain = from_address(message).rpartition("@")[2]
        while domain:
            if domain in self.domains:
                return True
            domain = domain.partition(".")[2]
        return False

    def features(self, message: Message, control: str | None, route: RouteConfig | None) -> frozenset[str]:
        """What to track in this message (empty: nothing)."""
        if not self.config.enabled:
            return frozenset()
        wanted = requested(control)
        if wanted is None:
            if not self._listed(message, route):
                return frozenset()
            wanted = frozenset({OPENS, CLICKS})
        if not self.config.clicks:
            wanted -= {CLICKS}
        return wanted

    def prepare(self, message: Message, body: bytes, route: RouteConfig | None) -> Prepared:
        control = html.control_value(body)
        stripped = html.strip_control(body) if control is not None else body
        feats = self.features(message, control, route)
        if not feats or html.find_html(stripped) is None:
            return Prepared(stripped)               # untracked or text-only: unchanged

        def personalize(r: Recipient) -> bytes:
            def edit(doc: bytes) -> bytes:
                if CLICKS in feats:
                    doc = html.rewrite_links(doc, lambda url: self.click_url(message.id, r.id, url))
                if OPENS in feats:
                    doc = html.insert_pixel(doc, self.open_url(message.id, r.id))
                return doc

            out = html.edit_html(stripped, edit)
            return stripped if out is None else out

        return Prepared(stripped, personalize, feats)
