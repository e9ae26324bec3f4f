"""Exceptions the store raises instead of the backend's own, and the guard that translates them.

Callers above the store catch ``StorageError`` (or a subclass) and never a driver exception:
``Conflict`` is a uniqueness or integrity violation (an entry already there), every other database error is
a plain ``StorageError``. ``ValueError`` raised by the store's own validation passes through unchanged.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Callable, TypeVar

import psycopg

from store.sqlite import StorageError

__all__ = ["Conflict", "StorageError", "guarded"]

T = TypeVar("T")


class Conflict(StorageError):
    """The change collides with what is stored (a duplicate key, a broken reference)."""


def guarded(fn: Callable[[sqlite3.Connection], T]) -> Callable[[sqlite3.Connection], T]:
    """Wrap a function run by ``db.read``/``db.write`` so that sqlite3 errors leave it as store errors."""

    @functools.wraps(fn)
    def run(conn: sqlite3.Connection) -> T:
        try:
            return fn(conn)
        except (sqlite3.IntegrityError, psycopg.IntegrityError) as exc:
            raise Conflict(str(exc)) from None
        except (sqlite3.Error, psycopg.Error) as exc:
            raise StorageError(f"{type(exc).__name__}: {exc}") from None

    return run
