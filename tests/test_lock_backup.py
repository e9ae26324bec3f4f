"""One process per database (the lock), and backup/restore of the real SQLite spool, also while relaybox runs
and accepts mail."""

from __future__ import annotations

import glob
import os
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from relay.envelope import NewMessage
from relay.spool.spool import Spool
from relaybox.cli import main as cli
from store import Store, lock
from tests.peers.ports import free_port
from tests.peers.relaybox_proc import REPO, RelayboxProcess, write_config

pytestmark = pytest.mark.integration

ENV = dict(os.environ, PYTHONPATH=REPO)


def _try_lock(db: str) -> subprocess.CompletedProcess:
    code = ("import sys; from store.lock import acquire, LockError\n"
            "try: acquire(sys.argv[1])\n"
            "except LockError as e: print(e); sys.exit(3)\n"
            "print('locked')")
    return subprocess.run([sys.executable, "-c", code, db], env=ENV, capture_output=True, text=True,
                          timeout=30)


def test_second_process_is_refused_naming_the_holder(tmp_path):
    db = str(tmp_path / "relaybox.db")
    held = lock.acquire(db)
    try:
        res = _try_lock(db)
        assert res.returncode == 3
        assert f"process {os.getpid()}" in res.stdout and db in res.stdout
        assert lock.holder(db) == os.getpid()
        with pytest.raises(lock.LockError):       # a second acquire in the same process too
            lock.acquire(db)
    finally:
        held.release()
    assert lock.holder(db) is None
    assert _try_lock(db).stdout.strip() == "locked"


def test_a_killed_holder_does_not_leave_a_stale_lock(tmp_path):
    db = str(tmp_path / "relaybox.db")
    code = ("import sys, time; from store.lock import acquire; held = acquire(sys.argv[1]); "
            "print('ok', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, db], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ok"
        assert lock.holder(db) == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert os.path.exists(db + ".lock")            # the file stays, the kernel dropped the lock
    with lock.acquire(db) as again:
        assert again.held


def test_second_relaybox_on_the_same_database_is_refused(tmp_path):
    rb = RelayboxProcess(str(tmp_path / "one"), {"admin": {"listen": f"127.0.0.1:{free_port()}"}})
    rb.start()
    try:
        other = tmp_path / "two.toml"
        write_config(str(other), {"smtp": {"listen": [f"127.0.0.1:{free_port()}"]},
                                  "storage": {"path": rb.db_path, "min_free": 0.0},
                                  "admin": {"listen": f"127.0.0.1:{free_port()}"}})
        res = subprocess.run([sys.executable, "-m", "relaybox.cli", "run", "--config", str(other)],
                             env=ENV, cwd=str(tmp_path), capture_output=True, text=True, timeout=30)
        assert res.returncode == 1
        assert f"already in use by process {rb.proc.pid}" in res.stderr
        # the first one is unharmed
        with smtplib.SMTP("127.0.0.1", rb.smtp_port, timeout=10) as s:
            assert s.noop()[0] == 250
    finally:
        assert rb.stop() == 0
    assert lock.holder(rb.db_path) is None


# ---- backup / restore -----------------------------------------------------------------------------------
def _msg(i: int) -> NewMessage:
    return NewMessage(sender="app@example.test", recipients=[f"r{i}@example.test", f"s{i}@example.test"],
                      body=f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode())


async def _spool_with(path: str, n: int) -> list[str]:
    store = Store(path).open()
    try:
        spool = Spool(store)
        return [await spool.enqueue(_msg(i)) for i in range(n)]
    finally:
        store.close()


def _snapshot(path: str) -> dict:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        msgs = [r[0] for r in conn.execute("SELECT id FROM messages ORDER BY id")]
        rcpts = conn.execute("SELECT count(*) FROM recipients").fetchone()[0]
        orphans = conn.execute("SELECT count(*) FROM recipients r LEFT JOIN messages m "
                               "ON m.id = r.message_id WHERE m.id IS NULL").fetchone()[0]
        bodiless = conn.execute("SELECT count(*) FROM messages m LEFT JOIN bodies b ON b.message_id = m.id "
                                "WHERE b.message_id IS NULL").fetchone()[0]
        return {"messages": msgs, "recipients": rcpts, "orphans": orphans, "bodiless": bodiless,
                "version": conn.execute("PRAGMA user_version").fetchone()[0]}
    finally:
        conn.close()


async def test_backup_and_restore_roundtrip(tmp_path, capsys):
    db = str(tmp_path / "relaybox.db")
    first = await _spool_with(db, 5)
    backup_file = str(tmp_path / "b.db")
    assert cli(["backup", backup_file, "--db", db]) == 0
    assert "backup written to" in capsys.readouterr().out
    assert cli(["backup", backup_file, "--db", db]) == 1          # never overwrites a backup
    assert "refusing to overwrite" in capsys.readouterr().err
    later = await _spool_with(db, 3)                              # mail accepted after the backup
    assert len(_snapshot(db)["messages"]) == 8
    assert cli(["restore", backup_file, "--db", db]) == 0
    out = capsys.readouterr().out
    snap = _snapshot(db)
    assert sorted(snap["messages"]) == sorted(first) and snap["recipients"] == 10
    assert snap["orphans"] == snap["bodiless"] == 0
    saved = glob.glob(db + ".pre-restore-*")
    assert len(saved) == 1 and saved[0] in out
    assert sorted(_snapshot(saved[0])["messages"]) == sorted(first + later)
    # the restored database opens normally (migrations, spool)
    d = Store(db).open()
    try:
        assert (await Spool(d).body(first[0])).startswith(b"Subject: m")
    finally:
        d.close()


async def test_backup_into_a_directory_names_the_file(tmp_path, capsys):
    db = str(tmp_path / "relaybox.db")
    await _spool_with(db, 1)
    out_dir = tmp_path / "backups"
    assert cli(["backup", str(out_dir) + "/", "--db", db]) == 0          # trailing slash: made if missing
    (made,) = glob.glob(str(out_dir / "relaybox-*.db"))
    assert len(_snapshot(made)["messages"]) == 1
    assert not os.path.exists(made + "-wal")                     # self-contained file


@pytest.mark.parametrize("damage", ["garbage", "truncated", "newer", "not-relaybox"])
async def test_restore_refuses_a_bad_backup_and_touches_nothing(tmp_path, capsys, damage):
    db = str(tmp_path / "relaybox.db")
    await _spool_with(db, 2)
    bad = str(tmp_path / "bad.db")
    assert cli(["backup", bad, "--db", db]) == 0
    if damage == "garbage":
        with open(bad, "wb") as fh:
            fh.write(b"this is not sqlite" * 100)
    elif damage == "truncated":
        size = os.path.getsize(bad)
        with open(bad, "r+b") as fh:
            fh.seek(size // 2)
            fh.write(b"\xff" * (size // 4))
    elif damage == "newer":
        conn = sqlite3.connect(bad)
        conn.execute("PRAGMA user_version=999")
        conn.commit()
        conn.close()
    else:
        os.unlink(bad)
        sqlite3.connect(bad).execute("CREATE TABLE t(x)").connection.close()
    capsys.readouterr()
    before = _snapshot(db)
    assert cli(["restore", bad, "--db", db]) == 1
    err = capsys.readouterr().err
    assert "restore refused" in err
    if damage == "newer":
        assert "newer than this relaybox" in err
    assert _snapshot(db) == before
    assert not glob.glob(db + ".pre-restore-*")


def _send_loop(port: int, stop: threading.Event, sent: list) -> None:
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
                for _ in range(10):
                    s.sendmail("app@example.test", ["x@example.test"], b"Subject: load\r\n\r\nhello\r\n")
                    sent.append(1)
        except (OSError, smtplib.SMTPException) as exc:
            sent.append(exc)
            return


def test_backup_while_relaybox_runs_and_accepts_mail(tmp_path):
    # deliveries go to a closed local port: refused at once, deferred, nothing leaves the machine
    closed = {"name": "closed", "host": "127.0.0.1", "port": free_port(), "tls": "none", "default": True}
    rb = RelayboxProcess(str(tmp_path / "live"), {"[[routes]]": [closed],
                                                  "admin": {"listen": f"127.0.0.1:{free_port()}"}})
    rb.start()
    stop = threading.Event()
    sent: list = []
    sender = threading.Thread(target=_send_loop, args=(rb.smtp_port, stop, sent))
    sender.start()
    backups = []
    try:
        deadline = time.monotonic() + 10
        while len(sent) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        for n in range(3):
            path = str(tmp_path / f"live-{n}.db")
            res = subprocess.run([sys.executable, "-m", "relaybox.cli", "backup", path, "--db", rb.db_path],
                                 env=ENV, capture_output=True, text=True, timeout=60)
            assert res.returncode == 0, res.stderr
            backups.append(path)
            time.sleep(0.2)
        res = subprocess.run([sys.executable, "-m", "relaybox.cli", "restore", backups[0], "--db",
                              rb.db_path], env=ENV, capture_output=True, text=True, timeout=60)
        assert res.returncode == 1 and f"pid {rb.proc.pid}" in res.stderr and "stop it" in res.stderr
    finally:
        stop.set()
        sender.join(30)
        assert rb.stop() == 0
    errors = [x for x in sent if x != 1]
    assert not errors, errors
    counts = []
    for path in backups:
        snap = _snapshot(path)
        assert snap["orphans"] == 0 and snap["bodiless"] == 0
        counts.append(len(snap["messages"]))
    assert 0 < counts[0] <= counts[1] <= counts[2] <= len(sent)
    conn = sqlite3.connect(rb.db_path)
    accepted = conn.execute("SELECT count(*) FROM messages WHERE sender = 'app@example.test'").fetchone()[0]
    conn.close()
    assert accepted == len(sent)          # every 250 is in the database
    # restore now that it is stopped: the database is exactly the last backup
    res = subprocess.run([sys.executable, "-m", "relaybox.cli", "restore", backups[-1], "--db", rb.db_path],
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert _snapshot(rb.db_path)["messages"] == _snapshot(backups[-1])["messages"]


# ---- upgrade path: migrations forward at start, never backward ---------------------------------------------
def _old_schema_db(path: str, monkeypatch) -> int:
    """A database as an older relaybox wrote it: one that knew only the first migration."""
    from store import sqlite as dbmod

    every = dbmod.migrations()
    with monkeypatch.context() as m:
        m.setattr(dbmod, "migrations", lambda: every[:1])
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            version = dbmod.migrate(conn)
        finally:
            conn.close()
    return version


async def test_an_old_backup_restores_and_migrates_at_start(tmp_path, capsys, monkeypatch):
    from store.sqlite import migrations

    old = str(tmp_path / "old.db")
    first = _old_schema_db(old, monkeypatch)
    assert first < migrations()[-1][0]
    latest = migrations()[-1][0]
    db = str(tmp_path / "relaybox.db")
    assert cli(["restore", old, "--db", db]) == 0
    assert f"schema version {first}" in capsys.readouterr().out
    d = Store(db).open()                           # what `relaybox run` does first after the lock
    try:
        qid = await Spool(d).enqueue(_msg(1))
    finally:
        d.close()
    snap = _snapshot(db)
    assert snap["version"] == latest and snap["messages"] == [qid]
    conn = sqlite3.connect(db)
    applied = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    conn.close()
    assert applied == [v for v, _, _ in migrations()]


def test_relaybox_refuses_to_run_on_a_newer_database(tmp_path):
    rb = RelayboxProcess(str(tmp_path), {"admin": {"listen": f"127.0.0.1:{free_port()}"}})
    Store(rb.db_path).open().close()
    conn = sqlite3.connect(rb.db_path)
    conn.execute("PRAGMA user_version=999")
    conn.commit()
    conn.close()
    res = subprocess.run([sys.executable, "-m", "relaybox.cli", "run", "--config", rb.config_path], env=ENV,
                         cwd=str(tmp_path), capture_output=True, text=True, timeout=30)
    assert res.returncode == 1
    assert "newer than this relaybox" in res.stderr and "refusing to downgrade" in res.stderr
    assert "Traceback" not in res.stderr
    assert lock.holder(rb.db_path) is None


async def test_vacuum_gives_an_old_database_its_space_back_and_switches_it_to_incremental(tmp_path, capsys):
    db = str(tmp_path / "relaybox.db")
    Store(db).open().close()
    old = sqlite3.connect(db, isolation_level=None)          # as an older relaybox made it: no auto-vacuum
    old.execute("PRAGMA auto_vacuum=NONE")
    old.execute("VACUUM")
    old.close()
    store = Store(db).open()
    try:
        spool = Spool(store)
        big = [await spool.enqueue(NewMessage(sender="app@example.test", recipients=[f"r{i}@example.test"],
                                              body=b"Subject: big\r\n\r\n" + b"x" * 20_000 + b"\r\n"))
               for i in range(150)]
        for qid in big[:140]:
            assert await spool.delete(qid)
        assert await store.compact(10_000) == 0                 # auto_vacuum=NONE: nothing can be given back
    finally:
        store.close()
    bloated = os.path.getsize(db)
    with lock.acquire(db):                                    # a running relaybox: refused, nothing touched
        assert cli(["vacuum", "--db", db]) == 1
        assert "stop it before vacuuming" in capsys.readouterr().err
    assert os.path.getsize(db) == bloated
    assert cli(["vacuum", "--db", db]) == 0
    assert "gives freed space back by itself" in capsys.readouterr().out
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2
    finally:
        conn.close()
    snap = _snapshot(db)
    assert sorted(snap["messages"]) == sorted(big[140:]) and snap["orphans"] == snap["bodiless"] == 0
    assert os.path.getsize(db) < bloated / 4
