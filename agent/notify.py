"""Notifications: a failed backup, an overdue one, one back on schedule, a policy's retention held by the
bad-backup guard, a failed restore drill and one that passes again, to apprise URLs (`--notify`).

A notification never holds up what caused it: it is queued, and one worker sends the queue in order, each message
to every URL at once, through apprise's own threads (its plugins send synchronously), for at most
`NOTIFY_TIMEOUT_S`. A message that cannot be sent is logged, and the agent goes on. URLs carry tokens and passwords,
so a URL is never logged nor echoed: it is named by its position and scheme (`#2 slack`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass

import apprise
import structlog

from .errors import Invalid

__all__ = ["Notifier", "unusable_urls"]

log = structlog.get_logger(__name__)

# One message to one URL; apprise's own connect and read timeouts are 4 s each (`cto`, `rto`), e-mail's 15 s.
NOTIFY_TIMEOUT_S = 30.0
# A burst beyond this (say, every on-stop backup of a crash loop failing) is dropped, and the log says so.
QUEUE_MAX = 100
# What is still queued at shutdown gets this long, after in-flight operations have finished.
STOP_GRACE_S = 10.0

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]{0,31})://")


def _name(i: int, url: str) -> str:
    """How a URL is named in logs and errors: its position and scheme, nothing that could be a secret."""
    m = _SCHEME.match(url)
    return f"#{i} {m.group(1).lower()}" if m else f"#{i} (no scheme)"


def _asset() -> apprise.AppriseAsset:
    # Nothing on disk (apprise can keep state under the home directory), and our name as the HTTP user agent.
    return apprise.AppriseAsset(app_id="volume-agent", app_desc="volume-agent", storage_mode="memory")


def _unusable(i: int, url: str) -> str:
    return f"--notify URL {_name(i, url)} is not one apprise can use: its scheme is unknown or a part is missing"


def unusable_urls(urls: list[str]) -> list[str]:
    """A sentence for each URL apprise cannot use (an unknown scheme, a part missing), naming it by `_name` only."""
    asset = _asset()
    return [_unusable(i, url) for i, url in enumerate(urls, 1) if apprise.Apprise.instantiate(url, asset=asset) is None]


@dataclass(frozen=True)
class _Message:
    event: str
    volume: str
    title: str
    body: str
    kind: apprise.NotifyType


class Notifier:
    """Sends notifications to `urls` (apprise URLs), naming this `host`; with no URL it does nothing."""

    def __init__(self, urls: list[str], host: str) -> None:
        self.host = host
        asset = _asset()
        self._services: list[tuple[str, apprise.Apprise]] = []
        for i, url in enumerate(urls, 1):
            plugin = apprise.Apprise.instantiate(url, asset=asset)
            if plugin is None:
                raise Invalid(_unusable(i, url) + ".")
            self._services.append((_name(i, url), apprise.Apprise(plugin, asset=asset)))
        self._queue: asyncio.Queue[_Message] = asyncio.Queue(QUEUE_MAX)
        self._worker: asyncio.Task[None] | None = None
        self._stopped = False

    async def backup_failed(self, volume: str, error: str, *, trigger: str, policy: str | None) -> None:
        under = f" (policy {policy})" if policy else ""
        self._post(_Message(
            "backup_failed", volume, f"Backup of {volume} failed on {self.host}",
            f"volume-agent on {self.host}: the {trigger} backup of volume '{volume}'{under} failed: {error}",
            apprise.NotifyType.FAILURE))

    async def overdue(self, volume: str, policy: str, reason: str) -> None:
        self._post(_Message(
            "overdue", volume, f"Backup of {volume} overdue on {self.host}",
            f"volume-agent on {self.host}: volume '{volume}' is overdue for a backup under policy {policy}: {reason}",
            apprise.NotifyType.WARNING))

    async def recovered(self, volume: str, policy: str) -> None:
        self._post(_Message(
            "recovered", volume, f"Backups of {volume} back on schedule on {self.host}",
            f"volume-agent on {self.host}: volume '{volume}' is backed up on schedule again under policy {policy}.",
            apprise.NotifyType.SUCCESS))

    async def retention_held(self, volume: str, policy: str, reason: str) -> None:
        self._post(_Message(
            "retention_held", volume, f"Backup of {volume} looks wrong on {self.host}: nothing pruned",
            f"volume-agent on {self.host}: policy {policy} deleted no backup of volume '{volume}': {reason}",
            apprise.NotifyType.WARNING))

    async def verify_failed(self, volume: str, backup_id: str, error: str, *, policy: str | None) -> None:
        under = f" (policy {policy})" if policy else ""
        self._post(_Message(
            "verify_failed", volume, f"Restore drill of {volume} failed on {self.host}",
            f"volume-agent on {self.host}: the restore drill of backup {backup_id} of volume '{volume}'{under} "
            f"failed: {error}",
            apprise.NotifyType.FAILURE))

    async def verify_recovered(self, volume: str, backup_id: str, *, policy: str | None) -> None:
        under = f" (policy {policy})" if policy else ""
        self._post(_Message(
            "verify_recovered", volume, f"Restore drill of {volume} passes again on {self.host}",
            f"volume-agent on {self.host}: the restore drill of backup {backup_id} of volume '{volume}'{under} "
            "passed again.",
            apprise.NotifyType.SUCCESS))

    async def maintenance_failed(self, store: str, task: str, error: str) -> None:
        what = "check" if task == "check" else "prune"
        self._post(_Message(
            f"{task}_failed", f"store:{store}", f"Repository {what} of store {store} failed on {self.host}",
            f"volume-agent on {self.host}: restic {what} of the repository of store '{store}' failed: {error}",
            apprise.NotifyType.FAILURE))

    async def maintenance_recovered(self, store: str, task: str) -> None:
        what = "check" if task == "check" else "prune"
        self._post(_Message(
            f"{task}_recovered", f"store:{store}", f"Repository {what} of store {store} passes again on {self.host}",
            f"volume-agent on {self.host}: restic {what} of the repository of store '{store}' passed again.",
            apprise.NotifyType.SUCCESS))

    async def start(self) -> None:
        """Start sending (a message queued before is sent then); idempotent."""
        if self._services and self._worker is None and not self._stopped:
            self._worker = asyncio.create_task(self._send_all(), name="notify")
            log.info("notify.ready", services=[name for name, _ in self._services])

    async def stop(self) -> None:
        """Send what is queued for at most `STOP_GRACE_S`, then stop; idempotent."""
        self._stopped = True
        worker, self._worker = self._worker, None
        if worker is None:
            return
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await self._queue.join()
        except TimeoutError:
            log.warning("notify.dropped", count=self._queue.qsize(), why="the agent stopped before they were sent")
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker

    def _post(self, msg: _Message) -> None:
        if not self._services:
            return
        if self._stopped:
            log.warning("notify.dropped", notification=msg.event, volume=msg.volume, why="the agent is stopping")
            return
        try:
            self._queue.put_nowait(msg)
        except asyncio.QueueFull:
            log.warning("notify.dropped", notification=msg.event, volume=msg.volume,
                        why=f"{QUEUE_MAX} notifications are waiting already")

    async def _send_all(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await asyncio.gather(*(self._send(name, service, msg) for name, service in self._services))
            finally:
                self._queue.task_done()

    async def _send(self, name: str, service: apprise.Apprise, msg: _Message) -> None:
        """Send `msg` to one URL; never raises but for cancellation."""
        fields = {"notification": msg.event, "volume": msg.volume, "service": name}
        try:
            async with asyncio.timeout(NOTIFY_TIMEOUT_S):
                result = await service.async_notify(body=msg.body, title=msg.title, notify_type=msg.kind)
            sent = bool(result)
            result.close()
        except TimeoutError:
            log.warning("notify.failed", **fields, why=f"no answer within {NOTIFY_TIMEOUT_S:g} s")
            return
        except Exception as exc:  # an apprise bug: its message may hold the URL, so only its type is logged
            log.warning("notify.failed", **fields, why=f"apprise raised {type(exc).__name__}")
            return
        if sent:
            log.info("notify.sent", **fields)
        else:
            log.warning("notify.failed", **fields, why="the service did not accept it or could not be reached")
