"""In-flight operations: spawned, bounded, reaped so no exception vanishes, drained on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

__all__ = ["Tasks"]

log = structlog.get_logger(__name__)


class Tasks:
    """A bounded set of running operations keyed by name (the command id)."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._running: dict[str, asyncio.Task[None]] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._running)

    @property
    def free(self) -> int:
        """Slots free right now (a hint for batch sizes)."""
        return self._slots._value

    async def spawn(self, key: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task; waits for a free slot, which is the backpressure on the caller."""
        await self._slots.acquire()
        self._seq += 1
        name = f"{key}#{self._seq}"  # one id may arrive twice; each delivery is its own task
        task = asyncio.create_task(coro, name=name)
        self._running[name] = task
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task.get_name(), None)
        self._slots.release()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task.failed", task=task.get_name(), exc_info=exc)

    async def drain(self, grace_s: float) -> None:
        """Let running operations finish for `grace_s`, then cancel what is left."""
        if not self._running:
            return
        log.info("tasks.draining", running=len(self._running), grace_s=grace_s)
        _, pending = await asyncio.wait(list(self._running.values()), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("tasks.cancelled", count=len(pending))
            await asyncio.wait(pending)
