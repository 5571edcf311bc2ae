"""Docker's event stream, followed for the agent's life.

aiodocker's stream just ends when the daemon restarts. The watch notices, waits for Docker with backoff,
resyncs (the inventory is rebuilt in full), and subscribes again `since` the last event it handled, so
nothing that happened meanwhile is missed. The cursor is kept in a file: a restarted agent resumes where
it stopped, as far back as Docker still buffers events (its last 1,000 or so, lost when dockerd restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from ..backoff import Backoff, until_ok
from ..errors import AgentError
from ..private_files import open_private
from ..tasks import cancel_and_wait
from ..typing import Engine, EventHandler

__all__ = ["Cursor", "DockerWatch"]

log = structlog.get_logger(__name__)

FILTERS = {"type": ["container", "volume"]}
BACKOFF_MAX_S = 5.0
# A stream that lasted this long was healthy: the next failure starts the backoff afresh.
STREAM_HEALTHY_S = 10.0
SAVE_EVERY_S = 1.0


def _since(ns: int) -> str:
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


class Cursor:
    """Where to resume: the last event handled. Work still running on an event (`hold`) keeps the saved
    cursor before it, so an agent killed mid-backup replays that event when it starts again."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.last: int | None = None
        self._seen: set[tuple[int, str, str]] = set()
        self._held: dict[int, int] = {}
        self._saved_at = 0.0
        if path is not None:
            with contextlib.suppress(OSError, ValueError):
                self.last = int(path.read_text().strip())

    def since(self) -> str:
        """For a subscription: from the last event (Docker's `since` is inclusive; `is_new` drops repeats)."""
        return _since(self.last if self.last is not None else time.time_ns())

    def is_new(self, evt: dict[str, Any]) -> bool:
        """False for an event handled before (a subscription repeats those at its `since`)."""
        ns = int(evt.get("timeNano") or 0)
        key = (ns, str(evt.get("id") or evt.get("Actor", {}).get("ID")), str(evt.get("Action")))
        if self.last is not None and ns < self.last:
            return False
        if ns == self.last:
            if key in self._seen:
                return False
        else:
            self._seen.clear()
            self.last = ns
        self._seen.add(key)
        return True

    def hold(self, ns: int) -> None:
        self._held[ns] = self._held.get(ns, 0) + 1
        self.save(force=True)

    def release(self, ns: int) -> None:
        left = self._held.get(ns, 0) - 1
        if left > 0:
            self._held[ns] = left
        else:
            self._held.pop(ns, None)
        self.save(force=True)

    def save(self, *, force: bool = False) -> None:
        """Write the resume point (at most once a second unless forced); losing it only means replaying."""
        if self.path is None or self.last is None:
            return
        now = time.monotonic()
        if not force and now - self._saved_at < SAVE_EVERY_S:
            return
        self._saved_at = now
        at = min([self.last, *self._held])
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with open_private(tmp) as f:
                f.write(str(at).encode())
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("events.cursor_not_saved", error=str(exc))


class DockerWatch:
    """Follows Docker's events and hands each new one to the handlers; a failing handler never stops it."""

    def __init__(self, engine: Engine, cursor: Cursor, handlers: Sequence[EventHandler]) -> None:
        self.engine = engine
        self.cursor = cursor
        self.handlers = handlers
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Resync once, then follow the stream in the background."""
        if self._task is not None:
            return
        if self.cursor.last is None:
            self.cursor.last = time.time_ns()
        await self._resync()
        self._task = asyncio.create_task(self._run(), name="docker-events")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self.cursor.save(force=True)

    async def _resync(self) -> None:
        for h in self.handlers:
            try:
                await h.on_resync()
            except Exception:  # one handler's failure must not keep the others from resyncing
                log.exception("events.resync_failed", handler=type(h).__name__)

    async def _run(self) -> None:
        backoff = Backoff(maximum=BACKOFF_MAX_S)
        first = True
        while True:
            if not first:
                await self._wait_for_docker()
                await self._resync()
            first = False
            started = time.monotonic()
            try:
                log.info("events.subscribed", since=self.cursor.since())
                async for evt in self.engine.events(self.cursor.since(), FILTERS):
                    if not self.cursor.is_new(evt):
                        continue
                    await self._handle(evt)
                    self.cursor.save()
                log.warning("events.ended", reason="Docker closed the event stream (daemon restart?)")
            except AgentError as exc:
                log.warning("events.failed", error=exc.message)
            except Exception:  # the watch must outlive anything: log it and subscribe again
                log.exception("events.crashed")
            if time.monotonic() - started > STREAM_HEALTHY_S:
                backoff.reset()
            await backoff.sleep()

    async def _wait_for_docker(self) -> None:
        await until_ok(self.engine.ping, "events.waiting_for_docker", Backoff(maximum=BACKOFF_MAX_S))

    async def _handle(self, evt: dict[str, Any]) -> None:
        for h in self.handlers:
            try:
                await h.on_docker_event(evt)
            except Exception:  # logged; the next event is handled all the same
                log.exception("events.handler_failed", handler=type(h).__name__, action=evt.get("Action"))
