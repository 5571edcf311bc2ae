"""One host id, one agent: a lease on the host id in the KV bucket `<prefix>_leases`, claimed at start, renewed.

Two agents with one host id (a copied config, a restored VM) would each apply every command, back up each stop and
each policy slot, and overwrite each other's outcomes and inventory. So an agent claims its host id right after it
connects, before it touches anything (spool files, helper containers, restore notes, the command consumer):

- It creates the key `<host id>` (a KV create fails if the key exists): the lease is its own.
- The key exists: its holder is alive if it renews it. The newcomer watches the entry's revision. A renewal means
  an agent runs with this id: `HostTaken`, and the agent exits 2 naming that agent's pid, hostname and last
  renewal. No renewal for a whole TTL (the longer of the two agents' TTLs): its holder is gone, or cut off and
  stopped by now (below); the newcomer takes the lease over by compare-and-set on the revision it watched.
  A holder that ran on this very machine (same boot, same pid namespace) whose process is gone is taken over at
  once: a restart after a crash does not wait.
- The holder renews every TTL/3, by compare-and-set. A write by anyone else means the lease is lost: the agent
  stops (exit 2). A NATS outage is ridden out, but a holder that could not renew for a whole TTL stops (exit 1):
  a newcomer may take the id over from then on, and two must never run.
- A clean stop deletes the lease (by revision), so a restart claims it at once.

No clock is compared across machines: the holder's deadline and the newcomer's wait are both measured on their own
monotonic clocks from the same renewal, which the holder sent before the newcomer could see it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Literal, Protocol

import msgspec
import nats.errors
import nats.js.errors
import structlog

from .bus import nats_errors
from .errors import Conflict
from .supervisor import EXIT_FAILED, EXIT_HOST_TAKEN, Fatal

__all__ = ["HostLease", "HostTaken", "LeaseHolder", "LeaseKV", "proc_start", "this_process"]

log = structlog.get_logger(__name__)

# A holder's own TTL, as it wrote it, is waited out up to this: a wrong value must not keep a host down for long.
MAX_HOLDER_TTL_S = 300.0
# A write that gets no answer in this long is retried (the holder has the rest of its TTL to succeed).
ATTEMPT_S = 5.0
# A clean stop's release is best effort: without it, a restart here still takes over at once (the process is gone).
RELEASE_TIMEOUT_S = 2.0
# Whatever NATS raises on a write it may accept a moment later: a renewal is tried again until the deadline.
PASSING = (nats.errors.Error, nats.js.errors.Error, OSError, TimeoutError)


class LeaseHolder(msgspec.Struct, kw_only=True):
    """A lease's value: the agent that holds the host id, as a person would look for it."""

    host: str
    instance: str
    """Unique to one run of the agent: a write of our own is told from another agent's by it."""
    pid: int
    hostname: str
    started_at: str
    renewed_at: str
    ttl_s: float
    """How long this holder goes on after its last renewal when it cannot renew: a newcomer waits at least this."""
    boot_id: str | None = None
    pid_ns: str | None = None
    proc_start: int | None = None
    """Its process' start time (clock ticks since boot): a pid reused by another process is not taken for it."""


class HostTaken(Conflict):
    """Another agent holds this host id and renews it."""

    def __init__(self, message: str, holder: LeaseHolder | None) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseEntry(Protocol):
    @property
    def value(self) -> bytes | None: ...
    @property
    def revision(self) -> int | None: ...


class LeaseKV(Protocol):
    """The part of a nats-py KeyValue the lease uses; it raises nats-py's errors (KeyWrongLastSequenceError when
    the key's revision is not `last`, or the key exists on create; KeyNotFoundError)."""

    async def get(self, key: str) -> LeaseEntry: ...
    async def create(self, key: str, value: bytes) -> int: ...
    async def update(self, key: str, value: bytes, last: int | None = None) -> int: ...
    async def delete(self, key: str, last: int | None = None) -> bool: ...


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def proc_start(pid: int) -> int | None:
    """The start time of process `pid` (clock ticks since boot, /proc/<pid>/stat field 22); None if there is none."""
    stat = _read(f"/proc/{pid}/stat")
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19]) if stat else None
    except (ValueError, IndexError):
        return None


def this_process(host: str, ttl_s: float) -> LeaseHolder:
    """The lease's value for this process (renewed_at: now)."""
    try:
        pid_ns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    now = _now()
    return LeaseHolder(host=host, instance=uuid.uuid4().hex, pid=os.getpid(), hostname=socket.gethostname(),
                       started_at=now, renewed_at=now, ttl_s=ttl_s, boot_id=_read("/proc/sys/kernel/random/boot_id"),
                       pid_ns=pid_ns, proc_start=proc_start(os.getpid()))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _holder(entry: LeaseEntry) -> LeaseHolder | None:
    try:
        return msgspec.json.decode(entry.value or b"", type=LeaseHolder)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None  # another version's, or not an agent's: waited out like any silent holder


def _who(h: LeaseHolder | None) -> str:
    return f"pid {h.pid} on {h.hostname} (started {h.started_at})" if h else "an agent that wrote an unreadable lease"


def _ago(h: LeaseHolder) -> str:
    try:
        s = (datetime.now(UTC) - datetime.fromisoformat(h.renewed_at)).total_seconds()
    except ValueError:
        return h.renewed_at
    return f"{h.renewed_at}, {s:.1f} s ago by this machine's clock"


class HostLease:
    """This agent's claim on its host id: `start` claims it (or raises `HostTaken`), renews it until `stop`,
    which releases it; losing it calls `fatal`."""

    def __init__(self, open_kv: Callable[[], Awaitable[LeaseKV | None]], host: str, *, ttl_s: float, fatal: Fatal,
                 me: LeaseHolder | None = None, started: Callable[[int], int | None] = proc_start) -> None:
        """`open_kv`: the leases bucket, made if missing (None: NATS permissions do not allow it, said there);
        `me`: this process (default `this_process`); `started`: a pid's start time, as `proc_start`."""
        self._open, self.host, self.ttl_s, self._fatal = open_kv, host, ttl_s, fatal
        self.me = me or this_process(host, ttl_s)
        self._started = started
        self._kv: LeaseKV | None = None
        self._rev: int | None = None
        self._renewed = 0.0  # loop time the last renewal that landed was sent
        self._task: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self._rev is not None

    async def start(self) -> None:
        """Claim the host id: at once if it is free, or its holder's process is gone from this machine; after a TTL
        without renewal otherwise. `HostTaken` if the holder renews it; nats-py failures as `Transient`."""
        if self._task is not None:
            return
        async with nats_errors(f"claiming host id {self.host}"):
            self._kv = await self._open()
            if self._kv is None:
                return
            await self._claim(self._kv)
        self._task = asyncio.create_task(self._keep(self._kv))

    async def stop(self) -> None:
        """Stop renewing and release the lease, if it is still ours; idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        rev, self._rev = self._rev, None
        if self._kv is None or rev is None:
            return
        try:
            await asyncio.wait_for(self._release(self._kv, rev), RELEASE_TIMEOUT_S)
            log.info("lease.released", host=self.host)
        except PASSING as exc:
            log.warning("lease.not_released", host=self.host, error=f"{type(exc).__name__}: {exc}",
                        why=f"an agent started with this host id on another machine waits {self.ttl_s:g} s")

    async def _release(self, kv: LeaseKV, rev: int) -> None:
        try:
            await kv.delete(self.host, last=rev)
        except nats.js.errors.APIError:
            # A renewal cut off by the stop may have landed after all: delete by its revision if the lease is ours.
            entry = await self._current(kv)
            holder = _holder(entry) if entry else None
            if entry is None or holder is None or holder.instance != self.me.instance:
                raise
            await kv.delete(self.host, last=entry.revision)

    def _value(self) -> bytes:
        return msgspec.json.encode(msgspec.structs.replace(self.me, renewed_at=_now()))

    def _gone_from_here(self, h: LeaseHolder) -> bool:
        """True when `h` ran on this machine, in this pid namespace, and its process is no more."""
        me = self.me
        if h.boot_id is None or h.pid_ns is None or h.proc_start is None:
            return False
        return (h.boot_id, h.pid_ns) == (me.boot_id, me.pid_ns) and self._started(h.pid) != h.proc_start

    async def _claim(self, kv: LeaseKV) -> None:
        loop = asyncio.get_running_loop()
        while True:
            sent = loop.time()
            try:
                self._rev, self._renewed = await kv.create(self.host, self._value()), sent
                log.info("lease.claimed", host=self.host, ttl_s=self.ttl_s)
                return
            except nats.js.errors.KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(self.host)
            except nats.js.errors.KeyNotFoundError:
                continue  # released since
            holder = _holder(entry)
            if holder is not None and self._gone_from_here(holder):
                if await self._take(kv, entry, holder, "its process on this machine is gone"):
                    return
                continue
            wait = max(self.ttl_s, min(holder.ttl_s if holder else 0.0, MAX_HOLDER_TTL_S))
            log.warning("lease.held", host=self.host, holder=_who(holder), take_over_in_s=wait,
                        why="another agent may run with this host id: it is taken over if it does not renew its "
                            "lease within the TTL, and this agent stops if it does")
            seen = await self._watch(kv, entry.revision, wait)
            if seen == "silent":
                if await self._take(kv, entry, holder, f"it was not renewed for {wait:g} s"):
                    return
            elif not isinstance(seen, str):  # renewed: its holder lives
                h = _holder(seen)
                raise HostTaken(
                    f"Another agent runs with host id {self.host!r}: {_who(h)}"
                    + (f", which renewed its lease at {_ago(h)}" if h else "") + ". Two agents with one host id would "
                    "both apply every command and overwrite each other's outcomes and inventory, so this one does "
                    "not start. Stop that agent, or give this one its own host id (--host-id, VOLUME_AGENT_HOST_ID); "
                    f"an agent that is gone is taken over once its lease goes {wait:g} s without renewal.", h)

    async def _watch(
        self, kv: LeaseKV, rev: int | None, wait_s: float
    ) -> LeaseEntry | Literal["released", "silent"]:
        """The entry once it changes from `rev`; "released" once it is deleted; "silent" if it stays as it is for
        `wait_s`."""
        loop = asyncio.get_running_loop()
        end, poll = loop.time() + wait_s, min(1.0, self.ttl_s / 5)
        while (left := end - loop.time()) > 0:
            await asyncio.sleep(min(poll, left))
            try:
                entry = await kv.get(self.host)
            except nats.js.errors.KeyNotFoundError:
                return "released"
            if entry.revision != rev:
                return entry
        return "silent"

    async def _take(self, kv: LeaseKV, entry: LeaseEntry, holder: LeaseHolder | None, why: str) -> bool:
        """Take the lease over from the revision seen; False if someone wrote it since (then look again)."""
        sent = asyncio.get_running_loop().time()
        try:
            self._rev = await kv.update(self.host, self._value(), last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self._renewed = sent
        log.warning("lease.taken_over", host=self.host, previous=_who(holder), why=why, ttl_s=self.ttl_s)
        return True

    async def _keep(self, kv: LeaseKV) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(max(0.0, self._renewed + self.ttl_s / 3 - loop.time()))
                if not await self._renew(kv):
                    return
        except Exception as exc:  # a renewal that stopped for a bug must not leave the agent unguarded
            log.exception("lease.failed")
            self._lost(f"The lease on host id {self.host!r} is no longer renewed: {type(exc).__name__} {exc}.",
                       EXIT_FAILED)

    async def _renew(self, kv: LeaseKV) -> bool:
        """Renew by compare-and-set, again while NATS fails, until the TTL since the last renewal is up; False once
        the lease is lost (`fatal` called)."""
        loop = asyncio.get_running_loop()
        failures = 0
        while (left := self._renewed + self.ttl_s - (sent := loop.time())) > 0:
            try:
                rev = await asyncio.wait_for(kv.update(self.host, self._value(), last=self._rev),
                                             min(left, ATTEMPT_S, self.ttl_s / 3))
            except nats.js.errors.KeyWrongLastSequenceError:
                try:
                    entry = await asyncio.wait_for(self._current(kv), min(left, ATTEMPT_S))
                except PASSING:
                    await asyncio.sleep(min(1.0, self.ttl_s / 10))
                    continue  # who wrote it is asked again
                holder = _holder(entry) if entry else None
                if entry is not None and holder is not None and holder.instance == self.me.instance:
                    self._rev = entry.revision  # our own write, whose answer was lost
                    continue
                self._taken(holder)
                return False
            except PASSING as exc:
                failures += 1
                log.warning("lease.not_renewed", host=self.host, error=f"{type(exc).__name__}: {exc}",
                            stops_in_s=round(left, 1))
                await asyncio.sleep(min(1.0, self.ttl_s / 10, max(0.0, self._renewed + self.ttl_s - loop.time())))
                continue
            self._rev, self._renewed = rev, sent
            if failures:
                log.info("lease.renewed", host=self.host, after_failures=failures)
            return True
        # Past the deadline: a newcomer may hold the id by now. Say who, if NATS tells in time.
        try:
            entry = await asyncio.wait_for(self._current(kv), RELEASE_TIMEOUT_S)
        except PASSING:
            entry = None
        holder = _holder(entry) if entry else None
        if holder is not None and holder.instance != self.me.instance:
            self._taken(holder)
        else:
            self._lost(f"Could not renew the lease on host id {self.host!r} for {self.ttl_s:g} s (NATS unreachable, "
                       "or this process stalled): another agent may take the id over from now on, so this one "
                       "stops. Started again, it claims the id once NATS answers.", EXIT_FAILED)
        return False

    async def _current(self, kv: LeaseKV) -> LeaseEntry | None:
        try:
            return await kv.get(self.host)
        except nats.js.errors.KeyNotFoundError:
            return None

    def _taken(self, holder: LeaseHolder | None) -> None:
        by = _who(holder) if holder else "nobody: the lease was deleted"
        self._lost(f"Another agent took host id {self.host!r} over: {by}. This agent stops, so that two never run "
                   "with one host id.", EXIT_HOST_TAKEN, holder=holder)

    def _lost(self, reason: str, code: int, holder: LeaseHolder | None = None) -> None:
        self._rev = None  # not ours to release
        self._fatal(reason, code, host=self.host, holder_pid=holder.pid if holder else None,
                    holder_hostname=holder.hostname if holder else None)
