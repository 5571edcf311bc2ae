"""In-flight operations, in one registry keyed by id: a command's id, or `on-stop:<volume>` for a backup on stop.

Every delivery runs as a task of its own (the same command may arrive twice at once, by both paths); the
first delivery of an id `claim`s it, and a duplicate waits for that claim's outcome instead of applying the
command again. Tasks are bounded (`spawn` waits for a free slot: the backpressure on the bus), reaped so no
exception vanishes, cancellable by id, and drained on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Generic, TypeVar

import structlog

__all__ = [
    "Claim",
    "Tasks",
    "cancel_and_wait",
]

log = structlog.get_logger(__name__)

T = TypeVar("T")


class Claim(Generic[T]):
    """The first delivery of an id: `fingerprint` tells the same command from another under that id."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self.outcome: asyncio.Future[T] = asyncio.get_running_loop().create_future()


class Tasks:
    """Running operations by id, at most `limit` of them taking a slot."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self._slotted = 0
        self._running: dict[str, set[asyncio.Task[None]]] = {}
        self._claims: dict[str, Claim[Any]] = {}

    def __len__(self) -> int:
        return sum(len(tasks) for tasks in self._running.values())

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._running

    @property
    def free(self) -> int:
        """Slots free right now (a hint for batch sizes)."""
        return self.limit - self._slotted

    async def spawn(self, op_id: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task of `op_id`; waits for a free slot, which is the backpressure on the caller."""
        await self._slots.acquire()
        self._slotted += 1
        self._start(op_id, coro, slotted=True)

    def start(self, op_id: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` now, without a slot: for callers that must never wait (the Docker event loop). Its work
        takes a `slot()` where it needs one; it is reaped and drained like the others."""
        self._start(op_id, coro, slotted=False)

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one of the `limit` slots (for a task that was `start`ed without one)."""
        await self._slots.acquire()
        self._slotted += 1
        try:
            yield
        finally:
            self._slotted -= 1
            self._slots.release()

    def _start(self, op_id: str, coro: Coroutine[Any, Any, None], *, slotted: bool) -> None:
        task = asyncio.create_task(coro, name=op_id)
        self._running.setdefault(op_id, set()).add(task)
        task.add_done_callback(functools.partial(self._reap, op_id, slotted))

    def _reap(self, op_id: str, slotted: bool, task: asyncio.Task[None]) -> None:
        tasks = self._running.get(op_id, set())
        tasks.discard(task)
        if not tasks:
            self._running.pop(op_id, None)
        if slotted:
            self._slotted -= 1
            self._slots.release()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task.failed", task=op_id, exc_info=exc)

    def cancel(self, op_id: str) -> int:
        """Cancel every running delivery of `op_id`; how many there were."""
        tasks = self._running.get(op_id, set())
        for task in tasks:
            task.cancel()
        return len(tasks)

    def claimed(self, op_id: str) -> Claim[Any] | None:
        """The claim of the delivery applying `op_id` now, if one is."""
        return self._claims.get(op_id)

    def claim(self, op_id: str, fingerprint: str) -> Claim[Any]:
        """Make the caller the one delivery that applies `op_id`; `release` it when the outcome is out."""
        claim: Claim[Any] = Claim(fingerprint)
        self._claims[op_id] = claim
        return claim

    def release(self, op_id: str, claim: Claim[Any]) -> None:
        if not claim.outcome.done():
            claim.outcome.cancel()  # duplicates waiting for it see the cancellation, not a hang
        if self._claims.get(op_id) is claim:
            del self._claims[op_id]

    async def drain(self, grace_s: float) -> None:
        """Let running operations finish for `grace_s`, then cancel what is left."""
        running = [t for tasks in self._running.values() for t in tasks]
        if not running:
            return
        log.info("tasks.draining", running=len(running), grace_s=grace_s)
        _, pending = await asyncio.wait(running, timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("tasks.cancelled", count=len(pending))
            await asyncio.wait(pending)


CANCEL_AGAIN_S = 0.5
"""How long a loop has to end after it is cancelled before it is cancelled again."""


async def cancel_and_wait(task: asyncio.Task[None] | None) -> None:
    """Cancel a long-running loop of a component (idempotent stop) and wait until it has ended."""
    if task is None:
        return
    # Cancelled again until it ends: Python 3.11's `asyncio.wait_for` swallows a cancellation that comes as the
    # awaited thing completes (a loop poked while stopping), and the loop would then go on, and the stop hang.
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_AGAIN_S)
    with contextlib.suppress(asyncio.CancelledError):
        await task
