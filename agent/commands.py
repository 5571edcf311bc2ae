"""Durable commands: the agent's JetStream consumer on `<prefix>.cmd.<host>.>`.

A command is acked only once its outcome is recorded and published; a transient failure
(Docker down) is retried later rather than recorded as final, and is not published.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts.auth import HEADER_SIG

from .bus import Bus, nats_errors
from .dispatch import Dispatcher, Outcome
from .errors import AgentError
from .tasks import Tasks

__all__ = ["Commands"]

log = structlog.get_logger(__name__)

# A command that meets Docker down is tried again this often before its outcome is final.
TRANSIENT_RETRIES = 10
TRANSIENT_DELAY_S = 5.0
# A final outcome that NATS would not take (past a leader election) is published when the command comes again.
UNPUBLISHED_DELAY_S = 2.0
FETCH_BATCH = 16
FETCH_WAIT_S = 1.0
FETCH_RETRY_S = 1.0


class Commands:
    """Pulls durable commands and runs each as a task; stop() stops pulling, idempotently."""

    def __init__(
        self, bus: Bus, dispatcher: Dispatcher, tasks: Tasks, *, max_ack_pending: int, ack_wait_s: float
    ) -> None:
        self.bus = bus
        self.ack_wait_s = ack_wait_s
        self.dispatcher = dispatcher
        self.tasks = tasks
        self.max_ack_pending = max_ack_pending
        self.durable = bus.subjects.consumer(bus.host)
        self._prefix = bus.subjects.cmd(bus.host, "")
        self._loop: asyncio.Task[None] | None = None
        self._sub: nats.js.JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        if self._loop is not None:
            return
        stream = self.bus.subjects.cmd_stream
        config = ConsumerConfig(
            # Named as well as durable: nats-py then creates it on CONSUMER.CREATE.<stream>.<name>.<filter>, and NATS
            # permissions can hold an agent to its own consumer and its own hosts' filter (agent/auth/permissions.py).
            name=self.durable,
            durable_name=self.durable,
            filter_subject=f"{self._prefix}>",
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait_s,
            max_ack_pending=self.max_ack_pending,
        )
        async with nats_errors("setting up the durable command consumer"):
            # add_consumer creates or updates; pull_subscribe would ignore a changed config.
            await self.bus.js.add_consumer(stream, config)
            self._sub = await self.bus.js.pull_subscribe_bind(self.durable, stream)
        self._loop = asyncio.create_task(self._pull(self._sub), name="commands.pull")
        log.info("commands.consuming", subject=f"{self._prefix}>", durable=self.durable)

    async def stop(self) -> None:
        """Stop pulling; commands already running go on (the daemon drains them)."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
            try:
                await loop
            except asyncio.CancelledError:
                pass
            except Exception:  # a crashed loop must not keep us from unsubscribing and draining
                log.exception("commands.loop_crashed")
        sub, self._sub = self._sub, None
        if sub is not None:
            # Fetched but not started: JetStream redelivers them after the ack wait. Left subscribed,
            # the unread messages would hold the connection's drain until it times out.
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _pull(self, sub: nats.js.JetStreamContext.PullSubscription) -> None:
        while True:
            batch = max(1, min(FETCH_BATCH, self.tasks.free))
            try:
                msgs = await sub.fetch(batch, timeout=FETCH_WAIT_S)
            except TimeoutError:
                # Nothing to do. nats-py raises nats.errors.TimeoutError or, on some paths, the builtin one.
                continue
            except Exception as exc:  # the loop must outlive any one failed fetch (NATS node down, ...)
                log.warning("commands.fetch_failed", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(FETCH_RETRY_S)
                continue
            for msg in msgs:
                try:
                    msg_id = _fallback_id(msg)
                    cmd_id = self.dispatcher.command_id(msg.data, msg_id)
                except Exception:  # a bug: the loop, and every command behind this one, must go on
                    log.exception("commands.unreadable", subject=msg.subject)
                    with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                        await msg.term()
                    continue
                await self.tasks.spawn(cmd_id, self._handle(msg, cmd_id, msg_id))

    async def _handle(self, msg: Msg, cmd_id: str, msg_id: str | None) -> None:
        op = msg.subject[len(self._prefix):]
        keepalive = asyncio.create_task(self._keepalive(msg))
        try:
            outcome = await self.dispatcher.execute(
                op, msg.data, subject=msg.subject, headers=msg.headers, fallback_id=msg_id, new_id=cmd_id,
                redelivers=functools.partial(_redelivers, msg),
            )
        finally:
            keepalive.cancel()
        try:
            async with nats_errors("acknowledging a command"):
                if not outcome.published:
                    await msg.nak(delay=UNPUBLISHED_DELAY_S)
                elif _redelivers(msg, outcome):
                    await msg.nak(delay=TRANSIENT_DELAY_S)
                else:
                    await msg.ack()
        except AgentError:
            # Redelivered later; the recorded outcome makes the retry a no-op.
            log.warning("commands.ack_failed", subject=msg.subject)

    async def _keepalive(self, msg: Msg) -> None:
        while True:
            # Long commands tell JetStream they are alive well within the ack wait.
            await asyncio.sleep(self.ack_wait_s / 3)
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await msg.in_progress()


def _fallback_id(msg: Msg) -> str | None:
    """The id of a durable command whose body names none: its Nats-Msg-Id, else its signature's digest. A command
    published again with neither is then the same command, answered from its recorded outcome, never applied twice
    (JetStream's duplicate window drops it only when it has a Nats-Msg-Id)."""
    headers = msg.headers or {}
    if msg_id := headers.get("Nats-Msg-Id"):
        return msg_id
    if sig := headers.get(HEADER_SIG):
        return f"sig-{hashlib.sha256(sig.encode()).hexdigest()[:40]}"
    return None


def _redelivers(msg: Msg, outcome: Outcome) -> bool:
    """Whether this delivery's outcome is tried again rather than final (and so is not published)."""
    return outcome.retry and msg.metadata.num_delivered < TRANSIENT_RETRIES
