"""The policies bucket, read whole into the `PolicyBook`: at start, whenever an entry is written (a core NATS
subscription to the bucket's subjects is the signal), and every `refresh_s` in case a signal was missed.

Every read is complete (`volumectl.kv.read_bucket`) or fails and is tried again: a short read could look like a
removed policy. What the book makes of it decides; a change pokes the scheduler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.subscription import Subscription

from volumectl.kv import IncompleteRead, read_bucket

from ..bus import Bus
from ..tasks import cancel_and_wait
from .book import PolicyBook

__all__ = ["PolicyFeed"]

log = structlog.get_logger(__name__)

DEFAULT_REFRESH_S = 60.0
RETRY_S = 5.0
# Writes that come together (a fleet-wide change of several policies) make one read.
DEBOUNCE_S = 0.2


class PolicyFeed:
    def __init__(self, bus: Bus, book: PolicyBook, on_change: Callable[[], None], *,
                 refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.bus = bus
        self.book = book
        self.on_change = on_change
        self.refresh_s = refresh_s
        self.reads = 0
        """Complete reads so far (tests wait for one after a write)."""
        self._signal = asyncio.Event()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Subscribe, then read once before returning, so the first look at the schedule sees the policies."""
        if self._task is not None:
            return
        self.book.load_saved()

        async def signal(_msg: object) -> None:
            self._signal.set()

        self._sub = await self.bus.nc.subscribe(self.bus.subjects.policy_subject(">"), cb=signal)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.read(), self.refresh_s)
        self._task = asyncio.create_task(self._loop(), name="policy-feed")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def read(self) -> bool:
        """Read the bucket whole into the book; False if it could not be read (the book is left as it was)."""
        bucket = self.bus.subjects.policies_bucket
        try:
            values = await read_bucket(self.bus.js, bucket)
        except nats.js.errors.BucketNotFoundError:
            values = {}
        except (IncompleteRead, nats.errors.Error, TimeoutError) as exc:
            log.warning("policy.read_failed", bucket=bucket, error=str(exc) or type(exc).__name__)
            return False
        self.reads += 1
        if self.book.reconcile(values):
            self.on_change()
        return True

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), self.refresh_s)
            await asyncio.sleep(DEBOUNCE_S)
            self._signal.clear()
            try:
                ok = await self.read()
            except Exception:  # a bug: said, and the feed goes on
                log.exception("policy.feed_crashed")
                ok = False
            if not ok:
                await asyncio.sleep(RETRY_S)
                self._signal.set()
