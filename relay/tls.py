"""TLS contexts, made in one place: the server side of intake and the client side of every outbound
connection (delivery to MX hosts and smarthosts, the poller's IMAP/POP3 sessions).

Clients verify certificates and host names by default (``verify=False`` is an explicit per-route or
per-channel choice for lab servers); servers offer TLS 1.2 and newer only.
"""

from __future__ import annotations

import ssl


def client_context(verify: bool = True, ca_file: str = "") -> ssl.SSLContext:
    """A client context: the system trust store (or ``ca_file``), host name checking when ``verify``."""
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The context of an SMTP listener (STARTTLS or implicit TLS): our certificate, TLS >= 1.2."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
