"""Secrets at rest: the values of secret settings (channel passwords, OAuth2 client secrets and refresh
tokens, campaign webhook secrets) are encrypted before they reach the database file.

- One key per database, in a key file next to it (``<database>.key`` unless configured): 32 random bytes,
  base64, created with mode 0600 at first start (``O_EXCL``: never overwritten). Back it up with the
  database: without it the secrets cannot be read (everything else can).
- A value is AES-256-GCM with a fresh 96-bit nonce, stored as ``rbx1:<base64url(nonce | ciphertext)>``;
  the field name is bound in as associated data (a ciphertext moved to another field does not decrypt).
- A value without the prefix (written before encryption existed) is read as it is, and encrypted on its
  next save.
- At the first open with encryption, secrets written in clear before it are encrypted in place
  (``reseal``, with ``secure_delete`` so the old pages are zeroed, then a WAL checkpoint).
- The key is checked at open against a marker in ``kv`` (``secrets.check``): a replaced or missing key file
  is a clear ``SecretKeyError`` at start, never garbage or a traceback on the first poll.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import sqlite3
from typing import Any, Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from store.postgres import dialect
from store.sqlite import StorageError

__all__ = ["CAMPAIGN_SECRET_FIELDS", "CHANNEL_SECRET_FIELDS", "SecretBox", "SecretKeyError",
           "default_key_file"]

PREFIX = "rbx1:"
CHECK_KEY = "secrets.check"
# the secret keys of the settings documents the store keeps (the poller owns their meaning)
CHANNEL_SECRET_FIELDS = ("password", "oauth2_client_secret", "oauth2_refresh_token")
CAMPAIGN_SECRET_FIELDS = ("secret",)


class SecretKeyError(StorageError):
    """The key file is missing, unreadable, malformed, or not the key this database was written with."""


def default_key_file(db_path: str) -> str:
    return str(db_path) + ".key"          # store.sqlite.Database uses the same default


class SecretBox:
    def __init__(self, key: bytes, path: str = ""):
        if len(key) != 32:
            raise SecretKeyError(f"secret key {path or ''}: expected 32 bytes, got {len(key)}")
        self._aead = AESGCM(key)
        self.path = path

    # ---- the key file ----------------------------------------------------------------------------
    @classmethod
    def from_key_file(cls, path: str, *, create: bool = True) -> "SecretBox":
        """Read the key file; with ``create``, make one (0600, in a 0700 directory if new) when missing."""
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            if not create:
                raise SecretKeyError(f"secret key file {path} is missing") from None
            return cls._create(path)
        except OSError as exc:
            raise SecretKeyError(f"secret key file {path}: cannot read: {exc.strerror}") from None
        try:
            key = base64.b64decode(raw.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise SecretKeyError(f"secret key file {path}: not a base64 key") from None
        if os.name == "posix" and os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)                 # ours, and it must not be readable by anyone else
        return cls(key, path)

    @classmethod
    def _create(cls, path: str) -> "SecretBox":
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, mode=0o700, exist_ok=True)
        key = AESGCM.generate_key(bit_length=256)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:                   # another process made it first: use that one
            return cls.from_key_file(path, create=False)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base64.b64encode(key) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        return cls(key, path)

    # ---- values ----------------------------------------------------------------------------------
    def encrypt(self, value: str, field: str = "") -> str:
        nonce = os.urandom(12)
        ct = self._aead.encrypt(nonce, value.encode("utf-8"), field.encode())
        return PREFIX + base64.urlsafe_b64encode(nonce + ct).decode().rstrip("=")

    def decrypt(self, value: str, field: str = "") -> str:
        if not isinstance(value, str) or not value.startswith(PREFIX):
            return value                          # stored before encryption: read as is
        blob = value[len(PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
            return self._aead.decrypt(raw[:12], raw[12:], field.encode()).decode("utf-8")
        except (InvalidTag, ValueError, binascii.Error):
            raise SecretKeyError(f"a stored secret ({field or 'value'}) does not decrypt with the key in"
                                 f" {self.path or 'the key file'}: wrong key file?") from None

    def seal(self, settings: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
        """A copy of ``settings`` with the non-empty string values of ``fields`` encrypted."""
        out = dict(settings)
        for f in fields:
            v = out.get(f)
            if isinstance(v, str) and v and not v.startswith(PREFIX):
                out[f] = self.encrypt(v, f)
        return out

    def open(self, settings: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
        out = dict(settings)
        for f in fields:
            v = out.get(f)
            if isinstance(v, str):
                out[f] = self.decrypt(v, f)
        return out

    # ---- the database's marker -------------------------------------------------------------------
    def check(self, conn: sqlite3.Connection) -> None:
        """Verify this key against the database's marker; write the marker when there is none."""
        row = conn.execute("SELECT value FROM kv WHERE key=?", (CHECK_KEY,)).fetchone()
        if row is None:
            conn.execute("INSERT INTO kv(key, value) VALUES (?, ?)", (CHECK_KEY, self.encrypt("relaybox",
                                                                                             CHECK_KEY)))
            return
        try:
            ok = self.decrypt(row[0], CHECK_KEY) == "relaybox"
        except SecretKeyError:
            ok = False
        if not ok:
            raise SecretKeyError(f"the secret key file {self.path} is not the key this database was written"
                                 " with: restore the original key file (secrets cannot be read without it)")

    def reseal(self, conn: sqlite3.Connection) -> int:
        """Encrypt the secrets still stored in clear (a database from before encryption); how many rows."""
        changed = 0
        sqlite = dialect(conn) == "sqlite"                 # PostgreSQL: no such PRAGMAs (see docs/storage.md)
        if sqlite:
            conn.execute("PRAGMA secure_delete=ON")         # the clear pages are zeroed, not just freed
        try:
            for table, fields in (("channels", CHANNEL_SECRET_FIELDS), ("campaigns", CAMPAIGN_SECRET_FIELDS)):
                for name, text in conn.execute(f"SELECT name, settings FROM {table}").fetchall():
                    settings = json.loads(text)
                    sealed = self.seal(settings, fields)
                    if sealed != settings:
                        conn.execute(f"UPDATE {table} SET settings=? WHERE name=?",
                                     (json.dumps(sealed), name))
                        changed += 1
            for name, token in conn.execute("SELECT name, oauth_refresh FROM channels WHERE oauth_refresh"
                                            " IS NOT NULL").fetchall():
                if token and not token.startswith(PREFIX):
                    conn.execute("UPDATE channels SET oauth_refresh=? WHERE name=?",
                                 (self.encrypt(token, "oauth_refresh"), name))
                    changed += 1
            if changed and sqlite:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            if sqlite:
                conn.execute("PRAGMA secure_delete=OFF")
        return changed
