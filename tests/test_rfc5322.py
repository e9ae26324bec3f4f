"""relay/rfc5322.py: the one reading of where a message's body starts, used by intake, DKIM and DSNs."""

import pytest

from relay import rfc5322
from relay.delivery import dkim
from relay.intake.headers import prepare_message

pytestmark = pytest.mark.unit

CASES = [
    (b"A: 1\r\nB: 2\r\n\r\nbody\r\n", (b"A: 1\r\nB: 2\r\n", b"\r\n", b"body\r\n")),
    (b"A: 1\nB: 2\n\nbody\n", (b"A: 1\nB: 2\n", b"\n", b"body\n")),
    (b"A: 1\r\n\r\n", (b"A: 1\r\n", b"\r\n", b"")),
    (b"A: 1\r\n", (b"A: 1\r\n", b"", b"")),                       # headers only, no empty line
    (b"\r\nbody only\r\n", (b"", b"\r\n", b"body only\r\n")),
    (b"no header here\r\n\r\nx\r\n", (b"", b"", b"no header here\r\n\r\nx\r\n")),
    (b"A: 1\r\nB: x\n\ny\r\n\r\nz", (b"A: 1\r\nB: x\n", b"\n", b"y\r\n\r\nz")),   # the first empty line wins
]


@pytest.mark.parametrize("message,expected", CASES)
def test_split_finds_the_first_empty_line_and_loses_nothing(message, expected):
    assert rfc5322.split(message) == expected
    assert b"".join(rfc5322.split(message)) == message


def test_fields_keep_folding_and_unknown_lines():
    head = b"Subject: a\r\n  folded\r\nX-Y:z\r\nnot a field\r\nTo: t\r\n"
    assert rfc5322.fields(head) == [("subject", b"Subject: a\r\n  folded\r\n"), ("x-y", b"X-Y:z\r\n"),
                                    ("", b"not a field\r\n"), ("to", b"To: t\r\n")]


def test_intake_dkim_and_the_format_agree_on_the_body():
    msg = b"From: a@x.test\r\nSubject: s\r\n\r\nline 1\r\n\r\nline 3\r\n"
    _, _, body = rfc5322.split(msg)
    assert dkim.split_message(msg) == (b"From: a@x.test\r\nSubject: s\r\n", body)
    prepared = prepare_message(msg, hostname="relay.test", helo="app", client_ip="127.0.0.1", tls=False,
                               auth=False, rcpts=["b@y.test"], now=1_800_000_000.0)
    assert rfc5322.split(prepared.body)[2] == body       # trace headers added, body byte-for-byte
    assert [n for n, _ in dkim.parse_headers(rfc5322.split(msg)[0])] == [b"From", b"Subject"]
