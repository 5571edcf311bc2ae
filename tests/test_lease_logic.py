"""The host-id lease's claim, renewal and takeover (agent/lease.py), on a virtual clock against an in-memory KV that
keeps revisions as JetStream does: every wait is exact, so "taken over after the TTL" is a time, not a hope."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import msgspec
import nats.errors
import nats.js.errors
import pytest

from agent.lease import HostLease, HostTaken, LeaseHolder, this_process
from agent.supervisor import EXIT_FAILED, EXIT_HOST_TAKEN

from .fakes import run_in_virtual_time

HOST, TTL = "web-1", 15.0


@dataclass
class Entry:
    value: bytes | None
    revision: int | None


@dataclass
class MemoryKV:
    """One KV bucket's keys with their revisions (a delete leaves a tombstone, as JetStream's does); `down` makes
    every call fail as a NATS outage does, `lose_acks` applies writes but fails to answer them."""

    keys: dict[str, tuple[int, bytes | None]] = field(default_factory=dict)
    seq: int = 0
    down: bool = False
    lose_acks: int = 0

    def _check(self) -> None:
        if self.down:
            raise nats.errors.TimeoutError

    def _write(self, key: str, value: bytes | None, last: int | None) -> int:
        current = self.keys.get(key, (0, None))[0]
        if (last or 0) != current:
            raise nats.js.errors.KeyWrongLastSequenceError(description=f"wrong last sequence: {current}")
        self.seq += 1
        self.keys[key] = (self.seq, value)
        if self.lose_acks:
            self.lose_acks -= 1
            raise nats.errors.TimeoutError
        return self.seq

    async def get(self, key: str) -> Entry:
        self._check()
        rev, value = self.keys.get(key, (0, None))
        if value is None:
            raise nats.js.errors.KeyNotFoundError
        return Entry(value, rev)

    async def create(self, key: str, value: bytes) -> int:
        self._check()
        rev, old = self.keys.get(key, (0, None))
        if old is not None:
            raise nats.js.errors.KeyWrongLastSequenceError(description="key exists")
        return self._write(key, value, rev)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        self._check()
        return self._write(key, value, last)

    async def delete(self, key: str, last: int | None = None) -> bool:
        self._check()
        self._write(key, None, last if last else self.keys.get(key, (0, None))[0])
        return True

    def holder(self) -> LeaseHolder | None:
        value = self.keys.get(HOST, (0, None))[1]
        return msgspec.json.decode(value, type=LeaseHolder) if value else None


@dataclass
class Fatals:
    calls: list[tuple[str, int, float]] = field(default_factory=list)

    def __call__(self, reason: str, code: int = EXIT_FAILED, **context: object) -> None:
        self.calls.append((reason, code, now()))


def now() -> float:
    return asyncio.get_running_loop().time()


def lease(kv: MemoryKV, fatals: Fatals | None = None, *, ttl: float = TTL, started: int | None = -1) -> HostLease:
    """An agent's lease; `started`: what /proc says of any holder's pid (-1: this process' own start time)."""

    async def open_kv() -> MemoryKV:
        return kv

    me = this_process(HOST, ttl)
    return HostLease(open_kv, HOST, ttl_s=ttl, fatal=fatals or Fatals(), me=me,
                     started=lambda pid: me.proc_start if started == -1 else started)


def elsewhere(ttl: float = TTL, **kw: object) -> bytes:
    """A holder on another machine (another boot): its process cannot be looked up from here."""
    h = this_process(HOST, ttl)
    return msgspec.json.encode(msgspec.structs.replace(h, pid=4242, hostname="vm-copy", boot_id="other-boot", **kw))


def test_a_free_host_id_is_claimed_at_once_renewed_and_released_on_a_clean_stop() -> None:
    async def scenario() -> None:
        kv, fatals = MemoryKV(), Fatals()
        a = lease(kv, fatals)
        await a.start()
        assert a.held and now() == 0 and kv.holder() is not None and kv.holder().instance == a.me.instance
        first = kv.keys[HOST][0]
        await asyncio.sleep(TTL + 0.5)
        assert kv.keys[HOST][0] == first + 3  # renewed every TTL/3
        await a.stop()
        await a.stop()  # idempotent
        assert kv.holder() is None
        b = lease(kv)
        await b.start()  # released: no wait
        assert b.held and now() == TTL + 0.5
        await b.stop()
        assert fatals.calls == []

    run_in_virtual_time(scenario())


def test_a_second_agent_is_refused_once_the_holder_renews_naming_its_pid_hostname_and_last_renewal() -> None:
    async def scenario() -> None:
        kv, fatals = MemoryKV(), Fatals()
        a = lease(kv, fatals)
        await a.start()
        b = lease(kv)  # on this machine, and a's process is alive: it is watched, not taken
        with pytest.raises(HostTaken) as refused:
            await b.start()
        assert now() <= TTL / 3 + 1
        h = a.me
        assert f"pid {h.pid} on {h.hostname}" in refused.value.message
        assert "renewed its lease at" in refused.value.message and "--host-id" in refused.value.message
        assert refused.value.holder is not None and refused.value.holder.instance == h.instance
        assert not b.held and kv.holder().instance == h.instance
        await asyncio.sleep(TTL)
        assert fatals.calls == []  # the holder goes on
        await a.stop()

    run_in_virtual_time(scenario())


def test_a_holder_that_stopped_renewing_is_taken_over_after_the_ttl_and_not_before() -> None:
    async def scenario() -> None:
        kv = MemoryKV()
        kv.keys[HOST] = (7, elsewhere())
        b = lease(kv)
        await b.start()
        assert TTL <= now() <= TTL + 1
        assert b.held and kv.holder().instance == b.me.instance
        await b.stop()

    run_in_virtual_time(scenario())


def test_a_holder_with_a_longer_ttl_is_waited_out_for_its_own_ttl() -> None:
    async def scenario() -> None:
        kv = MemoryKV()
        kv.keys[HOST] = (7, elsewhere(ttl=40.0))
        b = lease(kv)
        await b.start()
        assert 40 <= now() <= 41
        await b.stop()

    run_in_virtual_time(scenario())


def test_a_holder_whose_process_is_gone_from_this_machine_is_taken_over_at_once() -> None:
    async def scenario() -> None:
        kv = MemoryKV()
        dead = this_process(HOST, TTL)  # same boot and pid namespace as this test
        kv.keys[HOST] = (7, msgspec.json.encode(dead))
        b = lease(kv, started=None)  # /proc has no such process
        await b.start()
        assert now() == 0 and b.held
        await b.stop()
        kv.keys[HOST] = (9, msgspec.json.encode(dead))
        c = lease(kv, started=(dead.proc_start or 0) + 1)  # its pid is another process now
        await c.start()
        assert now() == 0 and c.held
        await c.stop()

    run_in_virtual_time(scenario())


def test_of_two_newcomers_one_takes_the_silent_lease_over_and_the_other_is_refused() -> None:
    async def scenario() -> None:
        kv = MemoryKV()
        kv.keys[HOST] = (7, elsewhere())
        b, c = lease(kv), lease(kv)
        outcomes = await asyncio.gather(b.start(), c.start(), return_exceptions=True)
        assert sorted(type(o).__name__ for o in outcomes) == ["HostTaken", "NoneType"]
        winner = b if b.held else c
        assert kv.holder().instance == winner.me.instance
        await winner.stop()

    run_in_virtual_time(scenario())


def test_an_outage_shorter_than_the_ttl_is_ridden_out() -> None:
    async def scenario() -> None:
        kv, fatals = MemoryKV(), Fatals()
        a = lease(kv, fatals)
        await a.start()
        await asyncio.sleep(1)
        kv.down = True
        await asyncio.sleep(TTL - 2)  # the renewal at TTL/3 fails, and those after it, until TTL - 1
        kv.down = False
        await asyncio.sleep(3 * TTL)
        assert fatals.calls == []
        assert kv.holder().instance == a.me.instance
        await a.stop()

    run_in_virtual_time(scenario())


def test_an_agent_that_cannot_renew_for_the_ttl_stops_with_1_by_then() -> None:
    async def scenario() -> None:
        kv, fatals = MemoryKV(), Fatals()
        a = lease(kv, fatals)
        await a.start()
        await asyncio.sleep(1)
        kv.down = True
        await asyncio.sleep(3 * TTL)
        [(reason, code, at)] = fatals.calls
        assert code == EXIT_FAILED and f"for {TTL:g} s" in reason
        assert at <= TTL  # the last renewal that landed was at 0
        await a.stop()  # not ours any more: nothing to release

    run_in_virtual_time(scenario())


def test_a_write_by_another_agent_stops_this_one_with_2_naming_it() -> None:
    async def scenario() -> None:
        kv, fatals = MemoryKV(), Fatals()
        a = lease(kv, fatals)
        await a.start()
        await asyncio.sleep(1)
        kv.keys[HOST] = (kv.keys[HOST][0] + 1, elsewhere())
        await asyncio.sleep(TTL)
        [(reason, code, at)] = fatals.calls
        assert code == EXIT_HOST_TAKEN and "pid 4242 on vm-copy" in reason and at == TTL / 3
        await a.stop()
        assert kv.holder() is not None and kv.holder().hostname == "vm-copy"  # not released: not ours

    run_in_virtual_time(scenario())


def test_a_renewal_that_landed_but_whose_answer_was_lost_is_not_taken_for_another_agent() -> None:
    async def scenario() -> None:
        kv, fatals = MemoryKV(), Fatals()
        a = lease(kv, fatals)
        await a.start()
        kv.lose_acks = 2
        await asyncio.sleep(2 * TTL)
        assert fatals.calls == []
        await a.stop()
        assert kv.holder() is None  # released by the revision it learned

    run_in_virtual_time(scenario())


def test_a_stop_right_after_a_renewal_whose_answer_was_lost_still_releases_the_lease() -> None:
    async def scenario() -> None:
        kv, fatals = MemoryKV(), Fatals()
        a = lease(kv, fatals)
        await a.start()
        kv.lose_acks = 1
        await asyncio.sleep(TTL / 3 + 0.5)  # the renewal landed, unanswered; the next try is a second away
        await a.stop()
        assert kv.holder() is None and fatals.calls == []

    run_in_virtual_time(scenario())
