"""Helpers shared by the CLI commands that work on the database directly (offline, or beside a running
relaybox: SQLite WAL allows it). Not a command module: it has no ``register``."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, Callable


def open_db(args):
    from relaybox.settings import load
    from store.sqlite import Database

    path = getattr(args, "db", None) or load(args.config).relay.storage.path
    return Database(path).open()


@contextlib.contextmanager
def db_session(args):
    """The database for one CLI command, closed (WAL checkpointed) however the command ends."""
    db = open_db(args)
    try:
        yield db
    finally:
        db.close()


def read(args, fn: Callable[[Any], Any]) -> Any:
    with db_session(args) as db:
        return db.read_sync(fn)


def write(args, fn: Callable[[Any], Any], errors: tuple[type[Exception], ...] = (ValueError,)) -> tuple[Any, int]:
    """Run ``fn`` in a write transaction. A known error is printed as ``error: ...``: (None, 2)."""
    with db_session(args) as db:
        try:
            return db.write_sync(fn), 0
        except errors as exc:
            print(f"error: {exc}", file=sys.stderr)
            return None, 2


def removed(ok: bool, done: str, missing: str) -> int:
    """The common end of a remove command: exit 0 with ``done``, or 1 with ``error: missing``."""
    if ok:
        print(done)
        return 0
    print(f"error: {missing}", file=sys.stderr)
    return 1


def table(rows: list[dict], cols: list[str]) -> None:
    def cell(r, c):
        v = r.get(c)
        return "" if v is None else str(v)

    widths = [max([len(c)] + [len(cell(r, c)) for r in rows]) for c in cols]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(cell(r, c).ljust(w) for c, w in zip(cols, widths)))


def out(args, rows: list[dict], cols: list[str]) -> None:
    """A human table, or JSON with ``--json``."""
    if getattr(args, "json", False):
        print(json.dumps(rows, default=str))
    else:
        table(rows, cols)
