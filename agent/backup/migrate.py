"""Move a volume to another host: backup to the shared store, restore there, verify, then maybe remove here.

The source is never touched until the target is proven equal (`digest` on both hosts); any failure leaves
it as it was and names the step. The source's lock is held throughout, so no command of this agent
changes it meanwhile; running users are refused up front, since they could.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import structlog

from contracts import BackupRequest, DigestRequest, MigrateRequest, MigrateResult, Reply
from volumectl.client import AgentClient, NoAgent

from ..bus import Bus
from ..errors import AgentError, Corrupt, Invalid, Unavailable
from ..typing import Peers
from ..volumes import in_use
from .backups import Backups
from .digest import Digests

__all__ = ["BusPeers", "Migrations", "Peers"]

log = structlog.get_logger(__name__)

PEER_TIMEOUT_S = 3600.0
_ERRORS: dict[str, type[AgentError]] = {cls.code: cls for cls in AgentError.__subclasses__()}


def _step_error(step: str, host: str, code: str, message: str, backup_id: str | None) -> AgentError:
    kept = f" The source is intact; backup {backup_id} stays in the shared store." if backup_id else \
        " The source is intact."
    cls = _ERRORS.get(code, AgentError)
    return cls(f"migrate failed at step {step} on host {host}: {message.rstrip('.')}.{kept}")


class Migrations:
    """The `migrate` op, run on the source host."""

    def __init__(self, backups: Backups, digests: Digests, peers: Peers, host: str) -> None:
        self.backups = backups
        self.volumes = backups.volumes
        self.digests = digests
        self.peers = peers
        self.host = host

    async def migrate(self, req: MigrateRequest) -> MigrateResult:
        if req.to == self.host:
            raise Invalid(f"Volume {req.volume!r} is already on host {self.host}; use clone for a copy here.")
        target = req.target or req.volume
        # The restore on the target is a command of its own: a retried migrate does not restore twice.
        cmd_id = structlog.contextvars.get_contextvars().get("cmd_id") or ""
        restore_id = f"migrate-{hashlib.sha256(cmd_id.encode()).hexdigest()[:32]}" if cmd_id else None
        started = time.monotonic()
        async with self.volumes.locks.hold(req.volume):
            step, backup_id = "check", None
            try:
                await self.volumes.engine.volume_inspect(req.volume)
                users = await self.volumes.used_by(req.volume)
                running = [u for u in users if u.state == "running"]
                if running or (req.remove_source and users):
                    raise in_use(req.volume, running or users)
                step = "backup"
                record = await self.backups.backup_locked(BackupRequest(volume=req.volume, store="nats"))
                backup_id = record.backup_id
                step = "restore"
                # The source's digest is computed while the target restores; it is not needed before.
                digesting = asyncio.create_task(self.digests.digest(DigestRequest(volume=req.volume)))
                try:
                    restored = await self._ask(req.to, "restore", {"id": restore_id, "backup_id": backup_id,
                                                                   "volume": target, "overwrite": req.overwrite})
                    step = "verify"
                    source_digest = await digesting
                finally:
                    digesting.cancel()
                    await asyncio.gather(digesting, return_exceptions=True)
                target_digest = await self._ask(req.to, "digest", {"volume": target})
                if target_digest["sha256"] != source_digest.sha256:
                    undone = await self._undo_target(req.to, target, created=bool(restored["created_volume"]))
                    raise Corrupt(f"the content of {target!r} on {req.to} differs from the source "
                                  f"({target_digest['entries']} entries vs {source_digest.entries}){undone}")
                step = "remove"
                if req.remove_source:
                    await self.volumes.remove_locked(req.volume, force=False)
            except AgentError as exc:
                where = self.host if step in ("check", "backup", "remove") else req.to
                if isinstance(exc, _PeerError):
                    where = exc.host
                raise _step_error(step, where, exc.code, exc.message, backup_id) from exc
        log.info("migrate.done", to=req.to, target=target, backup_id=backup_id)
        return MigrateResult(
            volume=req.volume, to=req.to, target=target, backup_id=record.backup_id, size=record.size,
            sha256=source_digest.sha256, created_volume=bool(restored["created_volume"]),
            source_removed=req.remove_source, duration_s=round(time.monotonic() - started, 3),
        )

    async def _undo_target(self, host: str, target: str, *, created: bool) -> str:
        """Remove a target volume the restore created; say what became of it."""
        if not created:
            return f"; {target!r} there holds the restored, unverified content"
        try:
            await self._ask(host, "remove", {"name": target})
        except AgentError as exc:
            return f"; removing {target!r} there failed too: {exc.message.rstrip('.')}"
        return f"; {target!r} was removed there again"

    async def _ask(self, host: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.peers.request(host, op, {k: v for k, v in body.items() if v is not None}, PEER_TIMEOUT_S)
        if reply.error is not None:
            raise _PeerError(host, reply.error.code, reply.error.message)
        assert reply.result is not None
        return reply.result


class _PeerError(AgentError):
    def __init__(self, host: str, code: str, message: str) -> None:
        super().__init__(message)
        self.host = host
        self.code = code  # type: ignore[assignment]


class BusPeers:
    """`Peers` over the agent's NATS connection, through the same client volumectl uses."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def request(self, host: str, op: str, body: dict[str, Any], timeout: float) -> Reply:  # noqa: ASYNC109
        client = AgentClient(self.bus.nc, self.bus.subjects.prefix)
        try:
            return await client.request(host, op, body, timeout=timeout)
        except NoAgent as exc:
            raise Unavailable(str(exc)) from exc
