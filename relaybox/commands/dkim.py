"""``relaybox dkim keygen DOMAIN SELECTOR [--type rsa|ed25519] [--dir DIR]``.

Writes the private key (PEM, mode 0600, never overwritten unless ``--force``) and prints the DNS TXT record
to publish at ``SELECTOR._domainkey.DOMAIN`` plus the config lines that enable signing with it.
"""

from __future__ import annotations

import os
import sys


def _txt_chunks(value: str, size: int = 250) -> str:
    return " ".join(f'"{value[i:i + size]}"' for i in range(0, len(value), size))


def cmd_keygen(args) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from relay.delivery.dkim import dns_record
    from relay.envelope import address_error

    domain = args.domain.strip().rstrip(".").lower()
    selector = args.selector.strip()
    if address_error(f"x@{domain}") or not selector.replace("-", "").replace(".", "").isalnum():
        print(f"error: invalid domain {args.domain!r} or selector {args.selector!r}", file=sys.stderr)
        return 2
    if args.type == "rsa":
        if args.bits < 1024:
            print("error: --bits must be >= 1024 (2048 recommended)", file=sys.stderr)
            return 2
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey = rsa.generate_private_key(
            public_exponent=65537, key_size=args.bits)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    os.makedirs(args.dir, mode=0o700, exist_ok=True)
    path = os.path.join(args.dir, f"{domain}.{selector}.key")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        print(f"error: {path} exists (use --force to replace it)", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o600)
    record = dns_record(key)
    kind = f"rsa {args.bits}" if args.type == "rsa" else "ed25519"
    print(f"wrote {path} ({kind}, mode 0600)")
    print()
    print("Publish this DNS record:")
    print(f"{selector}._domainkey.{domain}. IN TXT ( {_txt_chunks(record)} )")
    print()
    print("And enable it in the config file:")
    print("[dkim]\nenabled = true")
    print(f'[dkim.domains."{domain}"]\nselector = "{selector}"\nkey_file = "{os.path.abspath(path)}"')
    return 0


def register(sub) -> None:
    p = sub.add_parser("dkim", help="DKIM keys")
    dsub = p.add_subparsers(dest="dkim_command", metavar="ACTION")
    k = dsub.add_parser("keygen", help="generate a DKIM key and print its DNS TXT record")
    k.add_argument("domain")
    k.add_argument("selector")
    k.add_argument("--type", choices=("rsa", "ed25519"), default="rsa")
    k.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    k.add_argument("--dir", default="var/dkim", help="where to write DOMAIN.SELECTOR.key (default var/dkim)")
    k.add_argument("--force", action="store_true", help="replace an existing key file")
    k.set_defaults(func=cmd_keygen)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
