"""The agent's one way to stop: a signal asks for it, and so may a part that cannot go on (`fatal`).

Loops in the agent swallow their errors by design (a passing fault must not stop a host's agent); a part that
knows the agent must not go on (its host-id lease is lost: agent/lease.py) calls `fatal`, which stops the agent
as SIGTERM does (stop taking work, drain, close) and makes it exit with the status given.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

__all__ = ["EXIT_FAILED", "EXIT_HOST_TAKEN", "Fatal", "Supervisor"]

log = structlog.get_logger(__name__)

EXIT_FAILED = 1
"""A failure a restart may overcome (systemd's Restart=on-failure restarts it)."""
EXIT_HOST_TAKEN = 2
"""Another agent runs with this host id: a restart would not help (deploy/volume-agent.service does not retry)."""


class Fatal(Protocol):
    def __call__(self, reason: str, code: int = EXIT_FAILED, **context: object) -> None: ...


class Supervisor:
    """Holds the stop event and the exit status: 0 unless a part called `fatal`."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.exit_code = 0
        self.reason: str | None = None

    def fatal(self, reason: str, code: int = EXIT_FAILED, **context: object) -> None:
        """Stop the agent, to exit with `code`; `reason` is a sentence for the log. The first fatal wins."""
        if self.exit_code == 0:
            self.exit_code, self.reason = code, reason
            log.error("agent.fatal", error=reason, exit_code=code, **context)
        self.stop.set()
