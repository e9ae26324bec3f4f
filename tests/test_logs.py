"""Logging: text and JSON lines with the queue id, and no secret ever reaching the output."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import subprocess
import sys

import pytest

from relay.maillog import mail_line
from relaybox import logs

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def capture():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def setup(fmt="text", level="debug"):
        stream.seek(0)
        stream.truncate()
        logs.setup_logging(level, fmt, stream=stream)
        return stream

    yield setup
    for h in list(root.handlers):
        if getattr(h, "_relaybox", False):
            root.removeHandler(h)
    root.handlers[:0] = [h for h in saved[0] if h not in root.handlers]
    root.setLevel(saved[1])
    logs.clear_secrets()


def test_text_line_carries_time_level_logger_queue_id_and_extras(capture):
    out = capture("text")
    logging.getLogger("relay.intake.listener").info("accepted %d recipients", 2,
                                             extra={"queue_id": "Q7XK2", "peer": "10.0.0.5"})
    line = out.getvalue().strip()
    assert line.endswith("INFO relay.intake.listener [Q7XK2] accepted 2 recipients peer=10.0.0.5")
    assert line[:4].isdigit() and line.split(" ")[0].endswith("Z")


def test_json_lines_are_objects_with_queue_id(capture):
    out = capture("json")
    log = logging.getLogger("relay.delivery.attempt")
    log.warning("deferred: %s", "451 4.7.1 try later", extra={"queue_id": "Q1", "attempt": 3})
    log.info("no queue id here")
    first, second = [json.loads(x) for x in out.getvalue().splitlines()]
    assert first["level"] == "warning" and first["logger"] == "relay.delivery.attempt"
    assert first["msg"] == "deferred: 451 4.7.1 try later"
    assert first["queue_id"] == "Q1" and first["attempt"] == 3
    assert first["ts"].endswith("Z")
    assert "queue_id" not in second


def test_level_filters_and_bad_format_is_refused(capture):
    out = capture("text", level="warning")
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    assert "hidden" not in out.getvalue() and "shown" in out.getvalue()
    with pytest.raises(ValueError):
        logs.setup_logging("info", "xml")


@contextlib.contextmanager
def alone():
    """Only relaybox's handler on the root logger: pytest's capture handlers (added for the test's call
    phase, after the fixtures ran) set aside meanwhile."""
    root = logging.getLogger()
    others = [h for h in root.handlers if not getattr(h, "_relaybox", False)]
    for h in others:
        root.removeHandler(h)
    try:
        yield
    finally:
        for h in others:
            root.addHandler(h)


def _without_time(text: str, fmt: str) -> list:
    lines = text.splitlines()
    if fmt == "json":
        return [{k: v for k, v in json.loads(x).items() if k != "ts"} for x in lines]
    return [x.split(" ", 1)[1] for x in lines]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_mail_line_writes_what_the_logging_module_writes(capture, monkeypatch, fmt):
    """The accepted/result lines skip the logging module when relaybox's handler is the only listener, and
    the line is the same, worker tag and redaction included."""
    out = capture(fmt, "info")
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_relaybox", False))
    handler.addFilter(logs.FieldTag(worker=3))
    logs.register_secret("s3cr3t-route-pw")
    direct = []
    real = logs.Handler.direct_line
    monkeypatch.setattr(logs.Handler, "direct_line", lambda self, *a: direct.append(a) or real(self, *a))
    log = logging.getLogger("relay.delivery.scheduler")
    text = ("result queue_id=Q1 status=deferred"
            " reply='451 s3cr3t-route-pw password=hunter2 AUTH PLAIN AGFiYw=='")
    with alone():
        mail_line(log, text, "Q1")
        log.info("%s", text, extra={"queue_id": "Q1"})
    assert len(direct) == 1                                   # the first line took the direct path
    fast, slow = _without_time(out.getvalue(), fmt)
    assert fast == slow
    raw = out.getvalue()
    assert "s3cr3t-route-pw" not in raw and "hunter2" not in raw and "AGFiYw" not in raw
    assert ("worker=3" in fast and "[Q1]" in fast) if fmt == "text" else (fast["worker"] == 3
                                                                          and fast["queue_id"] == "Q1")


def test_mail_line_goes_through_logging_whenever_something_else_listens(capture):
    out = capture("text", "info")
    log = logging.getLogger("relay.intake.listener")
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_relaybox", False))
    seen: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = seen.append                               # type: ignore[method-assign]
    drop = logging.Filter("nothing.matches")
    with alone():
        log.addHandler(listener)
        try:
            mail_line(log, "accepted queue_id=Q2 client=10.0.0.5", "Q2")
        finally:
            log.removeHandler(listener)
        handler.addFilter(drop)         # a filter of someone else's on relaybox's handler still decides
        mail_line(log, "accepted queue_id=Q3", "Q3")
        handler.removeFilter(drop)
        logging.getLogger().setLevel(logging.WARNING)       # below the level: nothing at all
        mail_line(log, "accepted queue_id=Q4", "Q4")
    assert [(r.getMessage(), r.queue_id) for r in seen] == [("accepted queue_id=Q2 client=10.0.0.5", "Q2")]
    assert "[Q2] accepted queue_id=Q2" in out.getvalue()
    assert "Q3" not in out.getvalue() and "Q4" not in out.getvalue()


SECRET = "Tr0ub4dor&3-horse"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_reach_the_output(capture, fmt):
    out = capture(fmt)
    log = logging.getLogger("relay.delivery.transport")
    plain = base64.b64encode(b"\0app1\0" + SECRET.encode()).decode()
    logs.register_secret("route-pass-5f2a9")
    log.info("login user=app1 password=%s", SECRET)
    log.info("config %s", {"password": SECRET, "api_key": SECRET, "username": "app1"})
    log.info("client said %r", f"AUTH PLAIN {plain}\r\n".encode())
    log.info("client said AUTH LOGIN %s", base64.b64encode(SECRET.encode()).decode())
    log.info("auth result %r", f"LoginPassword(login=b'app1', password=b'{SECRET}')")
    log.info("webhook Authorization: Bearer %s", "eyJhbGciOi.J9eyJzdWIi.OiIxMjM0")
    log.info("smarthost refused route-pass-5f2a9 for app1", extra={"queue_id": "Q2",
                                                                    "detail": "pw route-pass-5f2a9"})
    log.info('token="%s" secret: %s', SECRET, SECRET)
    try:
        raise RuntimeError(f"cannot log in with password={SECRET} (route-pass-5f2a9)")
    except RuntimeError:
        log.exception("delivery crashed", extra={"queue_id": "Q3"})
    text = out.getvalue()
    login_b64 = base64.b64encode(SECRET.encode()).decode()
    for leaked in (SECRET, plain, "route-pass-5f2a9", "eyJhbGciOi", login_b64):
        assert leaked not in text, leaked
    # what is left stays useful
    assert "user=app1 password=***" in text and "AUTH PLAIN ***" in text and "Bearer ***" in text
    assert "app1" in text and "delivery crashed" in text and "RuntimeError" in text
    if fmt == "json":
        rows = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
        assert rows[-1]["queue_id"] == "Q3" and "RuntimeError" in rows[-1]["exc"]


def test_secrets_of_the_loaded_config_are_registered(capture, tmp_path):
    from relaybox.settings import parse

    token_file = tmp_path / "tokens"
    token_file.write_text("# admin tokens\nci:file-tok-111222\ngraf:file-ro-333444 ro\n")
    verp_file = tmp_path / "verp"
    verp_file.write_text("verp-signing-key-0123456789\n")
    settings = parse({
        "smtp": {"users": [{"username": "app1", "password": "cfg-plain-pass"}]},
        "routes": [{"name": "sh", "host": "smtp.example.test", "username": "relay",
                    "password": "route-pw-77"}],
        "admin": {"tokens": ["ops:adm-tok-123456"], "readonly_tokens": ["graf:ro-tok-654321"],
                  "token_file": str(token_file)},
        "bounces": {"secret_file": str(verp_file)},
        "webhooks": [{"name": "crm", "url": "https://crm.example.test/hook", "secret": "hook-key-999"}],
    })
    assert logs.register_settings_secrets(settings) >= 5
    out = capture("json")
    logging.getLogger("relay.delivery.transport").error(
        "smarthost said: bad credentials route-pw-77 / cfg-plain-pass; header X: adm-tok-123456 "
        "ro-tok-654321 hook-key-999 file-tok-111222 file-ro-333444 verp-signing-key-0123456789",
        extra={"queue_id": "Q1"})
    text = out.getvalue()
    for leaked in ("route-pw-77", "cfg-plain-pass", "adm-tok-123456", "ro-tok-654321", "hook-key-999",
                   "file-tok-111222", "file-ro-333444", "verp-signing-key"):
        assert leaked not in text
    assert "smarthost said: bad credentials" in text


def test_ordinary_words_are_not_masked(capture):
    out = capture("text")
    logs.register_secret("ab")    # too short to register: it would mask ordinary text
    logging.getLogger("x").info("tokens=5 passed=3 password policy ok; abab")
    logging.getLogger("x").info("<< b'250-AUTH LOGIN PLAIN'")
    assert "tokens=5 passed=3 password policy ok; abab" in out.getvalue()
    assert "250-AUTH LOGIN PLAIN" in out.getvalue()


def test_relaybox_run_logs_json_with_the_cli_flag(tmp_path):
    """The real command line: `relaybox run --log-format json` prints JSON lines, nothing else."""
    from tests.peers.ports import free_port
    from tests.peers.relaybox_proc import RelayboxProcess

    rb = RelayboxProcess(str(tmp_path), {"log": {"format": "text"},
                                         "admin": {"listen": f"127.0.0.1:{free_port()}"}})
    rb.start()
    rb.stop()
    assert "relaybox started" in rb.log()
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, "-m", "relaybox.cli", "run", "--config", rb.config_path,
                             "--log-format", "json"], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        first = proc.stdout.readline()
        while first and "relaybox started" not in first:
            assert first.startswith("{"), first
            first = proc.stdout.readline()
        assert json.loads(first)["logger"] == "relaybox"
    finally:
        proc.terminate()
        rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    for line in rest.splitlines():
        assert json.loads(line)["ts"]


def test_a_debug_log_of_a_real_session_holds_no_secret(tmp_path):
    """relaybox at debug level (aiosmtpd logs every command then), with AUTH PLAIN and LOGIN over STARTTLS,
    a failed login, a smarthost password, admin tokens and a webhook secret in the config, a reload and a
    stop: none of the secrets, nor their base64 forms, appear in the output."""
    import base64
    import signal
    import smtplib
    import ssl
    import time
    import urllib.error
    import urllib.request

    from tests.peers.certs import make_cert
    from tests.peers.ports import free_port
    from tests.peers.relaybox_proc import RelayboxProcess

    user_pw, wrong_pw, route_pw = "Usr-pw-4471x", "Wrong-pw-9183y", "Route-pw-2290z"
    token, hook_secret = "Adm-tok-5561-abcdef", "Hook-secret-8830-qq"
    cert, key = make_cert(str(tmp_path / "tls"))
    admin_port = free_port()
    rb = RelayboxProcess(str(tmp_path), {
        "smtp.tls": {"cert_file": cert, "key_file": key},
        "[[smtp.users]]": [{"username": "app1", "password": user_pw}],
        "[[routes]]": [{"name": "sh", "host": "127.0.0.1", "port": free_port(), "tls": "none",
                        "username": "relay", "password": route_pw, "default": True,
                        "allow_plaintext_auth": True}],
        "admin": {"listen": f"127.0.0.1:{admin_port}", "tokens": [f"ops:{token}"]},
        "[[webhooks]]": [{"name": "crm", "url": f"http://127.0.0.1:{free_port()}/hook",
                          "secret": hook_secret}],
        "log": {"level": "debug"},
    })
    rb.start()
    ctx = ssl._create_unverified_context()
    try:
        s = smtplib.SMTP("127.0.0.1", rb.smtp_port, timeout=10)
        s.ehlo("client.test")
        s.starttls(context=ctx)
        s.ehlo("client.test")
        s.user, s.password = "app1", wrong_pw
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.auth("LOGIN", s.auth_login)
        s.user, s.password = "app1", user_pw
        assert s.auth("PLAIN", s.auth_plain)[0] == 235
        s.sendmail("app@example.test", ["x@example.org"], b"Subject: t\r\n\r\nhello\r\n")
        s.quit()
        for tok in (token, "not-" + token):
            req = urllib.request.Request(f"http://127.0.0.1:{admin_port}/api/v1/queue/summary",
                                         headers={"Authorization": f"Bearer {tok}"})
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except urllib.error.HTTPError as exc:
                assert exc.code == 401
        rb.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded config" not in rb.log():
            assert time.monotonic() < deadline, rb.log()
            time.sleep(0.1)
        time.sleep(1.5)   # let delivery try the smarthost (refused) and log it
    finally:
        assert rb.stop() == 0
    text = open(rb.log_path, encoding="utf-8", errors="replace").read()
    assert "AUTH" in text or "auth" in text, "debug logging did not show the session"
    secrets = [user_pw, wrong_pw, route_pw, token, hook_secret]
    encoded = [base64.b64encode(b"\0app1\0" + user_pw.encode()).decode(),
               base64.b64encode(wrong_pw.encode()).decode(),
               # not a secret, but if AUTH LOGIN's user line showed, its password line would too
               base64.b64encode(b"app1").decode()]
    for leaked in secrets + encoded:
        assert leaked not in text, f"{leaked!r} leaked into the log"


@pytest.mark.parametrize("formatter", [logs.TextFormatter, logs.JSONFormatter])
def test_formatters_mask_even_without_the_filter(formatter):
    """A handler someone adds with only our formatter (no RedactFilter) still prints no secret."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter())
    log = logging.getLogger("relaybox.test.nofilter")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("smarthost login password=%s", "Hidden-pw-123", extra={"detail": "Bearer abcdef123456"})
    finally:
        log.removeHandler(handler)
        log.propagate = True
    text = stream.getvalue()
    assert "Hidden-pw-123" not in text and "abcdef123456" not in text and "password=***" in text
