"""Logging for the relaybox process: human lines or JSON lines on stderr, and redaction of secrets.

``setup_logging(level, fmt)`` installs one handler on the root logger:

- ``text`` (default):
  ``2026-11-23T07:20:01.234Z INFO relay.intake.listener [Q7XK2] accepted ... peer=10.0.0.5``
- ``json``: one object per line: ``{"ts": ..., "level": ..., "logger": ..., "msg": ..., "queue_id": ...}``

The queue id comes from ``log.info("...", extra={"queue_id": qid})``; other ``extra`` fields are kept too
(appended as ``key=value`` in text, as keys in JSON). The two lines of every relayed message (accepted,
result) come through ``relay.maillog.mail_line``: the same line, written by ``Handler.direct_line``
without a LogRecord when this handler, with only relaybox's filters, is the one listening.

Secrets never reach the output. Every record passes a redaction step that masks, in the message, the
arguments, the extra fields and the traceback:

- ``password=...`` / ``"password": "..."`` style pairs (password, passwd, pwd, secret, token, api_key, ...),
- SASL payloads (``AUTH PLAIN <base64>``, ``AUTH LOGIN``, ``XOAUTH2``, ``OAUTHBEARER``, ``CRAM-MD5``),
- ``Bearer``/``Basic`` credentials (HTTP Authorization headers),
- every value registered with ``register_secret(s)`` (route passwords, API tokens, webhook secrets: the
  code that loads a secret registers it once, at load time). Values shorter than 4 characters are not
  registered (they would mask ordinary text); the patterns above still catch them in key=value form.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import sys
import threading
import time
from typing import Any, Iterable, TextIO

MASK = "***"
MIN_SECRET_LEN = 4

_KEYS = (r"password|passwd|pwd|pass|secret|client_secret|token|access_token|refresh_token|auth_token"
         r"|api[_-]?key|apikey|private_key|credentials?")
# key, optional closing quote of a JSON key, separator, then a quoted (optionally b'') or bare value
_PAIR = re.compile(
    r"""(?ix)
    (?<![A-Za-z0-9_])(?P<key>(?:""" + _KEYS + r"""))(?P<kq>["']?)
    (?P<sep>\s*[=:]\s*)
    (?P<val>b?"(?:[^"\\]|\\.)*"|b?'(?:[^'\\]|\\.)*'|[^\s,;&)}\]]+)
    """)
_MECHS = r"(?:PLAIN|LOGIN|XOAUTH2|OAUTHBEARER|CRAM-MD5)"
# "AUTH PLAIN <payload>", but not the EHLO advertisement "AUTH LOGIN PLAIN"
_SASL = re.compile(r"(?i)\b(AUTH\s+" + _MECHS + r"\s+)(?!" + _MECHS + r"\b)([A-Za-z0-9+/=._-]+)")
_HTTP_AUTH = re.compile(r"(?i)\b(Bearer|Basic)(\s+)([A-Za-z0-9._~+/=-]{4,})")

_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()      # longest first, so a secret containing another leaves no partial
_secret_lock = threading.Lock()


def register_secret(value: str | bytes | None) -> None:
    """Mask ``value`` wherever it appears in a log record from now on."""
    register_secrets([value])


def register_secrets(values: Iterable[str | bytes | None]) -> None:
    global _ordered
    with _secret_lock:
        added = False
        for v in values:
            if isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            if v and len(v) >= MIN_SECRET_LEN and v not in _secrets:
                _secrets.add(v)
                added = True
        if added:
            _ordered = tuple(sorted(_secrets, key=len, reverse=True))


_SECRET_FIELD = re.compile(r"(?i)(password|passwd|secret|token|api_?key|private_key)")


def register_settings_secrets(obj: Any, _depth: int = 0) -> int:
    """Walk loaded settings (dataclasses, lists, dicts) and register the value of every field whose name
    says it is a secret (password, secret, token(s), api_key, ...); for ``token_file`` / ``secret_file`` the
    lines of the file. A ``"name:secret"`` token registers its secret part too. Returns how many values were
    seen. Call once after loading the config (and on reload)."""
    if _depth > 8 or obj is None:
        return 0
    found: list[str] = []

    def take(value: Any) -> None:
        if isinstance(value, str) and value:
            found.append(value)
            secret_part = value.split(":", 1)[1].split() if ":" in value else []
            if secret_part:                      # "name:secret" and "name:secret ro"
                found.append(secret_part[0])
        elif isinstance(value, (list, tuple)):
            for v in value:
                take(v)

    if isinstance(obj, (list, tuple)):
        return sum(register_settings_secrets(v, _depth + 1) for v in obj)
    count = 0
    for name, value in _fields(obj):
        if _SECRET_FIELD.search(name) and name.endswith("_file") and isinstance(value, str) and value:
            take(_secret_file_lines(value))      # token_file, secret_file: the secrets are in the file
        elif _SECRET_FIELD.search(name) and not name.endswith("_hash"):
            take(value)
        elif isinstance(value, (list, tuple, dict)) or dataclasses.is_dataclass(value) or \
                hasattr(value, "__dict__") and not isinstance(value, (str, bytes, int, float)):
            count += register_settings_secrets(value, _depth + 1)
    register_secrets(found)
    return count + len(found)


def _fields(obj: Any) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [(f.name, getattr(obj, f.name, None)) for f in dataclasses.fields(obj)]
    if isinstance(obj, dict):
        return [(str(k), v) for k, v in obj.items()]
    return list(vars(obj).items()) if hasattr(obj, "__dict__") else []


def _secret_file_lines(path: str) -> list[str]:
    """Non-comment lines of a secrets file, without a trailing " ro" flag; [] if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    out = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line[:-3].rstrip() if line.endswith(" ro") else line)
    return out


def clear_secrets() -> None:
    """Forget registered secrets (tests)."""
    global _ordered
    with _secret_lock:
        _secrets.clear()
        _ordered = ()


def _mask_pair(m: re.Match[str]) -> str:
    val = m.group("val")
    if val[:1] in "\"'" or val[:2] in ('b"', "b'"):
        quote = val[-1]
        prefix = val[: val.index(quote) + 1]
        masked = f"{prefix}{MASK}{quote}"
    else:
        masked = MASK
    return f"{m.group('key')}{m.group('kq')}{m.group('sep')}{masked}"


def redact(text: str) -> str:
    """``text`` with every known kind of secret masked."""
    if not text:
        return text
    for secret in _ordered:     # C-level substring search: far cheaper than one big alternation
        if secret in text:
            text = text.replace(secret, MASK)
    low = text.lower()          # cheap substring tests spare most lines the three scans below
    if "auth" in low:
        text = _SASL.sub(lambda m: m.group(1) + MASK, text)
    if "bearer" in low or "basic" in low:
        text = _HTTP_AUTH.sub(lambda m: m.group(1) + m.group(2) + MASK, text)
    if ("pass" in low or "pwd" in low or "secret" in low or "token" in low or "key" in low
            or "credential" in low):   # the stems of _KEYS
        text = _PAIR.sub(_mask_pair, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace"))
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return redact(str(value))


# attributes every LogRecord has; anything else came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime",
                                                                            "taskName", "_redacted"}


def extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class RedactFilter(logging.Filter):
    """Rewrites a record in place so that no handler can print a secret: the message is rendered with its
    arguments and masked, extra fields and the traceback text are masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        for key, value in extras(record).items():
            setattr(record, key, _redact_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None   # the masked text replaces the live traceback
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._redacted = True
        return True


class FieldTag(logging.Filter):
    """Fixed fields on every line through a handler (a worker's ``worker=<slot>``): set on the record,
    after its own extra fields."""

    def __init__(self, **fields: Any):
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            setattr(record, key, value)
        return True


_second: tuple[int, str] = (-1, "")    # the last whole second formatted and its text (one tuple: threads
                                       # log too, and rebinding a name is atomic where two stores are not)


def _stamp(created: float, msecs: float) -> str:
    global _second
    sec = int(created)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{int(msecs):03d}Z"


def _timestamp(record: logging.LogRecord) -> str:
    return _stamp(record.created, record.msecs)


class TextFormatter(logging.Formatter):
    """``TS LEVEL logger [queue-id] message key=value ...`` and the traceback, if any, below."""

    def format(self, record: logging.LogRecord) -> str:
        line = self.render(_timestamp(record), record.levelname, record.name, record.getMessage(),
                           extras(record))
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        # a record that went through RedactFilter is clean already; anything else is masked here
        return line if getattr(record, "_redacted", False) else redact(line)

    @staticmethod
    def render(ts: str, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        """One line from its parts (``fields``: the extra fields, ``queue_id`` among them; consumed)."""
        qid = fields.pop("queue_id", None)
        parts = [ts, level, logger]
        if qid:
            parts.append(f"[{qid}]")
        parts.append(message)
        for key, value in fields.items():
            parts.append(f"{key}={value}")
        return " ".join(str(p) for p in parts)


class JSONFormatter(logging.Formatter):
    """One JSON object per line. Keys: ts, level, logger, msg, queue_id (when known), extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        clean = getattr(record, "_redacted", False)     # went through RedactFilter
        mask = (lambda v: v) if clean else _redact_value
        doc = self.document(_timestamp(record), record.levelname, record.name, mask(record.getMessage()),
                            {k: mask(v) for k, v in extras(record).items()})
        if record.exc_text:
            doc["exc"] = mask(record.exc_text)
        if record.stack_info:
            doc["stack"] = mask(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)

    @staticmethod
    def document(ts: str, level: str, logger: str, message: str, fields: dict[str, Any]) -> dict[str, Any]:
        doc: dict[str, Any] = {"ts": ts, "level": level.lower(), "logger": logger, "msg": message}
        for key, value in fields.items():
            if key not in doc:
                doc[key] = value
        return doc

    def render(self, ts: str, level: str, logger: str, message: str, fields: dict[str, Any]) -> str:
        return json.dumps(self.document(ts, level, logger, message, fields), ensure_ascii=False, default=str)


class Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """relaybox's one handler (a StreamHandler), which can also write a line without a LogRecord:
    ``direct_line``, for ``relay.maillog.mail_line``."""

    _relaybox = True

    def direct_line(self, logger: str, level: int, text: str, queue_id: str) -> bool:
        """Write what ``logging.getLogger(logger).log(level, "%s", text, extra={"queue_id": queue_id})``
        would write through this handler, with its filters and formatter, at about a third of the cost (no
        LogRecord, no filter chain, the fields rendered once). False, and nothing written, when a filter
        or the formatter is not relaybox's own (the caller then goes through the logging module)."""
        fmt = self.formatter
        if not isinstance(fmt, (TextFormatter, JSONFormatter)):
            return False
        fields: dict[str, Any] = {"queue_id": redact(queue_id)}
        for f in self.filters:
            if isinstance(f, FieldTag):
                fields.update(f.fields)
            elif not isinstance(f, RedactFilter):
                return False
        created = time.time()
        line = fmt.render(_stamp(created, (created - int(created)) * 1000), logging.getLevelName(level),
                          logger, redact(text), fields)
        with self.lock or _nolock:
            try:
                self.stream.write(line + self.terminator)
                self.flush()
            except Exception:  # noqa: BLE001 - as StreamHandler.emit: reported, never raised to the caller
                self.handleError(logging.makeLogRecord({"name": logger, "levelno": level, "msg": text}))
        return True


_nolock = threading.Lock()


def setup_logging(level: str = "info", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Install relaybox's handler on the root logger (replacing one installed before) and return it."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format: expected text or json, got {fmt!r}")
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_relaybox", False) or isinstance(h, logging.StreamHandler) and h.stream in (
                sys.stderr, sys.stdout):
            root.removeHandler(h)
    # no relaybox format prints the caller's file/line, thread or process: do not compute them for every
    # record (the logging HOWTO's "Optimization"; ~10 us a line, two lines per message at info)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = Handler(stream if stream is not None else sys.stderr)
    handler.addFilter(RedactFilter())
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.captureWarnings(True)
    return handler


def set_level(level: str) -> None:
    """Change the root level at run time (SIGHUP reload)."""
    logging.getLogger().setLevel(level.upper())
