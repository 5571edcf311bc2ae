"""The durable consumer's pull loop, with fakes: it survives any failed fetch and handles what comes next."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agent import commands
from agent.commands import Commands
from agent.dispatch import Dispatcher, Outcome
from agent.errors import Unavailable
from agent.tasks import Tasks
from contracts import ErrorBody, Subjects

from .fakes import FakeEngine, MemoryOutcomes, RecordingSink, TrustAll, fake_handlers

pytestmark = pytest.mark.timeout(10)


class FakeMsg:
    def __init__(self, subject: str, delivered: int = 1) -> None:
        self.subject, self.data, self.headers = subject, b"{}", {"Nats-Msg-Id": "m1"}
        self.metadata = SimpleNamespace(num_delivered=delivered)
        self.acked = asyncio.Event()
        self.naked = asyncio.Event()

    async def ack(self) -> None:
        self.acked.set()

    async def nak(self, delay: float | None = None) -> None:
        self.naked.set()

    async def in_progress(self) -> None: ...

    async def term(self) -> None:
        self.termed = True


class FakeSub:
    """fetch() fails in each way nats-py can, then delivers `msgs`, then waits."""

    def __init__(self, msgs: list[FakeMsg]) -> None:
        self.script: list[Any] = [TimeoutError(), RuntimeError("node gone"), msgs]

    async def fetch(self, batch: int, timeout: float) -> list[FakeMsg]:
        if not self.script:
            await asyncio.sleep(3600)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


class FakeDispatcher:
    command_id = Dispatcher.command_id
    max_body = 1 << 20

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.seen: list[tuple[str, str | None]] = []

    async def execute(
        self, op: str, data: bytes, *, subject: str = "", headers: Any = None, fallback_id: str | None = None,
        new_id: str | None = None, redelivers: Any = None,
    ) -> Outcome:
        self.seen.append((op, fallback_id))
        self.signed = (subject, headers)  # what the signature check gets: the subject published on, the headers
        self.redelivers = redelivers
        return self.outcome


def consumer(dispatcher: FakeDispatcher) -> Commands:
    bus = SimpleNamespace(host="h1", subjects=Subjects("vol"))
    return Commands(bus, dispatcher, Tasks(4), max_ack_pending=4, ack_wait_s=30)  # type: ignore[arg-type]


async def test_pull_loop_survives_failed_fetches_and_acks_the_outcome(monkeypatch) -> None:
    monkeypatch.setattr(commands, "FETCH_RETRY_S", 0)
    dispatcher = FakeDispatcher(Outcome(b"{}"))
    msg = FakeMsg("vol.cmd.h1.create")
    loop = asyncio.create_task(consumer(dispatcher)._pull(FakeSub([msg])))  # type: ignore[arg-type]
    await asyncio.wait_for(msg.acked.wait(), 5)
    assert dispatcher.seen == [("create", "m1")]
    assert dispatcher.signed == ("vol.cmd.h1.create", {"Nats-Msg-Id": "m1"})  # checked as published
    assert not loop.done()
    loop.cancel()


async def _outcome_of_create_failing_with(exc: Exception) -> Outcome:
    """What the real dispatcher makes of a create whose Docker call raises `exc`."""
    engine = FakeEngine()
    engine.fail_with = exc
    dispatcher = Dispatcher("h1", fake_handlers(engine, RecordingSink()), MemoryOutcomes(), RecordingSink(), Tasks(8),
                            TrustAll(), max_body=4096)
    return await dispatcher.execute("create", b'{"name": "v1"}', fallback_id="m1")


async def test_transient_outcome_is_naked_for_a_retry_until_the_last_delivery(monkeypatch) -> None:
    """Docker down (`Unavailable`): the command is delivered again, up to TRANSIENT_RETRIES deliveries."""
    monkeypatch.setattr(commands, "FETCH_RETRY_S", 0)
    outcome = await _outcome_of_create_failing_with(Unavailable("Docker Engine is unreachable."))
    assert outcome.error is not None and outcome.error.code == "unavailable" and outcome.retry
    early, last = FakeMsg("vol.cmd.h1.create", 1), FakeMsg("vol.cmd.h1.create", commands.TRANSIENT_RETRIES)
    loop = asyncio.create_task(consumer(FakeDispatcher(outcome))._pull(FakeSub([early, last])))  # type: ignore[arg-type]
    await asyncio.wait_for(asyncio.gather(early.naked.wait(), last.acked.wait()), 5)
    assert not early.acked.is_set()
    loop.cancel()


async def test_an_internal_failure_is_delivered_once(monkeypatch) -> None:
    """A bug (`internal`) is final for this delivery: acked at once, never redelivered, and not recorded."""
    monkeypatch.setattr(commands, "FETCH_RETRY_S", 0)
    outcome = await _outcome_of_create_failing_with(RuntimeError("a bug"))
    assert outcome.error is not None and outcome.error.code == "internal"
    assert not outcome.retry and not outcome.final
    first = FakeMsg("vol.cmd.h1.create", 1)
    loop = asyncio.create_task(consumer(FakeDispatcher(outcome))._pull(FakeSub([first])))  # type: ignore[arg-type]
    await asyncio.wait_for(first.acked.wait(), 5)
    assert not first.naked.is_set()
    loop.cancel()


async def test_the_dispatcher_is_told_which_outcomes_this_delivery_retries(monkeypatch) -> None:
    monkeypatch.setattr(commands, "FETCH_RETRY_S", 0)
    transient = Outcome(b"{}", ErrorBody(code="unavailable", message="Docker is down."), final=False, retry=True)
    dispatcher = FakeDispatcher(transient)
    early, last = FakeMsg("vol.cmd.h1.create", 1), FakeMsg("vol.cmd.h1.create", commands.TRANSIENT_RETRIES)
    loop = asyncio.create_task(consumer(dispatcher)._pull(FakeSub([early])))  # type: ignore[arg-type]
    await asyncio.wait_for(early.naked.wait(), 5)
    loop.cancel()
    assert dispatcher.redelivers(transient) and not dispatcher.redelivers(Outcome(b"{}"))
    loop = asyncio.create_task(consumer(dispatcher)._pull(FakeSub([last])))  # type: ignore[arg-type]
    await asyncio.wait_for(last.acked.wait(), 5)
    loop.cancel()
    assert not dispatcher.redelivers(transient)  # the last delivery: its outcome is final, and published


async def test_an_outcome_that_could_not_be_published_is_not_acked(monkeypatch) -> None:
    monkeypatch.setattr(commands, "FETCH_RETRY_S", 0)
    dispatcher = FakeDispatcher(Outcome(b"{}", published=False))
    msg = FakeMsg("vol.cmd.h1.create", commands.TRANSIENT_RETRIES + 5)
    loop = asyncio.create_task(consumer(dispatcher)._pull(FakeSub([msg])))  # type: ignore[arg-type]
    await asyncio.wait_for(msg.naked.wait(), 5)
    assert not msg.acked.is_set()
    loop.cancel()
