"""Helpers shared by the CLI commands that work on the store directly (offline, or beside a running
relaybox: SQLite WAL allows it). Not a command module: it has no ``register``.

A command opens one ``Store`` for its run and calls its typed async interface::

    with store_session(args) as store:
        entries = asyncio.run(store.access.list_allowlist())

or, for a single call, ``run(args, lambda store: store.access.list_allowlist())``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator, TypeVar

if TYPE_CHECKING:
    from store import Store

T = TypeVar("T")


def db_path(args: Any) -> str:
    """``--db`` (a SQLite file or a PostgreSQL URL), else the store of the config file."""
    from relaybox.settings import load

    return str(getattr(args, "db", None) or load(args.config).relay.storage.location())


def open_store(args: Any) -> "Store":
    from relaybox.settings import load
    from store import Store

    if getattr(args, "db", None):
        return Store(args.db).open()
    storage = load(args.config).relay.storage
    return Store(storage.location(), key_file=storage.key_file()).open()


@contextlib.contextmanager
def store_session(args: Any) -> Iterator["Store"]:
    """The store for one CLI command, closed (WAL checkpointed) however the command ends."""
    store = open_store(args)
    try:
        yield store
    finally:
        store.close()


def run(args: Any, call: Callable[["Store"], Awaitable[T]]) -> T:
    """One store call in a store session: ``run(args, lambda s: s.access.list_users())``."""
    with store_session(args) as store:
        return asyncio.run(_awaited(call(store)))


def attempt(args: Any, call: Callable[["Store"], Awaitable[T]],
            errors: tuple[type[Exception], ...] = (ValueError,)) -> tuple[T | None, int]:
    """``run`` for a change. A known error is printed as ``error: ...``: (None, 2); else (result, 0)."""
    from store import StorageError

    caught: tuple[type[Exception], ...] = (*errors, StorageError)
    try:
        return run(args, call), 0
    except caught as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None, 2


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


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
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(cell(r, c).ljust(w) for c, w in zip(cols, widths, strict=True)))


def out(args, rows: list[dict], cols: list[str]) -> None:
    """A human table, or JSON with ``--json``."""
    if getattr(args, "json", False):
        print(json.dumps(rows, default=str))
    else:
        table(rows, cols)
