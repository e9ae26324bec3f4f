"""Semantic checks of a loaded config that go beyond types: files that must load, references that must
resolve. Used by ``relaybox check-config`` (exit 2) and by ``relaybox run`` before anything starts."""

from __future__ import annotations

from relaybox.settings import Settings


def problems(settings: Settings) -> list[str]:
    out: list[str] = []
    from relay.delivery.attempt import config_problems

    out += config_problems(settings.relay)
    tls = settings.relay.smtp.tls
    if bool(tls.cert_file) != bool(tls.key_file):
        out.append("smtp.tls: cert_file and key_file go together")
    for key in ("cert_file", "key_file"):
        path = getattr(tls, key)
        if path:
            try:
                open(path, "rb").close()
            except OSError as exc:
                out.append(f"smtp.tls.{key}: cannot read {path}: {exc.strerror}")
    if settings.relay.smtp.implicit_tls_listen and not tls.cert_file:
        out.append("smtp.implicit_tls_listen: needs smtp.tls.cert_file and key_file")
    for route in settings.relay.routes:
        if route.username and route.tls == "none" and not route.allow_plaintext_auth:
            out.append(f'routes.{route.name}: tls = "none" with a username: AUTH would send the password in'
                       " clear and is refused; use starttls/implicit or set allow_plaintext_auth = true")
    out += _admin(settings)
    out += _poller(settings)
    return out


def _admin(settings: Settings) -> list[str]:
    from admin_api.config import AdminConfig

    cfg = settings.section("admin") or AdminConfig()
    out = []
    problem = cfg.listen_problem()
    if problem:
        out.append(problem)
    for key in ("tls_cert_file", "tls_key_file"):
        path = getattr(cfg, key)
        if path:
            try:
                open(path, "rb").close()
            except OSError as exc:
                out.append(f"admin.{key}: cannot read {path}: {exc.strerror}")
    return out


def _poller(settings: Settings) -> list[str]:
    from poller import channels

    out = []
    campaigns = {c.name.strip() for c in settings.section("campaigns", []) or []}
    for ch in settings.section("channels", []) or []:
        try:
            channels.check(channels.normalize(ch), campaigns)
        except channels.ChannelError as exc:
            out.append(f"channels: {exc}")
    return out
