"""Move a volume to another host: backup to a store both hosts have (the shared `nats` store, or a restic store both
define), restore there, verify, then maybe remove here.

The source is never touched until the target is proven equal (`digest` on both hosts); any failure leaves
it as it was and names the step. The source's lock is held throughout, so no command of this agent
changes it meanwhile; running users are refused up front, since they could.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from typing import TypeVar

import msgspec
import structlog

from contracts import (
    BackupRequest,
    DigestRequest,
    DigestResult,
    MigrateRequest,
    MigrateResult,
    RemoveRequest,
    RemoveResult,
    Reply,
    RestoreRequest,
    RestoreResult,
    result_as,
)
from volumectl.client import AgentClient, NoAgent
from volumectl.signing import Signer

from ..bus import Bus
from ..denials import Denied
from ..errors import AgentError, Corrupt, Invalid, Unavailable, from_wire
from ..locks import KeyedLocks
from ..typing import Engine, Peers
from ..volumes import Volumes, in_use
from .backups import Backups
from .digest import Digests

__all__ = ["BusPeers", "Migrations"]

log = structlog.get_logger(__name__)

PEER_TIMEOUT_S = 3600.0
"""A peer's restore of a large volume takes as long as it takes; an hour is stuck."""

R = TypeVar("R", bound=msgspec.Struct)


class _AtPeer(Exception):
    """A peer agent answered with an error: which host, and the error as the agent's own class."""

    def __init__(self, host: str, error: AgentError) -> None:
        super().__init__(error.message)
        self.host, self.error = host, error


def _step_error(step: str, host: str, exc: AgentError, backup_id: str | None, store: str) -> AgentError:
    """The same kind of error, saying at which step and on which host it happened, and what is left."""
    kept = f" The source is intact; backup {backup_id} stays in store {store!r}." if backup_id else \
        " The source is intact."
    return from_wire(exc.code, f"migrate failed at step {step} on host {host}: {exc.message.rstrip('.')}.{kept}")


class Migrations:
    """The `migrate` op, run on the source host."""

    def __init__(
        self, engine: Engine, locks: KeyedLocks, volumes: Volumes, backups: Backups, digests: Digests,
        peers: Peers, *, host: str,
    ) -> None:
        self.engine = engine
        self.locks = locks
        self.volumes = volumes
        self.backups = backups
        self.digests = digests
        self.peers = peers
        self.host = host

    async def migrate(self, req: MigrateRequest) -> MigrateResult:
        if req.to == self.host:
            raise Invalid(f"Volume {req.volume!r} is already on host {self.host}; use clone for a copy here.")
        if not self.backups.stores[req.store].shared:  # and a name this host does not define is refused there
            raise Invalid(f"Store {req.store!r} holds backups only this host reads; migrate through a store both hosts "
                          "have: nats, or a restic store both define (the same repository).")
        target = req.target or req.volume
        # The restore on the target is a command of its own: a retried migrate does not restore twice.
        cmd_id = structlog.contextvars.get_contextvars().get("cmd_id") or ""
        restore_id = f"migrate-{hashlib.sha256(cmd_id.encode()).hexdigest()[:32]}" if cmd_id else None
        started = time.monotonic()
        async with self.locks.hold(req.volume):
            step, backup_id = "check", None
            try:
                await self.engine.volume_inspect(req.volume)
                users = await self.volumes.used_by(req.volume)
                running = [u for u in users if u.state == "running"]
                if running or (req.remove_source and users):
                    raise in_use(req.volume, running or users)
                step = "backup"
                record = await self.backups.backup_locked(BackupRequest(volume=req.volume, store=req.store))
                backup_id = record.backup_id
                step = "restore"
                # The source's digest is computed while the target restores; it is not needed before.
                digesting = asyncio.create_task(self.digests.digest(DigestRequest(volume=req.volume)))
                try:
                    restored = await self._ask(req.to, "restore", RestoreRequest(
                        id=restore_id, backup_id=backup_id, volume=target, overwrite=req.overwrite), RestoreResult)
                    step = "verify"
                    source_digest = await digesting
                finally:
                    digesting.cancel()
                    await asyncio.gather(digesting, return_exceptions=True)
                target_digest = await self._ask(req.to, "digest", DigestRequest(volume=target), DigestResult)
                if target_digest.sha256 != source_digest.sha256:
                    undone = await self._undo_target(req.to, target, created=restored.created_volume)
                    raise Corrupt(f"the content of {target!r} on {req.to} differs from the source "
                                  f"({target_digest.entries} entries vs {source_digest.entries}){undone}")
                step = "remove"
                if req.remove_source:
                    await self.volumes.remove_locked(req.volume, force=False)
            except _AtPeer as exc:
                raise _step_error(step, exc.host, exc.error, backup_id, req.store) from exc
            except AgentError as exc:
                where = self.host if step in ("check", "backup", "remove") else req.to
                raise _step_error(step, where, exc, backup_id, req.store) from exc
        log.info("migrate.done", to=req.to, target=target, backup_id=backup_id)
        return MigrateResult(
            volume=req.volume, to=req.to, target=target, backup_id=record.backup_id, size=record.size,
            sha256=source_digest.sha256, created_volume=restored.created_volume,
            source_removed=req.remove_source, duration_s=round(time.monotonic() - started, 3),
        )

    async def _undo_target(self, host: str, target: str, *, created: bool) -> str:
        """Remove a target volume the restore created; say what became of it."""
        if not created:
            return f"; {target!r} there holds the restored, unverified content"
        try:
            await self._ask(host, "remove", RemoveRequest(name=target), RemoveResult)
        except _AtPeer as exc:
            return f"; removing {target!r} there failed too: {exc.error.message.rstrip('.')}"
        except AgentError as exc:
            return f"; removing {target!r} there failed too: {exc.message.rstrip('.')}"
        return f"; {target!r} was removed there again"

    async def _ask(self, host: str, op: str, body: msgspec.Struct, result_type: type[R]) -> R:
        reply = await self.peers.request(host, op, body, PEER_TIMEOUT_S)
        if reply.error is not None:
            raise _AtPeer(host, from_wire(reply.error.code, reply.error.message))
        try:
            return result_as(reply, result_type)
        except ValueError as exc:
            raise _AtPeer(host, from_wire("internal", str(exc))) from exc


class BusPeers:
    """`Peers` over the agent's NATS connection, through the same client volumectl uses, signed as this agent
    (its `--nats-nkey-seed`; the peer's policy gives that key role `agent`). Unsigned without one: refused."""

    def __init__(self, bus: Bus, signer: Signer | None) -> None:
        self.bus = bus
        self.signer = signer

    async def request(self, host: str, op: str, body: msgspec.Struct, timeout: float) -> Reply:  # noqa: ASYNC109
        client = AgentClient(self.bus.nc, self.bus.subjects.prefix, signer=self.signer)
        subject = self.bus.subjects.req(host, op)
        try:
            # A request our NATS permissions refuse gets no reply at all: fail when the server says so, not after
            # `timeout` (an agent may ask its peers for restore and digest only).
            return await self.bus.denials.call(subject, client.request(host, op, body, timeout=timeout))
        except NoAgent as exc:
            raise Unavailable(str(exc)) from exc
        except Denied as exc:
            raise Unavailable(f"This agent's NATS user may not send {op} to host {host} ({subject}).") from exc
