"""Read-side SQL over the spool, shared by the HTTP API and the offline CLI (``relaybox queue``).

Functions take a ``sqlite3.Connection`` (run them through ``db.read`` / ``db.read_sync``) and plain
values; they raise ``ValueError`` for a bad filter. A message matches a status filter when any of its
recipients has that status (a message with one delivered and one deferred recipient is both in the Outbox
and in Sent items).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32

from relay.envelope import Status, message_status

STATUS_ALIASES = {
    "outbox": ("scheduled", "queued", "sending", "deferred", "failed"),
    "sent": ("delivered",),
    "active": tuple(sorted(Status.ACTIVE)),
    "final": tuple(sorted(Status.FINAL)),
}
FILTER_KEYS = ("status", "sender", "recipient", "domain", "subject", "client_ip", "auth_user", "since",
               "until", "held", "ids")
QSHAPE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)   # minutes, as Postfix qshape


@dataclass
class MessageFilter:
    status: tuple[str, ...] = ()
    sender: str | None = None        # substring, case-insensitive
    recipient: str | None = None     # substring of any recipient address, case-insensitive
    domain: str | None = None        # exact recipient domain
    subject: str | None = None       # substring, case-insensitive
    client_ip: str | None = None
    auth_user: str | None = None
    since: float | None = None       # created_at >= since
    until: float | None = None       # created_at < until
    held: bool | None = None
    ids: tuple[str, ...] = ()

    def empty(self) -> bool:
        return not any(getattr(self, k) not in (None, ()) for k in FILTER_KEYS)


def parse_statuses(value: str | list | tuple | None) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if not isinstance(value, (str, list, tuple)):
        raise ValueError("status: expected a string or a list of strings")
    parts = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for p in parts:
        if not isinstance(p, str):
            raise ValueError("status: expected strings")
        p = p.strip().lower()
        if p in STATUS_ALIASES:
            out.extend(STATUS_ALIASES[p])
        elif p in Status.ALL:
            out.append(p)
        else:
            raise ValueError(f"status: unknown {p!r}; expected one of {', '.join(Status.ALL)}, "
                             f"{', '.join(STATUS_ALIASES)}")
    return tuple(dict.fromkeys(out))


def _where(f: MessageFilter) -> tuple[list[str], list]:
    clauses: list[str] = []
    args: list = []
    if f.status:
        marks = ",".join("?" * len(f.status))
        if set(f.status) <= Status.ACTIVE:
            # the active queue is small next to the retained history: start from the status index
            clauses.append(f"m.id IN (SELECT message_id FROM recipients WHERE status IN ({marks}))")
        else:
            clauses.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
                           f" AND r.status IN ({marks}))")
        args += list(f.status)
    if f.sender:
        clauses.append("instr(lower(m.sender), lower(?)) > 0")
        args.append(f.sender)
    if f.recipient:
        clauses.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id"
                       " AND instr(lower(r.address), lower(?)) > 0)")
        args.append(f.recipient)
    if f.domain:
        clauses.append("EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.domain = ?)")
        args.append(f.domain.lower())
    if f.subject:
        clauses.append("instr(lower(COALESCE(m.subject, '')), lower(?)) > 0")
        args.append(f.subject)
    if f.client_ip:
        clauses.append("m.client_ip = ?")
        args.append(f.client_ip)
    if f.auth_user:
        clauses.append("m.auth_user = ?")
        args.append(f.auth_user)
    if f.since is not None:
        clauses.append("m.created_at >= ?")
        args.append(f.since)
    if f.until is not None:
        clauses.append("m.created_at < ?")
        args.append(f.until)
    if f.held is not None:
        clauses.append("m.held = ?")
        args.append(1 if f.held else 0)
    if f.ids:
        clauses.append("m.id IN (%s)" % ",".join("?" * len(f.ids)))
        args += list(f.ids)
    return clauses, args


def list_messages(conn: sqlite3.Connection, f: MessageFilter, *, limit: int = 50, after: str | None = None,
                  order: str = "desc") -> tuple[list[dict], str | None]:
    """One page of messages (newest first by default) and the id to continue after, if any."""
    clauses, args = _where(f)
    if after is not None:
        clauses.append("m.id < ?" if order == "desc" else "m.id > ?")
        args.append(after)
    sql = ("SELECT m.* FROM messages m" + (" WHERE " + " AND ".join(clauses) if clauses else "")
           + f" ORDER BY m.id {'DESC' if order == 'desc' else 'ASC'} LIMIT ?")
    rows = conn.execute(sql, (*args, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    by_id = {r["id"]: _summary(r) for r in rows}
    if by_id:
        marks = ",".join("?" * len(by_id))
        for r in conn.execute(f"SELECT message_id, address, status FROM recipients"
                              f" WHERE message_id IN ({marks}) ORDER BY id", tuple(by_id)):
            m = by_id[r["message_id"]]
            m["recipients"].append(r["address"])
            m["recipient_status"][r["status"]] = m["recipient_status"].get(r["status"], 0) + 1
        for m in by_id.values():
            m["status"] = message_status(list(m["recipient_status"]))
    return list(by_id.values()), (rows[-1]["id"] if more and rows else None)


def matching_ids(conn: sqlite3.Connection, f: MessageFilter, limit: int) -> list[str]:
    clauses, args = _where(f)
    sql = "SELECT m.id FROM messages m" + (" WHERE " + " AND ".join(clauses) if clauses else "") + \
          " ORDER BY m.id LIMIT ?"
    return [r[0] for r in conn.execute(sql, (*args, limit))]


def _summary(r: sqlite3.Row) -> dict:
    return {"id": r["id"], "created_at": r["created_at"], "sender": r["sender"], "from": r["from_header"],
            "subject": r["subject"], "message_id": r["message_id"], "client_ip": r["client_ip"],
            "auth_user": r["auth_user"], "size": r["size"], "send_at": r["send_at"], "held": bool(r["held"]),
            "status": "unknown", "recipients": [], "recipient_status": {}}


_SECRET_LINE = re.compile(r"^(\s*(?:>>>?|<<<?|C:|S:)?\s*)(AUTH\s+\S+)(\s+.*)?$", re.I)


def redact_transcript(lines: list) -> list:
    """Transcripts should hold no secrets already; this is the belt to the delivery engine's braces."""
    out = []
    for item in lines:
        if isinstance(item, dict) and isinstance(item.get("line"), str):
            line = item["line"]
            if line.upper().lstrip().startswith("AUTH") or item.get("dir") in ("auth",):
                item = {**item, "line": _SECRET_LINE.sub(r"\1\2 [redacted]", line)}
            out.append(item)
        elif isinstance(item, str) and item.upper().lstrip(" >C:").startswith("AUTH"):
            out.append(_SECRET_LINE.sub(r"\1\2 [redacted]", item))
        else:
            out.append(item)
    return out


def _headers(body: bytes | None) -> list[list[str]] | None:
    if body is None:
        return None
    end = body.find(b"\r\n\r\n")
    head = body[: end if end >= 0 else min(len(body), 65536)][:65536]
    msg = BytesHeaderParser(policy=compat32).parsebytes(head + b"\r\n\r\n")
    return [[k, str(v)] for k, v in msg.items()]


def show_message(conn: sqlite3.Connection, qid: str) -> dict | None:
    row = conn.execute("SELECT * FROM messages WHERE id=?", (qid,)).fetchone()
    if row is None:
        return None
    out = _summary(row)
    out["client_helo"] = row["client_helo"]
    out["body_sha256"] = row["body_sha256"]
    rcpts = [dict(r) for r in conn.execute(
        "SELECT id, address, domain, status, reason, attempts, next_attempt_at, last_code, last_enhanced,"
        " last_text, route, updated_at FROM recipients WHERE message_id=? ORDER BY id", (qid,))]
    out["recipients"] = rcpts
    out.pop("recipient_status")
    out["status"] = message_status([r["status"] for r in rcpts])
    out["events"] = [_event(e) for e in conn.execute(
        "SELECT * FROM events WHERE message_id=? ORDER BY id", (qid,))]
    attempts = []
    for a in conn.execute("SELECT * FROM attempts WHERE message_id=? ORDER BY id", (qid,)):
        d = dict(a)
        d["tls"] = None if d["tls"] is None else bool(d["tls"])
        d["recipients"] = _json(d["recipients"], [])
        d["transcript"] = redact_transcript(_json(d["transcript"], []))
        attempts.append(d)
    out["attempts"] = attempts
    body = conn.execute("SELECT data FROM bodies WHERE message_id=?", (qid,)).fetchone()
    out["body_available"] = body is not None
    out["headers"] = _headers(bytes(body[0]) if body else None)
    return out


def _json(text, default):
    try:
        return json.loads(text) if text else default
    except ValueError:
        return default


def _event(e: sqlite3.Row) -> dict:
    d = dict(e)
    d["details"] = _json(d.get("details"), None)
    return d


def list_events(conn: sqlite3.Connection, *, after: int = 0, limit: int = 100, message_id: str | None = None,
                status: tuple[str, ...] = ()) -> list[dict]:
    clauses, args = ["id > ?"], [after]
    if message_id:
        clauses.append("message_id = ?")
        args.append(message_id)
    if status:
        clauses.append("status IN (%s)" % ",".join("?" * len(status)))
        args += list(status)
    sql = "SELECT * FROM events WHERE " + " AND ".join(clauses) + " ORDER BY id LIMIT ?"
    return [_event(e) for e in conn.execute(sql, (*args, limit))]


def _bucket_labels() -> list[str]:
    labels, lo = [], 0
    for hi in QSHAPE_BUCKETS:
        labels.append(f"{lo}-{hi}m")
        lo = hi
    labels.append(f"{lo}m+")
    return labels


def queue_summary(conn: sqlite3.Connection, *, statuses: tuple[str, ...] = (), top: int = 50,
                  now: float | None = None) -> dict:
    """Counts per status, and a qshape table: recipient domain x age of the message (minutes)."""
    now = time.time() if now is None else now
    counts = {s: 0 for s in Status.ALL}
    for r in conn.execute("SELECT status, COUNT(*) AS n FROM recipients GROUP BY status"):
        counts[r["status"]] = r["n"]
    held = conn.execute("SELECT COUNT(*) FROM messages WHERE held=1").fetchone()[0]
    statuses = statuses or tuple(sorted(Status.ACTIVE))
    marks = ",".join("?" * len(statuses))
    per_domain: dict[str, list[int]] = {}
    total = [0] * (len(QSHAPE_BUCKETS) + 1)
    for r in conn.execute(
            f"SELECT r.domain AS domain, m.created_at AS created FROM recipients r JOIN messages m ON"
            f" m.id = r.message_id WHERE r.status IN ({marks})", statuses):
        age_min = max(0.0, now - r["created"]) / 60
        idx = next((i for i, hi in enumerate(QSHAPE_BUCKETS) if age_min < hi), len(QSHAPE_BUCKETS))
        row = per_domain.setdefault(r["domain"], [0] * (len(QSHAPE_BUCKETS) + 1))
        row[idx] += 1
        total[idx] += 1
    ranked = sorted(per_domain.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
    rows = [{"domain": d, "total": sum(c), "counts": c} for d, c in ranked[:top]]
    return {"counts": counts, "held_messages": held, "statuses": list(statuses), "buckets": _bucket_labels(),
            "total": {"domain": "TOTAL", "total": sum(total), "counts": total}, "rows": rows,
            "domains": len(per_domain)}
