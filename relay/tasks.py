"""Small asyncio helpers shared by the long-running loops (policy refresh, webhook dispatcher, ...)."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Task | None) -> None:
    """Cancel a background loop and wait until it has finished (its own errors are not re-raised)."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
