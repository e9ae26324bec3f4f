"""Unit tests of the DATA phase and the header preparation (no network)."""

import pytest

from relay.intake.data import DataPhase, check_and_clean, unstuff
from relay.intake.headers import HeaderError, parse_send_at, prepare_message

pytestmark = pytest.mark.unit


def feed(chunks, limit=1_000_000):
    """Feed the chunks one by one as a session does: (result, the bytes after it), or (None, b"")."""
    phase = DataPhase(limit)
    for i, c in enumerate(chunks):
        phase.feed(c)
        ended = phase.end()
        if ended is not None:
            res, rest = ended
            return res, rest + b"".join(chunks[i + 1:])
    return None, b""


@pytest.mark.parametrize("split", [1, 2, 3, 5, 7, 1000])
def test_terminator_found_across_any_chunk_split(split):
    payload = b"Subject: x\r\n\r\nline\r\n..dotted\r\n.\r\nQUIT\r\n"
    res, rest = feed([payload[i:i + split] for i in range(0, len(payload), split)])
    assert res.content == b"Subject: x\r\n\r\nline\r\n..dotted\r\n"
    assert rest == b"QUIT\r\n"   # pipelined bytes after the terminator are left for the command loop


def test_empty_message_and_no_end_yet():
    res, rest = feed([b".\r\n"])
    assert res.content == b"" and rest == b""
    res, _ = feed([b"Subject: x\r\n\r\nno end"])
    assert res is None


def test_only_crlf_dot_crlf_terminates():
    res, rest = feed([b"a\n.\r\nb\r\n.\nc\r\n\r.\r\nd\r\n.\r\nNEXT"])
    assert res.content == b"a\n.\r\nb\r\n.\nc\r\n\r.\r\nd\r\n"
    assert rest == b"NEXT"


def test_oversize_is_drained_not_stored():
    big = b"x" * 998 + b"\r\n"
    res, rest = feed([big] * 300 + [b".\r\nNOOP\r\n"], limit=100_000)
    assert res.error == "too_big" and res.content is None
    assert rest == b"NOOP\r\n"


def test_unstuff_and_clean():
    assert unstuff(b"..a\r\nb\r\n...c\r\n") == b".a\r\nb\r\n..c\r\n"
    body, err = check_and_clean(b"a\nb\rc\r\n", bare_lf="normalize", max_line=998)
    assert (body, err) == (b"a\r\nb\r\nc\r\n", None)
    assert check_and_clean(b"a\nb\r\n", bare_lf="reject", max_line=998) == (None, "bare_lf")
    assert check_and_clean(b"y" * 999 + b"\r\n", bare_lf="normalize", max_line=998) == (None, "line_too_long")


def test_prepare_adds_trace_and_missing_ids():
    p = prepare_message(b"Subject: hi\r\n\r\nbody\r\n", hostname="relay.test", helo="app.test",
                        client_ip="10.0.0.1", tls=True, auth=True, rcpts=["a@x.test"], now=1_700_000_000)
    head, _, body = p.body.partition(b"\r\n\r\n")
    assert body == b"body\r\n"
    assert head.startswith(b"Received: from app.test ([10.0.0.1])\r\n"
                           b"\tby relay.test (relaybox) with ESMTPSA id " + p.queue_id.encode())
    assert f"X-Relaybox-ID: {p.queue_id}".encode() in head
    assert p.message_id == f"<{p.queue_id}@relay.test>" and b"Date: Tue, 14 Nov 2023 22:13:20 GMT" in head
    assert p.subject == "hi"


def test_prepare_strips_client_relaybox_headers_and_schedules():
    p = prepare_message(b"X-Relaybox-ID: FORGED\r\nX-Relaybox-Send-At: 2030-01-01T00:00:00+01:00\r\n"
                        b"Message-ID: <a@b>\r\nDate: x\r\n\r\nb\r\n", hostname="h", helo="c", client_ip="::1",
                        tls=False, auth=False, rcpts=["a@x.test", "b@x.test"])
    assert b"FORGED" not in p.body and b"Send-At" not in p.body
    assert p.send_at == 1893452400.0 and p.message_id == "<a@b>"


def test_prepare_message_without_headers_keeps_content_as_body():
    p = prepare_message(b"just text\r\n", hostname="h", helo="c", client_ip="1.2.3.4", tls=False, auth=False,
                        rcpts=["a@x.test"])
    assert p.body.endswith(b"\r\n\r\njust text\r\n")


@pytest.mark.parametrize("value", ["tomorrow", "2030-13-01T00:00:00Z", "2030-01-01T00:00:00"])
def test_bad_send_at(value):
    with pytest.raises(HeaderError):
        parse_send_at(value)


def test_rfc5322_send_at():
    assert parse_send_at("Tue, 1 Jan 2030 00:00:00 +0000") == 1893456000.0
