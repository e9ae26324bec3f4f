"""Shared pytest set-up: the three test tiers, and the fixtures more than one test module uses.

Tiers (registered in pyproject.toml; every test module says its own in one line near its imports):

    pytestmark = pytest.mark.unit          # pure: no sockets, no processes, no database, no waiting
    pytestmark = pytest.mark.component     # in-process on a real SQLite file; fakes through the interfaces
    pytestmark = pytest.mark.integration   # real peers (Dovecot, dnsmasq, smtp-sink, ...) or real processes

A module takes the tier of its most demanding test. A test without a tier, or with two, fails the collection
(before ``-m`` deselects anything, so ``pytest -m unit`` catches a forgotten marker too).

Fixtures here (a module may define its own of the same name; pytest then uses the module's):

- ``clock``: a settable clock, ``clock()`` -> ``clock.t`` (1_000_000.0 unless a test sets it);
- ``store``: a ``store.Store`` opened on a fresh file under ``tmp_path`` with the ``clock`` above, closed
  afterwards (restart tests open ``Store(store.path, clock=clock)`` again on the same file);
- ``open_store``: a reopenable ``Store`` factory, parametrized over ``STORE_BACKENDS`` (contract tests);
- ``sink``: an in-process aiosmtpd receiver offering STARTTLS (``tests/peers/sink.py``), stopped afterwards;
- ``dns_server``: dnsmasq on 127.0.0.1:<free port> serving the requesting module's ``ZONE`` dict, one per
  module (``tests/peers/dnsmasq.py``).
"""

from __future__ import annotations

import pytest

TIERS = ("unit", "component", "integration")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems: dict[str, str] = {}
    for item in items:
        tiers = sorted({m.name for m in item.iter_markers() if m.name in TIERS})
        if len(tiers) != 1:
            where = item.nodeid.split("::", 1)[0]
            problems.setdefault(where, f"{item.nodeid}: " + (
                f"several tiers ({', '.join(tiers)})" if tiers else "no tier marker"))
    if problems:
        raise pytest.UsageError(
            "every test needs exactly one tier: put `pytestmark = pytest.mark.<"
            + "|".join(TIERS) + ">` near the imports of its module (see tests/conftest.py)\n  "
            + "\n  ".join(problems[k] for k in sorted(problems)))


class Clock:
    """A clock the test moves by hand: pass it where the code takes ``clock=``; set or add to ``.t``."""

    def __init__(self, t: float = 1_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    from store import Store

    s = Store(str(tmp_path / "relay.db"), clock=clock).open()
    yield s
    s.close()


# Backends of the store: every test taking ``open_store`` runs once per entry (the store contract).
STORE_BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_server():
    """One private PostgreSQL for the session (tests/peers/postgres.py); a missing one fails, not skips."""
    from tests.peers.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(params=STORE_BACKENDS)
def open_store(request, tmp_path, clock):
    """``open_store()`` -> a ``store.Store`` on this test's database of the parametrized backend; calling it
    again (after ``close()``) reopens the same database, so restarts are part of the contract."""
    from store import Store

    opened = []
    databases: list[str] = []

    def _open():
        if request.param == "sqlite":
            s = Store(str(tmp_path / "contract.db"), clock=clock).open()
        elif request.param == "postgresql":
            if not databases:            # one fresh database per test, dropped afterwards
                databases.append(request.getfixturevalue("postgres_server").create_database())
            s = Store(databases[0], clock=clock, key_file=str(tmp_path / "contract.key")).open()
        else:  # pragma: no cover - a backend listed without a factory
            raise AssertionError(request.param)
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()
    for url in databases:
        request.getfixturevalue("postgres_server").drop_database(url)


@pytest.fixture
async def sink():
    from tests.peers.sink import Sink

    s = await Sink(tls=True).start()
    yield s
    await s.stop()


@pytest.fixture(scope="module")
def dns_server(request):
    from tests.peers.dnsmasq import DnsmasqServer

    zone = getattr(request.module, "ZONE", None)
    if zone is None:
        pytest.fail(f"{request.module.__name__}: the dns_server fixture serves the module's ZONE dict: "
                    "define ZONE, or a dns_server fixture of its own", pytrace=False)
    with DnsmasqServer(zone) as server:
        yield server
