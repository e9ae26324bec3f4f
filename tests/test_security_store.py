"""Secrets at rest and file modes: channel and campaign secrets never appear in the database file's bytes
(nor its WAL), the key file is made 0600 at first open, the database and its -wal/-shm are 0600 in a 0700
directory, and a wrong or missing key is a clear error at open."""

from __future__ import annotations

import base64
import os
import stat

import pytest

from store import Store
from store.channels import Campaign, Channel
from store.secrets import SecretBox, SecretKeyError

pytestmark = pytest.mark.component

SECRETS = {"password": "imap-pass-Zq81x", "oauth2_client_secret": "client-secret-Wk22",
           "oauth2_refresh_token": "refresh-token-Pp93"}
WEBHOOK_SECRET = "campaign-hook-secret-Ly40"
ROTATED = "rotated-refresh-Tt57"


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def raw_bytes(db_path: str) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(db_path + suffix):
            with open(db_path + suffix, "rb") as fh:
                out += fh.read()
    return out


def assert_no_secret(blob: bytes) -> None:
    for s in [*SECRETS.values(), WEBHOOK_SECRET, ROTATED]:
        for form in (s.encode(), s.encode("utf-16-le"), base64.b64encode(s.encode())):
            assert form not in blob, s


async def test_secrets_never_reach_the_database_file_and_come_back_in_clear(tmp_path):
    d = tmp_path / "state"                     # made by the store: 0700
    path = str(d / "relaybox.db")
    st = Store(path).open()
    try:
        await st.inbound.save_campaign(Campaign("hook", "webhook", {"url": "https://h.test/x",
                                                                    "secret": WEBHOOK_SECRET}))
        await st.inbound.save_channel(Channel("box", {"host": "imap.test", "user": "u",
                                                      "default_campaign": "hook", **SECRETS}))
        await st.inbound.set_oauth_refresh("box", ROTATED)
        assert_no_secret(raw_bytes(path))      # while open: the WAL holds the fresh pages
        assert mode(d) == 0o700 and mode(path) == 0o600 and mode(path + ".key") == 0o600
        for suffix in ("-wal", "-shm"):
            assert mode(path + suffix) == 0o600, suffix
        ch = await st.inbound.channel("box")
        assert ch is not None and {k: ch.settings[k] for k in SECRETS} == SECRETS
        assert (await st.inbound.campaign("hook")).settings["secret"] == WEBHOOK_SECRET
        assert await st.inbound.oauth_refresh("box") == ROTATED
        # saving the same refresh token again keeps the rotated one (compared in clear, not as ciphertext)
        await st.inbound.save_channel(Channel("box", dict(ch.settings)))
        assert await st.inbound.oauth_refresh("box") == ROTATED
    finally:
        st.close()
    assert_no_secret(raw_bytes(path))          # after the checkpoint, in the main file
    st = Store(path).open()                    # same key file: readable again
    try:
        assert (await st.inbound.channel("box")).settings["password"] == SECRETS["password"]
        assert [c.settings["secret"] for c in await st.inbound.campaigns()] == [WEBHOOK_SECRET]
    finally:
        st.close()


async def test_existing_files_are_made_private(tmp_path):
    path = tmp_path / "old.db"
    Store(str(path)).open().close()
    os.chmod(path, 0o644)
    os.chmod(str(path) + ".key", 0o644)
    Store(str(path)).open().close()
    assert mode(path) == 0o600 and mode(str(path) + ".key") == 0o600


def test_wrong_or_missing_key_is_a_clear_error(tmp_path):
    path = str(tmp_path / "k.db")
    Store(path).open().close()
    key = open(path + ".key", "rb").read()
    with open(path + ".key", "wb") as fh:
        fh.write(base64.b64encode(os.urandom(32)) + b"\n")
    with pytest.raises(SecretKeyError, match="not the key this database was written with"):
        Store(path).open()
    os.remove(path + ".key")
    with pytest.raises(SecretKeyError, match="missing"):
        Store(path).open()
    assert not os.path.exists(path + ".key")   # never silently replaced by a new key
    with open(path + ".key", "wb") as fh:
        fh.write(b"not base64 !!")
    with pytest.raises(SecretKeyError, match="not a base64 key"):
        Store(path).open()
    with open(path + ".key", "wb") as fh:
        fh.write(key)
    Store(path).open().close()


def test_secret_box_binds_the_field_and_reads_old_plaintext(tmp_path):
    box = SecretBox.from_key_file(str(tmp_path / "x.key"))
    token = box.encrypt("s3cret", "password")
    assert token.startswith("rbx1:") and "s3cret" not in token
    assert box.encrypt("s3cret", "password") != token            # fresh nonce per value
    assert box.decrypt(token, "password") == "s3cret"
    with pytest.raises(SecretKeyError):
        box.decrypt(token, "oauth2_client_secret")               # moved to another field: refused
    assert box.decrypt("plain-from-before", "password") == "plain-from-before"
    sealed = box.seal({"password": "p", "host": "h", "secret": ""}, ["password", "secret"])
    assert sealed["host"] == "h" and sealed["secret"] == "" and sealed["password"].startswith("rbx1:")
    assert box.open(sealed, ["password", "secret"])["password"] == "p"


async def test_secrets_stored_in_clear_before_encryption_are_encrypted_at_open(tmp_path):
    import json
    import sqlite3

    path = str(tmp_path / "old.db")
    Store(path).open().close()
    with sqlite3.connect(path) as c:                # a database written before encryption existed
        c.execute("DELETE FROM kv WHERE key='secrets.check'")
        c.execute("INSERT INTO campaigns(name, kind, settings, created_at) VALUES ('hook', 'webhook', ?, 0)",
                  (json.dumps({"kind": "webhook", "url": "https://h.test", "secret": WEBHOOK_SECRET}),))
        c.execute("INSERT INTO channels(name, settings, enabled, created_at, oauth_refresh)"
                  " VALUES ('box', ?, 1, 0, ?)", (json.dumps({"host": "imap.test", **SECRETS}), ROTATED))
    c.close()
    assert SECRETS["password"].encode() in raw_bytes(path)
    st = Store(path).open()
    try:
        assert_no_secret(raw_bytes(path))
        assert (await st.inbound.channel("box")).settings["password"] == SECRETS["password"]
        assert await st.inbound.oauth_refresh("box") == ROTATED
        assert (await st.inbound.campaign("hook")).settings["secret"] == WEBHOOK_SECRET
    finally:
        st.close()
    assert_no_secret(raw_bytes(path))
