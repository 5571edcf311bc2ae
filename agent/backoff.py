"""Retrying with backoff: the one way the agent waits for Docker or NATS to come (back).

`Backoff` hands out pauses that double up to a ceiling; `until_ok` retries a call forever (boot order is not
ours: Docker or NATS may start after the agent), `retrying` a bounded number of times for transient failures
(a JetStream leader election takes a few seconds).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from .errors import AgentError, Transient

__all__ = ["Backoff", "retrying", "until_ok"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

FIRST_S = 0.5
MAX_S = 30.0
# A leader election in a three-node cluster settles within seconds: 7.5 s of pauses in all.
TRANSIENT_PAUSES_S = (0.5, 1.0, 2.0, 4.0)


class Backoff:
    """Pauses from `first` doubling up to `maximum`; `reset()` once things work again."""

    def __init__(self, first: float = FIRST_S, maximum: float = MAX_S) -> None:
        self.first, self.maximum = first, maximum
        self._next = first

    def next(self) -> float:
        pause, self._next = self._next, min(self._next * 2, self.maximum)
        return pause

    def reset(self) -> None:
        self._next = self.first

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())


async def until_ok(
    attempt: Callable[[], Awaitable[T]], event: str, backoff: Backoff | None = None,
    catch: tuple[type[BaseException], ...] = (AgentError,), **log_fields: object,
) -> T:
    """Call `attempt` until it returns; each failure is logged as `event` with the pause before the next try."""
    backoff = backoff or Backoff()
    while True:
        try:
            return await attempt()
        except catch as exc:
            pause = backoff.next()
            error = exc.message if isinstance(exc, AgentError) else f"{type(exc).__name__}: {exc}"
            log.warning(event, error=error, retry_in_s=pause, **log_fields)
            await asyncio.sleep(pause)


async def retrying(
    what: str, attempt: Callable[[], Awaitable[T]], pauses: tuple[float, ...] = TRANSIENT_PAUSES_S
) -> T:
    """Call `attempt`, again after each pause while it fails transiently; the last failure is raised.

    Each attempt must start clean: it is run again from the beginning.
    """
    for n, pause in enumerate(pauses, start=1):
        try:
            return await attempt()
        except Transient as exc:
            log.warning("retry", what=what, attempt=n, error=exc.message, retry_in_s=pause)
            await asyncio.sleep(pause)
    return await attempt()
