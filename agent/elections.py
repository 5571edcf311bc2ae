"""Riding out a JetStream leader election: a write that meets one is tried again, for a bounded time.

When a cluster node dies, the streams it led elect new leaders within seconds. Meanwhile a publish gets
"no response from stream" (no responders) or no answer in time, and a client whose node died reconnects to
another one. Those failures are worth waiting out; others (a closed connection, a payload over the server's
limit, a refused request) are not, and neither is an election that outlasts the budget.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
import structlog

from .backoff import Backoff

__all__ = ["ELECTION_ERRORS", "through_elections"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

ELECTION_ERRORS: tuple[type[BaseException], ...] = (
    nats.js.errors.NoStreamResponseError,  # js.publish: nobody leads the stream right now
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,  # JetStream's own 503
    nats.errors.TimeoutError,
    TimeoutError,
    nats.errors.OutboundBufferLimitError,  # reconnecting, and the buffer is full
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
)
# An election takes a few seconds (longer on a loaded machine); a node restart with catch-up, longer still.
BUDGET_S = 30.0
FIRST_PAUSE_S = 0.25
MAX_PAUSE_S = 4.0
# Each attempt waits at most this long for its answer: a leader that died mid-request never answers.
ATTEMPT_TIMEOUT_S = 5.0


async def through_elections(
    what: str, attempt: Callable[[float], Awaitable[T]], *, budget_s: float | None = None
) -> T:
    """`attempt(timeout)` until it succeeds, pausing after each failure in `ELECTION_ERRORS`, for at most
    `budget_s` (default `BUDGET_S`). The last such failure, and any other at once, propagate as nats-py raised
    them (callers translate them with `nats_errors`). An attempt must be safe to repeat: a publish sets
    `Nats-Msg-Id`."""
    loop = asyncio.get_running_loop()
    end = loop.time() + (BUDGET_S if budget_s is None else budget_s)
    backoff = Backoff(FIRST_PAUSE_S, MAX_PAUSE_S)
    n = 0
    while True:
        n += 1
        try:
            return await attempt(max(0.1, min(ATTEMPT_TIMEOUT_S, end - loop.time())))
        except ELECTION_ERRORS as exc:
            pause = backoff.next()
            if end - loop.time() <= pause:
                raise
            log.info("nats.retrying", what=what, attempt=n, error=f"{type(exc).__name__}: {exc}", retry_in_s=pause)
            await asyncio.sleep(pause)
