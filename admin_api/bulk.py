"""Bulk actions over any number of messages, as jobs: batched, with progress, never silently capped.

``POST /api/v1/bulk/messages/{action}`` starts a job over every message the filter matches (or the first
``limit`` of them when the caller asks for a limit). The job walks the matches in id order, ``BATCH`` at a
time, applying the action to each message through the same code as the single-message action. If it ends
within ``WAIT`` seconds the answer is its result (200); otherwise 202 with the job, whose progress
``GET /api/v1/jobs/{id}`` shows. Jobs live in memory (the last ``KEEP`` are kept); a restart ends them,
and running the same bulk action again finishes the work (actions are idempotent per message).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from store.history import MessageFilter

BATCH = 500
WAIT = 2.0
KEEP = 50

Act = Callable[[str], Awaitable[str]]    # one message -> "affected" | "unchanged" | "error:<code>:<text>"


@dataclass
class BulkJob:
    id: str
    action: str
    matched: int                  # messages the filter matched when the job started (or the limit)
    started_at: float
    state: str = "running"        # running | done | failed
    done: int = 0
    affected: int = 0
    unchanged: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    error_count: int = 0
    ended_at: float | None = None
    task: asyncio.Task[None] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"job": self.id, "action": self.action, "state": self.state, "matched": self.matched,
                "done": self.done, "affected": self.affected, "unchanged": self.unchanged,
                "errors": self.errors, "error_count": self.error_count, "started_at": self.started_at,
                "ended_at": self.ended_at, "status_url": f"/api/v1/jobs/{self.id}"}


class BulkJobs:
    def __init__(self) -> None:
        self._jobs: OrderedDict[str, BulkJob] = OrderedDict()
        self._ids = itertools.count(1)

    def get(self, job_id: str) -> BulkJob | None:
        return self._jobs.get(job_id)

    async def start(self, history: Any, action: str, f: MessageFilter, limit: int | None,
                    act: Act) -> tuple[BulkJob, asyncio.Task[None]]:
        matched = await history.count_matching(f)
        job = BulkJob(f"{int(time.time())}-{next(self._ids)}", action,
                      min(matched, limit) if limit else matched, time.time())
        self._jobs[job.id] = job
        while len(self._jobs) > KEEP:
            self._jobs.popitem(last=False)
        task = job.task = asyncio.get_running_loop().create_task(self._run(job, history, f, act),
                                                                 name=f"bulk:{job.id}")
        return job, task

    async def _run(self, job: BulkJob, history: Any, f: MessageFilter, act: Act) -> None:
        after: str | None = None
        try:
            while job.done < job.matched:
                ids = await history.matching_ids(f, min(BATCH, job.matched - job.done), after)
                if not ids:
                    break
                for qid in ids:
                    self._count(job, qid, await act(qid))
                after = ids[-1]
            job.state = "done"
        except Exception as exc:  # noqa: BLE001 - a job that dies says why instead of vanishing
            job.state = "failed"
            job.errors.append({"id": after or "", "code": "internal", "message": str(exc)[:300]})
        finally:
            job.ended_at = time.time()

    @staticmethod
    def _count(job: BulkJob, qid: str, result: str) -> None:
        job.done += 1
        if result == "affected":
            job.affected += 1
        elif result == "unchanged":
            job.unchanged += 1
        else:
            job.error_count += 1
            if len(job.errors) < 100:
                _, code, message = result.split(":", 2)
                job.errors.append({"id": qid, "code": code, "message": message})

    async def stop(self) -> None:
        tasks = [j.task for j in self._jobs.values() if j.task is not None and not j.task.done()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
