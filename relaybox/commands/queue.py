"""``relaybox queue list|show|cancel|retry|send-now|schedule|resend|hold|release|delete|summary``.

Talks to the running instance's admin API (``--api URL``, else ``admin.listen`` of the config) with a token
(``--token``, ``$RELAYBOX_API_TOKEN``, else the first full-access token of the config). When no instance
answers, or with ``--offline``, it works on the store directly (SQLite WAL makes that safe). The
actions accept queue ids or, without ids, filters (``--domain example.com --status deferred``): the bulk
form of the same API. ``schedule --at <RFC 3339>`` (re)schedules the pending recipients, ``send-now`` makes
them due at once (docs/scheduling.md). Human tables by default, ``--json`` for scripts.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from types import SimpleNamespace
from typing import Any

ACTIONS = ("cancel", "retry", "send-now", "resend", "hold", "release", "delete")
FILTERS = ("status", "sender", "recipient", "domain", "subject", "client_ip", "auth_user", "since", "until")


class CliError(Exception):
    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ---- backends ----------------------------------------------------------------------------------------
class ApiBackend:
    def __init__(self, base: str, token: str):
        self.base = base.rstrip("/")
        self.token = token

    def _call(self, method: str, path: str, body: Any = None, params: dict | None = None) -> Any:
        url = self.base + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Bearer {self.token}",
                                              **({"Content-Type": "application/json"} if data else {})})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                raw = resp.read()
                return json.loads(raw) if resp.headers.get_content_type() == "application/json" else raw
        except urllib.error.HTTPError as exc:
            try:
                err = json.loads(exc.read())["error"]
                msg = f"{err['message']} ({exc.code} {err['code']})"
            except (ValueError, KeyError, TypeError):
                msg = f"HTTP {exc.code}"
            raise CliError(msg, 1 if exc.code in (404, 409) else 2) from None

    def ping(self) -> None:
        self._call("GET", "/api/v1/messages", params={"limit": "1"})

    def list(self, filters: dict, limit: int, cursor: str | None) -> dict:
        params = {k: v for k, v in filters.items() if v is not None}
        params.update(limit=str(limit), **({"cursor": cursor} if cursor else {}))
        return self._call("GET", "/api/v1/messages", params=params)

    def show(self, qid: str) -> dict:
        return self._call("GET", f"/api/v1/messages/{urllib.parse.quote(qid)}")

    def action(self, action: str, qid: str, at: str | None = None) -> dict:
        q = urllib.parse.quote(qid)
        if action == "delete":
            return self._call("DELETE", f"/api/v1/messages/{q}")
        body = {"at": at} if action == "schedule" else None
        return self._call("POST", f"/api/v1/messages/{q}/{action}", body)

    def bulk(self, action: str, flt: dict, every: bool, dry_run: bool, limit: int | None = None,
             progress=None, at: str | None = None) -> dict:
        body = {"filter": flt, "all": every, "dry_run": dry_run, **({"limit": limit} if limit else {}),
                **({"at": at} if action == "schedule" else {})}
        res = self._call("POST", f"/api/v1/bulk/messages/{action}", body)
        while res.get("state") == "running":          # a large job: follow it
            if progress:
                progress(res)
            time.sleep(1.0)
            res = self._call("GET", res["status_url"])
        return res

    def summary(self, status: str | None, top: int) -> dict:
        return self._call("GET", "/api/v1/queue/summary", params={"top": str(top), **({"status": status}
                                                                                      if status else {})})


class DbBackend:
    """The same operations on the store, through the spool and the store's read side (``store.history``)."""

    def __init__(self, path: str, key_file: str | None = None):
        from relay.spool.spool import Spool
        from store import Store

        self.store = Store(path, key_file=key_file).open()
        self.rb = SimpleNamespace(store=self.store, spool=Spool(self.store))

    def close(self) -> None:
        self.store.close()

    def _filter(self, flt: dict):
        from admin_api.common import ApiError
        from admin_api.routes_messages import filter_from

        try:
            return filter_from({k: v for k, v in flt.items() if v is not None}, from_query=True)
        except ApiError as exc:
            raise CliError(exc.message, 2) from None

    def list(self, filters: dict, limit: int, cursor: str | None) -> dict:
        f = self._filter(filters)
        page = asyncio.run(self.store.history.list_messages(f, limit=limit, after=cursor))
        return {"items": [_iso_fields(m.as_dict()) for m in page.items], "next_cursor": page.next_after}

    def show(self, qid: str) -> dict:
        m = asyncio.run(self.store.history.show(qid))
        if m is None:
            raise CliError(f"no message {qid}")
        return _iso_fields(m.as_dict())

    def _run(self, coro):
        from admin_api.common import ApiError

        try:
            return asyncio.run(coro)
        except ApiError as exc:
            raise CliError(exc.message, 1 if exc.status in (404, 409) else 2) from None

    def _at(self, action: str, at: str | None) -> float | None:
        from admin_api.common import ApiError
        from admin_api.routes_messages import schedule_time

        if action != "schedule":
            return None
        try:
            return schedule_time(at, time.time())
        except ApiError as exc:
            raise CliError(exc.message, 2) from None

    def action(self, action: str, qid: str, at: str | None = None) -> dict:
        from admin_api.common import iso
        from admin_api.routes_messages import run_action

        when = self._at(action, at)
        n = self._run(run_action(self.rb, action, qid, "cli", at=when))
        return {"id": qid, "action": action, "affected": n, **({"at": iso(when)} if when else {})}

    def bulk(self, action: str, flt: dict, every: bool, dry_run: bool, limit: int | None = None,
             progress=None, at: str | None = None) -> dict:
        """Every matching message (or the first ``limit``), in id order, 500 at a time: never capped."""
        from admin_api.common import ApiError
        from admin_api.routes_messages import run_action

        when = self._at(action, at)
        f = self._filter(flt)
        if f.empty() and not every:
            raise CliError("no ids and no filter: pass --all to act on every message", 2)
        history = self.store.history
        matched = asyncio.run(history.count_matching(f))
        matched = min(matched, limit) if limit else matched
        out: dict = {"action": action, "matched": matched, "done": 0, "affected": 0, "unchanged": 0,
                     "errors": [], "error_count": 0}
        if dry_run:
            out["ids"] = asyncio.run(history.matching_ids(f, min(matched, 1000)))
            return out

        async def one(qid: str) -> None:
            try:
                n = await run_action(self.rb, action, qid, "cli", at=when)
            except ApiError as exc:
                if exc.status == 409 and exc.message.startswith(qid + ": no "):
                    out["unchanged"] += 1
                    return
                out["error_count"] += 1
                if len(out["errors"]) < 100:
                    out["errors"].append({"id": qid, "code": exc.code, "message": exc.message})
                return
            out["affected" if n else "unchanged"] += 1

        async def _all() -> None:
            after = None
            while out["done"] < matched:
                ids = await history.matching_ids(f, min(500, matched - out["done"]), after)
                if not ids:
                    break
                for qid in ids:
                    await one(qid)
                    out["done"] += 1
                after = ids[-1]
                if progress:
                    progress(out)

        asyncio.run(_all())
        return out

    def summary(self, status: str | None, top: int) -> dict:
        from store.history import parse_statuses

        try:
            st = parse_statuses(status)
        except ValueError as exc:
            raise CliError(str(exc), 2) from None
        return asyncio.run(self.store.history.summary(statuses=st, top=top)).as_dict()


def _iso_fields(m: dict) -> dict:
    from admin_api.common import iso

    m = dict(m)
    for k in ("created_at", "send_at"):
        if isinstance(m.get(k), (int, float)):
            m[k] = iso(m[k])
    return m


def _config_api(args) -> tuple[str | None, str | None, str | None, str | None]:
    """(api base URL, token, store location, key file) from the arguments, the environment and the
    config file."""
    api, token, db = args.api, args.token or os.environ.get("RELAYBOX_API_TOKEN"), args.db
    key_file = None
    try:
        from relaybox.settings import load

        settings = load(args.config)
    except Exception:  # noqa: BLE001 - no usable config: only explicit arguments count
        settings = None
    if settings is not None:
        if not db:
            db, key_file = settings.relay.storage.location(), settings.relay.storage.key_file()
        admin = settings.section("admin")
        if admin is not None and admin.enabled:
            api = api or f"http://{admin.listen}"
            if not token:
                from admin_api.auth import load_tokens

                try:
                    full = [t for t in load_tokens(admin) if not t.readonly]
                except ValueError:
                    full = []
                token = full[0].secret.decode() if full else None
    return api, token, db, key_file


def backend(args):
    api, token, db, key_file = _config_api(args)
    if not args.offline and api and token:
        b = ApiBackend(api, token)
        try:
            b.ping()
            return b
        except CliError as exc:     # it answered, but not with a page: a token problem, not a dead instance
            raise CliError(f"the admin API at {api} refused the request: {exc}", 2) from None
        except (urllib.error.URLError, OSError) as exc:
            if args.api:
                raise CliError(f"cannot reach the admin API at {api}: {exc}", 2) from None
            print(f"note: relaybox not reachable at {api}; working on the database", file=sys.stderr)
    if not db:
        raise CliError("no database: pass --db or a config file", 2)
    return DbBackend(db, key_file)


# ---- output ------------------------------------------------------------------------------------------
def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def _short(text: Any, n: int) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


def print_list(data: dict) -> None:
    rows = []
    for m in data["items"]:
        rc = m["recipients"]
        when = f" for {m['send_at']}" if m.get("send_at") and m.get("status") == "scheduled" else ""
        rows.append([m["id"], m["created_at"], m.get("status_summary", m["status"])
                     + (" (held)" if m.get("held") else "") + when,
                     _short(m["sender"] or "<>", 30),
                     _short(rc[0] if rc else "", 30) + (f" +{len(rc) - 1}" if len(rc) > 1 else ""),
                     _short(m.get("subject"), 40)])
    print(table(rows, ["ID", "CREATED", "STATUS", "SENDER", "RECIPIENTS", "SUBJECT"]))


def print_show(m: dict) -> None:
    for k in ("id", "status", "status_summary", "created_at", "send_at", "sender", "from", "subject",
              "message_id", "client_ip", "auth_user", "size", "held", "body_available"):
        print(f"{k + ':':16}{m.get(k)}")
    print()
    print(table([[r["id"], r["address"], r["status"], r.get("attempts"), r.get("last_code"),
                  _short(r.get("last_text"), 50)] for r in m["recipients"]],
                ["RCPT", "ADDRESS", "STATUS", "TRIES", "CODE", "LAST REPLY"]))
    print()
    print(table([[e["at"] if isinstance(e["at"], str) else time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                            time.gmtime(e["at"])),
                  e["status"], e["recipient_id"], e["actor"], e.get("reason")] for e in m["events"]],
                ["AT", "EVENT", "RCPT", "ACTOR", "REASON"]))
    print_attempts(m.get("attempts") or [])


def _when(t) -> str:
    if t is None or isinstance(t, str):
        return t or "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def print_attempts(attempts: list) -> None:
    """Each SMTP transaction with its transcript (commands >, replies <; AUTH redacted by the store)."""
    for n, a in enumerate(attempts, 1):
        tls = {True: "yes", False: "no"}.get(a.get("tls"), "-")
        rcpts = ",".join(str(r) for r in a.get("recipients") or [])
        print()
        print(f"attempt {n}: {_when(a.get('started_at'))} route={a.get('route') or '-'} "
              f"host={a.get('host') or '-'}[{a.get('ip') or ''}] tls={tls} result={a.get('result') or '-'} "
              f"rcpts={rcpts or '-'}")
        for line in a.get("transcript") or []:
            if isinstance(line, dict):
                arrow = {"c": ">", "s": "<", "out": ">", "in": "<"}.get(str(line.get("dir")).lower(), "?")
                print(f"  {arrow} {line.get('line', '')}")
            else:
                print(f"  {line}")


def print_summary(s: dict) -> None:
    print("  ".join(f"{k}={v}" for k, v in s["counts"].items() if v) or "queue empty")
    rows = [[s["total"]["domain"], s["total"]["total"], *s["total"]["counts"]]]
    rows += [[r["domain"], r["total"], *r["counts"]] for r in s["rows"]]
    print(table(rows, ["DOMAIN", "TOTAL", *s["buckets"]]))
    down = s.get("destinations_down") or []
    if down:
        print(f"\n{len(down)} destination(s) parked (unreachable; recipients wait for the next probe):")
        print(table([[d["destination"], d["down_since"], d["failures"], d["next_probe"],
                      d["recipients_waiting"], d["last_error"][:60]] for d in down],
                    ["DESTINATION", "DOWN SINCE", "FAILURES", "NEXT PROBE", "WAITING", "LAST ERROR"]))


# ---- commands ----------------------------------------------------------------------------------------
def _filters(args) -> dict:
    out = {k: getattr(args, k, None) for k in FILTERS}
    if getattr(args, "held", None) is not None:
        out["held"] = "true" if args.held else "false"
    return out


def _run(args, fn) -> int:
    try:
        b = backend(args)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    try:
        return fn(b)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    finally:
        if isinstance(b, DbBackend):
            b.close()


def cmd_list(args) -> int:
    def go(b):
        data, cursor, items = None, None, []
        while True:
            data = b.list(_filters(args), min(args.limit - len(items), 1000), cursor)
            items += data["items"]
            cursor = data["next_cursor"]
            if not cursor or len(items) >= args.limit:
                break
        data = {"items": items, "next_cursor": cursor}
        print(json.dumps(data, default=str)) if args.json else print_list(data)
        return 0
    return _run(args, go)


def cmd_show(args) -> int:
    def go(b):
        m = b.show(args.id)
        print(json.dumps(m, default=str)) if args.json else print_show(m)
        return 0
    return _run(args, go)


def cmd_summary(args) -> int:
    def go(b):
        s = b.summary(args.status, args.top)
        print(json.dumps(s)) if args.json else print_summary(s)
        return 0
    return _run(args, go)


def _progress(action: str):
    """A progress line on stderr while a bulk action runs (rewritten in place on a terminal)."""
    tty = sys.stderr.isatty()

    def show(res: dict) -> None:
        line = f"{action}: {res.get('done', 0):,}/{res['matched']:,} done, {res['affected']:,} affected"
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    return show


def cmd_action(args) -> int:
    def go(b):
        flt = {k: v for k, v in _filters(args).items() if v is not None}
        if args.ids:
            if flt or args.all:
                raise CliError("give queue ids or filters, not both", 2)
            results, rc = [], 0
            for qid in args.ids:
                try:
                    results.append(b.action(args.action, qid, getattr(args, "at", None)))
                except CliError as exc:
                    results.append({"id": qid, "action": args.action, "error": str(exc)})
                    rc = max(rc, exc.code)
            for r in results:
                if args.json:
                    continue
                at = f" for {r['at']}" if r.get("at") else ""
                err = str(r.get("error", ""))
                err = err[len(r["id"]) + 2:] if err.startswith(f"{r['id']}: ") else err   # said once
                print(f"{r['id']}: {err}" if "error" in r else f"{r['id']}: {args.action}{at} "
                      f"({r['affected']} affected)", file=sys.stderr if "error" in r else sys.stdout)
            if args.json:
                print(json.dumps(results))
            return rc
        if not flt and not args.all:
            raise CliError("no queue ids and no filters: pass --all to act on every message", 2)
        res = b.bulk(args.action, flt, args.all, args.dry_run, args.limit,
                     None if args.json else _progress(args.action), getattr(args, "at", None))
        if args.json:
            print(json.dumps(res))
        else:
            errors = res.get("error_count", len(res["errors"]))
            print(f"{args.action}: {res['matched']} matched, {res['affected']} affected, "
                  f"{res['unchanged']} unchanged, {errors} errors"
                  + (" (dry run)" if args.dry_run else ""))
            for e in res["errors"]:
                print(f"  {e['id']}: {e['message']}", file=sys.stderr)
        return 1 if res["errors"] else 0
    return _run(args, go)


def _common(p, *, filters: bool = False) -> None:
    p.add_argument("--api", default=None, help="admin API base URL (default: http://<admin.listen>)")
    p.add_argument("--token", default=None, help="API token (default: $RELAYBOX_API_TOKEN or the config)")
    p.add_argument("--db", default=None, help="database file for offline use (default: storage.path)")
    p.add_argument("--offline", action="store_true", help="work on the database even if relaybox runs")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    if filters:
        for name in FILTERS:
            p.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None)
        p.add_argument("--held", dest="held", action="store_true", default=None, help="only held messages")
        p.add_argument("--not-held", dest="held", action="store_false", help="only messages not held")


def register(sub) -> None:
    q = sub.add_parser("queue", help="inspect and act on the mail queue")
    qs = q.add_subparsers(dest="sub", required=True)
    p = qs.add_parser("list", help="messages, newest first (filters: --status outbox|sent|deferred|...)")
    _common(p, filters=True)
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_list)
    p = qs.add_parser("show", help="one message: recipients, events")
    p.add_argument("id")
    _common(p)
    p.set_defaults(func=cmd_show)
    p = qs.add_parser("summary", help="counts per status and a qshape table (domain x age in minutes)")
    _common(p)
    p.add_argument("--status", default=None, help="statuses in the table (default: active)")
    p.add_argument("--top", type=int, default=50)
    p.set_defaults(func=cmd_summary)
    for action in (*ACTIONS, "schedule"):
        p = qs.add_parser(action, help=_HELP.get(action, f"{action} messages by id, or every message matching"
                                                          " the filters"))
        p.add_argument("ids", nargs="*")
        _common(p, filters=True)
        if action == "schedule":
            p.add_argument("--at", required=True,
                           help="RFC 3339 date-time with an offset, in the future: 2026-01-31T09:00:00Z")
        p.add_argument("--all", action="store_true", help="with no ids and no filters: every message")
        p.add_argument("--dry-run", action="store_true", help="only count what the filters match")
        p.add_argument("--limit", type=int, default=None,
                       help="act on at most this many matching messages (default: all of them)")
        p.set_defaults(func=cmd_action, action=action)


_HELP = {
    "schedule": "(re)schedule the pending recipients of messages (by id or filters) for --at",
    "send-now": "make the pending recipients (scheduled, queued, deferred) due now",
    "cancel": "cancel pending recipients (not those being delivered) by id or filters",
}
