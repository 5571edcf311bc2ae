"""Bytes done (and, when a tool says so, the total, percent and time left), published as `<op>.progress` events
while a backup or restore runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from ..errors import AgentError
from ..typing import EventSink

__all__ = ["Progress"]

PROGRESS_EVERY_S = 1.0


class Progress:
    """Bytes done, published as `<op>.progress` events every second while the work runs."""

    def __init__(self, events: EventSink, kind: str, volume: str, backup_id: str | None,
                 total: int | None = None) -> None:
        """`total`: the bytes expected in all, if known (said in each event: callers show percent and ETA)."""
        self.events, self.kind, self.volume, self.backup_id = events, kind, volume, backup_id
        self.done = 0
        self.total: int | None = total
        self.percent: float | None = None
        self.eta_s: float | None = None

    def add(self, n: int) -> None:
        self.done += n

    def update(self, done: int, total: int | None, percent: float | None, eta_s: float | None) -> None:
        """What a tool reports of its own progress (restic's status lines)."""
        self.done, self.total, self.percent, self.eta_s = done, total, percent, eta_s

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Progress]:
        async def tick() -> None:
            while True:
                await asyncio.sleep(PROGRESS_EVERY_S)
                with contextlib.suppress(AgentError):
                    await self.events.event(
                        f"{self.kind}.progress", self.volume, backup_id=self.backup_id, bytes_done=self.done,
                        bytes_total=self.total, percent=self.percent, eta_s=self.eta_s,
                    )

        ticker = asyncio.create_task(tick())
        try:
            yield self
        finally:
            ticker.cancel()
