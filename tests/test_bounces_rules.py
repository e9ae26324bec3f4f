"""Bounce parser rules added for issue 13's figures, one test per rule, each on a small notice written here
(not copied from any corpus): the evidence a rule uses, and the evidence that keeps it from firing."""

from __future__ import annotations

import pytest

from relay.bounces import parse
from relay.bounces.reasons import classify, kind, smtp_command

pytestmark = pytest.mark.unit


def _dsn(rcpt: str, status: str, diag: str = "", action: str = "failed", notice: str = "",
         diag_type: str = "smtp") -> bytes:
    diag_line = f"Diagnostic-Code: {diag_type}; {diag}\n" if diag else ""
    return f"""From: MAILER-DAEMON@mx.example.org
To: sender@relay.example
Subject: Delivery Status Notification (Failure)
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

{notice or "Your message could not be delivered."}

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
{diag_line}
--B
Content-Type: text/rfc822-headers

From: sender@relay.example
To: {rcpt}
Subject: hi

--B--
""".encode()


def _notice(body: str, subject: str = "failure notice", extra: str = "") -> bytes:
    head = f"From: MAILER-DAEMON@mx.example.org\nTo: sender@relay.example\nSubject: {subject}\n{extra}\n"
    return (head + body).encode()


# -- "user unknown" without proof: filtered (soft) -------------------------------------------------------

def test_user_unknown_reply_without_command_or_address_code_is_filtered_and_soft():
    r = parse(_dsn("ann@example.net", "5.0.0", "550 <ann@example.net>: User unknown")).recipients[0]
    assert (r.reason, r.kind) == ("filtered", "soft")


@pytest.mark.parametrize("diag, status", [
    ("550 <ann@example.net>: User unknown (in reply to RCPT TO command)", "5.0.0"),
    ("550 5.1.1 <ann@example.net>: User unknown", "5.1.1"),
    ("550 <ann@example.net>... User unknown [RCPT_TO]", "5.0.0"),
])
def test_user_unknown_with_rcpt_or_address_code_stays_a_hard_userunknown(diag, status):
    r = parse(_dsn("ann@example.net", status, diag)).recipients[0]
    assert (r.reason, r.kind) == ("userunknown", "hard")


def test_the_recipients_own_server_saying_unknown_user_without_a_reply_stays_userunknown():
    # a local directory lookup (no SMTP reply at all): the reporting server knows its own users
    assert classify("Unknown user: ann@example.net", "") == "userunknown"
    assert classify("550 Unknown user: ann@example.net", "") == "filtered"


def test_rcpt_named_anywhere_is_the_command():
    assert smtp_command("SMTP:RCPT host 192.0.2.8: 553 5.3.0 <a@b.example>... No such user here") == "RCPT"
    assert smtp_command("550 5.2.1 <a@b.example>... User Unknown [RCPT_TO]") == "RCPT"
    assert smtp_command("failed: ORCPT a@b.example") == ""


# -- status codes ------------------------------------------------------------------------------------------

def test_x71_means_security_when_permanent_and_a_block_when_temporary():
    assert classify("550 5.7.1 <a@b.example>... Access denied", "5.7.1") == "securityerror"
    assert classify("450 4.7.1 Try again", "4.7.1") == "blocked"
    # at MAIL FROM a bare refusal concerns the sender; named words still win
    assert classify("550 5.7.1 Access denied (in reply to MAIL FROM command)", "5.7.1") == "rejected"
    assert classify("550 Unauthenticated senders not allowed (in reply to MAIL FROM command)",
                    "5.0.0") == "securityerror"


def test_x19_is_a_system_error_not_a_move():
    assert classify("", "5.1.9") == "systemerror"


def test_447_yields_to_the_error_it_kept_getting():
    r = parse(_dsn("ann@example.net", "4.4.7", "554 4.4.7 Message expired: unable to deliver in 840 minutes."
                   "<421 4.4.2 Connection timed out>", action="failed")).recipients[0]
    assert (r.status, r.reason) == ("4.4.2", "expired")


def test_a_relay_wrapped_reply_is_classified_by_the_remote_words():
    diag = ("5.1.0 - Unknown address error 550-'5.7.1 <x@relay.example>... Access denied' "
            "(delivery attempts: 0)")
    r = parse(_dsn("ann@example.net", "5.0.0", diag)).recipients[0]
    assert (r.status, r.reason, r.kind) == ("5.7.1", "securityerror", "soft")


# -- nothing explains the failure -----------------------------------------------------------------------

def test_unexplained_text_is_onhold_and_no_text_is_undefined():
    assert classify("Your message could not be processed (ref 0x1f)", "") == "onhold"
    assert classify("", "") == "undefined"
    r = parse(_notice("<ann@example.net>:\n550 5.0.0 <ann@example.net>: Processing stopped (ref 22)\n"))
    assert (r.recipients[0].reason, r.recipients[0].status) == ("onhold", "5.0.0")  # the bare code is all


def test_a_refusal_before_the_envelope_is_a_block_of_the_sending_host():
    assert classify("SMTP error from remote mail server after initial connection: 550 Access denied", "") \
        == "blocked"


# -- DSN fields ------------------------------------------------------------------------------------------

def test_status_comment_explains_a_recipient_without_diagnostic_and_segments_stop_at_the_next_block():
    # MIME broken (boundary indented): the report is read as text; each recipient keeps its own fields
    raw = b"""From: MAILER-DAEMON@mx.example.org
To: sender@relay.example
Subject: Returned mail
Content-Type: multipart/report; report-type=delivery-status; boundary="Q"

--Q
Content-Type: text/plain

<ann@example.net> (unrecoverable error)
<bob@example.org> (unrecoverable error)

 --Q
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Final-Recipient: rfc822;cat@example.com
Action: delayed
Status: 4.0.0 (example.com: host name lookup failure)

Final-Recipient: rfc822;bob@example.org
Action: failed
Status: 5.0.0
Diagnostic-Code: smtp; 550 5.1.1 user unknown
"""
    got = {r.address: r for r in parse(raw).recipients}
    assert got["cat@example.com"].reason == "networkerror"
    assert "user unknown" not in got["cat@example.com"].diagnostic
    assert got["bob@example.org"].reason == "userunknown"


def test_code_titles_in_status_comments_are_no_evidence():
    r = parse(_dsn("ann@example.net", "4.0.0 (other or undefined status)",
                   action="delayed")).recipients[0]
    assert "other or undefined" not in r.diagnostic
    assert r.reason == "expired"


# -- notices that gave up --------------------------------------------------------------------------------

@pytest.mark.parametrize("error, reason", [
    ("Unable to contact LDAP server. (#4.4.3)", "systemerror"),
    ("Connected to 192.0.2.9 but greeting failed. Remote host said: 421 4.7.0 Too many complaints, "
     "bad reputation", "badreputation"),
    ("unable to connect to remote server [192.0.2.9:25]: Operation timed out", "expired"),
    ("Resources busy, please try again later.", "expired"),
])
def test_a_give_up_notice_is_classified_by_the_error_it_quotes(error, reason):
    raw = _notice(f"Hi. This is the qmail-send program.\n\n<ann@example.net>:\n{error}\n"
                  "I'm not going to try again; this message has been in the queue too long.\n")
    assert parse(raw).recipients[0].reason == reason


def test_exim_retry_timeout_is_a_lasting_temporary_error():
    raw = _notice("A message that you sent could not be delivered to one or more of its\nrecipients. "
                  "This is a permanent error. The following address(es) failed:\n\n  ann@example.net\n"
                  "    mailbox is full: retry timeout exceeded\n", subject="Mail delivery failed")
    r = parse(raw).recipients[0]
    assert (r.reason, r.status) == ("mailboxfull", "4.0.922")


def test_not_delivered_within_a_period_is_an_expiry():
    raw = _notice("Your message was not delivered within 2 days and 1 hours.\n"
                  "Remote host is not responding.\n\n"
                  "The following recipients did not receive this message:\n\n<ann@example.net>\n")
    assert parse(raw).recipients[0].reason == "expired"


# -- recipients ------------------------------------------------------------------------------------------

def test_a_dsn_without_recipient_fields_falls_back_to_the_returned_to():
    raw = b"""From: MAILER-DAEMON@mx.example.org (Mail Delivery System)
To: sender@relay.example
Subject: Undelivered Mail Returned to Sender
Content-Type: multipart/report; report-type=delivery-status; boundary="R"

--R
Content-Type: text/plain

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

\t--- Delivery report unavailable ---

--R
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org
X-Postfix-Queue-ID: 4AB12

--R
Content-Type: message/rfc822

From: <sender@relay.example>
To: ann@example.net
Message-Id: <1.2@relay.example>
Subject: hi

body
--R--
"""
    p = parse(raw)
    assert p.category == "bounce"
    got = [(r.address, r.reason, r.diagnostic) for r in p.recipients]
    assert got == [("ann@example.net", "undefined", "")]


def test_zoho_labelled_codes_and_address_first_lines():
    raw = _notice("This message was created automatically by mail delivery software.\n"
                  "A message that you sent could not be delivered to one or more of its recipients.\n\n"
                  "ann@example.net Invalid Address, ERROR_CODE :550, ERROR_CODE :5.2.2 <ann@example.net>... "
                  "Mailbox Full\n"
                  "bob@example.net Error, ERROR_CODE :421, ERROR_CODE :, Host not reachable.\n\n"
                  "Message-ID:<1a2b@mail.example.org>\n", subject="Undelivered Mail Returned to Sender")
    got = {r.address: r for r in parse(raw).recipients}
    assert set(got) == {"ann@example.net", "bob@example.net"}
    assert (got["ann@example.net"].replycode, got["ann@example.net"].reason) == ("550", "mailboxfull")
    assert (got["bob@example.net"].replycode, got["bob@example.net"].status) == ("421", "4.0.947")


@pytest.mark.parametrize("text, reason", [
    ('"Sorry, you are sending to/from an address that has been blacklisted"', "rejected"),
    ("550 5.7.1 can't determine Purported Responsible Address", "rejected"),
    ("550 5.7.1 Service unavailable; client [192.0.2.1] blocked using zen.example", "blocked"),
])
def test_sender_side_refusals(text, reason):
    assert classify(text, "") == reason


def test_filtered_is_soft_userunknown_hard():
    assert kind("filtered", "5.0.910") == "soft"
    assert kind("userunknown", "5.0.911") == "hard"


# -- later rules ------------------------------------------------------------------------------------------

def test_the_bare_recipient_rejected_prefix_yields_to_the_code():
    assert classify("551 5.7.1 <a@b.example>: Recipient address rejected: Delivery not authorized",
                    "5.7.1") == "securityerror"
    assert classify("550 <a@b.example>: Recipient address rejected (in reply to RCPT TO command)",
                    "5.0.0") == "userunknown"


def test_the_replys_own_code_wins_over_a_status_field_of_another_class():
    r = parse(_dsn("ann@example.net", "4.5.0", "550 5.5.0 Service refused")).recipients[0]
    assert r.status == "5.5.0"
    r = parse(_dsn("ann@example.net", "5.0.0", "450 4.2.0 try later")).recipients[0]
    assert r.status == "4.2.0"


def test_x_unix_exit_status_is_a_mailer_error_unless_the_code_says_more():
    raw = _dsn("ann@example.net", "4.5.0", action="delayed").replace(
        b"Status: 4.5.0\n", b"Status: 4.5.0\nDiagnostic-Code: X-Unix; 71\n")
    assert parse(raw).recipients[0].reason == "mailererror"
    raw = _dsn("ann@example.net", "5.3.0").replace(b"Status: 5.3.0\n",
                                                   b"Status: 5.3.0\nDiagnostic-Code: X-Unix; 77\n")
    assert parse(raw).recipients[0].reason == "systemerror"


def test_a_notice_quoting_the_original_inline_gives_its_to():
    raw = _notice("Message could not be delivered to mobile.\nError: No valid recipients for this MM\n\n\n"
                  "Original Message:\nFrom: Someone <sender@relay.example>\nTo: 5550100@mms.example.net\n"
                  "Subject: test\n", subject="Undeliverable Message")
    [r] = parse(raw).recipients
    assert (r.address, r.reason, r.kind) == ("5550100@mms.example.net", "userunknown", "hard")
    assert r.diagnostic == "No valid recipients for this MM"


def test_a_relay_wrapped_reply_without_its_own_code_ignores_the_relays_code():
    diag = "5.3.0 - Other mail system problem 550-'Unknown user ann@example.net' (delivery attempts: 0)"
    r = parse(_dsn("ann@example.net", "5.0.0", diag)).recipients[0]
    assert (r.status, r.reason) == ("5.3.0", "filtered")    # no RCPT, no address code: unproven


def test_try_again_later_is_when_not_what():
    assert classify("450 4.0.0 Temporary failure, please try again later", "4.0.0") == "onhold"
    assert classify("451 4.3.0 Internal server error, try again later", "4.3.0") == "systemerror"


def test_an_invalid_from_domain_is_a_sender_refusal():
    assert classify("550 5.2.0 <a@b.example> From: Domain is invalid. Please provide a valid From:",
                    "5.2.0") == "rejected"


def test_qmail_phrases_name_the_command():
    assert smtp_command("Connected to 192.0.2.1 but my name was rejected.\n"
                        "Remote host said: 501 5.0.0 Invalid domain name") == "HELO"
    assert smtp_command("192.0.2.1 does not like recipient.\nRemote host said: 550 No such user") == "RCPT"
    assert smtp_command("192.0.2.1 failed after I sent the message.\nRemote host said: 554 spam") == "DATA"
    # an "invalid domain" answered to our HELO is about the sending host
    assert classify("Connected to 192.0.2.1 but my name was rejected. Remote host said: 501 5.0.0 Invalid "
                    "domain name", "5.0.0") == "blocked"
    raw = _notice("<ann@example.net>:\nConnected to 192.0.2.1 but my name was rejected.\n"
                  "Remote host said: 501 5.0.0 Invalid domain name\n")
    assert parse(raw).recipients[0].status == "5.0.0"      # the code the server sent, as sent


def test_no_address_is_cut_out_of_a_longer_one_nor_out_of_a_sentence():
    raw = _notice("Each of the following recipients was rejected by a remote mail server.\n\n"
                  "    Recipient: <ann-22222-cats@example.net>\n"
                  "    >>> RCPT TO:<ann-22222-cats@example.net>\n"
                  "    <<< 550 5.1.1 unknown\n\n"
                  "\u4e0a\u8a18\u3067\u89e3\u6c7a\u3067\u304d\u306a\u3044\u5834\u5408\u306f\u3001"
                  "<support@isp.example>\n")
    assert [r.address for r in parse(raw).recipients] == ["ann-22222-cats@example.net"]


def test_a_sending_service_refusing_an_unverified_from_is_no_relaying():
    assert classify("554 Message rejected: Email address is not verified. The following identities "
                    "failed the check in region EU-WEST-1: sender@relay.example", "5.0.0") == "norelaying"


# -- round 2 -----------------------------------------------------------------------------------------------

def test_a_disabled_mailbox_code_leaves_user_unknown_words_unproven():
    # X.2.1 says the mailbox exists but takes no mail: the words alone no longer prove an unknown address
    r = parse(_dsn("ann@example.net", "5.2.1", "550 5.2.1 <ann@example.net>... User unknown")).recipients[0]
    assert (r.reason, r.kind, r.status) == ("filtered", "soft", "5.2.1")
    # ... unless the reply is known to have answered RCPT
    assert classify("550 5.2.1 <ann@example.net>... User unknown (in reply to RCPT TO command)",
                    "5.2.1") == "userunknown"
    # an address-class code is still proof
    assert classify("550 5.1.1 <ann@example.net>... User unknown", "5.1.1") == "userunknown"


def _powermta(category: str, diag: str, status: str = "5.2.1") -> bytes:
    raw = _dsn("ann@example.net", status, diag).decode()
    return raw.replace(f"Diagnostic-Code: smtp; {diag}\n",
                       f"Diagnostic-Code: smtp; {diag}\nX-PowerMTA-BounceCategory: {category}\n").encode()


def test_the_reporting_mtas_own_category_settles_an_unproven_user_unknown():
    r = parse(_powermta("bad-mailbox", "550 5.2.1 <ann@example.net>... User unknown")).recipients[0]
    assert (r.reason, r.kind) == ("userunknown", "hard")
    r = parse(_powermta("bad-domain", "550 5.0.0 something we do not know", "5.0.0")).recipients[0]
    assert (r.reason, r.kind) == ("hostunknown", "hard")
    # a cause the words name wins over the category; an unknown category changes nothing
    r = parse(_powermta("bad-mailbox", "552 5.2.2 <ann@example.net>... Mailbox full", "5.2.2")).recipients[0]
    assert r.reason == "mailboxfull"
    r = parse(_powermta("other", "550 5.2.1 <ann@example.net>... User unknown")).recipients[0]
    assert r.reason == "filtered"


def test_an_expired_message_with_a_stated_cause_is_that_cause():
    assert classify("550 5.4.312 Message expired, DNS query failed", "5.4.312") == "networkerror"
    assert classify("550 4.4.7 Message expired", "4.4.7") == "expired"


def test_a_line_limit_is_a_size_limit_and_a_long_line_is_syntax():
    assert classify("500 Line limit exceeded", "") == "mesgtoobig"
    assert classify("500 Line too long", "") == "syntaxerror"


def test_a_diagnostic_of_only_a_lead_in_and_the_address_is_no_text():
    raw = _notice("Delivery to the following recipients failed permanently:\n\n     * ann@example.net\n")
    r = parse(raw).recipients[0]
    assert (r.address, r.reason, r.status) == ("ann@example.net", "undefined", "5.0.900")
    raw = _notice("Delivery to the following recipients failed permanently:\n\n     * ann@example.net\n\n"
                  "The frobnicator declined.\n")
    assert parse(raw).recipients[0].reason == "onhold"


def test_delivery_aborted_after_hours_is_an_expiry():
    raw = _notice("Delivery to the following recipients was aborted after 5.0 hour(s):\n\n"
                  "  * ann@example.net\n\nTechnical details:\n"
                  "Routing: no gateway answered for ann@example.net\n")
    r = parse(raw).recipients[0]
    assert (r.reason, r.status) == ("expired", "5.0.947")


def _exim(reply: str, command: str = "MAIL FROM:<sender@relay.example> SIZE=100") -> bytes:
    return _notice("This message was created automatically by mail delivery software.\n\n"
                   "A message that you sent could not be delivered to one or more of its\n"
                   "recipients. This is a permanent error. The following address(es) failed:\n\n"
                   "  ann@example.net\n    host mx.example.net [192.0.2.7]\n"
                   f"    SMTP error from remote mail server after {command}:\n    {reply}\n\n"
                   "------ This is a copy of the message, including all the headers. ------\n",
                   subject="Mail delivery failed: returning message to sender")


def test_exim_refusal_after_mail_from_without_a_code_is_reported_on_hold():
    # the recipient was never offered: the derived code says nothing is known of it, the reason says why
    r = parse(_exim("550 Unroutable sender address")).recipients[0]
    assert (r.reason, r.status, r.kind) == ("rejected", "5.0.901", "soft")
    # a code the server sent is reported as sent; after RCPT the derived code follows the reason
    assert parse(_exim("550 5.7.1 Sender refused")).recipients[0].status == "5.7.1"
    r = parse(_exim("550 No such user", command="RCPT TO:<ann@example.net>")).recipients[0]
    assert (r.reason, r.status) == ("userunknown", "5.0.911")


def test_content_rejected_with_a_content_code_names_no_spam():
    assert classify("500 5.6.1 Message content rejected", "5.6.1") == "contenterror"
    assert classify("550 5.7.1 Message content rejected", "5.7.1") == "spamdetected"
    assert classify("550 5.6.0 Message content rejected, UBE", "5.6.0") == "spamdetected"


def _fml(body: str, subject: str) -> bytes:
    return _notice(body, subject=subject, extra="X-MLServer: fml [fml 4.0.3 release (20011202/4.0.3)]\n"
                   "From: cats-admin@lists.example.org\n").replace(
        b"From: MAILER-DAEMON@mx.example.org\n", b"")


def test_a_list_managers_refusal_of_a_post_is_a_bounce_of_the_list():
    raw = _fml("You are not a member of this mailing list <cats@lists.example.org>.\n\n"
               "Send 'guide' to <cats-ctl@lists.example.org> for help.\n", "You are not member (cats ML)")
    p = parse(raw)
    assert p.category == "bounce"
    [r] = p.recipients
    assert (r.address, r.reason, r.kind, r.status) == \
        ("cats@lists.example.org", "rejected", "soft", "5.0.918")
    raw = _fml("Duplicated Message-ID in <cats@lists.example.org>.\n", "Loop Alert: Duplicated Message-ID")
    assert parse(raw).recipients[0].reason == "systemerror"
    # the same words without the list manager's header are no bounce of ours
    plain = _notice("You are not a member of this mailing list <cats@lists.example.org>.\n",
                    subject="hello")
    assert parse(plain).category != "bounce"


# -- local delivery programs (RFC 3464 X-Unix diagnostics) ----------------------------------------------

@pytest.mark.parametrize("status, diag, reason", [
    ("4.3.0", "temporary failure", "mailererror"),    # Postfix's words for the program's EX_TEMPFAIL
    ("5.3.0", "255", "mailererror"),                   # no sysexits.h code: "unknown mailer error"
    ("5.3.0", "77", "systemerror"),                    # EX_NOPERM: a system condition, not the program
])
def test_an_x_unix_exit_with_x30_is_a_mailer_error_unless_sysexits_names_a_condition(status, diag, reason):
    r = parse(_dsn("ann@example.net", status, diag, diag_type="X-Unix")).recipients[0]
    assert (r.reason, r.kind) == (reason, "soft")


def test_a_transcripts_specific_code_wins_over_a_generic_status_when_the_diagnostic_has_none():
    notice = ("----- Transcript of session follows -----\n<ann@example.net>\n"
              "554 5.3.0 unknown mailer error 255")
    r = parse(_dsn("ann@example.net", "5.0.0", "255", diag_type="X-Unix", notice=notice)).recipients[0]
    assert r.status == "5.3.0"
    # a code of its own in the Diagnostic-Code is the remote's word: the notice's does not replace it
    r = parse(_dsn("ann@example.net", "5.0.0", "550 5.0.0 refused", notice=notice)).recipients[0]
    assert r.status == "5.0.0"


# -- expiries that quote only a connection failure ---------------------------------------------------------

def test_an_expiry_quoting_a_refused_connection_is_an_expiry():
    assert classify("550 5.4.316 Message expired, connection refused", "5.4.316") == "expired"
    # without the give-up the refused connection is the cause
    assert classify("421 Connection refused by mx.example.net", "4.0.0") == "blocked"


def test_delivery_time_expired_after_failed_connections_is_an_expiry():
    text = "Unable to deliver message, due to being unable to connect to the destination mail server."
    assert classify(text, "4.4.7") == "expired"
    assert classify(text, "4.4.1") == "networkerror"     # no expiry code: a network failure
    # a DNS failure says more than the expiry
    assert classify("Name server: example.jp.: host name lookup failure", "4.4.7") == "networkerror"


# -- delivery-status blocks without an address -------------------------------------------------------------

def _local_delivery_report(status_line: str) -> bytes:
    return f"""From: Mail Delivery System <Mailer-Daemon@mx.example.org>
To: sender@relay.example
Subject: Mail delivery failed: returning message to sender
X-Failed-Recipients: ann@example.net
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  save to /var/spool/mail/ann
    generated by ann@example.net
    mailbox is full: retry timeout exceeded

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.org

Action: failed
Final-Recipient: rfc822;/var/spool/mail/ann
{status_line}

--B--
""".encode()


def test_the_status_of_a_block_for_a_mailbox_file_is_the_notices_recipients_status():
    r = parse(_local_delivery_report("Status: 5.0.0")).recipients[0]
    assert (r.address, r.status, r.reason) == ("ann@example.net", "5.0.0", "mailboxfull")
    # no Status: the code is derived (a retry timeout: the error was a temporary one)
    r = parse(_local_delivery_report("")).recipients[0]
    assert (r.address, r.status, r.reason) == ("ann@example.net", "4.0.922", "mailboxfull")


# -- a summary of the returned message is no explanation ---------------------------------------------------

def test_a_recipient_named_only_in_a_summary_of_the_message_takes_the_error_before_it():
    body = ("Error: Invalid user address\n\nError message below:\n"
            "550 - Requested action not taken: no such user here\n\n"
            "Message details:\n  Subject: hi\n  Sent date: Wed Jun 12 02:21:53 GMT 2013\n"
            "  MAIL FROM: sender@relay.example\n  RCPT TO: ann@example.net\n  From: sender@relay.example\n"
            "  Size (in bytes): 39\n  Number of lines: 2\n")
    r = parse(_notice(body, subject="[BOUNCE]")).recipients[0]
    assert (r.address, r.diagnostic, r.replycode) == (
        "ann@example.net", "550 - Requested action not taken: no such user here", "550")
    # the summary's "RCPT TO:" label is no SMTP dialogue: the reply's command stays unknown
    assert (r.reason, r.status) == ("filtered", "5.0.910")


# -- the recipient's own error line without a code ---------------------------------------------------------

_WARNING = ("This is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\n"
            "A message is delayed for more than 0 seconds for the following\nlist of recipients:\n\n"
            "ann@example.net: {error}\n\n"
            "Please note that this is only a temporary failure report.\n"
            "The message is kept in the queue for up to 7 days.\n")


@pytest.mark.parametrize("status", ["4.4.7", "4.0.0"])
def test_a_bare_summary_status_gives_way_to_the_recipients_own_error_line(status):
    # no Diagnostic-Code, a Status: that only summarises the action: the notice's error line is the
    # evidence, and the derived code's class follows its words, not the report's remarks about itself
    raw = _dsn("ann@example.net", status, action="delayed", notice=_WARNING.format(error="Envelope expired"))
    r = parse(raw).recipients[0]
    assert (r.status, r.reason, r.diagnostic) == ("5.0.947", "expired", "Envelope expired")
    raw = _dsn("ann@example.net", status, action="delayed",
               notice=_WARNING.format(error="No MX found for domain"))
    r = parse(raw).recipients[0]
    assert (r.status, r.reason, r.kind) == ("5.0.932", "notaccept", "hard")


def test_a_notices_own_error_line_decides_the_class_of_the_derived_code():
    r = parse(_notice(_WARNING.format(error="Network error on destination MXs"),
                      subject="Delivery status notification: delayed")).recipients[0]
    assert (r.status, r.reason) == ("5.0.944", "networkerror")
    r = parse(_notice(_WARNING.format(error="Temporary network error on destination MXs"),
                      subject="Delivery status notification: delayed")).recipients[0]
    assert r.status == "4.0.944"


def test_a_specific_status_or_a_diagnostic_code_keeps_its_code_beside_an_error_line():
    raw = _dsn("ann@example.net", "4.4.1", action="delayed", notice=_WARNING.format(error="Envelope expired"))
    assert parse(raw).recipients[0].status == "4.4.1"
    raw = _dsn("ann@example.net", "4.4.7", "connect to mx.example.net: Connection timed out",
               action="delayed", notice=_WARNING.format(error="Envelope expired"))
    assert parse(raw).recipients[0].status == "4.4.7"


# -- a codeless "user unknown" needs a directory lookup or an echoed RCPT --------------------------------

def _codeless(error: str) -> bytes:
    return _notice("Unable to deliver message to the following address(es).\n\n"
                   f"<ann@example.net>:\n{error}\n\n--- Original message follows.\n",
                   subject="failure delivery")


@pytest.mark.parametrize("error", ["[User unknown]", "Recipient Not Found",
                                   "This user doesn't have a example.net account (ann@example.net) [0]",
                                   "550: : User unknown"])
def test_a_user_unknown_without_any_code_or_command_is_filtered(error):
    r = parse(_codeless(error)).recipients[0]
    assert (r.reason, r.kind, r.status) == ("filtered", "soft", "5.0.910")


@pytest.mark.parametrize("error", ["User Ann (ann@example.net) not listed in Domino Directory",
                                   "Sorry, no mailbox here by that name.",
                                   "Unknown user: ann@example.net",
                                   "550: <ann@example.net>: User unknown",
                                   "User unknown (in reply to RCPT TO command)",
                                   "User unknown (#5.1.1)"])
def test_a_directory_lookup_an_echoed_rcpt_a_command_or_a_code_keeps_user_unknown(error):
    r = parse(_codeless(error)).recipients[0]
    assert (r.reason, r.kind) == ("userunknown", "hard")
