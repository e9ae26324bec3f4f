"""Classification of replies and exceptions into one DeliveryError."""

import asyncio
import socket
import ssl

import aiosmtplib
import pytest

from relay.errors import DeliveryError, EnvelopeError, from_exception, from_reply, split_enhanced

pytestmark = pytest.mark.unit


def test_2xx_and_3xx_are_success():
    assert from_reply(250, "2.0.0 OK") is None
    assert from_reply(354, "go ahead") is None


def test_4xx_is_temporary_deferred_with_enhanced_code():
    e = from_reply(451, "4.7.1 Greylisted, try again in 300 seconds", "rcpt")
    assert (e.code, e.enhanced, e.temporary, e.status) == (451, "4.7.1", True, "deferred")
    assert e.text == "Greylisted, try again in 300 seconds"


def test_5xx_is_permanent_bounced():
    e = from_reply(550, "5.1.1 <bob@example.com>: Recipient address rejected: User unknown", "rcpt")
    assert (e.code, e.enhanced, e.temporary, e.status) == (550, "5.1.1", False, "bounced")


def test_552_at_rcpt_is_temporary_but_not_at_data():
    e = from_reply(552, "5.2.2 Mailbox full", "rcpt")
    assert e.temporary and e.status == "deferred" and e.enhanced == "4.2.2"
    e = from_reply(552, "5.3.4 Message too big", "data")
    assert not e.temporary and e.status == "bounced"


def test_missing_or_inconsistent_enhanced_code_gets_default():
    assert from_reply(554, "Transaction failed").enhanced == "5.0.0"
    assert from_reply(421, "Service not available").enhanced == "4.0.0"
    assert from_reply(550, "4.1.1 odd").enhanced == "5.0.0"


def test_multiline_reply_keeps_first_enhanced_code():
    e = from_reply(550, "5.7.1 Message rejected\n5.7.1 see https://example.com/policy")
    assert e.enhanced == "5.7.1" and e.text == "Message rejected see https://example.com/policy"


def test_split_enhanced():
    assert split_enhanced("2.1.5 Ok") == ("2.1.5", "Ok")
    assert split_enhanced("Ok 2.1.5") == (None, "Ok 2.1.5")


def test_exceptions_are_temporary():
    assert from_exception(ConnectionRefusedError(111, "refused")).as_reply()[:2] == (421, "4.4.1")
    assert from_exception(asyncio.TimeoutError(), "data").enhanced == "4.4.2"
    assert from_exception(ssl.SSLError(1, "bad cert")).enhanced == "4.7.5"
    assert from_exception(socket.gaierror(-2, "Name or service not known")).enhanced == "4.4.3"
    for exc in (aiosmtplib.SMTPConnectError("x"), aiosmtplib.SMTPServerDisconnected("gone"),
                aiosmtplib.SMTPTimeoutError("slow")):
        e = from_exception(exc)
        assert e.temporary and e.status == "deferred", exc


def test_aiosmtplib_response_errors_keep_the_servers_reply():
    e = from_exception(aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "a@b.c"), "rcpt")
    assert (e.code, e.enhanced, e.temporary) == (550, "5.1.1", False)
    e = from_exception(aiosmtplib.SMTPResponseException(452, "4.3.1 Insufficient storage"))
    assert e.temporary


def test_envelope_error_is_failed_invalid():
    e = EnvelopeError("a@b.c\r\nRCPT TO:<x@y>", "control characters")
    assert isinstance(e, DeliveryError) and e.status == "failed" and e.reason == "invalid"
    assert "\r" not in str(e) and e.enhanced == "5.1.3"
