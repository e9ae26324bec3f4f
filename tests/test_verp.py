"""VERP tokens: round trip, case-insensitivity, forgery and alteration rejected, secret rotation."""

from __future__ import annotations

import pytest

from relay.bounces import verp
from relay.envelope import new_queue_id

pytestmark = pytest.mark.unit

SECRET = "0123456789abcdef-test-secret"


def test_round_trip_and_length():
    qid = new_queue_id()
    addr = verp.encode(qid, 123456, secret=SECRET, domain="Bounces.Example.org")
    local, _, dom = addr.partition("@")
    assert dom == "bounces.example.org"
    assert local.startswith("bounces+") and len(local) <= 64
    got = verp.decode(addr, secrets=SECRET, domain="bounces.example.org")
    assert got == verp.VerpTarget(qid, 123456)


def test_case_changes_by_mtas_do_not_break_the_token():
    qid = new_queue_id()
    addr = verp.encode(qid, 7, secret=SECRET, domain="b.example")
    assert verp.decode(addr.upper(), secrets=SECRET, domain="b.example") == verp.VerpTarget(qid, 7)
    assert verp.decode(f"<{addr}>", secrets=SECRET) == verp.VerpTarget(qid, 7)


def test_forged_or_altered_tokens_are_rejected():
    qid = new_queue_id()
    addr = verp.encode(qid, 42, secret=SECRET, domain="b.example")
    local, _, dom = addr.partition("@")
    assert verp.decode(addr, secrets="another-secret-of-16+", domain="b.example") is None
    # flip every character of the token in turn: none may verify
    prefix, tok = local.split("+")
    for i in range(len(tok)):
        c = "a" if tok[i] != "a" else "b"
        assert verp.decode(f"{prefix}+{tok[:i]}{c}{tok[i + 1:]}@{dom}", secrets=SECRET) is None
    # a token for another recipient cannot be derived without the secret
    other = verp.encode(qid, 43, secret="another-secret-of-16+", domain="b.example")
    assert verp.decode(other, secrets=SECRET) is None
    for junk in ("", "bounces@b.example", "bounces+@b.example", "bounces+zzzz@b.example",
                 "bounces+" + "u" * 40 + "@b.example", "no-at-sign", "x+" + tok[:-1] + "@b.example"):
        assert verp.decode(junk, secrets=SECRET) is None


def test_wrong_domain_is_rejected():
    addr = verp.encode(new_queue_id(), 1, secret=SECRET, domain="b.example")
    assert verp.decode(addr, secrets=SECRET, domain="other.example") is None


def test_secret_rotation_accepts_old_tokens():
    qid = new_queue_id()
    old = verp.encode(qid, 5, secret=SECRET, domain="b.example")
    assert verp.decode(old, secrets=["the-new-secret-0123456", SECRET]) == verp.VerpTarget(qid, 5)


def test_bad_inputs_raise_at_encode():
    with pytest.raises(ValueError):
        verp.encode("short", 1, secret=SECRET, domain="b.example")
    with pytest.raises(ValueError):
        verp.encode(new_queue_id(), 1, secret="short", domain="b.example")
    with pytest.raises(ValueError):
        verp.encode(new_queue_id(), 1, secret=SECRET, domain="b.example", local="x" * 40)


def test_config_wiring(tmp_path):
    from relay.config import BouncesConfig

    off = BouncesConfig()
    assert verp.return_path(off, new_queue_id(), 1) is None
    secret_file = tmp_path / "verp.key"
    secret_file.write_text("new-secret-0123456789\nold-secret-0123456789\n")
    cfg = BouncesConfig(domain="bounce.example", secret_file=str(secret_file), local="rb")
    qid = new_queue_id()
    addr = verp.return_path(cfg, qid, 9)
    assert addr.startswith("rb+") and addr.endswith("@bounce.example")
    hook = verp.make_rcpt_hook(cfg)
    assert hook(addr) and hook(addr.upper())
    old = verp.encode(qid, 9, secret="old-secret-0123456789", domain="bounce.example")
    assert hook(old)
    assert not hook(verp.encode(qid, 9, secret="forged-secret-0123456", domain="bounce.example"))
    assert not hook(addr.replace("bounce.example", "other.example"))
    assert not hook("postmaster@bounce.example")
