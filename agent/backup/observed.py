"""What every backup tells besides its events, whatever its trigger (request, on-stop, schedule): the metrics
count and time it, and a failed one is notified.

`Backups.backup_locked` is wrapped by `observed`, so every path to a backup (a request, `remove` with
`backup_first`, `migrate`, a container's stop, a policy's schedule) is seen once, without the callers knowing.
A scheduled backup's failure is notified by the scheduler instead, once when its policy starts failing for the
volume (not at every slot: a per-minute schedule would send one a minute).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from contracts import BackupRecord, BackupRequest

from ..errors import AgentError
from ..typing import Metrics, Notifier

__all__ = ["BackupObserver", "observed"]

P = ParamSpec("P")


class BackupObserver:
    """Counts, times and notifies the backups it is shown (`observe`)."""

    def __init__(self, metrics: Metrics, notifier: Notifier) -> None:
        self.metrics = metrics
        self.notifier = notifier

    async def observe(
        self, volume: str, trigger: str, policy: str | None, backup: Awaitable[BackupRecord]
    ) -> BackupRecord:
        """Await `backup` (of `volume`) and tell the metrics, and the notifier if it fails; its outcome passes on."""
        self.metrics.backup_started()
        started = time.monotonic()
        try:
            record = await backup
        except BaseException as exc:
            self.metrics.backup_finished(volume, trigger, policy, ok=False, seconds=time.monotonic() - started)
            if isinstance(exc, Exception) and trigger != "schedule":  # shutdown is not a failure to tell of
                error = exc.message if isinstance(exc, AgentError) else "the agent failed unexpectedly (see its log)"
                await self.notifier.backup_failed(volume, error, trigger=trigger, policy=policy)
            raise
        self.metrics.backup_finished(volume, trigger, policy, ok=True, tar_bytes=record.size,
                                     stored_bytes=record.stored_size, seconds=record.duration_s)
        return record


class _Observable(Protocol):
    observer: BackupObserver | None


S = TypeVar("S", bound=_Observable)


def observed(
    backup: Callable[Concatenate[S, BackupRequest, P], Awaitable[BackupRecord]],
) -> Callable[Concatenate[S, BackupRequest, P], Awaitable[BackupRecord]]:
    """Show each call of the method `backup` to its instance's `observer`; the keyword arguments `trigger`
    (default "request") and `policy` say what made it."""

    @functools.wraps(backup)
    async def run(self: S, req: BackupRequest, /, *args: P.args, **kwargs: P.kwargs) -> BackupRecord:
        if self.observer is None:
            return await backup(self, req, *args, **kwargs)
        trigger, policy = kwargs.get("trigger", "request"), kwargs.get("policy")
        return await self.observer.observe(req.volume, str(trigger), None if policy is None else str(policy),
                                           backup(self, req, *args, **kwargs))

    return run
