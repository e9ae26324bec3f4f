"""DKIM signatures from relay/delivery/dkim.py, checked by independent verifiers against a real DNS server:
Perl Mail::DKIM (rsa-sha256; custom resolver pointed at dnsmasq on a high port) and opendkim-testmsg
(rsa-sha256 and ed25519-sha256; in a private network namespace with dnsmasq on its 127.0.0.1:53)."""

import os
import shutil
import subprocess
import sys
import textwrap

import dkim as dkimpy
import dkim.canonicalization as canon
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relay.config import DKIMConfig, DKIMKeyConfig
from relay.delivery.dkim import (
    Signer,
    dns_record,
    load_key,
    parse_headers,
    relaxed_body,
    relaxed_header,
    split_message,
)
from tests.peers.dnsmasq import DnsmasqServer, build_args

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MSG = (b"Received: from x by y; Mon, 23 Nov 2026 07:00:00 +0000\r\n"
       b"From: Alice  Example <alice@example.com>\r\n"
       b"To: bob@example.org,\r\n\tcarol@example.org\r\n"
       b"Subject:   Hello    there  \r\n"
       b"Date: Mon, 23 Nov 2026 07:00:00 +0000\r\n"
       b"Message-ID: <1@example.com>\r\n"
       b"Comments: one\r\nComments: two\r\n"
       b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
       b"\r\n"
       b"Hi  Bob,\t \r\n\r\nthe  quick brown fox.   \r\n\r\n\r\n")

PERL_VERIFY = textwrap.dedent(r"""
    use strict; use warnings;
    use Net::DNS::Resolver; use Mail::DKIM::Verifier; use Mail::DKIM::DNS;
    my $res = Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 1,
                                      udp_timeout => 3, tcp_timeout => 3, retry => 1);
    Mail::DKIM::DNS::resolver($res);
    my $v = Mail::DKIM::Verifier->new();
    binmode STDIN;
    while (<STDIN>) { s/\r?\n\z/\015\012/; $v->PRINT($_); }
    $v->CLOSE;
    print $v->result, " ", ($v->result_detail // ''), "\n";
    exit($v->result eq 'pass' ? 0 : 1);
""")


def pem_of(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An RSA-2048 key made here and an Ed25519 key made by `relaybox dkim keygen`."""
    d = tmp_path_factory.mktemp("dkim")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out = subprocess.run([sys.executable, "-m", "relaybox.cli", "dkim", "keygen", "example.com", "ed1",
                          "--type", "ed25519", "--dir", str(d)], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    ed_path = d / "example.com.ed1.key"
    assert oct(ed_path.stat().st_mode & 0o777) == "0o600"
    txt_line = next(line for line in out.splitlines() if line.startswith("ed1._domainkey.example.com."))
    ed_txt = "".join(part for part in txt_line.split('"')[1::2])
    assert ed_txt.startswith("v=DKIM1; k=ed25519; p=")
    return {
        "rsa": (load_key("example.com", "rsa1", pem_of(rsa_key)), dns_record(rsa_key)),
        "ed25519": (load_key("example.com", "ed1", ed_path.read_bytes()), ed_txt),
    }


def zone(keys):
    return {f"{k.selector}._domainkey.example.com": {"TXT": [txt]} for k, txt in keys.values()}


def signed(key, msg=MSG) -> bytes:
    return Signer({"example.com": key}).sign_message(msg, now=1_795_000_000)


def tamper_body(msg: bytes) -> bytes:
    return msg.replace(b"quick brown fox", b"quick brown cat")


# ---- canonicalisation, cross-checked with dkimpy's helpers ----------------------------------------------
@pytest.mark.parametrize("body", [b"", b"\r\n", b"a  b \r\n\r\n", b"x\t\ty\r\n \r\n\t\r\n",
                                  MSG.split(b"\r\n\r\n", 1)[1]])
def test_relaxed_body_matches_dkimpy(body):
    assert relaxed_body(body) == canon.Relaxed.canonicalize_body(body)


def test_relaxed_headers_match_dkimpy():
    block, _ = split_message(MSG)
    for name, raw in parse_headers(block):
        value = raw.partition(b":")[2]
        [(n, v)] = canon.Relaxed.canonicalize_headers([(name, value)])
        assert relaxed_header(raw) + b"\r\n" == n + b":" + v


def test_signature_is_prepended_and_body_untouched(keys):
    out = signed(keys["rsa"][0])
    assert out.endswith(MSG) and out.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    head = out[: len(out) - len(MSG)].decode()
    assert "d=example.com" in head and "s=rsa1" in head
    assert "h=from:subject:date:message-id:to:mime-version:content-type:from;" in head.replace("\r\n\t", " ")
    assert "received" not in head.lower().split("b=")[0]


def test_dkimpy_verifies_rsa(keys):
    key, txt = keys["rsa"]
    out = signed(key)
    assert dkimpy.verify(out, dnsfunc=lambda name, timeout=5: txt.encode())
    assert not dkimpy.verify(tamper_body(out), dnsfunc=lambda name, timeout=5: txt.encode())


def test_signing_domain_selection(keys, tmp_path):
    key_file = tmp_path / "k.pem"
    key_file.write_bytes(keys["rsa"][0].key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cfg = DKIMConfig(enabled=True, default_domain="example.com",
                     domains={"example.com": DKIMKeyConfig("rsa1", str(key_file))})
    s = Signer.from_config(cfg)
    assert s.key_for("example.com").domain == "example.com"
    assert s.key_for("mail.example.com").domain == "example.com"   # parent domain key
    assert s.key_for("other.org").domain == "example.com"          # default domain
    assert Signer.from_config(DKIMConfig(enabled=False)) is None
    nodefault = Signer({"example.com": keys["rsa"][0]})
    assert nodefault.sign(MSG.replace(b"alice@example.com", b"alice@other.org")) is None


# ---- independent verifiers against real DNS -----------------------------------------------------------
@pytest.fixture(scope="module")
def dns_server(keys):
    with DnsmasqServer(zone(keys)) as server:
        yield server


def perl_verify(port: int, msg: bytes) -> tuple[int, str]:
    p = subprocess.run(["perl", "-e", PERL_VERIFY, str(port)], input=msg, capture_output=True, timeout=20)
    return p.returncode, (p.stdout + p.stderr).decode(errors="replace").strip()


def test_mail_dkim_accepts_rsa_and_rejects_tampering(keys, dns_server):
    out = signed(keys["rsa"][0])
    rc, text = perl_verify(dns_server.port, out)
    assert rc == 0 and text.startswith("pass"), text
    rc, text = perl_verify(dns_server.port, tamper_body(out))
    assert rc == 1 and "body has been altered" in text, text
    rc, text = perl_verify(dns_server.port, out.replace(b"Hello    there", b"Hello there!"))
    assert rc == 1 and text.startswith("fail"), text
    assert "rsa1._domainkey.example.com" in dns_server.log()


def opendkim_in_namespace(keys, messages: dict[str, bytes], tmp_path) -> dict[str, int]:
    """Run opendkim-testmsg on each message in a private network+mount namespace whose resolv.conf points
    at a dnsmasq on that namespace's 127.0.0.1:53. Returns {name: exit code}."""
    for tool in ("unshare", "opendkim-testmsg", "ip"):
        assert shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}"), f"{tool} missing (install-peers)"
    work = tmp_path / "ns"
    work.mkdir()
    (work / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    args = build_args(zone(keys), 53, "127.0.0.1", str(work))
    lines = ["set -u", "ip link set lo up", f"mount --bind {work}/resolv.conf /etc/resolv.conf",
             " ".join(f"'{a}'" for a in args) + " &", "DNS=$!",
             "for i in $(seq 50); do [ -s " + f"{work}/dnsmasq.pid" + " ] && break; sleep 0.05; done",
             "sleep 0.1"]
    for name, msg in messages.items():
        (work / f"{name}.eml").write_bytes(msg)
        lines.append(f"opendkim-testmsg < {work}/{name}.eml 2>>{work}/err; echo {name}=$?")
    lines.append("kill $DNS; wait $DNS 2>/dev/null; true")
    (work / "run.sh").write_text("\n".join(lines) + "\n")
    flags = "-nm" if os.geteuid() == 0 else "-rnm"
    p = subprocess.run(["unshare", flags, "bash", str(work / "run.sh")], capture_output=True, text=True,
                       timeout=30)
    codes = dict(line.split("=", 1) for line in p.stdout.split() if "=" in line)
    assert set(codes) == set(messages), p.stdout + p.stderr
    return {k: int(v) for k, v in codes.items()}


def test_opendkim_accepts_rsa_and_ed25519_and_rejects_tampering(keys, tmp_path):
    rsa_msg, ed_msg = signed(keys["rsa"][0]), signed(keys["ed25519"][0])
    assert b"a=ed25519-sha256" in ed_msg
    other = pem_of(ed25519.Ed25519PrivateKey.generate())
    wrong = Signer({"example.com": load_key("example.com", "ed1", other)})
    codes = opendkim_in_namespace(keys, {
        "rsa": rsa_msg, "ed25519": ed_msg,
        "rsa_tampered": tamper_body(rsa_msg), "ed25519_tampered": tamper_body(ed_msg),
        "ed25519_wrong_key": wrong.sign_message(MSG),
    }, tmp_path)
    assert codes["rsa"] == 0 and codes["ed25519"] == 0, codes
    assert all(codes[k] != 0 for k in ("rsa_tampered", "ed25519_tampered", "ed25519_wrong_key")), codes


def test_signatures_are_counted_by_algorithm(keys):
    from prometheus_client import REGISTRY

    def count(alg):
        return REGISTRY.get_sample_value("relaybox_dkim_signatures_total", {"algorithm": alg}) or 0.0

    before = count("rsa-sha256")
    signed(keys["rsa"][0])
    assert count("rsa-sha256") == before + 1


# ---- the fast paths of the canonicalisation and of the From domain give the full computation's result
@pytest.mark.parametrize("body", [b"a b c\r\n", b"a \r\n", b"a  \r\nb\r\n", b"a\tb\r\n", b"end \r\n\r\n",
                                  b" lead\r\n", b"x" * 80 + b"\r\n"])
def test_relaxed_body_fast_paths_match_dkimpy(body):
    assert relaxed_body(body) == canon.Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("raw", [b"Subject: one space only", b"Subject:  two  spaces ", b"Subject:\ttab",
                                 b"Subject: folded\r\n continued", b"Subject: folded\r\n\tby tab",
                                 b"To: a@b.test ", b"X-Empty:", b"X-Only-Space: "])
def test_relaxed_header_fast_paths_match_dkimpy(raw):
    name, _, value = raw.partition(b":")
    [(n, v)] = canon.Relaxed.canonicalize_headers([(name, value)])
    assert relaxed_header(raw) + b"\r\n" == n + b":" + v


@pytest.mark.parametrize("value", [
    "<s@Src.Test>", "Sender <s@src.test>", '"Quoted, Name" <s@src.test>', "s@src.test", " s@SRC.test ",
    "John Q. Public <jqp@sub.example.org>", "=?utf-8?q?J=C3=B6rg?= <j@example.de>", "Name<n@x.test>",
    "s@src.test (comment)", "a@[192.0.2.1]", "undisclosed", "<>", "a@b.test, c@d.test", "Group: a@b.test;",
    "Bad <a@b@c.test>", "x@y.test.", "Tab\tName <t@tab.test>",
])
def test_from_domain_fast_path_matches_getaddresses(value):
    from email.utils import getaddresses

    from relay.delivery.dkim import from_domain

    addrs = [a for _, a in getaddresses([" ".join(value.split())]) if "@" in a]
    expected = addrs[0].rpartition("@")[2].lower().rstrip(">") if addrs else None
    assert from_domain([(b"From", b"From: " + value.encode())]) == expected
