"""Bulk actions over more messages than one batch: a job with progress, never a silent cap (API and CLI)."""

from __future__ import annotations

import asyncio

import pytest

import admin_api.routes_messages as routes_messages
from admin_api.bulk import BATCH
from relay.envelope import NewMessage
from tests.admin_support import running

pytestmark = pytest.mark.component

COUNT = 2 * BATCH + 137


async def _fill(app, n: int, domain: str) -> list[str]:
    ids: list[str] = []
    for start in range(0, n, 250):
        ids += await asyncio.gather(*(app.spool.enqueue(NewMessage(
            "app@org.test", [f"r{i}@{domain}"], f"Subject: {i}\r\n\r\nx\r\n".encode()))
            for i in range(start, min(start + 250, n))))
    return ids


async def test_bulk_hold_over_several_batches_runs_as_a_job_with_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(routes_messages, "WAIT", 0.0)       # answer 202 at once: the job path
    async with running(tmp_path) as (app, api):
        await _fill(app, COUNT, "many.test")
        await _fill(app, 3, "other.test")
        flt = {"filter": {"domain": "many.test"}}
        st, dry = await api.call("POST", "/api/v1/bulk/messages/hold", json={**flt, "dry_run": True})
        assert st == 200 and dry["matched"] == COUNT and len(dry["ids"]) == 1000 and not dry["ids_complete"]
        st, job = await api.call("POST", "/api/v1/bulk/messages/hold", json=flt)
        assert st == 202 and job["state"] == "running" and job["matched"] == COUNT
        for _ in range(200):
            st, job = await api.call("GET", job["status_url"])
            if job["state"] != "running":
                break
            assert 0 <= job["done"] <= COUNT
            await asyncio.sleep(0.05)
        assert (job["state"], job["done"], job["affected"], job["error_count"]) == ("done", COUNT, COUNT, 0)
        st, page = await api.call("GET", "/api/v1/messages?held=true&limit=1")
        assert st == 200
        stats = await app.store.stats.queue_stats()
        assert stats.held_messages == COUNT                  # every one, none of the other domain
        # an explicit limit is honoured (and said): the first 100 only
        st, res = await api.call("POST", "/api/v1/bulk/messages/release", json={**flt, "limit": 100})
        assert res["matched"] == 100
        for _ in range(200):
            if res["state"] != "running":
                break
            await asyncio.sleep(0.05)
            st, res = await api.call("GET", res["status_url"])
        assert res["affected"] == 100
        assert (await app.store.stats.queue_stats()).held_messages == COUNT - 100
        st, err = await api.call("GET", "/api/v1/jobs/nope")
        assert st == 404 and err["error"]["code"] == "not_found"
        st, err = await api.call("POST", "/api/v1/bulk/messages/hold", json={**flt, "limit": 0})
        assert st == 422


def test_offline_cli_bulk_is_not_capped_and_prints_progress(tmp_path, capsys):
    from relaybox.cli import main
    from store import Store

    path = str(tmp_path / "cli.db")

    async def fill() -> None:
        store = Store(path).open()
        try:
            from relay.spool.spool import Spool
            spool = Spool(store)
            for start in range(0, COUNT, 250):
                await asyncio.gather(*(spool.enqueue(NewMessage("app@org.test", [f"r{i}@many.test"],
                                                                b"Subject: x\r\n\r\nx\r\n"))
                                       for i in range(start, min(start + 250, COUNT))))
        finally:
            store.close()

    asyncio.run(fill())
    assert main(["queue", "hold", "--domain", "many.test", "--offline", "--db", path]) == 0
    out = capsys.readouterr()
    assert f"hold: {COUNT} matched, {COUNT} affected, 0 unchanged, 0 errors" in out.out
    assert f"{COUNT:,}/{COUNT:,} done" in out.err                  # the progress line
