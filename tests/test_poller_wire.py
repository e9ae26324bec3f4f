"""The poller's fast paths give what the slow ones gave: the linear IMAP response reader hands the FETCH
command the same lines and literals as aioimaplib's own reader, however the server's bytes are cut into
reads; a single-part message's bodies and attachments equal those of a full parse; a batch's Maildir files
are written once, also when a batch is delivered again after a crash."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import os
import random

import aioimaplib
import pytest

from poller import campaigns, imap_wire
from poller.config import CampaignConfig
from poller.router import POLICY, MessageView

pytestmark = pytest.mark.unit


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)


def _response(tag: str) -> bytes:
    """A UID FETCH answer as Dovecot sends it: literals of several sizes (one holding parentheses, CRLFs
    and something that looks like a literal marker), an untagged EXISTS in the middle, the tagged OK."""
    rng = random.Random(3)
    out = b""
    for uid in range(1, 30):
        body = (f"Subject: m{uid}\r\n\r\n".encode() + bytes(rng.randrange(32, 127) for _ in range(
            rng.choice([10, 300, 5000, 70000]))) + b"\r\n(odd) {12}\r\n)")
        out += f"* {uid} FETCH (UID {100 + uid} BODY[] {{{len(body)}}}\r\n".encode() + body + b")\r\n"
        if uid == 7:
            out += b"* 40 EXISTS\r\n"
    return out + f"{tag} OK Fetch completed (0.001 + 0.000 secs).\r\n".encode()


async def _read(protocol_class: type, command_class: type, cuts: list[int]) -> tuple[str, list]:
    proto = protocol_class(asyncio.get_running_loop(), None)
    proto.connection_made(_Transport())
    proto.state = aioimaplib.SELECTED
    cmd = command_class(proto.new_tag(), "101:129", "(UID BODY.PEEK[])", prefix="UID", loop=proto.loop)
    waiting = asyncio.ensure_future(proto.execute(cmd))
    await asyncio.sleep(0)
    data = _response(cmd.tag)
    edges = [0] + sorted(c % len(data) for c in cuts) + [len(data)]
    for a, b in zip(edges, edges[1:], strict=False):
        if b > a:
            proto.data_received(data[a:b])
    resp = await asyncio.wait_for(waiting, 5)
    return resp.result, [bytes(x) for x in resp.lines]


@pytest.mark.parametrize("seed", range(6))
def test_the_linear_reader_hands_fetch_what_aioimaplib_does(seed):
    rng = random.Random(seed)
    size = len(_response("ABCD1"))          # a tag as long as the real one: the cut points span the response
    cuts = [rng.randrange(size) for _ in range(rng.choice([0, 3, 40, 400]))] + [size // 2, size // 2 + 1]

    async def both():
        ours = await _read(imap_wire.Protocol, imap_wire.FetchCommand, cuts)
        theirs = await _read(aioimaplib.IMAP4ClientProtocol, aioimaplib.FetchCommand, cuts)
        return ours, theirs

    ours, theirs = asyncio.run(both())
    assert ours == theirs
    assert ours[0] == "OK"
    literals = [x for x in ours[1] if x.startswith(b"Subject: ")]
    assert len(literals) == 29 and all(x.endswith(b"\r\n(odd) {12}\r\n)") for x in literals)


SINGLE_PARTS = [
    b"From: a@b.test\r\nTo: c@d.test\r\nSubject: hi\r\n\r\nhello\r\nworld\r\n",
    b"From: a@b.test\nSubject: bare LF\n\nhello\nworld\n",
    b"From: a@b.test\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes("<p>h\u00e9llo</p>".encode()),
    b"From: a@b.test\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\nh=E9llo =\r\nworld\r\n",
    b"From: a@b.test\r\nContent-Type: application/pdf; name=x.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(b"%PDF-1.4 data"),
    b"From: a@b.test\r\nContent-Type: text/plain\r\n"
    b"Content-Disposition: attachment; filename=a.txt\r\n\r\nx\r\n",
    b"From: a@b.test\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nh\xc3\xa9llo \xff\r\n",
    b"From: a@b.test\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\nbody\r\n",
    b"From: a@b.test\r\nnot a header line\r\nSubject: x\r\n\r\nbody\r\n",
    b"From: a@b.test\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
    b"--XX\r\nContent-Type: text/plain\r\n\r\nbody\r\n"
    b"--XX\r\nContent-Type: application/octet-stream; name=f.bin\r\n\r\nabc\r\n--XX--\r\n",
    b"From: a@b.test\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner body\r\n",
]


@pytest.mark.parametrize("raw", SINGLE_PARTS)
def test_bodies_and_attachments_equal_those_of_a_full_parse(raw):
    fast = MessageView(raw)
    full = MessageView(raw)
    full._msg = email.message_from_bytes(raw, policy=POLICY)
    assert (fast.text, fast.html, fast.attachments()) == (full.text, full.html, full.attachments())
    doc = campaigns.document(fast, inbound_id=1, channel="c", campaign="k", filter_index=None)
    assert doc == campaigns.document(full, inbound_id=1, channel="c", campaign="k", filter_index=None)


def test_header_fields_are_decoded_as_policy_default_does():
    raw = (b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.net>\r\nTo: Desk <x@org.test>, y@org.test\r\n"
           b"Subject: =?utf-8?b?SGVsbG8gd29ybGQ=?=\r\nDate: Mon, 1 Dec 2026 10:00:00 +0000\r\n\r\nbody\r\n")
    default = email.message_from_bytes(raw, policy=email.policy.default)
    assert MessageView(raw).fields() == [(k, str(v)) for k, v in default.items()]
    assert MessageView(raw).sender == "j@example.net"
    assert MessageView(raw).addresses("To") == ["x@org.test", "y@org.test"]


def test_a_batch_delivered_again_is_not_written_twice(tmp_path):
    camp = CampaignConfig("desk")
    base = campaigns.ensure_maildir(camp, str(tmp_path))
    batch = [campaigns.stage_maildir(camp, f"Subject: {i}\r\n\r\nbody {i}\r\n".encode(), i, str(tmp_path))
             for i in range(1, 13)]                     # more than FSYNC_EACH: the syncfs() path
    campaigns.publish_maildir(batch[:5], first_attempt={s.inbound_id for s in batch[:5]})
    # a reader took message 1 (new/ -> cur/ with flags); a crash came before the acceptances were recorded
    first = batch[0].name
    os.rename(os.path.join(base, "new", first), os.path.join(base, "cur", first + ":2,S"))
    campaigns.publish_maildir(batch)                   # the same batch again, now not a first attempt
    names = sorted(os.listdir(os.path.join(base, "new"))) + sorted(os.listdir(os.path.join(base, "cur")))
    assert sorted(names) == sorted([s.name for s in batch[1:]] + [first + ":2,S"])
    assert os.listdir(os.path.join(base, "tmp")) == []
    with open(os.path.join(base, "new", batch[11].name), "rb") as fh:
        assert fh.read() == batch[11].raw
    few = [campaigns.stage_maildir(camp, b"Subject: x\r\n\r\ny\r\n", 99, str(tmp_path))]
    campaigns.publish_maildir(few, first_attempt={99})  # one file: the fsync path
    assert os.path.exists(os.path.join(base, "new", few[0].name))


def test_unstructured_fields_read_as_the_parser_decodes_them():
    """Plain-ASCII unstructured fields skip the parser: their value must be what it would have made."""
    rng = random.Random(2)
    alphabet = "abcXYZ019 \t!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
    names = ["Subject", "X-Test", "Received", "Comments", "List-Id", "Thread-Topic"]
    for _ in range(400):
        fields = []
        for _ in range(rng.randrange(1, 6)):
            parts = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))).strip(" \t") or "x"
                     for _ in range(rng.randrange(1, 3))]
            fields.append(f"{rng.choice(names)}: " + "\r\n ".join(parts))          # folded when 2 parts
        raw = ("From: a@b.test\r\n" + "\r\n".join(fields) + "\r\n\r\nbody\r\n").encode()
        default = email.message_from_bytes(raw, policy=email.policy.default)
        assert MessageView(raw).fields() == [(k, str(v)) for k, v in default.items()], raw
