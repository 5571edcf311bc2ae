"""The policies bucket, read whole into the `PolicyBook`: at start, whenever an entry is written (a core NATS
subscription to the bucket's subjects is the signal), and every `refresh_s` in case a signal was missed.

Every read is complete (`volumectl.kv.read_history`: every revision the bucket keeps) or fails and is tried
again: a short read could look like a removed policy. Every host's copies (`copies.py`) are read too at the
first read, and again whenever the bucket's entry for a name is one the book does not apply and that entry
changed since the copies were last read (in steady state, not at all). What the book makes of it decides; a
change pokes the scheduler. After each read the agent keeps its own copies up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import nats.errors
import nats.js.errors
import structlog
from nats.aio.subscription import Subscription

from volumectl.kv import IncompleteRead, Revision, read_history

from ..bus import Bus
from ..tasks import cancel_and_wait
from .book import PolicyBook
from .copies import PolicyCopies

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
        self.copies = PolicyCopies(bus)
        self._doubts: set[tuple[str, int]] | None = None
        """(name, the bucket's last revision of it) of each entry not applied when the copies were last read;
        None: not read yet."""

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

    def poke(self) -> None:
        """Read the bucket again soon (the local policy file was reread: who is trusted may have changed)."""
        self._signal.set()

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
            revisions = await read_history(self.bus.js, bucket)
        except nats.js.errors.BucketNotFoundError:
            revisions = []
        except (IncompleteRead, nats.errors.Error, TimeoutError) as exc:
            log.warning("policy.read_failed", bucket=bucket, error=str(exc) or type(exc).__name__)
            return False
        values, older, last = _current(revisions)
        if self._doubts is None:
            changed = await self._with_copies(values, older, last)
        else:
            changed = self.book.reconcile(values, older)
            if not self._doubted(last) <= self._doubts:
                changed = await self._with_copies(values, older, last) or changed
        self.reads += 1
        if changed:
            self.on_change()
        await self.copies.keep(self.book.entries())
        return True

    async def _with_copies(self, values: dict[str, bytes], older: list[tuple[str, bytes]],
                           last: dict[str, int]) -> bool:
        """Reconcile with every host's copies as well (without them if they cannot be read now)."""
        copies = await self.copies.read()
        changed = self.book.reconcile(values, older + (copies or []))
        if copies is not None:
            self._doubts = self._doubted(last)
        return changed

    def _doubted(self, last: dict[str, int]) -> set[tuple[str, int]]:
        return {(name, last.get(name, 0)) for name in self.book.rejected}

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


def _current(revisions: list[Revision]) -> tuple[dict[str, bytes], list[tuple[str, bytes]], dict[str, int]]:
    """From a read of the history: each live key's current value, every value it keeps (name, entry), and each
    key's last revision (its marker's, for a deleted or purged key)."""
    values: dict[str, bytes] = {}
    last: dict[str, int] = {}
    for rev in revisions:
        last[rev.key] = rev.seq
        if rev.value is None:
            values.pop(rev.key, None)
        else:
            values[rev.key] = rev.value
    return values, [(r.key, r.value) for r in revisions if r.value is not None], last
