"""Pure parts of the poller's channel handling: identifiers, sizes with units, state, search, and the
webhook document's attachments."""

from __future__ import annotations

import pytest

from poller import campaigns, channels
from poller.config import CampaignConfig, ChannelConfig
from poller.router import MessageView
from relay.configtypes import ConfigError
from relaybox.settings import parse

pytestmark = pytest.mark.unit


def test_campaign_names_are_identifiers():
    for bad in ("../../etc", "a/b", ".hidden", "", "x" * 65, "sp ace"):
        with pytest.raises(ValueError, match="not an identifier"):
            CampaignConfig(bad)
    assert CampaignConfig("billing-2.eu_west").name == "billing-2.eu_west"
    with pytest.raises(ConfigError, match="campaigns"):
        parse({"campaigns": [{"name": "../../etc"}]})


def test_sizes_take_units():
    assert parse({"poller": {"max_message_size": "20MB"}}).section("poller").max_message_size == 20_000_000
    assert parse({"poller": {"max_message_size": 1024}}).section("poller").max_message_size == 1024


def test_state_and_search():
    assert channels.state_of(False, "boom") == "inactive"
    assert channels.state_of(True, "boom") == "failing"
    assert channels.state_of(True, None) == "active"
    view = {"name": "desk", "short_name": "d1", "address": "Desk@Org.test", "user": "desk",
            "host": "imap.test", "default_campaign": "support", "filters": [{"campaign": "billing"}],
            "state": "active"}
    assert channels.matches(view, name="D1", address="desk@org", campaign="billing", state="active", q="imap")
    assert not channels.matches(view, campaign="crm")
    assert not channels.matches(view, state="failing")
    with pytest.raises(channels.ChannelError, match="first_sync"):
        channels.check(ChannelConfig(name="x", host="h", user="u", first_sync="yesterday",
                                     default_campaign="c"), {"c"})


def test_a_part_with_a_file_name_but_no_content_disposition_is_an_attachment():
    raw = (b"From: a@b.test\r\nSubject: scan\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain\r\n\r\nsee the scan\r\n"
           b"--XX\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n"
           b"Content-Transfer-Encoding: base64\r\n"
           b"\r\nJVBERi0xLjQK\r\n"
           b"--XX\r\nContent-Type: text/plain; name=\"notes.txt\"\r\n\r\nattached notes\r\n--XX--\r\n")
    doc = campaigns.document(MessageView(raw), inbound_id=1, channel="c", campaign="k", filter_index=None)
    assert [(a["name"], a["type"]) for a in doc["attachments"]] == [("scan.pdf", "application/pdf"),
                                                                    ("notes.txt", "text/plain")]
    assert doc["attachments"][0]["content_base64"] == "JVBERi0xLjQK"
    assert doc["text"].strip() == "see the scan"             # the named text part is not the body
