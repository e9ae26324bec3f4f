"""Tracking, the pure parts: signed tokens, the MIME/HTML edits on raw bytes (only the HTML part moves),
which messages are tracked, who counts as a machine, the per-address rate limit."""

from __future__ import annotations

import base64
import email
import email.policy
import re

import pytest

from relay.config import RouteConfig, TrackingConfig
from relay.tracking import html, machine, tokens
from relay.tracking.listener import GIF, RateLimiter
from relay.tracking.prepare import Tracker, requested
from store.records import Message, Recipient

pytestmark = pytest.mark.unit

KEY = b"tracking-key-0123456789"
QID = "01JABCDEFGHJKMNP"
SECRET = "tracking-secret-0123456789"


def message(frm="News <news@src.test>") -> Message:
    return Message(id=QID, created_at=0.0, sender="news@src.test", size=1, body_sha256="", from_header=frm)


def rcpt(rid: int, address: str = "bob@dst.test") -> Recipient:
    return Recipient(id=rid, message_id=QID, address=address, domain=address.split("@")[1], status="sending",
                     next_attempt_at=0.0, updated_at=0.0)


def tracker(**kw) -> Tracker:
    cfg = dict(enabled=True, base_url="https://t.example.test/", secret=SECRET)
    cfg.update(kw)
    return Tracker(TrackingConfig(**cfg))


HEAD = b"From: News <news@src.test>\r\nTo: bob@dst.test\r\nSubject: hi\r\nMIME-Version: 1.0\r\n"
TEXT_ONLY = HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello,\r\n\r\nplain text only.\r\n"
HTML_PART = (b"<html><head><title>x</title></head><body><p>Caf\xc3\xa9 "
             b"<a href=\"https://shop.test/p?a=1&amp;b=2\">shop</a> <a href='mailto:x@y.test'>mail</a></p>"
             b"</BODY></html>")
TEXT_PART = (b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
             b"Caf\xc3\xa9 text\r\n")
ATTACHMENT = (b"Content-Type: text/html; name=\"a.html\"\r\n"
              b"Content-Disposition: attachment; filename=a.html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
              + base64.encodebytes(b"<html><body>att</body></html>").replace(b"\n", b"\r\n").rstrip(b"\r\n"))


def qp(data: bytes) -> bytes:
    return html.qp_encode(data)


def multipart(html_cte: str = "quoted-printable", html_body: bytes = HTML_PART) -> bytes:
    if html_cte == "quoted-printable":
        encoded = qp(html_body)
    elif html_cte == "base64":
        encoded = base64.encodebytes(html_body).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    else:
        encoded = html_body
    html_entity = (b"Content-Type: text/html; charset=\"utf-8\"\r\nContent-Transfer-Encoding: "
                   + html_cte.encode() + b"\r\n\r\n" + encoded + b"\r\n")
    alt = (b"--ALT\r\n" + TEXT_PART + b"--ALT\r\n" + html_entity + b"--ALT--\r\n")
    return (HEAD + b"Content-Type: multipart/mixed; boundary=\"MIX\"\r\n\r\nThis is MIME.\r\n"
            b"--MIX\r\nContent-Type: multipart/alternative; boundary=ALT\r\n\r\n" + alt
            + b"--MIX\r\n" + ATTACHMENT + b"\r\n--MIX--\r\nepilogue\r\n")


def html_of(raw: bytes) -> bytes:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    parts = [p for p in msg.walk() if p.get_content_type() == "text/html"
             and p.get_content_disposition() != "attachment"]
    return parts[0].get_payload(decode=True)


# ---- tokens -----------------------------------------------------------------------------------------------
def test_open_token_round_trip_and_forgery():
    tok = tokens.open_token(QID, 42, KEY)
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,60}", tok)
    assert tokens.open_target(tok, [KEY]) == tokens.Target(QID, 42)
    assert tokens.open_target(tok, [b"another-key-0123456789", KEY]) == tokens.Target(QID, 42)  # rotation
    assert tokens.open_target(tok, [b"another-key-0123456789"]) is None
    raw = base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))
    for i in range(len(raw)):            # every single altered byte is refused
        bad = bytearray(raw)
        bad[i] ^= 0x01
        assert tokens.open_target(base64.urlsafe_b64encode(bytes(bad)).rstrip(b"=").decode(), [KEY]) is None
    other = tokens.open_token(QID, 43, KEY)
    assert tokens.open_target(other[:-21] + tok[-21:], [KEY]) is None     # another body with this MAC
    for junk in ("", "x", "!!!!", "A" * 5000, tok + "A", tok[:-1]):
        assert tokens.open_target(junk, [KEY]) is None
    assert tokens.click_target(tok, [KEY]) is None                         # an open token is no click


def test_click_token_covers_the_url():
    tok = tokens.click_token(QID, 7, "https://shop.test/p?a=1&b=2", KEY)
    assert tokens.click_target(tok, [KEY]) == tokens.Target(QID, 7, "https://shop.test/p?a=1&b=2")
    assert tokens.open_target(tok, [KEY]) is None
    raw = bytearray(base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4)))
    raw[25] ^= 0x20                                                         # a byte of the URL changed
    assert tokens.click_target(base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode(), [KEY]) is None
    with pytest.raises(ValueError):
        tokens.open_token("not-a-queue-id", 1, KEY)


def test_keys_from_config_and_file(tmp_path):
    assert tokens.load_keys(TrackingConfig()) == []
    f = tmp_path / "track.key"
    f.write_text("new-key-0123456789abc\n\nold-key-0123456789abc\n")
    assert tokens.load_keys(TrackingConfig(secret_file=str(f))) == [b"new-key-0123456789abc",
                                                                    b"old-key-0123456789abc"]
    with pytest.raises(ValueError, match="cannot read"):
        tokens.load_keys(TrackingConfig(secret_file=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="tracking.base_url"):
        TrackingConfig(enabled=True, secret=SECRET)
    with pytest.raises(ValueError, match="at least 16"):
        TrackingConfig(secret="short")
    with pytest.raises(ValueError, match="machine_networks"):
        TrackingConfig(machine_networks=["not-a-net"])


# ---- which messages, which features -----------------------------------------------------------------------
def test_opt_in_by_route_domain_or_header_off_by_default():
    assert requested(None) is None and requested("gibberish") is None
    assert requested("opens") == {"opens"} and requested("Opens, clicks") == {"opens", "clicks"}
    assert requested("off") == frozenset() and requested("opens off") == frozenset()
    off = Tracker(TrackingConfig())
    assert off.features(message(), "opens", None) == frozenset()           # disabled: the header is no use
    t = tracker(routes=["m365"], sender_domains=["example.org"])
    m365 = RouteConfig(name="m365", host="smtp.example.test")
    assert t.features(message(), None, None) == frozenset()                # nothing listed
    assert t.features(message(), None, m365) == {"opens"}                  # route; clicks off in the config
    assert t.features(message("a@mail.example.org"), None, None) == {"opens"}   # parent domain listed
    assert t.features(message(), "opens", None) == {"opens"}               # per message
    assert t.features(message(), "off", m365) == frozenset()               # opted out
    assert t.features(message(), "clicks", None) == frozenset()            # clicks not allowed
    assert tracker(clicks=True, routes=["mx"]).features(message(), None, None) == {"opens", "clicks"}


def test_text_only_mail_is_unchanged_byte_for_byte():
    t = tracker(routes=["mx"], clicks=True)
    p = t.prepare(message(), TEXT_ONLY, None)
    assert p.body is TEXT_ONLY and p.personalize is None
    with_header = TEXT_ONLY.replace(b"Subject: hi\r\n", b"Subject: hi\r\nX-Relaybox-Track: opens\r\n")
    p = t.prepare(message(), with_header, None)
    assert p.body == TEXT_ONLY and p.personalize is None                   # only the header went
    nothing = tracker()
    assert nothing.prepare(message(), multipart(), None).body == multipart()   # untracked HTML: unchanged


def test_control_header_is_stripped_even_when_disabled_and_folded():
    raw = multipart().replace(b"Subject: hi\r\n", b"Subject: hi\r\nx-relaybox-TRACK: opens,\r\n\tclicks\r\n")
    assert html.control_value(raw) == "opens, clicks"
    p = Tracker(TrackingConfig()).prepare(message(), raw, None)
    assert p.body == multipart() and p.personalize is None


@pytest.mark.parametrize("cte", ["quoted-printable", "base64", "8bit"])
def test_pixel_and_links_in_the_html_part_only(cte):
    raw = multipart(cte)
    t = tracker(clicks=True)
    asked = raw.replace(b"Subject: hi\r\n", b"Subject: hi\r\nX-Relaybox-Track: opens clicks\r\n")
    p = t.prepare(message(), asked, None)
    assert p.body == raw and p.features == {"opens", "clicks"}
    out = p.personalize(rcpt(42))
    # every byte outside the HTML part's body is where it was
    hs, bs, be, found_cte = html.find_html(raw)
    hs2, bs2, be2, _ = html.find_html(out)
    assert found_cte == cte and (hs2, bs2) == (hs, bs)
    assert out[:bs] == raw[:bs] and out[be2:] == raw[be:]
    doc = html_of(out)
    pixel = re.search(rb'<img src="https://t\.example\.test/o/([A-Za-z0-9_-]+)\.gif" width="1"', doc)
    assert pixel and doc.index(pixel.group(0)) < doc.lower().rindex(b"</body>")
    assert tokens.open_target(pixel.group(1).decode(), [SECRET.encode()]) == tokens.Target(QID, 42)
    link = re.search(rb'href="https://t\.example\.test/c/([A-Za-z0-9_-]+)"', doc)
    target = tokens.click_target(link.group(1).decode(), [SECRET.encode()])
    assert target == tokens.Target(QID, 42, "https://shop.test/p?a=1&b=2")   # &amp; read as a browser does
    assert b"href='mailto:x@y.test'" in doc and "Caf\u00e9".encode() in doc
    assert html_of(p.personalize(rcpt(43))) != doc                        # one body per recipient
    msg = email.message_from_bytes(out, policy=email.policy.compat32)
    att = [x for x in msg.walk() if x.get_content_disposition() == "attachment"][0]
    assert att.get_payload(decode=True) == b"<html><body>att</body></html>"  # the attachment is not tracked


def test_qp_lines_stay_short_and_decode_back():
    data = b"a" * 200 + b"=\t \r\n" + "\u00e9t\u00e9 ".encode() * 40 + b"\r\nend \r\n"
    enc = html.qp_encode(data)
    assert max(len(line) for line in enc.split(b"\r\n")) <= 76
    import binascii
    assert binascii.a2b_qp(enc) == data


def test_7bit_part_with_a_long_line_becomes_quoted_printable():
    line = b"<html><body>" + b"x" * 800 + b'<a href="https://shop.test/' + b"p" * 100 + b'">l</a>'
    raw = HEAD + b"Content-Type: text/html\r\n\r\n" + line + b"</body></html>\r\n"
    assert len(line) < 998
    t = tracker(routes=["mx"], clicks=True)
    out = t.prepare(message(), raw, None).personalize(rcpt(5))
    assert b"Content-Type: text/html\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" in out
    assert max(len(line) for line in out.split(b"\r\n")) <= 76
    assert html_of(out).startswith(b"<html><body>" + b"x" * 800 + b'<a href="https://t.example.test/c/')
    assert out.startswith(HEAD)


def test_html_without_body_tag_and_single_part_html():
    assert html.insert_pixel(b"<p>hi</p>", "https://t/o/x.gif").startswith(b"<p>hi</p>\r\n<img ")
    assert html.insert_pixel(b"<p>hi</p></html>", "u").index(b"<img") < 20
    raw = HEAD + b"Content-Type: text/html; charset=us-ascii\r\n\r\n<html><body>hi</body></html>\r\n"
    out = tracker(routes=["mx"]).prepare(message(), raw, None).personalize(rcpt(9))
    assert out.startswith(HEAD + b"Content-Type: text/html; charset=us-ascii\r\n\r\n<html><body>hi\r\n<img ")
    assert out.endswith(b"</body></html>\r\n")


def test_parts_left_alone():
    wide = HEAD + b"Content-Type: text/html; charset=utf-16\r\n\r\n\xff\xfe<\x00/\x00\r\n"
    assert html.find_html(wide) is None
    unknown = HEAD + b"Content-Type: text/html\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\n<p>\r\n"
    assert html.edit_html(unknown, lambda d: d + b"!") is None
    unclosed = (HEAD + b"Content-Type: multipart/alternative; boundary=B\r\n\r\n"
                b"--B\r\nContent-Type: text/html\r\n\r\n<p>")
    assert html.find_html(unclosed) is None                   # no close delimiter: not touched


# ---- machine opens, rate limit -------------------------------------------------------------------------
@pytest.mark.parametrize("ua,ip,reason", [
    ("Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
     "66.249.84.1", "google-proxy"),
    ("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", "98.137.1.1", "yahoo-proxy"),
    ("Mozilla/5.0", "203.0.113.9", "apple-mpp"),
    ("Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 (KHTML, like Gecko)", "17.58.1.1", "network"),
    ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 HeadlessChrome/126.0 Safari/537.36", "10.0.0.1",
     "bot-agent"),
    ("python-requests/2.31", "10.0.0.1", "bot-agent"),
    ("", "10.0.0.1", "no-agent"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.0", "198.51.100.7",
     None),
    ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)", "::ffff:198.51.100.7",
     None),
])
def test_machine_classification(ua, ip, reason):
    assert machine.classify(ua, ip, machine.networks(["17.0.0.0/8"])) == reason
    assert reason is None or reason in machine.REASONS


def test_rate_limiter_per_address():
    now = [0.0]
    rl = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [rl.allow("a") for _ in range(4)] == [True, True, True, False]
    assert rl.allow("b")                                    # another address has its own bucket
    now[0] += 0.5                                           # one token back
    assert rl.allow("a") and not rl.allow("a")


def test_the_gif_is_a_1x1_gif():
    assert len(GIF) == 43 and GIF.startswith(b"GIF89a\x01\x00\x01\x00") and GIF.endswith(b";")
